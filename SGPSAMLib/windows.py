"""The window policy of an interactive session: which crop a click goes to, which crop owns a
voxel, and where a large lesion continues beyond a crop's border.

:class:`~SGPSAMLib.session.InteractiveSession` runs the model; every decision about *windows*
(the 128^3 crop frames, :class:`~SGPSAMLib.region.Region`) is made here, each a deliberate
choice:

- **Routing** (:func:`route`). A click inside existing windows goes to the one whose centre is
  nearest (ties: the oldest). A click outside every window returns None: a positive one then
  starts a new window, a negative one is only stored.
- **Reuse** (:func:`window_for_click`, :func:`reusable_window`). A new window is centred on its
  first click, unless an already encoded window holds the click in its central half (within
  ``size / 4`` crop voxels of its centre along every axis): that one is reused, so the click
  costs only a decode (Slicer's "Initialize", nearby lesions of a batch case).
- **Ownership** (:func:`owned_voxels`, :func:`takeover_box`). Each original voxel belongs to
  the window, among those whose cube holds it, whose centre is nearest (ties: the oldest): a
  Voronoi split, so the window that was clicked owns the voxels around the click and a negative
  click always takes effect there. A window's first prediction also takes over the foreground
  of other windows that it now owns.
- **Border extension** (:func:`faces_to_extend`, :func:`extension_window`,
  :func:`border_seed`). When a prediction touches one of its window's faces (a foreground logit
  cell in the outer layer) and the image continues beyond that face, a neighbour window shifted
  by half a window along that axis is added, unless a window already sits within a quarter
  window of it; it is prompted with one positive seed at the foreground cell of the overlap
  nearest the overlap's centre.

All geometry goes through :mod:`SGPSAMLib.region` (crop frames) and :mod:`SGPSAMLib.geometry`
(the image); boxes are :mod:`SGPSAMLib.boxes`.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .boxes import BBox, bbox_intersection, bbox_shape, bbox_union, boxes_overlap
from .geometry import Volume
from .region import Region, box_crop_axes, crop_coordinates_of_box

__all__ = ["RegionState", "route", "in_central_half", "window_for_click", "reusable_window",
           "overlapping", "takeover_box", "owned_voxels", "faces_to_extend",
           "extension_window", "border_seed"]

# Voxels per chunk when computing ownership in a box (bounds temporary memory).
_CHUNK_VOXELS = 1 << 21


@dataclass
class RegionState:
    """A crop window of the session and the model's last answer for it.

    Attributes:
        id: index in ``SessionState.regions``.
        region: the crop frame.
        group: id of the lesion's first region (extension windows share it).
        logits: (O, O, O) float32 CPU tensor, the model's last logits for it (None before
            decoding): the decoder's low-res grid (O = L), or the crop's own grid (O = S) for a
            model with a refinement head.
        bbox: array-order box of the foreground of its last prediction (None if empty).
        footprint: array-order box of the original voxels its cube may hold.
        seeds: (N, 3) crop indices of internal positive seeds (extension windows).
    """

    id: int
    region: Region
    group: int
    footprint: BBox | None
    logits: torch.Tensor | None = None
    bbox: BBox | None = None
    seeds: list[np.ndarray] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------
# Routing and reuse.

def route(regions: Sequence[RegionState], ras: np.ndarray) -> RegionState | None:
    """The window whose cube holds ``ras`` (RAS mm) with the nearest centre (ties: oldest)."""
    best, best_dist = None, np.inf
    for rs in regions:
        if rs.region.contains_ras(ras):
            dist = float(np.sum((np.asarray(rs.region.centre_ras) - ras) ** 2))
            if dist < best_dist:
                best, best_dist = rs, dist
    return best


def in_central_half(region: Region, ras: np.ndarray) -> bool:
    """Whether ``ras`` lies within ``size / 4`` crop voxels of the centre along every axis."""
    margin = region.size / 4 - region.centre_index
    return bool(region.contains_ras(ras, margin_voxels=margin))


def window_for_click(ras: np.ndarray, prepared: Region | None, size: int,
                     spacing_mm: float) -> Region:
    """The window a new lesion's first click opens: the prepared one if it holds the click in
    its central half, else one centred on the click."""
    if prepared is not None and in_central_half(prepared, ras):
        return prepared
    return Region(tuple(ras), size, spacing_mm)


def reusable_window(encoded: Iterable[Region], ras: np.ndarray, volume: Volume
                    ) -> Region | None:
    """The first of ``encoded`` (pass the newest first) that holds ``ras`` in its central half
    and whose centre lies in the image (so it can be prepared again), or None."""
    for region in encoded:
        if in_central_half(region, ras) and volume.contains_ras(np.asarray(region.centre_ras)):
            return region
    return None


# ----------------------------------------------------------------------------------------------
# Ownership.

def overlapping(regions: Sequence[RegionState], rs: RegionState) -> list[RegionState]:
    """The other decoded windows whose footprint overlaps ``rs``'s."""
    return [r for r in regions if r.id != rs.id and r.logits is not None
            and boxes_overlap(r.footprint, rs.footprint)]


