"""Array-order boxes: the (K, J, I) slices a prediction changed, a region may hold, a lesion fills.

A box is a tuple of three ``slice`` objects with explicit ``start``/``stop`` (no step), in the
order of ``array[k, j, i]``. None or a box with a zero-length side means "nothing". The session,
the window policy, batch and the Slicer module pass boxes around, so they live here, apart from
the crop frame (:mod:`SGPSAMLib.region`): pure Python plus one numpy helper, no torch, so the
Slicer module can import them before PyTorch is installed.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy only for the type of foreground_box's input
    import numpy as np

__all__ = ["BBox", "bbox_is_empty", "bbox_union", "bbox_intersection", "boxes_overlap",
           "bbox_shape", "foreground_box"]

#: Array-order (K, J, I) box of a volume: three ``slice`` objects with explicit start/stop.
BBox = tuple[slice, slice, slice]


def bbox_is_empty(box: BBox | None) -> bool:
    """True for None or a box with a zero-length side."""
    return box is None or any(s.stop <= s.start for s in box)


def bbox_union(*boxes: BBox | None) -> BBox | None:
    """Smallest box holding every non-empty box given (None if there is none)."""
    boxes = [b for b in boxes if not bbox_is_empty(b)]
    if not boxes:
        return None
    return tuple(slice(min(b[d].start for b in boxes), max(b[d].stop for b in boxes))
                 for d in range(3))


def bbox_intersection(a: BBox | None, b: BBox | None) -> BBox | None:
    """The box both hold, or None when they do not overlap (or either is empty)."""
    if bbox_is_empty(a) or bbox_is_empty(b):
        return None
    box = tuple(slice(max(x.start, y.start), min(x.stop, y.stop)) for x, y in zip(a, b))
    return None if bbox_is_empty(box) else box


def boxes_overlap(a: BBox | None, b: BBox | None) -> bool:
    """Whether two boxes share at least one voxel."""
    return bbox_intersection(a, b) is not None


def bbox_shape(box: BBox) -> tuple[int, int, int]:
    """(nK, nJ, nI) voxels of a box."""
    return tuple(s.stop - s.start for s in box)


def foreground_box(patch: np.ndarray, box: BBox | None) -> BBox | None:
    """Tight array-order box of the nonzero voxels of ``patch`` placed at ``box`` (or None)."""
    import numpy as np

    if box is None or not patch.any():
        return None
    out = []
    for axis in range(3):
        other = tuple(d for d in range(3) if d != axis)
        idx = np.flatnonzero(patch.any(axis=other))
        out.append(slice(box[axis].start + int(idx[0]), box[axis].start + int(idx[-1]) + 1))
    return tuple(out)
