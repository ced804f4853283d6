"""The process seam of the Batch and Training tabs: start a child, read it, stop it, kill it.

- ``ProcessRunner`` / ``ProcessHandle``: what ``ChildJob`` needs from a child process.
  Tests replace the runner with a fake that replays scripted output
  (``Testing/slicer/replay.py``).
- ``SubprocessRunner`` / ``SubprocessHandle``: the real one, ``subprocess.Popen`` with reader
  threads feeding queues, so polling never blocks the GUI.

Stopping, and why it is done this way:

1. **Graceful stop: a stop file.** Each job gets ``--stop-file PATH``; Stop creates the
   file and the child stops at its next step or lesion, saving what it must (``state.pt``).
   A file works on Windows (no SIGTERM) and through a launcher such as ``PythonSlicer``
   (CTKAppLauncher forwards no signal to the Python it starts). It is deliberately not a
   SIGTERM to the whole process group: that would also hit PyTorch DataLoader workers, whose
   death aborts the training before it saves.
2. **Children without a stop file** get SIGTERM, sent to their whole process group (POSIX)
   so that it reaches the real interpreter even behind a launcher.
3. **Last resort**: if the child is still running ``grace_s`` after the request, SIGTERM goes
   to the group, and ``TERM_TO_KILL_S`` later the whole tree is killed (SIGKILL to the group on
   POSIX, ``taskkill /T /F`` on Windows).

On POSIX each child leads its own session (process group), so a Ctrl-C in Slicer's terminal
does not reach it, and the job counts as running until **every process of its group** has
exited: a launcher that died (or was killed) while its Python child goes on is not "done".
"""
from __future__ import annotations

import atexit
import collections
import logging
import os
import queue
import signal
import subprocess
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

__all__ = [
    "ProcessHandle",
    "ProcessRunner",
    "SubprocessHandle",
    "SubprocessRunner",
    "DEFAULT_GRACE_S",
    "TERM_TO_KILL_S",
    "stop_live_children",
]

logger = logging.getLogger(__name__)

# How long a child may take to finish its current unit after a stop request before it is
# killed. A batch case or a training validation pass on CPU can take tens of seconds.
DEFAULT_GRACE_S = 60.0
# After the last-resort SIGTERM to the group, seconds until the tree is killed.
TERM_TO_KILL_S = 10.0
# Lines handed out per poll at most, so one timer tick never stalls the GUI.
MAX_LINES_PER_POLL = 2000
# Stderr lines kept for the error dialog.
STDERR_TAIL_LINES = 200


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
        """Ask the child to stop (its stop file, else SIGTERM); kill it if it still runs
        after a grace period. Returns at once."""
        ...

    def kill(self) -> None:
        """Kill the child and its process tree at once."""
        ...


class ProcessRunner(Protocol):
    """Starts child processes; the seam that tests replace with a fake."""

    def start(
        self, argv: Sequence[str], env: Mapping[str, str] | None = None,
        cwd: str | None = None, stop_file: str | None = None,
    ) -> ProcessHandle:
        """Start ``argv`` (which already names ``stop_file`` if given); raise OSError when it
        cannot be started."""
        ...


def _read_lines(stream: Any, sink: Any, name: str) -> None:
    """Feed each line of ``stream`` (without line ending) to ``sink`` until EOF."""
    if stream is None:
        return
    try:
        for line in iter(stream.readline, ""):
            sink(line.rstrip("\r\n"))
    except (OSError, ValueError) as exc:  # pipe closed under us
        logger.debug("%s reader ended: %s", name, exc)
    finally:
        try:
            stream.close()
        except OSError:
            pass


