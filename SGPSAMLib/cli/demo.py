"""``sgpsam demo``: see the model work in one command, offline: a sample volume, simulated
clicks, the mask, a PNG overlay, Dice and timings.

The sample is a synthetic case (seed >= 10000 by default, a range the training sets do not
use) or a case of the project's shared test data (``--case shared:<manifest id>``). Clicks
follow the evaluation protocol (:mod:`SGPSAMLib.evaluation`): the first at the lesion's
interior, then at the centre of the largest error region. Torch is imported only when the
command runs.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from ..errors import SGPSAMError
from ..options import IMAGE_MODALITIES, SYNTH_MODALITIES
from .common import add_session_options

__all__ = ["register", "run_demo", "shared_data_root", "load_shared_case"]

_EPILOG = """\
writes into the folder --out/<case> (printed at the end): demo_mask.nii.gz (the prediction,
lesion n = label n, on the image's grid), demo_overlay.png (axial / coronal / sagittal through
the first click: prediction on top, ground truth below, clicks marked, Dice and a mm scale),
demo_result.json; for a synthetic case also demo_image.nii.gz and demo_truth.nii.gz, so that
all can be opened in 3D Slicer.

examples:
  sgpsam demo                                 # bundled demo model, its default held-out case
  sgpsam demo --list                          # the cases it can show
  sgpsam demo --seed 10007 --clicks 5 --out demo_out --json
  sgpsam demo --case shared:pyradiomics_brain1
"""

#: What the printed figures mean, for a first-time user.
_EXPLAIN = """\
how to read this: a simulated user clicks the middle of the lesion, then the middle of the
largest mistake (a positive click on a missed part, a negative one on a false alarm). Dice is
the overlap between the mask and the true lesion after each click (1 = identical, 0 = none);
NSD is the share of the mask's surface within 2 mm of the true surface."""

