"""Where a simulated user clicks: the interior of a lesion, then the interior of the largest error.

One robot for everything that simulates a user, so that training, validation, evaluation and
the demo click the same way (a model trained on one click protocol and judged on another is a
known failure of interactive segmentation):

- the first click goes to the lesion's most interior voxel (:func:`interior_voxel`);
- each later click goes to the most interior voxel of the largest 26-connected false-negative
  or false-positive region (:func:`next_click`): positive on a miss, negative on a false alarm.

Distances are in mm with the voxel spacing (SimpleITK's Maurer distance map), so anisotropic
volumes are handled; numpy + SimpleITK only.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

__all__ = ["interior_voxel", "next_click", "connected_components", "distance_inside", "distance_to",
           "mask_bbox", "as_mask", "check_spacing"]

BBox = tuple[slice, slice, slice]


def as_mask(mask: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(mask)
    if arr.ndim != 3:
        raise ValueError(f"{name} must be a 3-D (K, J, I) mask; got shape {arr.shape}")
    return arr.astype(bool, copy=False)


def mask_bbox(mask: np.ndarray, pad: int = 0) -> BBox | None:
    """Array-order box of the True voxels grown by ``pad`` (clipped), or None if empty."""
    box = []
    for axis in range(mask.ndim):
        other = tuple(d for d in range(mask.ndim) if d != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        if idx.size == 0:
            return None
        box.append(slice(max(int(idx[0]) - pad, 0), min(int(idx[-1]) + 1 + pad,
                                                         mask.shape[axis])))
    return tuple(box)


def distance_to(mask: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Euclidean distance (mm) from every voxel centre to the nearest True voxel centre."""
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.SetSpacing(tuple(float(s) for s in spacing))
    distance = sitk.SignedMaurerDistanceMap(image, insideIsPositive=False, squaredDistance=False,
                                            useImageSpacing=True)
    out = sitk.GetArrayFromImage(distance)
    out[mask] = 0.0
    return out


def check_spacing(spacing: Sequence[float] | None) -> tuple[float, float, float]:
    if spacing is None:
        return (1.0, 1.0, 1.0)
    values = tuple(float(s) for s in spacing)
    if len(values) != 3 or not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"spacing must be 3 positive mm values (i, j, k); got {spacing!r}")
    return values


def connected_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """26-connected components -> (int32 ids 0..n on the mask's shape, n)."""
    m = as_mask(mask, "mask")
    ids = np.zeros(m.shape, dtype=np.int32)
    box = mask_bbox(m)
    if box is None:
        return ids, 0
    labelled = sitk.ConnectedComponent(sitk.GetImageFromArray(m[box].astype(np.uint8)), True)
    ids[box] = sitk.GetArrayFromImage(labelled)
    return ids, int(ids.max())


def interior_voxel(mask: np.ndarray, spacing: Sequence[float] | None = None
                   ) -> tuple[int, int, int]:
    """(k, j, i) of the mask voxel farthest (mm) from any voxel outside the mask.

    The array's outside counts as "outside the mask". Ties: the voxel nearest the mask's
    centroid (mm), then the first in array order. Where a user would click: the middle.
    """
    m = as_mask(mask, "mask")
    box = mask_bbox(m, pad=1)
    if box is None:
        raise ValueError("interior_voxel: the mask is empty")
    sp = check_spacing(spacing)
    sub = np.pad(m[box], 1)  # a background border, so the array's edge is "outside"
    depth = distance_to(~sub, sp)
    idx = np.argwhere(sub)
    values = depth[sub]
    best = idx[values >= values.max() - 1e-6]
    if len(best) > 1:
        scale = np.asarray(sp[::-1])  # (k, j, i) mm per index
        centroid = idx.mean(axis=0)
        dist = (((best - centroid) * scale) ** 2).sum(axis=1)
        best = best[dist <= dist.min() + 1e-9]
    k, j, i = (int(v) for v in best[0])
    return (k + box[0].start - 1, j + box[1].start - 1, i + box[2].start - 1)


def next_click(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float] | None = None,
               ignore: np.ndarray | None = None) -> tuple[tuple[int, int, int], bool] | None:
    """Where the next corrective click goes: ((k, j, i), positive), or None without errors.

    The largest 26-connected false-negative or false-positive region (voxels in ``ignore``
    excluded; ties: false negatives) gets a click at its most interior voxel; positive for a
    false negative, negative for a false positive.
    """
    p, t = as_mask(pred, "pred"), as_mask(truth, "truth")
    if p.shape != t.shape:
        raise ValueError(f"pred {p.shape} and truth {t.shape} must have the same shape")
    keep = np.ones(p.shape, dtype=bool) if ignore is None else ~as_mask(ignore, "ignore")
    best: tuple[int, bool, np.ndarray, BBox] | None = None
    for positive, error in ((True, t & ~p & keep), (False, p & ~t & keep)):
        box = mask_bbox(error)
        if box is None:
            continue
        ids, count = connected_components(error[box])
        sizes = np.bincount(ids.reshape(-1), minlength=count + 1)[1:]
        largest = int(np.argmax(sizes))
        if best is None or sizes[largest] > best[0]:
            best = (int(sizes[largest]), positive, ids == largest + 1, box)
    if best is None:
        return None
    _, positive, component, box = best
    k, j, i = interior_voxel(component, spacing)
    return (k + box[0].start, j + box[1].start, i + box[2].start), positive


def distance_inside(mask: np.ndarray, spacing: Sequence[float] | None = None) -> np.ndarray:
    """Distance (mm) from each voxel of ``mask`` to the nearest voxel outside it (0 outside).

    The array's outside counts as "outside the mask" (a lesion cut by the image border is
    shallow there). Used to draw first clicks near a lesion's middle.
    """
    m = as_mask(mask, "mask")
    out = np.zeros(m.shape, dtype=np.float32)
    box = mask_bbox(m, pad=1)
    if box is None:
        return out
    sub = np.pad(m[box], 1)
    depth = distance_to(~sub, check_spacing(spacing))[1:-1, 1:-1, 1:-1]
    out[box] = np.where(m[box], depth, 0.0)
    return out
