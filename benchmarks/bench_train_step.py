"""Training speed of a recipe: optimizer steps and samples per second, data to weights.

Runs the real trainer (``SGPSAMLib.training.train``) for ``--steps`` steps of a named recipe
(``SGPSAMLib.training.recipes``, default ``demo``) on a few seeded synthetic cases in a
temporary folder, without validation, and reports the median step time over the steps after
``--skip`` warm-up steps. One step = ``batch_size`` crops sampled, encoded once, the recipe's
interaction rounds, backward and the optimizer update: everything a training run does per step.

Prints one JSON object (``steps_per_s``, ``samples_per_s``, step-time min/median/max, the load
average before and after, the machine). A busy machine is many times slower: compare figures
only with the load next to them. Example::

    python benchmarks/bench_train_step.py --steps 40 --threads 2
    python benchmarks/bench_train_step.py --device cuda --steps 40
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

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from SGPSAMLib.synthetic import write_dataset  # noqa: E402
from SGPSAMLib.training import TrainConfig, train  # noqa: E402
from SGPSAMLib.training.recipes import RECIPES, recipe  # noqa: E402


def _load() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default="demo", choices=sorted(RECIPES))
    p.add_argument("--steps", type=int, default=40, help="steps to run (40)")
    p.add_argument("--skip", type=int, help="warm-up steps left out (default 5, fewer when "
                                            "--steps is smaller)")
    p.add_argument("--cases", type=int, default=8, help="synthetic training cases (8)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error("--steps must be >= 1")
    if args.skip is None:
        args.skip = min(5, args.steps - 1)
    if not 0 <= args.skip < args.steps:
        p.error("--skip must be >= 0 and smaller than --steps")
    record: dict = {"benchmark": "train_step", "recipe": args.recipe,
                    "options": recipe(args.recipe), "load_before": _load()}
    with tempfile.TemporaryDirectory(prefix="bench_train_step_") as tmp:
        data = Path(tmp) / "data"
        write_dataset(data, args.cases, seed=args.seed)
        step_times: list[float] = []

        def progress(rec: dict) -> None:
            if rec.get("event") == "progress":
                step_times.append(float(rec["step_s"]))

        # The recipe's own schedule and validation settings give way to the benchmark's.
        options = {**recipe(args.recipe), "steps": args.steps, "val_fraction": 0.0,
                   "warmup": 0}
        options.pop("val_every", None)
        options.pop("val_max_lesions", None)
        config = TrainConfig(data=str(data), out=str(Path(tmp) / "run"), device=args.device,
                             threads=args.threads, seed=args.seed, **options)
        tick = time.perf_counter()
        result = train(config, progress=progress)
        wall = time.perf_counter() - tick
    times = np.asarray(step_times[args.skip:])
    median = float(np.median(times))
    batch = config.batch_size * config.accum
    record.update({
        "steps": args.steps, "measured_steps": int(times.size),
        "step_s": {"min": round(float(times.min()), 4), "median": round(median, 4),
                   "max": round(float(times.max()), 4)},
        "steps_per_s": round(1.0 / median, 3), "samples_per_s": round(batch / median, 3),
        "batch": batch, "final_loss": result.metrics.get("loss"), "wall_s": round(wall, 1),
        "load_after": _load(), "device": args.device, "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
        "machine": platform.machine(), "python": platform.python_version(),
    })
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
