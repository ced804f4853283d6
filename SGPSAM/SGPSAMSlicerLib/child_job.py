"""A child job that speaks the JSON-lines protocol, and what the Batch and Training tabs share.

Long jobs run as ``python -m SGPSAMLib <command> ... --json-progress --stop-file PATH`` in a
child process (:mod:`.processes`), so that a crash, a CUDA error or an out-of-memory kill cannot
take Slicer down. The child prints one JSON object per stdout line (``"event"``: start,
progress, case, checkpoint, done, error), the protocol of :mod:`SGPSAMLib.job`, whose
``parse_record`` reads each line back here; a stop request (the stop file) makes it finish or
skip its current unit, write what it must and report ``"done"`` with ``"stopped": true``.

``ChildJob`` parses the lines and keeps the state (``JobState``), the progress fraction, the
ETA text, a log of non-JSON lines and, when the child dies, a readable error message with the
last stderr lines. ``poll()`` is cheap and non-blocking: the Widget calls it from a
``qt.QTimer``. ``JobTab`` is one such job per tab, with stop, shutdown and the shared texts.
"""
from __future__ import annotations

import collections
import enum
import logging
import math
import shutil
import signal
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Callable

from SGPSAMLib.job import STOP_FILE_OPTION, parse_record

from .processes import ProcessHandle, ProcessRunner, SubprocessRunner

__all__ = [
    "JobState",
    "ChildJob",
    "JobTab",
    "STOP_FILE_OPTION",
    "finite_number",
    "format_duration",
    "progress_fraction",
]

logger = logging.getLogger(__name__)

#: The option of ``sgpsam batch`` / ``sgpsam train`` that names the stop file.
# Lines shown in an error message.
ERROR_TAIL_LINES = 12

_OOM_HINT = (
    "ran out of memory and was killed by the operating system (SIGKILL). Close other "
    "programs, use a smaller model or batch size, or run on a machine with more memory"
)
# What CTKAppLauncher (PythonSlicer) prints when its child crashed; it then exits with 1.
_LAUNCHER_CRASH = "exit abnormally"
_LAUNCHER_HINT = (
    "ended abnormally: its Python process crashed or was killed (for example by the "
    "operating system when memory ran out); the launcher it ran under reports only exit "
    "code 1"
)


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

    ``stop_file_option`` (e.g. ``"--stop-file"``): the child accepts a stop file; the job then
    appends ``OPTION PATH`` (a fresh temporary folder per run) to the command line, and Stop
    creates that file instead of signalling.
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
        stop_file_option: str | None = None,
    ) -> None:
        self.argv = [str(a) for a in argv]
        self.stop_file_option = stop_file_option
        self.stop_file: str | None = None
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
        self._stop_dir: str | None = None
        self._started_at: float | None = None
        self._ended_at: float | None = None

    # -- control --------------------------------------------------------------------------
    def start(self) -> None:
        """Start the child. A child that cannot start leaves the job FAILED (no raise)."""
        if self.state != JobState.IDLE:
            raise RuntimeError(f"{self.title} was already started (state {self.state.value})")
        self._started_at = self._clock()
        argv = list(self.argv)
        if self.stop_file_option:
            self._stop_dir = tempfile.mkdtemp(prefix="sgpsam-job-")
            self.stop_file = str(Path(self._stop_dir) / "stop")
            argv += [self.stop_file_option, self.stop_file]
        try:
            if self.stop_file:
                self.handle = self.runner.start(argv, self.env, self.cwd,
                                                stop_file=self.stop_file)
            else:
                self.handle = self.runner.start(argv, self.env, self.cwd)
        except OSError as exc:
            self.error_message = (f"{self.title} could not be started: {exc} "
                                  f"(command: {self.argv[0]})")
            self.status_text = self.error_message
            self._ended_at = self._clock()
            self._remove_stop_dir()
            self._set_state(JobState.FAILED)
            return
        self.status_text = f"{self.title} started"
        self._set_state(JobState.RUNNING)

    def stop(self) -> None:
        """Ask the child to stop after its current unit (its stop file, else SIGTERM; the
        process tree is killed after a grace period)."""
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
            record = parse_record(line)
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
    def _remove_stop_dir(self) -> None:
        if self._stop_dir is not None:
            shutil.rmtree(self._stop_dir, ignore_errors=True)
            self._stop_dir = None

    def _finish(self, code: int) -> None:
        self._remove_stop_dir()
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
        elif code == 1 and any(_LAUNCHER_CRASH in line for line in tail):
            headline = f"{self.title} {_LAUNCHER_HINT}."
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
        """Kill a running child at once (use ``shutdown`` to let it save first)."""
        if self.job is not None:
            self.job.kill()

    def shutdown(self, wait_s: float, pump: Callable[[], None] | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> bool:
        """Stop a running child gracefully: ask it to stop, wait up to ``wait_s`` seconds
        (calling ``pump`` between polls, e.g. to keep a progress dialog alive), then kill
        what is left. Returns True when it ended on its own (its checkpoint is saved)."""
        if self.job is None or not self.job.state.active:
            return True
        self.job.stop()
        deadline = time.monotonic() + max(wait_s, 0.0)
        while self.job.state.active and time.monotonic() < deadline:
            self.poll()
            if pump is not None:
                pump()
            sleep(0.05)
        self.poll()
        if not self.job.state.active:
            return True
        logger.warning("%s did not stop within %.0f s; killing it", self.job.title, wait_s)
        self.job.kill()
        deadline = time.monotonic() + 5.0  # a killed process is gone within moments
        while self.job.state.active and time.monotonic() < deadline:
            self.poll()
            sleep(0.05)
        return False

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
    def percent(self) -> int:
        """The progress bar's value, 0..100."""
        return int(round(100 * self.fraction))

    @property
    def display_text(self) -> str:
        """The tab's status line, and the error message under it when the job failed."""
        text = self.status_text
        return text + "\n" + self.error_message if self.error_message else text

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
