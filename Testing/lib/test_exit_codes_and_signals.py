"""Exit codes a script can trust, warnings for empty results, one signal rule, plain progress
lines in logs (issue 13 items 5, 6, 7, 9) through the real command line."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from SGPSAMLib import build
from SGPSAMLib.cli import main
from SGPSAMLib.cli.batch import exit_status

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_batch import OracleModel, _image, _markups, _one_lesion_case, _ras  # noqa: E402

import SGPSAMLib  # noqa: E402

ROOT = Path(SGPSAMLib.__file__).resolve().parent.parent


class EmptyModel(OracleModel):
    """The oracle's interface, but every logit is negative: every mask is empty."""

    def decode(self, embedding, points, labels, mask_logits):
        return torch.full_like(embedding[:, :1].float(), -5.0)


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list:
    """``load_model`` hands out oracle models (EmptyModel for files named empty*.pt)."""
    calls: list = []

    def fake(path, device="cpu", preset=None):
        calls.append(Path(path))
        return EmptyModel() if Path(path).name.startswith("empty") else OracleModel()

    monkeypatch.setattr(build, "load_model", fake)
    return calls


def _model(tmp_path: Path, name: str = "model.pt") -> Path:
    path = tmp_path / name
    path.write_bytes(b"not read: load_model is replaced")
    return path


def _batch(tmp_path: Path, capsys, *extra: str, model: Path | None = None):
    code = main(["batch", str(tmp_path / "in"), "--model", str(model or _model(tmp_path)),
                 "--out", str(tmp_path / "out"), "--device", "cpu", *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _cases(tmp_path: Path, *names: str, outside: tuple[str, ...] = (), bare: tuple = ()):
    folder = tmp_path / "in"
    folder.mkdir(exist_ok=True)
    for name in names:
        _one_lesion_case(folder, name)
    for name in outside:  # a seed 1 m away: the case fails
        image = _image()
        sitk.WriteImage(image, str(folder / f"{name}.nii.gz"))
        _markups(folder / f"{name}.mrk.json", [("lesion", [([1000.0, 0.0, 0.0], "F-1")])])
    for name in bare:  # no seed file
        sitk.WriteImage(_image(), str(folder / f"{name}.nii.gz"))
    return folder


# -- batch exit status ------------------------------------------------------------------------

def test_exit_status_rule() -> None:
    assert exit_status({"ok": 2, "skipped": 1, "no_seeds": 0, "failed": 0}) == 0
    assert exit_status({"ok": 2, "skipped": 0, "no_seeds": 1, "failed": 0}) == 0
    assert exit_status({"ok": 0, "skipped": 1, "no_seeds": 1, "failed": 0}) == 0
    assert exit_status({"ok": 3, "skipped": 0, "no_seeds": 0, "failed": 1}) == 1
    assert exit_status({"ok": 0, "skipped": 0, "no_seeds": 2, "failed": 0}) == 1


def test_a_failed_case_gives_exit_1(tmp_path, loads, capsys) -> None:
    _cases(tmp_path, "a", outside=("b",))
    code, out, err = _batch(tmp_path, capsys)
    assert code == 1, err
    assert out.startswith("done: 1 ok, 0 skipped, 0 without seeds, 1 failed")
    assert "b: FAILED: seed" in err and "is outside the image" in err
    # Run again: a is skipped, b fails again -> still 1; fixed, everything done -> 0.
    assert _batch(tmp_path, capsys)[0] == 1
    (tmp_path / "in" / "b.mrk.json").unlink()
    (tmp_path / "in" / "b.nii.gz").unlink()
    assert _batch(tmp_path, capsys)[0] == 0
    assert loads == [tmp_path / "model.pt"]  # run 1 only: later runs segmented nothing new


def test_no_case_with_seeds_gives_exit_1(tmp_path, loads, capsys) -> None:
    _cases(tmp_path, bare=("a", "b"))
    code, out, err = _batch(tmp_path, capsys)
    assert code == 1
    assert out.startswith("done: 0 ok, 0 skipped, 2 without seeds, 0 failed")
    assert "a: no seeds: no seed file" in err and loads == []


def test_a_model_that_cannot_be_loaded_gives_exit_2_once(tmp_path, capsys) -> None:
    """A broken checkpoint is read once, the run ends with its message: no failed rows."""
    _cases(tmp_path, "a", "b", "c")
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"this is not a checkpoint")
    reads = []
    real = build.read_checkpoint

    def counting(path):
        reads.append(path)
        return real(path)

    build.read_checkpoint, saved = counting, build.read_checkpoint
    try:
        code, out, err = _batch(tmp_path, capsys, "--json-progress", model=broken)
    finally:
        build.read_checkpoint = saved
    assert code == 2
    assert reads == [broken]
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["event"] for r in records if r["event"] != "progress"] == ["start", "error"]
    assert "broken.pt: not a readable PyTorch checkpoint" in records[-1]["message"]
    assert err.count("sgpsam: error:") == 1 and "Traceback" not in err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["cases"] == []  # no case was marked failed for the model's fault


