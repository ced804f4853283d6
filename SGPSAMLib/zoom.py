"""The scale of a new lesion's window: look closely first, step back when the answer is large.

Why: a model answers best when the lesion fills a suitable part of its crop. The demo model's
crop is 64 voxels; at its training spacing (1.5 mm, a 96 mm field) a lesion under 1 mL is a
handful of voxels and 2-3 cells of its refinement head, and it was often missed or drawn as a
blob. Looked at through a finer crop (0.75 mm, a 48 mm field) the same lesion spans twice as
many voxels per axis, while a large lesion no longer fits. So a new lesion's first window
opens at ``probe_mm``; when the clicked answer there is large (equivalent diameter of at least
``large_mm``, or it reaches a face of the window), the window is opened again at ``wide_mm``
around the same click, before anything is shown. Later clicks on that lesion, and the
neighbour windows of a large target, keep the lesion's spacing.

Measured with the demo model on validation seeds of the synthetic generator that no training
run and no held-out benchmark uses (9000-9019, 9100-9119, 9200-9219, 9300-9319: 167 lesions,
5 clicks, the README's protocol): mean Dice after click 1 / click 5 from 0.594 / 0.625 (fixed
1.5 mm) to 0.641 / 0.694; lesions < 1 mL 0.46 / 0.42 -> 0.55 / 0.55; lesions >= 1 mL the
same as before in all four sets (0.734 / 0.843); empty masks 23 -> 11. A fixed 0.75 mm
helps small lesions and hurts large ones, a fixed 1.0-1.25 mm the reverse; a first look at
1.5 mm that zooms *in* for a small answer did not help (the coarse first answer misjudges
small lesions' size).

A policy belongs to the model it was measured with: :data:`ZOOM_POLICIES` maps a preset name
to its policy. The SAM-Med3D presets have none: official checkpoints keep their fixed 1.5 mm
crop, as they were trained and evaluated.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["ZoomPolicy", "ZOOM_POLICIES", "zoom_policy", "answer_is_large"]


@dataclass(frozen=True)
class ZoomPolicy:
    """Crop spacings for a new lesion.

    Attributes:
        probe_mm: crop spacing of a new lesion's first window.
        wide_mm: spacing of the window opened instead when the first answer is large.
        large_mm: equivalent diameter (of the clicked answer) from which it counts as large.
    """

    probe_mm: float
    wide_mm: float
    large_mm: float

    def __post_init__(self) -> None:
        for name in ("probe_mm", "wide_mm", "large_mm"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value) or value <= 0:
                raise ValueError(f"ZoomPolicy.{name} must be a finite number > 0, got {value!r}")
        if self.wide_mm <= self.probe_mm:
            raise ValueError(f"ZoomPolicy.wide_mm ({self.wide_mm}) must be larger than "
                             f"probe_mm ({self.probe_mm})")


#: Policies by model preset (the module docstring says how the demo's was measured).
ZOOM_POLICIES: dict[str, ZoomPolicy] = {
    "demo": ZoomPolicy(probe_mm=0.75, wide_mm=1.5, large_mm=10.0),
}


def zoom_policy(config: Any) -> ZoomPolicy | None:
    """The policy measured for a model's preset (``config.preset``), or None: fixed spacing."""
    return ZOOM_POLICIES.get(str(getattr(config, "preset", "")))


def answer_is_large(logits: torch.Tensor, cell_mm: float, large_mm: float) -> bool:
    """Whether a region's answer (logits on its output grid, cells of ``cell_mm``) is large:
    its foreground's equivalent diameter is at least ``large_mm``, or it reaches a face of the
    grid (the lesion may go on beyond the window). An empty answer is not large."""
    if logits.dim() != 3:
        raise ValueError(f"logits must be a (D, H, W) tensor, got shape {tuple(logits.shape)}")
    foreground = logits > 0
    voxels = int(foreground.sum())
    if voxels == 0:
        return False
    on_face = any(bool(foreground.select(axis, index).any())
                  for axis in range(3) for index in (0, -1))
    diameter = (6.0 * voxels * cell_mm ** 3 / math.pi) ** (1.0 / 3.0)
    return on_face or diameter >= large_mm
