"""zoom.py and the session's ``zoom``: a new lesion is looked at closely first and opened again,
wider, when its answer is large; the probe's answer never shows, undo and ``zoom=False`` work."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_session import OracleModel, _dice, _physical_volume, _ras_of_voxels

from SGPSAMLib import zoom
from SGPSAMLib.session import InteractiveSession
from SGPSAMLib.zoom import ZoomPolicy, answer_is_large, zoom_policy

POLICY = ZoomPolicy(probe_mm=0.75, wide_mm=1.5, large_mm=15.0)


def _ball_logits(size: int, centre, radius: float) -> torch.Tensor:
    grid = np.stack(np.meshgrid(*(np.arange(size),) * 3, indexing="ij"), axis=-1)
    inside = np.linalg.norm(grid - np.asarray(centre), axis=-1) <= radius
    return torch.from_numpy(np.where(inside, 2.0, -2.0).astype(np.float32))


def test_answer_is_large_by_equivalent_diameter_and_faces():
    # A ball of radius 5 cells at 1 mm cells: ~10 mm across.
    ball = _ball_logits(32, (16, 16, 16), 5.0)
    voxels = int((ball > 0).sum())
    diameter = (6 * voxels / math.pi) ** (1 / 3)
    assert 9.5 < diameter < 10.5
    assert answer_is_large(ball, 1.0, diameter - 0.1)
    assert not answer_is_large(ball, 1.0, diameter + 0.1)
    assert answer_is_large(ball, 2.0, 2 * diameter - 0.1)  # the cell size is in mm
    # A small answer touching a face of the grid may go on beyond it: large.
    assert answer_is_large(_ball_logits(32, (0, 16, 16), 2.0), 1.0, 50.0)
    assert answer_is_large(_ball_logits(32, (16, 16, 31), 2.0), 1.0, 50.0)
    assert not answer_is_large(torch.full((8, 8, 8), -1.0), 1.0, 1.0)  # empty: not large
    with pytest.raises(ValueError, match="D, H, W"):
        answer_is_large(ball[None], 1.0, 10.0)


def test_policy_checks_and_lookup():
    with pytest.raises(ValueError, match="wide_mm"):
        ZoomPolicy(probe_mm=1.5, wide_mm=0.75, large_mm=10.0)
    for bad in (0.0, -1.0, float("nan"), True):
        with pytest.raises(ValueError, match="probe_mm"):
            ZoomPolicy(probe_mm=bad, wide_mm=1.5, large_mm=10.0)
    assert zoom_policy(SimpleNamespace(preset="demo")) == zoom.ZOOM_POLICIES["demo"]
    # Official SAM-Med3D architectures keep their fixed crop.
    assert zoom_policy(SimpleNamespace(preset="sam_med3d")) is None
    assert zoom_policy(SimpleNamespace(preset="sam_med3d_turbo")) is None
    assert zoom_policy(SimpleNamespace(image_size=128)) is None


class _ZoomOracle(OracleModel):
    """The oracle with a preset that has a zoom policy (registered by the fixture)."""

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(image_size=128, crop_spacing_mm=1.5, preset="zoom-test")


@pytest.fixture
def policy(monkeypatch):
    monkeypatch.setitem(zoom.ZOOM_POLICIES, "zoom-test", POLICY)
    return POLICY


def _ball_volume(radius_mm: float):
    def bright_ball(ras: np.ndarray) -> np.ndarray:
        values = np.full(len(ras), 100.0)
        values[np.linalg.norm(ras, axis=1) <= radius_mm] = 500.0
        return values

    volume = _physical_volume(np.eye(3), (1.0, 1.0, 1.0), (64, 64, 64), centre=(0.0, 0.0, 0.0),
                              fn=bright_ball)
    truth = (np.linalg.norm(_ras_of_voxels(volume), axis=1) <= radius_mm).reshape(
        volume.array.shape)
    return volume, truth


def test_small_lesion_stays_in_the_close_window(policy):
    volume, truth = _ball_volume(4.0)  # 8 mm across
    session = InteractiveSession(_ZoomOracle(), device="cpu")
    assert session.zoom == policy and session.start_spacing_mm == 0.75
    session.set_volume(volume, modality="MR")
    first = session.add_point((0.0, 0.0, 0.0))
    assert first.region.spacing_mm == 0.75 and len(session.state.regions) == 1
    assert "opened at" not in first.message
    assert _dice(first.mask, truth) > 0.7
    # The close window resolves the small ball better than the model's own 1.5 mm.
    fixed = InteractiveSession(_ZoomOracle(), device="cpu", zoom=False)
    assert fixed.zoom is None and fixed.start_spacing_mm == 1.5
    fixed.set_volume(volume, modality="MR")
    coarse = fixed.add_point((0.0, 0.0, 0.0))
    assert coarse.region.spacing_mm == 1.5
    assert _dice(first.mask, truth) > _dice(coarse.mask, truth)


def _halo_volume():
    """A 28 mm bright ball (500) in a halo (350) to 25 mm, in a 90 mm cube of 100 (with a dark
    slab, 0) inside a 200 mm volume of 300. The oracle thresholds halfway between the crop's
    median and maximum: the close window (96 mm, mostly 100) draws ball + halo, 50 mm across;
    the wide one (192 mm, mostly 300) only the ball. So the close look reaches beyond it."""
    def values(ras: np.ndarray) -> np.ndarray:
        out = np.full(len(ras), 300.0)
        out[np.abs(ras).max(axis=1) <= 45.0] = 100.0
        out[(ras[:, 0] > 38.0) & (ras[:, 0] <= 45.0)] = 0.0  # the oracle's "padding" level
        r = np.linalg.norm(ras, axis=1)
        out[r <= 25.0] = 350.0
        out[r <= 14.0] = 500.0
        return out

    volume = _physical_volume(np.eye(3), (2.0, 2.0, 2.0), (100, 100, 100),
                              centre=(0.0, 0.0, 0.0), fn=values)
    radius = np.linalg.norm(_ras_of_voxels(volume), axis=1).reshape(volume.array.shape)
    return volume, radius


def test_large_lesion_is_opened_again_wider_and_undo_restores(policy):
    volume, radius = _halo_volume()
    close = InteractiveSession(_ZoomOracle(), device="cpu", zoom=False)
    close.start_spacing_mm = policy.probe_mm  # what the close look alone would show
    close.set_volume(volume, modality="MR")
    assert np.asarray(close.add_point((1.0, 0.0, 0.0)).mask)[radius > 20.0].any()
    fixed = InteractiveSession(_ZoomOracle(), device="cpu", zoom=False)
    fixed.set_volume(volume, modality="MR")
    expected = fixed.add_point((1.0, 0.0, 0.0)).mask.copy()
    assert not expected[radius > 20.0].any() and _dice(expected, radius <= 14.0) > 0.8

    model = _ZoomOracle()
    session = InteractiveSession(model, device="cpu")
    session.set_volume(volume, modality="MR")
    first = session.add_point((1.0, 0.0, 0.0))
    assert model.encode_calls == 2  # the close look, then the wide one
    assert first.region.spacing_mm == 1.5 and len(session.state.regions) == 1
    assert first.region_id == 0 and session.state.clicks[-1].region_id == 0
    assert "opened at 1.5 mm" in first.message
    # What shows is exactly the wide window's answer; nothing of the close look is left.
    assert np.array_equal(first.mask, expected)
    assert first.voxels == int(np.count_nonzero(expected))
    # Later clicks on the lesion keep its spacing.
    second = session.add_point((-3.0, 2.0, 0.0), positive=False)
    assert second.region.spacing_mm == 1.5 and len(session.state.regions) == 1
    session.undo()
    undone = session.undo()
    assert not np.asarray(undone.mask).any() and undone.voxels == 0
    assert session.state.regions == [] and session.state.clicks == []


def test_prepare_uses_the_close_spacing_so_the_first_click_is_a_cache_hit(policy):
    volume, _ = _ball_volume(4.0)
    model = _ZoomOracle()
    session = InteractiveSession(model, device="cpu")
    session.set_volume(volume, modality="MR")
    region = session.prepare((0.0, 0.0, 0.0))
    assert region.spacing_mm == 0.75
    first = session.add_point((1.0, 0.0, 0.0))
    assert first.embedding_cached and model.encode_calls == 1