def _unwritable(folder: Path) -> bool:
    """Make ``folder`` unwritable (chmod; chattr +i for root); False if that is impossible."""
    folder.chmod(0o500)
    probe = folder / ".probe"
    try:
        probe.touch()
    except OSError:
        return True
    probe.unlink()
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True,
                      check=False).returncode != 0:
        return False
    try:
        probe.touch()
    except OSError:
        return True
    probe.unlink()
    return False


def test_an_unwritable_out_is_found_before_any_work(tmp_path, loads, capsys) -> None:
    _cases(tmp_path, "a", "b")
    out = tmp_path / "out"
    out.mkdir()
    try:
        if not _unwritable(out):
            pytest.skip("cannot make a folder unwritable here")
        code, stdout, err = _batch(tmp_path, capsys, "--json-progress")
    finally:
        subprocess.run(["chattr", "-i", str(out)], capture_output=True, check=False)
        out.chmod(0o700)
    assert code == 2
    assert f"output {out}: cannot write there" in err
    assert loads == []  # no model load, no case started
    assert [json.loads(line)["event"] for line in stdout.splitlines()] == ["error"]
    assert list(out.iterdir()) == []


def test_an_input_without_volumes_is_an_error(tmp_path, loads, capsys) -> None:
    (tmp_path / "in").mkdir()
    code, _, err = _batch(tmp_path, capsys)
    assert code == 2 and "no volumes found" in err and "--recursive" in err
    assert not (tmp_path / "out").exists()


# -- warnings for empty results ---------------------------------------------------------------

def test_batch_marks_empty_masks_and_seeds_on_background(tmp_path, loads, capsys) -> None:
    folder = _cases(tmp_path, "a")
    image = _image()
    sitk.WriteImage(image, str(folder / "b.nii.gz"))
    corner = _ras(image, (1.0, 1.0, 1.0))  # the image's darkest level, far from both blobs
    _markups(folder / "b.mrk.json", [("lesion", [(corner, "F-1")])])
    code, out, err = _batch(tmp_path, capsys, model=_model(tmp_path, "empty.pt"))
    assert code == 0, err  # written; the warnings say it needs a look
    assert "2 with warnings" in out
    assert "a: warning: lesion 'lesion': empty mask" in err
    assert "b: warning: lesion 'lesion': seed" in err and "lies on background or air" in err
    with open(tmp_path / "out" / "summary.csv", newline="") as handle:
        rows = {row["case"]: row for row in csv.DictReader(handle)}
    assert rows["a"]["status"] == "ok" and "empty mask" in rows["a"]["warnings"]
    assert "background or air" in rows["b"]["warnings"]
    assert "background" not in rows["a"]["warnings"]  # a's seed is inside a blob


def _small_image(path: Path) -> tuple[Path, list[float], list[float]]:
    """Air (0) on the left, tissue (100) and a bright ball (600): RAS of ball and air."""
    array = np.full((24, 48, 48), 100.0, np.float32)
    array[:, :, :8] = 0.0
    kk, jj, ii = np.indices(array.shape)
    array[(kk - 12) ** 2 * 4 + (jj - 24) ** 2 + (ii - 30) ** 2 <= 64] = 600.0
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.5, 1.5, 3.0))
    sitk.WriteImage(image, str(path))
    ball = image.TransformIndexToPhysicalPoint((30, 24, 12))
    air = image.TransformIndexToPhysicalPoint((3, 24, 12))
    return path, [-ball[0], -ball[1], ball[2]], [-air[0], -air[1], air[2]]


