"""Building models from presets (:mod:`SGPSAMLib.presets`) and strict, safe checkpoint
loading/saving.

Accepted checkpoint layouts (always read with ``torch.load(..., weights_only=True)``):
- official SAM-Med3D: ``{"model_state_dict": state_dict}`` (e.g. ``sam_med3d_turbo.pth``);
- a bare state_dict, with or without the ``module.`` prefix DistributedDataParallel adds;
- our self-describing file: ``{"format": "sgpsam", "config": ..., "state_dict": ...,
  "metadata": ...}`` written by :func:`save_checkpoint`.
An official checkpoint loads into ``sgp_sam`` too: the SGPM keep their zero-initialised output
projection, so the model computes exactly what the official one does.

Nothing in a file is trusted before it is checked: any reader failure (empty, truncated, not a
zip, a pickle holding Python objects) is one :class:`CheckpointError` that says the file is
not a safe checkpoint and what is accepted (never torch's advice to load it unsafely); a
stored config is built on the meta device first (no memory), bounded by
``SGPSAM_MAX_MODEL_PARAMETERS`` (default 1e9), and compared key by key and shape by shape
with the file's tensors before the real model is allocated.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Any, Union

import torch

from .config import ModelConfig
from .config_check import (
    DEFAULT_MAX_PARAMETERS,
    MAX_PARAMETERS_ENV,
    declared_shapes,
    max_model_parameters,
)
from .errors import CheckpointError
from .modeling import SGPSAMModel
from .models import check_checkpoint_file, resolve_model
from .presets import PRESETS, preset_config

__all__ = ["PRESETS", "build_model", "load_model", "save_checkpoint", "describe_checkpoint",
           "read_checkpoint", "safe_torch_load", "check_config_fits", "check_config_buildable",
           "check_state_dict",
           "config_from_checkpoint",
           "max_model_parameters", "CHECKPOINT_FORMAT", "MAX_PARAMETERS_ENV",
           "DEFAULT_MAX_PARAMETERS"]

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "sgpsam"
CHECKPOINT_FORMAT_VERSION = 1
_SGPM_KEY = ".sgpm."

PathLike = Union[str, os.PathLike]


def build_model(preset: str | ModelConfig = "sgp_sam", **overrides: Any) -> SGPSAMModel:
    """A randomly initialised model from a preset name (or a config), with field overrides."""
    if isinstance(preset, ModelConfig):
        config = preset
    else:
        config = preset_config(preset)
    if overrides:
        config = config.replace(**overrides)
    return SGPSAMModel(config)


def _strip_prefix(state: dict[str, torch.Tensor], prefix: str = "module.") -> dict:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


ACCEPTED_CHECKPOINTS = (
    "accepted: a SAM-Med3D .pth ({'model_state_dict': ...}), a plain state_dict of tensors "
    "(optionally under 'state_dict' or with DDP's 'module.' prefix), or a checkpoint written "
    "by sgpsam (train / save_checkpoint)"
)
# Phrases of torch's own error text that must never reach a user: its advice to load the file
# with weights_only=False (which would run any code the file holds) and its allow-listing tips.
_TORCH_ADVICE = re.compile(r"weights_only|re-running|trust|safe_globals|add_safe_globals|"
                           r"file an issue|documentation of torch\.load|\bpytorch 2\.6\b",
                           re.IGNORECASE)


def _refused_object(exc: Exception) -> str | None:
    """The Python object (module.name) the weights-only unpickler refused, or None."""
    text = str(exc)
    for pattern in (r"Unsupported global: GLOBAL ([\w.]+)", r"unsupported GLOBAL ([\w.]+)",
                    r"GLOBAL ([\w.]+) was not an allowed global"):
        match = re.search(pattern, text)
        if match:
            return match.group(1)
    return None


def _pickle_reason(exc: Exception) -> str:
    """Why a weights-only unpickle failed that is not a refused object: in a few words."""
    match = re.search(r"Unsupported operand (\d+)", str(exc))
    if match:  # text or random bytes read as a (legacy) pickle
        return (f"neither a PyTorch zip archive nor a pickle of plain tensors (opcode "
                f"{match.group(1)})")
    return _reader_reason(exc) if not re.search("Weights only load failed", str(exc)) else \
        "its pickle data is not plain tensors and containers"


def _reader_reason(exc: BaseException) -> str:
    """A short, advice-free reason out of a reader exception (zip, pickle, EOF, ...)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    kept = [line for line in lines if not _TORCH_ADVICE.search(line)]
    reason = kept[0] if kept else ""
    if isinstance(exc, EOFError) or "ran out of input" in reason.lower():
        return "the file ends early (truncated)"
    if len(reason) > 200:
        reason = reason[:200] + "..."
    return reason or type(exc).__name__


