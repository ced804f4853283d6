"""The one place that converts between array indices, IJK voxel coordinates, RAS and LPS.

Conventions used by all of SGPSAMLib:

- Arrays are indexed ``array[k, j, i]`` (axis order K, J, I), the order of Slicer's
  ``arrayFromVolume`` and SimpleITK's ``GetArrayFromImage``. Index ``i`` is the fastest axis.
- IJK = ``(i, j, k)`` continuous voxel coordinates; integer values are voxel centres, so a
  voxel spans ``[i - 0.5, i + 0.5]``. ``ijk_to_array_index`` / ``array_index_to_ijk``
  reverse the last axis to go between IJK and array order.
- RAS = patient Right, Anterior, Superior in millimetres: the space of a Slicer scene.
  LPS = Left, Posterior, Superior: ``lps = (-r, -a, s)``. Slicer and ITK/SimpleITK store
  geometry (origin, direction) in LPS in files on disk, and SimpleITK images report it in
  LPS; Slicer converts to RAS on loading.
- A ``Volume`` carries its array and a 4x4 float64 IJK->RAS matrix (as Slicer's
  ``GetIJKToRASMatrix``): column c of the upper 3x3 is the RAS step of one voxel along
  axis c, and the last column is the RAS position of voxel (0, 0, 0).
- Points that cross any module boundary (session, CLI, seed files) are RAS millimetres.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Union

import numpy as np

from .errors import PromptError, VolumeError
from .options import COORDINATE_SPACES

__all__ = [
    "Volume",
    "ras_to_lps",
    "lps_to_ras",
    "transform_points",
    "ijk_to_array_index",
    "array_index_to_ijk",
    "ijk_to_ras_matrix",
    "lps_geometry",
]

# Multiplying by this flips RAS <-> LPS (it is its own inverse).
_LPS_FLIP = np.diag([-1.0, -1.0, 1.0])
# Relative tolerance for "invertible" and the affine bottom row.
_SINGULAR_RCOND = 1e-12
# Slack (in voxels) so that points exactly on the margin count as inside despite rounding.
_EDGE_EPS = 1e-6

ArrayLike = Union[np.ndarray, Sequence[float], Sequence[Sequence[float]]]


def _points(points: ArrayLike, name: str) -> np.ndarray:
    """Float64 copy of a (..., 3) point array, or VolumeError naming the parameter."""
    try:
        arr = np.array(points, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise VolumeError(f"{name} must be numeric (..., 3) coordinates: {exc}") from exc
    if arr.ndim == 0 or arr.shape[-1] != 3:
        raise VolumeError(f"{name} must have shape (3,) or (N, 3); got {arr.shape}")
    return arr


def _check_matrix(matrix: ArrayLike, name: str) -> np.ndarray:
    """Float64 copy of a finite, invertible 4x4 affine matrix, or VolumeError naming it."""
    try:
        m = np.array(matrix, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise VolumeError(f"{name} must be a numeric 4x4 matrix: {exc}") from exc
    if m.shape != (4, 4):
        raise VolumeError(f"{name} must be a 4x4 matrix; got shape {m.shape}")
    if not np.all(np.isfinite(m)):
        raise VolumeError(f"{name} must be finite; got NaN or inf in\n{m}")
    if not np.allclose(m[3], (0.0, 0.0, 0.0, 1.0), rtol=0.0, atol=1e-9):
        raise VolumeError(f"{name} must be affine with last row (0, 0, 0, 1); got {m[3]}")
    a = m[:3, :3]
    scale = float(np.abs(a).max())
    if scale == 0.0 or abs(np.linalg.det(a / scale)) < _SINGULAR_RCOND:
        raise VolumeError(f"{name} must be invertible; its 3x3 part is singular:\n{a}")
    return m


def transform_points(matrix: ArrayLike, points: ArrayLike) -> np.ndarray:
    """Apply a 4x4 affine to (3,) or (..., 3) points; float64 result of the same shape."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (4, 4):
        raise VolumeError(f"matrix must be 4x4; got shape {m.shape}")
    p = _points(points, "points")
    return p @ m[:3, :3].T + m[:3, 3]


def ras_to_lps(points: ArrayLike) -> np.ndarray:
    """RAS (..., 3) mm -> LPS (..., 3) mm: negate the first two coordinates."""
    p = _points(points, "points")
    p[..., :2] *= -1.0
    return p


def lps_to_ras(points: ArrayLike) -> np.ndarray:
    """LPS (..., 3) mm -> RAS (..., 3) mm: negate the first two coordinates."""
    return ras_to_lps(points)


def ijk_to_array_index(ijk: ArrayLike) -> np.ndarray:
    """(i, j, k) (..., 3) -> (k, j, i) for indexing ``array[k, j, i]``; dtype kept."""
    a = np.asarray(ijk)
    if a.ndim == 0 or a.shape[-1] != 3:
        raise VolumeError(f"ijk must have shape (3,) or (N, 3); got {a.shape}")
    return a[..., ::-1].copy()