DEMO_FILES = ("demo_mask.nii.gz", "demo_overlay.png", "demo_result.json")
#: Held-out synthetic case shown by default: one the bundled model handles well (README).
DEFAULT_DEMO_SEED = 10_017
#: Synthetic seeds ``--list`` describes.
LISTED_SEEDS = 20
#: ``SGPSAMLib.synthetic.DEMO_SEED_BASE`` (a test keeps them equal), spelled out so that
#: building the parser imports no numpy.
DEMO_SEED_BASE = 10_000


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add the ``demo`` sub-command."""
    parser = commands.add_parser(
        "demo", parents=[common], help="segment a sample lesion and show Dice, timings, overlay",
        description="Run the interactive model on a sample volume with simulated clicks and "
                    "write the mask and a PNG overlay; prints Dice and timings.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--model", default="demo", metavar="demo|NAME|PATH",
        help="model name or checkpoint file (default: the bundled demo model)")
    add("--out", default="sgpsam_demo", metavar="DIR",
        help="results go into DIR/<case>/ (created if missing; default ./sgpsam_demo)")
    add("--seed", type=int, default=DEFAULT_DEMO_SEED, metavar="S",
        help=f"synthetic case seed (default {DEFAULT_DEMO_SEED}; seeds >= {DEMO_SEED_BASE} "
             "are not used for training)")
    add("--list", action="store_true",
        help="list the synthetic and shared cases the demo can show, and exit")
    add("--case", default="synthetic", metavar="synthetic|shared:ID",
        help="sample: a synthetic case, or a case id of ../shared/data/manifest.json "
             "(folder: $SGPSAM_SHARED_DATA)")
    add("--lesions", type=int, default=1, metavar="N",
        help="lesions: in the synthetic case, or the largest components of a shared case "
             "(default 1)")
    add("--modality", default="random", choices=SYNTH_MODALITIES,
        help="synthetic image type (default: drawn from the seed)")
    add("--clicks", type=int, default=3, metavar="N", help="clicks per lesion (default 3)")
    add("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N")
    add("--max-windows", type=int, default=8, metavar="N",
        help="most overlapping windows per lesion when it crosses a region border (default 8; "
             "1 = never extend)")
    add_session_options(parser)
    parser.set_defaults(handler=_demo)


# ----------------------------------------------------------------------------------------------
# Sample data.

def shared_data_root() -> Path:
    """``$SGPSAM_SHARED_DATA``; else the first of ``<checkout>/../shared/data``,
    ``./shared/data`` and ``../shared/data`` that holds ``manifest.json`` (an installed package
    has no checkout around it, so the working folder is tried too)."""
    env = os.environ.get("SGPSAM_SHARED_DATA", "").strip()
    if env:
        return Path(env).expanduser()
    candidates = [Path(__file__).resolve().parents[2].parent / "shared" / "data",
                  Path.cwd() / "shared" / "data", Path.cwd().parent / "shared" / "data"]
    for candidate in candidates:
        if (candidate / "manifest.json").is_file():
            return candidate
    return candidates[0]


def load_shared_case(case_id: str, root: Path | None = None, max_lesions: int = 1
                     ) -> tuple[Any, Any, str]:
    """(volume, lesion labels (K, J, I) uint8: the ``max_lesions`` largest connected components
    of the manifest's default target, largest = 1), modality) of a shared-data case."""
    import numpy as np

    from ..evaluation import connected_components
    from ..io import read_volume

    root = shared_data_root() if root is None else Path(root)
    manifest = root / "manifest.json"
    if not manifest.is_file():
        raise SGPSAMError(f"--case shared:{case_id}: {manifest} not found; set "
                          "SGPSAM_SHARED_DATA to the folder holding manifest.json")
    try:
        cases = json.loads(manifest.read_text(encoding="utf-8"))["cases"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SGPSAMError(f"{manifest}: not a readable case manifest ({exc})") from exc
    by_id = {c.get("id"): c for c in cases if isinstance(c, dict)}
    if case_id not in by_id:
        raise SGPSAMError(f"--case shared:{case_id}: unknown case id; known: "
                          f"{', '.join(sorted(str(k) for k in by_id))}")
    entry = by_id[case_id]
    volume = read_volume(root / entry["image"])
    label = read_volume(root / entry["label"])
    values = entry["targets"][entry["default_target"]]
    target = np.isin(np.rint(label.array).astype(np.int64), values)
    ids, count = connected_components(target)
    sizes = np.bincount(ids.reshape(-1), minlength=count + 1)[1:]
    order = np.argsort(-sizes, kind="stable")[:max(1, min(int(max_lesions), 255))]
    lesions = np.zeros(target.shape, dtype=np.uint8)
    for rank, component in enumerate(order, start=1):
        lesions[ids == component + 1] = rank
    return volume, lesions, str(entry.get("modality", "auto")).upper()


# ----------------------------------------------------------------------------------------------
# The demo.

def _load_model(spec: str, device: Any) -> tuple[Any, str]:
    """(model, checkpoint path); a known name (demo, ...) or a file."""
    from ..build import load_model
    from ..models import resolve_model

    path = resolve_model(spec, option="--model")
    return load_model(path, device=device), str(path)


def _demo_case(case: str, seed: int, modality: str, lesions: int
               ) -> tuple[Any, Any, str, str]:
    """(volume, label map, modality, display name) of a synthetic seed or a shared case."""
    from ..synthetic import make_case

    if case == "synthetic":
        sample = make_case(seed, modality=modality, n_lesions=lesions)
        return sample.volume, sample.label, sample.modality, f"synthetic seed {seed}"
    if case.startswith("shared:"):
        volume, truth, case_modality = load_shared_case(case[len("shared:"):],
                                                        max_lesions=lesions)
        return volume, truth, case_modality, case
    raise SGPSAMError(f"--case {case!r}: expected 'synthetic' or 'shared:<manifest id>'")


def _segment_lesions(session: Any, volume: Any, truth: Any, clicks: int
                     ) -> tuple[Any, list[dict[str, Any]], list[float]]:
    """Every lesion of ``truth`` clicked by the evaluation robot -> (prediction, rows,
    seconds per click); lesions never overwrite one another's voxels."""
    import numpy as np

    from ..evaluation import simulate_lesion
    from ..synthetic import equivalent_diameter_mm

    prediction = np.zeros(truth.shape, dtype=np.uint8)
    click_seconds: list[float] = []
    rows = []
    for value in (int(v) for v in np.unique(truth) if v):
        mask = truth == value
        others = (truth > 0) & ~mask
        tick = time.perf_counter()
        outcome = simulate_lesion(session, volume, mask, clicks,
                                  ignore=others if others.any() else None)
        seconds = time.perf_counter() - tick
        click_seconds.append(seconds / max(outcome["clicks_used"], 1))
        free = outcome["mask"] & (prediction == 0)
        prediction[free] = value
        voxels = int(mask.sum())
        rows.append({"lesion": value, "voxels": voxels,
                     "volume_ml": voxels * volume.voxel_volume_ml,
                     "diameter_mm": equivalent_diameter_mm(voxels, volume.voxel_volume_mm3),
                     "dice_per_click": outcome["dice"], "dice": outcome["dice"][-1],
                     "dice_auc": outcome["dice_auc"], "nsd": outcome["nsd"],
                     "predicted_voxels": outcome["predicted_voxels"],
                     "clicks": [c.to_dict() for c in outcome["clicks"]],
                     "timings": outcome["timings"], "seconds": seconds})
    return prediction, rows, click_seconds


def _write_demo_files(out_dir: Path, case: str, case_name: str, checkpoint: str, volume: Any,
                      truth: Any, prediction: Any, rows: list[dict[str, Any]]
                      ) -> dict[str, str]:
    """Image and truth (synthetic cases), the mask and the labelled overlay PNG."""
    from ..io import write_labelmap, write_volume
    from ..overlay import write_comparison

    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    if case == "synthetic":
        files["image"] = str(write_volume(volume, out_dir / "demo_image.nii.gz"))
        files["truth"] = str(write_labelmap(truth, volume, out_dir / "demo_truth.nii.gz"))
    files["mask"] = str(write_labelmap(prediction, volume, out_dir / "demo_mask.nii.gz"))
    first = rows[0] if rows else None
    notes = [f"{Path(checkpoint).name}, {first['volume_ml']:.2f} mL lesion"] if first else []
    files["overlay"] = str(write_comparison(
        out_dir / "demo_overlay.png", volume, prediction, truth,
        clicks=first["clicks"] if first else (),
        dice=first["dice_per_click"] if first else None, title=case_name, notes=notes))
    return files


def run_demo(model: str = "demo", out: str | os.PathLike = "sgpsam_demo",
             seed: int = DEFAULT_DEMO_SEED, case: str = "synthetic", clicks: int = 3,
             device: str = "auto", lesions: int = 1, modality: str = "random",
             max_windows: int = 8, keep_clicked: bool = True, zoom: bool = True
             ) -> dict[str, Any]:
    """Run the demo and write its files; returns the JSON-able result record."""
    import numpy as np

    from ..devices import resolve_device
    from ..evaluation import json_safe
    from ..io import atomic_write
    from ..session import InteractiveSession

    if clicks < 1:
        raise SGPSAMError(f"--clicks {clicks}: expected an integer >= 1")
    if max_windows < 1:
        raise SGPSAMError(f"--max-windows {max_windows}: expected an integer >= 1")
    root = Path(out)
    if root.exists() and not root.is_dir():
        raise SGPSAMError(f"--out {root}: is a file; expected a folder")
    out_dir = root / _case_folder(case, seed)
    if out_dir.exists() and not out_dir.is_dir():
        raise SGPSAMError(f"--out {out_dir}: is a file; expected a folder")
    try:
        torch_device = resolve_device(device)
    except ValueError as exc:
        raise SGPSAMError(f"--device: {exc}") from None
    start = time.perf_counter()
    volume, truth, case_modality, case_name = _demo_case(case, seed, modality, lesions)
    data_seconds = time.perf_counter() - start

    tick = time.perf_counter()
    net, checkpoint = _load_model(model, torch_device)
    load_seconds = time.perf_counter() - tick
    session = InteractiveSession(net, device=torch_device, max_windows=max_windows,
                                 extend_at_border=max_windows > 1, keep_clicked=keep_clicked,
                                 zoom=zoom)
    session.set_volume(volume, modality=case_modality if case_modality in IMAGE_MODALITIES
                       else "auto")
    prediction, rows, click_seconds = _segment_lesions(session, volume, truth, clicks)
    files = _write_demo_files(out_dir, case, case_name, checkpoint, volume, truth, prediction,
                              rows)
    per_lesion = [r["timings"] for r in rows]
    record = {
        "model": checkpoint, "device": str(torch_device), "case": case_name,
        "seed": seed if case == "synthetic" else None,
        "held_out": (seed >= DEMO_SEED_BASE) if case == "synthetic" else None,
        "modality": session.state.modality, "clicks": clicks,
        "image_shape_ijk": list(volume.shape_ijk),
        "spacing_mm": [round(float(s), 4) for s in volume.spacing],
        "lesions": rows,
        "dice_1": float(np.mean([r["dice_per_click"][0] for r in rows])) if rows else None,
        "dice": float(np.mean([r["dice"] for r in rows])) if rows else None,
        "timings": {"data_s": data_seconds, "load_model_s": load_seconds,
                    "mean_click_s": float(np.mean(click_seconds)) if click_seconds else None,
                    "encode_s": float(sum(t.get("encode", 0.0) for t in per_lesion)),
                    "decode_s": float(sum(t.get("decode", 0.0) for t in per_lesion)),
                    "total_s": time.perf_counter() - start},
        "files": files,
    }
    files["result"] = str(out_dir / "demo_result.json")
    with atomic_write(out_dir / "demo_result.json") as tmp:
        Path(tmp).write_text(json.dumps(json_safe(record), indent=2), encoding="utf-8")
    return json_safe(record)


def _case_folder(case: str, seed: int) -> str:
    """Sub-folder of --out for one case: ``synthetic_10000``, ``shared_pyradiomics_brain1``."""
    if case == "synthetic":
        return f"synthetic_{int(seed)}"
    name = case.split(":", 1)[-1]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("._")
    return f"shared_{safe or 'case'}"


def list_cases(count: int | None = None) -> list[dict[str, Any]]:
    """The cases ``sgpsam demo`` can show: held-out synthetic seeds (``count``, default
    :data:`LISTED_SEEDS`), then the shared cases."""
    from ..synthetic import make_case

    count = LISTED_SEEDS if count is None else count
    rows: list[dict[str, Any]] = []
    for seed in range(DEMO_SEED_BASE, DEMO_SEED_BASE + count):
        sample = make_case(seed, n_lesions=1)
        lesion = sample.lesions[0]
        rows.append({"case": "synthetic", "seed": seed, "modality": sample.modality,
                     "lesion_ml": round(lesion.volume_ml, 3),
                     "diameter_mm": round(lesion.diameter_mm, 1),
                     "default": seed == DEFAULT_DEMO_SEED, "command": f"sgpsam demo --seed {seed}"})
    root = shared_data_root()
    manifest = root / "manifest.json"
    if manifest.is_file():
        try:
            entries = json.loads(manifest.read_text(encoding="utf-8"))["cases"]
        except (OSError, ValueError, KeyError, TypeError):
            entries = []
        for entry in entries:
            if not isinstance(entry, dict) or "id" not in entry:
                continue
            rows.append({"case": f"shared:{entry['id']}", "seed": None,
                         "modality": entry.get("modality"),
                         "lesion_ml": entry.get("target_volume_ml"),
                         "what": entry.get("lesion"), "licence": entry.get("license"),
                         "command": f"sgpsam demo --case shared:{entry['id']}"})
    return rows


def _print_list(as_json: bool) -> int:
    rows = list_cases()
    if as_json:
        print(json.dumps(rows))
        return 0
    lines = [f"held-out synthetic cases (seeds >= {DEMO_SEED_BASE} are never used for "
             "training; one lesion each):"]
    for row in rows:
        if row["seed"] is None:
            continue
        mark = "  (default)" if row["default"] else ""
        lines.append(f"  --seed {row['seed']}  {row['modality']}  {row['lesion_ml']:.2f} mL, "
                     f"{row['diameter_mm']:.0f} mm{mark}")
    shared = [r for r in rows if r["seed"] is None]
    if shared:
        lines.append(f"shared cases ({shared_data_root()}; licences differ, see its README):")
        for row in shared:
            size = "" if row["lesion_ml"] is None else f"{float(row['lesion_ml']):.1f} mL, "
            lines.append(f"  --case {row['case']}  {row['modality']}  {size}{row['what']}")
    else:
        lines.append("shared cases: none found (set SGPSAM_SHARED_DATA to the folder with "
                     "manifest.json)")
    print("\n".join(lines))
    return 0


def _demo(args: argparse.Namespace) -> int:
    if args.list:
        return _print_list(args.json)
    if args.lesions < 1:
        raise SGPSAMError(f"--lesions {args.lesions}: expected an integer >= 1")
    if args.seed < 0:
        raise SGPSAMError(f"--seed {args.seed}: expected an integer >= 0")
    record = run_demo(model=args.model, out=args.out, seed=args.seed, case=args.case,
                      clicks=args.clicks, device=args.device, lesions=args.lesions,
                      modality=args.modality, max_windows=args.max_windows,
                      keep_clicked=not args.all_components,
                      zoom=not args.no_zoom)
    if args.json:
        print(json.dumps(record))
        return 0
    lines = [f"{record['case']} ({record['modality']}, {record['image_shape_ijk']} voxels) with "
             f"{record['model']} on {record['device']}"]
    for row in record["lesions"]:
        dices = ", ".join(f"{d:.3f}" for d in row["dice_per_click"])
        signs = "".join("+" if c["positive"] else "-" for c in row["clicks"])
        nsd = "" if row["nsd"] is None else f", NSD {row['nsd']:.2f}"
        lines.append(f"lesion {row['lesion']} ({row['volume_ml']:.2f} mL, "
                     f"{row['diameter_mm']:.1f} mm): Dice per click {dices} (clicks {signs})"
                     f"{nsd}")
    t = record["timings"]
    lines.append(f"timings: load model {t['load_model_s']:.2f} s, encode {t['encode_s']:.2f} s,"
                 f" decode {t['decode_s']:.3f} s, mean per click {t['mean_click_s']:.2f} s, "
                 f"total {t['total_s']:.1f} s")
    lines.append(_EXPLAIN)
    folder = Path(record["files"]["overlay"]).resolve().parent
    lines.append(f"results in {folder}{os.sep}: "
                 + ", ".join(Path(v).name for v in record["files"].values())
                 + " (open demo_overlay.png to see it)")
    if record["held_out"] is False:
        lines.append("note: seeds below 10000 may overlap synthetic training data")
    print("\n".join(lines))
    return 0
