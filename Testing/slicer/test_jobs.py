"""ChildJob and the process seam: scripted runs with ReplayRunner, one real child process."""
from __future__ import annotations

import os
import sys
import textwrap
import time
from pathlib import Path

import pytest
from replay import ReplayRunner
from SGPSAMSlicerLib.child_job import ChildJob, JobState, format_duration, progress_fraction
from SGPSAMSlicerLib.interpreter import child_environment, library_root, python_executable
from SGPSAMSlicerLib.processes import SubprocessRunner


class FakeClock:
    """A settable monotonic clock, so ETA arithmetic is exact."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _progress(step: int, total: int = 8, **extra) -> dict:
    return {"event": "progress", "step": step, "total_steps": total, **extra}


def test_successful_run_reports_progress_eta_log_and_summary() -> None:
    runner = ReplayRunner(chunks=[
        [{"event": "start", "total_steps": 8}, "plain log line"],
        _progress(2, eta_s=30.0),
        [_progress(6, eta_s=7.4), '{"not": "an event"}', "{broken json"],
        {"event": "done", "best": "/m/best.pt", "stopped": False},
    ])
    events, states, logs = [], [], []
    job = ChildJob(["python", "-m", "SGPSAMLib", "train"], runner=runner, title="Training",
                   env={"A": "1"}, cwd="/tmp", on_event=events.append, on_state=states.append,
                   on_log=logs.append)
    assert job.state is JobState.IDLE and job.poll() == []
    job.start()
    assert runner.calls == [(["python", "-m", "SGPSAMLib", "train"], {"A": "1"}, "/tmp")]
    assert job.state is JobState.RUNNING and job.state.active

    assert [r["event"] for r in job.poll()] == ["start"]
    assert job.fraction == 0.0 and logs == ["plain log line"]
    job.poll()
    assert job.fraction == pytest.approx(0.25) and job.eta_text == "30 s left"
    job.poll()
    assert job.fraction == pytest.approx(0.75) and job.eta_text == "7 s left"
    assert logs == ["plain log line", '{"not": "an event"}', "{broken json"]
    job.poll()  # "done" arrives and the process has exited with 0
    assert job.state is JobState.FINISHED and job.state.ended
    assert job.fraction == 1.0 and job.eta_text == "" and job.returncode == 0
    assert job.summary == {"event": "done", "best": "/m/best.pt", "stopped": False}
    assert [e["event"] for e in events] == ["start", "progress", "progress", "done"]
    assert states == [JobState.RUNNING, JobState.FINISHED]
    assert job.error_message == "" and "finished" in job.status_text
    assert job.poll() == []  # ended jobs stay quiet


def test_eta_is_extrapolated_when_the_child_gives_none() -> None:
    clock = FakeClock()
    runner = ReplayRunner(chunks=[{"event": "progress", "cases_done": 1, "total_cases": 4}],
                          hang=True)
    job = ChildJob(["x"], runner=runner, clock=clock)
    job.start()
    clock.now += 10.0
    job.poll()
    assert job.fraction == pytest.approx(0.25)
    assert job.eta_s == pytest.approx(30.0) and job.eta_text == "30 s left"
    assert job.elapsed_s == pytest.approx(10.0) and job.state is JobState.RUNNING


def test_crash_without_done_fails_with_the_stderr_tail() -> None:
    stderr = [f"line {i}" for i in range(30)] + ["Traceback (most recent call last):",
                                                 "RuntimeError: boom"]
    runner = ReplayRunner(chunks=[_progress(1)], exit_code=1, stderr=stderr)
    job = ChildJob(["x"], runner=runner, title="Batch")
    job.start()
    job.poll()
    assert job.state is JobState.FAILED and job.returncode == 1
    lines = job.error_message.splitlines()
    assert lines[0] == "Batch failed with exit code 1."
    assert lines[-2:] == ["Traceback (most recent call last):", "RuntimeError: boom"]
    assert "line 19" not in job.error_message and "line 20" in job.error_message
    assert job.status_text == lines[0]


@pytest.mark.parametrize("code", [-9, 137])
def test_sigkill_is_reported_as_out_of_memory(code: int) -> None:
    job = ChildJob(["x"], runner=ReplayRunner(chunks=[_progress(1)], exit_code=code),
                   title="Training")
    job.start()
    job.poll()
    assert job.state is JobState.FAILED
    assert job.error_message.startswith("Training ran out of memory")


def test_error_record_and_cli_error_line_become_the_headline() -> None:
    job = ChildJob(["x"], runner=ReplayRunner(
        chunks=[{"event": "error", "message": "--data /d: no cases found"}], exit_code=2,
        stderr=["sgpsam: error: --data /d: no cases found"]), title="Training")
    job.start()
    job.poll()
    assert job.state is JobState.FAILED
    assert job.error_message.splitlines()[0] == "Training failed: --data /d: no cases found"
    assert "error: --data /d: no cases found" in job.log

    job = ChildJob(["x"], runner=ReplayRunner(exit_code=2, stderr=[
        "sgpsam: error: --model m.pt: no such file"]), title="Batch")
    job.start()
    job.poll()
    assert job.error_message.splitlines()[0] == "Batch failed: --model m.pt: no such file"


def test_signal_crash_and_silent_exit() -> None:
    job = ChildJob(["x"], runner=ReplayRunner(exit_code=-11), title="Batch")
    job.start()
    job.poll()
    assert job.state is JobState.FAILED
    assert job.error_message == "Batch crashed: killed by signal SIGSEGV (11)."

    job = ChildJob(["x"], runner=ReplayRunner(exit_code=0), title="Batch")
    job.start()
    job.poll()
    assert job.state is JobState.FAILED
    assert "without reporting that it was done" in job.error_message


def test_stop_sends_terminate_and_ends_stopped_on_done() -> None:
    runner = ReplayRunner(chunks=[_progress(1)], hang=True,
                          stop_chunks=[[_progress(2), {"event": "done", "stopped": True}]])
    states = []
    job = ChildJob(["x"], runner=runner, title="Batch", on_state=states.append)
    job.start()
    for _ in range(5):
        job.poll()
    assert job.state is JobState.RUNNING and job.fraction == pytest.approx(1 / 8)
    job.stop()
    assert runner.handles[0].terminated and job.state is JobState.STOPPING
    assert job.stop_requested and "stopping" in job.status_text
    job.stop()  # a second click changes nothing
    job.poll()
    assert job.state is JobState.STOPPED and job.summary["stopped"] is True
    assert job.fraction == pytest.approx(2 / 8)  # not 1.0: the run was cut short
    assert states == [JobState.RUNNING, JobState.STOPPING, JobState.STOPPED]
    assert job.error_message == ""


def test_stop_then_kill_without_done_is_stopped_not_oom() -> None:
    job = ChildJob(["x"], runner=ReplayRunner(hang=True, stop_chunks=[[]], stop_exit_code=1))
    job.start()
    job.stop()
    job.poll()
    job.poll()
    assert job.state is JobState.STOPPED and "exit code 1" in job.status_text

    runner = ReplayRunner(hang=True)
    job = ChildJob(["x"], runner=runner)
    job.start()
    job.kill()
    job.poll()
    assert runner.handles[0].killed and job.returncode == -9
    assert job.state is JobState.STOPPED and job.error_message == ""


def test_start_failure_leaves_a_failed_job() -> None:
    runner = ReplayRunner(fail_start=FileNotFoundError(2, "No such file", "/no/PythonSlicer"))
    job = ChildJob(["/no/PythonSlicer", "-m", "SGPSAMLib"], runner=runner, title="Batch")
    job.start()
    assert job.state is JobState.FAILED
    assert job.error_message.startswith("Batch could not be started:")
    assert "/no/PythonSlicer" in job.error_message
    with pytest.raises(RuntimeError, match="already started"):
        job.start()


def test_progress_fraction_and_duration_formatting() -> None:
    assert progress_fraction({"fraction": 0.3}) == pytest.approx(0.3)
    assert progress_fraction({"fraction": 7}) == 1.0
    assert progress_fraction({"step": 3, "total_steps": 12}) == pytest.approx(0.25)
    assert progress_fraction({"done": 1, "total": 0}) is None
    assert progress_fraction({"step": True, "total_steps": 2}) is None
    assert progress_fraction({"event": "progress"}) is None
    assert [format_duration(s) for s in (0, 42.4, 60, 185, 3720, -1, float("nan"))] == [
        "0 s", "42 s", "1 min 00 s", "3 min 05 s", "1 h 02 min", "", ""]


def test_python_executable_is_python_real_inside_slicer(tmp_path: Path) -> None:
    """Issue 15: never the PythonSlicer launcher when Slicer's real interpreter exists."""
    exe = ".exe" if os.name == "nt" else ""
    assert python_executable(inside_slicer=False) == sys.executable
    assert python_executable(inside_slicer=True, which=lambda name: f"/opt/bin/{name}") == \
        "/opt/bin/python-real"
    # Inside Slicer sys.executable is PythonSlicer; python-real sits beside it.
    bin_dir = tmp_path / "Slicer" / "bin"
    bin_dir.mkdir(parents=True)
    launcher = bin_dir / f"PythonSlicer{exe}"
    real = bin_dir / f"python-real{exe}"
    launcher.write_text("")
    real.write_text("")
    assert python_executable(inside_slicer=True, which=lambda name: None,
                             executable=str(launcher)) == str(real)
    # macOS: Slicer.app/Contents is slicerHome and python-real is in Contents/bin.
    contents = tmp_path / "Slicer.app" / "Contents"
    (contents / "bin").mkdir(parents=True)
    (contents / "bin" / f"python-real{exe}").write_text("")
    mac_real = contents / "bin" / f"python-real{exe}"
    assert python_executable(inside_slicer=True, which=lambda name: None,
                             executable=str(tmp_path / "elsewhere" / "SlicerApp-real"),
                             slicer_home=str(contents)) == str(mac_real)
    # Only when no python-real exists: the launcher (found on PATH, or beside the app).
    real.unlink()
    assert python_executable(inside_slicer=True, which=lambda name: None,
                             executable=str(launcher), slicer_home="") == str(launcher)
    assert python_executable(inside_slicer=True, which=lambda name: {
        "PythonSlicer": "/opt/bin/PythonSlicer"}.get(name), executable=str(launcher),
        slicer_home="") == "/opt/bin/PythonSlicer"
    launcher.unlink()
    app = bin_dir / f"SlicerApp-real{exe}"
    assert python_executable(inside_slicer=True, which=lambda name: None,
                             executable=str(app), slicer_home="") == str(app)
    assert python_executable() == sys.executable  # slicer-core or nothing: not the app


