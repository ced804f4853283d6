"""geometry.py: IJK <-> RAS <-> LPS round trips on oblique, anisotropic, flipped and permuted
matrices, agreement with SimpleITK's own index -> physical point mapping, validation errors."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import SimpleITK as sitk

from SGPSAMLib.errors import PromptError, VolumeError
from SGPSAMLib.geometry import (
    Volume,
    array_index_to_ijk,
    ijk_to_array_index,
    ijk_to_ras_matrix,
    lps_geometry,
    lps_to_ras,
    ras_to_lps,
    transform_points,
)

SPACING = np.array([0.5, 0.8, 6.5])
SHAPE_KJI = (7, 11, 13)


def _rotation_z(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _rotation_x(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _matrix(direction_ras: np.ndarray, spacing=SPACING, origin=(10.0, -20.0, 30.0)) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = np.asarray(direction_ras, dtype=float) * np.asarray(spacing, dtype=float)
    m[:3, 3] = origin
    return m


DIRECTIONS = {
    "identity": np.eye(3),
    "oblique30": _rotation_z(30.0),
    "oblique_compound": _rotation_x(30.0) @ _rotation_z(-30.0),
    "flipped": np.diag([-1.0, 1.0, -1.0]),
    # i -> posterior, j -> superior, k -> right (a permuted, flipped axis order)
    "permuted": np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]),
}


@pytest.fixture(params=sorted(DIRECTIONS))
def volume(request) -> Volume:
    rng = np.random.default_rng(0)
    array = rng.normal(size=SHAPE_KJI).astype(np.float32)
    return Volume(array, _matrix(DIRECTIONS[request.param]), name=request.param)


def test_properties(volume: Volume) -> None:
    direction = DIRECTIONS[volume.name]
    assert volume.shape_ijk == (13, 11, 7)
    np.testing.assert_allclose(volume.spacing, SPACING, atol=1e-12)
    np.testing.assert_allclose(volume.origin_ras, [10.0, -20.0, 30.0], atol=0)
    np.testing.assert_allclose(volume.direction_ras, direction, atol=1e-12)
    np.testing.assert_allclose(volume.ras_to_ijk @ volume.ijk_to_ras, np.eye(4), atol=1e-12)
    assert volume.ijk_to_ras.dtype == np.float64


def test_ijk_ras_round_trip(volume: Volume) -> None:
    rng = np.random.default_rng(1)
    ijk = rng.uniform(-2.0, 14.0, size=(50, 3))
    ras = volume.ijk_to_ras_points(ijk)
    assert ras.shape == (50, 3) and ras.dtype == np.float64
    np.testing.assert_allclose(volume.ras_to_ijk_points(ras), ijk, atol=1e-10)
    # One voxel step along each axis moves by spacing along that axis' RAS direction.
    steps = volume.ijk_to_ras_points(np.eye(3)) - volume.origin_ras
    np.testing.assert_allclose(steps, (DIRECTIONS[volume.name] * SPACING).T, atol=1e-12)
    # Single point in, single point out.
    single = volume.ijk_to_ras_points([1, 2, 3])
    assert single.shape == (3,)
    np.testing.assert_allclose(volume.ras_to_ijk_points(single), [1, 2, 3], atol=1e-10)


def test_permuted_point_by_hand() -> None:
    vol = Volume(np.zeros(SHAPE_KJI), _matrix(DIRECTIONS["permuted"]))
    # ijk (2, 3, 4): R = 10 + 4*6.5, A = -20 - 2*0.5, S = 30 + 3*0.8
    np.testing.assert_allclose(vol.ijk_to_ras_points([2, 3, 4]), [36.0, -21.0, 32.4], atol=1e-12)


def test_matches_simpleitk_physical_points(volume: Volume) -> None:
    spacing, origin, direction = lps_geometry(volume.ijk_to_ras)
    image = sitk.Image(2, 2, 2, sitk.sitkUInt8)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    for ijk in [(0, 0, 0), (12, 10, 6), (3.25, -1.5, 4.75)]:
        lps = image.TransformContinuousIndexToPhysicalPoint(ijk)
        np.testing.assert_allclose(ras_to_lps(volume.ijk_to_ras_points(ijk)), lps, atol=1e-9)


def test_ras_lps_conversion() -> None:
    np.testing.assert_array_equal(ras_to_lps([1.0, -2.0, 3.0]), [-1.0, 2.0, 3.0])
    np.testing.assert_array_equal(lps_to_ras([-1.0, 2.0, 3.0]), [1.0, -2.0, 3.0])
    pts = np.random.default_rng(2).normal(size=(2, 4, 3))
    original = pts.copy()
    lps = ras_to_lps(pts)
    assert lps.shape == (2, 4, 3)
    np.testing.assert_array_equal(lps[..., 2], pts[..., 2])
    np.testing.assert_array_equal(lps[..., :2], -pts[..., :2])
    np.testing.assert_array_equal(lps_to_ras(lps), pts)
    np.testing.assert_array_equal(pts, original)  # input untouched


def test_ijk_to_ras_matrix_inverts_lps_geometry(volume: Volume) -> None:
    spacing, origin_lps, direction_lps = lps_geometry(volume.ijk_to_ras)
    assert len(spacing) == 3 and len(origin_lps) == 3 and len(direction_lps) == 9
    assert all(isinstance(v, float) for v in spacing + origin_lps + direction_lps)
    np.testing.assert_allclose(spacing, SPACING, atol=1e-12)
    np.testing.assert_allclose(origin_lps, [-10.0, 20.0, 30.0], atol=0)
    rebuilt = ijk_to_ras_matrix(spacing, origin_lps, direction_lps, space="LPS")
    np.testing.assert_allclose(rebuilt, volume.ijk_to_ras, atol=1e-12)
    ras = ijk_to_ras_matrix(
        volume.spacing, volume.origin_ras, volume.direction_ras, space="RAS"
    )
    np.testing.assert_allclose(ras, volume.ijk_to_ras, atol=1e-12)


def test_ijk_to_ras_matrix_lps_example() -> None:
    # SimpleITK geometry of a NIfTI stored RAS+: direction diag(-1, -1, 1) in LPS.
    m = ijk_to_ras_matrix((1.5, 1.5, 1.5), (238.75, -0.25, 0.25), (-1, 0, 0, 0, -1, 0, 0, 0, 1))
    expected = np.diag([1.5, 1.5, 1.5, 1.0])
    expected[:3, 3] = (-238.75, 0.25, 0.25)
    np.testing.assert_array_equal(m, expected)


def test_array_index_conversion() -> None:
    array = np.arange(np.prod(SHAPE_KJI)).reshape(SHAPE_KJI)
    ijk = np.array([12, 3, 5])
    kji = ijk_to_array_index(ijk)
    np.testing.assert_array_equal(kji, [5, 3, 12])
    assert array[tuple(kji)] == array[5, 3, 12]
    np.testing.assert_array_equal(array_index_to_ijk(kji), ijk)
    many = np.array([[1, 2, 3], [4, 5, 6]])
    np.testing.assert_array_equal(ijk_to_array_index(many), [[3, 2, 1], [6, 5, 4]])
    assert ijk_to_array_index(many).dtype == many.dtype


def test_transform_points_shapes() -> None:
    m = _matrix(DIRECTIONS["oblique30"])
    pts = np.zeros((4, 5, 3))
    out = transform_points(m, pts)
    assert out.shape == (4, 5, 3)
    np.testing.assert_allclose(out, np.broadcast_to([10.0, -20.0, 30.0], (4, 5, 3)))


def test_contains_ras_edges(volume: Volume) -> None:
    ni, nj, nk = volume.shape_ijk
    inside = [(-0.5, 0, 0), (ni - 0.5, nj - 0.5, nk - 0.5), (0, 0, 0), (6, 5, 3)]
    outside = [(-0.51, 0, 0), (0, nj - 0.49, 0), (0, 0, nk), (-3, -3, -3)]
    for ijk in inside:
        assert volume.contains_ras(volume.ijk_to_ras_points(ijk)) is True
    for ijk in outside:
        assert volume.contains_ras(volume.ijk_to_ras_points(ijk)) is False
    flags = volume.contains_ras(volume.ijk_to_ras_points(inside + outside))
    assert isinstance(flags, np.ndarray) and flags.dtype == bool
    np.testing.assert_array_equal(flags, [True] * 4 + [False] * 4)
    edge = volume.ijk_to_ras_points((-0.5, 0, 0))
    assert volume.contains_ras(edge, margin_voxels=0.0) is False
    assert volume.contains_ras(volume.ijk_to_ras_points((0, 0, 0)), margin_voxels=0.0) is True
    assert volume.contains_ras(volume.ijk_to_ras_points((-2, 0, 0)), margin_voxels=2.0) is True


def test_array_index_ras_methods_voxel_volume_and_point_check(volume: Volume) -> None:
    """The Volume methods every caller uses instead of composing conversions by hand."""
    kji = np.array([[0, 0, 0], [6, 10, 12], [3, 4, 5]], dtype=np.float64)
    ras = volume.array_index_to_ras(kji)
    np.testing.assert_allclose(ras, volume.ijk_to_ras_points(kji[:, ::-1]))
    np.testing.assert_allclose(volume.ras_to_array_index(ras), kji, atol=1e-9)
    np.testing.assert_allclose(volume.array_index_to_ras((3, 4, 5)), ras[2])
    assert volume.nearest_voxel(ras[2] + 0.1 * volume.spacing.min()) == (3, 4, 5)
    low, high = volume.ras_bounds()
    assert volume.nearest_voxel(high + 5.0) is None
    assert volume.voxel_volume_ml == pytest.approx(float(np.prod(SPACING)) / 1000.0)
    np.testing.assert_array_equal(volume.check_point(list(ras[1]), "seed 1"), ras[1])
    with pytest.raises(PromptError, match=r"seed 1 R=.* mm is outside the volume .*RAS bounds R "):
        volume.check_point(high + 5.0, "seed 1")
    with pytest.raises(PromptError, match="seed 2 must be 3 finite numbers"):
        volume.check_point([1.0, float("nan"), 2.0], "seed 2")
    with pytest.raises(PromptError, match="must be 3 numbers"):
        volume.check_point(["a", "b", "c"], "seed 3")


def test_with_array_keeps_geometry(volume: Volume) -> None:
    mask = np.zeros(volume.array.shape, dtype=np.uint8)
    other = volume.with_array(mask)
    assert other.array is mask and other.name == volume.name
    np.testing.assert_array_equal(other.ijk_to_ras, volume.ijk_to_ras)
    with pytest.raises(VolumeError, match=r"new_array.*\(7, 11, 13\).*\(11, 7, 13\)"):
        volume.with_array(np.zeros((11, 7, 13)))


def test_volume_is_frozen_and_copies_matrix() -> None:
    m = _matrix(np.eye(3))
    vol = Volume(np.zeros((2, 2, 2)), m)
    m[0, 3] = 999.0
    assert vol.ijk_to_ras[0, 3] == 10.0
    with pytest.raises(ValueError):
        vol.ijk_to_ras[0, 3] = 1.0  # read-only copy
    with pytest.raises(dataclasses.FrozenInstanceError):
        vol.name = "x"  # type: ignore[misc]


def test_validation_errors() -> None:
    good = _matrix(np.eye(3))
    with pytest.raises(VolumeError, match=r"array must be 3-D.*\(4, 5\)"):
        Volume(np.zeros((4, 5)), good)
    with pytest.raises(VolumeError, match=r"array must be 3-D.*\(1, 2, 3, 4\)"):
        Volume(np.zeros((1, 2, 3, 4)), good)
    singular = good.copy()
    singular[:3, 2] = singular[:3, 0]
    with pytest.raises(VolumeError, match=r"ijk_to_ras must be invertible"):
        Volume(np.zeros((2, 2, 2)), singular)
    nan = good.copy()
    nan[1, 1] = np.nan
    with pytest.raises(VolumeError, match=r"ijk_to_ras must be finite"):
        Volume(np.zeros((2, 2, 2)), nan)
    with pytest.raises(VolumeError, match=r"ijk_to_ras must be a 4x4 matrix.*\(3, 3\)"):
        Volume(np.zeros((2, 2, 2)), np.eye(3))
    projective = good.copy()
    projective[3, 0] = 0.5
    with pytest.raises(VolumeError, match=r"ijk_to_ras must be affine"):
        Volume(np.zeros((2, 2, 2)), projective)
    with pytest.raises(VolumeError, match=r"spacing must be 3 finite positive"):
        ijk_to_ras_matrix((1.0, 0.0, 1.0), (0, 0, 0), np.eye(3))
    with pytest.raises(VolumeError, match=r"origin must be 3 finite"):
        ijk_to_ras_matrix((1.0, 1.0, 1.0), (0, np.inf, 0), np.eye(3))
    with pytest.raises(VolumeError, match=r"direction must be 3x3 or 9 values"):
        ijk_to_ras_matrix((1.0, 1.0, 1.0), (0, 0, 0), np.eye(2))
    with pytest.raises(VolumeError, match=r"space must be 'LPS' or 'RAS'.*'XYZ'"):
        ijk_to_ras_matrix((1.0, 1.0, 1.0), (0, 0, 0), np.eye(3), space="XYZ")
    vol = Volume(np.zeros((2, 2, 2)), good)
    with pytest.raises(VolumeError, match=r"ras must have shape \(3,\) or \(N, 3\).*\(2,\)"):
        vol.ras_to_ijk_points([1.0, 2.0])
    with pytest.raises(VolumeError, match=r"ijk must have shape"):
        vol.ijk_to_ras_points(np.zeros((4, 2)))