def array_index_to_ijk(kji: ArrayLike) -> np.ndarray:
    """(k, j, i) array index (..., 3) -> (i, j, k) voxel coordinates; dtype kept."""
    a = np.asarray(kji)
    if a.ndim == 0 or a.shape[-1] != 3:
        raise VolumeError(f"kji must have shape (3,) or (N, 3); got {a.shape}")
    return a[..., ::-1].copy()


def ijk_to_ras_matrix(
    spacing: Sequence[float],
    origin: Sequence[float],
    direction: ArrayLike,
    space: str = "LPS",
) -> np.ndarray:
    """4x4 IJK->RAS matrix from ITK/SimpleITK-style geometry.

    ``spacing`` (3,) mm > 0; ``origin`` (3,) mm, position of voxel (0, 0, 0); ``direction``
    3x3 (or its 9 values row-major, as ``sitk.Image.GetDirection``) whose columns are the
    unit directions of the i, j, k axes. ``origin`` and ``direction`` are in ``space``
    ("LPS" as SimpleITK reports them, or "RAS").
    """
    if space not in COORDINATE_SPACES:
        raise VolumeError(f"space must be 'LPS' or 'RAS'; got {space!r}")
    sp = np.asarray(spacing, dtype=np.float64)
    if sp.shape != (3,) or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise VolumeError(f"spacing must be 3 finite positive values (mm); got {spacing!r}")
    org = np.asarray(origin, dtype=np.float64)
    if org.shape != (3,) or not np.all(np.isfinite(org)):
        raise VolumeError(f"origin must be 3 finite values (mm); got {origin!r}")
    d = np.asarray(direction, dtype=np.float64)
    if d.size != 9:
        raise VolumeError(f"direction must be 3x3 or 9 values; got shape {d.shape}")
    d = d.reshape(3, 3)
    m = np.eye(4)
    m[:3, :3] = d * sp  # scale column c by spacing[c]
    m[:3, 3] = org
    if space == "LPS":
        m[:3, :] = _LPS_FLIP @ m[:3, :]
    return _check_matrix(m, "direction")


