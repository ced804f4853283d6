"""The job protocol of long commands: how they report progress and how they are stopped.

One place for what ``sgpsam batch``, ``evaluate`` and ``train`` (and the Slicer tabs that run
them as child processes) share; :func:`SGPSAMLib.batch.run_batch`,
:func:`SGPSAMLib.evaluation.evaluate` and :func:`SGPSAMLib.training.train` take the same
``progress`` callback and ``stop`` flag:

- **Records.** A long job reports dicts with an ``"event"`` key (:data:`EVENTS`: ``start``,
  ``progress``, ``case``, ``checkpoint``, ``done``, ``error``). :func:`print_record` writes one
  as a JSON line on stdout (``--json-progress``); :func:`json_safe` makes any record strict
  JSON first; :func:`error_record` is the ``error`` record of an exception;
  :func:`parse_record` reads a line back (what the Slicer tabs do with a child's stdout).
- **Stop requests.** A ``stop`` flag (:data:`StopFlag`: an Event, a callable or None) is
  polled at safe points with :func:`is_stopped`. ``--stop-file PATH``
  (:func:`add_stop_file_option`, :func:`stop_file_flag`) is the request a parent can make on
  every platform: on Windows there is no SIGTERM, and a child started through Slicer's
  ``PythonSlicer`` launcher receives no signal; creating a file works everywhere.
  :func:`stop_requests` joins the signals and the stop file into one flag for a command.
- **Progress for people.** :class:`ProgressLines` shows a tqdm bar when stderr is a terminal
  and plain, throttled lines otherwise, so captured logs (cluster jobs, CI, Slicer) hold
  readable text instead of carriage-return bars.
- **One signal rule.** Ctrl-C (SIGINT) and SIGTERM are the same request: *stop cleanly*.
  Commands with a stop flag (:class:`StopOnSignals`) finish the current unit of work (lesion,
  training step), save what can be saved and exit normally; a second Ctrl-C or SIGTERM aborts at
  once. Other commands (:class:`AbortOnSignals`) abort at once, with their atomic writes and
  ``finally`` blocks run, so nothing half-written is left under a final name.

Stdlib only: importing it costs nothing and pulls in neither torch nor numpy.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO, Union

__all__ = ["EVENTS", "StopFlag", "is_stopped", "json_safe", "print_record", "error_record",
           "parse_record", "report_errors", "Interrupted", "StopOnSignals", "AbortOnSignals",
           "stop_requests", "add_stop_file_option", "stop_file_flag", "STOP_FILE_OPTION",
           "ProgressLines"]

#: The record kinds of the protocol (a record is a dict with one of them under ``"event"``).
EVENTS = ("start", "progress", "case", "checkpoint", "done", "error")
#: A stop request: an Event, a callable returning True to stop, or None (never stop).
StopFlag = Union[threading.Event, Callable[[], bool], None]
#: The command-line option of the stop file (also what the Slicer tabs pass).
STOP_FILE_OPTION = "--stop-file"

_SIGNAL_NAMES = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}


def is_stopped(stop: StopFlag) -> bool:
    """Whether a stop flag (Event, callable or None) asks to stop now."""
    if stop is None:
        return False
    if isinstance(stop, threading.Event):
        return stop.is_set()
    return bool(stop())


def json_safe(value: Any) -> Any:
    """NaN/inf -> None, numpy scalars -> Python, tuples -> lists: strict JSON for records."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if type(value).__module__ == "numpy" and getattr(value, "shape", None) == ():
        return json_safe(value.item())  # a numpy scalar, recognised without importing numpy
    return value


def print_record(record: dict, stream: TextIO | None = None) -> None:
    """Write one record as a JSON line and flush, so a parent process sees it at once."""
    out = sys.stdout if stream is None else stream
    out.write(json.dumps(json_safe(record)) + "\n")
    out.flush()


def error_record(exc: BaseException) -> dict:
    """The ``error`` record of an exception: its message on one line."""
    return {"event": "error", "message": " ".join(str(exc).split())}


def parse_record(line: str) -> dict | None:
    """A record from one line of a child's stdout, or None for any other line (log text,
    broken JSON, JSON without a string ``"event"``)."""
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


@contextlib.contextmanager
def report_errors(enabled: bool, stream: TextIO | None = None) -> Iterator[None]:
    """With ``--json-progress``: an input error (SGPSAMError, OSError) also becomes an
    ``error`` record before it propagates (to the one-line message and exit code 2)."""
    from .errors import SGPSAMError

    try:
        yield
    except (SGPSAMError, OSError) as exc:
        if enabled:
            print_record(error_record(exc), stream)
        raise


def add_stop_file_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--stop-file PATH`` to a sub-command's parser."""
    parser.add_argument(
        STOP_FILE_OPTION, metavar="PATH",
        help="stop cleanly, as after SIGTERM, once this file exists (for parent processes "
             "that cannot send signals, e.g. on Windows)")


