"""Batch runs that are resumed, interrupted or run twice (issue 14, items 5, 7, 9, 10, 11):
resume compares contents, not paths; a torn journal line loses nothing; stale temporaries go;
a second run on one output folder is refused. Kills happen in a child process at a point fixed
by a hook, not by timing."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from test_batch import (
    BLOBS,
    OracleModel,
    _checkpoint_file,
    _config,
    _image,
    _markups,
    _one_lesion_case,
    _ras,
    oracle_loader,  # noqa: F401 - fixture
)

from SGPSAMLib.batch import run_batch
from SGPSAMLib.batch_journal import append_journal, lock_output_folder, read_journals
from SGPSAMLib.cli import main
from SGPSAMLib.runfiles import FolderInUse

HERE = Path(__file__).resolve().parent


def _cases(tmp_path: Path, names=("a", "b"), suffix: str = ".nii.gz") -> Path:
    folder = tmp_path / "in"
    folder.mkdir(exist_ok=True)
    for name in names:
        _one_lesion_case(folder, name, suffix=suffix)
    return folder


def _statuses(summary) -> list[tuple[str, str]]:
    return [(r.case, r.status) for r in summary.results]


# ------------------------------------------------------------------------------------------------
# Item 7: resume compares what matters.

def test_a_replaced_image_is_redone_even_with_the_same_size_and_time(tmp_path: Path) -> None:
    folder = _cases(tmp_path, suffix=".nii")  # uncompressed: same dimensions, same file size
    first = run_batch(_config(tmp_path, OracleModel()))
    assert _statuses(first) == [("a", "ok"), ("b", "ok")]
    image = folder / "a.nii"
    info = image.stat()
    moved = _image(blobs=[((30.0, 14.0, 9.0), 9.0), BLOBS[1]])
    sitk.WriteImage(moved, str(image))
    os.utime(image, ns=(info.st_atime_ns, info.st_mtime_ns))  # as `cp -p` of another scan
    assert image.stat().st_size == info.st_size and image.stat().st_mtime_ns == info.st_mtime_ns
    model = OracleModel()
    second = run_batch(_config(tmp_path, model))
    assert _statuses(second) == [("a", "ok"), ("b", "skipped")] and model.encode_calls == 1


def test_a_replaced_checkpoint_is_redone(tmp_path: Path, oracle_loader: list) -> None:  # noqa: F811
    _cases(tmp_path)
    checkpoint = _checkpoint_file(tmp_path)
    assert _statuses(run_batch(_config(tmp_path, checkpoint))) == [("a", "ok"), ("b", "ok")]
    assert _statuses(run_batch(_config(tmp_path, checkpoint))) == [("a", "skipped"),
                                                                   ("b", "skipped")]
    content = checkpoint.read_bytes()
    checkpoint.unlink()
    checkpoint.write_bytes(content)  # copied (or downloaded) again: same weights, new time
    assert _statuses(run_batch(_config(tmp_path, checkpoint))) == [("a", "skipped"),
                                                                   ("b", "skipped")]
    checkpoint.write_bytes(b"other weights, same path")
    assert _statuses(run_batch(_config(tmp_path, checkpoint))) == [("a", "ok"), ("b", "ok")]


def test_other_session_options_redo_the_cases(tmp_path: Path, caplog) -> None:
    """Masks made with other options than the run's (zoom, clicked components, windows,
    prompting, ...) are not kept on resume; the same options keep them; a journal record from
    a version that did not record its options is redone."""
    _cases(tmp_path)
    first = run_batch(_config(tmp_path, OracleModel()))
    assert _statuses(first) == [("a", "ok"), ("b", "ok")]
    assert first.results[0].record()["session_options"]["zoom"] is True
    assert _statuses(run_batch(_config(tmp_path, OracleModel()))) == [("a", "skipped"),
                                                                      ("b", "skipped")]
    for option, value in (("zoom", False), ("keep_clicked", False), ("max_windows", 2),
                          ("prompt_mode", "cumulative"), ("reuse_regions", False)):
        with caplog.at_level("INFO", logger="SGPSAMLib.batch_journal"):
            redone = run_batch(_config(tmp_path, OracleModel(), **{option: value}))
        assert _statuses(redone) == [("a", "ok"), ("b", "ok")], option
        assert f"{option}: " in caplog.text, option
        caplog.clear()
        # The journal now holds the records of those options: back to the defaults redoes.
        assert _statuses(run_batch(_config(tmp_path, OracleModel()))) == [("a", "ok"),
                                                                          ("b", "ok")]
    out = tmp_path / "out"
    journal = next(out.glob("sgpsam_batch*.jsonl"))
    records = [json.loads(line) for line in journal.read_text().splitlines() if line.strip()]
    for record in records:
        record.pop("session_options")
    journal.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert _statuses(run_batch(_config(tmp_path, OracleModel()))) == [("a", "ok"), ("b", "ok")]


@pytest.mark.parametrize("damage", ["truncate", "garbage", "delete", "empty"])
def test_a_damaged_output_is_redone(tmp_path: Path, damage: str) -> None:
    _cases(tmp_path)
    first = run_batch(_config(tmp_path, OracleModel()))
    out = tmp_path / "out" / "a.nii.gz"
    good = out.read_bytes()
    if damage == "truncate":
        out.write_bytes(good[: len(good) // 2])
    elif damage == "garbage":
        out.write_bytes(good[:40] + bytes(len(good) - 40))
    elif damage == "empty":
        out.write_bytes(b"")
    else:
        out.unlink()
    model = OracleModel()
    second = run_batch(_config(tmp_path, model))
    assert _statuses(second) == [("a", "ok"), ("b", "skipped")] and model.encode_calls == 1
    assert second.results[0].voxels == first.results[0].voxels > 0
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    assert int(np.count_nonzero(labels)) == first.results[0].voxels


def test_an_output_edited_by_hand_is_kept_and_counted(tmp_path: Path) -> None:
    """A mask corrected in Slicer and saved over the output is never overwritten by a resume;
    the summary shows what is on disk now, with a warning."""
    _cases(tmp_path)
    run_batch(_config(tmp_path, OracleModel()))
    out = tmp_path / "out" / "a.nii.gz"
    edited = sitk.ReadImage(str(out))
    array = np.zeros(sitk.GetArrayFromImage(edited).shape, np.uint8)
    array[5:7, 10:13, 10:14] = 1  # 24 voxels drawn by hand
    corrected = sitk.GetImageFromArray(array)
    corrected.CopyInformation(edited)
    sitk.WriteImage(corrected, str(out))
    before = out.read_bytes()
    model = OracleModel()
    second = run_batch(_config(tmp_path, model))
    assert _statuses(second) == [("a", "skipped"), ("b", "skipped")] and model.encode_calls == 0
    row = second.results[0]
    assert row.voxels == 24 and row.lesions == 1 and out.read_bytes() == before
    assert any("changed after the run" in w and "--overwrite" in w for w in row.warnings)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["cases"][0]["voxels"] == 24


# ------------------------------------------------------------------------------------------------
# Item 10: a torn journal line.

def test_a_torn_journal_line_never_swallows_the_next_record(tmp_path: Path) -> None:
    journal = tmp_path / "sgpsam_batch.jsonl"
    append_journal(journal, {"case": "a", "status": "ok", "finished_at": "1"})
    with open(journal, "a", encoding="utf-8") as handle:  # a kill in the middle of a write
        handle.write('{"case":"b","status":"ok","fin')
    append_journal(journal, {"case": "c", "status": "ok", "finished_at": "3"})
    lines = journal.read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[2])["case"] == "c"
    assert sorted(read_journals(tmp_path)) == ["a", "c"]
    # A journal of an older version, where the record was glued to the torn text, is read too.
    journal.write_text('{"case":"a","status":"ok","finished_at":"1"}\n'
                       '{"case":"b","sta{"case":"c","status":"ok","finished_at":"3"}\n')
    assert sorted(read_journals(tmp_path)) == ["a", "c"]


KILL_MID_APPEND = """
import json, os, signal, sys
sys.path.insert(0, sys.argv[1])
from test_batch import OracleModel
import SGPSAMLib.batch as batch
from SGPSAMLib.batch import BatchConfig, run_batch