def test_child_environment_puts_the_library_first_on_pythonpath() -> None:
    root = library_root()
    assert (root / "SGPSAMLib" / "__init__.py").is_file()
    env = child_environment({"PYTHONPATH": os.pathsep.join(["/a", str(root), "/b"]),
                             "KEEP": "yes"})
    assert env["PYTHONPATH"].split(os.pathsep) == [str(root), "/a", "/b"]
    assert env["KEEP"] == "yes" and env["PYTHONUNBUFFERED"] == "1"
    assert child_environment({})["PYTHONPATH"] == str(root)


_CHILD = textwrap.dedent("""
    import importlib.util, json, signal, sys, time
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    spec = importlib.util.find_spec("SGPSAMLib")
    print(json.dumps({"event": "start", "total_steps": 1000,
                      "lib": spec.origin if spec else None}), flush=True)
    print("a plain line", flush=True)
    print("warming up on stderr", file=sys.stderr, flush=True)
    step = 0
    while not stop and step < 1000:
        step += 1
        print(json.dumps({"event": "progress", "step": step, "total_steps": 1000}), flush=True)
        time.sleep(0.02)
    print("got SIGTERM, saving", file=sys.stderr, flush=True)
    print(json.dumps({"event": "done", "stopped": bool(stop), "steps": step}), flush=True)
""")


@pytest.mark.skipif(os.name == "nt", reason="SIGTERM handling is POSIX-only")
def test_subprocess_runner_streams_lines_and_stops_on_sigterm() -> None:
    job = ChildJob([python_executable(), "-c", _CHILD], runner=SubprocessRunner(grace_s=20.0),
                   env=child_environment(), title="Child")
    job.start()
    deadline = time.monotonic() + 30.0
    seen = []
    while time.monotonic() < deadline and not any(r["event"] == "progress" for r in seen):
        seen.extend(job.poll())
        time.sleep(0.02)
    assert seen and seen[0]["event"] == "start" and job.state is JobState.RUNNING
    assert seen[0]["lib"] == str(library_root() / "SGPSAMLib" / "__init__.py")
    job.stop()
    while time.monotonic() < deadline and job.state.active:
        job.poll()
        time.sleep(0.02)
    assert job.state is JobState.STOPPED, job.error_message
    assert job.returncode == 0 and job.summary["stopped"] is True
    assert 1 <= job.summary["steps"] < 1000 and job.fraction < 1.0
    assert "a plain line" in job.log
    assert job.handle.stderr_tail() == ["warming up on stderr", "got SIGTERM, saving"]
