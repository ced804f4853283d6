"""The training loop: SGP-SAM transfer (``sgp``) and full fine-tuning (``finetune``).

One optimizer step = ``accum`` micro-batches of ``batch_size`` crops per rank. Per micro-batch
the image embedding is computed once and the decoder runs ``click_iters`` times, SAM-Med3D
style (reference/sam_med3d.md §6): the first click is the lesion voxel the crop was centred
on, each later click a random voxel of the previous prediction's error region; the previous
low-res logits are fed back (not detached, as upstream); optionally one random middle
iteration and the last one get no point ("random_insert"). The loss (Zoom or DiceCE) compares
the logits upsampled to the crop (trilinear, as upstream) with the crop's label and is summed
over iterations.

Determinism: every micro-batch reseeds torch (Gumbel noise of the SGPM gate) and its own click
generator from (seed, rank, micro-batch index), and crops come from a position-seeded stream,
so a resumed run continues bit-exactly (on CPU) where it stopped.

Outputs in ``out``: ``last.pt`` and ``best.pt`` (self-describing model checkpoints for
:func:`SGPSAMLib.build.load_model`), ``state.pt`` (everything needed to resume: weights,
optimizer, scheduler, grad scaler, RNG states, step, best metric, history; plain tensors and
builtins, loadable with ``weights_only=True``). All written atomically, and in an order that
keeps every prefix resumable: ``state.pt`` before ``last.pt`` (a resume rewrites a ``last.pt``
older than ``state.pt``); a folder with only ``last.pt``/``best.pt`` of this very run (killed
before its first ``state.pt``) is started over, with or without ``--resume``. A run holds the
folder's lock (``.sgpsam_train.lock``; a second run there is refused) and removes stale
``atomic_write`` temporaries of its own files that a kill left behind.

Multi-GPU: launch the same command with ``torchrun --nproc_per_node N -m SGPSAMLib train ...``;
each rank gets its shard of the sample stream, gradients are averaged by
``DistributedDataParallel``, rank 0 validates, logs and writes files.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..build import (
    check_config_buildable,
    check_config_fits,
    check_state_dict,
    config_from_checkpoint,
    read_checkpoint,
    safe_torch_load,
    save_checkpoint,
)
from ..cases import CaseFiles, LoadedCase, find_cases, load_case, split_cases
from ..config import ModelConfig
from ..errors import CheckpointError, SGPSAMError
from ..io import atomic_write
from ..job import StopFlag, StopOnSignals, is_stopped, json_safe
from ..losses import make_loss
from ..modeling import SGPSAMModel
from ..presets import preset_config
from ..runfiles import FolderLock, remove_stale_temporaries
from .config import RESUME_OVERRIDABLE, TrainConfig
from .interaction import InteractiveLoss
from .runtime import any_rank, barrier, init_distributed, lr_factor, rng_state, set_rng_state
from .sampling import CropDataset, SampleStream, sample_seed
from .validation import validate, validation_targets

__all__ = ["train", "TrainResult", "build_initial_model", "trainable_parameter_names",
           "InteractiveLoss", "STATE_FORMAT"]

log = logging.getLogger(__name__)

STATE_FORMAT = "sgpsam-train-state"
STATE_VERSION = 1
_SGPM_KEY = ".sgpm."

ProgressFn = Callable[[dict], None]


@dataclass
class TrainResult:
    """What a run produced.

    Attributes:
        last: ``last.pt``; best: ``best.pt`` (None without validation cases); state:
        ``state.pt``; history: every record emitted (start, progress, checkpoint, done);
        metrics: final values (val_dice, best_val_dice, best_step, loss, ...); steps: optimizer
        steps done in total; stopped: the run was stopped early; steps_per_s: optimizer steps
        per second of training time in this process (validation and checkpoints excluded).
    """

    last: Path
    best: Path | None
    state: Path
    history: list[dict] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    steps: int = 0
    stopped: bool = False
    steps_per_s: float = float("nan")
    seconds: float = 0.0


# ----------------------------------------------------------------------------------------------
# Model set-up.

def build_initial_model(config: TrainConfig) -> SGPSAMModel:
    """The model a run starts from: ``init`` checkpoint, or random init of ``preset``.

    In ``sgp`` mode a model without SGPM gets them (after its global-attention blocks, the
    paper's placement) at their identity initialisation. ``gate_mode`` overrides the stored one.

    Raises:
        CheckpointError: unreadable init checkpoint or keys that do not fit.
    """
    state: dict[str, torch.Tensor] | None = None
    if config.init:
        state, stored, _ = read_checkpoint(config.init)
        has_sgpm = any(_SGPM_KEY in k for k in state)
        if stored is not None:
            model_config = config_from_checkpoint(stored, f"--init {config.init}")
        else:
            name = config.preset or ("sgp_sam" if has_sgpm or config.mode == "sgp"
                                     else "sam_med3d")
            model_config = _preset(name)
    else:
        model_config = _preset(config.preset or "sgp_sam")
    if config.model_overrides:
        try:
            model_config = model_config.replace(**config.model_overrides)
        except (TypeError, ValueError) as exc:
            raise SGPSAMError(f"model_overrides: {exc}") from exc
    if config.mode == "sgp" and not model_config.sgpm_blocks:
        model_config = model_config.replace(sgpm_blocks=model_config.global_attn_indexes)
    if config.gate_mode:
        model_config = model_config.replace(gate_mode=config.gate_mode)
    if state is not None:  # a stored config that lies is refused before allocating
        check_config_buildable(model_config, config.init, len(state))
    torch.manual_seed(sample_seed(config.seed, 8))
    model = SGPSAMModel(model_config)
    if state is not None:
        check_state_dict({k: v.shape for k, v in model.state_dict().items()}, state,
                         f"--init {config.init}", model_config.preset,
                         allow_missing_sgpm=not has_sgpm,
                         hint="use --preset to name the architecture of a file without a config")
        model.load_state_dict(state, strict=False)
    return model


def _preset(name: str) -> ModelConfig:
    return preset_config(name, "--preset", error=SGPSAMError)


def trainable_parameter_names(model: nn.Module, mode: str) -> list[str]:
    """Names of the parameters a mode trains: sgp = SGPM + prompt encoder + mask decoder."""
    names = []
    for name, _ in model.named_parameters():
        if mode == "finetune" or _SGPM_KEY in name or name.startswith(
                ("prompt_encoder.", "mask_decoder.")):
            names.append(name)
    return names


# ----------------------------------------------------------------------------------------------
# The run.

@dataclass
class _Loop:
    """Where the training loop stands (this process's session of the run)."""

    step: int
    saved_at: int
    stopped: bool = False
    steps: int = 0
    seconds: float = 0.0
    recent_loss: list[float] = field(default_factory=list)
    step_times: list[float] = field(default_factory=list)


class _Run:
    def __init__(self, config: TrainConfig, progress: ProgressFn | None, stop: StopFlag) -> None:
        self.config = config
        self.progress_fn = progress
        self.stop = stop
        self.history: list[dict] = []
        self.out = Path(config.out)
        self.last_path = self.out / "last.pt"
        self.best_path = self.out / "best.pt"
        self.state_path = self.out / "state.pt"
        self.curve_path = self.out / "training_curve.png"

    # -- reporting --------------------------------------------------------------------------
    def emit(self, record: dict) -> None:
        if self.dist.rank != 0:
            return
        record = json_safe(record)
        self.history.append(record)
        if self.progress_fn is not None:
            self.progress_fn(record)

    # -- set-up -----------------------------------------------------------------------------
    def _resume_state(self) -> dict | None:
        """The stored state to resume from, None to start at step 0, or an error.

        Recognises a run killed before its first ``state.pt`` (only ``last.pt``/``best.pt``
        of the same options): there is nothing to resume, so it is started over.
        """
        config = self.config
        if not self.state_path.is_file():
            leftovers = [p for p in (self.last_path, self.best_path) if p.exists()]
            if leftovers:
                if not self._unfinished_same_run(leftovers):
                    raise SGPSAMError(
                        f"--out {self.out}: holds {', '.join(p.name for p in leftovers)} of "
                        f"another (or a finished) training run and no {self.state_path.name} "
                        "to resume; choose another --out folder (or move those files away)")
                log.warning("%s: the earlier run was stopped before its first complete "
                            "checkpoint (no %s); starting it over from step 0", self.out,
                            self.state_path.name)
                return None
            if config.resume:
                raise SGPSAMError(f"--resume: no {self.state_path} to resume from")
            return None
        if not config.resume:
            raise SGPSAMError(f"--out {self.out}: already holds a training run (last.pt / "
                              "state.pt); add --resume to continue it or choose another "
                              "--out folder")
        try:
            state = safe_torch_load(self.state_path)
        except CheckpointError as exc:
            raise CheckpointError(f"not a readable training state: {exc}") from None
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise CheckpointError(f"{self.state_path}: not an sgpsam training state file")
        weights = state.get("model")
        if not isinstance(weights, dict) or not all(
                isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items()):
            raise CheckpointError(f"{self.state_path}: the training state holds no model "
                                  "weights (a dict of tensors); it is damaged")
        stored = TrainConfig.from_dict(state["config"])
        differences = []
        for key, value in config.to_dict().items():
            if key in RESUME_OVERRIDABLE:
                continue
            if stored.to_dict().get(key) != value:
                differences.append(f"{key}: stored {stored.to_dict().get(key)!r}, now {value!r}")
        if differences:
            raise SGPSAMError("--resume: options differ from the stored run ("
                              + "; ".join(differences) + "); resume with the same options")
        return state

    def _unfinished_same_run(self, files: list[Path]) -> bool:
        """Were ``files`` written by an unfinished run with these options (resumable ones
        aside)? Then they are what a kill before the first ``state.pt`` leaves behind; a
        finished run whose ``state.pt`` was deleted is not started over."""
        wanted = {k: v for k, v in self.config.to_dict().items() if k not in RESUME_OVERRIDABLE}
        for path in files:
            try:
                metadata = read_checkpoint(path)[2]
            except CheckpointError:
                return False
            stored = metadata.get("train_config")
            try:
                options = TrainConfig.from_dict(stored).to_dict()
            except (SGPSAMError, TypeError, ValueError, AttributeError):
                return False
            if {k: v for k, v in options.items() if k not in RESUME_OVERRIDABLE} != wanted:
                return False
            step, total = metadata.get("step"), metadata.get("total_steps")
            if not isinstance(step, int) or not isinstance(total, int) or step >= total:
                return False
        return True

    def _load_data(self) -> None:
        config = self.config
        folders = config.data_folders
        kwargs = dict(labels=config.labels, lesion_unit=config.lesion_unit,
                      min_lesion_voxels=config.min_lesion_voxels, modality=config.modality)
        by_id: dict[str, CaseFiles] = {}
        origin: dict[str, int] = {}
        for index, folder in enumerate(folders):
            for files in find_cases(folder):
                case_id = files.case_id if len(folders) == 1 else \
                    f"{Path(folder).name}/{files.case_id}"
                if case_id in by_id:
                    raise SGPSAMError(f"--data: case id {case_id!r} appears twice; give the "
                                      "folders distinct names")
                by_id[case_id] = CaseFiles(files.image, files.label, case_id)
                origin[case_id] = index
        if config.val_data:
            train_ids = sorted(by_id)
            val_files = find_cases(config.val_data)
            val_ids = [f.case_id for f in val_files]
            val_by_id = {f.case_id: f for f in val_files}
        else:
            train_ids, val_ids = split_cases(list(by_id), config.val_fraction, config.seed,
                                             config.val_cases)
            val_by_id = by_id
        self.train_cases: list[LoadedCase] = [load_case(by_id[i], **kwargs) for i in train_ids]
        self.val_cases: list[LoadedCase] = ([load_case(val_by_id[i], **kwargs) for i in val_ids]
                                            if self.dist.rank == 0 else [])
        self.train_origin = [origin[i] for i in train_ids]
        n_train = sum(len(c.lesions) for c in self.train_cases)
        if n_train == 0:
            wanted = "any non-zero label" if config.labels is None else f"labels {config.labels}"
            raise SGPSAMError(f"--data {', '.join(folders)}: no lesion ({wanted}, at least "
                              f"{config.min_lesion_voxels} voxels) in the {len(train_ids)} "
                              "training cases")
        self.data_summary = {
            "folder": folders[0] if len(folders) == 1 else list(folders),
            "train_cases": train_ids, "val_cases": val_ids,
            "val_folder": config.val_data,
            "train_lesions": n_train,
            "val_lesions": sum(len(c.lesions) for c in self.val_cases),
            "labels": None if config.labels is None else list(config.labels),
            "lesion_unit": config.lesion_unit,
        }

    def _item_weights(self, dataset: CropDataset) -> np.ndarray | None:
        """Per-item sampling probabilities from ``data_weights`` (None: every lesion alike)."""
        weights = self.config.data_weights
        if weights is None:
            return None
        folder_of = np.array([self.train_origin[c] for c, _ in dataset.items])
        counts = np.bincount(folder_of, minlength=len(weights))
        share = np.asarray(weights, dtype=np.float64) / float(sum(weights))
        missing = [self.config.data_folders[i] for i in range(len(weights))
                   if counts[i] == 0 and share[i] > 0]
        if missing:
            raise SGPSAMError(f"--data-weights: no training lesion in {', '.join(missing)}")
        per_item = share[folder_of] / counts[folder_of]
        return per_item / per_item.sum()

    def _device(self) -> torch.device:
        from ..devices import resolve_device

        name = self.config.device
        if self.dist.active and torch.cuda.is_available() and name in ("auto", "cuda"):
            return torch.device("cuda", self.dist.local_rank)
        try:
            return resolve_device(name)
        except ValueError as exc:
            raise SGPSAMError(f"--device: {exc}") from None

    def _autocast_factory(self) -> tuple[Callable, torch.dtype | None]:
        amp = self.config.amp
        if self.device.type != "cuda" or amp == "off":
            return contextlib.nullcontext, None
        if amp == "auto":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            dtype = torch.bfloat16 if amp == "bf16" else torch.float16
        return (lambda: torch.autocast(device_type="cuda", dtype=dtype)), dtype

    # -- files ------------------------------------------------------------------------------
    def _metadata(self, kind: str, step: int) -> dict:
        config = self.config
        return {
            "kind": kind, "mode": config.mode, "loss": config.loss_name,
            "gate_mode": self.model.config.gate_mode, "init": config.init,
            "step": step, "total_steps": self.total_steps,
            "epoch": round(self.stream.epoch_of(step * self.per_step), 4),
            "train_config": config.to_dict(), "data": self.data_summary,
            "metrics": json_safe(dict(self.metrics)), "command": config.command,
            "library_version": __version__,
        }

    def _save_model(self, kind: str, step: int) -> Path:
        path = self.best_path if kind == "best" else self.last_path
        save_checkpoint(self.model, path, self._metadata(kind, step))
        self.emit({"event": "checkpoint", "path": str(path), "kind": kind, "step": step,
                   "val_dice": self.metrics.get("val_dice")})
        return path

    def _save_state(self, step: int) -> None:
        state = {
            "format": STATE_FORMAT, "version": STATE_VERSION, "step": step,
            "config": self.config.to_dict(), "data": self.data_summary,
            "model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
            "model_config": self.model.config.to_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": rng_state(), "metrics": json_safe(dict(self.metrics)),
            "best": {"value": self.best_value, "step": self.best_step},
            "history": self.history, "train_seconds": self.train_seconds,
        }
        with atomic_write(self.state_path) as tmp:
            torch.save(state, tmp)

    def _checkpoint(self, step: int) -> None:
        if self.dist.rank == 0:  # state first: a kill in between leaves a resumable folder
            self._save_state(step)
            self._save_model("last", step)
        barrier(self.dist)

    def _last_is_behind(self) -> bool:
        """``last.pt`` is missing or older than ``state.pt`` (a kill between the two)."""
        try:
            return self.last_path.stat().st_mtime_ns < self.state_path.stat().st_mtime_ns
        except FileNotFoundError:
            return True

    @contextlib.contextmanager
    def _own_folder(self):
        """Rank 0 holds the output folder's lock and clears its own stale temporaries."""
        if self.dist.rank != 0:
            yield
            return
        self.out.mkdir(parents=True, exist_ok=True)
        with FolderLock(self.out, ".sgpsam_train.lock", "training run"):
            remove_stale_temporaries([self.last_path, self.best_path, self.state_path,
                                      self.curve_path])
            yield

    # -- main -------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        config = self.config
        started = time.perf_counter()
        self.dist = init_distributed(config.device)
        try:
            with self._own_folder():
                return self._run(started)
        finally:
            if self.dist.owned:
                import torch.distributed as dist

                dist.destroy_process_group()

    def _on_sigterm(self, text: str) -> None:
        log.warning("SIGTERM: stopping at the next step boundary")

    def _run(self, started: float) -> TrainResult:
        """Set up (model, optimizer, schedule, state to resume, data), train, finish."""
        resume = self._start_or_resume()
        config = self.config
        autocast, amp_dtype = self._autocast_factory()
        model, params = self._model_and_optimizer(resume)
        dataset, probe, item_weights = self._schedule(model, amp_dtype)
        start_step = self._restore(resume)
        wrapped = self._interaction(model, autocast)
        loader = self._loader(dataset, start_step, item_weights)
        targets = validation_targets(self.val_cases, config.val_max_lesions, config.seed)
        self._emit_start(model, params, probe, start_step, targets, resume is not None)
        # SIGTERM stops at the next step boundary for library callers too (a second one
        # aborts), by the job protocol's rule; the CLI adds Ctrl-C and the stop file.
        with StopOnSignals(notify=self._on_sigterm, signals=(signal.SIGTERM,)) as sigterm:
            loop = self._loop(model, params, wrapped, loader, targets, autocast, start_step,
                              resume is not None, stop=lambda: sigterm.event.is_set()
                              or is_stopped(self.stop))
        return self._finish(loop, started)

    def _start_or_resume(self) -> dict | None:
        """The stored state to resume (its config, with what a resume may change, becomes the
        run's), the data and the device; None for a fresh run."""
        config = self.config
        if self.dist.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
        barrier(self.dist)
        resume = self._resume_state()
        if resume is not None:
            config = self.config = TrainConfig.from_dict(
                {**resume["config"], **{k: v for k, v in config.to_dict().items()
                                        if k in RESUME_OVERRIDABLE}})
        if config.threads:
            torch.set_num_threads(config.threads)
        self._load_data()
        self.device = self._device()
        return resume

    def _model_and_optimizer(self, resume: dict | None
                             ) -> tuple[SGPSAMModel, list[tuple[str, nn.Parameter]]]:
        """The model (resumed, or the initial one) on the device, what the mode trains, and
        AdamW over it (no weight decay on biases and norms)."""
        config = self.config
        if resume is not None:
            model_config = config_from_checkpoint(resume["model_config"], self.state_path)
            check_config_fits(model_config, resume["model"], self.state_path)
            model = SGPSAMModel(model_config)
            model.load_state_dict(resume["model"])
        else:
            model = build_initial_model(config)
        if config.mode == "sgp" and config.init is None and resume is None:
            log.warning("mode 'sgp' from a random init: the frozen backbone is untrained; "
                        "pass --init with a pretrained checkpoint (or use --mode finetune)")
        self.model = model.to(self.device)
        trainable = set(trainable_parameter_names(model, config.mode))
        params = []
        for name, param in model.named_parameters():
            param.requires_grad_(name in trainable)
            if name in trainable:
                params.append((name, param))
        decay = [p for n, p in params if p.ndim >= 2]
        no_decay = [p for n, p in params if p.ndim < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": config.weight_decay},
             {"params": no_decay, "weight_decay": 0.0}], lr=config.lr, betas=(0.9, 0.999))
        return model, params

    def _schedule(self, model: SGPSAMModel, amp_dtype: torch.dtype | None
                  ) -> tuple[CropDataset, SampleStream, Any]:
        """The crop dataset, the run's length, warm-up + cosine schedule, the validation and
        checkpoint cadence and the grad scaler -> (dataset, a probe stream, item weights)."""
        config = self.config
        self.click_iters = config.click_iters or (11 if self.device.type == "cuda" else 5)
        dataset = CropDataset(self.train_cases, size=model.config.image_size,
                              spacing_mm=model.config.crop_spacing_mm,
                              jitter_voxels=config.jitter_mm / model.config.crop_spacing_mm,
                              flip=config.flip, augment=config.intensity_aug,
                              interior_power=config.interior_power,
                              jitter_fraction=config.jitter_fraction,
                              close_fraction=config.close_fraction)
        self.per_step = config.batch_size * config.accum
        item_weights = self._item_weights(dataset)
        probe = SampleStream(len(dataset), config.seed, self.dist.world, self.dist.rank)
        if config.steps is not None:
            total = config.steps
        else:
            per_epoch = max(1, -(-probe.per_rank // self.per_step))
            total = max(1, int(round((config.epochs or 0) * per_epoch))) if config.epochs \
                else 1000
        self.total_steps = total
        warmup = config.warmup if config.warmup is not None else min(200, total // 20)
        self.val_every = config.val_every or max(1, total // 10)
        self.ckpt_every = config.checkpoint_every or self.val_every
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, warmup, total, config.min_lr_ratio))
        self.scaler = (torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None)
        return dataset, probe, item_weights

    def _restore(self, resume: dict | None) -> int:
        """Metrics, best checkpoint, optimizer, schedule, scaler and RNG state of the stored
        run (fresh values without one) -> the step to start at."""
        self.metrics: dict[str, Any] = {}
        self.best_value: float | None = None
        self.best_step: int | None = None
        self.train_seconds = 0.0
        if resume is None:
            return 0
        self.optimizer.load_state_dict(resume["optimizer"])
        self.scheduler.load_state_dict(resume["scheduler"])
        if self.scaler is not None and resume.get("scaler"):
            self.scaler.load_state_dict(resume["scaler"])
        set_rng_state(resume["rng"])
        self.metrics = dict(resume.get("metrics") or {})
        self.best_value = resume["best"]["value"]
        self.best_step = resume["best"]["step"]
        self.history = list(resume.get("history") or [])
        self.train_seconds = float(resume.get("train_seconds", 0.0))
        return int(resume["step"])

    def _interaction(self, model: SGPSAMModel, autocast) -> nn.Module:
        """The simulated-click loss of a batch (DistributedDataParallel-wrapped on several
        ranks)."""
        config = self.config
        interaction = InteractiveLoss(model, make_loss(config.loss_name), self.click_iters,
                                      config.random_insert, config.prompt_mode, autocast,
                                      rollout=config.rollout, click_mode=config.click_mode,
                                      coarse_weight=config.coarse_weight)
        if not self.dist.active:
            return interaction
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(
            interaction, device_ids=[self.device.index] if self.device.type == "cuda"
            else None, find_unused_parameters=True)

    def _loader(self, dataset: CropDataset, start_step: int, item_weights: Any
                ) -> torch.utils.data.DataLoader:
        """Batches of the position-seeded sample stream from ``start_step`` on."""
        config = self.config
        self.stream = SampleStream(len(dataset), config.seed, self.dist.world, self.dist.rank,
                                   start=start_step * self.per_step,
                                   count=max(0, self.total_steps - start_step) * self.per_step,
                                   weights=item_weights)
        workers = config.num_workers
        if workers is None:
            workers = min(4, max(1, (os.cpu_count() or 2) // 2)) if self.device.type == "cuda" \
                else 0
        return torch.utils.data.DataLoader(
            dataset, batch_size=config.batch_size, sampler=self.stream, num_workers=workers,
            pin_memory=self.device.type == "cuda", drop_last=False)

    def _emit_start(self, model: SGPSAMModel, params: list, probe: SampleStream,
                    start_step: int, targets: list, resumed: bool) -> None:
        config, total = self.config, self.total_steps
        self.emit({
            "event": "start", "total_steps": total, "start_step": start_step,
            "steps_per_epoch": round(probe.per_rank / self.per_step, 4),
            "mode": config.mode, "loss": config.loss_name, "preset": model.config.preset,
            "gate_mode": model.config.gate_mode, "init": config.init,
            "device": str(self.device), "world_size": self.dist.world,
            "batch_size": config.batch_size, "accum": config.accum,
            "click_iters": self.click_iters,
            "train_cases": len(self.train_cases), "val_cases": len(self.data_summary["val_cases"]),
            "train_lesions": self.data_summary["train_lesions"],
            "val_lesions": len(targets), "trainable_parameters": int(
                sum(p.numel() for _, p in params)),
            "parameters": int(sum(p.numel() for p in model.parameters())),
            "out": str(self.out), "resumed": resumed,
        })
        log.info("training %s/%s: %d steps from %d, %d train lesions, device %s", config.mode,
                 config.loss_name, total, start_step, self.data_summary["train_lesions"],
                 self.device)

    def _loop(self, model: SGPSAMModel, params: list, wrapped: nn.Module, loader, targets: list,
              autocast, start_step: int, resumed: bool, stop: Callable[[], bool]) -> _Loop:
        """Optimizer steps until the end or a stop: validation, progress records and periodic
        checkpoints on their cadence."""
        model.train()
        model.reset_gate_statistics()
        loop = _Loop(step=start_step, saved_at=start_step if resumed else -1)
        if resumed and self.dist.rank == 0 and self._last_is_behind():
            self._save_model("last", start_step)  # killed between state.pt and last.pt
        batches = iter(loader)
        while loop.step < self.total_steps:
            if any_rank(stop(), self.dist, self.device):
                loop.stopped = True
                break
            tick = time.perf_counter()
            lr, step_loss = self._step(wrapped, params, batches, loop.step)
            loop.step += 1
            step = loop.step
            elapsed = time.perf_counter() - tick
            self.train_seconds += elapsed
            loop.seconds += elapsed
            loop.steps += 1
            loop.step_times.append(elapsed)
            loop.recent_loss.append(step_loss)
            self.metrics["loss"] = step_loss
            validated = False
            if targets and (step % self.val_every == 0 or step == self.total_steps):
                self._validate(targets, autocast, step)
                validated = True
            if step % self.config.log_every == 0 or step == self.total_steps or validated:
                self._emit_progress(model, loop, lr, elapsed)
            if step % self.ckpt_every == 0 and step < self.total_steps:
                self._checkpoint(step)
                loop.saved_at = step
            if validated:  # after the checkpoint files: a kill while drawing costs nothing
                self._plot()
        return loop

    def _step(self, wrapped: nn.Module, params: list, batches, step: int) -> tuple[float, float]:
        """One optimizer step over ``accum`` micro-batches -> (its learning rate, mean loss)."""
        config, dist_info = self.config, self.dist
        self.optimizer.zero_grad(set_to_none=True)
        micro_losses = []
        for micro in range(config.accum):
            batch = next(batches)
            micro_index = step * config.accum + micro
            seed = sample_seed(config.seed, 4, dist_info.rank, micro_index)
            torch.manual_seed(seed)
            image = batch["image"].to(self.device, non_blocking=True)
            label = batch["label"].to(self.device, non_blocking=True)
            point = batch["point"].to(self.device, non_blocking=True)
            sync = (contextlib.nullcontext() if not dist_info.active
                    or micro == config.accum - 1 else wrapped.no_sync())
            with sync:
                total_loss, parts = wrapped(image, label, point, seed)
                scaled = total_loss / config.accum
                if self.scaler is not None:
                    self.scaler.scale(scaled).backward()
                else:
                    scaled.backward()
            micro_losses.append(float(parts.mean()))
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        # The norm before clipping is kept for the progress record: a run clipped at every
        # step learns at a fraction of its nominal learning rate.
        self.metrics["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(
            [p for _, p in params], config.grad_clip if config.grad_clip > 0 else float("inf")))
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return lr, float(np.mean(micro_losses))

    def _emit_progress(self, model: SGPSAMModel, loop: _Loop, lr: float, elapsed: float) -> None:
        step, total = loop.step, self.total_steps
        mean_time = float(np.mean(loop.step_times[-20:]))
        gates = model.gate_statistics()
        model.reset_gate_statistics()
        self.emit({
            "event": "progress", "step": step, "total_steps": total,
            "epoch": round(self.stream.epoch_of(step * self.per_step), 4),
            "loss": float(np.mean(loop.recent_loss)), "lr": lr,
            "val_dice": self.metrics.get("val_dice"),
            "val_dice_clicks": self.metrics.get("val_dice_clicks"),
            "val_dice_small": self.metrics.get("val_dice_small"),
            "val_dice_large": self.metrics.get("val_dice_large"),
            "val_step": self.metrics.get("val_step"),
            "gate_rates": gates, "eta_s": round(mean_time * (total - step), 1),
            "step_s": round(elapsed, 4), "grad_norm": round(self.metrics["grad_norm"], 4),
        })
        loop.recent_loss = []

    def _finish(self, loop: _Loop, started: float) -> TrainResult:
        """The last checkpoint (unless just written), the ``done`` record and the result."""
        step, total = loop.step, self.total_steps
        if loop.saved_at != step or step == total:
            self._checkpoint(step)
        steps_per_s = loop.steps / loop.seconds if loop.seconds > 0 else float("nan")
        self.metrics.update({"best_val_dice": self.best_value, "best_step": self.best_step})
        seconds = time.perf_counter() - started
        best = self.best_path if self.best_path.exists() else None
        self.emit({
            "event": "done", "stopped": loop.stopped, "step": step, "total_steps": total,
            "last": str(self.last_path), "best": None if best is None else str(best),
            "state": str(self.state_path), "metrics": dict(self.metrics),
            "steps_per_s": steps_per_s, "samples_per_s": steps_per_s * self.per_step
            * self.dist.world, "seconds": round(seconds, 3),
        })
        return TrainResult(self.last_path, best, self.state_path, list(self.history),
                           json_safe(dict(self.metrics)), step, loop.stopped, steps_per_s,
                           seconds)

    def _plot(self) -> None:
        """Rewrite ``training_curve.png`` (loss and validation Dice per step) in ``out``.

        Optional: without matplotlib the run goes on and says once how to get the picture.
        """
        if self.dist.rank != 0 or getattr(self, "_plot_unavailable", False):
            return
        from ..plots import PlotUnavailable, write_training_curve

        try:
            write_training_curve(self.history, self.curve_path,
                                 val_clicks=self.config.val_clicks)
        except PlotUnavailable as exc:
            self._plot_unavailable = True
            log.warning("no training_curve.png: %s", exc)
        except OSError as exc:
            log.warning("could not write training_curve.png: %s", exc)

    def _validate(self, targets, autocast, step: int) -> None:
        if self.dist.rank == 0:
            tick = time.perf_counter()
            # Validation must not count in the training gate rates: keep and restore them.
            counters = [(m.samples_seen.clone(), m.samples_on.clone())
                        for m in self.model.image_encoder.sgpm.values()]
            result = validate(self.model, self.val_cases, targets, self.config.val_clicks,
                              self.config.prompt_mode, self.config.seed, autocast())
            for module, (seen, on) in zip(self.model.image_encoder.sgpm.values(), counters):
                module.samples_seen.copy_(seen)
                module.samples_on.copy_(on)
            self.metrics.update({k: result[k] for k in (
                "val_dice", "val_dice_clicks", "val_dice_per_click", "val_dice_small",
                "val_dice_large")})
            self.metrics["val_step"] = step
            value = result["val_dice"]
            log.info("step %d: val Dice %.4f (1 click), %.4f (%d clicks) in %.1f s", step, value,
                     result["val_dice_clicks"], self.config.val_clicks,
                     time.perf_counter() - tick)
            if value is not None and (self.best_value is None or value > self.best_value):
                self.best_value, self.best_step = value, step
                self.metrics.update({"best_val_dice": value, "best_step": step})
                self._save_model("best", step)
        barrier(self.dist)


def train(config: TrainConfig, progress: ProgressFn | None = None, stop: StopFlag = None
          ) -> TrainResult:
    """Run (or resume) a training run described by ``config``.

    Args:
        config: the options (:class:`TrainConfig`).
        progress: called on rank 0 with every record (dicts with an ``"event"`` key:
            start, progress, checkpoint, done), e.g. to print JSON lines.
        stop: a ``threading.Event`` or a callable returning True to stop; SIGTERM does the
            same. The run stops at the next step boundary after writing ``last.pt`` and
            ``state.pt``; the result has ``stopped=True``.

    Raises:
        SGPSAMError (and subclasses): bad options, data or checkpoints.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    if not config.data_folders or not config.out:
        raise SGPSAMError("--data and --out are required")
    if not config.command:
        config = config.replace(command=" ".join([Path(sys.argv[0]).name, *sys.argv[1:]]))
    return _Run(config, progress, stop).run()
