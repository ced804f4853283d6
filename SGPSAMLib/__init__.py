"""SGPSAMLib: SGP-SAM (a SAM-Med3D-compatible 3D SAM with Self-Gated Prompting Modules) for
interactive lesion segmentation. Pure Python (torch, numpy, monai, SimpleITK); never imports
slicer, qt, vtk or ctk.

The public names below are imported lazily (PEP 562), so ``import SGPSAMLib`` and
``sgpsam --help`` do not pay for importing torch.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "PRESETS": "presets", "build_model": "build", "load_model": "build",
    "save_checkpoint": "build", "describe_checkpoint": "build",
    "ModelConfig": "config",
    "SGPSAMError": "errors", "CheckpointError": "errors", "VolumeIOError": "errors",
    "VolumeError": "errors", "PromptError": "errors",
    "Volume": "geometry",
    "read_volume": "io", "write_volume": "io", "write_labelmap": "io",
    "ZoomLoss": "losses",
    "InteractiveSession": "session", "Prediction": "session",
    "resolve_device": "devices",
    "ModelInfo": "models", "KNOWN_MODELS": "models", "resolve_model": "models",
    "bundled_model_path": "models", "cache_dir": "models", "cached_model_path": "models",
    "model_status": "models",
    "download": "download", "download_model": "download", "DownloadError": "download",
    "DownloadIntegrityError": "download", "DownloadCancelled": "download",
    "ConsentRequired": "download",
    "run_batch": "batch", "BatchConfig": "batch", "BatchSummary": "batch",
    "find_volumes": "batch",
    "Seed": "seeds", "read_markups": "seeds", "read_seed_csv": "seeds",
    "SegmentInfo": "segfile", "write_segmentation": "segfile", "read_segmentation": "segfile",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'SGPSAMLib' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
