"""Files of a run that must survive kills and concurrent runs: folder locks, stale temporaries.

- :class:`FolderLock`: an advisory lock file held for the whole life of a run (``fcntl.flock``
  on POSIX, ``msvcrt.locking`` on Windows). The operating system drops the lock when the
  holder dies, even on ``kill -9``, so a lock file left behind is *stale* and simply taken
  over; the file records who holds it (pid, host, start time) for the "in use" message. On a
  file system without locks (some network mounts) the recorded pid is checked instead: a live
  process on the same host holds it, anything else is stale.
- :func:`remove_stale_temporaries`: ``io.atomic_write`` writes ``.<stem>.tmp<8 hex><suffix>``
  next to its target and renames it; a hard kill leaves that temporary behind. A run that
  holds its folder's lock removes the temporaries of *its own* targets when it starts.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import socket
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

from .errors import SGPSAMError

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]
try:  # Windows
    import msvcrt
except ImportError:
    msvcrt = None  # type: ignore[assignment]

__all__ = ["FolderLock", "FolderInUse", "remove_stale_temporaries", "temporary_target",
           "is_locked", "fingerprint", "sha256_file"]

log = logging.getLogger(__name__)

_TMP_NAME = re.compile(r"^\.(?P<stem>.+)\.tmp[0-9a-f]{8}(?P<suffix>.*)$")
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_BUSY = (errno.EAGAIN, errno.EACCES, getattr(errno, "EWOULDBLOCK", errno.EAGAIN))
_NO_LOCKS = (errno.ENOLCK, errno.EINVAL, getattr(errno, "ENOTSUP", errno.EINVAL),
             getattr(errno, "EOPNOTSUPP", errno.EINVAL), errno.ENOSYS)
_WIN_LOCK_OFFSET = 1 << 30  # Windows locks a byte far from the holder record we read


class FolderInUse(SGPSAMError):
    """Another live run holds the lock of this folder."""


def temporary_target(name: str) -> str | None:
    """The final file name an ``atomic_write`` temporary stands for, or None."""
    match = _TMP_NAME.match(name)
    return match.group("stem") + match.group("suffix") if match else None


def remove_stale_temporaries(targets: Iterable[Path]) -> list[Path]:
    """Delete the ``atomic_write`` temporaries of ``targets`` (one folder scan per folder).

    Only call this while holding the folder's lock: a temporary then cannot belong to a
    write in progress. Returns the files removed.
    """
    by_folder: dict[Path, set[str]] = {}
    for target in targets:
        by_folder.setdefault(Path(target).parent, set()).add(Path(target).name)
    removed: list[Path] = []
    for folder, names in by_folder.items():
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            if temporary_target(entry.name) in names and entry.is_file(follow_symlinks=False):
                try:
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
                    log.info("removed stale temporary file %s", entry.path)
                except OSError as exc:
                    log.warning("cannot remove stale temporary file %s: %s", entry.path, exc)
    return removed


_EDGE_BYTES = 1 << 20


def sha256_file(path: Path) -> str:
    """SHA-256 of a whole file (for small files such as batch outputs)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(path: Path) -> str:
    """What identifies a file's (or a DICOM folder's) content cheaply, as a short hex string.

    A file: size, modification time (ns) and the SHA-256 of its first and last MiB, so a
    replaced file at the same path is noticed even when size and time were preserved
    (``cp -p`` of another scan); a folder: name, size and time of every visible file in it.
    "" when the path cannot be read (then nothing matches it).
    """
    p = Path(path)
    digest = hashlib.sha256()
    try:
        if p.is_dir():
            for entry in sorted(os.scandir(p), key=lambda e: e.name):
                if entry.name.startswith(".") or not entry.is_file():
                    continue
                info = entry.stat()
                digest.update(f"{entry.name}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
            return "dir:" + digest.hexdigest()[:32]
        info = p.stat()
        digest.update(f"{info.st_size}\0{info.st_mtime_ns}\0".encode())
        with open(p, "rb") as handle:
            digest.update(handle.read(_EDGE_BYTES))
            if info.st_size > 2 * _EDGE_BYTES:
                handle.seek(-_EDGE_BYTES, os.SEEK_END)
                digest.update(handle.read(_EDGE_BYTES))
    except OSError:
        return ""
    return digest.hexdigest()[:32]


def _try_lock(fd: int) -> None:
    """Non-blocking exclusive lock on ``fd``; OSError (errno in _BUSY) when held elsewhere."""
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    elif msvcrt is not None:  # pragma: no cover - Windows
        os.lseek(fd, _WIN_LOCK_OFFSET, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    else:  # pragma: no cover
        raise OSError(errno.ENOSYS, "no file locking on this platform")


def _unlock(fd: int) -> None:
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
    elif msvcrt is not None:  # pragma: no cover - Windows
        os.lseek(fd, _WIN_LOCK_OFFSET, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)


def _read_holder(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            holder = json.loads(handle.read(4096) or "{}")
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists, owned by someone else
    return True


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "another process"
    text = f"process {holder.get('pid', '?')} on {holder.get('host', '?')}"
    if holder.get("started"):
        text += f", started {holder['started']}"
    if holder.get("what"):
        text += f" ({holder['what']})"
    return text


def is_locked(path: Path) -> dict[str, Any] | None:
    """The holder record of a lock file some live process holds now, else None (no waiting)."""
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
    except OSError:
        return None
    try:
        try:
            _try_lock(fd)
        except OSError as exc:
            if exc.errno in _NO_LOCKS:
                holder = _read_holder(path)
                mine = holder.get("host") == socket.gethostname()
                return holder if mine and _pid_alive(holder.get("pid")) else None
            return _read_holder(path) or {"pid": "?"}
        _unlock(fd)
        return None
    finally:
        os.close(fd)


class FolderLock:
    """Hold ``<folder>/<name>`` locked while a run uses the folder (a context manager).

    Args:
        folder: the folder (must exist).
        name: lock file name (hidden, e.g. ``.sgpsam_batch.lock``).
        what: what holds it, for the message ("batch run", "training run").
    """

    def __init__(self, folder: Path, name: str, what: str) -> None:
        self.path = Path(folder) / name
        self.what = what
        self.fd: int | None = None
        self.os_lock = True

    def acquire(self) -> FolderLock:
        for _ in range(20):  # retry when a releasing holder unlinked the file under us
            fd = self._open()
            try:
                _try_lock(fd)
            except OSError as exc:
                if exc.errno in _NO_LOCKS:
                    self._pid_fallback(fd)
                    return self
                os.close(fd)
                if exc.errno in _BUSY:
                    raise self._in_use(_read_holder(self.path)) from None
                raise
            if self._same_file(fd):
                self.fd = fd
                self._write_holder()
                return self
            os.close(fd)
        raise FolderInUse(f"{self.path.parent}: cannot take the lock {self.path} (it keeps "
                          "changing); another run is starting or stopping there")

    def _open(self) -> int:
        if self.path.is_symlink():
            raise FolderInUse(f"{self.path}: is a symbolic link; refusing to use it as the "
                              "folder's lock file (remove it)")
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | _NOFOLLOW, 0o644)
        except OSError as exc:
            raise SGPSAMError(f"{self.path.parent}: cannot create the lock file {self.path.name} "
                              f"({exc.strerror or exc}); is the folder writable?") from exc

    def _same_file(self, fd: int) -> bool:
        """The locked file is still the one at ``path`` (not unlinked by its last holder)."""
        if msvcrt is not None and fcntl is None:  # pragma: no cover - Windows keeps the file
            return True
        try:
            return os.fstat(fd).st_ino == os.stat(self.path, follow_symlinks=False).st_ino
        except OSError:
            return False

    def _pid_fallback(self, fd: int) -> None:
        """No OS locks here: a live holder on this host wins; anything else is stale."""
        holder = _read_holder(self.path)
        if holder.get("host") == socket.gethostname() and holder.get("pid") != os.getpid() \
                and _pid_alive(holder.get("pid")):
            os.close(fd)
            raise self._in_use(holder)
        if holder:
            log.warning("taking over the stale lock %s of %s", self.path, _describe(holder))
        log.warning("%s: this file system has no file locks; relying on the process id",
                    self.path.parent)
        self.fd, self.os_lock = fd, False
        self._write_holder()

    def _write_holder(self) -> None:
        assert self.fd is not None
        record = {"pid": os.getpid(), "host": socket.gethostname(), "what": self.what,
                  "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        try:
            os.ftruncate(self.fd, 0)
            os.lseek(self.fd, 0, os.SEEK_SET)
            os.write(self.fd, json.dumps(record).encode("utf-8"))
        except OSError as exc:  # the lock still holds; only the message loses detail
            log.debug("cannot record the holder in %s: %s", self.path, exc)

    def _in_use(self, holder: dict[str, Any]) -> FolderInUse:
        return FolderInUse(f"{self.path.parent} is in use by {_describe(holder)}: another "
                           f"{self.what} uses this folder; wait for it to finish or choose "
                           "another folder")

    def release(self) -> None:
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        try:
            if fcntl is not None or not self.os_lock:  # unlink while still holding it
                try:
                    os.unlink(self.path)
                except OSError:
                    pass
            if self.os_lock:
                _unlock(fd)
        finally:
            os.close(fd)

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
