"""Training data: the annotated cases of :mod:`SGPSAMLib.cases` (shared with evaluation).

Kept so that ``SGPSAMLib.training.data`` and the training modules' ``from .data import ...``
go on working; the code lives in ``SGPSAMLib/cases.py``.
"""
from __future__ import annotations

from ..cases import (
    LABEL_KEYWORDS,
    LESION_UNITS,
    VOLUME_SUFFIXES,
    CaseFiles,
    LabelLesion,
    LoadedCase,
    find_cases,
    load_case,
    split_cases,
)

__all__ = ["CaseFiles", "LoadedCase", "LabelLesion", "find_cases", "load_case", "split_cases",
           "LESION_UNITS", "VOLUME_SUFFIXES", "LABEL_KEYWORDS"]
