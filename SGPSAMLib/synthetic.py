"""Seeded synthetic CT-like and MR-like volumes with small irregular lesions and their labels.

Why: tests, the demo and the SGP-vs-FT benchmark need lesion data with exact ground truth, any
size and geometry, and nothing to download or license. Everything here is numpy only and one
case of the default size takes well under a second.

What a case looks like (all random draws come from ``numpy.random.default_rng(seed)``):

- **Grid**: ``shape`` = (I, J, K) voxels (default 96 x 96 x 64), in-plane spacing 0.7-1.0 mm,
  slices 1.5-5 mm; a direction matrix that is a signed axis permutation (sometimes) times a
  random rotation of 5-35 degrees (``oblique=True``); a random position in RAS.
- **Body**: an elliptic cylinder along the slice axis with a wobbly outline, a fat rim, an
  organ-like blob, a bone-like bar and a vessel-like tube, smooth tissue texture. CT in HU
  (air -1000, fat about -100, soft tissue about 40, organ about 60, bone, enhanced vessel),
  stored as int16; MR in positive arbitrary units with a multiplicative bias field and Rician
  noise, stored as float32.
- **Lesions** (1-3 by default, label values 1..N, non-overlapping with a gap, entirely inside
  the body's soft tissue and clear of the vessel, most of them in the organ): a star-shaped
  blob (an ellipsoid with a few random lobes) whose voxel count matches a target equivalent
  diameter drawn log-uniformly from ``diameter_mm`` (small lesions are as common as large
  ones). Intensity = the median of the surrounding tissue + ``contrast`` (CT: hypo- or
  hyper-dense by 20-80 HU; MR: +-20-60 % of the organ level) with its own texture and a thin
  partial-volume edge. Voxels inside the
  label get at least half of the contrast, voxels outside at most half.

Seed conventions (documented so held-out data stays held out): ``write_dataset(folder, n,
seed)`` makes case ``n`` from ``make_case(seed + n)``. Training sets use seeds below
:data:`DEMO_SEED_BASE`; the demo uses seeds from :data:`DEMO_SEED_BASE` on; held-out
evaluation sets use seeds from :data:`EVAL_SEED_BASE` on.
"""
from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np

from .errors import VolumeError
from .geometry import Volume, array_index_to_ijk
from .options import SYNTH_APPEARANCES, SYNTH_MODALITIES, look_up_option

__all__ = [
    "LesionSpec",
    "SyntheticCase",
    "make_case",
    "write_dataset",
    "equivalent_diameter_mm",
    "DEFAULT_SHAPE",
    "DEMO_SEED_BASE",
    "EVAL_SEED_BASE",
    "MODALITIES",
    "APPEARANCES",
    "LESION_KINDS",
]

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

#: Default grid (I, J, K) voxels.
DEFAULT_SHAPE = (96, 96, 64)
#: First seed of the demo's sample volumes (training data should use seeds below it).
DEMO_SEED_BASE = 10_000
#: First seed of held-out evaluation sets (benchmarks).
EVAL_SEED_BASE = 20_000
#: The modality choices of :func:`make_case` (the vocabulary's; kept here for callers).
MODALITIES = SYNTH_MODALITIES

_INPLANE_MM = (0.7, 1.0)
_SLICE_MM = (1.5, 5.0)
_MAX_LESIONS = 255
# Gap in voxels (6-connected dilation steps) kept between lesions.
_GAP_VOXELS = 2
_EDGE_MM = 0.6  # half-width of the partial-volume edge
_PLACEMENT_TRIES = 40
_SHRINK = 0.85
#: ``make_case(appearance=...)``.
APPEARANCES = SYNTH_APPEARANCES
#: Lesion kinds of ``appearance="varied"`` and how often each is drawn.
LESION_KINDS = ("plain", "rim", "mottled", "subtle")
_KIND_WEIGHTS = (0.35, 0.25, 0.2, 0.2)
_VARIED_STREAM = 0x5A17  # second seed word of the "varied" random stream


@dataclass(frozen=True)
class LesionSpec:
    """One lesion of a synthetic case, measured from its label (not from the request).

    Attributes:
        label: its value in the label array (1..N).
        centre_ras: (R, A, S) mm of a voxel centre inside the lesion (the shape's centre).
        diameter_mm: equivalent-sphere diameter of the labelled voxels, ``(6 V / pi)^(1/3)``.
        volume_ml: labelled volume in mL.
        contrast: intensity added to the surrounding tissue (HU for CT, units for MR).
        voxels: number of labelled voxels.
        target_diameter_mm: the diameter that was asked for (differs after quantisation, or
            when a large lesion had to shrink to fit).
    """

    label: int
    centre_ras: tuple[float, float, float]
    diameter_mm: float
    volume_ml: float
    contrast: float
    voxels: int = 0
    target_diameter_mm: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        out = asdict(self)
        out["centre_ras"] = [float(v) for v in self.centre_ras]
        return out


