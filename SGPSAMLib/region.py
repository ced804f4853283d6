"""The model's crop frame: a RAS-aligned cube of ``size`` voxels at ``spacing_mm``.

SAM-Med3D sees a 128^3 crop at 1.5 mm whose tensor axes (dim2, dim3, dim4) follow R, A, S (the
slice axis last, as it was trained; reference/sam_med3d.md §5). A :class:`Region` is such a
crop placed in the patient: crop index ``(a, b, c)`` is the centre of the voxel at
``RAS = centre_ras + spacing_mm * ((a, b, c) - (size - 1) / 2)``.

Three operations link a region and an image of any geometry (oblique, anisotropic, flipped,
permuted axes), each with exactly one interpolation so the result does not depend on how the
image happens to be stored:

- :func:`sample_region` reads the original array at the crop voxel centres (trilinear);
- :func:`normalize_crop` applies SAM-Med3D's intensity normalisation;
- :func:`map_logits_to_volume` evaluates the 32^3 low-res logits at the original voxel centres.

All conversions between array index, IJK and RAS go through :mod:`SGPSAMLib.geometry`; this
module only composes the 4x4 matrices it gets from there with the crop frame's own affine map.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .boxes import BBox, bbox_union
from .geometry import Volume, array_index_to_ijk, ijk_to_array_index, transform_points
from .options import MODALITIES, look_up_option

__all__ = [
    "Region", "sample_region", "normalize_crop", "resolve_modality",
    "map_logits_to_volume", "crop_coordinates_of_box", "box_crop_axes", "footprint_bbox",
    "CT_CLIP_HU", "CT_AUTO_MIN_HU",
]

#: CT intensities are clipped to this window before normalisation (SAM-Med3D training).
CT_CLIP_HU = (-1000.0, 1000.0)
#: "auto" modality: a volume whose minimum is below this is CT (air is about -1000 HU).
CT_AUTO_MIN_HU = -500.0

# Voxels per chunk when evaluating grids, to bound temporary memory (about 100 MB).
_CHUNK_VOXELS = 1 << 22
# Off-axis drift (voxels) below which an image counts as aligned with R, A, S.
_ALIGNED_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Region:
    """A RAS-aligned cubic crop: hashable, so it keys the embedding cache.

    Attributes:
        centre_ras: (3,) RAS mm of the cube's centre (between voxels when ``size`` is even).
        size: voxels per side (the model's ``image_size``, 128).
        spacing_mm: isotropic voxel size of the crop (the model's ``crop_spacing_mm``, 1.5).
    """

    centre_ras: tuple[float, float, float]
    size: int = 128
    spacing_mm: float = 1.5

    def __post_init__(self) -> None:
        centre = np.asarray(self.centre_ras, dtype=np.float64).reshape(-1)
        if centre.shape != (3,) or not np.all(np.isfinite(centre)):
            raise ValueError(f"Region.centre_ras must be 3 finite RAS mm values, "
                             f"got {self.centre_ras!r}")
        if int(self.size) != self.size or self.size < 2:
            raise ValueError(f"Region.size must be an int >= 2, got {self.size!r}")
        if not np.isfinite(self.spacing_mm) or self.spacing_mm <= 0:
            raise ValueError(f"Region.spacing_mm must be > 0, got {self.spacing_mm!r}")
        object.__setattr__(self, "centre_ras", tuple(float(v) for v in centre))
        object.__setattr__(self, "size", int(self.size))
        object.__setattr__(self, "spacing_mm", float(self.spacing_mm))

    @property
    def centre_index(self) -> float:
        """Crop index of the centre along every axis, ``(size - 1) / 2``."""
        return (self.size - 1) / 2.0

    @property
    def crop_to_ras(self) -> np.ndarray:
        """4x4 float64: crop index (a, b, c, 1) -> RAS mm."""
        matrix = np.eye(4)
        matrix[:3, :3] *= self.spacing_mm
        matrix[:3, 3] = np.asarray(self.centre_ras) - self.spacing_mm * self.centre_index
        return matrix

    @property
    def ras_to_crop(self) -> np.ndarray:
        """4x4 float64: RAS mm -> crop index, written in closed form (a scaling + shift)."""
        matrix = np.eye(4)
        matrix[:3, :3] /= self.spacing_mm
        matrix[:3, 3] = self.centre_index - np.asarray(self.centre_ras) / self.spacing_mm
        return matrix

    def ras_to_crop_points(self, ras: np.ndarray) -> np.ndarray:
        """(N, 3) or (3,) RAS mm -> continuous crop indices (a, b, c), float64."""
        return transform_points(self.ras_to_crop, ras)

    def crop_to_ras_points(self, crop: np.ndarray) -> np.ndarray:
        """(N, 3) or (3,) crop indices -> RAS mm, float64."""
        return transform_points(self.crop_to_ras, crop)

    def contains_ras(self, ras: np.ndarray, margin_voxels: float = 0.5) -> np.ndarray | bool:
        """Whether RAS points lie in the crop's voxel-centre grid +- ``margin_voxels``.

        With the default half voxel this is the cube the crop's voxels cover (its footprint).
        """
        crop = self.ras_to_crop_points(ras)
        inside = np.all((crop >= -margin_voxels) & (crop <= self.size - 1 + margin_voxels),
                        axis=-1)
        return bool(inside) if np.ndim(inside) == 0 else inside

    def shifted(self, axis: int, voxels: float) -> Region:
        """The same cube moved by ``voxels`` crop voxels along crop axis ``axis`` (R, A or S)."""
        centre = np.asarray(self.centre_ras, dtype=np.float64)
        centre[axis] += voxels * self.spacing_mm
        return Region(tuple(centre), self.size, self.spacing_mm)

    def corners_ras(self, margin_voxels: float = 0.5) -> np.ndarray:
        """(8, 3) RAS mm corners of the cube covered by the crop's voxels (+- margin)."""
        lo, hi = -margin_voxels, self.size - 1 + margin_voxels
        corners = np.array([[a, b, c] for a in (lo, hi) for b in (lo, hi) for c in (lo, hi)])
        return self.crop_to_ras_points(corners)


# ----------------------------------------------------------------------------------------------
# Boxes of original voxels (array order, :mod:`SGPSAMLib.boxes`) that a crop reaches.

def _box_from_ijk_range(lo_ijk: np.ndarray, hi_ijk: np.ndarray, volume: Volume) -> BBox | None:
    """Inclusive integer IJK range -> array-order box clipped to the image (None if empty)."""
    shape_ijk = np.asarray(volume.shape_ijk)
    lo = np.maximum(np.asarray(lo_ijk, dtype=np.int64), 0)
    hi = np.minimum(np.asarray(hi_ijk, dtype=np.int64), shape_ijk - 1)
    if np.any(hi < lo):
        return None
    lo_kji = ijk_to_array_index(lo).astype(np.int64)
    hi_kji = ijk_to_array_index(hi).astype(np.int64)
    return tuple(slice(int(a), int(b) + 1) for a, b in zip(lo_kji, hi_kji))


def _ijk_of_ras_box(volume: Volume, corners_ras: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Continuous IJK bounds of the image-space box holding the given RAS corners."""
    ijk = volume.ras_to_ijk_points(corners_ras)
    return ijk.min(axis=0), ijk.max(axis=0)


def footprint_bbox(volume: Volume, region: Region) -> BBox | None:
    """Array-order box of the original voxels whose centres may lie in the region's cube."""
    lo, hi = _ijk_of_ras_box(volume, region.corners_ras())
    return _box_from_ijk_range(np.ceil(lo - 1e-6), np.floor(hi + 1e-6), volume)


def _affine_steps(matrix: np.ndarray, to_ijk, start: Sequence[float]
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Origin (3,) and per-grid-axis steps (3, 3) of an affine map on a regular index grid.

    ``to_ijk`` turns a grid index into the input of ``matrix`` (identity for crop indices,
    :func:`array_index_to_ijk` for array indices), so the axis order comes from geometry.py.
    """
    start = np.asarray(start, dtype=np.float64)
    base = np.vstack([start, start + np.eye(3)])
    mapped = transform_points(matrix, to_ijk(base))
    return mapped[0], mapped[1:] - mapped[0]


def _grid(origin: np.ndarray, steps: np.ndarray, shape: Sequence[int],
          first: int = 0) -> torch.Tensor:
    """Evaluate ``origin + sum_d index_d * steps[d]`` on a grid -> (n0, n1, n2, 3) float32.

    ``first`` offsets the index of grid axis 0 (for chunked evaluation).
    """
    axes = [torch.arange(n, dtype=torch.float64) for n in shape]
    axes[0] = axes[0] + first
    steps_t = torch.from_numpy(np.asarray(steps, dtype=np.float64))
    terms = [axes[d][:, None] * steps_t[d] for d in range(3)]
    out = (terms[0] + torch.from_numpy(np.asarray(origin, dtype=np.float64))).float()
    return (out[:, None, None, :] + terms[1].float()[None, :, None, :]
            + terms[2].float()[None, None, :, :])


def _aligned_axes(steps: np.ndarray, extent: int) -> list[int] | None:
    """For each grid axis, the one output axis its step moves along; None if oblique.

    A step with off-axis components below 1e-3 voxel over ``extent`` steps counts as aligned
    (direction cosines read from files are rarely exact zeros).
    """
    steps = np.asarray(steps, dtype=np.float64)
    axes = np.argmax(np.abs(steps), axis=1)
    if sorted(axes.tolist()) != [0, 1, 2]:
        return None
    off_axis = steps.copy()
    off_axis[np.arange(3), axes] = 0.0
    if np.abs(off_axis).sum(axis=1).max() * max(extent, 1) > _ALIGNED_TOLERANCE:
        return None
    return [int(a) for a in axes]


def _linear_weights(x: np.ndarray, n: int, order: int = 1
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """1-D interpolation at continuous indices ``x`` of a length-``n`` axis, edge-clamped.

    Returns (i0, i1, w): value = v[i0] * (1 - w) + v[i1] * w (nearest: i0 == i1, w == 0).
    """
    xc = np.clip(x, 0.0, n - 1.0)
    if order == 0:
        i0 = np.clip(np.floor(xc + 0.5), 0, n - 1).astype(np.int64)
        return i0, i0, np.zeros_like(xc)
    i0 = np.clip(np.floor(xc), 0, max(n - 2, 0)).astype(np.int64)
    return i0, np.minimum(i0 + 1, n - 1), xc - i0


def _interp_axis(values: np.ndarray, axis: int, i0: np.ndarray, i1: np.ndarray, w: np.ndarray,
                 valid: np.ndarray) -> np.ndarray:
    """Linear interpolation of ``values`` along ``axis`` (float32 out); 0 where not ``valid``.

    numpy gathers (single-threaded) on purpose: ``torch.index_select`` on a strided int16 view
    is orders of magnitude slower, and OpenMP threads stall on a busy 2-core machine.
    """
    shape = [1] * values.ndim
    shape[axis] = -1
    out = np.take(values, i0, axis=axis).astype(np.float32, copy=False)
    out *= ((1.0 - w) * valid).astype(np.float32).reshape(shape)
    if not np.array_equal(i0, i1):
        second = np.take(values, i1, axis=axis).astype(np.float32, copy=False)
        second *= (w * valid).astype(np.float32).reshape(shape)
        out += second
    return out


# ----------------------------------------------------------------------------------------------
# Image -> crop.

def sample_region(volume: Volume, region: Region, order: int = 1) -> np.ndarray:
    """Resample the original image at the crop's voxel centres -> (size, size, size) float32.

    One interpolation from the original array (trilinear for ``order=1``, nearest for 0), so an
    oblique or anisotropic image is not resampled twice. Only the sub-block of original voxels
    the crop needs (+1 voxel margin) is read. Crop voxels outside the image (beyond half a voxel
    from the outer voxel centres) are 0, as SAM-Med3D pads with 0; within that half voxel the
    edge value is used (ITK's convention).

    When the image axes are parallel to R, A, S (any order or sign: most scans), trilinear
    interpolation is done as three 1-D passes straight from the stored dtype (the same result
    as one trilinear interpolation, at a fraction of the cost); oblique images use
    ``grid_sample`` on the sub-block.

    Args:
        volume: the image with its geometry.
        region: the crop frame.
        order: 1 = trilinear, 0 = nearest neighbour.

    Returns:
        Crop array indexed ``[a, b, c]`` along R, A, S.
    """
    if order not in (0, 1):
        raise ValueError(f"order must be 0 (nearest) or 1 (trilinear), got {order!r}")
    size = region.size
    crop_to_ijk = volume.ras_to_ijk @ region.crop_to_ras
    shape_ijk = np.asarray(volume.shape_ijk, dtype=np.int64)
    lo, hi = _ijk_of_ras_box(volume, region.corners_ras(margin_voxels=0.0))
    # Trilinear reads floor(x) and floor(x) + 1; one more voxel of margin against rounding.
    lo_idx = np.maximum(np.floor(lo).astype(np.int64) - 1, 0)
    hi_idx = np.minimum(np.floor(hi).astype(np.int64) + 2, shape_ijk - 1)
    out = np.zeros((size, size, size), dtype=np.float32)
    # Nothing to read when the cube misses the image (including its half-voxel border).
    if np.any(hi < -0.5) or np.any(lo > shape_ijk - 0.5) or np.any(hi_idx < lo_idx):
        return out
    box = _box_from_ijk_range(lo_idx, hi_idx, volume)
    sub = volume.array[box]  # (K, J, I) view of the original: nothing converted yet
    origin, steps = _affine_steps(crop_to_ijk, lambda p: p, (0.0, 0.0, 0.0))
    axes = _aligned_axes(steps, size)
    if axes is not None:
        out[...] = _sample_aligned(sub, origin, steps, axes, lo_idx, shape_ijk, size, order)
        return out
    with torch.inference_mode():
        sub_t = torch.from_numpy(np.ascontiguousarray(sub, dtype=np.float32))
        torch.from_numpy(out).copy_(
            _sample_oblique(sub_t, origin, steps, lo_idx, shape_ijk, size, order))
    return out


def _sample_aligned(sub: np.ndarray, origin: np.ndarray, steps: np.ndarray, axes: list[int],
                    lo_idx: np.ndarray, shape_ijk: np.ndarray, size: int, order: int
                    ) -> np.ndarray:
    """Separable sampling: crop axis c moves only along IJK axis ``axes[c]``."""
    t = np.arange(size, dtype=np.float64)
    result = sub
    # Longest axis first: each pass shrinks one axis to ``size``, so the intermediates stay small.
    for ijk_axis in sorted((0, 1, 2), key=lambda r: -sub.shape[2 - r]):
        crop_axis = axes.index(ijk_axis)
        x = origin[ijk_axis] + steps[crop_axis, ijk_axis] * t
        n = int(shape_ijk[ijk_axis])
        i0, i1, w = _linear_weights(x, n, order)
        valid = (x >= -0.5) & (x <= n - 0.5)
        dim = 2 - ijk_axis  # array order is (k, j, i)
        result = _interp_axis(result, dim, i0 - lo_idx[ijk_axis], i1 - lo_idx[ijk_axis], w,
                              valid)
    # Array dim 2 - axes[c] holds crop axis c.
    return result.transpose([2 - axes[c] for c in range(3)])


def _sample_oblique(sub: torch.Tensor, origin: np.ndarray, steps: np.ndarray,
                    lo_idx: np.ndarray, shape_ijk: np.ndarray, size: int, order: int
                    ) -> torch.Tensor:
    """grid_sample on the sub-block at the crop voxel centres (any direction matrix)."""
    sub = sub[None, None]  # (1, 1, K, J, I) float32
    n_sub = np.asarray(array_index_to_ijk(np.asarray(sub.shape[2:])), dtype=np.float64)
    # Continuous IJK -> grid_sample's normalised coordinates of the sub-block (align_corners=True:
    # -1 and +1 are the outer voxel centres); the grid's last axis is ordered (i, j, k).
    scale = 2.0 / np.maximum(n_sub - 1.0, 1.0)
    origin_n = (origin - lo_idx) * scale - 1.0
    steps_n = steps * scale
    mode = "bilinear" if order == 1 else "nearest"
    # Outside test only when a crop corner leaves the image (affine maps keep boxes convex).
    corners = np.array([[a, b, c] for a in (0, size - 1) for b in (0, size - 1)
                        for c in (0, size - 1)], dtype=np.float64)
    corner_ijk = origin + corners @ steps
    needs_outside = bool(np.any(corner_ijk < -0.5) or np.any(corner_ijk > shape_ijk - 0.5))
    lo_n = torch.from_numpy(((-0.5 - lo_idx) * scale - 1.0).astype(np.float32))
    hi_n = torch.from_numpy(((shape_ijk - 0.5 - lo_idx) * scale - 1.0).astype(np.float32))
    out = torch.empty((size, size, size), dtype=torch.float32)
    rows = max(1, _CHUNK_VOXELS // (size * size))
    for first in range(0, size, rows):
        n0 = min(rows, size - first)
        grid = _grid(origin_n, steps_n, (n0, size, size), first=first)
        values = F.grid_sample(sub, grid[None], mode=mode, padding_mode="border",
                               align_corners=True)[0, 0]
        if needs_outside:
            values *= ((grid >= lo_n) & (grid <= hi_n)).all(dim=-1)
        out[first:first + n0] = values
    return out


def resolve_modality(values: np.ndarray | float, modality: str = "auto") -> str:
    """"CT" or "MR" from a user setting; "auto" is CT when the minimum is below -500 (HU air).

    Args:
        values: the whole volume's array (or its minimum): "auto" looks at the minimum only.
        modality: "CT", "MR" or "auto" (case-insensitive).
    """
    modality = look_up_option(modality, MODALITIES, "modality", case_sensitive=False)
    if modality != "auto":
        return modality
    minimum = float(np.min(values))
    return "CT" if minimum < CT_AUTO_MIN_HU else "MR"


def normalize_crop(crop: np.ndarray, modality: str) -> np.ndarray:
    """SAM-Med3D intensity normalisation of a crop -> float32 array of the same shape.

    CT is first clipped to [-1000, 1000] HU. Then (torchio ``ZNormalization`` with
    ``masking_method=x > 0``) the mean and unbiased std of the voxels > 0 of the crop are
    subtracted/divided over the whole crop, so padded zeros become ``-mean/std``.
    Guard (torchio would raise): if fewer than two voxels are > 0 or their std is 0, the whole
    crop's statistics are used instead; if that std is 0 too, the crop is only centred.

    Args:
        crop: (S, S, S) intensities from :func:`sample_region`.
        modality: "CT" or "MR"; "auto" decides from this array's minimum (the session decides
            from the whole volume instead, see :func:`resolve_modality`).
    """
    modality = resolve_modality(crop, modality)
    data = np.asarray(crop, dtype=np.float32)
    if modality == "CT":
        data = np.clip(data, CT_CLIP_HU[0], CT_CLIP_HU[1])
    values = data[data > 0]
    if values.size < 2 or float(values.std(ddof=1)) == 0.0:
        values = data.reshape(-1)
    mean = float(values.mean(dtype=np.float64))
    std = float(values.std(ddof=1, dtype=np.float64)) if values.size > 1 else 0.0
    out = data - np.float32(mean)
    if std > 0 and np.isfinite(std):
        out /= np.float32(std)
    return out.astype(np.float32, copy=False)


# ----------------------------------------------------------------------------------------------
# Crop logits -> image.

def crop_coordinates_of_box(volume: Volume, region: Region, box: BBox,
                            first: int = 0, rows: int | None = None) -> torch.Tensor:
    """Continuous crop indices (a, b, c) of the original voxel centres in an array-order box.

    Returns a (K, J, I, 3) float32 tensor for ``box`` (or rows ``first:first + rows`` of it along
    K, for chunking).
    """
    start = [s.start for s in box]
    shape = [s.stop - s.start for s in box]
    ijk_to_crop = region.ras_to_crop @ volume.ijk_to_ras
    origin, steps = _affine_steps(ijk_to_crop, array_index_to_ijk, start)
    if rows is not None:
        shape[0] = min(rows, shape[0] - first)
    return _grid(origin, steps, shape, first=first)


def box_crop_axes(volume: Volume, region: Region, box: BBox
                  ) -> list[tuple[int, np.ndarray]] | None:
    """Separable form of :func:`crop_coordinates_of_box` for images aligned with R, A, S.

    Returns, per array axis d (K, J, I), ``(crop_axis, x)``: voxel ``n`` of the box along d has
    crop index ``x[n]`` along ``crop_axis`` (its other crop indices do not depend on it); None
    when the image is oblique (use :func:`crop_coordinates_of_box`).
    """
    start = [s.start for s in box]
    shape = [s.stop - s.start for s in box]
    ijk_to_crop = region.ras_to_crop @ volume.ijk_to_ras
    origin, steps = _affine_steps(ijk_to_crop, array_index_to_ijk, start)
    axes = _aligned_axes(steps, max(volume.array.shape))
    if axes is None:
        return None
    return [(axes[d], origin[axes[d]] + steps[d, axes[d]] * np.arange(shape[d], dtype=np.float64))
            for d in range(3)]


def map_logits_to_volume(low_res_logits: torch.Tensor, region: Region, volume: Volume,
                         bbox_hint: BBox | None = None) -> tuple[BBox | None, np.ndarray]:
    """Threshold the region's low-res logits at the original voxel centres.

    For every original voxel inside the region's cube, its continuous crop index ``x`` is
    turned into a low-res coordinate ``u = (x - 1.5) / 4`` (cell ``u``'s centre is crop
    index ``4u + 1.5``) and the 32^3 logits are interpolated there, trilinearly with edge
    clamping: the same value as trilinear upsampling to 128^3 (``align_corners=False``)
    evaluated at ``x``, without the upsampled volume and without a second resampling. The
    voxel is foreground when the logit is > 0 (sigmoid > 0.5).

    Only the box of original voxels around the cells with logit > 0 (dilated by one cell, so no
    foreground is missed: outside it every interpolation reads non-positive cells), intersected
    with the cube and the image, is evaluated, plus ``bbox_hint``.

    Args:
        low_res_logits: (L, L, L) (or (1, 1, L, L, L)) logits on the crop's axes.
        region: the crop frame the logits belong to.
        volume: the image whose grid receives the mask.
        bbox_hint: an array-order box to include in the patch as well (e.g. the region's
            previous prediction, so the caller can overwrite it in one go), or None.

    Returns:
        (box, patch): array-order slices (K, J, I) and a uint8 0/1 patch of that box's shape;
        voxels outside the region's cube are 0. ``(None, empty array)`` if there is nothing.
    """
    logits = low_res_logits.detach().to("cpu", torch.float32)
    logits = logits.reshape(logits.shape[-3:])
    size_l = logits.shape[0]
    size = region.size
    positive = logits > 0
    box = None
    if bool(positive.any()):
        cells = []
        for dim in range(3):
            other = tuple(d for d in range(3) if d != dim)
            idx = torch.nonzero(positive.any(dim=other[1]).any(dim=other[0])).reshape(-1)
            cells.append((int(idx.min()) - 1, int(idx.max()) + 1))
        scale = size / size_l
        offset = (scale - 1.0) / 2.0  # cell u's centre is at crop index scale * u + offset
        lo = np.array([max(scale * c[0] + offset, -0.5) for c in cells])
        hi = np.array([min(scale * c[1] + offset, size - 0.5) for c in cells])
        corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1])
                            for c in (lo[2], hi[2])])
        lo_ijk, hi_ijk = _ijk_of_ras_box(volume, region.crop_to_ras_points(corners))
        box = _box_from_ijk_range(np.ceil(lo_ijk - 1e-6), np.floor(hi_ijk + 1e-6), volume)
    box = bbox_union(box, bbox_hint)
    if box is None:
        return None, np.zeros((0, 0, 0), dtype=np.uint8)
    shape = tuple(s.stop - s.start for s in box)
    patch = np.zeros(shape, dtype=np.uint8)
    if not bool(positive.any()):
        return box, patch
    separable = box_crop_axes(volume, region, box)
    if separable is not None:  # three 1-D passes: (L, L, L) -> (nK, L, L) -> ... -> box
        scale = size / size_l
        offset = (scale - 1.0) / 2.0
        values = logits.numpy().transpose([axis for axis, _ in separable])
        for dim, (_, x) in enumerate(separable):
            i0, i1, w = _linear_weights((x - offset) / scale, size_l)
            inside = (x >= -0.5) & (x <= size - 0.5)
            values = _interp_axis(values, dim, i0, i1, w, inside)
        np.greater(values, 0, out=patch, casting="unsafe")
        return box, patch
    patch_t = torch.from_numpy(patch)
    with torch.inference_mode():
        source = logits[None, None]
        rows = max(1, _CHUNK_VOXELS // max(1, shape[1] * shape[2]))
        for first in range(0, shape[0], rows):
            crop = crop_coordinates_of_box(volume, region, box, first=first, rows=rows)
            inside = ((crop >= -0.5) & (crop <= size - 0.5)).all(dim=-1)
            # align_corners=False: crop index x sits at normalised (2x + 1) / size - 1;
            # the grid's last axis is ordered (dim4, dim3, dim2) = (c, b, a).
            grid = ((2.0 * crop + 1.0) / size - 1.0).flip(-1)
            values = F.grid_sample(source, grid[None], mode="bilinear", padding_mode="border",
                                   align_corners=False)[0, 0]
            patch_t[first:first + crop.shape[0]] = ((values > 0) & inside).to(torch.uint8)
    return box, patch
