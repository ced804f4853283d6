"""``sgpsam download [NAME]``: fetch a known model into the cache (``sgpsam models`` lists them).

The download shows the model's licence and asks before fetching anything (``--yes`` accepts
it non-interactively; without a terminal and without ``--yes`` it refuses). The file is
SHA-256 checked and appears in the cache only when complete (see :mod:`SGPSAMLib.download`).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import models
from ..errors import CheckpointError

__all__ = ["register"]

_DOWNLOAD_EPILOG = """\
examples:
  sgpsam download                       # SAM-Med3D-turbo (about 402 MB), asks to accept the licence
  sgpsam download sam_med3d_turbo --yes # accept the licence non-interactively (scripts, CI)
  sgpsam models                         # what is known, what is present, where
  HF_ENDPOINT=https://hf-mirror.com sgpsam download --yes   # through a Hugging Face mirror
"""


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add the ``download`` sub-command."""
    download = commands.add_parser(
        "download", parents=[common], help="download a model (shows its licence first)",
        description="Download a known model into the model cache, after showing its licence. "
                    "The file is checked against its published SHA-256; an incomplete or "
                    "altered file is rejected and nothing is left behind.",
        epilog=_DOWNLOAD_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    download.add_argument("name", nargs="?", default=models.DEFAULT_DOWNLOAD, metavar="NAME",
                          help=f"model name (default: {models.DEFAULT_DOWNLOAD}; see "
                               "`sgpsam models`)")
    download.add_argument("--yes", "-y", action="store_true",
                          help="accept the model's licence without asking")
    download.add_argument("--cache-dir", metavar="DIR",
                          help="download into DIR instead of the cache folder "
                               "($SGPSAM_CACHE_DIR, default ~/.cache/sgpsam)")
    download.add_argument("--force", action="store_true",
                          help="download again even if a verified copy is present")
    download.add_argument("--url", metavar="URL",
                          help="download from URL instead (a mirror); the published SHA-256 "
                               "is still required")
    download.add_argument("--keep-partial", action="store_true",
                          help="keep the partial file if the transfer breaks off, so the next "
                               "run resumes it (an altered file is always deleted)")
    download.add_argument("--timeout", type=float, default=30.0, metavar="S",
                          help="give up after S seconds without data (default: 30)")
    download.set_defaults(handler=_download, uses_itk=False)


def _directory(args: argparse.Namespace) -> Path:
    if args.cache_dir:
        return Path(args.cache_dir).expanduser()
    return models.cache_dir(create=False)


def _ask(info: models.ModelInfo, dest: Path) -> bool:
    """Show the licence on stderr and ask y/N on a terminal; refuse without one."""
    from ..download import ConsentRequired

    notice = f"{info.licence_text()}\nDestination: {dest}\n"
    if not sys.stdin or not sys.stdin.isatty():
        raise ConsentRequired(
            f"downloading {info.title} ({info.name}) requires accepting its licence "
            f"{info.licence} ({info.licence_url}); no terminal to ask on, so run "
            f"`sgpsam download {info.name} --yes` to accept it")
    sys.stderr.write(notice + "Accept the licence and download? [y/N] ")
    sys.stderr.flush()
    answer = sys.stdin.readline()
    return answer.strip().lower() in ("y", "yes")


def _progress_printer(name: str) -> Callable[[int, int | None], None]:
    """A throttled one-line progress display on stderr (terminal only)."""
    last = [0.0]

    def show(done: int, total: int | None) -> None:
        now = time.monotonic()
        if now - last[0] < 0.2 and (total is None or done < total):
            return
        last[0] = now
        if total:
            text = (f"\r{name}: {done / 1e6:7.1f} / {total / 1e6:.1f} MB "
                    f"({100.0 * done / total:5.1f} %)")
        else:
            text = f"\r{name}: {done / 1e6:7.1f} MB"
        sys.stderr.write(text)
        sys.stderr.flush()

    return show


def _download(args: argparse.Namespace) -> int:
    from ..download import download_model

    start = time.perf_counter()
    info = models.KNOWN_MODELS.get(args.name)
    if info is None:
        raise CheckpointError(f"unknown model {args.name!r}; known models: "
                              f"{', '.join(models.KNOWN_MODELS)} (see `sgpsam models`)")
    record: dict[str, Any] = {"name": info.name, "licence": info.licence,
                              "licence_url": info.licence_url}
    if not info.downloadable:  # bundled: nothing to fetch, but say where it is
        path = models.resolve_model(info.name)
        record.update(path=str(path), state="bundled", downloaded=False)
        _report(args, record, f"{info.name}: bundled with SGP-SAM, nothing to download: {path}")
        return 0

    directory = _directory(args)
    dest = directory / info.filename
    present = None if args.force else models.cached_model_path(info.name, directory=directory)
    if present is not None:
        record.update(path=str(present), state="downloaded", downloaded=False,
                      sha256=info.sha256, bytes=present.stat().st_size)
        _report(args, record, f"{info.name}: already downloaded and verified: {present}")
        return 0

    if not args.yes and not _ask(info, dest):
        print(f"{info.name}: not downloaded (licence not accepted)", file=sys.stderr)
        return 1
    interactive = not args.json and sys.stderr.isatty()
    progress = _progress_printer(info.name) if interactive else None
    try:
        path = download_model(info.name, consent=True, progress=progress, directory=directory,
                              force=args.force, url=args.url, timeout=args.timeout,
                              keep_partial=args.keep_partial)
    finally:
        if interactive:
            sys.stderr.write("\n")
    record.update(path=str(path), state="downloaded", downloaded=True, sha256=info.sha256,
                  bytes=path.stat().st_size, seconds=round(time.perf_counter() - start, 3))
    text = f"{info.name}: downloaded and verified: {path}"
    if args.cache_dir and directory.resolve() != models.cache_dir(create=False).resolve():
        text += (f"\n(not the default cache folder: set SGPSAM_CACHE_DIR={directory} or pass "
                 "the file path as the model)")
    _report(args, record, text)
    return 0


def _report(args: argparse.Namespace, record: dict[str, Any], text: str) -> None:
    print(json.dumps(record) if args.json else text)
