"""Dice of a model with simulated clicks: a held-out synthetic set and the real shared cases.

This is where the demo model's figures in the README come from. Two parts:

- **synthetic held-out**: ``--synthetic-cases`` cases from ``SGPSAMLib.synthetic`` with seeds
  from ``EVAL_SEED_BASE`` (20000) on, a range no training set uses; every lesion is evaluated
  with :func:`SGPSAMLib.evaluation.evaluate` (click 1 at the lesion interior, later clicks at
  the centre of the largest error region); summary over all lesions and lesions < 1 mL.
- **real cases**: every case of ``../shared/data/manifest.json`` (or ``--shared-root``), its
  default target's largest connected component, through :func:`SGPSAMLib.cli.demo.run_demo`
  (the same protocol, the session on the image's own grid).

Prints one JSON object. Example (the README's numbers)::

    python benchmarks/bench_demo_model.py --model demo --synthetic-cases 20 --clicks 5
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from SGPSAMLib.cli.demo import run_demo, shared_data_root  # noqa: E402
from SGPSAMLib.evaluation import evaluate, json_safe  # noqa: E402
from SGPSAMLib.synthetic import EVAL_SEED_BASE, write_dataset  # noqa: E402


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="demo", help="model name or checkpoint file (demo)")
    p.add_argument("--synthetic-cases", type=int, default=20, help="held-out cases (20); 0: skip")
    p.add_argument("--clicks", type=int, default=5, help="clicks per lesion (5)")
    p.add_argument("--seed", type=int, default=EVAL_SEED_BASE,
                   help=f"first synthetic seed (default {EVAL_SEED_BASE})")
    p.add_argument("--shared-root", help="folder with manifest.json (default ../shared/data)")
    p.add_argument("--no-shared", action="store_true", help="skip the real cases")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--all-components", action="store_true",
                   help="the session keeps every predicted component (default: only those a "
                        "positive click touches, as sgpsam does)")
    p.add_argument("--no-zoom", action="store_true",
                   help="every window at the model's crop spacing (default: its zoom policy, "
                        "as sgpsam does)")
    return p


def _synthetic(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    folder = work / "heldout"
    write_dataset(folder, args.synthetic_cases, args.seed)
    summary = evaluate(args.model, folder, clicks=args.clicks, device=args.device,
                       keep_clicked=not args.all_components,
                       zoom=not args.no_zoom).summary
    keep = ("cases", "cases_failed", "lesions", "dice_per_click", "dice_1", "dice_final",
            "dice_auc", "nsd", "nsd_tolerance_mm", "empty_masks", "needs_correction", "small",
            "large", "seconds")
    return {"seeds": [args.seed, args.seed + args.synthetic_cases - 1],
            **{k: summary.get(k) for k in keep}}


def _trained_case_ids(model: str) -> set[str]:
    """Case ids the checkpoint was trained on (its metadata), folder prefixes removed."""
    from SGPSAMLib.build import read_checkpoint
    from SGPSAMLib.models import resolve_model

    try:
        _, _, metadata = read_checkpoint(resolve_model(model))
    except Exception:  # noqa: BLE001 - a model without provenance: nothing known to be trained
        return set()
    cases = (metadata.get("data") or {}).get("train_cases") or []
    return {str(c).rsplit("/", 1)[-1] for c in cases}


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    if not rows:
        return {"cases": 0, "median_dice_1": None, "median_dice_final": None,
                "mean_dice_final": None, "empty_masks": 0}
    return {"cases": len(rows),
            "median_dice_1": float(np.median([r["dice_1"] for r in rows])),
            "median_dice_final": float(np.median([r["dice_final"] for r in rows])),
            "mean_dice_final": float(np.mean([r["dice_final"] for r in rows])),
            "empty_masks": sum(1 for r in rows if r["predicted_voxels"] == 0)}


def _shared(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Every shared case; the figures that count are over the ones the model never saw."""
    trained = _trained_case_ids(args.model)
    root = Path(args.shared_root) if args.shared_root else shared_data_root()
    manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    os.environ["SGPSAM_SHARED_DATA"] = str(root)  # run_demo's shared-case loader reads it
    rows = []
    for entry in manifest["cases"]:
        case_id = entry["id"]
        tick = time.perf_counter()
        try:
            record = run_demo(model=args.model, out=work / "shared" / case_id,
                              case=f"shared:{case_id}", clicks=args.clicks, device=args.device,
                              keep_clicked=not args.all_components, zoom=not args.no_zoom)
        except Exception as exc:  # noqa: BLE001 - one case failing is a result, not a crash
            rows.append({"case": case_id, "error": f"{type(exc).__name__}: {exc}"})
            continue
        lesion = record["lesions"][0]
        rows.append({"case": case_id, "trained_on": case_id in trained,
                     "modality": record["modality"],
                     "lesion_ml": round(lesion["volume_ml"], 2),
                     "dice_per_click": [round(d, 4) for d in lesion["dice_per_click"]],
                     "dice_1": lesion["dice_per_click"][0], "dice_final": lesion["dice"],
                     "nsd": lesion["nsd"], "predicted_voxels": lesion["predicted_voxels"],
                     "seconds": round(time.perf_counter() - tick, 2)})
    ok = [r for r in rows if "error" not in r]
    return {"cases": rows, "held_out": _summary([r for r in ok if not r["trained_on"]]),
            "trained_on": _summary([r for r in ok if r["trained_on"]])}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    record: dict[str, Any] = {"benchmark": "demo_model", "model": args.model,
                              "clicks": args.clicks, "keep_clicked": not args.all_components,
                              "zoom": not args.no_zoom}
    with tempfile.TemporaryDirectory(prefix="bench_demo_model_") as tmp:
        work = Path(tmp)
        if args.synthetic_cases > 0:
            record["synthetic_heldout"] = _synthetic(args, work)
        if not args.no_shared:
            record["shared"] = _shared(args, work)
    record.update({"device": args.device, "torch": torch.__version__,
                   "torch_threads": torch.get_num_threads(), "machine": platform.machine(),
                   "processor": platform.processor(), "python": platform.python_version(),
                   "seconds": round(time.perf_counter() - start, 1)})
    print(json.dumps(json_safe(record), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
