"""The job protocol (SGPSAMLib.job) and the messages of issue 13 item 8, plus the Python 3.9
compatibility check CI runs (item 2)."""
from __future__ import annotations

import importlib.util
import io
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import SGPSAMLib
from SGPSAMLib.cli import main
from SGPSAMLib.errors import SGPSAMError
from SGPSAMLib.job import (
    EVENTS,
    AbortOnSignals,
    Interrupted,
    ProgressLines,
    StopOnSignals,
    error_record,
    is_stopped,
    json_safe,
    parse_record,
    print_record,
    report_errors,
    stop_requests,
)

ROOT = Path(SGPSAMLib.__file__).resolve().parent.parent


def test_json_safe_and_print_record() -> None:
    record = {"a": np.float32(0.5), "b": float("nan"), "c": (np.int64(3), float("inf")),
              "d": np.bool_(True), "e": np.zeros(2)}
    safe = json_safe(record)
    assert safe["a"] == 0.5 and safe["b"] is None and safe["c"] == [3, None]
    assert safe["d"] is True and isinstance(safe["e"], np.ndarray)  # arrays are left alone
    out = io.StringIO()
    print_record({"event": "done", "x": float("nan"), "n": np.int64(2)}, out)
    assert json.loads(out.getvalue()) == {"event": "done", "x": None, "n": 2}
    assert out.getvalue().count("\n") == 1 and "NaN" not in out.getvalue()


def test_records_are_read_back_as_written_and_other_lines_are_not_records() -> None:
    out = io.StringIO()
    for event in EVENTS:
        print_record({"event": event, "x": float("nan")}, out)
    lines = out.getvalue().splitlines()
    assert [parse_record(line) for line in lines] == [{"event": e, "x": None} for e in EVENTS]
    for line in ("", "loading model ...", "{not json", "[1, 2]", '{"event": 3}', '{"x": 1}'):
        assert parse_record(line) is None
    assert error_record(SGPSAMError("a:\n  b")) == {"event": "error", "message": "a: b"}


def test_report_errors_adds_an_error_record_only_with_json_progress() -> None:
    for enabled in (True, False):
        out = io.StringIO()
        with pytest.raises(SGPSAMError), report_errors(enabled, out):
            raise SGPSAMError("--data x: not a folder")
        assert out.getvalue() == ('{"event": "error", "message": "--data x: not a folder"}\n'
                                  if enabled else "")
    out = io.StringIO()
    with pytest.raises(KeyError), report_errors(True, out):  # a bug, not an input error
        raise KeyError("x")
    assert out.getvalue() == ""


def test_stop_requests_joins_the_signals_and_the_stop_file(tmp_path: Path) -> None:
    path = tmp_path / "stop"
    with stop_requests(str(path), None, "the current step") as stop:
        assert stop() is False
        path.touch()
        assert stop() is True
    path.unlink()
    with stop_requests(None, None, "the current step") as stop:
        assert stop() is False
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop() is True


def test_is_stopped_accepts_events_callables_and_none() -> None:
    event = threading.Event()
    assert not is_stopped(None) and not is_stopped(event) and not is_stopped(lambda: False)
    event.set()
    assert is_stopped(event) and is_stopped(lambda: True)


def test_stop_on_signals_first_stops_second_aborts() -> None:
    notes: list[str] = []
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with StopOnSignals(notify=notes.append, what="the current case") as signals:
        os.kill(os.getpid(), signal.SIGTERM)
        assert signals.event.is_set() and signals.received == signal.SIGTERM
        assert notes == ["SIGTERM received: stopping after the current case and saving; press "
                         "Ctrl-C again to abort at once"]
        with pytest.raises(Interrupted) as caught:
            os.kill(os.getpid(), signal.SIGINT)
    assert caught.value.exit_code == 130
    assert {s: signal.getsignal(s) for s in before} == before


def test_abort_on_signals_raises_with_the_signal() -> None:
    with pytest.raises(Interrupted) as caught, AbortOnSignals():
        os.kill(os.getpid(), signal.SIGTERM)
    assert caught.value.exit_code == 143 and str(caught.value) == "SIGTERM"
    assert isinstance(caught.value, KeyboardInterrupt)  # cleanups written for Ctrl-C run