real, count = batch.append_journal, [0]

def torn(path, record):
    count[0] += 1
    if count[0] == 2:  # the second case: half of its line reaches the disk, then kill -9
        line = json.dumps(record, separators=(",", ":"))
        with open(path, "ab") as handle:
            handle.write(line[: len(line) // 2].encode())
        os.kill(os.getpid(), signal.SIGKILL)
    real(path, record)

batch.append_journal = torn
run_batch(BatchConfig(input=sys.argv[2], output=sys.argv[3], model=OracleModel(), device="cpu"))
"""


def test_kill_during_a_journal_append_loses_no_later_record(tmp_path: Path) -> None:
    folder = _cases(tmp_path, ("a", "b", "c"))
    out = tmp_path / "out"
    script = tmp_path / "kill.py"
    script.write_text(KILL_MID_APPEND)
    result = subprocess.run([sys.executable, str(script), str(HERE), str(folder), str(out)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == -9, result.stderr[-3000:]
    assert (out / "b.nii.gz").is_file()  # written, but its journal line is torn
    model = OracleModel()
    second = run_batch(_config(tmp_path, model))
    assert _statuses(second) == [("a", "skipped"), ("b", "ok"), ("c", "ok")]
    model = OracleModel()
    third = run_batch(_config(tmp_path, model))  # nothing lost: everything is done
    assert _statuses(third) == [("a", "skipped"), ("b", "skipped"), ("c", "skipped")]
    assert model.encode_calls == 0
    assert not (out / ".sgpsam_batch.lock").exists()


# ------------------------------------------------------------------------------------------------
# Item 9: stale temporaries of this run's own files.

def test_stale_temporaries_of_this_run_are_removed_on_start(tmp_path: Path) -> None:
    _cases(tmp_path)
    run_batch(_config(tmp_path, OracleModel()))
    out = tmp_path / "out"
    ours = [out / ".summary.tmp01234567.csv", out / ".summary.tmp89abcdef.json",
            out / ".a.tmp0123abcd.nii.gz"]  # "a" is skipped below: never rewritten
    theirs = [out / ".summary_shard0of2.tmp01234567.csv", out / ".notes.tmp01234567.txt",
              out / ".a.tmp0123abcd.nrrd"]
    for path in ours + theirs:
        path.write_bytes(b"left by a kill")
    assert _statuses(run_batch(_config(tmp_path, OracleModel()))) == [("a", "skipped"),
                                                                      ("b", "skipped")]
    assert not any(p.exists() for p in ours) and all(p.exists() for p in theirs)


# ------------------------------------------------------------------------------------------------
# Item 11: two runs on one output folder.

def test_a_second_run_on_the_same_folder_is_refused(tmp_path: Path) -> None:
    _cases(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    lock = lock_output_folder(out, None)
    try:
        with pytest.raises(FolderInUse, match=f"{out} is in use by process {os.getpid()}"):
            run_batch(_config(tmp_path, OracleModel()))
        with pytest.raises(FolderInUse, match="in use by an unsharded batch run"):
            run_batch(_config(tmp_path, OracleModel(), shard=(0, 2)))
    finally:
        lock.release()
    assert not list(out.glob("*.nii.gz"))  # nothing was written by the refused runs
    shard = lock_output_folder(out, (0, 2))
    try:  # shards of one cohort share the folder; an unsharded run waits for them
        assert _statuses(run_batch(_config(tmp_path, OracleModel(), shard=(1, 2)))) == [
            ("b", "ok")]
        with pytest.raises(FolderInUse, match="in use by batch shard 0/2"):
            run_batch(_config(tmp_path, OracleModel()))
        with pytest.raises(FolderInUse, match="in use"):
            run_batch(_config(tmp_path, OracleModel(), shard=(0, 2)))
    finally:
        shard.release()
    assert _statuses(run_batch(_config(tmp_path, OracleModel()))) == [("a", "ok"),
                                                                      ("b", "skipped")]


HOLD_LOCK = """
import sys
from pathlib import Path
from SGPSAMLib.batch_journal import lock_output_folder
lock = lock_output_folder(Path(sys.argv[1]), None)
print("locked", flush=True)
sys.stdin.read()
"""


def test_cli_second_run_says_folder_in_use_then_a_killed_holder_blocks_nothing(
        tmp_path: Path, oracle_loader: list, capsys: pytest.CaptureFixture) -> None:  # noqa: F811
    folder = _cases(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        args = ["batch", str(folder), "--model", str(_checkpoint_file(tmp_path)), "--out",
                str(out), "--device", "cpu", "--json-progress"]
        assert main(args) == 2
        captured = capsys.readouterr()
        (record,) = [json.loads(line) for line in captured.out.splitlines()]
        assert record["event"] == "error" and f"is in use by process {holder.pid}" in \
            record["message"]
        assert captured.err.count("\n") == 1 and "another batch run uses this folder" in \
            captured.err
    finally:
        holder.send_signal(signal.SIGKILL)  # kill -9: its lock file stays behind, stale
        holder.wait(timeout=60)
    assert (out / ".sgpsam_batch.lock").exists()
    started = time.perf_counter()
    assert main(args) == 0 and time.perf_counter() - started < 120
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["status"] for r in records if r["event"] == "case"] == ["ok", "ok"]


# ------------------------------------------------------------------------------------------------
# Item 5 through the command line: Excel's Windows CSV runs; an undecodable one is a JSON error.

def test_cli_batch_with_a_windows_csv_and_an_undecodable_one(
        tmp_path: Path, oracle_loader: list, capsys: pytest.CaptureFixture) -> None:  # noqa: F811
    folder = tmp_path / "in"
    folder.mkdir()
    image = _image()
    sitk.WriteImage(image, str(folder / "a.nii.gz"))
    r, a, s = _ras(image, BLOBS[0][0])
    seeds = tmp_path / "seeds.csv"
    seeds.write_bytes(f"case;x;y;z;label;lesion\r\na;{r};{a};{s};+;lésion\r\n".encode("cp1252"))
    args = ["batch", str(folder), "--model", str(_checkpoint_file(tmp_path)), "--out",
            str(tmp_path / "out"), "--seeds", str(seeds), "--device", "cpu", "--json-progress",
            "--format", "seg.nrrd"]
    assert main(args) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["status"] for r in records if r["event"] == "case"] == ["ok"]
    header = (tmp_path / "out" / "a.seg.nrrd").read_bytes()[:4000]
    assert "lésion".encode() in header
    seeds.write_bytes(b"case,x,y,z\na\x81,1,2,3\n")
    assert main(args) == 2
    captured = capsys.readouterr()
    (record,) = [json.loads(line) for line in captured.out.splitlines()]
    assert record["event"] == "error" and "seeds.csv:2: byte 0x81" in record["message"]
    assert "Traceback" not in captured.err and captured.err.startswith("sgpsam: error:")


def test_markups_next_to_each_image_may_carry_a_bom(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    image = _one_lesion_case(folder, "a")
    path = folder / "a.mrk.json"
    _markups(path, [("lesion", [(_ras(image, BLOBS[1][0]), "F-1")])])
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert _statuses(run_batch(_config(tmp_path, OracleModel()))) == [("a", "ok")]
