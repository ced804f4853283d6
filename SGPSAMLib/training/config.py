"""Every option of a training run in one validated, JSON-able dataclass."""
from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from ..errors import SGPSAMError
from ..options import (
    AMP_MODES,
    CLICK_MODES,
    GATE_MODES,
    LESION_UNITS,
    LOSSES,
    MODALITIES,
    PROMPT_MODES,
    look_up_option,
)
from ..options import TRAIN_MODES as MODES

__all__ = ["TrainConfig", "MODES", "GATE_MODES", "AMP_MODES", "PROMPT_MODES", "CLICK_MODES",
           "RESUME_OVERRIDABLE"]
#: Options a resumed run may change; any other difference from the stored run is an error.
RESUME_OVERRIDABLE = ("steps", "epochs", "device", "num_workers", "threads", "val_every",
                      "checkpoint_every", "log_every", "resume", "command", "out", "data",
                      "val_data")

_DEFAULT_MODE_LOSS = {"sgp": "zoom", "finetune": "dicece"}


@dataclass
class TrainConfig:
    """Options of :func:`SGPSAMLib.training.train` (the ``sgpsam train`` flags, same names).

    Recipe:
        mode: "sgp" (backbone frozen; SGPM + prompt encoder + mask decoder trained; Zoom Loss)
            or "finetune" (every parameter; DiceCE).
        loss: "zoom" or "dicece"; None = the mode's default (ablations: FT + Zoom, SGPM + DiceCE).
        gate_mode: override the SGPM gate ("learned", "always_on", "always_off"); None = keep.
        init: checkpoint to start from (official SAM-Med3D or ours); None = random init.
        preset: architecture for random init (default "sgp_sam"), or for an init checkpoint
            without a stored config.
    Schedule:
        steps / epochs: run length in optimizer steps, or in passes over the training lesions
            (default 1000 steps). batch_size x accum samples per step and rank.
        lr, weight_decay, warmup (steps; None = 5 % of the run, at most 200), min_lr_ratio
            (cosine floor), grad_clip (max gradient norm, 0 = off), amp ("auto": bf16 or fp16
            autocast on CUDA, off on CPU), seed.
    Interaction:
        click_iters: decoder iterations per batch (None: 11 on CUDA as SAM-Med3D, 5 on CPU).
        random_insert: SAM-Med3D's point-free iterations (one random middle iteration and the
            last one get only the previous mask).
        prompt_mode: "latest" (newest click + previous logits, as the session) or "cumulative".
        rollout: RITM's schedule instead of SAM-Med3D's: the first and the last round are
            trained, a random number of rounds between is played without gradient (see
            ``InteractiveLoss``); random_insert is then off.
        click_mode: corrective clicks: "uniform" (a random error voxel, SAM-Med3D), "center"
            (the interior of the largest error region: the evaluation's robot) or "mixed".
        coarse_weight: weight of the decoder's own (low-res) loss for a model with a
            refinement head (deep supervision).
        interior_power: first clicks drawn with probability depth ** power over the lesion's
            voxels (0 = uniform; the evaluation clicks the deepest voxel).
        jitter_fraction: share of crops shifted by jitter_mm; the rest are centred on the first
            click exactly, as the session centres a new region.
        close_fraction: share of crops sampled at half the model's crop spacing (the demo
            model's zoom looks at a new lesion through such a crop first, SGPSAMLib.zoom), the
            rest at the crop spacing; 0 (default) trains at one spacing only.
    Data:
        data: one folder of image/label pairs, or several (their cases are pooled; case ids
            get the folder's name as a prefix); data_weights: the share of samples drawn from
            each folder (default: every lesion equally often); val_data: a separate validation
            folder (then every --data case trains and val_fraction / val_cases are ignored).
    Sampling:
        labels: label values that are targets (None: all non-zero); lesion_unit "component" or
        "label"; min_lesion_voxels; jitter_mm (crop centre shift, uniform per axis); flip;
        intensity_aug; modality ("auto", "CT", "MR").
    Provenance:
        recipe: the named recipe (``training/recipes.py``) the options started from, if any;
            explicit options override it.
    Model:
        model_overrides: ModelConfig fields changed on the initial architecture (tests use a
            64^3 crop); stored in the checkpoints' config.
    Machine:
        device, num_workers, threads (torch intra-op threads; None = torch's default. On a CPU
            shared with other busy processes 1 thread is often much faster).
    Validation:
        val_fraction / val_cases (case-level split), val_every (steps; None = 10 times per run),
        val_clicks, val_max_lesions.
    """

    data: str | tuple[str, ...] = ""
    out: str = ""
    data_weights: tuple[float, ...] | None = None
    val_data: str | None = None
    mode: str = "sgp"
    init: str | None = None
    preset: str | None = None
    loss: str | None = None
    gate_mode: str | None = None
    steps: int | None = None
    epochs: float | None = None
    batch_size: int = 2
    accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.1
    warmup: int | None = None
    min_lr_ratio: float = 0.01
    grad_clip: float = 1.0
    amp: str = "auto"
    seed: int = 0
    click_iters: int | None = None
    random_insert: bool = True
    prompt_mode: str = "latest"
    rollout: bool = False
    click_mode: str = "uniform"
    coarse_weight: float = 0.5
    interior_power: float = 0.0
    jitter_fraction: float = 1.0
    close_fraction: float = 0.0
    labels: tuple[int, ...] | None = None
    lesion_unit: str = "component"
    min_lesion_voxels: int = 8
    jitter_mm: float = 12.0
    flip: bool = True
    intensity_aug: bool = True
    modality: str = "auto"
    val_fraction: float = 0.2
    val_cases: tuple[str, ...] | None = None
    val_every: int | None = None
    val_clicks: int = 5
    val_max_lesions: int = 32
    checkpoint_every: int | None = None
    log_every: int = 1
    device: str = "auto"
    num_workers: int | None = None
    threads: int | None = None
    resume: bool = False
    command: str = ""
    recipe: str | None = None
    model_overrides: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.data, (list, tuple)):
            self.data = tuple(str(v) for v in self.data)
            if len(self.data) == 1:
                self.data = self.data[0]
        if self.data_weights is not None:
            self.data_weights = tuple(float(v) for v in self.data_weights)
        if self.labels is not None:
            self.labels = tuple(int(v) for v in self.labels)
        if self.val_cases is not None:
            self.val_cases = tuple(str(v) for v in self.val_cases)
        self.validate()

    # ------------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise SGPSAMError naming the first bad option (the CLI flag spelling)."""
        def bad(flag: str, expected: str, value: Any) -> SGPSAMError:
            return SGPSAMError(f"--{flag}: expected {expected}, got {value!r}")

        choices = (("mode", MODES), ("loss", LOSSES), ("click-mode", CLICK_MODES),
                   ("gate-mode", GATE_MODES), ("amp", AMP_MODES), ("prompt-mode", PROMPT_MODES),
                   ("lesion-unit", LESION_UNITS), ("modality", MODALITIES))
        for flag, allowed in choices:
            value = getattr(self, flag.replace("-", "_"))
            if value is not None or flag not in ("loss", "gate-mode"):  # those two: None = keep
                look_up_option(value, allowed, f"--{flag}")
        positive_ints = ("batch_size", "accum", "val_clicks", "val_max_lesions", "log_every")
        for name in positive_ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise bad(name.replace("_", "-"), "an integer >= 1", value)
        optional_ints = ("steps", "click_iters", "val_every", "checkpoint_every")
        for name in optional_ints:
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 1):
                raise bad(name.replace("_", "-"), "an integer >= 1", value)
        for name in ("warmup", "num_workers", "min_lesion_voxels", "threads"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 0):
                raise bad(name.replace("_", "-"), "an integer >= 0", value)
        if self.steps is not None and self.epochs is not None:
            raise SGPSAMError("--steps and --epochs: give one of them, not both")
        if self.epochs is not None and not self.epochs > 0:
            raise bad("epochs", "a number > 0", self.epochs)
        for name in ("lr", "jitter_mm", "weight_decay", "grad_clip", "min_lr_ratio"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise bad(name.replace("_", "-"), "a number >= 0", value)
        if not self.lr > 0:
            raise bad("lr", "a number > 0", self.lr)
        if not 0.0 <= self.val_fraction < 1.0:
            raise bad("val-fraction", "a number in [0, 1)", self.val_fraction)
        folders = self.data_folders
        if self.data_weights is not None:
            if len(self.data_weights) != len(folders) or not all(
                    math.isfinite(w) and w > 0 for w in self.data_weights):
                raise bad("data-weights", f"{len(folders)} positive numbers (one per --data "
                          "folder)", self.data_weights)
        if not 0.0 <= self.jitter_fraction <= 1.0:
            raise bad("jitter-fraction", "a number in [0, 1]", self.jitter_fraction)
        if isinstance(self.close_fraction, bool) or not isinstance(
                self.close_fraction, (int, float)) or not 0.0 <= self.close_fraction <= 1.0:
            raise bad("close-fraction", "a number in [0, 1]", self.close_fraction)
        for flag in ("coarse_weight", "interior_power"):
            value = getattr(self, flag)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise bad(flag.replace("_", "-"), "a number >= 0", value)

    @property
    def data_folders(self) -> tuple[str, ...]:
        """The training folders (``data`` is one folder or several)."""
        if isinstance(self.data, tuple):
            return self.data
        return (self.data,) if self.data else ()

    @property
    def loss_name(self) -> str:
        """The loss actually used: the explicit ``loss`` or the mode's default."""
        return self.loss or _DEFAULT_MODE_LOSS[self.mode]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (and ``torch.load(weights_only=True)``-able) plain builtins."""
        out = dataclasses.asdict(self)
        for key in ("labels", "val_cases", "data_weights"):
            if out[key] is not None:
                out[key] = list(out[key])
        if isinstance(out["data"], tuple):
            out["data"] = list(out["data"])
        if out["model_overrides"] is not None:
            out["model_overrides"] = {k: list(v) if isinstance(v, tuple) else v
                                      for k, v in out["model_overrides"].items()}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TrainConfig:
        """Build from ``sgpsam train``'s parsed arguments (attributes absent keep defaults)."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in vars(args).items() if k in known and v is not None}
        if values.get("recipe"):
            from .recipes import RECIPES

            if values["recipe"] not in RECIPES:
                raise SGPSAMError(f"--recipe: expected one of {sorted(RECIPES)}, got "
                                  f"{values['recipe']!r}")
            values = {**RECIPES[values["recipe"]], **values}
        for key in ("labels", "val_cases"):
            if isinstance(values.get(key), str):
                values[key] = _split_list(values[key], key, int if key == "labels" else str)
        return cls(**values)


def _split_list(text: str, name: str, kind: type) -> tuple:
    items = [t.strip() for t in text.split(",") if t.strip()]
    try:
        return tuple(kind(t) for t in items)
    except ValueError:
        raise SGPSAMError(f"--{name.replace('_', '-')}: expected a comma-separated list of "
                          f"{'integers' if kind is int else 'names'}, got {text!r}") from None