def test_progress_lines_without_a_terminal_are_throttled_plain_lines() -> None:
    out = io.StringIO()
    lines = ProgressLines(10, "case", interval_s=3600.0, stream=out)
    assert not lines.is_bar
    for done in range(1, 11):
        lines.update(done, f"case{done} ok")
    lines.write("a message")
    lines.update(10, "again", force=True)
    lines.close()
    assert out.getvalue().splitlines() == ["case 1/10: case1 ok", "case 10/10: case10 ok",
                                           "a message", "case 10/10: again"]


def test_progress_lines_on_a_terminal_use_a_bar() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal()
    lines = ProgressLines(4, "step", stream=out)
    assert lines.is_bar
    lines.update(2, "loss 0.5")
    lines.close()
    assert "\r" in out.getvalue() and "loss 0.5" in out.getvalue()


# -- messages (item 8) ------------------------------------------------------------------------

def _image(path: Path) -> Path:
    image = sitk.GetImageFromArray(np.random.default_rng(0).random((8, 16, 16)).astype("f4"))
    sitk.WriteImage(image, str(path))
    return path


def test_an_absurd_point_is_shown_short(tmp_path: Path, capsys) -> None:
    image = _image(tmp_path / "img.nii.gz")
    (tmp_path / "out").mkdir()
    code = main(["segment", str(image), "--model", "demo", "--point=1e300,0,-2e20",
                 "--out", str(tmp_path / "out" / "m.nii.gz")])
    err = capsys.readouterr().err
    assert code == 2
    assert "(RAS 1e+300, 0.0, -2e+20 mm) is outside the image" in err
    assert len(err) < 400 and "000000000" not in err


def test_no_itk_line_before_our_own_error(tmp_path: Path) -> None:
    """ITK's 'GDCMSeriesFileNames ...: No Series were found' is silenced (--verbose keeps it)."""
    folder = tmp_path / "not_dicom"
    folder.mkdir()
    (folder / "notes.txt").write_text("x")
    argv = ["segment", str(folder), "--model", "demo", "--point=0,0,0", "--out",
            str(tmp_path / "m.nii.gz")]
    code = "import sys; from SGPSAMLib.cli import main; sys.exit(main(sys.argv[1:]))"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True,
                            text=True, env=env, timeout=300, check=False)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sgpsam: error: folder "), result.stderr
    verbose = subprocess.run([sys.executable, "-c", code, *argv, "--verbose"],
                             capture_output=True, text=True, env=env, timeout=300, check=False)
    assert "GDCMSeriesFileNames" in verbose.stderr  # the ITK line exists; it is only hidden


# -- the Python 3.9 check of CI (item 2) ------------------------------------------------------

def _compat_module():
    spec = importlib.util.spec_from_file_location("check_python_compat",
                                                  ROOT / ".ci" / "check_python_compat.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("source, found", [
    ("Alias = int | None\n", "type union evaluated at import time"),
    ("from pathlib import Path\nPathOrStr = Path | str\n", "type union evaluated at import"),
    ("x = isinstance(1, int | str)\n", "isinstance with an 'A | B' union"),
    ("pairs = list(zip([1], [2], strict=True))\n", "zip(strict=...) needs Python >= 3.10"),
    ("from dataclasses import dataclass\n@dataclass(slots=True)\nclass A:\n    x: int\n",
     "dataclass(slots=...)"),
    ("n = (5).bit_count()\n", ".bit_count needs Python >= 3.10"),
    ("from itertools import pairwise\n", None),  # an import alone is caught when it runs
    ("import os\nFLAGS = os.O_WRONLY | os.O_CREAT\nmask = a | b\ndef f(x: int | None): ...\n",
     None),
])
def test_the_python39_check_finds_newer_constructs(tmp_path: Path, source: str,
                                                   found: str | None) -> None:
    path = tmp_path / "snippet.py"
    path.write_text(source)
    problems = _compat_module()._problems(path)
    if found is None:
        assert problems == []
    else:
        assert len(problems) == 1 and found in problems[0], problems


def test_the_python39_check_passes_on_this_tree_with_this_python() -> None:
    result = subprocess.run([sys.executable, str(ROOT / ".ci" / "check_python_compat.py")],
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("\nok   ") + result.stdout.startswith("ok   ") == 3
