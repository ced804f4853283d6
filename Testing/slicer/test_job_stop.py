"""Stop that stops (issue 15, items 1, 2 and 11): real children behind a launcher-like wrapper.

Inside Slicer a child started through ``PythonSlicer`` (CTKAppLauncher) runs ``python-real``
as a grandchild; the launcher forwards no signal, does not tie its child's life to its own and
turns any abnormal end of its child into exit code 1 ("... exit abnormally - Report the
problem."). ``fake_launcher`` below behaves the same way, so these tests show that Stop reaches
the grandchild (through the stop file), that the job is not over while any process of its group
runs, that a stubborn tree is killed, and what a crash behind a launcher looks like.
"""
from __future__ import annotations

import os
import stat
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from SGPSAMSlicerLib import processes
from SGPSAMSlicerLib.child_job import STOP_FILE_OPTION, ChildJob, JobState, JobTab
from SGPSAMSlicerLib.interpreter import child_environment
from SGPSAMSlicerLib.processes import SubprocessRunner

pytestmark = pytest.mark.skipif(os.name == "nt", reason="the wrapper is a POSIX script")

_LAUNCHER = textwrap.dedent('''\
    #!{python}
    """Like CTKAppLauncher: start the real interpreter, forward no signal, exit 1 on a crash."""
    import os, subprocess, sys
    child = subprocess.Popen([{python!r}, *sys.argv[1:]])  # stdio inherited ("forwarded")
    pid_file = os.environ.get("FAKE_LAUNCHER_PID_FILE")
    if pid_file:
        with open(pid_file, "w") as handle:
            handle.write(str(child.pid))
    code = child.wait()
    if code < 0:
        print(f"[{python}] exit abnormally - Report the problem.", file=sys.stderr, flush=True)
        sys.exit(1)
    sys.exit(code)
''')

# A stand-in job: a step every 20 ms, stops when its stop file exists (unless told to ignore
# it, and SIGTERM too), then "saves" and reports done, as sgpsam train does.
_JOB = textwrap.dedent('''\
    import json, os, signal, sys, time
    stop_file = sys.argv[sys.argv.index("--stop-file") + 1] if "--stop-file" in sys.argv else None
    stubborn = "--stubborn" in sys.argv
    saved = sys.argv[sys.argv.index("--save") + 1]
    if stubborn:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print(json.dumps({"event": "start", "total_steps": 100000, "pid": os.getpid()}), flush=True)
    step = 0
    while step < 100000:
        if stop_file and os.path.exists(stop_file) and not stubborn:
            break
        if "--crash" in sys.argv and step == 3:
            os.kill(os.getpid(), signal.SIGKILL)
        step += 1
        print(json.dumps({"event": "progress", "step": step, "total_steps": 100000}), flush=True)
        time.sleep(0.02)
    with open(saved, "w") as handle:
        handle.write(str(step))
    print(json.dumps({"event": "done", "stopped": step < 100000, "steps": step}), flush=True)
''')


