"""The ``sgpsam`` command line (also ``python -m SGPSAMLib``): one module per command.

Every command module exposes ``register(commands, common)``: it adds its sub-parser to
``commands`` (an argparse sub-parsers object; ``parents=[common]`` gives --json/--verbose) and
sets ``handler=<function(args) -> int>``. Modules import only the standard library at import
time; torch, numpy and SimpleITK are imported by the handler, so ``sgpsam --help`` and argument
parsing are fast and work before PyTorch is installed.

Exit codes (every command): 0 done; 1 the run ended but part of it failed (``batch``: a case
failed, or no case had seeds); 2 a usage, input, model or output error, reported as one line
``sgpsam: error: <message>`` with nothing (more) written; 130 / 143 aborted by Ctrl-C / SIGTERM.
Long commands (batch, evaluate, train) treat the first Ctrl-C or SIGTERM as "stop cleanly":
they finish the current lesion or step, save, and exit as usual. ``--verbose`` adds logging
and tracebacks.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback
from collections.abc import Sequence

from .. import __version__
from ..errors import SGPSAMError
from ..job import AbortOnSignals, Interrupted
from .common import EXIT_INTERRUPTED, EXIT_USAGE, PROG, Parser, one_line, quiet_itk
from .segment import PointArg, parse_point

__all__ = ["main", "build_parser", "parse_point", "PointArg", "COMMAND_MODULES"]

#: The command modules of this package, in the order ``sgpsam --help`` lists them.
COMMAND_MODULES = ("segment", "info", "download", "models", "synth", "train", "evaluate",
                   "demo", "batch")

_EPILOG = """\
examples:
  sgpsam demo                                     # the bundled demo model, offline
  sgpsam segment ct.nii.gz --model sam_med3d_turbo.pth --point=-58.1,22.7,-6.9 --out lesion.nii.gz
  sgpsam batch scans/ --model demo --out masks/
  sgpsam info sam_med3d_turbo.pth

exit codes: 0 done; 1 part of the work failed (batch: a failed case, or no case with seeds);
2 usage, input, model or output error; 130/143 aborted by Ctrl-C/SIGTERM. Long commands
(batch, evaluate, train) stop cleanly and save on the first Ctrl-C or SIGTERM.
"""


def build_parser() -> argparse.ArgumentParser:
    """The ``sgpsam`` argument parser (exposed for documentation and tests)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true",
                        help="print one JSON object instead of text")
    common.add_argument("--verbose", action="store_true",
                        help="log progress to stderr and show tracebacks on errors")

    parser = Parser(
        prog=PROG, epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="SGP-SAM: click-based 3D lesion segmentation with a SAM-Med3D-compatible "
                    "model. Exit code 2 on a usage or input error.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    commands.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(commands, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (see the module docstring)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors; argparse printed them
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        if not args.verbose and getattr(args, "uses_itk", True):  # info, models: no images
            quiet_itk()
        with AbortOnSignals():  # long commands install their own stop-cleanly handlers
            return args.handler(args)
    except (SGPSAMError, OSError) as exc:
        if args.verbose:
            traceback.print_exc()
        print(f"{PROG}: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as exc:
        if args.verbose:
            traceback.print_exc()
        how = f" ({exc})" if isinstance(exc, Interrupted) else ""
        print(f"{PROG}: interrupted{how}", file=sys.stderr)
        return exc.exit_code if isinstance(exc, Interrupted) else EXIT_INTERRUPTED
