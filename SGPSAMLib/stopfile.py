"""``--stop-file PATH``: a stop request that a parent process can make on every platform.

Why a file: a parent (Slicer's Batch and Training tabs) cannot always signal its child. On
Windows there is no SIGTERM, and inside Slicer a child started through the ``PythonSlicer``
launcher would receive nothing (the launcher forwards no signal). Creating a file works
everywhere. The command polls the path where it already checks its stop flag (between
lesions in ``batch``, between steps in ``train``) and then stops exactly as after SIGTERM.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

__all__ = ["add_stop_file_option", "stop_file_flag"]


def add_stop_file_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--stop-file PATH`` to a sub-command's parser."""
    parser.add_argument(
        "--stop-file", metavar="PATH",
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