@pytest.fixture
def launcher(tmp_path: Path) -> Path:
    path = tmp_path / "fake_launcher"
    path.write_text(_LAUNCHER.format(python=sys.executable), encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def job_script(tmp_path: Path) -> Path:
    path = tmp_path / "job.py"
    path.write_text(_JOB, encoding="utf-8")
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait(job: ChildJob, condition, timeout: float = 60.0) -> list[dict]:
    records: list[dict] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not condition(records):
        records.extend(job.poll())
        time.sleep(0.02)
    return records


def _start_pid(records: list[dict]) -> int:
    return next(r["pid"] for r in records if r["event"] == "start")


def _has_progress(records: list[dict]) -> bool:
    return any(r["event"] == "progress" for r in records)


def _ended(job: ChildJob):
    return lambda records: not job.state.active


def test_stop_reaches_the_grandchild_behind_a_launcher(launcher, job_script, tmp_path) -> None:
    saved = tmp_path / "saved"
    job = ChildJob([str(launcher), str(job_script), "--save", str(saved)],
                   runner=SubprocessRunner(grace_s=30.0), env=child_environment(),
                   title="Training", stop_file_option=STOP_FILE_OPTION)
    job.start()
    records = _wait(job, _has_progress)
    grandchild = _start_pid(records)
    assert grandchild != job.handle.pid and _alive(grandchild)
    job.stop()
    _wait(job, _ended(job))
    assert job.state is JobState.STOPPED, job.error_message
    assert job.summary["stopped"] is True and saved.is_file()
    assert job.returncode == 0 and not _alive(grandchild)
    assert not Path(job.stop_file).parent.exists()  # the per-run folder is removed


def test_job_runs_until_its_whole_group_ended(launcher, job_script, tmp_path) -> None:
    """A launcher that dies does not end the job while its Python child goes on."""
    saved = tmp_path / "saved"
    job = ChildJob([str(launcher), str(job_script), "--save", str(saved)],
                   runner=SubprocessRunner(grace_s=30.0), env=child_environment(),
                   title="Batch", stop_file_option=STOP_FILE_OPTION)
    job.start()
    grandchild = _start_pid(_wait(job, _has_progress))
    os.kill(job.handle.pid, 9)  # only the launcher
    time.sleep(3 * processes.SubprocessHandle._EOF_WAIT_S)
    job.poll()
    assert job.state is JobState.RUNNING and _alive(grandchild)
    step = job.last_progress["step"]
    _wait(job, lambda records: job.last_progress["step"] > step + 5)
    job.stop()
    _wait(job, _ended(job))
    assert job.state is JobState.STOPPED and job.summary["stopped"] is True
    assert saved.is_file() and not _alive(grandchild)


def test_a_stubborn_tree_is_killed_after_the_grace_period(launcher, job_script, tmp_path,
                                                          monkeypatch) -> None:
    monkeypatch.setattr(processes, "TERM_TO_KILL_S", 0.5)
    job = ChildJob([str(launcher), str(job_script), "--save", str(tmp_path / "s"), "--stubborn"],
                   runner=SubprocessRunner(grace_s=0.5), env=child_environment(),
                   title="Training", stop_file_option=STOP_FILE_OPTION)
    job.start()
    grandchild = _start_pid(_wait(job, _has_progress))
    started = time.monotonic()
    job.stop()
    _wait(job, _ended(job), timeout=30.0)
    assert job.state is JobState.STOPPED and "killed" in job.status_text
    assert time.monotonic() - started < 15.0
    assert not _alive(grandchild) and not (tmp_path / "s").exists()


def test_crash_messages_direct_and_behind_a_launcher(launcher, job_script, tmp_path) -> None:
    """Direct python: SIGKILL (-9) reads as out of memory. Behind a launcher the code is 1,
    and the launcher's 'exit abnormally' line gives the reason."""
    direct = ChildJob([sys.executable, str(job_script), "--save", str(tmp_path / "a"),
                       "--crash"], env=child_environment(), title="Training")
    direct.start()
    _wait(direct, _ended(direct))
    assert direct.returncode == -9 and direct.state is JobState.FAILED
    assert direct.error_message.startswith("Training ran out of memory")

    wrapped = ChildJob([str(launcher), str(job_script), "--save", str(tmp_path / "b"),
                        "--crash"], env=child_environment(), title="Training")
    wrapped.start()
    _wait(wrapped, _ended(wrapped))
    assert wrapped.returncode == 1 and wrapped.state is JobState.FAILED
    assert wrapped.error_message.startswith("Training ended abnormally: its Python process "
                                            "crashed or was killed")


class _Tab(JobTab):
    def __init__(self, job: ChildJob) -> None:
        self.job = job


def test_shutdown_lets_the_job_save_then_kills_what_is_left(launcher, job_script,
                                                           tmp_path) -> None:
    saved = tmp_path / "saved"
    tab = _Tab(ChildJob([str(launcher), str(job_script), "--save", str(saved)],
                        env=child_environment(), title="Training",
                        stop_file_option=STOP_FILE_OPTION))
    tab.job.start()
    _wait(tab.job, _has_progress)
    pumped = []
    assert tab.shutdown(30.0, pump=lambda: pumped.append(1)) is True
    assert saved.is_file() and tab.job.state is JobState.STOPPED and pumped

    stubborn = _Tab(ChildJob([str(launcher), str(job_script), "--save", str(tmp_path / "x"),
                              "--stubborn"], env=child_environment(), title="Training",
                             stop_file_option=STOP_FILE_OPTION))
    stubborn.job.start()
    grandchild = _start_pid(_wait(stubborn.job, _has_progress))
    assert stubborn.shutdown(0.5) is False
    _wait(stubborn.job, _ended(stubborn.job), timeout=10.0)
    assert not _alive(grandchild) and not stubborn.job.state.active


# ----------------------------------------------------------------------------------------------
# The real thing: sgpsam train (tiny model, 64^3 crops, three small cases) behind the launcher.

@pytest.fixture(scope="module")
def sphere_cases(tmp_path_factory) -> Path:
    from SGPSAMLib.geometry import Volume
    from SGPSAMLib.io import write_labelmap, write_volume

    folder = tmp_path_factory.mktemp("spheres")
    shape = (40, 40, 40)
    k, j, i = np.indices(shape)
    for n, (centre, radius) in enumerate((((20, 20, 20), 7), ((18, 22, 20), 8),
                                          ((21, 19, 22), 6))):
        c = np.asarray(centre)
        label = (((k - c[0]) ** 2 + (j - c[1]) ** 2 + (i - c[2]) ** 2) <= radius ** 2)
        image = np.where(label, 200.0, 20.0) + np.random.default_rng(n).normal(0, 5, shape)
        volume = Volume(image.astype(np.float32), np.diag([1.5, 1.5, 1.5, 1.0]), f"case{n}")
        write_volume(volume, folder / f"case{n}.nii.gz")
        write_labelmap(label.astype(np.uint8), volume, folder / f"case{n}_label.nii.gz")
    return folder


def test_training_tab_stop_saves_state_behind_the_launcher(launcher, sphere_cases,
                                                          tmp_path) -> None:
    pytest.importorskip("torch")
    from SGPSAMSlicerLib.training_tab import TrainingParams, TrainingTabLogic

    from SGPSAMLib.build import build_model, save_checkpoint

    init = tmp_path / "tiny64.pt"
    save_checkpoint(build_model("tiny", image_size=64), init)
    pid_file = tmp_path / "grandchild.pid"
    env = child_environment()
    env.update(FAKE_LAUNCHER_PID_FILE=str(pid_file), OMP_NUM_THREADS="1")
    logic = TrainingTabLogic(python=str(launcher), env=env, grace_s=300.0)
    out = tmp_path / "run"
    job = logic.start(TrainingParams(output_folder=str(out), data_folder=str(sphere_cases),
                                     base_model=str(init), mode="finetune", epochs=None,
                                     steps=500, lr=1e-3, device="cpu", batch_size=1))
    assert job.argv[0] == str(launcher)
    _wait(job, lambda records: logic.step >= 1, timeout=240.0)
    assert logic.step >= 1, job.error_message or list(job.log)
    grandchild = int(pid_file.read_text())
    assert _alive(grandchild)
    logic.stop()
    _wait(job, _ended(job), timeout=240.0)
    assert job.state is JobState.STOPPED, job.error_message
    assert job.summary["stopped"] is True and job.summary["step"] < 500
    assert (out / "state.pt").is_file() and (out / "last.pt").is_file()
    assert not _alive(grandchild)
