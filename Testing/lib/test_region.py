"""region.py: the crop frame, one-interpolation sampling, SAM-Med3D normalisation and the
mapping of low-res logits back to the original grid, on oblique, anisotropic, flipped and
axis-permuted geometries."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from SGPSAMLib.boxes import bbox_union
from SGPSAMLib.geometry import Volume, array_index_to_ijk
from SGPSAMLib.region import (
    Region,
    footprint_bbox,
    map_logits_to_volume,
    normalize_crop,
    resolve_modality,
    sample_region,
)


def _rotation(axis: np.ndarray, deg: float) -> np.ndarray:
    axis = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    x, y, z = axis
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    cross = np.array([[0, -z, y], [z, 0, -x], [-y, x, 0]])
    return c * np.eye(3) + s * cross + (1 - c) * np.outer(axis, axis)


def _matrix(direction: np.ndarray, spacing, centre_ras, shape_kji) -> np.ndarray:
    """IJK->RAS whose voxel grid is centred on ``centre_ras``."""
    m = np.eye(4)
    m[:3, :3] = np.asarray(direction, dtype=float) * np.asarray(spacing, dtype=float)
    middle_ijk = (np.asarray(shape_kji[::-1], dtype=float) - 1) / 2
    m[:3, 3] = np.asarray(centre_ras, dtype=float) - m[:3, :3] @ middle_ijk
    return m


PERMUTED_FLIPPED = np.array([[0.0, 0.0, -1.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
GEOMETRIES = {
    "plain": (np.eye(3), (1.0, 1.0, 1.0)),
    "anisotropic": (np.eye(3), (0.7, 0.7, 5.0)),
    "oblique30": (_rotation([1.0, 0.5, 0.2], 30.0), (0.7, 0.7, 5.0)),
    "permuted_flipped": (PERMUTED_FLIPPED, (0.7, 5.0, 0.7)),
    "oblique_permuted": (_rotation([0.2, -1.0, 0.4], 30.0) @ PERMUTED_FLIPPED, (1.3, 0.9, 2.5)),
}
CENTRE = np.array([12.0, -7.5, 31.0])


def _volume_from_function(name: str, shape_kji=(14, 40, 36), fn=None, dtype=np.float64):
    direction, spacing = GEOMETRIES[name]
    matrix = _matrix(direction, spacing, CENTRE, shape_kji)
    kji = np.indices(shape_kji).reshape(3, -1).T
    probe = Volume(np.zeros(shape_kji, dtype=np.float32), matrix)
    ras = probe.ijk_to_ras_points(array_index_to_ijk(kji))
    values = fn(ras).reshape(shape_kji)
    return Volume(values.astype(dtype), matrix, name)


def _crop_ras(region: Region) -> np.ndarray:
    """(S^3, 3) RAS of the crop voxel centres in C order of the crop array."""
    idx = np.indices((region.size,) * 3).reshape(3, -1).T
    return region.crop_to_ras_points(idx)


# ---------------------------------------------------------------------------------------------
# The crop frame.

def test_region_frame_and_round_trip():
    region = Region((10.0, -20.0, 5.5), size=128, spacing_mm=1.5)
    assert region.centre_index == 63.5
    np.testing.assert_allclose(region.crop_to_ras_points([63.5, 63.5, 63.5]), [10.0, -20.0, 5.5])
    np.testing.assert_allclose(region.crop_to_ras_points([0, 0, 0]),
                               [10.0 - 95.25, -20.0 - 95.25, 5.5 - 95.25])
    # Axis a is R, b is A, c is S.
    step = region.crop_to_ras_points([[1, 0, 0], [0, 1, 0], [0, 0, 1]]) - \
        region.crop_to_ras_points([0, 0, 0])
    np.testing.assert_allclose(step, 1.5 * np.eye(3))
    np.testing.assert_allclose(region.crop_to_ras @ region.ras_to_crop, np.eye(4), atol=1e-12)
    pts = np.random.default_rng(0).uniform(-200, 200, (50, 3))
    np.testing.assert_allclose(region.crop_to_ras_points(region.ras_to_crop_points(pts)), pts,
                               atol=1e-10)
    assert region.contains_ras([10.0 + 95.9, -20.0, 5.5])
    assert not region.contains_ras([10.0 + 96.1, -20.0, 5.5])
    assert list(region.contains_ras([[10.0, -20.0, 5.5], [500.0, 0, 0]])) == [True, False]
    np.testing.assert_allclose(region.shifted(2, -64).centre_ras, (10.0, -20.0, 5.5 - 96.0))
    assert hash(region) == hash(Region(np.array([10.0, -20.0, 5.5])))
    assert region == Region(np.array([10.0, -20.0, 5.5]))


@pytest.mark.parametrize("kwargs", [
    dict(centre_ras=(0.0, 1.0)), dict(centre_ras=(0.0, np.nan, 1.0)),
    dict(centre_ras=(0.0, 0.0, 0.0), size=1), dict(centre_ras=(0.0, 0.0, 0.0), size=12.5),
    dict(centre_ras=(0.0, 0.0, 0.0), spacing_mm=0.0),
])
def test_region_invalid_args(kwargs):
    with pytest.raises(ValueError, match="Region"):
        Region(**kwargs)


# ---------------------------------------------------------------------------------------------
# Sampling.

COEF = np.array([0.37, -1.21, 0.83])


def _linear(ras: np.ndarray) -> np.ndarray:
    return ras @ COEF + 4.0


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_sample_region_is_exact_for_linear_fields(name):
    volume = _volume_from_function(name, fn=_linear)
    region = Region(tuple(CENTRE + [1.3, -0.4, 0.9]), size=48, spacing_mm=1.5)
    crop = sample_region(volume, region)
    assert crop.shape == (48, 48, 48) and crop.dtype == np.float32
    ras = _crop_ras(region)
    interior = volume.contains_ras(ras, margin_voxels=0.0)
    outside = ~volume.contains_ras(ras, margin_voxels=0.5)
    assert interior.sum() > 1000 and outside.sum() > 1000  # the crop is partly outside
    values = crop.reshape(-1)
    np.testing.assert_allclose(values[interior], _linear(ras[interior]), atol=2e-3)
    assert np.all(values[outside] == 0.0)


@pytest.mark.parametrize("name", ["plain", "permuted_flipped"])
def test_sample_region_on_aligned_grid_reads_voxels_in_ras_order(name):
    """Crop voxels that coincide with original voxels get their values, with a = R, b = A, c = S,
    for trilinear and nearest alike."""
    rng = np.random.default_rng(1)
    direction = GEOMETRIES[name][0]
    spacing = (1.5, 1.5, 1.5)
    shape_kji = (20, 24, 28)
    matrix = _matrix(direction, spacing, CENTRE, shape_kji)
    volume = Volume(rng.integers(-1000, 1000, shape_kji).astype(np.int16), matrix)
    # Crop centre on a voxel corner of the image grid so crop voxels hit voxel centres.
    corner = volume.ijk_to_ras_points([10.5, 11.5, 9.5])
    region = Region(tuple(corner), size=16, spacing_mm=1.5)
    ras = _crop_ras(region)
    ijk = np.rint(volume.ras_to_ijk_points(ras)).astype(int)
    np.testing.assert_allclose(volume.ras_to_ijk_points(ras), ijk, atol=1e-9)
    expected = volume.array[ijk[:, 2], ijk[:, 1], ijk[:, 0]].reshape((16,) * 3)
    for order in (0, 1):  # float32 sampling positions: ~1e-6 voxel, values up to 1000
        np.testing.assert_allclose(sample_region(volume, region, order=order), expected,
                                   atol=1e-2)
    if name == "plain":  # identity direction: the crop is the sub-array transposed to (i, j, k)
        sub = volume.array[ijk[0, 2]:ijk[0, 2] + 16, ijk[0, 1]:ijk[0, 1] + 16,
                           ijk[0, 0]:ijk[0, 0] + 16]
        np.testing.assert_allclose(sample_region(volume, region), sub.transpose(2, 1, 0),
                                   atol=1e-2)


def test_sample_region_outside_image_is_zero():
    volume = _volume_from_function("oblique30", fn=lambda ras: _linear(ras) + 500.0)
    far = Region(tuple(CENTRE + [400.0, 0.0, 0.0]), size=32)
    assert not sample_region(volume, far).any()
    with pytest.raises(ValueError, match="order"):
        sample_region(volume, far, order=3)


def test_sample_region_reads_only_a_sub_block():
    """A crop in one corner of a big volume reads (and converts) only the voxels it needs."""

    class Recording(np.ndarray):
        reads: list = []

        def __getitem__(self, key):
            out = super().__getitem__(key)
            Recording.reads.append(np.shape(out))
            return out

    array = np.zeros((40, 400, 400), dtype=np.int16)
    array[:20, :40, :40] = 7
    volume = Volume(array.view(Recording), np.diag([1.0, 1.0, 2.0, 1.0]))
    region = Region((10.0, 10.0, 10.0), size=8, spacing_mm=1.5)  # 12 mm cube
    crop = sample_region(volume, region)
    np.testing.assert_allclose(crop, 7.0, rtol=1e-6)
    assert Recording.reads and max(np.prod(s) for s in Recording.reads) <= 10 * 17 * 17


# ---------------------------------------------------------------------------------------------
# Normalisation.

def test_normalize_crop_ct_hand_checked():
    crop = np.array([-2000.0, -1000.0, 0.0, 500.0, 1500.0, 1000.0], dtype=np.float32)
    out = normalize_crop(crop, "CT")
    # Clipped: [-1000, -1000, 0, 500, 1000, 1000]; > 0: [500, 1000, 1000].
    mean, std = 2500.0 / 3.0, math.sqrt(((500 - 2500 / 3) ** 2 + 2 * (1000 - 2500 / 3) ** 2) / 2)
    expected = (np.array([-1000, -1000, 0, 500, 1000, 1000]) - mean) / std
    np.testing.assert_allclose(out, expected, rtol=1e-5)
    assert out.dtype == np.float32


def test_normalize_crop_mr_is_not_clipped():
    crop = np.array([0.0, 0.0, 2000.0, 4000.0], dtype=np.float32)
    out = normalize_crop(crop, "MR")
    mean, std = 3000.0, math.sqrt(2 * 1000.0 ** 2)
    np.testing.assert_allclose(out, (crop - mean) / std, rtol=1e-6)
    # Padded zeros become -mean/std (torchio semantics).
    assert out[0] == pytest.approx(-mean / std)


def test_normalize_crop_guards():
    # No voxel > 0 (an all-air CT crop): whole-crop statistics instead.
    crop = np.array([-1000.0, -800.0, -600.0], dtype=np.float32)
    np.testing.assert_allclose(normalize_crop(crop, "CT"), [-1.0, 0.0, 1.0], atol=1e-6)
    # Voxels > 0 all equal: whole crop statistics.
    crop = np.array([0.0, 0.0, 5.0, 5.0], dtype=np.float32)
    std = np.std(crop, ddof=1)
    np.testing.assert_allclose(normalize_crop(crop, "MR"), (crop - 2.5) / std, rtol=1e-6)
    # Constant: only centred, no division by zero.
    np.testing.assert_array_equal(normalize_crop(np.full(8, 3.0, np.float32), "MR"), 0.0)


def test_resolve_modality():
    assert resolve_modality(np.array([-1024, 40]), "auto") == "CT"
    assert resolve_modality(np.array([0, 700]), "auto") == "MR"
    assert resolve_modality(-501.0, "AUTO") == "CT"
    assert resolve_modality(-1024.0, "mr") == "MR"
    with pytest.raises(ValueError, match="modality"):
        resolve_modality(0.0, "PET")


# ---------------------------------------------------------------------------------------------
# Mapping logits back.

def _reference_map(logits: np.ndarray, region: Region, volume: Volume) -> np.ndarray:
    """Brute force over every original voxel: geometry -> crop index -> trilinear with clamp."""
    shape = volume.array.shape
    kji = np.indices(shape).reshape(3, -1).T
    ras = volume.ijk_to_ras_points(array_index_to_ijk(kji))
    crop = region.ras_to_crop_points(ras)
    n = logits.shape[0]
    u = np.clip((crop - 1.5) / 4.0, 0.0, n - 1.0)
    lo = np.minimum(np.floor(u).astype(int), n - 2)
    w = u - lo
    value = np.zeros(len(u))
    for corner in range(8):
        bits = [(corner >> d) & 1 for d in range(3)]
        weight = np.prod([w[:, d] if bits[d] else 1 - w[:, d] for d in range(3)], axis=0)
        value += weight * logits[lo[:, 0] + bits[0], lo[:, 1] + bits[1], lo[:, 2] + bits[2]]
    inside = np.all((crop >= -0.5) & (crop <= region.size - 0.5), axis=1)
    return ((value > 0) & inside).reshape(shape).astype(np.uint8)


def _paste(shape, box, patch):
    full = np.zeros(shape, dtype=np.uint8)
    if box is not None:
        full[box] = patch
    return full


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_map_logits_plane_gives_half_space(name):
    """Logits linear in the cell index: the mask is a half-space through the region centre."""
    volume = _volume_from_function(name, shape_kji=(16, 50, 44), fn=lambda r: r[:, 0] * 0)
    region = Region(tuple(CENTRE + [0.31, -0.17, 0.23]), size=32, spacing_mm=1.5)  # L = 8
    normal = np.array([0.6, -0.3, 0.74])
    cells = np.indices((8, 8, 8)).reshape(3, -1).T.astype(float)
    logits = ((cells - 3.5) @ normal).reshape(8, 8, 8)
    box, patch = map_logits_to_volume(torch.from_numpy(logits).float(), region, volume)
    full = _paste(volume.array.shape, box, patch)
    kji = np.indices(volume.array.shape).reshape(3, -1).T
    ras = volume.ijk_to_ras_points(array_index_to_ijk(kji))
    crop = region.ras_to_crop_points(ras)
    inside = np.all((crop >= -0.5) & (crop <= 31.5), axis=1)
    side = (crop - region.centre_index) @ normal
    # Away from the plane, and where the logits are not clamped at the cube's edge cells.
    clear = (np.abs(side) > 1e-3) & np.all((crop >= 1.5) & (crop <= 29.5), axis=1)
    expected = ((side > 0) & inside).reshape(volume.array.shape)
    assert expected.sum() > 100
    np.testing.assert_array_equal(full.reshape(-1)[clear], expected.reshape(-1)[clear])
    np.testing.assert_array_equal(full, _reference_map(logits, region, volume))


@pytest.mark.parametrize("name", ["plain", "oblique30", "oblique_permuted"])
def test_map_logits_blob_matches_brute_force_in_a_small_box(name):
    volume = _volume_from_function(name, shape_kji=(16, 60, 50), fn=lambda r: r[:, 0] * 0)
    region = Region(tuple(CENTRE), size=128, spacing_mm=1.5)
    logits = np.full((32, 32, 32), -8.0)
    logits[15:17, 16, 14:17] = 6.0
    box, patch = map_logits_to_volume(torch.from_numpy(logits).float()[None, None], region,
                                      volume)
    reference = _reference_map(logits, region, volume)
    assert reference.sum() > 10
    np.testing.assert_array_equal(_paste(volume.array.shape, box, patch), reference)
    # The box lies within the cells around the blob (dilated by one cell), not the footprint.
    lo_cells, hi_cells = np.array([14, 15, 13]), np.array([17, 17, 17])
    lo, hi = 4 * lo_cells + 1.5, 4 * hi_cells + 1.5
    corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1])
                        for c in (lo[2], hi[2])])
    ijk = volume.ras_to_ijk_points(region.crop_to_ras_points(corners))
    lo_kji = np.floor(ijk.min(axis=0))[::-1]
    hi_kji = np.ceil(ijk.max(axis=0))[::-1]
    for axis in range(3):
        assert box[axis].start >= lo_kji[axis] and box[axis].stop <= hi_kji[axis] + 1


def test_map_logits_equals_trilinear_upsampling_on_the_crop_grid():
    """On an image whose voxels are the crop voxels, the mask is upsample(x4, trilinear,
    align_corners=False) > 0, transposed from (a, b, c) to the array's (k, j, i)."""
    shape_kji = (128, 128, 128)
    region = Region((3.0, -2.0, 7.0), size=128, spacing_mm=1.5)
    volume = Volume(np.broadcast_to(np.int16(0), shape_kji), region.crop_to_ras)
    rng = np.random.default_rng(3)
    logits = torch.from_numpy(rng.normal(-0.5, 1.0, (32, 32, 32))).float()
    box, patch = map_logits_to_volume(logits, region, volume)
    up = F.interpolate(logits[None, None], scale_factor=4, mode="trilinear",
                       align_corners=False)[0, 0]
    expected = (up > 0).numpy().astype(np.uint8).transpose(2, 1, 0)
    full = _paste(shape_kji, box, patch)
    assert np.mean(full != expected) < 1e-5  # only float rounding at exactly-zero logits


