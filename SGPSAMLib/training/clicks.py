"""Simulated corrective clicks in a training crop.

Two protocols (``click_mode``), chosen per click for each sample:

- ``uniform`` (SAM-Med3D training, reference/sam_med3d.md §5.1, §6): a uniformly random voxel
  of the error region; false negatives (lesion voxels predicted background) give a positive
  click, false positives a negative one;
- ``center`` (this project's evaluation robot, :mod:`SGPSAMLib.click_robot`): the most interior
  voxel of the largest connected error region, so training sees the clicks the evaluation (and
  a user aiming at the middle of a mistake) makes;
- ``mixed``: each click is one or the other with probability 1/2.

With no error left, a random lesion voxel is clicked (positive), as the official evaluation
does. The previous prediction is the logits upsampled to the crop (trilinear,
``align_corners=False``) and thresholded at logit 0 (sigmoid 0.5), the threshold the session
uses.
"""
from __future__ import annotations

import numpy as np
import torch

from ..click_robot import next_click
from .config import CLICK_MODES

__all__ = ["error_clicks", "center_clicks", "corrective_clicks", "random_voxel", "CLICK_MODES"]


def random_voxel(mask: torch.Tensor, generator: torch.Generator) -> torch.Tensor | None:
    """Index (3,) (long, on ``mask``'s device) of a uniformly random True voxel of a 3-D mask.

    ``generator`` is a CPU generator, so the draw is the same on every device. None if empty.
    """
    flat = mask.reshape(-1)
    count = int(flat.sum())
    if count == 0:
        return None
    k = int(torch.randint(count, (1,), generator=generator))
    # Position of the k-th True voxel: one cumulative sum, no index list of the whole region.
    index = int(torch.searchsorted(flat.cumsum(0, dtype=torch.int64),
                                   torch.tensor(k + 1, device=flat.device)))
    return torch.tensor(divmod_3d(index, mask.shape), dtype=torch.long, device=mask.device)


def divmod_3d(index: int, shape: torch.Size) -> tuple[int, int, int]:
    """C-order flat index -> (a, b, c)."""
    ab, c = divmod(index, shape[2])
    a, b = divmod(ab, shape[1])
    return a, b, c


def error_clicks(label: torch.Tensor, predicted: torch.Tensor, generator: torch.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """One click per sample from the error region.

    Args:
        label: (B, 1, S, S, S) ground truth (bool or 0/1).
        predicted: (B, 1, S, S, S) bool, the previous prediction.
        generator: CPU generator for the draws.

    Returns:
        points (B, 1, 3) float32 crop voxel indices (tensor axis order), labels (B, 1) long:
        1 for a false-negative voxel, 0 for a false-positive one. A sample without error gets
        a random lesion voxel (positive); one without lesion or error gets the crop centre,
        negative.
    """
    label = label.bool()
    predicted = predicted.bool()
    batch, size = label.shape[0], label.shape[-1]
    points = torch.empty((batch, 1, 3), dtype=torch.float32, device=label.device)
    labels = torch.empty((batch, 1), dtype=torch.long, device=label.device)
    for b in range(batch):
        truth, pred = label[b, 0], predicted[b, 0]
        error = truth ^ pred
        voxel = random_voxel(error, generator)
        if voxel is None:
            voxel = random_voxel(truth, generator)
        if voxel is None:
            points[b, 0] = (size - 1) / 2.0
            labels[b, 0] = 0
            continue
        points[b, 0] = voxel.float()
        labels[b, 0] = int(truth[tuple(voxel.tolist())])
    return points, labels


def center_clicks(label: torch.Tensor, predicted: torch.Tensor, generator: torch.Generator
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """One click per sample at the interior of the largest error region (the evaluation robot).

    Same arguments and results as :func:`error_clicks`; a sample without error gets a random
    lesion voxel (positive), one without lesion or error the crop centre, negative.
    """
    return corrective_clicks(label, predicted, generator, "center")


def _center_click(truth: torch.Tensor, pred: torch.Tensor, generator: torch.Generator
                  ) -> tuple[torch.Tensor | None, int]:
    """(voxel, label) of the evaluation robot's click for one 3-D sample (None: no error)."""
    found = next_click(pred.cpu().numpy(), truth.cpu().numpy())
    if found is None:
        return None, 1
    return torch.tensor(found[0], dtype=torch.long), int(found[1])


def corrective_clicks(label: torch.Tensor, predicted: torch.Tensor, generator: torch.Generator,
                      mode: str = "uniform") -> tuple[torch.Tensor, torch.Tensor]:
    """The next click of every sample under ``mode`` (module docstring).

    In ``mixed`` mode a coin per sample (from ``generator``) picks the protocol, and only that
    one is computed (the robot's connected components and distance map cost milliseconds).
    """
    if mode not in CLICK_MODES:
        raise ValueError(f"click mode must be one of {CLICK_MODES}, got {mode!r}")
    if mode == "uniform":
        return error_clicks(label, predicted, generator)
    label = label.bool()
    predicted = predicted.bool()
    batch, size = label.shape[0], label.shape[-1]
    use_center = torch.ones(batch, dtype=torch.bool)
    if mode == "mixed":
        use_center = torch.rand(batch, generator=generator) < 0.5
    points = torch.empty((batch, 1, 3), dtype=torch.float32, device=label.device)
    labels = torch.empty((batch, 1), dtype=torch.long, device=label.device)
    for b in range(batch):
        truth, pred = label[b, 0], predicted[b, 0]
        if use_center[b]:
            voxel, sign = _center_click(truth, pred, generator)
        else:
            voxel = random_voxel(truth ^ pred, generator)
            sign = None if voxel is None else int(truth[tuple(voxel.tolist())])
        if voxel is None:  # no error left: a random lesion voxel, as the official evaluation
            voxel, sign = random_voxel(truth, generator), 1
        if voxel is None:
            points[b, 0] = (size - 1) / 2.0
            labels[b, 0] = 0
            continue
        points[b, 0] = voxel.float()
        labels[b, 0] = sign
    return points, labels


def interior_weights(depth_mm: np.ndarray, power: float) -> np.ndarray:
    """Sampling weights for first clicks from voxel depths: ``depth ** power`` (normalised).

    ``power`` 0 is uniform over the lesion; larger powers concentrate the clicks near the
    middle, where users (and the evaluation robot, which takes the deepest voxel) click.
    """
    weights = np.maximum(np.asarray(depth_mm, dtype=np.float64), 1e-6) ** float(power)
    return weights / weights.sum()
