"""Simulated-click validation: what a user gets after 1 and after N clicks on each lesion.

Per validation lesion the first click is the lesion voxel nearest its centroid (a user clicks
the middle of what they see); the region is centred on it exactly (no jitter, no flips, no
augmentation), as the session does. Later clicks are the evaluation robot's (the interior of the
largest error region, :mod:`SGPSAMLib.click_robot`), so every validation sees the same clicks
and validation ranks checkpoints the way ``sgpsam evaluate`` would. Dice is computed in the crop
between the prediction upsampled to the crop (logit > 0) and the crop's lesion label.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .clicks import center_clicks
from .data import LoadedCase
from .sampling import sample_crop, sample_seed

__all__ = ["ValidationTarget", "validation_targets", "validate"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ValidationTarget:
    """A lesion to validate on and the voxel (flat index) of its first click."""

    case: int
    lesion: int
    voxel: int


def _central_voxel(case: LoadedCase, lesion: int) -> int:
    """The lesion voxel nearest the lesion's centroid (in voxel index space)."""
    flat = case.lesions[lesion - 1].flat_indices
    kji = np.stack(np.unravel_index(flat, case.volume.array.shape), axis=1).astype(np.float64)
    centroid = kji.mean(axis=0)
    return int(flat[np.argmin(((kji - centroid) ** 2).sum(axis=1))])


def validation_targets(cases: Sequence[LoadedCase], max_lesions: int, seed: int
                       ) -> list[ValidationTarget]:
    """Every lesion of the validation cases, or a seeded subset of ``max_lesions``."""
    pairs = [(c, lesion.index) for c, case in enumerate(cases) for lesion in case.lesions]
    if len(pairs) > max_lesions:
        chosen = np.random.default_rng(sample_seed(seed, 6)).choice(len(pairs), max_lesions,
                                                                     replace=False)
        pairs = [pairs[i] for i in sorted(chosen)]
    return [ValidationTarget(c, lesion, _central_voxel(cases[c], lesion)) for c, lesion in pairs]


def _dice(pred: torch.Tensor, truth: torch.Tensor) -> float:
    inter = float((pred & truth).sum())
    total = float(pred.sum()) + float(truth.sum())
    return 1.0 if total == 0 else 2.0 * inter / total


@torch.no_grad()
def validate(model: torch.nn.Module, cases: Sequence[LoadedCase],
             targets: Sequence[ValidationTarget], clicks: int, prompt_mode: str = "latest",
             seed: int = 0, autocast: contextlib.AbstractContextManager | None = None
             ) -> dict[str, object]:
    """Mean Dice after each of ``clicks`` simulated clicks over ``targets``.

    Returns ``{"val_dice": Dice after 1 click, "val_dice_clicks": after the last click,
    "val_dice_per_click": [...], "val_lesions": n}`` (Dice values None without targets).
    The model is put in eval mode and restored to its previous mode.
    """
    if not targets:
        return {"val_dice": None, "val_dice_clicks": None, "val_dice_per_click": [],
                "val_lesions": 0, "val_dice_small": None, "val_dice_large": None}
    was_training = model.training
    model.eval()
    device = model.device
    size = model.config.image_size
    per_click = np.zeros((len(targets), clicks))
    try:
        for t, target in enumerate(targets):
            case = cases[target.case]
            sample = sample_crop(case, target.lesion, seed=0, size=size,
                                 spacing_mm=model.config.crop_spacing_mm, jitter_voxels=0.0,
                                 flip=False, augment=False, voxel=target.voxel)
            image = torch.from_numpy(sample.image)[None, None].to(device)
            truth = torch.from_numpy(sample.label)[None, None].to(device).bool()
            generator = torch.Generator().manual_seed(sample_seed(seed, 7, t))
            with autocast or contextlib.nullcontext():
                embedding = model.encode(image)
            previous = None
            points = torch.from_numpy(sample.point)[None, None].to(device)
            labels = torch.ones((1, 1), dtype=torch.long, device=device)
            all_points, all_labels = points, labels
            predicted = torch.zeros_like(truth)
            for click in range(clicks):
                if click > 0:
                    points, labels = center_clicks(truth, predicted, generator)
                    all_points = torch.cat([all_points, points], dim=1)
                    all_labels = torch.cat([all_labels, labels], dim=1)
                use_points, use_labels = ((all_points, all_labels) if prompt_mode == "cumulative"
                                          else (points, labels))
                with autocast or contextlib.nullcontext():
                    previous, _ = model.predict(embedding, image, use_points, use_labels,
                                                previous, all_points, all_labels)
                previous = previous.float()
                up = previous if previous.shape[-1] == size else F.interpolate(
                    previous, size=(size,) * 3, mode="trilinear", align_corners=False)
                predicted = up > 0
                per_click[t, click] = _dice(predicted, truth)
    finally:
        model.train(was_training)
    means = per_click.mean(axis=0)
    small = np.array([_volume_ml(cases[t.case], t.lesion) < 1.0 for t in targets])
    return {"val_dice": float(means[0]), "val_dice_clicks": float(means[-1]),
            "val_dice_per_click": [float(v) for v in means], "val_lesions": len(targets),
            # Lesions below 1 mL apart: the size where a coarse mask fails first.
            "val_dice_small": float(per_click[small, 0].mean()) if small.any() else None,
            "val_dice_large": float(per_click[~small, 0].mean()) if (~small).any() else None}


def _volume_ml(case: LoadedCase, lesion: int) -> float:
    return case.lesions[lesion - 1].voxels * case.volume.voxel_volume_ml
