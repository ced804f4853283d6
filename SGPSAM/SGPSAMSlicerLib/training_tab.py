"""Logic of the Training tab: validate the form, export scene cases, run ``sgpsam train`` as a
child process and keep what the tab shows (progress, loss / validation Dice series, gate
activation rates, checkpoints, the resulting model).

The child is ``python -m SGPSAMLib train --data DIR --out DIR --mode sgp|finetune
[--init CKPT] [--preset P] --epochs N|--steps N --lr X --device D --json-progress``
(``SGPSAMLib/cli/train.py``). Training runs out of process so that a crash or an out-of-memory
kill cannot take Slicer down; Stop creates the job's stop file (``--stop-file``) and the child
saves ``last.pt`` and ``state.pt`` before it exits (``resume=True`` continues such a run).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from SGPSAMLib import presets
from SGPSAMLib.errors import SGPSAMError
from SGPSAMLib.options import IMAGE_MODALITIES, MODALITIES, look_up_option
from SGPSAMLib.options import TRAIN_MODES as MODES

from .batch_tab import _writable_folder, resolve_model_field
from .child_job import STOP_FILE_OPTION, ChildJob, JobState, JobTab, finite_number
from .interpreter import child_environment, python_executable
from .processes import ProcessRunner, SubprocessRunner

__all__ = [
    "TrainingParams",
    "TrainingTabLogic",
    "MODES",
    "PRESETS",
    "SCENE_DATA_FOLDER",
    "TRAIN_GRACE_S",
]

logger = logging.getLogger(__name__)

# After Stop, how long the child may take to finish its step (and a validation pass) and
# save last.pt / state.pt before it is killed; a CPU step can take minutes.
TRAIN_GRACE_S = 900.0

# Architectures for a random init (SGPSAMLib.presets, torch-free), the SGP-SAM one first.
PRESETS = ("sgp_sam", *(name for name in presets.PRESETS if name != "sgp_sam"))
# Sub-folder of the output folder that receives cases exported from the scene.
SCENE_DATA_FOLDER = "training_data"
RUN_FILES = ("last.pt", "state.pt")


@dataclass
class TrainingParams:
    """The Training tab's form.

    Data: ``data_folder`` (a folder of image/label pairs), or cases from the scene given to
    ``start(params, scene_pairs=...)``, which exports them to ``<output>/training_data``.
    Model: ``base_model`` (a model name such as "sam_med3d_turbo" or a checkpoint file) or ""
    for a random init of ``preset`` (mode "finetune" only). Length: ``epochs`` or ``steps``.
    """

    output_folder: str
    data_folder: str = ""
    base_model: str = ""
    preset: str = ""
    mode: str = "sgp"
    epochs: float | None = 10.0
    steps: int | None = None
    lr: float = 1e-4
    device: str = "auto"
    batch_size: int | None = None
    val_fraction: float | None = None
    modality: str = "auto"
    resume: bool = False


def _field_error(field_name: str, message: str) -> SGPSAMError:
    return SGPSAMError(f"{field_name}: {message}")


def _number(value: Any, field_name: str, kind: type, minimum: float, inclusive: bool) -> Any:
    """``value`` as ``kind`` within the range, else an error naming the field."""
    try:
        if isinstance(value, bool):
            raise ValueError
        number = kind(value)
    except (TypeError, ValueError):
        raise _field_error(field_name, f"{value!r} is not a number") from None
    if kind is float and not math.isfinite(number):
        raise _field_error(field_name, f"{value!r} is not a finite number")
    if number < minimum or (not inclusive and number == minimum):
        relation = ">=" if inclusive else ">"
        raise _field_error(field_name, f"{value!r}; expected a number {relation} {minimum:g}")
    return number


class TrainingTabLogic(JobTab):
    """Runs one training job at a time and keeps what the tab shows.

    Series for the live plot: ``loss_series`` [(step, loss)], ``val_series``
    [(step, val Dice)]; ``gate_rates`` {block: activation rate} of the latest record;
    ``best_model_path`` / ``last_model_path`` from checkpoint records and, once the run ended
    with a model, ``result_model_path`` (offer it to the Segment tab).

    Callbacks (optional, called from ``poll()``): ``on_progress(record)`` for every progress
    record, ``on_checkpoint(kind, path)``, ``on_state(state)``, ``on_log(line)``.
    """

    def __init__(
        self,
        runner: ProcessRunner | None = None,
        python: str | None = None,
        env: Mapping[str, str] | None = None,
        grace_s: float = TRAIN_GRACE_S,
    ) -> None:
        self.runner = runner if runner is not None else SubprocessRunner(grace_s=grace_s)
        self.python = python
        self.env = env
        self.params: TrainingParams | None = None
        self.job: ChildJob | None = None
        self.data_folder: Path | None = None
        self.exported_cases: list[Any] = []
        self.on_progress: Callable[[dict], None] | None = None
        self.on_checkpoint: Callable[[str, str], None] | None = None
        self.on_state: Callable[[JobState], None] | None = None
        self.on_log: Callable[[str], None] | None = None
        self._reset_run()

    def _reset_run(self) -> None:
        self.loss_series: list[tuple[int, float]] = []
        self.val_series: list[tuple[int, float]] = []
        self.lr_series: list[tuple[int, float]] = []
        self.gate_rates: dict[str, float] = {}
        self.start_info: dict = {}
        self.step = 0
        self.total_steps = 0
        self.epoch: float | None = None
        self.best_model_path: str | None = None
        self.best_val_dice: float | None = None
        self.last_model_path: str | None = None
        self.result_model_path: str | None = None
        self._last_val_step: int | None = None

    # -- form ------------------------------------------------------------------------------
    def validate(self, params: TrainingParams, scene_data: bool = False) -> TrainingParams:
        """Check the form; returns a copy with resolved paths and numbers.

        ``scene_data``: the cases come from the scene (no data folder needed). Raises
        SGPSAMError whose message starts with the field's name.
        """
        text = (params.output_folder or "").strip()
        if not text:
            raise _field_error("Output folder", "not chosen")
        output = Path(text).expanduser()
        _writable_folder(output, "Output folder")
        has_run = any((output / name).exists() for name in RUN_FILES)
        if params.resume and not (output / "state.pt").is_file():
            raise _field_error("Output folder", f"{output} holds no stopped run to resume "
                                                "(no state.pt); untick Resume or choose the "
                                                "folder of the run")
        if has_run and not params.resume:
            raise _field_error("Output folder", f"{output} already holds a training run "
                                                "(last.pt / state.pt); tick Resume to continue "
                                                "it or choose another folder")
        data = ""
        if not scene_data:
            text = (params.data_folder or "").strip()
            if not text:
                raise _field_error("Training data", "no folder chosen and no cases from the "
                                                    "scene")
            folder = Path(text).expanduser()
            if not folder.is_dir():
                raise _field_error("Training data", f"{folder} is not an existing folder")
            data = str(folder.resolve())
        look_up_option(params.mode, MODES, "Mode")
        base = ""
        if (params.base_model or "").strip():
            base = str(resolve_model_field(params.base_model, "Base model"))
        elif params.mode == "sgp" and not params.resume:
            raise _field_error("Base model", "mode 'sgp' trains the added modules on a frozen, "
                                             "pretrained backbone; choose a pretrained base "
                                             "model (e.g. sam_med3d_turbo) or mode 'finetune'")
        preset = (params.preset or "").strip()
        if preset:
            look_up_option(preset, PRESETS, "Preset")
        epochs = steps = None
        if params.steps is not None:
            steps = _number(params.steps, "Steps", int, 1, True)
            if params.epochs is not None:
                raise _field_error("Epochs", "give epochs or steps, not both")
        elif params.epochs is not None:
            epochs = _number(params.epochs, "Epochs", float, 0.0, False)
        else:
            raise _field_error("Epochs", "not set; give the number of epochs (or steps)")
        lr = _number(params.lr, "Learning rate", float, 0.0, False)
        batch = None if params.batch_size is None else _number(
            params.batch_size, "Batch size", int, 1, True)
        val = None
        if params.val_fraction is not None:
            val = _number(params.val_fraction, "Validation fraction", float, 0.0, True)
            if val >= 1.0:
                raise _field_error("Validation fraction", f"{params.val_fraction!r}; expected "
                                                          "a number in [0, 1)")
        look_up_option(params.modality, MODALITIES, "Modality")
        return replace(params, output_folder=str(output.resolve()), data_folder=data,
                       base_model=base, preset=preset, epochs=epochs, steps=steps, lr=lr,
                       batch_size=batch, val_fraction=val,
                       device=(params.device or "auto").strip())

    def build_argv(self, params: TrainingParams) -> list[str]:
        """The child's command line for (validated) ``params`` with a data folder set."""
        argv = [self.python or python_executable(), "-m", "SGPSAMLib", "train",
                "--data", params.data_folder, "--out", params.output_folder,
                "--mode", params.mode]
        if params.base_model:
            argv += ["--init", params.base_model]
        if params.preset:
            argv += ["--preset", params.preset]
        if params.steps is not None:
            argv += ["--steps", str(int(params.steps))]
        else:
            argv += ["--epochs", repr(float(params.epochs))]
        argv += ["--lr", repr(float(params.lr)), "--device", params.device]
        if params.batch_size is not None:
            argv += ["--batch-size", str(int(params.batch_size))]
        if params.val_fraction is not None:
            argv += ["--val-fraction", repr(float(params.val_fraction))]
        if params.modality != "auto":
            argv += ["--modality", params.modality]
        if params.resume:
            argv.append("--resume")
        argv.append("--json-progress")
        return argv

    # -- scene cases -----------------------------------------------------------------------
    def export_scene_cases(self, pairs: Sequence[Sequence[Any]], output_folder: str | Path,
                           modality: str | None = None) -> Path:
        """Export (volume, segmentation[, segment IDs]) pairs to a new sub-folder of the
        output folder (``training_data``, ``training_data_2``, ...); returns that folder."""
        from .training_cases import export_training_cases  # noqa: PLC0415 - needs slicer

        output = Path(output_folder)
        folder = output / SCENE_DATA_FOLDER
        suffix = 2
        while folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
            folder = output / f"{SCENE_DATA_FOLDER}_{suffix}"
            suffix += 1
        self.exported_cases = export_training_cases(pairs, folder, modality=modality)
        return folder

    # -- running ---------------------------------------------------------------------------
    def start(self, params: TrainingParams,
              scene_pairs: Sequence[Sequence[Any]] | None = None) -> ChildJob:
        """Validate, export the scene cases if given, and start the child.

        Raises SGPSAMError on a bad form, a failed export or while a job is running.
        """
        if self.is_running:
            raise SGPSAMError("a training run is already in progress; stop it first")
        scene_data = scene_pairs is not None
        valid = self.validate(params, scene_data=scene_data)
        if scene_data:
            modality = valid.modality if valid.modality in IMAGE_MODALITIES else None
            data = self.export_scene_cases(scene_pairs, valid.output_folder, modality)
            valid = replace(valid, data_folder=str(data))
        self.params = valid
        self.data_folder = Path(valid.data_folder)
        self._reset_run()
        self.job = ChildJob(self.build_argv(valid), runner=self.runner,
                            env=self.env if self.env is not None else child_environment(),
                            title="Training", on_event=self._on_event, on_log=self.on_log,
                            on_state=self._on_state, stop_file_option=STOP_FILE_OPTION)
        self.job.start()
        return self.job

    def start_from_form(self, form: Mapping[str, Any], scene: Any = None) -> ChildJob:
        """``start`` from the Widget's form values (a dict).

        Keys: output_folder, data_folder, use_scene (train on every annotated pair that
        ``find_annotated_pairs(scene)`` proposes), init_model (or base_model), preset, mode,
        epochs, steps, learning_rate (or lr), validation_fraction, batch_size, modality,
        device, resume. Missing keys keep the ``TrainingParams`` defaults.
        """
        def get(*keys: str, default: Any = None) -> Any:
            for key in keys:
                if key in form and form[key] is not None:
                    return form[key]
            return default

        defaults = TrainingParams(output_folder="")
        params = TrainingParams(
            output_folder=str(get("output_folder", default="")),
            data_folder=str(get("data_folder", default="")),
            base_model=str(get("init_model", "base_model", default="")),
            preset=str(get("preset", default="")),
            mode=str(get("mode", default=defaults.mode)),
            epochs=get("epochs", default=None if "steps" in form else defaults.epochs),
            steps=get("steps"),
            lr=get("learning_rate", "lr", default=defaults.lr),
            device=str(get("device", default="auto")),
            batch_size=get("batch_size"),
            val_fraction=get("validation_fraction", "val_fraction"),
            modality=str(get("modality", default="auto")),
            resume=bool(get("resume", default=False)),
        )
        pairs = None
        if get("use_scene", default=False):
            if scene is None:
                raise SGPSAMError("Training data: no scene to take the cases from")
            from .training_cases import find_annotated_pairs  # noqa: PLC0415 - needs slicer

            self.validate(params, scene_data=True)  # report form errors before scanning
            pairs = find_annotated_pairs(scene)
            if not pairs:
                raise SGPSAMError(
                    "Training data: the scene has no segmentation with painted segments on a "
                    "volume (the volume it was drawn on must still be loaded); segment some "
                    "lesions first or choose a folder of image/label pairs")
        return self.start(params, scene_pairs=pairs)

    def best_checkpoint(self) -> str | None:
        """The model to offer to the Segment tab: the result of the ended run, else the best
        (or last) checkpoint written so far; None when there is none on disk."""
        for candidate in (self.result_model_path, self.best_model_path, self.last_model_path):
            if candidate and Path(candidate).is_file():
                return candidate
        return None

    # -- what the tab shows ----------------------------------------------------------------
    @property
    def status_text(self) -> str:
        """One line under the progress bar: step, epoch, loss, validation Dice, ETA."""
        if self.job is None:
            return ""
        if self.job.state == JobState.RUNNING and self.total_steps:
            parts = [f"step {self.step}/{self.total_steps}"]
            if self.epoch is not None:
                parts.append(f"epoch {self.epoch:.2f}")
            if self.loss_series:
                parts.append(f"loss {self.loss_series[-1][1]:.4f}")
            if self.val_series:
                parts.append(f"val Dice {self.val_series[-1][1]:.3f}")
            if self.job.eta_text:
                parts.append(self.job.eta_text)
            return ", ".join(parts)
        if self.job.state.ended and self.result_model_path:
            best = (f" (best val Dice {self.best_val_dice:.3f})"
                    if self.best_val_dice is not None else "")
            return f"{self.job.status_text}; model: {self.result_model_path}{best}"
        return self.job.status_text

    def gate_rates_text(self) -> str:
        """'block 2: 0.75, block 5: 0.10' (sorted by block), or ''."""
        def key(item: tuple[str, float]) -> tuple[int, str]:
            digits = "".join(ch for ch in item[0] if ch.isdigit())
            return (int(digits) if digits else 0, item[0])

        return ", ".join(f"{name if not name.isdigit() else 'block ' + name}: {rate:.2f}"
                         for name, rate in sorted(self.gate_rates.items(), key=key))

    # -- events ----------------------------------------------------------------------------
    def _on_state(self, state: JobState) -> None:
        if state.ended:
            self._set_result()
        if self.on_state is not None:
            self.on_state(state)

    def _on_event(self, record: dict) -> None:
        event = record["event"]
        if event == "start":
            self.start_info = dict(record)
            self.total_steps = int(record.get("total_steps") or 0)
            self.step = int(record.get("start_step") or 0)
        elif event == "progress":
            self._apply_progress(record)
            if self.on_progress is not None:
                self.on_progress(record)
        elif event == "checkpoint":
            kind = str(record.get("kind") or "")
            path = str(record.get("path") or "")
            if kind == "best":
                self.best_model_path = path
                dice = finite_number(record.get("val_dice"))
                if dice is not None:
                    self.best_val_dice = dice
            elif kind == "last":
                self.last_model_path = path
            if self.on_checkpoint is not None:
                self.on_checkpoint(kind, path)
        elif event == "done":
            if record.get("best"):
                self.best_model_path = str(record["best"])
            if record.get("last"):
                self.last_model_path = str(record["last"])
            metrics = record.get("metrics") or {}
            best = finite_number(metrics.get("best_val_dice"))
            if best is not None:
                self.best_val_dice = best

    def _apply_progress(self, record: Mapping[str, Any]) -> None:
        step = record.get("step")
        if isinstance(step, int) and not isinstance(step, bool):
            self.step = step
        total = record.get("total_steps")
        if isinstance(total, int) and not isinstance(total, bool) and total > 0:
            self.total_steps = total
        epoch = finite_number(record.get("epoch"))
        if epoch is not None:
            self.epoch = epoch
        loss = finite_number(record.get("loss"))
        if loss is not None:
            self.loss_series.append((self.step, loss))
        lr = finite_number(record.get("lr"))
        if lr is not None:
            self.lr_series.append((self.step, lr))
        dice = finite_number(record.get("val_dice"))
        if dice is not None:
            # val_dice repeats the latest validation until the next one: add a point when a
            # new validation happened (val_step if the child reports it, else a new value).
            val_step = record.get("val_step")
            if isinstance(val_step, int) and not isinstance(val_step, bool):
                if val_step != self._last_val_step:
                    self._last_val_step = val_step
                    self.val_series.append((val_step, dice))
            elif not self.val_series or self.val_series[-1][1] != dice:
                self.val_series.append((self.step, dice))
        gates = record.get("gate_rates")
        if isinstance(gates, Mapping):
            self.gate_rates = {str(k): float(v) for k, v in gates.items()
                               if finite_number(v) is not None}

    def _set_result(self) -> None:
        """The model to offer: the best checkpoint, else the last one, if the file exists."""
        for candidate in (self.best_model_path, self.last_model_path):
            if candidate and Path(candidate).is_file():
                self.result_model_path = candidate
                return
        self.result_model_path = None