def stop_file_flag(path: str | None, also: Callable[[], bool] | None = None
                   ) -> Callable[[], bool] | None:
    """A stop callable: True once ``path`` exists or ``also()`` is True.

    Returns ``also`` unchanged when no path is given.
    """
    if not path:
        return also
    stop_path = Path(path)

    def requested() -> bool:
        return bool(also is not None and also()) or stop_path.exists()

    return requested


class Interrupted(KeyboardInterrupt):
    """Raised in the main thread by a signal that aborts the command; exit code 128 + signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(_SIGNAL_NAMES.get(signum, f"signal {signum}"))
        self.signum = int(signum)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class _Handlers:
    """Install handlers for SIGINT/SIGTERM (or ``signals``) in the main thread; restore the
    previous ones."""

    signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, signals: tuple[int, ...] | None = None) -> None:
        if signals is not None:
            self.signals = tuple(signals)
        self._previous: dict[int, Any] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in self.signals:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: object) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


class StopOnSignals(_Handlers):
    """First Ctrl-C or SIGTERM: set ``event`` (the job stops at its next safe point and saves);
    the second one raises :class:`Interrupted` (abort now).

    Args:
        event: the stop flag the job polls (a new Event when None; see ``.event``).
        notify: called once with a sentence for the user when the first signal arrives.
        what: what the job finishes before stopping, for that sentence.
        signals: the signals handled (default SIGINT and SIGTERM).
    """

    def __init__(self, event: threading.Event | None = None,
                 notify: Callable[[str], None] | None = None,
                 what: str = "the current step", signals: tuple[int, ...] | None = None
                 ) -> None:
        super().__init__(signals)
        self.event = event if event is not None else threading.Event()
        self.notify = notify
        self.what = what
        self.received: int | None = None

    def _handle(self, signum: int, frame: object) -> None:
        if self.event.is_set():
            raise Interrupted(signum)
        self.received = signum
        self.event.set()
        if self.notify is not None:
            self.notify(f"{_SIGNAL_NAMES.get(signum, 'signal')} received: stopping after "
                        f"{self.what} and saving; press Ctrl-C again to abort at once")


class AbortOnSignals(_Handlers):
    """Ctrl-C or SIGTERM raise :class:`Interrupted` at once (commands without a stop flag)."""

    def _handle(self, signum: int, frame: object) -> None:
        raise Interrupted(signum)


@contextlib.contextmanager
def stop_requests(stop_file: str | None, notify: Callable[[str], None] | None,
                  what: str) -> Iterator[Callable[[], bool]]:
    """The stop flag of a long command: Ctrl-C / SIGTERM (:class:`StopOnSignals`) or the
    ``--stop-file`` appearing, whichever comes first."""
    with StopOnSignals(notify=notify, what=what) as signals:
        yield stop_file_flag(stop_file, signals.event.is_set) or signals.event.is_set


class ProgressLines:
    """Progress over ``total`` units on ``stream`` (stderr): a tqdm bar on a terminal, else
    plain lines, at most one per ``interval_s`` (and always the last one).

    Args:
        total: number of units (cases, steps); None when unknown.
        unit: the unit's name ("case", "step").
        initial: units already done (a resumed run).
        interval_s: least seconds between two plain progress lines.
        stream: where to write (default ``sys.stderr``).
        bar: force the bar on (True) or off (False); default: whether ``stream`` is a terminal.
    """

    def __init__(self, total: int | None, unit: str, initial: int = 0, interval_s: float = 30.0,
                 stream: TextIO | None = None, bar: bool | None = None) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.total = total
        self.unit = unit
        self.done = int(initial)
        self.interval_s = float(interval_s)
        self.status = ""
        self._last_line = -math.inf
        self._bar = None
        if bar is None:
            bar = bool(getattr(self.stream, "isatty", lambda: False)())
        if bar:
            try:
                from tqdm import tqdm
            except ImportError:  # a Slicer child: the module installs tqdm for no action
                tqdm = None
            if tqdm is not None:
                self._bar = tqdm(total=total, initial=initial, unit=unit, file=self.stream,
                                 dynamic_ncols=True)

    @property
    def is_bar(self) -> bool:
        return self._bar is not None

    def update(self, done: int, status: str = "", force: bool = False) -> None:
        """``done`` units finished so far; ``status`` is a short note (loss, last case)."""
        self.done = int(done)
        self.status = status
        if self._bar is not None:
            self._bar.update(self.done - self._bar.n)
            if status:
                self._bar.set_postfix_str(status, refresh=True)
            return
        now = time.monotonic()
        last = self.total is not None and self.done >= self.total
        if force or last or now - self._last_line >= self.interval_s:
            self._last_line = now
            of = f"/{self.total}" if self.total is not None else ""
            self.write(f"{self.unit} {self.done}{of}" + (f": {status}" if status else ""))

    def describe(self, text: str) -> None:
        """What runs now (the bar's description; plain lines do not repeat it)."""
        if self._bar is not None:
            self._bar.set_description_str(text, refresh=True)

    def write(self, text: str) -> None:
        """A message line that does not break the bar."""
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            self.stream.write(text + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
