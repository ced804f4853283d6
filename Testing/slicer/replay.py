"""A scripted ``ProcessRunner`` for the tests of the Batch and Training tabs: no real process.

``ReplayRunner`` hands out scripted stdout chunks and exit codes, so ``ChildJob`` and the tab
logics can be tested line by line and without timing. (Real children are tested in
``test_jobs.py`` and ``test_job_stop.py``.)
"""
from __future__ import annotations

import collections
import json
from collections.abc import Mapping, Sequence
from typing import Any

from SGPSAMSlicerLib.processes import STDERR_TAIL_LINES

__all__ = ["ReplayHandle", "ReplayRunner"]


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
        self.stop_files: list[str | None] = []

    def start(
        self, argv: Sequence[str], env: Mapping[str, str] | None = None,
        cwd: str | None = None, stop_file: str | None = None,
    ) -> ReplayHandle:
        self.calls.append(([str(a) for a in argv], dict(env) if env is not None else None, cwd))
        self.stop_files.append(stop_file)
        if self.fail_start is not None:
            raise self.fail_start
        handle = ReplayHandle(self, [str(a) for a in argv])
        self.handles.append(handle)
        return handle
