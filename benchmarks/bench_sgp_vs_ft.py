"""SGP-SAM transfer vs full fine-tuning on small synthetic lesions, same start, budget and seeds.

What it measures: from one starting checkpoint (``--init``, e.g. the bundled demo model or
SAM-Med3D-turbo; default a seeded random init of ``--preset`` saved once so every mode starts
from the same weights), each mode trains for exactly ``--steps`` optimizer steps on the same
synthetic small-lesion training set (``SGPSAMLib.synthetic.write_dataset`` with
``--diameter``, seeds from ``--seed``), then is evaluated with the interactive session and
simulated clicks (``SGPSAMLib.evaluation.evaluate``) on a held-out synthetic set (seeds from
``EVAL_SEED_BASE + --seed``). The starting model itself is evaluated too ("zero_shot").

Modes: ``sgp`` (backbone frozen; SGPM + prompt encoder + mask decoder; Zoom Loss) and
``finetune`` (every parameter; DiceCE); with ``--ablations`` also ``finetune_zoom`` (FT + Zoom),
``sgp_dicece`` (SGPM + DiceCE) and ``sgp_gate_on`` (SGPM with the gate forced on).

Prints one JSON object: per mode Dice after click 1 and after the last click, Dice per click,
Dice-AUC, NSD, the same for lesions < 1 mL, training steps/s and seconds; the seeds, the data
and the machine. Quick check (a minute or two on a CPU)::

    python benchmarks/bench_sgp_vs_ft.py --preset tiny --steps 4

A meaningful comparison needs a pretrained ``--init`` and hundreds of steps on a GPU::

    python benchmarks/bench_sgp_vs_ft.py --init demo --steps 500 --train-cases 40 \\
        --eval-cases 20 --device cuda --ablations
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from SGPSAMLib.build import build_model, save_checkpoint  # noqa: E402
from SGPSAMLib.evaluation import evaluate, json_safe  # noqa: E402
from SGPSAMLib.synthetic import EVAL_SEED_BASE, write_dataset  # noqa: E402
from SGPSAMLib.training import TrainConfig, train  # noqa: E402

MODES: dict[str, dict[str, Any]] = {
    "sgp": {"mode": "sgp"},
    "finetune": {"mode": "finetune"},
}
ABLATIONS: dict[str, dict[str, Any]] = {
    "finetune_zoom": {"mode": "finetune", "loss": "zoom"},
    "sgp_dicece": {"mode": "sgp", "loss": "dicece"},
    "sgp_gate_on": {"mode": "sgp", "gate_mode": "always_on"},
}


def _triplet(text: str) -> tuple[int, int, int]:
    values = tuple(int(v) for v in text.split(","))
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected X,Y,Z, got {text!r}")
    return values  # type: ignore[return-value]


def _pair(text: str) -> tuple[float, float]:
    values = tuple(float(v) for v in text.split(","))
    if len(values) != 2:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX, got {text!r}")
    return values  # type: ignore[return-value]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--init", help="starting checkpoint: a file or a known model name (demo, "
                                  "sam_med3d_turbo); default: random init of --preset")
    p.add_argument("--preset", default="tiny", help="architecture of the random init (tiny)")
    p.add_argument("--steps", type=int, default=20, help="optimizer steps per mode (20)")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--click-iters", type=int, default=None,
                   help="decoder iterations per step (default: the trainer's)")
    p.add_argument("--train-cases", type=int, default=4)
    p.add_argument("--eval-cases", type=int, default=2)
    p.add_argument("--clicks", type=int, default=5)
    p.add_argument("--diameter", type=_pair, default=(3.0, 12.0), metavar="MIN,MAX",
                   help="lesion diameters in mm (default 3,12: small lesions)")
    p.add_argument("--shape", type=_triplet, default=(64, 64, 40), metavar="X,Y,Z")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--ablations", action="store_true")
    p.add_argument("--no-zero-shot", action="store_true", help="skip evaluating the start")
    p.add_argument("--work", help="keep data and runs in this folder (default: a temp folder)")
    return p


def _resolve_init(spec: str) -> Path:
    if Path(spec).is_file():
        return Path(spec)
    from SGPSAMLib.models import resolve_model

    return resolve_model(spec)


def _scores(summary: dict[str, Any]) -> dict[str, Any]:
    small = summary["small"]
    return {
        "dice_1": summary["dice_1"], "dice_final": summary["dice_final"],
        "dice_per_click": summary["dice_per_click"], "dice_auc": summary["dice_auc"],
        "nsd": summary["nsd"], "lesions": summary["lesions"],
        "small_lt_1ml": {"lesions": small["lesions"], "dice_1": small["dice_1"],
                         "dice_final": small["dice_final"], "dice_auc": small["dice_auc"],
                         "nsd": small["nsd"]},
        "eval_seconds": summary["seconds"],
    }


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    start = time.perf_counter()
    data_kwargs = {"shape": args.shape, "diameter_mm": args.diameter}
    train_dir, eval_dir = work / "train", work / "heldout"
    train_seed, eval_seed = args.seed, EVAL_SEED_BASE + args.seed
    write_dataset(train_dir, args.train_cases, train_seed, **data_kwargs)
    write_dataset(eval_dir, args.eval_cases, eval_seed, **data_kwargs)
    if args.init:
        init = _resolve_init(args.init)
    else:
        torch.manual_seed(args.seed)
        init = work / f"init_{args.preset}.pt"
        save_checkpoint(build_model(args.preset), init,
                        {"note": f"random init of {args.preset}, seed {args.seed}"})
    modes = dict(MODES, **(ABLATIONS if args.ablations else {}))
    results: dict[str, Any] = {}
    if not args.no_zero_shot:
        summary = evaluate(init, eval_dir, clicks=args.clicks, device=args.device).summary
        results["zero_shot"] = {**_scores(summary), "train_steps": 0}
    for name, options in modes.items():
        config = TrainConfig(
            data=str(train_dir), out=str(work / "runs" / name), init=str(init),
            steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
            device=args.device, val_fraction=0.0, click_iters=args.click_iters,
            command=f"bench_sgp_vs_ft {name}", **options)
        trained = train(config)
        summary = evaluate(trained.last, eval_dir, clicks=args.clicks,
                           device=args.device).summary
        results[name] = {**_scores(summary), "train_steps": trained.steps,
                         "train_steps_per_s": trained.steps_per_s,
                         "train_seconds": trained.seconds,
                         "loss_final": trained.metrics.get("loss"),
                         "options": options}
    lesions = {}
    for split, folder in (("train", train_dir), ("heldout", eval_dir)):
        meta = json.loads((folder / "dataset.json").read_text())
        rows = [les for case in meta["sgpsam_synthetic"]["cases"] for les in case["lesions"]]
        lesions[split] = {"cases": len(meta["training"]), "lesions": len(rows),
                          "lt_1ml": sum(1 for r in rows if r["volume_ml"] < 1.0)}
    return {
        "benchmark": "sgp_vs_ft",
        "init": str(init) if args.init else f"random {args.preset} (seed {args.seed})",
        "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
        "clicks": args.clicks,
        "seeds": {"train_data": train_seed, "eval_data": eval_seed, "training": args.seed,
                  "init": None if args.init else args.seed},
        "data": {**lesions, "diameter_mm": list(args.diameter), "shape": list(args.shape)},
        "modes": results,
        "device": args.device, "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(), "machine": platform.machine(),
        "python": platform.python_version(), "seconds": time.perf_counter() - start,
    }


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.work:
        work = Path(args.work)
        work.mkdir(parents=True, exist_ok=True)
        record = run(args, work)
    else:
        with tempfile.TemporaryDirectory(prefix="bench_sgp_vs_ft_") as tmp:
            record = run(args, Path(tmp))
    print(json.dumps(json_safe(record), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
