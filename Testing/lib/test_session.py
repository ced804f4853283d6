"""session.py: state machine, embedding cache, prompting modes, undo, changed boxes, windows for
large targets, and invariance of the mask to how the same physical image is stored."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from SGPSAMLib.build import build_model
from SGPSAMLib.errors import PromptError, VolumeError
from SGPSAMLib.geometry import Volume, array_index_to_ijk
from SGPSAMLib.region import map_logits_to_volume
from SGPSAMLib.session import TIMING_KEYS, InteractiveSession, Prediction


class OracleModel(nn.Module):
    """Deterministic stand-in with the model's interface whose logits come from the crop itself.

    The 'embedding' is the 4x average-pooled normalised crop (the 32^3 low-res grid); decode
    thresholds it halfway between the typical in-image cell (median) and the brightest cell,
    ignoring the prompts. So the mask is a real, geometry-dependent shape.
    """

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(image_size=128, crop_spacing_mm=1.5)
        self.low_res_size = 32
        self.encode_calls = 0
        self.decode_points: list = []

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        self.encode_calls += 1
        return F.avg_pool3d(image.float(), 4)

    def decode(self, embedding, points, labels, mask_logits):
        self.decode_points.append((points.shape[1], labels.tolist()))
        x = embedding
        padding = x.amin()
        in_image = x[x > padding + 1e-3]
        threshold = 0.5 * (in_image.median() + x.amax())
        return x - threshold


def _rotation(axis, deg):
    axis = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    x, y, z = axis
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    cross = np.array([[0, -z, y], [z, 0, -x], [-y, x, 0]])
    return c * np.eye(3) + s * cross + (1 - c) * np.outer(axis, axis)


def _matrix(direction, spacing, centre_ras, shape_kji):
    m = np.eye(4)
    m[:3, :3] = np.asarray(direction, dtype=float) * np.asarray(spacing, dtype=float)
    m[:3, 3] = np.asarray(centre_ras) - m[:3, :3] @ ((np.asarray(shape_kji[::-1]) - 1) / 2)
    return m


def _ras_of_voxels(volume: Volume) -> np.ndarray:
    kji = np.indices(volume.array.shape).reshape(3, -1).T
    return volume.ijk_to_ras_points(array_index_to_ijk(kji))


LESION_CENTRE = np.array([13.0, -3.0, 19.0])
LESION_RADII = np.array([25.0, 18.0, 12.0])


def _phantom(ras: np.ndarray, centre=LESION_CENTRE, radii=LESION_RADII) -> np.ndarray:
    """Background 100, a bright ellipsoid (500) with a soft edge, defined in RAS mm."""
    q = np.sqrt(np.sum(((ras - centre) / radii) ** 2, axis=-1))
    return 100.0 + 400.0 / (1.0 + np.exp(-(1.0 - q) * 10.0))


def _physical_volume(direction, spacing, shape_kji, centre=(10.0, -5.0, 20.0), fn=_phantom,
                     name="phantom", dtype=np.float32) -> Volume:
    matrix = _matrix(direction, spacing, centre, shape_kji)
    probe = Volume(np.zeros(shape_kji, dtype=np.uint8), matrix)
    values = fn(_ras_of_voxels(probe)).reshape(shape_kji)
    return Volume(values.astype(dtype), matrix, name)


def _permute_flip(volume: Volume, perm=(2, 0, 1), flips=(True, False, True)) -> Volume:
    """Same physical image, stored with the IJK axes permuted and flipped (matrix adjusted)."""
    n_ijk = np.asarray(volume.shape_ijk)
    # New axis d is old axis perm[d], optionally reversed.
    q = np.zeros((4, 4))
    q[3, 3] = 1.0
    for d in range(3):
        q[perm[d], d] = -1.0 if flips[d] else 1.0
        if flips[d]:
            q[perm[d], 3] = n_ijk[perm[d]] - 1
    array_ijk = volume.array.transpose(2, 1, 0)  # (i, j, k)
    new = array_ijk.transpose(perm)
    for d in range(3):
        if flips[d]:
            new = np.flip(new, axis=d)
    return Volume(np.ascontiguousarray(new.transpose(2, 1, 0)), volume.ijk_to_ras @ q,
                  volume.name + "_permuted")


def _unpermute_mask(mask_new: np.ndarray, perm=(2, 0, 1), flips=(True, False, True)):
    out = mask_new.transpose(2, 1, 0)
    for d in range(3):
        if flips[d]:
            out = np.flip(out, axis=d)
    inverse = np.argsort(perm)
    return np.ascontiguousarray(out.transpose(inverse).transpose(2, 1, 0))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2.0 * np.logical_and(a, b).sum() / max(1, a.sum() + b.sum())


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return build_model("tiny").eval()


@pytest.fixture
def ct_volume() -> Volume:
    rng = np.random.default_rng(0)
    array = rng.normal(-700.0, 40.0, (30, 48, 52)).astype(np.int16)
    array[12:18, 20:28, 22:30] = 60
    return Volume(array, _matrix(np.eye(3), (0.9, 0.9, 2.5), (0.0, 0.0, 0.0), array.shape), "ct")


@pytest.fixture
def oracle_volume() -> Volume:
    return _physical_volume(np.eye(3), (1.5, 1.5, 2.0), (40, 60, 64))


# ---------------------------------------------------------------------------------------------
# State machine and validation.

def test_calls_before_set_volume_name_it(tiny_model):
    session = InteractiveSession(tiny_model, device="cpu")
    for call in (lambda: session.add_point((0, 0, 0)), session.undo, session.reset,
                 lambda: session.prepare((0, 0, 0))):
        with pytest.raises(RuntimeError, match=r"set_volume"):
            call()


@pytest.mark.parametrize("kwargs, match", [
    (dict(prompt_mode="all"), "prompt_mode"), (dict(max_windows=0), "max_windows"),
    (dict(cache_size=0), "cache_size"), (dict(device="tpu"), "device"),
])
def test_invalid_args(tiny_model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        InteractiveSession(tiny_model, **kwargs)


def _bad_volumes():
    eye = np.eye(4)
    nan = np.ones((4, 5, 6), np.float32)
    nan[1, 2, 3] = np.nan
    inf = np.arange(120, dtype=np.float64).reshape(4, 5, 6)
    inf[0, 0, 0] = np.inf
    return [
        (Volume(np.arange(50, dtype=np.int16).reshape(1, 5, 10), eye), "single slice / 2-D"),
        (Volume(np.arange(50, dtype=np.int16).reshape(5, 10, 1), eye), "single slice / 2-D"),
        (Volume(np.full((4, 5, 6), 7, np.int16), eye), "constant"),
        (Volume(np.zeros((4, 5, 6), np.float32), eye), "constant"),
        (Volume(nan, eye), "NaN"),
        (Volume(inf, eye), "infinite"),
        (Volume(np.ones((4, 5, 6), np.complex64), eye), "dtype"),
    ]


@pytest.mark.parametrize("volume, match", _bad_volumes())
def test_bad_volumes_raise_volume_error(tiny_model, volume, match):
    session = InteractiveSession(tiny_model, device="cpu")
    with pytest.raises(VolumeError, match=match):
        session.set_volume(volume)
    assert session.state is None


def test_set_volume_validates_type_and_modality(tiny_model, ct_volume):
    session = InteractiveSession(tiny_model, device="cpu")
    with pytest.raises(TypeError, match="Volume"):
        session.set_volume(ct_volume.array)
    with pytest.raises(ValueError, match="modality"):
        session.set_volume(ct_volume, modality="PET")
    session.set_volume(ct_volume)
    assert session.state.modality == "CT"
    assert session.state.mask.shape == ct_volume.array.shape
    assert session.state.mask.dtype == np.uint8 and not session.state.mask.any()
    assert not session.state.embeddings  # no embedding before a click or prepare()
    session.set_volume(ct_volume.with_array(ct_volume.array + 1000), modality="auto")
    assert session.state.modality == "MR"


def test_point_outside_raises_and_leaves_state_unchanged(tiny_model, ct_volume):
    session = InteractiveSession(tiny_model, device="cpu")
    session.set_volume(ct_volume)
    inside = ct_volume.ijk_to_ras_points([26, 24, 15])
    session.add_point(inside)
    before = session.state.mask.copy()
    n_clicks, n_undo = len(session.state.clicks), len(session.state.undo_stack)
    with pytest.raises(PromptError, match=r"R=500\.0, A=0\.0, S=0\.0 mm.*RAS bounds R -23\.4"):
        session.add_point((500.0, 0.0, 0.0))
    with pytest.raises(PromptError, match="finite"):
        session.add_point((np.nan, 0.0, 0.0))
    with pytest.raises(PromptError, match="3"):
        session.add_point((1.0, 2.0))
    np.testing.assert_array_equal(session.state.mask, before)
    assert len(session.state.clicks) == n_clicks and len(session.state.undo_stack) == n_undo


# ---------------------------------------------------------------------------------------------
# Real tiny model: smoke, cache, prompt modes.

def test_smoke_with_tiny_model(tiny_model, ct_volume):
    session = InteractiveSession(tiny_model, device="cpu")
    session.set_volume(ct_volume)
    ras = ct_volume.ijk_to_ras_points([26, 24, 15])
    pred = session.add_point(ras)
    assert isinstance(pred, Prediction)
    assert set(pred.timings) == set(TIMING_KEYS) and pred.timings["encode"] > 0
    assert not pred.embedding_cached and pred.region_id == 0
    np.testing.assert_allclose(pred.region_centre_ras, ras)
    assert pred.mask.shape == ct_volume.array.shape and pred.mask.dtype == np.uint8
    assert set(np.unique(pred.mask)) <= {0, 1}
    assert pred.voxels == int(pred.mask.sum())
    assert pred.low_res_logits.shape == (32, 32, 32)
    # The mask is the logits mapped back (one region, nothing else written).
    box, patch = map_logits_to_volume(torch.from_numpy(pred.low_res_logits), pred.region,
                                      ct_volume)
    expected = np.zeros_like(pred.mask)
    if box is not None:
        expected[box] = patch
    np.testing.assert_array_equal(pred.mask, expected)
    # Read-only view of the live mask.
    assert not pred.mask.flags.writeable
    assert np.shares_memory(pred.mask, session.state.mask)
    with pytest.raises(ValueError):
        pred.mask[0, 0, 0] = 1


def test_second_click_in_region_does_not_encode(tiny_model, ct_volume):
    session = InteractiveSession(tiny_model, device="cpu")
    calls = []
    original = tiny_model.encode
    tiny_model.encode = lambda image: calls.append(1) or original(image)
    try:
        session.set_volume(ct_volume)
        ras = ct_volume.ijk_to_ras_points([26, 24, 15])
        first = session.add_point(ras)
        second = session.add_point(ras + [3.0, -2.0, 1.0], positive=False)
        third = session.add_point(ras + [1.0, 1.0, 0.0])
        assert len(calls) == 1
        assert not first.embedding_cached and second.embedding_cached and third.embedding_cached
        assert second.timings["encode"] == 0.0 and second.timings["sample"] == 0.0
        assert second.region_id == third.region_id == 0
        # reset keeps the cache
        session.reset()
        again = session.add_point(ras)
        assert again.embedding_cached and len(calls) == 1
        # prepare() at a new point encodes once; a click there reuses it
        other = ct_volume.ijk_to_ras_points([5, 5, 3])
        session.reset()
        session.prepare(other)
        assert len(calls) == 2
        pred = session.add_point(other + [2.0, 2.0, 2.0])  # in the prepared region's centre
        assert pred.embedding_cached and len(calls) == 2
        np.testing.assert_allclose(pred.region_centre_ras, other)
    finally:
        del tiny_model.encode


def test_lru_cache_evicts():
    model = OracleModel()
    session = InteractiveSession(model, device="cpu", cache_size=1, extend_at_border=False)
    big = _physical_volume(np.eye(3), (4.0, 4.0, 4.0), (40, 40, 120), centre=(0.0, 0.0, 0.0),
                           fn=lambda r: 100.0 + r[:, 0] * 0.1 + 50)
    session.set_volume(big)
    a, b = np.array([-200.0, 0.0, 0.0]), np.array([200.0, 0.0, 0.0])
    assert session.add_point(a).region_id == 0
    assert session.add_point(b).region_id == 1  # outside region 0: a new region
    pred = session.add_point(a + 1.0)
    assert pred.region_id == 0 and not pred.embedding_cached
    assert model.encode_calls == 3 and len(session.state.embeddings) == 1


@pytest.mark.parametrize("mode, expected", [
    ("latest", [(1, [[1]]), (1, [[0]]), (1, [[1]])]),
    ("cumulative", [(1, [[1]]), (2, [[1, 0]]), (3, [[1, 0, 1]])]),
])
def test_prompt_modes_send_expected_points(tiny_model, ct_volume, mode, expected):
    session = InteractiveSession(tiny_model, device="cpu", prompt_mode=mode,
                                 extend_at_border=False)
    seen = []
    original = tiny_model.decode

    def spy(embedding, points, labels, mask_logits):
        seen.append((points.shape[1], labels.tolist(), points.clone(), mask_logits.clone()))
        return original(embedding, points, labels, mask_logits)

    tiny_model.decode = spy
    try:
        session.set_volume(ct_volume)
        ras = ct_volume.ijk_to_ras_points([26, 24, 15])
        session.add_point(ras)
        second = session.add_point(ras + [4.5, 0.0, 0.0], positive=False)
        last = session.add_point(ras + [0.0, 3.0, 0.0])
    finally:
        del tiny_model.decode
    assert [(n, labels) for n, labels, _, _ in seen] == expected
    # Points are crop voxel indices in (R, A, S) tensor order: the first click is the centre.
    np.testing.assert_allclose(seen[0][2][0, 0].numpy(), [63.5, 63.5, 63.5], atol=1e-4)
    np.testing.assert_allclose(seen[-1][2][0, -1].numpy(), [63.5, 65.5, 63.5], atol=1e-4)
    # Zeros at first, then the previous low-res logits of the region.
    assert not seen[0][3].any()
    np.testing.assert_array_equal(seen[2][3][0, 0].numpy(), second.low_res_logits)
    assert last.region_id == 0


def test_first_negative_click_waits(tiny_model, ct_volume):
    session = InteractiveSession(tiny_model, device="cpu", prompt_mode="cumulative")
    seen = []
    original = tiny_model.decode
    tiny_model.decode = lambda e, p, la, m: seen.append(la.tolist()) or original(e, p, la, m)
    try:
        session.set_volume(ct_volume)
        ras = ct_volume.ijk_to_ras_points([26, 24, 15])
        pred = session.add_point(ras + [5.0, 0.0, 0.0], positive=False)
        assert pred.changed_bbox is None and pred.voxels == 0 and pred.region_id is None
        assert "negative point stored" in pred.message and not seen
        assert not session.state.embeddings
        pred = session.add_point(ras)
        assert seen == [[[0, 1]]]  # the stored negative joins the first region's prompt
        np.testing.assert_allclose(pred.region_centre_ras, ras)
        assert session.undo() is not None and session.undo() is not None
        assert session.undo() is None
        assert not session.state.clicks and not session.state.regions
    finally:
        del tiny_model.decode


# ---------------------------------------------------------------------------------------------
# Undo, reset and changed boxes.

def _check_changed_box(before: np.ndarray, pred: Prediction) -> None:
    changed = before != pred.mask
    if pred.changed_bbox is None:
        assert not changed.any()
        return
    outside = changed.copy()
    outside[pred.changed_bbox] = False
    assert not outside.any(), "a voxel changed outside changed_bbox"


def test_undo_restores_exactly_and_boxes_cover_changes(tiny_model, ct_volume):
    session = InteractiveSession(tiny_model, device="cpu")
    session.set_volume(ct_volume)
    ras = ct_volume.ijk_to_ras_points([26, 24, 15])
    snapshots = [session.state.mask.copy()]
    logits = [None]
    for offset, positive in (([0, 0, 0], True), ([3, 0, 0], False), ([0, -2, 2], True)):
        pred = session.add_point(ras + offset, positive)
        _check_changed_box(snapshots[-1], pred)
        snapshots.append(pred.mask.copy())
        logits.append(pred.low_res_logits)
    for step in (2, 1, 0):
        before = session.state.mask.copy()
        pred = session.undo()
        np.testing.assert_array_equal(pred.mask, snapshots[step])
        _check_changed_box(before, pred)
        assert pred.voxels == int(snapshots[step].sum())
        if step:
            np.testing.assert_array_equal(session.state.regions[0].logits.numpy(), logits[step])
        assert len(session.state.clicks) == step
    assert session.undo() is None
    assert not session.state.regions


def test_reuse_encoded_region_prepares_a_cached_region_for_a_nearby_lesion(ct_volume):
    """batch's per-case reuse: a point in the central half of an encoded region reuses it (no
    encoder pass); a point outside every central half changes nothing."""
    model = OracleModel()
    session = InteractiveSession(model, device="cpu", extend_at_border=False)
    with pytest.raises(RuntimeError, match="set_volume"):
        session.reuse_encoded_region((0.0, 0.0, 0.0))
    session.set_volume(ct_volume, modality="CT")
    ras = ct_volume.ijk_to_ras_points([26, 24, 15])
    assert session.reuse_encoded_region(ras) is None  # nothing encoded yet
    first = session.add_point(ras)
    assert model.encode_calls == 1
    session.reset()
    near = ras + [20.0, -15.0, 10.0]  # < 48 mm = size / 4 crop voxels from the centre
    assert session.reuse_encoded_region(near) == first.region
    again = session.add_point(near)
    assert again.embedding_cached and model.encode_calls == 1
    np.testing.assert_allclose(again.region_centre_ras, first.region_centre_ras)
    session.reset()
    far = ras + [60.0, 0.0, 0.0]
    assert session.reuse_encoded_region(far) is None
    assert session.state.prepared == first.region  # unchanged by the refused reuse


def test_reset_clears_everything_but_the_cache(tiny_model, ct_volume):
    session = InteractiveSession(tiny_model, device="cpu")
    session.set_volume(ct_volume)
    ras = ct_volume.ijk_to_ras_points([26, 24, 15])
    session.add_point(ras)
    session.add_point(ras + 2.0, positive=False)
    session.reset()
    state = session.state
    assert not state.mask.any() and state.voxels == 0
    assert not state.clicks and not state.regions and not state.undo_stack
    assert len(state.embeddings) == 1
    assert session.undo() is None


# ---------------------------------------------------------------------------------------------
# Oracle model: geometry invariance, changed boxes on real shapes, windows.

def test_oracle_mask_is_the_lesion(oracle_volume):
    session = InteractiveSession(OracleModel(), device="cpu")
    session.set_volume(oracle_volume, modality="MR")
    pred = session.add_point(LESION_CENTRE)
    truth = (_phantom(_ras_of_voxels(oracle_volume)) > 300).reshape(oracle_volume.array.shape)
    assert _dice(pred.mask, truth) > 0.9
    assert len(session.state.regions) == 1  # the lesion stays inside one region


def test_mask_is_invariant_to_storage_order_and_obliquity():
    """The same physical image stored plainly, with permuted + flipped axes, and with a 30 degree
    oblique direction matrix gives the same mask in physical space."""
    shape = (44, 64, 72)
    plain = _physical_volume(np.eye(3), (1.5, 1.3, 2.0), shape)
    permuted = _permute_flip(plain)
    # Sanity: the permuted volume holds the same physical samples.
    ras = plain.ijk_to_ras_points([[5, 7, 9], [60, 3, 40]])
    ijk = np.rint(permuted.ras_to_ijk_points(ras)).astype(int)
    np.testing.assert_array_equal(permuted.array[ijk[:, 2], ijk[:, 1], ijk[:, 0]],
                                  plain.array[[9, 40], [7, 3], [5, 60]])
    oblique = _physical_volume(_rotation([0.3, -0.4, 1.0], 30.0), (1.5, 1.3, 2.0), shape)
    clicks = [(LESION_CENTRE, True), (LESION_CENTRE + [8.0, 3.0, -2.0], True),
              (LESION_CENTRE + [30.0, 0.0, 0.0], False)]
    results = {}
    for name, volume in (("plain", plain), ("permuted", permuted), ("oblique", oblique)):
        session = InteractiveSession(OracleModel(), device="cpu")
        session.set_volume(volume)
        for ras, positive in clicks:
            pred = session.add_point(ras, positive)
        results[name] = (volume, pred)
    volume_p, pred_p = results["plain"]
    truth = (_phantom(_ras_of_voxels(volume_p)) > 300).reshape(volume_p.array.shape)
    assert _dice(pred_p.mask, truth) > 0.9  # a real shape, not an empty or full mask
    # (2) permuted + flipped storage: voxel for voxel the same physical mask.
    _, pred_q = results["permuted"]
    back = _unpermute_mask(pred_q.mask)
    assert back.shape == pred_p.mask.shape
    assert _dice(back, pred_p.mask) >= 0.999
    # (3) oblique: compare on the oblique grid with the plain session's logits mapped there.
    volume_o, pred_o = results["oblique"]
    box, patch = map_logits_to_volume(torch.from_numpy(pred_p.low_res_logits), pred_p.region,
                                      volume_o)
    plain_on_oblique = np.zeros_like(pred_o.mask)
    plain_on_oblique[box] = patch
    assert pred_o.mask.sum() > 1000
    assert _dice(pred_o.mask, plain_on_oblique) >= 0.99


def _long_target_volume(length_mm=300.0) -> tuple[Volume, np.ndarray]:
    centre = np.array([0.0, 0.0, 0.0])
    radii = np.array([length_mm / 2, 20.0, 20.0])
    volume = _physical_volume(np.eye(3), (3.0, 3.0, 3.0), (30, 34, 140), centre=centre,
                              fn=lambda r: _phantom(r, centre, radii))
    truth = (_phantom(_ras_of_voxels(volume), centre, radii) > 300).reshape(volume.array.shape)
    return volume, truth


def test_large_target_is_followed_by_overlapping_windows():
    volume, truth = _long_target_volume()
    model = OracleModel()
    session = InteractiveSession(model, device="cpu")
    session.set_volume(volume)
    before = session.state.mask.copy()
    pred = session.add_point((0.0, 0.0, 0.0))
    _check_changed_box(before, pred)
    regions = session.state.regions
    assert len(regions) == 3 and {r.group for r in regions} == {0}
    centres = sorted(r.region.centre_ras[0] for r in regions)
    np.testing.assert_allclose(centres, [-96.0, 0.0, 96.0])
    assert "window" in pred.message
    # Windows get a positive seed in the overlap as their last point (the click at the centre
    # lies exactly on their faces, so it may join too).
    assert len(model.decode_points) == 3 and model.decode_points[0] == (1, [[1]])
    assert all(labels[0][-1] == 1 for _, labels in model.decode_points[1:])
    assert _dice(pred.mask, truth) > 0.9
    single = InteractiveSession(OracleModel(), device="cpu", extend_at_border=False)
    single.set_volume(volume)
    alone = single.add_point((0.0, 0.0, 0.0))
    # The parts beyond the first region's faces (|R| > 100 mm) are found only with windows.
    far = truth & (np.abs(_ras_of_voxels(volume)[:, 0]) > 100.0).reshape(truth.shape)
    assert far.sum() > 100
    assert alone.mask[far].mean() == 0.0 and pred.mask[far].mean() > 0.8
    # A click in a window goes to that window (nearest centre) and decodes only it.
    before = pred.mask.copy()
    again = session.add_point((110.0, 0.0, 0.0), positive=False)
    assert again.region_id == [r.region.centre_ras[0] for r in regions].index(96.0)
    assert again.embedding_cached
    _check_changed_box(before, again)
    # One undo takes back the whole extension step.
    session.undo()
    session.undo()
    assert not session.state.mask.any() and not session.state.regions


def test_max_windows_caps_extension():
    volume, truth = _long_target_volume()
    session = InteractiveSession(OracleModel(), device="cpu", max_windows=2)
    session.set_volume(volume)
    session.add_point((0.0, 0.0, 0.0))
    assert len(session.state.regions) == 2


def test_second_lesion_far_away_starts_a_new_region(oracle_volume):
    big = _physical_volume(np.eye(3), (3.0, 3.0, 3.0), (30, 30, 150), centre=(0.0, 0.0, 0.0),
                           fn=lambda r: _phantom(r, np.array([-150.0, 0, 0]), LESION_RADII)
                           + _phantom(r, np.array([150.0, 0, 0]), LESION_RADII) - 100.0)
    session = InteractiveSession(OracleModel(), device="cpu")
    session.set_volume(big)
    first = session.add_point((-150.0, 0.0, 0.0))
    before = first.mask.copy()
    second = session.add_point((150.0, 0.0, 0.0))
    _check_changed_box(before, second)
    assert (first.region_id, second.region_id) == (0, 1)
    assert [r.group for r in session.state.regions] == [0, 1]
    truth = (_phantom(_ras_of_voxels(big), np.array([-150.0, 0, 0]), LESION_RADII) > 300) | \
        (_phantom(_ras_of_voxels(big), np.array([150.0, 0, 0]), LESION_RADII) > 300)
    assert _dice(second.mask, truth.reshape(big.array.shape)) > 0.9
    # A negative click outside every region is only stored.
    pred = session.add_point((0.0, 0.0, 0.0), positive=False)
    assert pred.region_id is None and "outside every region" in pred.message
    assert len(session.state.regions) == 2
