"""Child processes for the Batch and Training tabs, without Qt.

Long jobs run as ``python -m SGPSAMLib <command> ... --json-progress`` in a child process so that
a crash, a CUDA error or an out-of-memory kill cannot take Slicer down. The child prints one
JSON object per stdout line (``"event"``: start, progress, case, checkpoint, done, error); a
stop is a SIGTERM, after which the child finishes or skips its current unit, writes what it
must and reports ``"done"`` with ``"stopped": true``.

The pieces:

- ``ProcessRunner`` / ``ProcessHandle``: the process seam. ``SubprocessRunner`` is the real one
  (``subprocess.Popen`` plus reader threads feeding queues, so reading never blocks); tests
  pass a fake runner that replays scripted lines and exit codes.
- ``ChildJob``: parses the lines, keeps the state (``JobState``), the progress fraction, the
  ETA text, a log of non-JSON lines and, when the child dies, a readable error message with
  the last stderr lines. ``poll()`` is cheap and non-blocking: the Widget calls it from a
  ``qt.QTimer`` (every 200 ms or so).
"""
from __future__ import annotations

import atexit
import collections
import enum
import importlib.util
import json
import logging
import math
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Callable, Protocol

__all__ = [
    "ProcessHandle",
    "ProcessRunner",
    "SubprocessRunner",
    "ReplayRunner",
    "SubprocessHandle",
    "JobState",
    "ChildJob",
    "JobTab",
    "finite_number",
    "python_executable",
    "library_root",
    "child_environment",
    "format_duration",
    "DEFAULT_GRACE_S",
]

logger = logging.getLogger(__name__)

# How long a child may take to finish its current unit after SIGTERM before it is killed.
# A batch case or a training validation pass on CPU can take tens of seconds.
DEFAULT_GRACE_S = 60.0
# Lines handed out per poll at most, so one timer tick never stalls the GUI.
MAX_LINES_PER_POLL = 2000
# Stderr lines kept for the error dialog.
STDERR_TAIL_LINES = 200
# Lines shown in an error message.
ERROR_TAIL_LINES = 12

_OOM_HINT = (
    "ran out of memory and was killed by the operating system (SIGKILL). Close other "
    "programs, use a smaller model or batch size, or run on a machine with more memory"
)


# ----------------------------------------------------------------------------------------------
# Process seam
# ----------------------------------------------------------------------------------------------
class ProcessHandle(Protocol):
    """A started child process, as ``ChildJob`` sees it (never blocks)."""

    @property
    def returncode(self) -> int | None:
        """None while running (or while stdout still holds unread lines); else the exit code,
        negative for a signal on POSIX (-9 = SIGKILL)."""
        ...

    def poll_lines(self) -> list[str]:
        """Stdout lines received since the last call, without line endings; never blocks."""
        ...

    def stderr_tail(self) -> list[str]:
        """The last stderr lines (at most ``STDERR_TAIL_LINES``)."""
        ...

    def terminate(self) -> None:
        """Ask the child to stop (SIGTERM); kill it if it is still running after a grace
        period. Returns at once."""
        ...

    def kill(self) -> None:
        """Kill the child (and its process group on POSIX) at once."""
        ...