def test_map_logits_hint_and_empty():
    volume = _volume_from_function("plain", fn=lambda r: r[:, 0] * 0)
    region = Region(tuple(CENTRE), size=32)
    negative = -torch.ones(8, 8, 8)
    box, patch = map_logits_to_volume(negative, region, volume)
    assert box is None and patch.size == 0
    hint = (slice(2, 5), slice(3, 9), slice(0, 4))
    box, patch = map_logits_to_volume(negative, region, volume, bbox_hint=hint)
    assert box == hint and patch.shape == (3, 6, 4) and not patch.any()
    logits = -torch.ones(8, 8, 8)
    logits[4, 4, 4] = 1.0
    box, patch = map_logits_to_volume(logits, region, volume, bbox_hint=hint)
    assert box == bbox_union(box, hint) and patch.any()


def test_footprint_and_bounds():
    volume = _volume_from_function("plain", shape_kji=(10, 20, 30), fn=lambda r: r[:, 0] * 0)
    low, high = volume.ras_bounds()
    np.testing.assert_allclose(high - low, [30.0, 20.0, 10.0])
    np.testing.assert_allclose((low + high) / 2, CENTRE)
    region = Region(tuple(CENTRE), size=8, spacing_mm=1.5)  # 12 mm cube
    box = footprint_bbox(volume, region)
    assert [s.stop - s.start for s in box] == [10, 12, 12]  # the image is 10 mm along S
    assert footprint_bbox(volume, Region(tuple(CENTRE + 100), size=8)) is None


