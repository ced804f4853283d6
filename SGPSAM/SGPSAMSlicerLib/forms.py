"""The Batch and Training forms as data: one definition for the parameter node, the .ui and the
tab logics.

Why: the forms are saved with the scene (Slicer's parameter node), so a saved scene reopens
with the same folders and options. ``SGPSAM.py`` turns each field list into a Slicer
``parameterPack`` (types, ``Choice``, ``WithinRange``, ``Decimals``, ``SingleStep``; Slicer >= 5.4)
and ``connectGui`` binds it to the widgets whose ``SlicerParameterName`` is
``<pack>.<field>`` in ``Resources/UI/SGPSAM.ui``. Slicer's binding rewrites a spin box's range
and a combo box's items from these annotations, so the values here are the ones the .ui shows
(``Testing/slicer/test_forms.py`` and the real-Qt test check both ways).

Nothing here needs Slicer or Qt: ``form_values`` gives a plain object with the defaults, and
``batch_params`` / ``training_request`` turn a form (a parameterPack or such an object) into
what the tab logics take.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from SGPSAMLib.options import COORDINATE_SPACES

from .batch_tab import OUTPUT_FORMATS, SEED_MARKUPS, BatchParams
from .training_tab import MODES

__all__ = ["FormField", "SeedSource", "BATCH_FORM", "TRAINING_FORM", "FORMS", "form_values",
           "batch_params", "training_request", "path_text"]


class SeedSource(enum.Enum):
    """Where the Batch tab's seed points come from (the combo box's items, in order)."""

    MARKUPS = "markups"
    CSV = "csv"

    def label(self) -> str:
        return {"markups": "Markups next to each volume (.mrk.json)",
                "csv": "One CSV file"}[self.value]


@dataclass(frozen=True)
class FormField:
    """One form value: its parameter name, type and default, the widget showing it and the
    annotations Slicer's binding applies to that widget."""

    name: str
    type: type
    default: Any
    widget: str
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    decimals: int | None = None
    single_step: float | None = None


BATCH_FORM: tuple[FormField, ...] = (
    FormField("inputFolder", Path, Path(), "batchInputPathLineEdit"),
    FormField("recursive", bool, False, "batchRecursiveCheckBox"),
    FormField("seeds", SeedSource, SeedSource.MARKUPS, "batchSeedsComboBox"),
    FormField("seedsCsv", Path, Path(), "batchSeedsCsvPathLineEdit"),
    FormField("csvSpace", str, "RAS", "batchCsvSpaceComboBox", choices=COORDINATE_SPACES),
    FormField("outputFolder", Path, Path(), "batchOutputPathLineEdit"),
    FormField("outputFormat", str, OUTPUT_FORMATS[0], "batchFormatComboBox",
              choices=OUTPUT_FORMATS),
    FormField("overwrite", bool, False, "batchOverwriteCheckBox"),
)

TRAINING_FORM: tuple[FormField, ...] = (
    FormField("dataFolder", Path, Path(), "trainDataPathLineEdit"),
    FormField("fromScene", bool, False, "trainFromSceneCheckBox"),
    FormField("outputFolder", Path, Path(), "trainOutputPathLineEdit"),
    FormField("mode", str, MODES[0], "trainModeComboBox", choices=MODES),
    FormField("epochs", int, 10, "trainEpochsSpinBox", minimum=1, maximum=10000),
    FormField("learningRate", float, 1e-4, "trainLearningRateSpinBox", minimum=1e-6,
              maximum=1.0, decimals=6, single_step=1e-5),
    FormField("validationFraction", float, 0.2, "trainValidationSpinBox", minimum=0.0,
              maximum=0.5, decimals=2, single_step=0.05),
    FormField("resume", bool, False, "trainResumeCheckBox"),
)

#: Parameter-node field name -> the form's fields.
FORMS: dict[str, tuple[FormField, ...]] = {"batch": BATCH_FORM, "training": TRAINING_FORM}


def form_values(fields: tuple[FormField, ...], **values: Any) -> SimpleNamespace:
    """A form with the defaults (and ``values``) as attributes, like a parameterPack."""
    known = {field.name for field in fields}
    unknown = set(values) - known
    if unknown:
        raise KeyError(f"unknown form fields {sorted(unknown)}; known: {sorted(known)}")
    return SimpleNamespace(**{field.name: values.get(field.name, field.default)
                              for field in fields})


def path_text(value: Any) -> str:
    """A path field as text; "" when not chosen (Slicer stores an empty path as ".")."""
    text = "" if value is None else str(value).strip()
    return "" if text in ("", ".") else text


def batch_params(form: Any, model: str, device: str, modality: str) -> BatchParams:
    """The Batch form (plus the Segment tab's model, device and modality) as ``BatchParams``."""
    csv = form.seeds == SeedSource.CSV
    return BatchParams(
        input_folder=path_text(form.inputFolder),
        output_folder=path_text(form.outputFolder),
        model=model,
        seeds=path_text(form.seedsCsv) if csv else SEED_MARKUPS,
        output_format=str(form.outputFormat),
        recursive=bool(form.recursive),
        device=device,
        overwrite=bool(form.overwrite),
        csv_space=str(form.csvSpace),
        modality=modality,
    )


def training_request(form: Any, init_model: str, device: str, modality: str) -> dict:
    """The Training form as the dict ``TrainingTabLogic.start_from_form`` takes."""
    return {
        "data_folder": path_text(form.dataFolder),
        "use_scene": bool(form.fromScene),
        "output_folder": path_text(form.outputFolder),
        "init_model": init_model,
        "mode": str(form.mode),
        "modality": modality,
        "epochs": int(form.epochs),
        "learning_rate": float(form.learningRate),
        "validation_fraction": float(form.validationFraction),
        "resume": bool(form.resume),
        "device": device,
    }