def _not_safe(path: Path, why: str) -> CheckpointError:
    return CheckpointError(f"{path}: not a safe checkpoint: {why}; {ACCEPTED_CHECKPOINTS}")


def _unreadable(path: Path, why: str) -> CheckpointError:
    return CheckpointError(f"{path}: not a readable PyTorch checkpoint ({why}); "
                           f"{ACCEPTED_CHECKPOINTS}")


def safe_torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)`` with every failure turned into one CheckpointError.

    A refused pickle is reported as refused; torch's own advice to reload the file with
    ``weights_only=False`` (which would execute whatever code the file carries) is never shown.
    """
    size = path.stat().st_size
    if size == 0:
        raise _unreadable(path, "the file is empty, 0 bytes")
    try:
        with warnings.catch_warnings():  # torch's own notes (e.g. "please file an issue")
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = _refused_object(exc)
        if refused is None:
            raise _unreadable(path, _pickle_reason(exc)) from None
        hint = ""
        if refused.endswith("Namespace"):
            hint = (" (a full SAM-Med3D training checkpoint holds an argparse Namespace: keep "
                    "only its 'model_state_dict', re-saved with torch.save on a machine you "
                    "trust)")
        raise _not_safe(
            path, f"it holds the Python object {refused}, and SGP-SAM reads checkpoints with "
            f"weights_only=True, so it never unpickles anything that could run code{hint}"
        ) from None
    except MemoryError:
        raise _unreadable(path, "it declares more data than fits in memory") from None
    except Exception as exc:  # noqa: BLE001 - zip, EOF, size or dtype errors: not a checkpoint
        raise _unreadable(path, _reader_reason(exc)) from None


def read_checkpoint(path: PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None, dict]:
    """Load a checkpoint file safely -> (state_dict, config dict or None, metadata).

    Raises:
        CheckpointError: missing, empty or unreadable file, a refused pickle, no state_dict of
            tensors, or a stored config / metadata that is not a dict (named precisely).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    check_checkpoint_file(path)  # a plain message for files torch.load would answer cryptically
    obj = safe_torch_load(path)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, got {type(obj).__name__}; "
                              f"{ACCEPTED_CHECKPOINTS}")
    config, metadata = None, {}
    if obj.get("format") == CHECKPOINT_FORMAT:
        state, config, metadata = obj.get("state_dict"), obj.get("config"), obj.get("metadata", {})
        if config is not None and not (isinstance(config, dict)
                                       and all(isinstance(k, str) for k in config)):
            raise CheckpointError(f"{path}: the stored model config is a "
                                  f"{type(config).__name__}, expected a dict of ModelConfig "
                                  "fields; the file is damaged or was not written by sgpsam")
        if not isinstance(metadata, dict):
            raise CheckpointError(f"{path}: the stored metadata is a {type(metadata).__name__}, "
                                  "expected a dict")
        metadata = dict(metadata, format=CHECKPOINT_FORMAT)
    elif "model_state_dict" in obj:
        state = obj["model_state_dict"]
        metadata = {"format": "sam_med3d"}
    elif "state_dict" in obj and isinstance(obj["state_dict"], dict):
        state = obj["state_dict"]
        metadata = {"format": "state_dict"}
    else:
        state = obj
        metadata = {"format": "bare_state_dict"}
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise CheckpointError(f"{path}: no state_dict of tensors found (top-level keys: "
                              f"{sorted(map(str, obj))[:10]}); {ACCEPTED_CHECKPOINTS}")
    return _strip_prefix(state), config, metadata


