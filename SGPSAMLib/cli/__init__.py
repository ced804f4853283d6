"""Command line: ``sgpsam segment`` and ``sgpsam info`` (also ``python -m SGPSAMLib``).

Every user mistake (bad file, bad point, wrong checkpoint) ends as one line
``sgpsam: error: <message>`` on stderr with exit code 2, found before the slow steps where
possible, and nothing is written on failure. ``--verbose`` adds logging and tracebacks.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import logging
import math
import os
import re
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, NoReturn

import numpy as np

from .. import __version__
from ..build import describe_checkpoint, load_model
from ..devices import resolve_device
from ..errors import CheckpointError, PromptError, SGPSAMError, VolumeIOError
from ..geometry import Volume, lps_to_ras
from ..io import WRITE_SUFFIXES, read_volume, write_labelmap
from ..region import volume_ras_bounds
from ..session import InteractiveSession

if TYPE_CHECKING:
    import torch

__all__ = ["main", "build_parser", "parse_point", "PointArg", "COMMAND_MODULES"]

log = logging.getLogger(__name__)

PROG = "sgpsam"
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

# Further sub-commands live in their own modules, each exposing
# ``register(commands, common)``: it adds its sub-parser to ``commands`` (an argparse
# sub-parsers object; pass ``parents=[common]`` for --json/--verbose) and sets
# ``handler=<function(args) -> int>``. Those modules must not import torch at module level
# so that ``sgpsam --help`` stays fast.
COMMAND_MODULES = ("download", "synth", "train", "evaluate", "demo", "batch")

_POINT_HELP = """\
a click as R,A,S[,+|-]: coordinates in mm (RAS, as Slicer shows them; LPS with --lps) and an
optional sign, + for a positive point (default) or - for a negative one. Repeat --point for
several clicks; they are applied in order. Coordinates are often negative: write
--point=-58.1,22.7,-6.9,+ (with '='), because a bare '--point -58.1,...' is read as an option."""

_EPILOG = """\
examples:
  sgpsam segment ct.nii.gz --model sam_med3d_turbo.pth --point=-58.1,22.7,-6.9 --out lesion.nii.gz
  sgpsam segment mr.nrrd --model model.pth --point=10,-20,30,+ --point=14,-20,30,- \\
      --out lesion.nrrd --json
  sgpsam info sam_med3d_turbo.pth