def test_segment_warns_about_an_empty_mask_and_a_click_on_air(tmp_path, loads, capsys) -> None:
    image, ball, air = _small_image(tmp_path / "img.nii.gz")
    out = tmp_path / "m.nii.gz"
    point = "--point=" + ",".join(f"{v:.2f}" for v in ball)
    code = main(["segment", str(image), "--model", str(_model(tmp_path, "empty.pt")), point,
                 "--out", str(out), "--device", "cpu", "--json"])
    captured = capsys.readouterr()
    assert code == 0
    record = json.loads(captured.out)
    assert record["voxels"] == 0 and out.is_file()
    assert record["warnings"] == [captured.err.split("sgpsam: warning: ", 1)[1].strip()]
    assert "the prediction is empty (no voxel)" in captured.err
    # The oracle finds the ball: no warning; a click on air is named.
    assert main(["segment", str(image), "--model", str(_model(tmp_path)), point, "--out",
                 str(out), "--device", "cpu"]) == 0
    assert "warning" not in capsys.readouterr().err
    on_air = "--point=" + ",".join(f"{v:.2f}" for v in air)
    assert main(["segment", str(image), "--model", str(_model(tmp_path)), on_air, "--out",
                 str(out), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert f"sgpsam: warning: --point '{on_air[8:]}' lies on background or air (voxel value 0" \
        in err


# -- one signal rule --------------------------------------------------------------------------

def _signal_after_first_case(monkeypatch, signum: int, times: int = 1) -> None:
    from SGPSAMLib.cli import batch as cli_batch

    original = cli_batch.print_record
    seen = []

    def print_and_signal(record: dict) -> None:
        original(record)
        seen.append(record["event"])
        if record["event"] == "case" and seen.count("case") == 1:
            for _ in range(times):
                os.kill(os.getpid(), signum)

    monkeypatch.setattr(cli_batch, "print_record", print_and_signal)


def test_ctrl_c_stops_a_batch_cleanly(tmp_path, loads, capsys, monkeypatch) -> None:
    _cases(tmp_path, "a", "b", "c")
    _signal_after_first_case(monkeypatch, signal.SIGINT)
    before = signal.getsignal(signal.SIGINT)
    code, out, err = _batch(tmp_path, capsys, "--json-progress")
    assert code == 0
    assert signal.getsignal(signal.SIGINT) == before
    records = [json.loads(line) for line in out.splitlines()]
    assert records[-1]["event"] == "done" and records[-1]["stopped"] is True
    assert [r["case"] for r in records if r["event"] == "case"] == ["a"]
    assert "Ctrl-C received: stopping after the current lesion" in err
    assert sorted(p.name for p in (tmp_path / "out").glob("*.nii.gz")) == ["a.nii.gz"]


def test_a_second_ctrl_c_aborts_at_once(tmp_path, loads, capsys, monkeypatch) -> None:
    _cases(tmp_path, "a", "b", "c")
    _signal_after_first_case(monkeypatch, signal.SIGINT, times=2)
    code, _, err = _batch(tmp_path, capsys, "--json-progress")
    assert code == 130 and "sgpsam: interrupted (Ctrl-C)" in err
    assert not list((tmp_path / "out").glob(".*tmp*"))  # nothing half-written


def test_sigterm_aborts_a_short_command_cleanly(tmp_path, capsys, monkeypatch) -> None:
    image, ball, _ = _small_image(tmp_path / "img.nii.gz")

    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not interrupt")

    monkeypatch.setattr(build, "load_model", terminated)
    before = signal.getsignal(signal.SIGTERM)
    code = main(["segment", str(image), "--model", str(_model(tmp_path)),
                 "--point=" + ",".join(map(str, ball)), "--out", str(tmp_path / "m.nii.gz")])
    assert code == 143 and "sgpsam: interrupted (SIGTERM)" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.nii.gz", "model.pt"]


# -- progress in logs -------------------------------------------------------------------------

def test_batch_progress_in_a_log_is_plain_lines(tmp_path, loads) -> None:
    """A child process whose stderr is a file (a cluster log): no carriage-return bars."""
    _cases(tmp_path, "a", "b", bare=("c",))
    script = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
              "import test_exit_codes_and_signals as t, SGPSAMLib.build as b; "
              "b.load_model = lambda *a, **k: t.OracleModel(); "
              "from SGPSAMLib.cli import main; "
              f"sys.exit(main(['batch', {str(tmp_path / 'in')!r}, '--model', "
              f"{str(_model(tmp_path))!r}, '--out', {str(tmp_path / 'out')!r}, "
              "'--device', 'cpu']))")
    log = tmp_path / "batch.log"
    with open(log, "w") as handle:
        result = subprocess.run([sys.executable, "-c", script], stderr=handle,
                                stdout=subprocess.PIPE, text=True, timeout=600, check=False,
                                env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert result.returncode == 0, log.read_text()
    text = log.read_text()
    assert "\r" not in text and "it/s" not in text and "case/s" not in text
    lines = text.splitlines()
    assert lines[0].startswith("3 case(s) to process (3 found) -> ")
    assert any(line.startswith("c: no seeds: no seed file (expected ") for line in lines)
    assert lines[1] == "case 1/3: a ok"  # the first progress line at once, then <= 1 per 30 s
    assert lines[-1] == "case 3/3: c no_seeds"  # and always the last one


def _train_argv(tmp_path: Path, steps: int) -> list[str]:
    """A 3-case dataset of 32^3 balls and a tiny 64^3 init: `sgpsam train` arguments."""
    from SGPSAMLib.geometry import Volume
    from SGPSAMLib.io import write_labelmap, write_volume

    data = tmp_path / "data"
    data.mkdir()
    k, j, i = np.indices((32, 32, 32))
    for n in range(3):
        label = (((k - 16) ** 2 + (j - 15 - n) ** 2 + (i - 16) ** 2) <= 36).astype(np.uint8)
        volume = Volume((label * 150.0 + 10.0).astype(np.float32), np.diag([1.5] * 3 + [1.0]))
        write_volume(volume, data / f"c{n}.nii.gz")
        write_labelmap(label, volume, data / f"c{n}_label.nii.gz")
    init = tmp_path / "tiny64.pt"
    torch.manual_seed(0)
    build.save_checkpoint(build.build_model("tiny", image_size=64), init)
    return ["train", "--data", str(data), "--out", str(tmp_path / "run"), "--init", str(init),
            "--mode", "finetune", "--steps", str(steps), "--batch-size", "1", "--click-iters",
            "1", "--val-cases", "c2", "--val-every", "2", "--device", "cpu"]


def test_ctrl_c_stops_training_cleanly_and_saves(tmp_path, capsys, monkeypatch) -> None:
    """`sgpsam train --help` promises it: Ctrl-C saves last.pt/state.pt and exits 0."""
    from SGPSAMLib.cli import train as cli_train

    original = cli_train._printer

    def printer(json_progress):
        emit, close = original(json_progress)

        def emit_then_interrupt(record):
            emit(record)
            if record.get("event") == "progress" and record["step"] == 1:
                os.kill(os.getpid(), signal.SIGINT)
        return emit_then_interrupt, close

    monkeypatch.setattr(cli_train, "_printer", printer)
    # What was installed before (a shell starts background jobs with SIGINT ignored).
    before = signal.getsignal(signal.SIGINT)
    code = main(_train_argv(tmp_path, steps=5) + ["--json-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    done = json.loads(captured.out.splitlines()[-1])
    assert done["event"] == "done" and done["stopped"] is True and done["step"] == 1
    assert build.load_model(tmp_path / "run" / "last.pt").checkpoint_metadata["step"] == 1
    assert "Ctrl-C received: stopping after the current step and saving" in captured.err
    assert signal.getsignal(signal.SIGINT) is before


def test_train_progress_without_a_terminal(tmp_path, capsys) -> None:
    """sgpsam train with stderr captured (not a terminal): plain step lines, no bar."""
    code = main(_train_argv(tmp_path, steps=2))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "\r" not in captured.err
    lines = captured.err.splitlines()
    assert lines[0].startswith("training finetune: steps 0..2 on cpu -> ")
    assert any(line.startswith("step 2/2: loss ") and "val Dice" in line for line in lines)
    assert any(line.startswith("saved best: ") for line in lines)
    assert captured.out.startswith("done at step 2: last ")
