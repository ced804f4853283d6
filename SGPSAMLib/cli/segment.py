"""``sgpsam segment IMAGE --point ... --out MASK``: one lesion from clicks, written as a labelmap.

Cheap checks come first (points, output path, model name, device, image, points inside the
image), so a mistake costs no model load and leaves nothing behind. An empty prediction, or a
positive point on background or air, is written but reported with a warning.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, NamedTuple

from ..errors import PromptError, SGPSAMError, VolumeIOError
from ..options import MODALITIES, PROMPT_MODES, WRITE_SUFFIXES
from .common import add_session_options, format_mm, warn

__all__ = ["register", "parse_point", "PointArg", "WRITE_SUFFIXES"]

log = logging.getLogger(__name__)

_POINT_HELP = """\
a click as R,A,S[,+|-]: coordinates in mm (RAS, as Slicer shows them; LPS with --lps) and an
optional sign, + for a positive point (default) or - for a negative one. Repeat --point for
several clicks; they are applied in order. Coordinates are often negative: write
--point=-58.1,22.7,-6.9,+ (with '='), because a bare '--point -58.1,...' is read as an option."""

EPILOG = """\
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


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add the ``segment`` sub-command."""
    segment = commands.add_parser(
        "segment", parents=[common], help="segment one lesion from clicks, write a labelmap",
        description="Segment a lesion in IMAGE from one or more clicks and write the mask as a "
                    "labelmap on IMAGE's exact voxel grid. An empty mask, or a positive point "
                    "on background or air, is reported with 'sgpsam: warning:'.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    segment.add_argument("--prompt-mode", default="latest", choices=PROMPT_MODES,
                         help="which clicks the model sees (default: latest)")
    segment.add_argument("--modality", default="auto", choices=MODALITIES,
                         help="intensity normalisation; CT clips to [-1000, 1000] HU "
                              "(default: auto)")
    add_session_options(segment)
    segment.set_defaults(handler=_segment)


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


def _resolve_device(name: str) -> Any:
    from ..devices import resolve_device

    try:
        return resolve_device(name)
    except ValueError as exc:
        raise SGPSAMError(f"--device: {exc}") from None


def _check_points_inside(volume: Any, points: list[PointArg], ras: Any, image: Path) -> None:
    """PromptError naming the first --point outside the image, with the image's RAS extent."""
    import numpy as np

    inside = np.atleast_1d(volume.contains_ras(ras))
    if inside.all():
        return
    index = int(np.flatnonzero(~inside)[0])
    low, high = volume.ras_bounds()
    extent = ", ".join(f"{axis} {lo:.1f}..{hi:.1f}" for axis, lo, hi in zip("RAS", low, high))
    where = ", ".join(format_mm(float(v)) for v in ras[index])
    raise PromptError(f"--point {points[index].text!r} (RAS {where} mm) is outside the image "
                      f"{image}, which spans RAS mm {extent}")


def _segment(args: argparse.Namespace) -> int:
    import numpy as np

    from ..build import load_model
    from ..geometry import lps_to_ras
    from ..io import read_volume, write_labelmap
    from ..models import resolve_model
    from ..result_checks import prediction_warnings
    from ..session import InteractiveSession

    start = time.perf_counter()
    image, out = Path(args.image), Path(args.out)
    # Cheap checks first: nothing slow runs and nothing is written if any of them fails.
    points = [parse_point(text) for text in args.point]
    xyz = np.array([p.xyz for p in points], dtype=np.float64)
    ras = lps_to_ras(xyz) if args.lps else xyz
    _check_output_path(out, image)
    checkpoint = resolve_model(args.model, option="--model")
    device = _resolve_device(args.device)
    volume = read_volume(image)
    _check_points_inside(volume, points, ras, image)

    model = load_model(checkpoint, device=device)
    session = InteractiveSession(model, device=device, prompt_mode=args.prompt_mode,
                                 keep_clicked=not args.all_components,
                                 zoom=not args.no_zoom)
    session.set_volume(volume, modality=args.modality)
    for point, point_ras in zip(points, ras):
        log.info("point %s -> RAS %s", point.text, point_ras.tolist())
        prediction = session.add_point(point_ras, positive=point.positive)
    mask = np.asarray(prediction.mask)
    write_labelmap(mask, volume, out)

    voxels = int(np.count_nonzero(mask))
    volume_ml = voxels * volume.voxel_volume_ml
    warnings = prediction_warnings(volume, voxels, [(f"--point {p.text!r}", r)
                                                    for p, r in zip(points, ras) if p.positive])
    seconds = time.perf_counter() - start
    if args.json:
        record = {
            "image": str(image), "model": str(checkpoint), "out": str(out),
            "points": [{"text": p.text, "ras": r.tolist(), "positive": p.positive}
                       for p, r in zip(points, ras)],
            "device": str(device), "prompt_mode": args.prompt_mode, "voxels": voxels,
            "volume_ml": round(volume_ml, 4), "seconds": round(seconds, 3),
            "timings": {k: float(v) for k, v in dict(prediction.timings).items()},
            "warnings": warnings,
        }
        print(json.dumps(record))
    else:
        print(f"{out}: {voxels} voxels, {volume_ml:.2f} mL, {seconds:.2f} s "
              f"({len(points)} point{'s' if len(points) != 1 else ''}, {device})")
    for text in warnings:
        warn(text)
    return 0