def lps_geometry(
    ijk_to_ras: ArrayLike,
) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """Inverse of ``ijk_to_ras_matrix(..., space="LPS")``: (spacing, origin_lps, direction_lps).

    Plain float tuples, ready for ``SetSpacing``, ``SetOrigin`` and ``SetDirection`` (the
    direction as 9 values, row-major, columns = unit i, j, k axes in LPS).
    """
    m = _check_matrix(ijk_to_ras, "ijk_to_ras")
    spacing = np.linalg.norm(m[:3, :3], axis=0)
    direction_lps = _LPS_FLIP @ (m[:3, :3] / spacing)
    origin_lps = _LPS_FLIP @ m[:3, 3]
    return (
        tuple(float(v) for v in spacing),
        tuple(float(v) for v in origin_lps),
        tuple(float(v) for v in direction_lps.ravel()),
    )


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3-D image and where it lies: ``array`` (K, J, I) and its 4x4 IJK->RAS matrix.

    The matrix is stored as a read-only float64 copy; the array is kept as given (no copy).
    Equality is identity (arrays have no single truth value).
    """

    array: np.ndarray
    ijk_to_ras: np.ndarray
    name: str = ""

    def __post_init__(self) -> None:
        array = self.array
        if not isinstance(array, np.ndarray):
            array = np.asarray(array)
            object.__setattr__(self, "array", array)
        if array.ndim != 3:
            raise VolumeError(
                f"array must be 3-D in (K, J, I) order; got shape {array.shape}"
            )
        m = _check_matrix(self.ijk_to_ras, "ijk_to_ras")
        m.setflags(write=False)
        object.__setattr__(self, "ijk_to_ras", m)

    @property
    def shape_ijk(self) -> tuple[int, int, int]:
        """(ni, nj, nk): the array shape reversed."""
        nk, nj, ni = self.array.shape
        return (int(ni), int(nj), int(nk))

    @property
    def spacing(self) -> np.ndarray:
        """(3,) voxel size in mm along i, j, k (column norms of the matrix)."""
        return np.linalg.norm(self.ijk_to_ras[:3, :3], axis=0)

    @property
    def voxel_volume_mm3(self) -> float:
        """Volume of one voxel in mm^3 (|det| of the matrix: right for oblique grids too)."""
        return float(abs(np.linalg.det(self.ijk_to_ras[:3, :3])))

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in mL (cm^3): ``voxels * volume.voxel_volume_ml`` is a lesion's."""
        return self.voxel_volume_mm3 / 1000.0

    @property
    def origin_ras(self) -> np.ndarray:
        """(3,) RAS mm of the centre of voxel (0, 0, 0)."""
        return self.ijk_to_ras[:3, 3].copy()

    @property
    def direction_ras(self) -> np.ndarray:
        """(3, 3) unit column vectors of the i, j, k axes in RAS."""
        return self.ijk_to_ras[:3, :3] / self.spacing

    @property
    def ras_to_ijk(self) -> np.ndarray:
        """(4, 4) RAS->IJK matrix, the inverse of ``ijk_to_ras``."""
        return np.linalg.inv(self.ijk_to_ras)

    def ijk_to_ras_points(self, ijk: ArrayLike) -> np.ndarray:
        """(3,) or (N, 3) IJK -> RAS mm, float64."""
        return transform_points(self.ijk_to_ras, _points(ijk, "ijk"))

    def ras_to_ijk_points(self, ras: ArrayLike) -> np.ndarray:
        """(3,) or (N, 3) RAS mm -> continuous IJK, float64."""
        return transform_points(self.ras_to_ijk, _points(ras, "ras"))

    def array_index_to_ras(self, kji: ArrayLike) -> np.ndarray:
        """(3,) or (N, 3) array indices (k, j, i) -> RAS mm, float64 (voxel centres for ints)."""
        return self.ijk_to_ras_points(array_index_to_ijk(np.asarray(kji, dtype=np.float64)))

    def ras_to_array_index(self, ras: ArrayLike) -> np.ndarray:
        """(3,) or (N, 3) RAS mm -> continuous array indices (k, j, i), float64."""
        return ijk_to_array_index(self.ras_to_ijk_points(ras))

    def nearest_voxel(self, ras: ArrayLike) -> tuple[int, int, int] | None:
        """(k, j, i) of the voxel holding a (3,) RAS point, or None when it is not inside."""
        ras = _points(ras, "ras").reshape(3)
        if not self.contains_ras(ras):
            return None
        kji = np.rint(self.ras_to_array_index(ras)).astype(np.int64)
        kji = np.clip(kji, 0, np.asarray(self.array.shape) - 1)
        return int(kji[0]), int(kji[1]), int(kji[2])

    def ras_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(min, max) RAS mm of the space the voxels cover (voxel-centre grid +- 0.5)."""
        n = np.asarray(self.shape_ijk, dtype=np.float64)
        corners = np.array([[i, j, k] for i in (-0.5, n[0] - 0.5) for j in (-0.5, n[1] - 0.5)
                            for k in (-0.5, n[2] - 0.5)])
        ras = self.ijk_to_ras_points(corners)
        return ras.min(axis=0), ras.max(axis=0)

    def check_point(self, ras: ArrayLike, what: str = "point") -> np.ndarray:
        """A (3,) RAS mm point as float64 once it is 3 finite numbers inside the voxels.

        The one check of a click, a seed or a prompt: every caller gets the same message.

        Raises:
            PromptError: naming ``what``: not 3 numbers, not finite, or outside the volume
                (with the volume's RAS bounds).
        """
        try:
            point = np.asarray(ras, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError) as exc:
            raise PromptError(f"{what} must be 3 numbers (RAS mm), got {ras!r}") from exc
        if point.shape != (3,) or not np.all(np.isfinite(point)):
            raise PromptError(f"{what} must be 3 finite numbers (RAS mm), got {ras!r}")
        if not self.contains_ras(point):
            low, high = self.ras_bounds()
            bounds = ", ".join(f"{'RAS'[d]} {low[d]:.1f}..{high[d]:.1f}" for d in range(3))
            name = f" {self.name!r}" if self.name else ""
            raise PromptError(f"{what} R={point[0]:.1f}, A={point[1]:.1f}, S={point[2]:.1f} mm "
                              f"is outside the volume{name} (RAS bounds {bounds} mm)")
        return point

    def contains_ras(
        self, ras: ArrayLike, margin_voxels: float = 0.5
    ) -> bool | np.ndarray:
        """Whether RAS points lie within the voxel-centre grid extended by ``margin_voxels``.

        The default margin 0.5 means "inside the volume's voxels". A (3,) point gives a bool,
        (N, 3) points give an (N,) bool array.
        """
        ijk = self.ras_to_ijk_points(ras)
        upper = np.asarray(self.shape_ijk, dtype=np.float64) - 1.0 + margin_voxels
        lower = -float(margin_voxels)
        inside = np.all((ijk >= lower - _EDGE_EPS) & (ijk <= upper + _EDGE_EPS), axis=-1)
        if inside.ndim == 0:
            return bool(inside)
        return inside

    def with_array(self, new_array: np.ndarray) -> Volume:
        """The same geometry and name with another (K, J, I) array of the same shape."""
        new_array = np.asarray(new_array)
        if new_array.shape != self.array.shape:
            raise VolumeError(
                f"new_array must have the volume's shape {self.array.shape}; "
                f"got {new_array.shape}"
            )
        return Volume(new_array, self.ijk_to_ras, self.name)