"""


class PointArg(NamedTuple):
    """One ``--point`` as given: RAS (or LPS) millimetres, sign and the original text."""

    xyz: tuple[float, float, float]
    positive: bool
    text: str


def parse_point(text: str) -> PointArg:
    """Parse ``R,A,S`` or ``R,A,S,+`` / ``R,A,S,-`` strictly.

    Raises:
        PromptError: not 3 finite numbers plus an optional ``+``/``-``; names the value.
    """
    fields = [field.strip() for field in text.split(",")]
    expected = "expected R,A,S or R,A,S,+ or R,A,S,- (three numbers in mm and an optional sign)"
    if len(fields) not in (3, 4):
        raise PromptError(f"--point {text!r}: {expected}, got {len(fields)} comma-separated "
                          "values")
    coords = []
    for field in fields[:3]:
        try:
            value = float(field)
        except ValueError:
            raise PromptError(f"--point {text!r}: {field!r} is not a number; {expected}") from None
        if not math.isfinite(value):
            raise PromptError(f"--point {text!r}: {field!r} is not a finite number")
        coords.append(value)
    sign = fields[3] if len(fields) == 4 else "+"
    if sign not in ("+", "-"):
        raise PromptError(f"--point {text!r}: the sign must be '+' (positive) or '-' (negative), "
                          f"got {sign!r}")
    return PointArg((coords[0], coords[1], coords[2]), sign == "+", text)


class _Parser(argparse.ArgumentParser):
    """argparse with a hint for the classic negative-coordinate mistake."""

    def error(self, message: str) -> NoReturn:
        if "--point" in message and "expected one argument" in message:
            message += " (for negative coordinates write --point=-58.1,22.7,-6.9,+ with '=')"
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    """The ``sgpsam`` argument parser (exposed for documentation and tests)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true",
                        help="print one JSON object instead of text")
    common.add_argument("--verbose", action="store_true",
                        help="log progress to stderr and show tracebacks on errors")

    parser = _Parser(
        prog=PROG, epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="SGP-SAM: click-based 3D lesion segmentation with a SAM-Med3D-compatible "
                    "model. Exit code 2 on a usage or input error.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    segment = commands.add_parser(
        "segment", parents=[common], help="segment one lesion from clicks, write a labelmap",
        description="Segment a lesion in IMAGE from one or more clicks and write the mask as a "
                    "labelmap on IMAGE's exact voxel grid.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    segment.add_argument("image", metavar="IMAGE",
                         help="NIfTI, NRRD or MHA file, or a folder holding one DICOM series")
    segment.add_argument("--model", required=True, metavar="CKPT",
                         help="checkpoint file, or a model name: demo (bundled), "
                              "sam_med3d_turbo (after `sgpsam download`)")
    segment.add_argument("--point", required=True, action="append", metavar="R,A,S[,+|-]",
                         help=_POINT_HELP)
    segment.add_argument("--lps", action="store_true",
                         help="--point coordinates are LPS (ITK/DICOM) instead of RAS")
    segment.add_argument("--out", required=True, metavar="MASK",
                         help=f"output labelmap ({', '.join(WRITE_SUFFIXES)}); written atomically")
    segment.add_argument("--device", default="auto",
                         help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps "
                              "(default: auto)")
    segment.add_argument("--prompt-mode", default="latest", choices=("latest", "cumulative"),
                         help="which clicks the model sees (default: latest)")
    segment.add_argument("--modality", default="auto", choices=("auto", "CT", "MR"),
                         help="intensity normalisation; CT clips to [-1000, 1000] HU "
                              "(default: auto)")
    segment.set_defaults(handler=_segment)

    info = commands.add_parser(
        "info", parents=[common], help="describe a checkpoint",
        description="Architecture, SGPM blocks, parameter count, provenance, size and SHA-256 "
                    "of a checkpoint.")
    info.add_argument("checkpoint", metavar="CKPT", help="checkpoint file or model name")
    info.set_defaults(handler=_info)

    for name in COMMAND_MODULES:
        qualified = f"{__package__}.{name}"
        if importlib.util.find_spec(qualified) is not None:
            importlib.import_module(qualified).register(commands, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 2 usage or input error)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors; argparse printed them
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return args.handler(args)
    except (SGPSAMError, OSError) as exc:
        if args.verbose:
            traceback.print_exc()
        message = re.sub(r"\s*\n\s*", " ", str(exc)).strip() or type(exc).__name__
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _check_output_path(out: Path, image: Path) -> None:
    """Fail before any slow step if ``out`` cannot be written (io re-checks when writing)."""
    folder = out.parent
    if out.is_dir():
        raise VolumeIOError(f"--out {out}: is a folder; give a file name such as lesion.nii.gz")
    if not out.name.lower().endswith(WRITE_SUFFIXES):
        raise VolumeIOError(f"--out {out}: unsupported file type; expected a name ending in "
                            f"{', '.join(WRITE_SUFFIXES)}")
    if not folder.is_dir():
        raise VolumeIOError(f"--out {out}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise VolumeIOError(f"--out {out}: folder {folder} is not writable")
    if out.exists() and image.exists() and os.path.samefile(out, image):
        raise VolumeIOError(f"--out {out}: is the input image; choose another file")


def _resolve_checkpoint(spec: str, option: str) -> Path:
    """A checkpoint file, or a known model name (``demo``, ``sam_med3d_turbo``) -> its file."""
    from ..models import KNOWN_MODELS, resolve_model

    if spec in KNOWN_MODELS:
        return resolve_model(spec)
    path = Path(spec)
    if not path.is_file():
        raise CheckpointError(f"{option} {path}: checkpoint file not found (nor a model name: "
                              f"{', '.join(sorted(KNOWN_MODELS))})")
    return path


def _resolve_device(name: str) -> torch.device:
    try:
        return resolve_device(name)
    except ValueError as exc:
        raise SGPSAMError(f"--device: {exc}") from None


def _check_points_inside(volume: Volume, points: list[PointArg], ras: np.ndarray,
                         image: Path) -> None:
    """PromptError naming the first --point outside the image, with the image's RAS extent."""
    inside = np.atleast_1d(volume.contains_ras(ras))
    if inside.all():
        return
    index = int(np.flatnonzero(~inside)[0])
    low, high = volume_ras_bounds(volume)
    extent = ", ".join(f"{axis} {lo:.1f}..{hi:.1f}" for axis, lo, hi in zip("RAS", low, high))
    r, a, s = ras[index]
    raise PromptError(f"--point {points[index].text!r} (RAS {r:.1f}, {a:.1f}, {s:.1f} mm) is "
                      f"outside the image {image}, which spans RAS mm {extent}")


def _segment(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    image, out = Path(args.image), Path(args.out)
    # Cheap checks first: nothing slow runs and nothing is written if any of them fails.
    points = [parse_point(text) for text in args.point]
    xyz = np.array([p.xyz for p in points], dtype=np.float64)
    ras = lps_to_ras(xyz) if args.lps else xyz
    _check_output_path(out, image)
    checkpoint = _resolve_checkpoint(args.model, "--model")
    device = _resolve_device(args.device)
    volume = read_volume(image)
    _check_points_inside(volume, points, ras, image)

    model = load_model(checkpoint, device=device)
    session = InteractiveSession(model, device=device, prompt_mode=args.prompt_mode)
    session.set_volume(volume, modality=args.modality)
    for point, point_ras in zip(points, ras):
        log.info("point %s -> RAS %s", point.text, point_ras.tolist())
        prediction = session.add_point(point_ras, positive=point.positive)
    mask = np.asarray(prediction.mask)
    write_labelmap(mask, volume, out)

    voxels = int(np.count_nonzero(mask))
    volume_ml = voxels * abs(float(np.linalg.det(volume.ijk_to_ras[:3, :3]))) / 1000.0
    seconds = time.perf_counter() - start
    if args.json:
        record = {
            "image": str(image), "model": str(checkpoint), "out": str(out),
            "points": [{"text": p.text, "ras": r.tolist(), "positive": p.positive}
                       for p, r in zip(points, ras)],
            "device": str(device), "prompt_mode": args.prompt_mode, "voxels": voxels,
            "volume_ml": round(volume_ml, 4), "seconds": round(seconds, 3),
            "timings": {k: float(v) for k, v in dict(prediction.timings).items()},
        }
        print(json.dumps(record))
    else:
        print(f"{out}: {voxels} voxels, {volume_ml:.2f} mL, {seconds:.2f} s "
              f"({len(points)} point{'s' if len(points) != 1 else ''}, {device})")
    return 0


def _info(args: argparse.Namespace) -> int:
    description = describe_checkpoint(_resolve_checkpoint(args.checkpoint, "CKPT"))
    if args.json:
        print(json.dumps(description))
        return 0
    sgpm = description["sgpm_blocks"]
    config = description["config"]
    lines = [
        f"file:        {description['path']} ({description['file_bytes'] / 1e6:.1f} MB)",
        f"sha256:      {description['sha256']}",
        f"format:      {description['format']}",
        f"preset:      {description['preset']} (config {description['config_source']})",
        f"SGPM:        {'blocks ' + ', '.join(map(str, sgpm)) if sgpm else 'none'}",
        f"parameters:  {description['num_parameters']:,} in {description['num_tensors']} tensors",
        "config:",
        *(f"  {key}: {value}" for key, value in config.items()),
    ]
    metadata = description["metadata"]
    if metadata:
        lines.append("metadata:")
        lines.extend(f"  {key}: {value}" for key, value in metadata.items())
    print("\n".join(lines))
    return 0
