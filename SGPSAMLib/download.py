"""Safe model download with urllib only: streamed, SHA-256 checked, atomic, cancellable.

Guarantees of :func:`download`:

- The file appears at ``dest`` only complete and with the expected SHA-256 (written to
  ``<dest>.part`` in the same folder, flushed, then renamed).
- A truncated transfer (fewer bytes than Content-Length or the expected size, or an early
  close), a wrong SHA-256, a stop request, an HTTP or network error and a full disk all raise
  and leave nothing behind: the ``.part`` file is deleted. With ``keep_partial=True`` a transfer
  that broke off (network error, truncation, stop, Ctrl+C) keeps its ``.part`` for a later
  resume; a hash or size mismatch (wrong announced size, more data than announced) always
  deletes it.
- The ``.part`` file is opened without following links (``O_NOFOLLOW``, and ``lstat`` where the
  platform lacks it): a symbolic link planted at ``<dest>.part`` is removed, never written
  through, and a file there with other hard links (a planted link to a file elsewhere) is
  refused, so a download only ever writes inside its own cache folder.
- A ``.part`` left over (a killed process, ``keep_partial``) is resumed with an HTTP ``Range``
  request when the server allows it; the hash is always computed over the whole file. If the
  resumed file fails the hash it is discarded and downloaded once more from the start.
- Proxies come from the environment (``HTTPS_PROXY``, ``HTTP_PROXY``, ``NO_PROXY``) as urllib
  reads them. A concurrent download of the same file is refused (POSIX file lock).
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import shutil
import socket
import stat
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, Union

from . import __version__, models
from .errors import CheckpointError, SGPSAMError

try:  # POSIX only; on Windows the OS refuses a second writer on most setups anyway
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["download", "download_model", "DownloadError", "DownloadIntegrityError",
           "DownloadTruncated", "DownloadCancelled", "ConsentRequired", "PART_SUFFIX"]

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
ProgressFn = Callable[[int, Union[int, None]], Any]
StopFn = Callable[[], bool]

PART_SUFFIX = ".part"
_CHUNK = 256 * 1024
_SHA256_RE = re.compile(r"^[0-9a-fA-F]{64}$")
_CONTENT_RANGE_RE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)


class DownloadError(SGPSAMError):
    """A download failed (network, HTTP status, disk); names the URL and the destination."""

    def __init__(self, message: str, url: str = "", dest: PathLike | None = None,
                 status: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.dest = Path(dest) if dest is not None else None
        self.status = status


class DownloadIntegrityError(DownloadError):
    """The data received is incomplete or is not the published file (size or SHA-256)."""


class DownloadTruncated(DownloadIntegrityError):
    """The transfer ended before the announced size: what arrived may be resumed later."""


class DownloadCancelled(SGPSAMError):
    """The caller's ``stop()`` returned True; nothing was kept (unless ``keep_partial``)."""


class ConsentRequired(SGPSAMError):
    """A model download needs the user's explicit agreement to its licence first."""


class _Restart(Exception):
    """Internal: the partial file cannot be resumed; start again from byte 0."""


def _fail(cls: type[DownloadError], url: str, dest: Path, problem: str,
          status: int | None = None) -> DownloadError:
    return cls(f"download of {url} to {dest} failed: {problem}", url=url, dest=dest,
               status=status)


def _describe_os_error(exc: BaseException) -> str:
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "the server stopped responding (timed out)"
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return "the disk is full"
    if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"permission denied ({exc.strerror})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _unplant(part: Path, url: str, dest: Path) -> None:
    """Remove a symbolic link (or refuse anything but a plain file) at the ``.part`` path."""
    try:
        info = os.lstat(part)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise _fail(DownloadError, url, dest, f"cannot inspect {part}: "
                    f"{_describe_os_error(exc)}") from exc
    if stat.S_ISLNK(info.st_mode):
        target = os.readlink(part)
        log.warning("%s is a symbolic link (to %s); removing the link, never writing through "
                    "it", part, target)
        try:
            os.unlink(part)  # the link itself; its target is not touched
        except OSError as exc:
            raise _fail(DownloadError, url, dest, f"{part} is a symbolic link to {target} and "
                        f"cannot be removed: {_describe_os_error(exc)}") from exc
    elif not stat.S_ISREG(info.st_mode):
        raise _fail(DownloadError, url, dest, f"{part} exists and is not a plain file; remove "
                    "it and try again")