class ProcessRunner(Protocol):
    """Starts child processes; the seam that tests replace with a fake."""

    def start(
        self, argv: Sequence[str], env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> ProcessHandle:
        """Start ``argv``; raise OSError when it cannot be started."""
        ...


class SubprocessHandle:
    """``ProcessHandle`` over ``subprocess.Popen`` with one reader thread per pipe.

    Stdout lines go to a queue that ``poll_lines`` drains; stderr lines go to a bounded
    deque. ``returncode`` stays None until the process has exited *and* both pipes have been
    read to the end (at most ``_EOF_WAIT_S`` after the exit), so the last lines (``"done"``,
    or a traceback on stderr) are seen before the exit.
    """

    # If a grandchild keeps stdout open after the child exited, stop waiting for EOF after this.
    _EOF_WAIT_S = 2.0

    def __init__(self, popen: subprocess.Popen, grace_s: float = DEFAULT_GRACE_S) -> None:
        self._popen = popen
        self.pid = popen.pid
        self.grace_s = float(grace_s)
        self._lines: queue.Queue[str] = queue.Queue()
        self._stderr: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self._stderr_lock = threading.Lock()
        self._exited_at: float | None = None
        self._kill_timer: threading.Timer | None = None
        self._stdout_thread = threading.Thread(
            target=self._read_stdout, name=f"sgpsam-stdout-{popen.pid}", daemon=True)
        self._stderr_thread = threading.Thread(
            target=self._read_stderr, name=f"sgpsam-stderr-{popen.pid}", daemon=True)
        self._stdout_thread.start()
        self._stderr_thread.start()

    def _read_stdout(self) -> None:
        stream = self._popen.stdout
        if stream is None:
            return
        try:
            for line in iter(stream.readline, ""):
                self._lines.put(line.rstrip("\r\n"))
        except (OSError, ValueError) as exc:  # pipe closed under us
            logger.debug("stdout reader of pid %s ended: %s", self.pid, exc)
        finally:
            try:
                stream.close()
            except OSError:
                pass

    def _read_stderr(self) -> None:
        stream = self._popen.stderr
        if stream is None:
            return
        try:
            for line in iter(stream.readline, ""):
                with self._stderr_lock:
                    self._stderr.append(line.rstrip("\r\n"))
        except (OSError, ValueError) as exc:
            logger.debug("stderr reader of pid %s ended: %s", self.pid, exc)
        finally:
            try:
                stream.close()
            except OSError:
                pass

    @property
    def returncode(self) -> int | None:
        code = self._popen.poll()
        if code is None:
            return None
        now = time.monotonic()
        if self._exited_at is None:
            self._exited_at = now
        if self._kill_timer is not None:
            self._kill_timer.cancel()
        if not self._lines.empty():
            return None
        readers_busy = self._stdout_thread.is_alive() or self._stderr_thread.is_alive()
        if readers_busy and now - self._exited_at < self._EOF_WAIT_S:
            return None  # the last lines (and the traceback on stderr) are still coming
        return code

    def poll_lines(self) -> list[str]:
        lines: list[str] = []
        try:
            while len(lines) < MAX_LINES_PER_POLL:
                lines.append(self._lines.get_nowait())
        except queue.Empty:
            pass
        return lines

    def stderr_tail(self) -> list[str]:
        with self._stderr_lock:
            return list(self._stderr)

    def terminate(self) -> None:
        if self._popen.poll() is not None:
            return
        try:
            if os.name == "nt":
                # No SIGTERM on Windows: TerminateProcess ends the child at once.
                self._popen.terminate()
                return
            self._popen.send_signal(signal.SIGTERM)
        except OSError as exc:  # already gone
            logger.debug("terminate pid %s: %s", self.pid, exc)
            return
        if self._kill_timer is None:
            self._kill_timer = threading.Timer(self.grace_s, self._kill_if_running)
            self._kill_timer.daemon = True
            self._kill_timer.start()

    def _kill_if_running(self) -> None:
        if self._popen.poll() is None:
            logger.warning("pid %s did not stop within %.0f s of SIGTERM; killing it",
                           self.pid, self.grace_s)
            self.kill()

    def kill(self) -> None:
        if self._popen.poll() is not None:
            return
        try:
            if os.name != "nt":
                # The child leads its own session: also end DataLoader workers and the like.
                os.killpg(self._popen.pid, signal.SIGKILL)
            else:
                self._popen.kill()
        except OSError as exc:
            logger.debug("kill pid %s: %s", self.pid, exc)
            try:
                self._popen.kill()
            except OSError:
                pass


# Children still running when the interpreter (Slicer) exits are killed: they run in their own
# session, so nothing else would stop an orphaned training run.
_LIVE_HANDLES: weakref.WeakSet[SubprocessHandle] = weakref.WeakSet()


@atexit.register
def _kill_live_children() -> None:
    for handle in list(_LIVE_HANDLES):
        handle.kill()


class SubprocessRunner:
    """The real ``ProcessRunner``: a ``Popen`` with piped, line-buffered text output.

    On POSIX the child gets its own session (process group) so that a Ctrl-C in Slicer's
    terminal does not reach it and a final kill also ends its helpers. On Windows no console
    window is opened.
    """

    def __init__(self, grace_s: float = DEFAULT_GRACE_S) -> None:
        self.grace_s = float(grace_s)

    def start(
        self, argv: Sequence[str], env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> SubprocessHandle:
        kwargs: dict[str, Any] = {}
        if os.name == "nt":
            kwargs["creationflags"] = getattr(subprocess, "CREATE_NO_WINDOW", 0)
        else:
            kwargs["start_new_session"] = True
        popen = subprocess.Popen(  # noqa: S603 - argv is built by our own logic
            [str(a) for a in argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
            **kwargs,
        )
        logger.info("started pid %s: %s", popen.pid, " ".join(str(a) for a in argv))
        handle = SubprocessHandle(popen, grace_s=self.grace_s)
        _LIVE_HANDLES.add(handle)
        return handle


# ----------------------------------------------------------------------------------------------
# Interpreter and environment
# ----------------------------------------------------------------------------------------------
def _inside_slicer() -> bool:
    """True inside the Slicer application (``slicer.app`` exists), not with slicer-core."""
    module = sys.modules.get("slicer")
    return module is not None and getattr(module, "app", None) is not None


def python_executable(
    inside_slicer: bool | None = None,
    which: Callable[[str], str | None] = shutil.which,
    executable: str | None = None,
) -> str:
    """The interpreter for child processes.

    Inside Slicer ``sys.executable`` is the application, not a Python that accepts ``-m``:
    use ``PythonSlicer`` (on PATH in Slicer, else beside ``sys.executable``). Anywhere else
    (tests, a plain Python with slicer-core) use ``sys.executable``.
    """
    executable = executable or sys.executable
    if inside_slicer is None:
        inside_slicer = _inside_slicer()
    if inside_slicer:
        found = which("PythonSlicer")
        if found:
            return found
        name = "PythonSlicer.exe" if os.name == "nt" else "PythonSlicer"
        sibling = Path(executable).parent / name
        if sibling.is_file():
            return str(sibling)
        logger.warning("PythonSlicer not found on PATH nor beside %s; using %s",
                       executable, executable)
    return executable


def library_root() -> Path:
    """The folder that holds the ``SGPSAMLib`` package (found without importing it)."""
    spec = importlib.util.find_spec("SGPSAMLib")
    if spec is not None and spec.origin:
        return Path(spec.origin).resolve().parent.parent
    if spec is not None and spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0]).resolve().parent
    # Running from source: the repository root is the parent of SGPSAM/.
    candidate = Path(__file__).resolve().parents[2]
    if (candidate / "SGPSAMLib" / "__init__.py").is_file():
        return candidate
    from SGPSAMLib.errors import SGPSAMError  # pragma: no cover - broken install

    raise SGPSAMError("cannot find the SGPSAMLib package; is the SGPSAM module installed "
                      "completely?")


def child_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default ``os.environ``) with SGPSAMLib's folder first on PYTHONPATH and
    unbuffered UTF-8 output, so JSON lines arrive as soon as they are printed."""
    env = dict(os.environ if base is None else base)
    root = str(library_root())
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != root]
    env["PYTHONPATH"] = os.pathsep.join([root, *parts])
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    return env


# ----------------------------------------------------------------------------------------------
# Job state machine
# ----------------------------------------------------------------------------------------------
class JobState(str, enum.Enum):
    """Life cycle of a child job; ``RUNNING``/``STOPPING`` are the active states."""

    IDLE = "idle"
    RUNNING = "running"
    STOPPING = "stopping"
    FINISHED = "finished"
    FAILED = "failed"
    STOPPED = "stopped"

    @property
    def active(self) -> bool:
        return self in (JobState.RUNNING, JobState.STOPPING)

    @property
    def ended(self) -> bool:
        return self in (JobState.FINISHED, JobState.FAILED, JobState.STOPPED)


def format_duration(seconds: float) -> str:
    """Short human duration: '42 s', '3 min 05 s', '1 h 02 min'."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return ""
    total = int(round(seconds))
    if total < 60:
        return f"{total} s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def finite_number(value: Any) -> float | None:
    """float(value) if it is a finite number (not bool), else None."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


# Counter pairs a "progress" (or "start") record may carry, first match wins.
_COUNTER_KEYS = (
    ("step", "total_steps"),
    ("cases_done", "total_cases"),
    ("done", "total"),
    ("completed", "total"),
    ("index", "total"),
    ("case_index", "total_cases"),
)


def progress_fraction(record: Mapping[str, Any]) -> float | None:
    """Fraction 0..1 from a progress record (``fraction`` or a counter pair), else None."""
    fraction = finite_number(record.get("fraction"))
    if fraction is not None:
        return min(max(fraction, 0.0), 1.0)
    for done_key, total_key in _COUNTER_KEYS:
        done = finite_number(record.get(done_key))
        total = finite_number(record.get(total_key))
        if done is not None and total is not None and total > 0:
            return min(max(done / total, 0.0), 1.0)
    return None


EventCallback = Callable[[dict], None]
LineCallback = Callable[[str], None]
StateCallback = Callable[["JobState"], None]


class ChildJob:
    """One child process speaking the JSON-lines protocol.

    Call ``start()`` once, then ``poll()`` periodically (cheap, non-blocking); read
    ``state``, ``fraction``, ``eta_text``, ``status_text``, ``error_message``, ``summary``.
    Optional callbacks (all called from ``poll()``, i.e. on the caller's thread):
    ``on_event(record)`` for every JSON record, ``on_log(line)`` for non-JSON stdout lines
    and ``on_state(state)`` on every state change.
    """

    def __init__(
        self,
        argv: Sequence[str],
        runner: ProcessRunner | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        title: str = "job",
        on_event: EventCallback | None = None,
        on_log: LineCallback | None = None,
        on_state: StateCallback | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_log_lines: int = 5000,
    ) -> None:
        self.argv = [str(a) for a in argv]
        self.runner: ProcessRunner = runner if runner is not None else SubprocessRunner()
        self.env = env
        self.cwd = cwd
        self.title = title
        self.on_event = on_event
        self.on_log = on_log
        self.on_state = on_state
        self._clock = clock
        self.state = JobState.IDLE
        self.handle: ProcessHandle | None = None
        self.returncode: int | None = None
        self.start_info: dict = {}
        self.last_progress: dict = {}
        self.summary: dict | None = None
        self.error_events: list[dict] = []
        self.log: collections.deque[str] = collections.deque(maxlen=max_log_lines)
        self.fraction: float | None = None
        self.eta_s: float | None = None
        self.error_message = ""
        self.status_text = ""
        self.stop_requested = False
        self._started_at: float | None = None
        self._ended_at: float | None = None

    # -- control --------------------------------------------------------------------------
    def start(self) -> None:
        """Start the child. A child that cannot start leaves the job FAILED (no raise)."""
        if self.state != JobState.IDLE:
            raise RuntimeError(f"{self.title} was already started (state {self.state.value})")
        self._started_at = self._clock()
        try:
            self.handle = self.runner.start(self.argv, self.env, self.cwd)
        except OSError as exc:
            self.error_message = (f"{self.title} could not be started: {exc} "
                                  f"(command: {self.argv[0]})")
            self.status_text = self.error_message
            self._ended_at = self._clock()
            self._set_state(JobState.FAILED)
            return
        self.status_text = f"{self.title} started"
        self._set_state(JobState.RUNNING)

    def stop(self) -> None:
        """Ask the child to stop after its current unit (SIGTERM, kill after a grace period)."""
        if not self.state.active or self.handle is None:
            return
        self.stop_requested = True
        if self.state == JobState.RUNNING:
            self.handle.terminate()
            self.status_text = f"stopping {self.title} after the current step..."
            self._set_state(JobState.STOPPING)

    def kill(self) -> None:
        """Kill the child now (e.g. when the module or Slicer closes)."""
        if self.handle is not None and self.state.active:
            self.stop_requested = True
            self.handle.kill()

    # -- polling --------------------------------------------------------------------------
    @property
    def elapsed_s(self) -> float:
        """Seconds since start (frozen once the job ended); 0 before start."""
        if self._started_at is None:
            return 0.0
        end = self._ended_at if self._ended_at is not None else self._clock()
        return max(0.0, end - self._started_at)

    @property
    def eta_text(self) -> str:
        """'3 min 05 s left' while running with a known ETA, else ''."""
        if not self.state.active or self.eta_s is None:
            return ""
        return f"{format_duration(self.eta_s)} left"

    def poll(self) -> list[dict]:
        """Process new output and a possible exit; returns the JSON records read this time."""
        if self.handle is None or not self.state.active:
            return []
        records: list[dict] = []
        for line in self.handle.poll_lines():
            record = self._parse(line)
            if record is None:
                self._log(line)
                continue
            records.append(record)
            self._handle_record(record)
            if self.on_event is not None:
                self.on_event(record)
        code = self.handle.returncode
        if code is not None:
            self._finish(code)
        return records

    @staticmethod
    def _parse(line: str) -> dict | None:
        text = line.strip()
        if not text.startswith("{"):
            return None
        try:
            record = json.loads(text)
        except ValueError:
            return None
        if not isinstance(record, dict) or not isinstance(record.get("event"), str):
            return None
        return record

    def _log(self, line: str) -> None:
        self.log.append(line)
        if self.on_log is not None:
            self.on_log(line)

    def _handle_record(self, record: dict) -> None:
        event = record["event"]
        if event == "start":
            self.start_info = dict(record)
            fraction = progress_fraction(record)
            self.fraction = fraction if fraction is not None else 0.0
        elif event == "progress":
            self.last_progress = dict(record)
            fraction = progress_fraction(record)
            if fraction is not None:
                self.fraction = fraction
            self._update_eta(record)
        elif event == "done":
            self.summary = dict(record)
            self.fraction = 1.0 if not record.get("stopped") else self.fraction
            self.eta_s = None
        elif event == "error":
            self.error_events.append(dict(record))
            message = str(record.get("message") or record.get("error") or "")
            if message:
                self._log(f"error: {message}")

    def _update_eta(self, record: Mapping[str, Any]) -> None:
        eta = finite_number(record.get("eta_s"))
        if eta is not None:
            self.eta_s = max(eta, 0.0)
            return
        # No ETA from the child: extrapolate from the elapsed time.
        if self.fraction is not None and self.fraction > 0.0 and self._started_at is not None:
            elapsed = self._clock() - self._started_at
            self.eta_s = elapsed * (1.0 - self.fraction) / self.fraction
        else:
            self.eta_s = None

    # -- ending ---------------------------------------------------------------------------
    def _finish(self, code: int) -> None:
        self.returncode = code
        self._ended_at = self._clock()
        self.eta_s = None
        if self.summary is not None:
            stopped = bool(self.summary.get("stopped"))
            if code != 0:
                logger.warning("%s reported 'done' but exited with code %s", self.title, code)
            if stopped:
                self.status_text = f"{self.title} stopped after {format_duration(self.elapsed_s)}"
                self._set_state(JobState.STOPPED)
            else:
                self.fraction = 1.0
                self.status_text = (f"{self.title} finished in "
                                    f"{format_duration(self.elapsed_s)}")
                self._set_state(JobState.FINISHED)
            return
        if self.stop_requested:
            how = "killed" if code < 0 else f"exit code {code}"
            self.status_text = f"{self.title} stopped ({how}) before reporting a summary"
            self._set_state(JobState.STOPPED)
            return
        self.error_message = self._failure_message(code)
        self.status_text = self.error_message.splitlines()[0]
        self._set_state(JobState.FAILED)

    def _failure_message(self, code: int) -> str:
        tail = [line for line in self.handle.stderr_tail() if line.strip()] if self.handle else []
        reported = [str(e.get("message") or e.get("error") or "") for e in self.error_events]
        reported = [m for m in reported if m]
        cli_errors = [line.split("error:", 1)[1].strip() for line in tail
                      if line.startswith("sgpsam: error:")]
        if code in (-9, 137):  # SIGKILL (the kernel's OOM killer) or a shell's 128 + 9
            headline = f"{self.title} {_OOM_HINT}."
        elif reported:
            headline = f"{self.title} failed: {reported[-1]}"
        elif cli_errors:
            headline = f"{self.title} failed: {cli_errors[-1]}"
        elif code < 0:
            headline = f"{self.title} crashed: {_signal_name(-code)}."
        elif code == 0:
            headline = (f"{self.title} ended (exit code 0) without reporting that it was done; "
                        "see the log for what happened.")
        else:
            headline = f"{self.title} failed with exit code {code}."
        lines = [headline]
        if tail:
            lines.append("")
            lines.append(f"Last lines of its error output ({min(len(tail), ERROR_TAIL_LINES)} "
                         f"of {len(tail)}):")
            lines.extend(tail[-ERROR_TAIL_LINES:])
        return "\n".join(lines)

    def _set_state(self, state: JobState) -> None:
        if state == self.state:
            return
        self.state = state
        logger.info("%s: %s", self.title, state.value)
        if self.on_state is not None:
            self.on_state(state)


class JobTab:
    """What the Batch and Training tabs share: one child job at a time (``self.job``) and the
    state, progress and controls the tab shows for it. Subclasses start jobs and add their
    own ``status_text``."""

    job: ChildJob | None = None

    @property
    def state(self) -> JobState:
        return self.job.state if self.job is not None else JobState.IDLE

    @property
    def is_running(self) -> bool:
        return self.state.active

    def stop(self) -> None:
        """Ask the child to stop (SIGTERM): it finishes its current case or step and saves."""
        if self.job is not None:
            self.job.stop()

    def cleanup(self) -> None:
        """Kill a running child (module closed / Slicer exits)."""
        if self.job is not None:
            self.job.kill()

    def poll(self) -> bool:
        """Read new output; True when anything may have changed (refresh the tab)."""
        if self.job is None or not self.job.state.active:
            return False
        before = self.job.state
        records = self.job.poll()
        return bool(records) or self.job.state != before

    @property
    def fraction(self) -> float:
        return (self.job.fraction or 0.0) if self.job is not None else 0.0

    @property
    def eta_text(self) -> str:
        return self.job.eta_text if self.job is not None else ""

    @property
    def error_message(self) -> str:
        return self.job.error_message if self.job is not None else ""

    @property
    def summary(self) -> dict | None:
        return self.job.summary if self.job is not None else None


def _signal_name(number: int) -> str:
    """'killed by signal SIGSEGV (11)' or 'killed by signal 42'."""
    try:
        name = signal.Signals(number).name
    except (ValueError, AttributeError):
        return f"killed by signal {number}"
    return f"killed by signal {name} ({number})"


# ----------------------------------------------------------------------------------------------
# A scripted runner, for unit tests and the module's self-test (no real process)
# ----------------------------------------------------------------------------------------------
class ReplayHandle:
    """``ProcessHandle`` that hands out scripted stdout chunks, one chunk per poll."""

    def __init__(self, runner: ReplayRunner, argv: list[str]) -> None:
        self.runner = runner
        self.argv = argv
        self._chunks: collections.deque[list[str]] = collections.deque(
            [_as_lines(chunk) for chunk in runner.chunks])
        self._code: int | None = None
        self._exit_code = runner.exit_code
        self._hang = runner.hang
        self.terminated = False
        self.killed = False

    @property
    def returncode(self) -> int | None:
        if self._code is None and not self._chunks and not self._hang:
            self._code = self._exit_code
        return self._code if not self._chunks else None

    def poll_lines(self) -> list[str]:
        return self._chunks.popleft() if self._chunks else []

    def stderr_tail(self) -> list[str]:
        return list(self.runner.stderr)[-STDERR_TAIL_LINES:]

    def terminate(self) -> None:
        if self._code is not None or self.terminated:
            return
        self.terminated = True
        self._chunks = collections.deque(
            [_as_lines(chunk) for chunk in self.runner.stop_chunks])
        self._hang = False
        self._exit_code = self.runner.stop_exit_code

    def kill(self) -> None:
        if self._code is None:
            self.killed = True
            self._chunks.clear()
            self._code = -9


def _as_lines(chunk: Any) -> list[str]:
    """A chunk is a line, a record (dict) or a list of them -> list of text lines."""
    if isinstance(chunk, (str, dict)):
        chunk = [chunk]
    return [json.dumps(item) if isinstance(item, dict) else str(item) for item in chunk]


class ReplayRunner:
    """``ProcessRunner`` replaying scripted output instead of starting a process.

    ``chunks``: what successive ``poll_lines()`` calls return (a chunk is a line, a JSON
    record as a dict, or a list of those); then the "process" exits with ``exit_code``
    (``hang=True``: it keeps running until terminated). ``terminate()`` switches to
    ``stop_chunks`` and ``stop_exit_code``, as a child that handles SIGTERM would.
    ``fail_start`` makes ``start`` raise it (e.g. ``FileNotFoundError``).
    """

    def __init__(
        self,
        chunks: Sequence[Any] = (),
        exit_code: int = 0,
        stderr: Sequence[str] = (),
        stop_chunks: Sequence[Any] = (),
        stop_exit_code: int = 0,
        hang: bool = False,
        fail_start: BaseException | None = None,
    ) -> None:
        self.chunks = list(chunks)
        self.exit_code = exit_code
        self.stderr = list(stderr)
        self.stop_chunks = list(stop_chunks)
        self.stop_exit_code = stop_exit_code
        self.hang = hang
        self.fail_start = fail_start
        self.calls: list[tuple[list[str], dict | None, str | None]] = []
        self.handles: list[ReplayHandle] = []

    def start(
        self, argv: Sequence[str], env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> ReplayHandle:
        self.calls.append(([str(a) for a in argv], dict(env) if env is not None else None, cwd))
        if self.fail_start is not None:
            raise self.fail_start
        handle = ReplayHandle(self, [str(a) for a in argv])
        self.handles.append(handle)
        return handle