class SubprocessHandle:
    """``ProcessHandle`` over ``subprocess.Popen`` with one reader thread per pipe.

    ``returncode`` stays None until the child and (POSIX) every process of its group have
    exited *and* both pipes have been read to the end (at most ``_EOF_WAIT_S`` after the
    exit), so the last lines (``"done"``, or a traceback on stderr) are seen first.
    """

    # If a stray process keeps stdout open after the group exited, stop waiting after this.
    _EOF_WAIT_S = 2.0

    def __init__(self, popen: subprocess.Popen, grace_s: float = DEFAULT_GRACE_S,
                 stop_file: str | None = None, group: bool | None = None) -> None:
        self._popen = popen
        self.pid = popen.pid
        self.grace_s = float(grace_s)
        self.stop_file = stop_file
        self._group = (os.name != "nt") if group is None else group
        self._lines: queue.Queue[str] = queue.Queue()
        self._stderr: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self._stderr_lock = threading.Lock()
        self._exited_at: float | None = None
        self._escalation: threading.Timer | None = None
        self._threads = [
            threading.Thread(target=_read_lines, args=(popen.stdout, self._lines.put, "stdout"),
                             name=f"sgpsam-stdout-{popen.pid}", daemon=True),
            threading.Thread(target=_read_lines, args=(popen.stderr, self._add_stderr, "stderr"),
                             name=f"sgpsam-stderr-{popen.pid}", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _add_stderr(self, line: str) -> None:
        with self._stderr_lock:
            self._stderr.append(line)

    # -- state ----------------------------------------------------------------------------
    def group_alive(self) -> bool:
        """Whether any process of the child's process group still exists (POSIX); on Windows,
        whether the child itself runs."""
        if self._popen.poll() is None:
            return True
        if not self._group:
            return False
        try:
            os.killpg(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # exists, owned by someone else: still alive
            return True
        except OSError:
            return False
        return True

    @property
    def running(self) -> bool:
        return self.group_alive()

    @property
    def returncode(self) -> int | None:
        code = self._popen.poll()
        if code is None or self.group_alive():
            return None
        now = time.monotonic()
        if self._exited_at is None:
            self._exited_at = now
        self._cancel_escalation()
        if not self._lines.empty():
            return None
        readers_busy = any(thread.is_alive() for thread in self._threads)
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

    # -- stopping -------------------------------------------------------------------------
    def terminate(self) -> None:
        if not self.group_alive() or self._escalation is not None:
            return
        if self.stop_file:
            try:
                with open(self.stop_file, "a", encoding="utf-8"):
                    pass
                logger.info("pid %s: stop requested through %s", self.pid, self.stop_file)
            except OSError as exc:
                logger.warning("cannot create the stop file %s (%s); signalling instead",
                               self.stop_file, exc)
                self._signal_group(signal.SIGTERM)
        else:
            self._signal_group(signal.SIGTERM)
        self._schedule(self.grace_s, self._term_then_kill)

    def _schedule(self, delay: float, action: Any) -> None:
        self._escalation = threading.Timer(delay, action)
        self._escalation.daemon = True
        self._escalation.start()

    def _cancel_escalation(self) -> None:
        if self._escalation is not None:
            self._escalation.cancel()

    def _term_then_kill(self) -> None:
        if not self.group_alive():
            return
        logger.warning("pid %s did not stop within %.0f s; sending SIGTERM to its process "
                       "group", self.pid, self.grace_s)
        self._signal_group(signal.SIGTERM)
        self._schedule(TERM_TO_KILL_S, self._kill_if_running)

    def _kill_if_running(self) -> None:
        if self.group_alive():
            logger.warning("pid %s is still running; killing its process tree", self.pid)
            self.kill()

    def _signal_group(self, signum: int) -> None:
        """``signum`` to every process of the child's group (POSIX); on Windows a SIGTERM
        request ends the child (there is no SIGTERM there)."""
        try:
            if self._group:
                os.killpg(self.pid, signum)
            elif os.name == "nt":
                self._popen.terminate()
            else:
                self._popen.send_signal(signum)
        except OSError as exc:  # already gone
            logger.debug("signal %s to pid %s: %s", signum, self.pid, exc)

    def kill(self) -> None:
        if not self.group_alive():
            return
        self._cancel_escalation()
        try:
            if self._group:
                os.killpg(self.pid, signal.SIGKILL)
                return
            if os.name == "nt" and self._popen.poll() is None:
                # The whole tree: a launcher's child would survive TerminateProcess.
                subprocess.run(["taskkill", "/PID", str(self.pid), "/T", "/F"],  # noqa: S603, S607
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               check=False, timeout=30)
        except (OSError, subprocess.SubprocessError) as exc:
            logger.debug("kill pid %s: %s", self.pid, exc)
        try:
            self._popen.kill()
        except OSError:
            pass


# Children still running when the interpreter (Slicer) exits: asked to stop, then killed. They
# run in their own session, so nothing else would stop an orphaned training run.
_LIVE_HANDLES: weakref.WeakSet[SubprocessHandle] = weakref.WeakSet()
AT_EXIT_WAIT_S = 10.0


def stop_live_children(wait_s: float = AT_EXIT_WAIT_S) -> None:
    """Ask every running child to stop, wait up to ``wait_s`` for them, kill the rest."""
    handles = [handle for handle in list(_LIVE_HANDLES) if handle.running]
    for handle in handles:
        handle.terminate()
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and any(handle.running for handle in handles):
        time.sleep(0.05)
    for handle in handles:
        handle.kill()


atexit.register(stop_live_children)


class SubprocessRunner:
    """The real ``ProcessRunner``: a ``Popen`` with piped, line-buffered text output.

    POSIX: the child leads a new session (its own process group). Windows: a new process group
    and no console window.
    """

    def __init__(self, grace_s: float = DEFAULT_GRACE_S) -> None:
        self.grace_s = float(grace_s)

    def start(
        self, argv: Sequence[str], env: Mapping[str, str] | None = None,
        cwd: str | None = None, stop_file: str | None = None,
    ) -> SubprocessHandle:
        kwargs: dict[str, Any] = {}
        if os.name == "nt":
            kwargs["creationflags"] = (getattr(subprocess, "CREATE_NO_WINDOW", 0)
                                       | getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0))
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
        handle = SubprocessHandle(popen, grace_s=self.grace_s, stop_file=stop_file)
        _LIVE_HANDLES.add(handle)
        return handle
