"""``sgpsam synth``: write a synthetic lesion dataset (MSD layout) for tests, demos, benchmarks.

numpy and SimpleITK only are needed when the command runs; nothing heavy at import time.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from ..errors import SGPSAMError
from ..options import SYNTH_APPEARANCES, SYNTH_MODALITIES

__all__ = ["register", "parse_triplet"]

_EPILOG = """\
Case n is SGPSAMLib.synthetic.make_case(SEED + n): the same command always writes the same
files. Seed ranges in use: training sets below 10000, the demo from 10000, held-out
evaluation sets from 20000.

examples:
  sgpsam synth --out synth_train --cases 40 --seed 0
  sgpsam synth --out synth_small --cases 10 --seed 20000 --diameter 3,10 --modality CT
  sgpsam synth --out synth_iso --cases 4 --shape 128,128,96 --spacing 1,1,1 --no-oblique
"""


def parse_triplet(text: str, flag: str, kind: type = float) -> tuple:
    """'a,b,c' -> a 3-tuple of ``kind``; SGPSAMError naming ``flag`` otherwise."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = tuple(kind(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 3:
        raise SGPSAMError(f"{flag} {text!r}: expected three comma-separated "
                          f"{'integers' if kind is int else 'numbers'} X,Y,Z")
    return values


def _pair(text: str, flag: str) -> tuple[float, float]:
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 2:
        raise SGPSAMError(f"{flag} {text!r}: expected MIN,MAX in mm, e.g. 3,40")
    return values  # type: ignore[return-value]


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add the ``synth`` sub-command."""
    parser = commands.add_parser(
        "synth", parents=[common], help="write a synthetic lesion dataset (MSD layout)",
        description="Write seeded synthetic CT-like / MR-like volumes with small irregular "
                    "lesions: DIR/imagesTr/case_XXX.nii.gz, DIR/labelsTr/case_XXX.nii.gz "
                    "(lesions 1..N) and DIR/dataset.json.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    add("--cases", required=True, type=int, metavar="N", help="number of cases")
    add("--seed", type=int, default=0, metavar="S", help="seed of case 0 (default 0)")
    add("--modality", default="random", choices=SYNTH_MODALITIES,
        help="image type (default: random per case)")
    add("--shape", metavar="X,Y,Z", help="voxels along x, y, z (default 96,96,64)")
    add("--spacing", metavar="X,Y,Z",
        help="voxel size in mm (default: drawn, 0.7-1.0 in-plane, 1.5-5 slices)")
    add("--lesions", type=int, metavar="N", help="lesions per case (default: 1-3, drawn)")
    add("--diameter", default="3,40", metavar="MIN,MAX",
        help="lesion equivalent diameter range in mm (default 3,40)")
    add("--no-oblique", action="store_true", help="axis-aligned direction matrices only")
    add("--appearance", default="plain", choices=SYNTH_APPEARANCES,
        help="lesion look: plain blobs (default) or varied (rim-enhancing with necrotic core, "
             "mottled, subtle, random edge width)")
    parser.set_defaults(handler=_synth)


def _synth(args: argparse.Namespace) -> int:
    from ..synthetic import write_dataset

    if args.cases < 1:
        raise SGPSAMError(f"--cases {args.cases}: expected an integer >= 1")
    if args.seed < 0:
        raise SGPSAMError(f"--seed {args.seed}: expected an integer >= 0")
    kwargs: dict[str, Any] = {"modality": args.modality,
                              "diameter_mm": _pair(args.diameter, "--diameter")}
    if args.shape:
        kwargs["shape"] = parse_triplet(args.shape, "--shape", int)
    if args.spacing:
        kwargs["spacing"] = parse_triplet(args.spacing, "--spacing", float)
    if args.lesions is not None:
        kwargs["n_lesions"] = args.lesions
    if args.no_oblique:
        kwargs["oblique"] = False
    if args.appearance != "plain":
        kwargs["appearance"] = args.appearance
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise SGPSAMError(f"--out {out}: is a file; expected a folder")
    start = time.perf_counter()
    written = write_dataset(out, args.cases, args.seed, **kwargs)
    seconds = time.perf_counter() - start
    meta = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
    lesions = [les for case in meta["sgpsam_synthetic"]["cases"] for les in case["lesions"]]
    if args.json:
        print(json.dumps({"out": str(out), "cases": len(written), "seed": args.seed,
                          "lesions": len(lesions),
                          "small_lesions": sum(1 for les in lesions if les["volume_ml"] < 1.0),
                          "dataset_json": str(out / "dataset.json"),
                          "seconds": round(seconds, 3)}))
    else:
        small = sum(1 for les in lesions if les["volume_ml"] < 1.0)
        print(f"{out}: {len(written)} cases, {len(lesions)} lesions ({small} below 1 mL), "
              f"seeds {args.seed}..{args.seed + len(written) - 1}, {seconds:.1f} s")
    return 0
