"""``sgpsam train``: fine-tune on a folder of annotated cases (SGP-SAM recipe or baselines).

Torch is imported only when the command runs, so ``sgpsam --help`` stays fast. Ctrl-C and
SIGTERM stop the run cleanly after the current step (:class:`SGPSAMLib.job.StopOnSignals`).
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from typing import Any

from .. import options
from ..job import ProgressLines, add_stop_file_option, print_record, report_errors, stop_requests
from .common import note

__all__ = ["register"]


_EPILOG = """\
modes:
  sgp       SGP-SAM transfer: backbone frozen; SGPM + prompt encoder + mask decoder trained;
            Zoom Loss (start from a pretrained --init such as sam_med3d_turbo).
  finetune  every parameter trained; DiceCE (SAM-Med3D's loss).
  ablations: --loss overrides the mode's loss (FT + Zoom, SGPM + DiceCE); --gate-mode always_on
  forces the SGPM gate on.

data folder layouts: imagesTr/ + labelsTr/ (MSD, optional dataset.json); images/ + labels/ with
equal names; or one folder with case.nii.gz + case_label.nii.gz (also _seg, _mask, -label).

examples:
  sgpsam train --data Task03_Liver --out runs/sgp --init sam_med3d_turbo --labels 2
  sgpsam train --recipe demo --data synth real --data-weights 0.8 0.2 --val-data val --out runs/d
  torchrun --nproc_per_node 4 -m SGPSAMLib train --data D --out runs/ddp --init turbo.pth
  sgpsam train --data D --out runs/sgp --resume        # continue a stopped run

Stop with Ctrl-C or SIGTERM: the run finishes the current step, saves last.pt and state.pt
and exits 0 (a second Ctrl-C aborts at once); --resume continues it. Creating the --stop-file
stops it the same way (for parents that cannot send signals). Without a terminal, progress is
printed as plain lines (at most one per 30 s, plus each validation and save).
"""


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add the ``train`` sub-command."""
    parser = commands.add_parser(
        "train", parents=[common], help="train / fine-tune on annotated cases",
        description="Train SGP-SAM (or a fine-tuning baseline) on image/label pairs with "
                    "simulated clicks. Writes OUT/last.pt, OUT/best.pt (best validation Dice) "
                    "and OUT/state.pt (for --resume).",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _recipe_options(parser)
    _interaction_options(parser.add_argument)
    _data_options(parser.add_argument)
    _machine_options(parser.add_argument)
    add_stop_file_option(parser)
    parser.set_defaults(handler=_train)


def _recipe_options(parser: argparse.ArgumentParser) -> None:
    """Data and output folders, the recipe, the starting model and the schedule."""
    add = parser.add_argument
    add("--data", required=True, nargs="+", metavar="DIR",
        help="folder(s) of image/label pairs (several are pooled; case ids get the folder name)")
    add("--data-weights", nargs="+", type=float, metavar="W",
        help="share of the samples drawn from each --data folder (default: every lesion alike)")
    add("--val-data", metavar="DIR",
        help="a separate validation folder (then every --data case trains)")
    add("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    add("--recipe", metavar="NAME",
        help="start from a named recipe's options (demo: the bundled model's); flags given "
             "explicitly override it")
    add("--mode", choices=options.TRAIN_MODES, help="training recipe (default: sgp)")
    add("--init", metavar="CKPT",
        help="start from this checkpoint (file, or a known model name such as "
             "sam_med3d_turbo); default: random init of --preset")
    add("--preset", help="architecture for random init (default sgp_sam; demo, tiny, "
                         "sam_med3d) or for an --init file without a stored config")
    add("--loss", choices=options.LOSSES, help="override the mode's loss")
    add("--gate-mode", choices=options.GATE_MODES,
        help="override the SGPM gate (ablation)")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, metavar="N", help="optimizer steps (default 1000)")
    length.add_argument("--epochs", type=float, metavar="N",
                        help="passes over the training lesions instead of --steps")
    add("--batch-size", type=int, metavar="B", help="crops per step and GPU (default 2)")
    add("--accum", type=int, metavar="K", help="gradient accumulation micro-batches (default 1)")
    add("--lr", type=float, help="peak learning rate (default 1e-4)")
    add("--weight-decay", type=float, help="AdamW weight decay (default 0.1)")
    add("--warmup", type=int, metavar="STEPS",
        help="linear warm-up steps before the cosine decay (default 5%% of the run, <= 200)")
    add("--grad-clip", type=float, help="max gradient norm, 0 = off (default 1.0)")
    add("--amp", choices=options.AMP_MODES,
        help="mixed precision on CUDA (default auto: bf16, else fp16); never on CPU")


def _interaction_options(add: Any) -> None:
    """How clicks are simulated in training."""
    add("--click-iters", type=int, metavar="N",
        help="decoder iterations per batch (default 11 on CUDA as SAM-Med3D, 5 on CPU)")
    add("--no-random-insert", dest="random_insert", action="store_const", const=False,
        help="no point-free iterations (SAM-Med3D feeds only the mask at one random middle "
             "iteration and the last)")
    add("--prompt-mode", choices=options.PROMPT_MODES,
        help="clicks given per iteration (default latest, as the interactive session)")
    add("--rollout", action="store_const", const=True,
        help="RITM schedule: train the first and the last round, play a random number of "
             "rounds between without gradient (cheaper; learns to correct its own mistakes)")
    add("--click-mode", choices=options.CLICK_MODES,
        help="corrective clicks: a random error voxel (uniform, SAM-Med3D; default), the "
             "interior of the largest error region (center, as sgpsam evaluate) or both (mixed)")
    add("--coarse-weight", type=float, metavar="W",
        help="weight of the decoder's low-res loss beside the refinement head's (default 0.5)")
    add("--interior-power", type=float, metavar="P",
        help="first clicks drawn with probability depth**P inside the lesion (default 0: "
             "uniform)")
    add("--jitter-fraction", type=float, metavar="F",
        help="share of crops shifted by --jitter-mm; the rest are centred on the first click "
             "(default 1)")
    add("--close-fraction", type=float, metavar="F",
        help="share of crops sampled at half the model's crop spacing, as the zoom's close "
             "look (default 0: one spacing)")


def _data_options(add: Any) -> None:
    """Which lesions train, augmentation, and validation."""
    add("--labels", metavar="V,V", help="label values to train on (default: all non-zero)")
    add("--lesion-unit", choices=options.LESION_UNITS,
        help="a lesion is a connected component (default) or a whole label value")
    add("--min-lesion-voxels", type=int, metavar="N", help="ignore smaller lesions (default 8)")
    add("--jitter-mm", type=float, help="random shift of the crop centre per axis (default 12)")
    add("--no-flip", dest="flip", action="store_const", const=False, help="no random flips")
    add("--no-intensity-aug", dest="intensity_aug", action="store_const", const=False,
        help="no intensity augmentation")
    add("--modality", choices=options.MODALITIES, help="intensity normalisation (default auto)")
    add("--val-fraction", type=float, metavar="F",
        help="fraction of cases held out for validation (default 0.2)")
    add("--val-cases", metavar="ID,ID", help="explicit validation case ids instead")
    add("--val-every", type=int, metavar="STEPS", help="validate every STEPS (default: 10x/run)")
    add("--val-clicks", type=int, metavar="N", help="simulated clicks in validation (default 5)")
    add("--val-max-lesions", type=int, metavar="N", help="validation lesions at most (32)")
    add("--checkpoint-every", type=int, metavar="STEPS",
        help="write last.pt/state.pt every STEPS (default: --val-every)")
    add("--log-every", type=int, metavar="STEPS", help="progress record every STEPS (default 1)")


def _machine_options(add: Any) -> None:
    """Seed, device, workers, resume and the progress protocol."""
    add("--seed", type=int, help="random seed (default 0)")
    add("--device", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    add("--num-workers", type=int, metavar="N",
        help="data-loader workers (default: 0 on CPU, up to 4 on CUDA)")
    add("--threads", type=int, metavar="N",
        help="torch CPU threads (default: torch's choice; 1 is often faster on a busy CPU)")
    add("--resume", action="store_const", const=True,
        help="continue the run in --out from its state.pt (same options)")
    add("--json-progress", action="store_true",
        help="print one JSON record per line on stdout (start, progress, checkpoint, done, "
             "error)")


def _resolve_init(spec: str) -> str:
    from ..models import resolve_model

    return str(resolve_model(spec, option="--init"))


def _printer(json_progress: bool):
    """(progress callback, close): JSON lines on stdout, else progress on stderr (a bar on a
    terminal, plain lines in a log: at most one per 30 s, plus every validation and save)."""
    if json_progress:
        return print_record, lambda: None
    state: dict = {"lines": None}

    def show(record: dict) -> None:
        event = record.get("event")
        lines = state["lines"]
        if event == "start":
            state["lines"] = ProgressLines(record["total_steps"], "step",
                                           initial=record["start_step"])
            state["lines"].write(f"training {record.get('mode', '')}: steps "
                                 f"{record['start_step']}..{record['total_steps']} on "
                                 f"{record.get('device', '?')} -> {record.get('out', '')}")
        elif event == "progress" and lines is not None:
            status = f"loss {record['loss']:.4f}, lr {record['lr']:.2e}"
            validated = record.get("val_step") == record["step"]
            if record.get("val_dice") is not None:
                status += f", val Dice {record['val_dice']:.3f}"
            if record.get("eta_s") is not None and not lines.is_bar:
                status += f", ETA {record['eta_s'] / 60:.1f} min"
            lines.update(record["step"], status, force=validated)
        elif event == "checkpoint" and lines is not None:
            lines.write(f"saved {record['kind']}: {record['path']}")

    def close() -> None:
        if state["lines"] is not None:
            state["lines"].close()

    return show, close


def _train(args: argparse.Namespace) -> int:
    from ..training import TrainConfig, train

    emit, close = _printer(args.json_progress)
    try:
        with report_errors(args.json_progress):
            if args.init:
                args.init = _resolve_init(args.init)
            config = TrainConfig.from_args(args).replace(
                command=shlex.join(["sgpsam", *sys.argv[1:]]) if sys.argv else "sgpsam train")
            with stop_requests(args.stop_file, note, "the current step") as stop:
                result = train(config, progress=emit, stop=stop)
    finally:
        close()
    if args.json_progress:
        return 0
    metrics = result.metrics
    summary = {"last": str(result.last), "best": None if result.best is None else str(result.best),
               "steps": result.steps, "stopped": result.stopped,
               "steps_per_s": result.steps_per_s, "metrics": metrics}
    if args.json:
        print(json.dumps(summary))
    else:
        best = metrics.get("best_val_dice")
        print(f"{'stopped' if result.stopped else 'done'} at step {result.steps}: last "
              f"{result.last}" + (f", best {result.best} (val Dice {best:.3f})"
                                   if result.best is not None and best is not None else "")
              + f", {result.steps_per_s:.3f} steps/s")
    return 0
