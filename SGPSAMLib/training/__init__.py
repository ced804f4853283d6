"""Training: the SGP-SAM transfer recipe (``sgp``), full fine-tuning (``finetune``) and ablations.

``train(TrainConfig(data=..., out=...))`` runs or resumes a run; ``find_cases`` lists the
image/label pairs of a folder (MSD layout or matching names). See :mod:`.trainer` for the
recipe and the files a run writes.
"""
from __future__ import annotations

from .config import TrainConfig
from .data import CaseFiles, Lesion, LoadedCase, find_cases, load_case, split_cases
from .trainer import TrainResult, build_initial_model, train, trainable_parameter_names

__all__ = ["TrainConfig", "TrainResult", "train", "find_cases", "CaseFiles", "LoadedCase",
           "Lesion", "load_case", "split_cases", "build_initial_model",
           "trainable_parameter_names"]