def config_from_checkpoint(config_dict: Any, path: PathLike) -> ModelConfig:
    """A stored config dict -> ModelConfig, or CheckpointError naming the file and the field."""
    if not isinstance(config_dict, dict):
        raise CheckpointError(f"{path}: the stored model config is a "
                              f"{type(config_dict).__name__}, expected a dict of ModelConfig "
                              "fields")
    try:
        return ModelConfig.from_dict(config_dict)
    except (TypeError, ValueError, OverflowError) as exc:
        raise CheckpointError(f"{path}: invalid stored model config: {exc}") from exc


def check_config_buildable(config: ModelConfig, path: PathLike,
                           file_tensors: int) -> dict[str, torch.Size]:
    """State-dict shapes of ``config``'s model, built on the meta device within the limits.

    Raises CheckpointError (naming ``path``) when the config declares more than
    :func:`max_model_parameters` values, far more tensors than the ``file_tensors`` a file
    holds, or cannot be built at all.
    """
    return declared_shapes(config, path, file_tensors)


def check_config_fits(config: ModelConfig, state: dict[str, torch.Tensor], path: PathLike,
                      allow_missing_sgpm: bool = False,
                      expected: dict[str, torch.Size] | None = None) -> None:
    """Check, before anything is allocated, that ``config`` builds exactly ``state``'s tensors.

    The model is built on PyTorch's meta device (shapes only, for any config the model class
    accepts, see :mod:`SGPSAMLib.config_check`), bounded by :func:`max_model_parameters`;
    then every key and shape is compared. ``allow_missing_sgpm``: official weights without
    SGPM may leave the SGPM at their init. ``expected``: the shapes, when already known (a
    model built from a trusted preset).

    Raises:
        CheckpointError: too large a config, one the model cannot build, or missing /
            unexpected / mis-shaped keys (all listed).
    """
    if expected is None:
        expected = check_config_buildable(config, path, len(state))
    check_state_dict(expected, state, path, config.preset, allow_missing_sgpm=allow_missing_sgpm)


def check_state_dict(expected: dict[str, torch.Size], state: dict[str, torch.Tensor],
                     where: PathLike | str, preset: str, allow_missing_sgpm: bool = False,
                     hint: str = "") -> None:
    """The one key contract of a checkpoint: ``state`` has exactly ``expected``'s keys and
    shapes (the SGPM's may be missing when ``allow_missing_sgpm``: official weights leave them
    at their identity initialisation). Used by :func:`load_model`, ``train --init`` and a
    resumed training state.

    Raises:
        CheckpointError: "WHERE: checkpoint does not match the 'PRESET' architecture" with the
            missing, unexpected and mis-shaped keys listed (the first 12 of each) and ``hint``.
    """
    missing = [k for k in expected if k not in state]
    if allow_missing_sgpm:
        missing = [k for k in missing if _SGPM_KEY not in k]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(v)}"
                  for k, v in expected.items() if k in state and state[k].shape != v]
    if not (missing or unexpected or mismatched):
        return

    def listing(name: str, items: list) -> str:
        shown = ", ".join(items[:12]) + (f", ... ({len(items)} in all)" if len(items) > 12 else "")
        return f"\n  {name} ({len(items)}): {shown}"

    text = f"{where}: checkpoint does not match the '{preset}' architecture"
    if missing:
        text += listing("missing keys", missing)
    if unexpected:
        text += listing("unexpected keys", unexpected)
    if mismatched:
        text += listing("mis-shaped keys", mismatched)
    raise CheckpointError(text + (f"\n  {hint}" if hint else ""))


