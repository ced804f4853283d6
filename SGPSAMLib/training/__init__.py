"""Training: the SGP-SAM transfer recipe (``sgp``), full fine-tuning (``finetune``) and ablations.

``train(TrainConfig(data=..., out=...))`` runs or resumes a run; ``find_cases`` lists the
image/label pairs of a folder (MSD layout or matching names). See :mod:`.trainer` for the
recipe and the files a run writes.
"""
from __future__ import annotations

from ..cases import CaseFiles, LabelLesion, LoadedCase, find_cases, load_case, split_cases
from .config import TrainConfig
from .trainer import TrainResult, build_initial_model, train, trainable_parameter_names

__all__ = ["TrainConfig", "TrainResult", "train", "find_cases", "CaseFiles", "LoadedCase",
           "LabelLesion", "load_case", "split_cases", "build_initial_model",
           "trainable_parameter_names"]