def takeover_box(rs: RegionState, others: Sequence[RegionState]) -> BBox | None:
    """Where a window's new prediction must be written besides its own foreground: its
    previous foreground, and on its first prediction the others' foreground it now covers."""
    hint = rs.bbox
    if rs.logits is None:  # first prediction: take over the voxels it now owns
        for other in others:
            hint = bbox_union(hint, bbox_intersection(other.bbox, rs.footprint))
    return hint


def owned_voxels(rs: RegionState, box: BBox, others: Sequence[RegionState], volume: Volume
                 ) -> np.ndarray | None:
    """Bool (box shape) of the voxels ``rs`` owns among ``others``, or None when it owns the
    whole box (nearest centre in crop voxels; ties: the older window)."""
    others = [o for o in others if boxes_overlap(o.footprint, box)]
    corners_kji = np.array([[k, j, i] for k in (box[0].start, box[0].stop - 1)
                            for j in (box[1].start, box[1].stop - 1)
                            for i in (box[2].start, box[2].stop - 1)], dtype=np.float64)
    inside_all = bool(np.all(rs.region.contains_ras(volume.array_index_to_ras(corners_kji))))
    if inside_all and not others:
        return None
    offsets = [(np.asarray(rs.region.centre_ras) - np.asarray(o.region.centre_ras))
               / rs.region.spacing_mm for o in others]
    separable = box_crop_axes(volume, rs.region, box)
    if separable is not None:
        return _owned_separable(rs, others, offsets, separable, bbox_shape(box))
    return _owned_general(rs, others, offsets, box, volume)


def _wins(other: RegionState, rs: RegionState, dist_other, dist):
    """Where ``other`` is nearer than ``rs`` (or as near and older)."""
    return (dist_other < dist) | ((dist_other == dist) & (other.id < rs.id))


def _owned_separable(rs: RegionState, others: Sequence[RegionState], offsets: list[np.ndarray],
                     separable: list[tuple[int, np.ndarray]], shape: tuple[int, int, int]
                     ) -> np.ndarray:
    """Images aligned with R, A, S: per-axis terms broadcast over the box (no 3-D grid)."""
    size, centre = rs.region.size, rs.region.centre_index
    mine = np.ones((1, 1, 1), dtype=bool)
    dist = np.zeros((1, 1, 1))
    theirs = [(np.ones((1, 1, 1), dtype=bool), np.zeros((1, 1, 1))) for _ in others]
    for dim, (axis, x) in enumerate(separable):
        axis_shape = [1, 1, 1]
        axis_shape[dim] = -1
        x = x.reshape(axis_shape)
        mine = mine & (x >= -0.5) & (x <= size - 0.5)
        dist = dist + (x - centre) ** 2
        for n, offset in enumerate(offsets):
            xo = x + offset[axis]
            inside, d = theirs[n]
            theirs[n] = (inside & (xo >= -0.5) & (xo <= size - 0.5), d + (xo - centre) ** 2)
    for other, (inside, d) in zip(others, theirs):
        mine = mine & ~(inside & _wins(other, rs, d, dist))
    return np.broadcast_to(mine, shape)