def _open_part(part: Path, url: str, dest: Path) -> BinaryIO:
    """Open (or create) the partial file for appending, never through a link."""
    _unplant(part, url, dest)
    try:
        fd = os.open(part, os.O_RDWR | os.O_CREAT | _NOFOLLOW | getattr(os, "O_BINARY", 0),
                     0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a link planted between the check and the open
            raise _fail(DownloadError, url, dest, f"{part} became a symbolic link while "
                        "opening it; refusing to follow it") from exc
        raise _fail(DownloadError, url, dest, f"cannot write {part}: "
                    f"{_describe_os_error(exc)}") from exc
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        os.close(fd)
        raise _fail(DownloadError, url, dest, f"{part} is not a plain file of its own (it has "
                    f"{info.st_nlink} hard links, so writing it would change another file); "
                    "remove it and try again")
    handle = os.fdopen(fd, "r+b")  # closed by download()
    handle.seek(0, os.SEEK_END)
    if fcntl is not None:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            handle.close()
            raise _fail(DownloadError, url, dest, f"another download into {part} is in "
                        "progress; wait for it to finish") from exc
    return handle


def _hash_existing(handle: BinaryIO, digest: Any) -> int:
    handle.seek(0)
    size = 0
    for chunk in iter(lambda: handle.read(1 << 20), b""):
        digest.update(chunk)
        size += len(chunk)
    return size


def _content_length(response: Any) -> int | None:
    value = response.headers.get("Content-Length")
    try:
        length = int(value) if value is not None else None
    except ValueError:
        return None
    return length if length is not None and length >= 0 else None


def _transfer(url: str, dest: Path, part: Path, handle: BinaryIO, sha256: str,
              size_bytes: int | None, progress: ProgressFn | None, stop: StopFn | None,
              timeout: float, allow_resume: bool) -> None:
    """One attempt: (resume or start) streaming into ``handle``; raises on any problem."""
    digest = hashlib.sha256()
    offset = _hash_existing(handle, digest) if allow_resume else 0
    if size_bytes is not None and offset > size_bytes:
        offset = 0
    if offset == 0:
        digest = hashlib.sha256()
        handle.seek(0)
        handle.truncate(0)
    elif digest.copy().hexdigest() == sha256.lower():  # complete already (killed before rename)
        log.info("%s is already complete", part)
        if progress is not None:
            progress(offset, offset)
        return
    response = _open(url, dest, offset, timeout)
    with contextlib.closing(response):
        status = getattr(response, "status", None) or 200
        length = _content_length(response)
        if offset and status == 206:
            match = _CONTENT_RANGE_RE.match(response.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != offset:
                raise _Restart()
            total = int(match.group(3)) if match.group(3) != "*" else (
                offset + length if length is not None else size_bytes)
        else:
            if offset:  # the server ignored Range and sends the whole file
                log.info("%s does not support resuming; starting again", url)
                offset = 0
                digest = hashlib.sha256()
                handle.seek(0)
                handle.truncate(0)
            total = length if length is not None else size_bytes
        if size_bytes is not None and total is not None and total != size_bytes:
            raise _fail(DownloadIntegrityError, url, dest, f"the server announces {total} "
                        f"bytes but the published file has {size_bytes}")
        if total is not None:
            free = shutil.disk_usage(part.parent).free
            if free < total - offset:
                raise _fail(DownloadError, url, dest, f"not enough disk space in {part.parent}: "
                            f"need {models.format_size(total - offset)}, "
                            f"{models.format_size(free)} free")
        done = _stream(response, handle, digest, offset, total, url, dest, part, progress,
                       stop)
    if total is not None and done != total:
        raise _fail(DownloadTruncated, url, dest, f"truncated transfer: received {done} "
                    f"of {total} bytes")
    actual = digest.hexdigest()
    if actual != sha256.lower():
        if offset:
            raise _Restart()
        raise _fail(DownloadIntegrityError, url, dest, f"SHA-256 mismatch: got {actual}, "
                    f"expected {sha256.lower()} (the file is incomplete or not the published "
                    "one)")
    try:
        handle.flush()
        os.fsync(handle.fileno())
    except OSError as exc:
        raise _fail(DownloadError, url, dest, f"cannot write {part}: "
                    f"{_describe_os_error(exc)}") from exc


def _open(url: str, dest: Path, offset: int, timeout: float) -> Any:
    """The server's response for the file from byte ``offset`` on (a Range request when
    resuming); every failure is one DownloadError (``_Restart`` when the server cannot resume
    our partial file)."""
    headers = {"User-Agent": f"sgpsam/{__version__} (python-urllib)",
               "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        log.info("resuming %s at byte %d", url, offset)
    request = urllib.request.Request(url, headers=headers)
    opener = urllib.request.build_opener()  # reads proxy settings from the environment now
    try:
        return opener.open(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and offset:  # our partial file is not a prefix the server knows
            raise _Restart() from exc
        raise _fail(DownloadError, url, dest, f"HTTP {exc.code} {exc.reason}",
                    status=exc.code) from exc
    except urllib.error.URLError as exc:
        reason = exc.reason
        text = _describe_os_error(reason) if isinstance(reason, BaseException) else str(reason)
        raise _fail(DownloadError, url, dest, f"cannot reach the server: {text} (check the "
                    "network connection and proxy settings such as HTTPS_PROXY)") from exc
    except (OSError, ValueError) as exc:  # timeouts, bad URLs
        raise _fail(DownloadError, url, dest, _describe_os_error(exc)) from exc


def _stream(response: Any, handle: BinaryIO, digest: Any, done: int, total: int | None,
            url: str, dest: Path, part: Path, progress: ProgressFn | None,
            stop: StopFn | None) -> int:
    """Append the response body to ``handle`` (hashing it), from ``done`` bytes on -> bytes
    held now. Stops on a request (DownloadCancelled), a broken connection, more data than
    announced, or a write error."""
    if progress is not None:
        progress(done, total)
    handle.seek(0, os.SEEK_END)
    while True:
        if stop is not None and stop():
            raise DownloadCancelled(f"download of {url} to {dest} was cancelled")
        try:
            chunk = response.read(_CHUNK)
        except (OSError, ValueError) as exc:  # reset, timeout, IncompleteRead
            raise _fail(DownloadError, url, dest, "the connection broke off after "
                        f"{done} bytes: {_describe_os_error(exc)}") from exc
        if not chunk:
            return done
        done += len(chunk)
        if total is not None and done > total:
            raise _fail(DownloadIntegrityError, url, dest, f"received more than the "
                        f"{total} bytes announced")
        try:
            handle.write(chunk)
        except OSError as exc:
            raise _fail(DownloadError, url, dest, f"cannot write {part}: "
                        f"{_describe_os_error(exc)}") from exc
        digest.update(chunk)
        if progress is not None:
            progress(done, total)


def download(url: str, dest: PathLike, sha256: str, size_bytes: int | None = None,
             progress: ProgressFn | None = None, stop: StopFn | None = None,
             timeout: float = 30, keep_partial: bool = False, resume: bool = True) -> Path:
    """Download ``url`` to ``dest`` if and only if its content has SHA-256 ``sha256``.

    Args:
        url: http(s) (or file) URL; redirects are followed.
        dest: final file; its folder is created if needed. An existing file is replaced only
            after the new one is verified.
        sha256: expected hex digest (64 characters).
        size_bytes: expected size, if published; checked against the server's announcement.
        progress: ``progress(bytes_done, bytes_total_or_None)``, called after each chunk.
        stop: polled before each chunk; returning True cancels (:class:`DownloadCancelled`).
        timeout: seconds without data before giving up.
        keep_partial: keep ``<dest>.part`` after an interrupted transfer so a later call
            resumes it (never after a hash or size mismatch).
        resume: resume an existing ``<dest>.part`` (else it is overwritten).

    Raises:
        DownloadError: network or HTTP failure, unwritable folder, full disk (names url, dest).
        DownloadIntegrityError: oversized or wrong-hash data (nothing is kept);
            :class:`DownloadTruncated` for a transfer that ended early (kept with
            ``keep_partial``).
        DownloadCancelled: ``stop()`` returned True.
    """
    dest = Path(dest)
    if not isinstance(sha256, str) or not _SHA256_RE.match(sha256):
        raise SGPSAMError(f"download of {url}: expected a 64-character hex SHA-256, "
                          f"got {sha256!r}")
    if dest.is_dir():
        raise _fail(DownloadError, url, dest, f"{dest} is a folder; expected a file path")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _fail(DownloadError, url, dest, f"cannot create the folder {dest.parent}: "
                    f"{_describe_os_error(exc)}") from exc
    part = dest.with_name(dest.name + PART_SUFFIX)
    handle = _open_part(part, url, dest)
    opened = os.fstat(handle.fileno())
    keep = False
    try:
        try:
            _transfer(url, dest, part, handle, sha256, size_bytes, progress, stop, timeout,
                      allow_resume=resume)
        except _Restart:
            log.warning("the partial download %s could not be resumed; starting again", part)
            _transfer(url, dest, part, handle, sha256, size_bytes, progress, stop, timeout,
                      allow_resume=False)
        handle.close()
        now = os.lstat(part)
        if (now.st_ino, now.st_dev) != (opened.st_ino, opened.st_dev) or stat.S_ISLNK(now.st_mode):
            raise _fail(DownloadError, url, dest, f"{part} was replaced by another file during "
                        "the download; not installing it")
        try:
            os.replace(part, dest)
        except OSError as exc:
            raise _fail(DownloadError, url, dest, f"cannot move {part} to {dest}: "
                        f"{_describe_os_error(exc)}") from exc
    except _Restart as exc:  # a second restart: the server keeps sending the wrong thing
        raise _fail(DownloadIntegrityError, url, dest, "the server does not send the "
                    "published file consistently") from exc
    except DownloadTruncated:  # what arrived is a prefix: resumable, kept if asked
        keep = keep_partial
        raise
    except DownloadIntegrityError:
        raise
    except (DownloadError, DownloadCancelled, KeyboardInterrupt):
        keep = keep_partial
        raise
    finally:
        if not handle.closed:
            handle.close()
        if not keep:
            part.unlink(missing_ok=True)
    log.info("downloaded %s to %s", url, dest)
    return dest


def download_model(name: str, consent: bool, progress: ProgressFn | None = None,
                   stop: StopFn | None = None, directory: PathLike | None = None,
                   force: bool = False, url: str | None = None, timeout: float = 30,
                   keep_partial: bool = False) -> Path:
    """Download a known model into the cache (or ``directory``) and return its path.

    The caller must have shown :meth:`ModelInfo.licence_text` and obtained the user's
    agreement: ``consent=False`` refuses. A model already present and verified is returned
    without downloading (unless ``force``). ``url`` overrides the source (a mirror); the
    pinned SHA-256 is still enforced.

    Raises:
        ConsentRequired: ``consent`` is False (the message names the licence and its URL).
        CheckpointError: unknown name, or a bundled model that is not installed.
        DownloadError, DownloadIntegrityError, DownloadCancelled: see :func:`download`.
    """
    info = models.KNOWN_MODELS.get(name)
    if info is None:
        raise CheckpointError(f"unknown model {name!r}; known models: "
                              f"{', '.join(models.KNOWN_MODELS)}")
    if not info.downloadable:
        return models.resolve_model(name)  # bundled: nothing to download
    folder = Path(directory) if directory is not None else models.cache_dir(create=False)
    dest = folder / info.filename
    if not force:
        present = models.cached_model_path(name, directory=folder)
        if present is not None:
            log.info("%s is already downloaded: %s", name, present)
            return present
    if not consent:
        raise ConsentRequired(
            f"downloading {info.title} ({name}) requires accepting its licence "
            f"{info.licence} ({info.licence_url}); show it to the user and pass consent=True "
            f"(command line: `sgpsam download {name} --yes`)")
    source = url or models.model_url(info)
    if source is None:  # pragma: no cover - downloadable implies a URL
        raise CheckpointError(f"model {name!r} has no download URL")
    download(source, dest, info.sha256 or "", size_bytes=info.size_bytes, progress=progress,
             stop=stop, timeout=timeout, keep_partial=keep_partial)
    try:
        models.write_verified_marker(dest, info.sha256 or "")
    except OSError as exc:
        log.warning("cannot record the verification of %s: %s", dest, exc)
    return dest