def load_model(path: PathLike, device: str | torch.device = "cpu",
               preset: str | None = None) -> SGPSAMModel:
    """Build the checkpoint's architecture, load its weights strictly, return it in eval mode.

    Args:
        path: checkpoint file (see the module docstring for accepted layouts), or a known model
            name such as ``"demo"`` (:func:`SGPSAMLib.models.resolve_model`).
        device: "cpu", "cuda", "mps" or "auto".
        preset: architecture for files without a stored config; default: ``sgp_sam`` if the file
            has SGPM weights, else ``sam_med3d``. Ignored for self-describing checkpoints.

    Raises:
        CheckpointError: unknown name, unreadable file, or missing / unexpected / mis-shaped keys
            (all listed).
    """
    path = resolve_model(path)
    state, config_dict, metadata = read_checkpoint(path)
    has_sgpm = any(_SGPM_KEY in k for k in state)
    if config_dict is not None:
        config = config_from_checkpoint(config_dict, path)
    else:
        name = preset or ("sgp_sam" if has_sgpm else "sam_med3d")
        config = preset_config(name, error=CheckpointError)
    if config not in PRESETS.values():
        # The file's own config: validated on the meta device before anything is allocated.
        check_config_fits(config, state, path, allow_missing_sgpm=not has_sgpm)
        model = SGPSAMModel(config)
    else:  # exactly one of our presets: safe to build, then compared key by key
        model = SGPSAMModel(config)
        check_config_fits(config, state, path, allow_missing_sgpm=not has_sgpm,
                          expected={k: v.shape for k, v in model.state_dict().items()})
    model.load_state_dict(state, strict=False)
    if device == "auto" or (isinstance(device, str) and device != "cpu"):
        from .devices import resolve_device

        device = resolve_device(str(device))
    model.checkpoint_metadata = dict(metadata, path=str(path))
    log.info("loaded %s (%s, %s) on %s", path, config.preset, metadata.get("format"), device)
    return model.to(device).eval()


def save_checkpoint(model: SGPSAMModel, path: PathLike, metadata: dict | None = None) -> Path:
    """Write a self-describing checkpoint atomically (temp file + rename).

    ``metadata`` must hold only builtins (str, numbers, bools, None, lists, dicts) so the file
    stays loadable with ``weights_only=True``.
    """
    from . import __version__
    from .io import atomic_write

    path = Path(path)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "metadata": {
            "library_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            **(metadata or {}),
        },
    }
    with atomic_write(path) as tmp:
        torch.save(payload, tmp)
    return path


def describe_checkpoint(path: PathLike) -> dict[str, Any]:
    """Architecture, SGPM, size and provenance of a checkpoint (file or known model name)."""
    path = resolve_model(path)
    state, config_dict, metadata = read_checkpoint(path)
    sgpm_blocks = sorted({int(k.split(_SGPM_KEY)[1].split(".")[0])
                          for k in state if _SGPM_KEY in k})
    if config_dict is None:
        config_dict = PRESETS["sgp_sam" if sgpm_blocks else "sam_med3d"].to_dict()
        config_source = "inferred from keys (no stored config)"
    else:
        config_source = "stored in checkpoint"
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return {
        "path": str(path),
        "file_bytes": path.stat().st_size,
        "sha256": digest.hexdigest(),
        "format": metadata.get("format"),
        "preset": config_dict.get("preset"),
        "config_source": config_source,
        "config": config_dict,
        "sgpm_blocks": sgpm_blocks,
        "num_tensors": len(state),
        "num_parameters": int(sum(v.numel() for v in state.values())),
        "metadata": {k: v for k, v in metadata.items() if k != "format"},
    }