def _owned_general(rs: RegionState, others: Sequence[RegionState], offsets: list[np.ndarray],
                   box: BBox, volume: Volume) -> np.ndarray:
    """Oblique images: crop coordinates of every voxel, in chunks of rows along K."""
    size, centre = rs.region.size, rs.region.centre_index
    shape = bbox_shape(box)
    owned = np.zeros(shape, dtype=bool)
    owned_t = torch.from_numpy(owned)
    offsets_t = [torch.from_numpy(offset.astype(np.float32)) for offset in offsets]
    rows = max(1, _CHUNK_VOXELS // max(1, shape[1] * shape[2]))
    for first in range(0, shape[0], rows):
        crop = crop_coordinates_of_box(volume, rs.region, box, first=first, rows=rows)
        mine = ((crop >= -0.5) & (crop <= size - 0.5)).all(dim=-1)
        dist = ((crop - centre) ** 2).sum(dim=-1)
        for other, offset in zip(others, offsets_t):
            theirs = crop + offset
            inside = ((theirs >= -0.5) & (theirs <= size - 0.5)).all(dim=-1)
            mine &= ~(inside & _wins(other, rs, ((theirs - centre) ** 2).sum(dim=-1), dist))
        owned_t[first:first + crop.shape[0]] = mine
    return owned


# ----------------------------------------------------------------------------------------------
# Border extension.

def faces_to_extend(rs: RegionState, ras_bounds: tuple[np.ndarray, np.ndarray]
                    ) -> list[tuple[int, int]]:
    """(axis, -1 | +1) of the faces the window's foreground touches where the image (whose
    ``Volume.ras_bounds`` are given) continues beyond."""
    positive = rs.logits > 0
    if not bool(positive.any()):
        return []
    low, high = ras_bounds
    spacing = rs.region.spacing_mm
    half = rs.region.size / 2 * spacing
    faces = []
    for axis in range(3):
        centre = rs.region.centre_ras[axis]
        if bool(positive.select(axis, 0).any()) and low[axis] < centre - half - spacing:
            faces.append((axis, -1))
        if bool(positive.select(axis, positive.shape[axis] - 1).any()) and \
                high[axis] > centre + half + spacing:
            faces.append((axis, 1))
    return faces


def extension_window(rs: RegionState, axis: int, direction: int,
                     regions: Sequence[RegionState]) -> Region | None:
    """The neighbour window half a window beyond a face, or None when a window already sits
    within a quarter window of it."""
    region = rs.region
    candidate = region.shifted(axis, direction * region.size / 2)
    near = region.size / 4 * region.spacing_mm
    if any(np.max(np.abs(np.asarray(r.region.centre_ras) - np.asarray(candidate.centre_ras)))
           < near for r in regions):
        return None
    return candidate


def border_seed(rs: RegionState, axis: int, direction: int, candidate: Region
                ) -> np.ndarray | None:
    """Crop index (in ``candidate``) of the overlap's foreground cell nearest its centre."""
    size = rs.region.size
    scale = size / rs.logits.shape[0]
    cells = torch.nonzero(rs.logits > 0).numpy().astype(np.float64)
    crop = scale * cells + (scale - 1.0) / 2.0  # logit cell centres in crop indices
    half = rs.region.centre_index
    in_overlap = crop[:, axis] >= half if direction > 0 else crop[:, axis] <= half
    crop = crop[in_overlap]
    if not len(crop):
        return None
    target = np.full(3, half)
    target[axis] += direction * size / 4
    nearest = crop[np.argmin(np.sum((crop - target) ** 2, axis=1))]
    return candidate.ras_to_crop_points(rs.region.crop_to_ras_points(nearest))
