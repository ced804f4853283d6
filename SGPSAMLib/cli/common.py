"""What every ``sgpsam`` command shares: the program name, exit codes, the argument parser
class, and the one-line ``sgpsam: error:`` / ``sgpsam: warning:`` messages.

Stdlib only, like every module of this package at import time: ``sgpsam --help`` and argument
parsing never import torch, numpy or SimpleITK (they are imported when a command runs).
"""
from __future__ import annotations

import argparse
import math
import re
import sys
from typing import NoReturn

__all__ = ["PROG", "EXIT_OK", "EXIT_FAILED", "EXIT_USAGE", "EXIT_INTERRUPTED", "Parser",
           "one_line", "warn", "note", "format_mm", "quiet_itk", "add_all_components_option",
           "add_session_options"]

PROG = "sgpsam"
#: Everything asked for was done (or was already done: resumed runs).
EXIT_OK = 0
#: The command ran to its end but part of the work failed (``batch``: a case failed).
EXIT_FAILED = 1
#: A usage, input, model or output error: one ``sgpsam: error:`` line, nothing (more) written.
EXIT_USAGE = 2
#: Aborted by Ctrl-C (SIGTERM gives 143 = 128 + 15).
EXIT_INTERRUPTED = 130


class Parser(argparse.ArgumentParser):
    """argparse with a hint for the classic negative-coordinate mistake."""

    def error(self, message: str) -> NoReturn:
        if "--point" in message and "expected one argument" in message:
            message += " (for negative coordinates write --point=-58.1,22.7,-6.9,+ with '=')"
        super().error(message)


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (our messages may wrap key listings)."""
    return re.sub(r"\s*\n\s*", " ", str(exc)).strip() or type(exc).__name__


def warn(text: str) -> None:
    """``sgpsam: warning: <text>`` on stderr: the result is written but needs a look."""
    print(f"{PROG}: warning: {text}", file=sys.stderr)


def note(text: str) -> None:
    """``sgpsam: <text>`` on stderr, at once: what a long command does about a signal."""
    print(f"{PROG}: {text}", file=sys.stderr, flush=True)


def add_all_components_option(parser: argparse.ArgumentParser) -> None:
    """``--all-components``: the session's ``keep_clicked=False`` (segment, batch, evaluate,
    demo)."""
    parser.add_argument(
        "--all-components", action="store_true",
        help="keep every connected component the model predicts (default: only those a "
             "positive click touches; a look-alike elsewhere in the window is dropped)")


def add_session_options(parser: argparse.ArgumentParser) -> None:
    """The session's result options: ``--all-components`` and ``--no-zoom`` (segment, batch,
    evaluate, demo)."""
    add_all_components_option(parser)
    parser.add_argument(
        "--no-zoom", action="store_true",
        help="crop every lesion at the model's own spacing (default: a new lesion is looked at "
             "closely first and from further away when it is large, by the model's measured "
             "zoom policy; models without one are unaffected)")


def format_mm(value: float) -> str:
    """A coordinate in mm for messages: 0.1 mm resolution, short for absurd magnitudes."""
    if not math.isfinite(value) or abs(value) >= 1e6:
        return f"{value:.3g}"
    return f"{value:.1f}"


def quiet_itk() -> None:
    """Silence ITK's own warning printer (e.g. "GDCMSeriesFileNames ...: No Series were found"
    before our message); our readers turn every problem into one clear error. ``--verbose``
    keeps ITK's lines."""
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalWarningDisplay(False)
