"""Named model presets and strict, safe checkpoint loading/saving.

Accepted checkpoint layouts (always read with ``torch.load(..., weights_only=True)``):
- official SAM-Med3D: ``{"model_state_dict": state_dict}`` (e.g. ``sam_med3d_turbo.pth``);
- a bare state_dict, with or without the ``module.`` prefix DistributedDataParallel adds;
- our self-describing file: ``{"format": "sgpsam", "config": ..., "state_dict": ...,
  "metadata": ...}`` written by :func:`save_checkpoint`.
An official checkpoint loads into ``sgp_sam`` too: the SGPM keep their zero-initialised output
projection, so the model computes exactly what the official one does.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import os
import pickle
from pathlib import Path
from typing import Any, Union

import torch

from .config import ModelConfig
from .errors import CheckpointError
from .modeling import SGPSAMModel
from .models import check_checkpoint_file, resolve_model

__all__ = ["PRESETS", "build_model", "load_model", "save_checkpoint", "describe_checkpoint",
           "read_checkpoint", "CHECKPOINT_FORMAT"]

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "sgpsam"
CHECKPOINT_FORMAT_VERSION = 1
_SGPM_KEY = ".sgpm."

PRESETS: dict[str, ModelConfig] = {
    # SAM-Med3D vit_b_ori: the architecture of the public sam_med3d(_turbo).pth checkpoints.
    "sam_med3d": ModelConfig(preset="sam_med3d"),
    # The same backbone with an SGPM after each global-attention block.
    "sgp_sam": ModelConfig(preset="sgp_sam", sgpm_blocks=(2, 5, 8, 11)),
    # Same code and geometry (128^3 crop, 8^3 tokens, 14^3 padded windows), small widths: tests.
    "tiny": ModelConfig(
        preset="tiny", embed_dim=48, depth=4, num_heads=2, out_chans=48,
        global_attn_indexes=(1, 3), mask_in_chans=8, decoder_num_heads=2, decoder_mlp_dim=64,
        iou_head_hidden_dim=32, sgpm_blocks=(1, 3), sgpm_gate_hidden=8, sgpm_bottleneck=8,
    ),
    # The bundled demo model: small enough to train on a 2-core CPU within an hour and to ship
    # (< 25 MB). SAM-Med3D's voxel size (1.5 mm) on a 64^3 crop (96 mm field of view) with 8^3
    # patches (8^3 tokens, all attention global: the grid is smaller than a window), and a
    # full-resolution refinement head (modeling/refiner.py) so that the mask has 1.5 mm cells
    # instead of the decoder's 3 mm: small lesions are a few cells of the decoder's grid.
    "demo": ModelConfig(
        preset="demo", image_size=64, patch_size=8, embed_dim=192, depth=6, num_heads=4,
        out_chans=96, window_size=0,
        global_attn_indexes=(2, 5), mask_in_chans=8, decoder_num_heads=4, decoder_mlp_dim=256,
        iou_head_hidden_dim=64, sgpm_blocks=(2, 5), sgpm_gate_hidden=32, sgpm_bottleneck=32,
        refine_channels=(16, 32, 64),
    ),
}

PathLike = Union[str, os.PathLike]


def build_model(preset: str | ModelConfig = "sgp_sam", **overrides: Any) -> SGPSAMModel:
    """A randomly initialised model from a preset name (or a config), with field overrides."""
    if isinstance(preset, ModelConfig):
        config = preset
    else:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
        config = PRESETS[preset]
    if overrides:
        config = config.replace(**overrides)
    return SGPSAMModel(config)


def _strip_prefix(state: dict[str, torch.Tensor], prefix: str = "module.") -> dict:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


def _global_name(exc: Exception) -> str:
    """The line of torch's weights-only error that names the refused Python object."""
    lines = [line.strip() for line in str(exc).splitlines() if "Unsupported global" in line]
    return lines[0] if lines else str(exc).splitlines()[0]


def read_checkpoint(path: PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None, dict]:
    """Load a checkpoint file safely -> (state_dict, config dict or None, metadata)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    check_checkpoint_file(path)  # a plain message for files torch.load would answer cryptically
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" not in str(exc):
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint "
                                  f"({str(exc).splitlines()[0]})") from exc
        raise CheckpointError(
            f"{path}: refusing to unpickle arbitrary Python objects (weights_only=True). Full "
            "SAM-Med3D training checkpoints hold an argparse Namespace; re-save only their "
            f"'model_state_dict' on a trusted machine. Detail: {_global_name(exc)}"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - any reader failure means "not a checkpoint"
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({exc})") from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, got {type(obj).__name__}")
    config, metadata = None, {}
    if obj.get("format") == CHECKPOINT_FORMAT:
        state, config, metadata = obj.get("state_dict"), obj.get("config"), obj.get("metadata", {})
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
            isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: no state_dict of tensors found (top-level keys: "
                              f"{sorted(map(str, obj))[:10]})")
    return _strip_prefix(state), config, metadata


def _key_report(path: Path, preset: str, missing: list, unexpected: list, mismatched: list) -> str:
    def listing(name: str, items: list) -> str:
        shown = ", ".join(items[:12]) + (f", ... ({len(items)} in all)" if len(items) > 12 else "")
        return f"\n  {name} ({len(items)}): {shown}"

    text = f"{path}: checkpoint does not match the '{preset}' architecture"
    if missing:
        text += listing("missing keys", missing)
    if unexpected:
        text += listing("unexpected keys", unexpected)
    if mismatched:
        text += listing("mis-shaped keys", mismatched)
    return text


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
        try:
            config = ModelConfig.from_dict(config_dict)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: invalid stored model config: {exc}") from exc
    else:
        name = preset or ("sgp_sam" if has_sgpm else "sam_med3d")
        if name not in PRESETS:
            raise CheckpointError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        config = PRESETS[name]
    model = SGPSAMModel(config)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    if not has_sgpm:  # official weights into sgp_sam: the SGPM stay at their identity init
        missing = [k for k in missing if _SGPM_KEY not in k]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
                  for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or mismatched:
        raise CheckpointError(_key_report(path, config.preset, missing, unexpected, mismatched))
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
