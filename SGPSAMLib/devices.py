"""Choosing the torch device: one place that knows the fallback order and what "auto" means.

"auto" prefers an NVIDIA GPU, then Apple's Metal (MPS), then the CPU, so the same settings file
works on every machine; an explicit name that the machine cannot honour fails early with the
list of what it has, instead of failing later inside the first forward pass.
"""
from __future__ import annotations

import logging

import torch

__all__ = ["resolve_device", "available_devices"]

log = logging.getLogger(__name__)


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def available_devices() -> list[str]:
    """Names this machine can use, best first (e.g. ``["cuda:0", "cuda:1", "cpu"]``)."""
    names = []
    if torch.cuda.is_available():
        names.extend(f"cuda:{index}" for index in range(torch.cuda.device_count()))
    if _mps_available():
        names.append("mps")
    names.append("cpu")
    return names


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn a user setting into a usable ``torch.device``.

    Args:
        device: "auto" (cuda if available, else mps, else cpu), "cpu", "cuda", "cuda:N", "mps",
            or a ``torch.device``.

    Raises:
        ValueError: the name is not a device, or the device is not available here; the message
            names it and lists the available devices.
    """
    if isinstance(device, torch.device):
        name = str(device)
    elif isinstance(device, str):
        name = device.strip().lower()
    else:
        raise ValueError(f"device must be a string such as 'auto', 'cpu', 'cuda', 'cuda:1' or "
                         f"'mps', got {device!r}")
    if name == "auto":
        if torch.cuda.is_available():
            chosen = torch.device("cuda")
        elif _mps_available():
            chosen = torch.device("mps")
        else:
            chosen = torch.device("cpu")
        log.debug("device 'auto' resolved to %s", chosen)
        return chosen
    try:
        parsed = torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"device {device!r} is not a device name; use 'auto', 'cpu', 'cuda', "
                         f"'cuda:N' or 'mps' (available here: {available_devices()})") from exc
    available = available_devices()
    if parsed.type == "cpu":
        ok = parsed.index in (None, 0)
    elif parsed.type == "cuda":
        ok = torch.cuda.is_available() and (
            parsed.index is None or parsed.index < torch.cuda.device_count())
    elif parsed.type == "mps":
        ok = _mps_available() and parsed.index in (None, 0)
    else:
        ok = False
    if not ok:
        raise ValueError(f"device {device!r} is not available on this machine; available: "
                         f"{available} (or 'auto')")
    return parsed