def test_separable_and_general_paths_agree(monkeypatch):
    """Axis-aligned images take three 1-D passes; forcing the grid_sample path gives the same."""
    import SGPSAMLib.region as region_module

    rng = np.random.default_rng(5)
    direction, spacing = GEOMETRIES["permuted_flipped"]
    shape_kji = (30, 12, 40)
    volume = Volume(rng.integers(-1000, 1000, shape_kji).astype(np.int16),
                    _matrix(direction, spacing, CENTRE, shape_kji))
    region = Region(tuple(CENTRE + [0.4, 2.1, -0.3]), size=32, spacing_mm=1.5)
    logits = torch.from_numpy(rng.normal(0.0, 1.0, (8, 8, 8))).float()
    fast = [sample_region(volume, region, order) for order in (0, 1)]
    fast_box, fast_patch = map_logits_to_volume(logits, region, volume)
    monkeypatch.setattr(region_module, "_aligned_axes", lambda steps, extent: None)
    slow = [sample_region(volume, region, order) for order in (0, 1)]
    slow_box, slow_patch = map_logits_to_volume(logits, region, volume)
    np.testing.assert_allclose(fast[1], slow[1], atol=0.05)
    assert np.mean(fast[0] != slow[0]) < 1e-3  # nearest: ties may round differently
    assert fast_box == slow_box
    assert np.mean(fast_patch != slow_patch) < 1e-4