@dataclass
class SyntheticCase:
    """A synthetic image, its lesion labels on the same grid, and what was drawn.

    Attributes:
        volume: the image (CT: int16 HU; MR: float32 arbitrary units).
        label: (K, J, I) uint8, 0 background, lesions 1..N.
        lesions: one :class:`LesionSpec` per label value, in order.
        modality: "CT" or "MR".
        seed: the seed that reproduces it.
        noise_sigma: standard deviation of the added noise (image units).
        parameters: every drawn setting, JSON-able (spacing, direction, tissue levels, ...).
    """

    volume: Volume
    label: np.ndarray
    lesions: list[LesionSpec]
    modality: str
    seed: int = 0
    noise_sigma: float = 0.0
    parameters: dict[str, Any] = field(default_factory=dict)


def equivalent_diameter_mm(voxels: int, voxel_volume_mm3: float) -> float:
    """Diameter of the sphere with the same volume as ``voxels`` voxels."""
    return float((6.0 * voxels * voxel_volume_mm3 / math.pi) ** (1.0 / 3.0))


# ----------------------------------------------------------------------------------------------
# Random fields.

def _upsample_linear(coarse: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Separable linear interpolation of a coarse grid onto ``shape`` (corners aligned)."""
    out = coarse
    for axis, n in enumerate(shape):
        nc = out.shape[axis]
        x = np.linspace(0.0, nc - 1.0, int(n))
        i0 = np.clip(np.floor(x).astype(np.int64), 0, nc - 2)
        w = (x - i0).astype(np.float32).reshape([-1 if a == axis else 1 for a in range(3)])
        out = np.take(out, i0, axis=axis) * (1.0 - w) + np.take(out, i0 + 1, axis=axis) * w
    return out


def _smooth_noise(rng: np.random.Generator, shape_kji: Sequence[int],
                  spacing_kji: Sequence[float], cell_mm: float) -> np.ndarray:
    """Zero-mean, unit-std smooth noise whose features are about ``cell_mm`` wide."""
    counts = [max(2, int(math.ceil((n - 1) * s / cell_mm)) + 1)
              for n, s in zip(shape_kji, spacing_kji)]
    field_ = _upsample_linear(rng.standard_normal(counts).astype(np.float32), shape_kji)
    sample = field_[::2, ::2, ::2]  # statistics from a subsample: cheaper, as good
    std = float(sample.std())
    field_ -= np.float32(sample.mean())
    field_ *= np.float32(1.0 / std if std > 0 else 1.0)
    return field_


def _rotation(axis: np.ndarray, degrees: float) -> np.ndarray:
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis)
    x, y, z = axis
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    cross = np.array([[0, -z, y], [z, 0, -x], [-y, x, 0]])
    return c * np.eye(3) + s * cross + (1 - c) * np.outer(axis, axis)


def _direction(rng: np.random.Generator, oblique: bool) -> np.ndarray:
    """Orthonormal 3x3: sometimes permuted / flipped axes, rotated when ``oblique``."""
    direction = np.eye(3)
    if rng.random() < 0.35:
        direction = direction[:, rng.permutation(3)]
    flips = np.where(rng.random(3) < 0.3, -1.0, 1.0)
    direction = direction * flips
    if oblique:
        direction = _rotation(rng.standard_normal(3), rng.uniform(5.0, 35.0)) @ direction
    return direction


def _dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    """6-connected binary dilation by ``steps`` voxels (no wrap-around)."""
    out = mask.astype(bool, copy=True)
    for _ in range(steps):
        grown = out.copy()
        for axis in range(3):
            lo = [slice(None)] * 3
            hi = [slice(None)] * 3
            lo[axis], hi[axis] = slice(0, -1), slice(1, None)
            grown[tuple(lo)] |= out[tuple(hi)]
            grown[tuple(hi)] |= out[tuple(lo)]
        out = grown
    return out


# ----------------------------------------------------------------------------------------------
# Tissue model.

def _tissue_levels(rng: np.random.Generator, modality: str) -> dict[str, float]:
    """Tissue intensities (plain floats, so float32 images stay float32)."""
    return {k: float(v) for k, v in _draw_levels(rng, modality).items()}


def _draw_levels(rng: np.random.Generator, modality: str) -> dict[str, float]:
    if modality == "CT":
        return {"air": -1000.0, "fat": rng.uniform(-115, -85), "soft": rng.uniform(30, 50),
                "organ": rng.uniform(50, 70), "bone": rng.uniform(400, 700),
                "vessel": rng.uniform(140, 200), "texture": rng.uniform(3, 8),
                "noise": rng.uniform(4, 12)}
    organ = rng.uniform(400, 550)
    return {"air": 0.0, "fat": rng.uniform(700, 1000), "soft": rng.uniform(250, 350),
            "organ": organ, "bone": rng.uniform(50, 120), "vessel": rng.uniform(100, 600),
            "texture": 0.03 * organ, "noise": rng.uniform(0.01, 0.03) * organ}


class _Anatomy:
    """Body, fat, organ, bone and vessel masks on the grid, in the grid's own mm frame."""

    def __init__(self, rng: np.random.Generator, shape_kji: tuple[int, int, int],
                 spacing_kji: np.ndarray) -> None:
        nk, nj, ni = shape_kji
        sk, sj, si = spacing_kji
        z = ((np.arange(nk) - (nk - 1) / 2.0) * sk).astype(np.float32)[:, None, None]
        y = ((np.arange(nj) - (nj - 1) / 2.0) * sj).astype(np.float32)[None, :, None]
        x = ((np.arange(ni) - (ni - 1) / 2.0) * si).astype(np.float32)[None, None, :]
        half = np.array([(ni - 1) * si, (nj - 1) * sj, (nk - 1) * sk]) / 2.0
        a, b = half[0] * rng.uniform(0.85, 0.97), half[1] * rng.uniform(0.75, 0.92)
        outline = _smooth_noise(rng, (2, nj, ni), (max(sk * (nk - 1), 1.0), sj, si), 40.0)
        outline = outline[:1]  # the outline does not change along the slice axis
        q = np.sqrt((x / a) ** 2 + (y / b) ** 2) * (1.0 + 0.03 * outline)
        self.fat_start = 1.0 - rng.uniform(0.05, 0.12)
        self.body = np.broadcast_to(q < 1.0, shape_kji)
        self.fat = np.broadcast_to(self.body[:1] & (q > self.fat_start), shape_kji)
        self.q = q
        self.min_semi_axis = float(min(a, b))
        centre = (rng.uniform(-0.3, 0.3) * a, rng.uniform(-0.25, 0.25) * b,
                  rng.uniform(-0.2, 0.2) * half[2])
        radii = (rng.uniform(0.35, 0.55) * a, rng.uniform(0.35, 0.55) * b,
                 max(rng.uniform(0.5, 0.9) * half[2], 10.0))
        organ_noise = _smooth_noise(rng, shape_kji, spacing_kji, 25.0)
        qo = np.sqrt(((x - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2
                     + ((z - centre[2]) / radii[2]) ** 2) + 0.08 * organ_noise
        bx, by = rng.uniform(-0.2, 0.2) * a, -0.62 * b
        qb = np.sqrt(((x - bx) / (0.15 * a)) ** 2 + ((y - by) / (0.12 * b)) ** 2)
        self.bone = self.body & ~self.fat & (qb < 1.0)
        self.organ = self.body & ~self.fat & ~self.bone & (qo < 1.0)
        vx, vy = rng.uniform(-0.4, 0.4) * a, rng.uniform(-0.3, 0.4) * b
        phase, radius = rng.uniform(0, 2 * math.pi), rng.uniform(2.5, 5.0)
        vx_z = vx + 3.0 * np.sin(z / 40.0 + phase)
        self.vessel = (self.body & ~self.fat & ~self.bone
                       & (((x - vx_z) ** 2 + (y - vy) ** 2) < radius ** 2))
        self.frame = (x, y, z)
        self._bone = (bx, by, 0.15 * a, 0.12 * b)
        self._vessel = (vx_z, vy, radius)
        self.soft_tissue = self.body & ~self.fat & ~self.bone
        self.parameters = {"body_semi_axes_mm": [float(a), float(b)],
                           "organ_centre_mm": [float(v) for v in centre],
                           "organ_radii_mm": [float(v) for v in radii],
                           "vessel_radius_mm": float(radius)}

    def image(self, rng: np.random.Generator, levels: dict[str, float],
              shape_kji: tuple[int, int, int], spacing_kji: np.ndarray) -> np.ndarray:
        img = np.full(shape_kji, levels["air"], dtype=np.float32)
        img[self.body] = levels["soft"]
        img[self.fat] = levels["fat"]
        img[self.organ] = levels["organ"]
        img[self.vessel] = levels["vessel"]
        img[self.bone] = levels["bone"]
        texture = _smooth_noise(rng, shape_kji, spacing_kji, 4.0)
        texture *= levels["texture"]
        texture[~self.body] = 0.0
        img += texture
        return img

    def centre_pools(self, radius_mm: float) -> list[np.ndarray]:
        """Flat indices where a lesion of this radius may be centred: organ first, then any
        soft tissue at least about ``radius_mm`` inside the fat rim."""
        x, y, _ = self.frame
        depth = self.fat_start - 1.1 * radius_mm / self.min_semi_axis
        bx, by, ba, bb = self._bone
        vx_z, vy, vr = self._vessel
        clear = radius_mm + 1.0
        deep = (self.soft_tissue & (self.q < depth)
                & (((x - bx) / (ba + clear)) ** 2 + ((y - by) / (bb + clear)) ** 2 > 1.0)
                & ((x - vx_z) ** 2 + (y - vy) ** 2 > (vr + clear) ** 2))
        return [np.flatnonzero(deep & self.organ), np.flatnonzero(deep)]


# ----------------------------------------------------------------------------------------------
# Lesions.

def _fibonacci_sphere(n: int = 400) -> np.ndarray:
    """(n, 3) unit vectors spread evenly over the sphere (deterministic)."""
    index = np.arange(n) + 0.5
    polar = np.arccos(1.0 - 2.0 * index / n)
    azimuth = math.pi * (1.0 + 5.0 ** 0.5) * index
    return np.stack([np.cos(azimuth) * np.sin(polar), np.sin(azimuth) * np.sin(polar),
                     np.cos(polar)], axis=1)


_SPHERE = _fibonacci_sphere()


@dataclass
class _Shape:
    """A star-shaped blob: f(p) = |p - c| / R(u) with u = (p - c) / |p - c|; lesion = {f < s}.

    R(u) is an ellipsoid's radius times exp(sum of a few smooth lobes): irregular but with one
    centre, so the lesion always holds its centre and scaling s changes only its size.
    """

    axes: list[list[float]]  # (3, 3) rotation: rows are the ellipsoid's axes
    scales: list[float]      # (3,) relative semi-axes
    lobes: list[list[float]]  # (L, 3) unit vectors
    amplitudes: list[float]  # (L,)
    sharpness: list[float]   # (L,)

    @classmethod
    def random(cls, rng: np.random.Generator) -> _Shape:
        n = int(rng.integers(2, 6))
        lobes = rng.standard_normal((n, 3))
        lobes /= np.linalg.norm(lobes, axis=1, keepdims=True)
        amplitudes = rng.uniform(-0.3, 0.3, n)
        total = np.abs(amplitudes).sum()
        if total > 0.6:
            amplitudes *= 0.6 / total
        axes = _rotation(rng.standard_normal(3), rng.uniform(0, 180))
        # Plain floats: numpy scalars would promote the float32 grids to float64.
        return cls(axes.tolist(), rng.uniform(0.75, 1.3, 3).tolist(), lobes.tolist(),
                   amplitudes.tolist(), rng.uniform(2.0, 6.0, n).tolist())

    def radius(self, u: Sequence[np.ndarray]) -> np.ndarray:
        """R(u) for unit vectors given as three broadcastable component arrays."""
        ell = 0.0
        for row, scale in zip(self.axes, self.scales):
            ell = ell + ((row[0] * u[0] + row[1] * u[1] + row[2] * u[2]) / scale) ** 2
        bumps = 0.0
        for v, amp, kappa in zip(self.lobes, self.amplitudes, self.sharpness):
            cos = v[0] * u[0] + v[1] * u[1] + v[2] * u[2]
            bumps = bumps + amp * np.exp(kappa * (cos - 1.0))
        return np.exp(bumps) / np.sqrt(ell)

    def extent_mm(self, diameter: float) -> float:
        """Largest centre-to-surface distance once scaled to an equivalent ``diameter``."""
        radii = self.radius(_SPHERE.T)
        unit_volume = 4.0 * math.pi / 3.0 * float(np.mean(radii ** 3))
        scale = (math.pi / 6.0 * diameter ** 3 / unit_volume) ** (1.0 / 3.0)
        return scale * float(radii.max())

    def field(self, px: np.ndarray, py: np.ndarray, pz: np.ndarray, limit_mm: float
              ) -> np.ndarray:
        """f on a grid given mm offsets from the centre (broadcastable (x, y, z) arrays).

        Only voxels within ``limit_mm`` of the centre are evaluated (the rest get +inf): the
        directional part is the expensive one.
        """
        r = np.sqrt(px * px + py * py + pz * pz)
        out = np.full(r.shape, np.inf, dtype=np.float32)
        inside = r <= limit_mm
        rr = r[inside]
        centre = rr == 0
        safe = np.where(centre, 1.0, rr).astype(np.float32)
        comps = [np.broadcast_to(p, r.shape)[inside] / safe for p in (px, py, pz)]
        comps[0] = np.where(centre, 1.0, comps[0]).astype(np.float32)
        out[inside] = rr / self.radius(comps)
        return out


def _varied_interior(rng: np.random.Generator, kind: str, level: float, contrast: float,
                     texture: np.ndarray, f_rel: np.ndarray, levels: dict[str, float],
                     modality: str, patch: np.ndarray) -> np.ndarray:
    """Target intensity inside a lesion of ``kind`` (f_rel < 1 inside, 0 at the centre).

    - plain: one contrast, light texture (as ``appearance="plain"``);
    - rim: an enhancing wall (brighter than the tissue) around a necrotic core (darker than
      the wall, often darker than the tissue), the core taking 30-70 % of the radius;
    - mottled: strong, coarse internal texture around the mean contrast;
    - subtle: a third to a half of the contrast and a homogeneous interior, so the lesion is
      told from its (textured) surroundings partly by the missing texture.
    """
    if kind == "plain":
        return level + contrast * (1.0 + 0.2 * texture)
    if kind == "rim":
        scale = 1.0 if modality == "CT" else levels["organ"]
        wall = abs(contrast) + scale * (rng.uniform(20, 60) if modality == "CT"
                                        else rng.uniform(0.1, 0.4))
        core = -abs(contrast) * rng.uniform(0.3, 1.2)
        radius = rng.uniform(0.3, 0.7)
        t = np.clip((f_rel - radius) / 0.15, 0.0, 1.0)
        return level + (core + (wall - core) * t) * (1.0 + 0.15 * texture)
    if kind == "mottled":
        return level + contrast * (1.0 + rng.uniform(0.4, 0.8) * texture)
    # subtle: replace the tissue's texture by a flat interior.
    smooth = float(np.median(patch[f_rel < 1.0])) if np.any(f_rel < 1.0) else level
    return np.full_like(patch, 0.5 * (level + smooth) + contrast * rng.uniform(0.3, 0.5))


def _place_lesion(rng: np.random.Generator, anatomy: _Anatomy, label: np.ndarray,
                  free: np.ndarray, spacing_kji: np.ndarray, diameter: float
                  ) -> tuple[tuple[slice, ...], np.ndarray, np.ndarray, tuple[int, int, int]
                             ] | None:
    """Try to fit one lesion of ``diameter`` mm -> (box, local label, local f / s, centre).

    The voxel count is exact: the ``target`` voxels of smallest f form the lesion, so the
    equivalent diameter matches the request up to one voxel.
    """
    shape = _Shape.random(rng)
    voxel_mm3 = float(np.prod(spacing_kji))
    target = max(1, int(round(math.pi / 6.0 * diameter ** 3 / voxel_mm3)))
    extent = shape.extent_mm(diameter)
    pools = anatomy.centre_pools(extent)
    if not any(pool.size for pool in pools):
        return None
    half = np.ceil((1.15 * extent + 1.5 * spacing_kji) / spacing_kji).astype(np.int64) + 1
    dims = np.array(label.shape)
    x, y, z = anatomy.frame
    for _ in range(_PLACEMENT_TRIES):
        pool = pools[0] if (pools[0].size and rng.random() < 0.75) else pools[1]
        if pool.size == 0:
            pool = pools[0]
        centre = np.array(np.unravel_index(int(pool[rng.integers(pool.size)]), label.shape))
        lo = np.maximum(centre - half, 1)
        hi = np.minimum(centre + half + 1, dims - 1)
        if np.prod(hi - lo) <= target:
            continue
        box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        cx, cy, cz = x[0, 0, centre[2]], y[0, centre[1], 0], z[centre[0], 0, 0]
        f = shape.field(x[:, :, box[2]] - cx, y[:, box[1], :] - cy, z[box[0], :, :] - cz,
                        1.1 * extent + float(spacing_kji.max()))
        part = np.partition(f.ravel(), (target - 1, target))
        if not np.isfinite(part[target]):
            continue
        s = 0.5 * (float(part[target - 1]) + float(part[target]))
        local = f < s
        touches = (local[0].any() or local[-1].any() or local[:, 0].any()
                   or local[:, -1].any() or local[:, :, 0].any() or local[:, :, -1].any())
        if touches or not local[tuple(centre - lo)]:
            continue
        if not (np.all(anatomy.soft_tissue[box][local]) and np.all(free[box][local])):
            continue
        return box, local, f / s, (int(centre[0]), int(centre[1]), int(centre[2]))
    return None


# ----------------------------------------------------------------------------------------------
# Public API.

def _parse_triplet(value: Sequence[float] | None, name: str, integer: bool
                   ) -> np.ndarray | None:
    if value is None:
        return None
    try:
        arr = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise VolumeError(f"{name} must be 3 numbers (x, y, z); got {value!r}") from exc
    if arr.shape != (3,) or not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise VolumeError(f"{name} must be 3 positive numbers (x, y, z); got {value!r}")
    if integer:
        if np.any(arr != np.round(arr)) or np.any(arr < 8):
            raise VolumeError(f"{name} must be 3 integers >= 8 (voxels along x, y, z); "
                              f"got {value!r}")
        return arr.astype(np.int64)
    return arr


def _checked_arguments(seed: Any, modality: Any, shape: Any, spacing: Any, n_lesions: Any,
                       diameter_mm: Any, appearance: Any
                       ) -> tuple[str, np.ndarray | None, np.ndarray | None, float, float]:
    """:func:`make_case`'s arguments checked -> (modality, shape, spacing, d_min, d_max)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise VolumeError(f"seed must be an int >= 0; got {seed!r}")
    if not isinstance(modality, str):
        raise VolumeError(f"modality must be one of {MODALITIES}; got {modality!r}")
    modality = look_up_option(modality, MODALITIES, "modality", case_sensitive=False,
                              error=VolumeError)
    shape_ijk = _parse_triplet(shape, "shape", integer=True)
    spacing_xyz = _parse_triplet(spacing, "spacing", integer=False)
    try:
        d_lo, d_hi = (float(v) for v in diameter_mm)
    except (TypeError, ValueError) as exc:
        raise VolumeError(f"diameter_mm must be (min, max) in mm; got {diameter_mm!r}") from exc
    if not (0 < d_lo <= d_hi and math.isfinite(d_hi)):
        raise VolumeError(f"diameter_mm must satisfy 0 < min <= max; got {diameter_mm!r}")
    if appearance not in APPEARANCES:
        raise VolumeError(f"appearance must be one of {APPEARANCES}; got {appearance!r}")
    if n_lesions is not None and (isinstance(n_lesions, bool) or not isinstance(
            n_lesions, (int, np.integer)) or not 1 <= n_lesions <= _MAX_LESIONS):
        raise VolumeError(f"n_lesions must be an int in 1..{_MAX_LESIONS}; got {n_lesions!r}")

    return modality, shape_ijk, spacing_xyz, d_lo, d_hi


def _add_lesions(rng: np.random.Generator, varied: np.random.Generator | None, seed: int,
                 count: int, d_lo: float, d_hi: float, image: np.ndarray, anatomy: _Anatomy,
                 levels: dict[str, float], modality: str, spacing_xyz: np.ndarray,
                 matrix: np.ndarray) -> tuple[np.ndarray, list[LesionSpec], list[str]]:
    """Place up to ``count`` lesions into ``image`` (in place) -> (label, lesions, kinds).

    Each lesion replaces the tissue it lands on, with a partial-volume edge; one that does not
    fit shrinks towards ``d_lo`` and, failing that, ends the list (logged).
    """
    spacing_kji = spacing_xyz[::-1].copy()
    label = np.zeros(image.shape, dtype=np.uint8)
    voxel_mm3 = float(np.prod(spacing_xyz))
    lesions: list[LesionSpec] = []
    kinds: list[str] = []
    log_lo, log_hi = math.log(d_lo), math.log(d_hi)
    for value in range(1, count + 1):
        target_d = math.exp(rng.uniform(log_lo, log_hi))
        free = ~_dilate((label > 0) | anatomy.vessel, _GAP_VOXELS)
        diameter, placed = target_d, None
        while True:
            placed = _place_lesion(rng, anatomy, label, free, spacing_kji, diameter)
            if placed is not None or diameter <= d_lo:
                break
            diameter = max(diameter * _SHRINK, d_lo)
        if placed is None:
            log.warning("seed %d: no room for lesion %d of %.1f mm or more; the case has %d "
                        "lesion(s)", seed, value, d_lo, value - 1)
            break
        if diameter < target_d:
            log.info("seed %d: lesion %d shrunk from %.1f to %.1f mm to fit", seed, value,
                     target_d, diameter)
        box, local, f_rel, centre = placed
        if modality == "CT":
            contrast = float(rng.choice([-1.0, 1.0], p=[0.65, 0.35]) * rng.uniform(20, 80))
        else:
            contrast = float(rng.choice([-1.0, 1.0]) * rng.uniform(0.2, 0.6) * levels["organ"])
        # Partial-volume weight: 1 deep inside, 0.5 on the label's surface, 0 outside.
        edge_mm = _EDGE_MM if varied is None else float(varied.uniform(0.3, 1.5))
        edge = edge_mm / max(0.5 * diameter, 1e-3)
        weight = np.clip((1.0 - f_rel) / (2.0 * edge) + 0.5, 0.0, 1.0).astype(np.float32)
        weight[local] = np.maximum(weight[local], 0.5)
        weight[~local] = np.minimum(weight[~local], 0.5)
        # The lesion replaces the tissue: its level is the surrounding tissue's median plus the
        # contrast, so it stands out from what is around it even near a tissue boundary.
        patch = image[box]
        shell = _dilate(local, 2) & ~local
        level = float(np.median(patch[shell])) if shell.any() else float(patch[local].mean())
        texture = _smooth_noise(rng, weight.shape, spacing_kji, 3.0)
        if varied is None:
            inside = level + contrast * (1.0 + 0.2 * texture)
        else:
            kind = str(varied.choice(LESION_KINDS, p=_KIND_WEIGHTS))
            inside = _varied_interior(varied, kind, level, contrast, texture, f_rel,
                                      levels, modality, patch)
            kinds.append(kind)
        patch += weight * (inside - patch)
        label[box][local] = value
        voxels = int(local.sum())
        ijk = array_index_to_ijk(np.array(centre, dtype=np.float64))
        lesions.append(LesionSpec(
            label=value,
            centre_ras=tuple(float(v) for v in (matrix[:3, :3] @ ijk + matrix[:3, 3])),
            diameter_mm=equivalent_diameter_mm(voxels, voxel_mm3),
            volume_ml=voxels * voxel_mm3 / 1000.0, contrast=contrast, voxels=voxels,
            target_diameter_mm=float(target_d)))

    return label, lesions, kinds


def _acquire(rng: np.random.Generator, image: np.ndarray, modality: str, sigma: float,
             spacing_kji: np.ndarray) -> np.ndarray:
    """The scanner's side: CT noise and HU rounding, or an MR bias field and Rician noise."""
    shape_kji = image.shape
    if modality == "CT":
        image += rng.normal(0.0, sigma, shape_kji).astype(np.float32)
        array = np.clip(np.round(image), -1024, 3071).astype(np.int16)
    else:
        bias = np.exp(rng.uniform(0.1, 0.3) * _smooth_noise(rng, shape_kji, spacing_kji, 80.0))
        image *= bias.astype(np.float32)
        real = image + rng.normal(0.0, sigma, shape_kji).astype(np.float32)
        imag = rng.normal(0.0, sigma, shape_kji).astype(np.float32)
        array = np.sqrt(real * real + imag * imag).astype(np.float32)
    return array


def make_case(seed: int, modality: str = "random", shape: Sequence[int] | None = None,
              spacing: Sequence[float] | None = None, n_lesions: int | None = None,
              diameter_mm: tuple[float, float] = (3.0, 40.0), oblique: bool = True,
              appearance: str = "plain") -> SyntheticCase:
    """One synthetic case, identical for identical arguments.

    Args:
        seed: any int >= 0; see the module docstring for the seed ranges in use.
        modality: "CT", "MR" or "random" (drawn from the seed).
        shape: (I, J, K) voxels; default :data:`DEFAULT_SHAPE`.
        spacing: (x, y, z) mm; default in-plane 0.7-1.0 mm, slices 1.5-5 mm (drawn).
        n_lesions: 1..255; default 1-3 (drawn).
        diameter_mm: (min, max) equivalent diameter of each lesion, drawn log-uniformly. A lesion
            that cannot fit in the body shrinks (logged) until it does.
        oblique: rotate the direction matrix by a random 5-35 degrees.
        appearance: "plain" (every lesion a blob of one contrast with light texture) or
            "varied" (each lesion drawn from the kinds of :data:`LESION_KINDS`: plain, a
            rim-enhancing lesion with a necrotic core, a mottled one, a subtle one that differs
            from its surroundings more by texture than by mean, all with a partial-volume edge
            of random width). "varied" draws from a second random stream, so a "plain" case is
            the same whatever this option's existence (held-out sets stay what they were).

    Raises:
        VolumeError: invalid arguments.
    """
    modality, shape_ijk, spacing_xyz, d_lo, d_hi = _checked_arguments(
        seed, modality, shape, spacing, n_lesions, diameter_mm, appearance)
    rng = np.random.default_rng(int(seed))
    varied = np.random.default_rng([int(seed), _VARIED_STREAM]) if appearance == "varied" \
        else None
    modality = modality.upper()
    if modality == "RANDOM":
        modality = "CT" if rng.random() < 0.5 else "MR"
    if shape_ijk is None:
        shape_ijk = np.array(DEFAULT_SHAPE)
    if spacing_xyz is None:
        inplane = rng.uniform(*_INPLANE_MM)
        spacing_xyz = np.array([inplane, inplane, rng.uniform(*_SLICE_MM)])
    else:
        rng.uniform(size=2)  # keep the later draws independent of whether spacing was given
    count = int(n_lesions) if n_lesions is not None else int(rng.integers(1, 4))
    direction = _direction(rng, oblique)
    centre_ras = rng.uniform(-120.0, 120.0, 3)
    matrix = np.eye(4)
    matrix[:3, :3] = direction * spacing_xyz
    matrix[:3, 3] = centre_ras - matrix[:3, :3] @ ((shape_ijk - 1) / 2.0)

    shape_kji = (int(shape_ijk[2]), int(shape_ijk[1]), int(shape_ijk[0]))
    spacing_kji = spacing_xyz[::-1].copy()
    levels = _tissue_levels(rng, modality)
    anatomy = _Anatomy(rng, shape_kji, spacing_kji)
    image = anatomy.image(rng, levels, shape_kji, spacing_kji)

    label, lesions, kinds = _add_lesions(rng, varied, seed, count, d_lo, d_hi, image, anatomy,
                                         levels, modality, spacing_xyz, matrix)
    if not lesions:
        raise VolumeError(f"seed {seed}: no lesion of diameter >= {d_lo} mm fits in a grid of "
                          f"shape {tuple(int(v) for v in shape_ijk)} at spacing "
                          f"{tuple(round(float(v), 2) for v in spacing_xyz)} mm; use a larger "
                          "shape or smaller diameter_mm")
    sigma = float(levels["noise"])
    array = _acquire(rng, image, modality, sigma, spacing_kji)
    parameters = {
        "seed": int(seed), "modality": modality, "shape": [int(v) for v in shape_ijk],
        "spacing_mm": [float(v) for v in spacing_xyz], "direction": direction.tolist(),
        "centre_ras": [float(v) for v in centre_ras], "n_lesions": count,
        "diameter_mm": [d_lo, d_hi], "oblique": bool(oblique), "appearance": appearance,
        **({"lesion_kinds": kinds} if varied is not None else {}),
        "levels": {k: float(v) for k, v in levels.items()}, **anatomy.parameters,
    }
    volume = Volume(array, matrix, f"synthetic_{int(seed):05d}")
    return SyntheticCase(volume=volume, label=label, lesions=lesions, modality=modality,
                         seed=int(seed), noise_sigma=sigma, parameters=parameters)


def write_dataset(folder: PathLike, n_cases: int, seed: int = 0, **make_case_kwargs: Any
                  ) -> list[tuple[Path, Path]]:
    """Write ``n_cases`` synthetic cases in MSD layout; returns [(image, label), ...].

    Files: ``imagesTr/case_000.nii.gz``, ``labelsTr/case_000.nii.gz`` (case ``n`` is
    ``make_case(seed + n, **make_case_kwargs)``) and ``dataset.json`` (MSD keys plus a
    ``"sgpsam_synthetic"`` block with the seed, the parameters and every lesion). Each file is
    written atomically; ``dataset.json`` comes last, so its presence marks a complete set.
    Existing files of the same names are replaced.
    """
    from .io import atomic_write, write_labelmap, write_volume

    if isinstance(n_cases, bool) or not isinstance(n_cases, (int, np.integer)) or n_cases < 1:
        raise VolumeError(f"n_cases must be an int >= 1; got {n_cases!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise VolumeError(f"seed must be an int >= 0; got {seed!r}")
    root = Path(folder)
    images, labels = root / "imagesTr", root / "labelsTr"
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    written: list[tuple[Path, Path]] = []
    records, modalities, max_lesions = [], set(), 1
    for index in range(int(n_cases)):
        case = make_case(int(seed) + index, **make_case_kwargs)
        case_id = f"case_{index:03d}"
        image_path = write_volume(case.volume, images / f"{case_id}.nii.gz")
        label_path = write_labelmap(case.label, case.volume, labels / f"{case_id}.nii.gz")
        written.append((image_path, label_path))
        modalities.add(case.modality)
        max_lesions = max(max_lesions, len(case.lesions))
        records.append({"case_id": case_id, "seed": case.seed, "modality": case.modality,
                        "noise_sigma": case.noise_sigma,
                        "spacing_mm": case.parameters["spacing_mm"],
                        "lesions": [lesion.to_dict() for lesion in case.lesions]})
        log.info("wrote %s (%s, %d lesions)", image_path, case.modality, len(case.lesions))
    kwargs = {k: (list(v) if isinstance(v, tuple) else v) for k, v in make_case_kwargs.items()}
    dataset = {
        "name": "SGPSAM synthetic lesions",
        "description": "Synthetic CT/MR-like volumes with irregular lesions "
                       "(SGPSAMLib.synthetic); every non-zero label value is one lesion.",
        "reference": "SGPSAMLib.synthetic.make_case",
        "licence": "generated data, no restrictions",
        "tensorImageSize": "3D",
        "modality": {"0": "/".join(sorted(modalities))},
        "labels": {"0": "background", **{str(v): f"lesion {v}"
                                          for v in range(1, max_lesions + 1)}},
        "numTraining": len(written),
        "numTest": 0,
        "training": [{"image": f"./imagesTr/{img.name}", "label": f"./labelsTr/{lab.name}"}
                     for img, lab in written],
        "test": [],
        "sgpsam_synthetic": {"seed": int(seed), "n_cases": int(n_cases),
                             "case_seed_rule": "case n = make_case(seed + n, **parameters)",
                             "parameters": kwargs, "cases": records},
    }
    with atomic_write(root / "dataset.json") as tmp:
        Path(tmp).write_text(json.dumps(dataset, indent=2), encoding="utf-8")
    return written
