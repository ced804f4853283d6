"""The interaction a training sample goes through (rounds, clicks, the refinement head's loss),
first-click sampling, several data folders with weights, a validation folder, and recipes."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from SGPSAMLib.click_robot import next_click
from SGPSAMLib.errors import SGPSAMError
from SGPSAMLib.losses import make_loss
from SGPSAMLib.training import TrainConfig, train
from SGPSAMLib.training.clicks import corrective_clicks, interior_weights
from SGPSAMLib.training.interaction import InteractiveLoss
from SGPSAMLib.training.recipes import RECIPES, recipe
from SGPSAMLib.training.sampling import SampleStream

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_training import _write_case  # noqa: E402

SMALL = dict(image_size=32, patch_size=8, window_size=0, refine_channels=(8, 16))


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_rollout_schedule_trains_the_first_and_the_last_round():
    loss = InteractiveLoss(torch.nn.Identity(), torch.nn.Identity(), click_iters=5,
                           rollout=True)
    seen = set()
    for seed in range(60):
        rounds, trained = loss.schedule(np.random.default_rng(seed))
        assert 2 <= rounds <= 5 and trained == {0, rounds - 1}
        seen.add(rounds)
    assert seen == {2, 3, 4, 5}  # 0..3 rounds played between, all of them drawn
    sam = InteractiveLoss(torch.nn.Identity(), torch.nn.Identity(), click_iters=4)
    assert sam.schedule(np.random.default_rng(0)) == (4, {0, 1, 2, 3})
    assert not InteractiveLoss(torch.nn.Identity(), torch.nn.Identity(), 5,
                               rollout=True).random_insert


def _blob(centre, radius, size=24):
    k, j, i = np.indices((size,) * 3)
    return ((k - centre[0]) ** 2 + (j - centre[1]) ** 2 + (i - centre[2]) ** 2) <= radius ** 2


def test_center_clicks_follow_the_evaluation_robot_and_uniform_ones_the_error():
    truth = _blob((12, 12, 12), 5)
    pred = _blob((12, 12, 16), 5)  # shifted: a miss on one side, a false alarm on the other
    label = torch.from_numpy(truth)[None, None]
    predicted = torch.from_numpy(pred)[None, None]
    generator = torch.Generator().manual_seed(0)
    points, labels = corrective_clicks(label, predicted, generator, "center")
    (kji, positive) = next_click(pred, truth)
    assert points[0, 0].tolist() == [float(v) for v in kji] and labels[0, 0] == int(positive)
    for _ in range(20):
        points, labels = corrective_clicks(label, predicted, generator, "uniform")
        voxel = tuple(int(v) for v in points[0, 0])
        assert truth[voxel] != pred[voxel]  # on the error region
        assert labels[0, 0] == int(truth[voxel])
    kinds = set()
    for _ in range(40):
        points, _ = corrective_clicks(label, predicted, generator, "mixed")
        kinds.add(points[0, 0].tolist() == [float(v) for v in kji])
    assert kinds == {True, False}
    # Nothing left to fix: a positive click on the lesion.
    points, labels = corrective_clicks(label, label.clone(), generator, "center")
    assert truth[tuple(int(v) for v in points[0, 0])] and labels[0, 0] == 1
    with pytest.raises(ValueError, match="click mode"):
        corrective_clicks(label, predicted, generator, "nearest")


def test_interior_weights_favour_the_middle():
    depth = np.array([0.5, 1.0, 2.0, 4.0])
    assert np.allclose(interior_weights(depth, 0.0), 0.25)
    weights = interior_weights(depth, 2.0)
    assert np.isclose(weights.sum(), 1.0) and np.all(np.diff(weights) > 0)
    assert weights[-1] / weights[0] == pytest.approx(64.0)


def test_a_refined_interaction_trains_head_and_decoder():
    from SGPSAMLib.build import build_model

    torch.manual_seed(0)
    model = build_model("demo", **SMALL).train()
    torch.nn.init.normal_(model.refiner.head.weight, std=0.05)
    image = torch.randn(2, 1, 32, 32, 32)
    label = torch.from_numpy(np.stack([_blob((16, 16, 16), 4, 32), _blob((10, 12, 14), 3, 32)])
                             ).float()[:, None]
    point = torch.tensor([[16.0, 16.0, 16.0], [10.0, 12.0, 14.0]])
    interaction = InteractiveLoss(model, make_loss("dicece"), click_iters=4, rollout=True,
                                  click_mode="mixed", coarse_weight=0.5)
    total, parts = interaction(image, label, point, seed=3)
    assert parts.shape == (2,) and torch.isfinite(total)
    assert total.item() == pytest.approx(float(parts.sum()), rel=1e-6)
    total.backward()
    named = dict(model.named_parameters())
    for name in ("refiner.head.weight", "mask_decoder.output_hypernetworks_mlps.0.layers.0.weight",
                 "image_encoder.blocks.0.attn.qkv.weight"):
        assert named[name].grad is not None and named[name].grad.abs().sum() > 0, name


def test_weighted_stream_draws_folders_in_proportion():
    weights = np.array([0.5 / 2] * 2 + [0.5 / 8] * 8)  # 2 items hold half the mass
    stream = SampleStream(10, seed=0, weights=weights, count=4000)
    items = np.array([item for item, _ in stream])
    assert abs(np.mean(items < 2) - 0.5) < 0.04
    # Without weights an epoch is still a permutation: every item once.
    assert sorted([item for item, _ in SampleStream(10, seed=0, count=10)]) == list(range(10))
    with pytest.raises(ValueError, match="weights"):
        SampleStream(10, seed=0, weights=np.ones(3) / 3)


def _folders(tmp_path):
    a, b, val = tmp_path / "a", tmp_path / "b", tmp_path / "val"
    for folder in (a, b, val):
        folder.mkdir()
    _write_case(a, "case0", (20, 20, 20), 7, 0)
    _write_case(b, "case0", (18, 22, 20), 8, 1)  # same name in another folder
    _write_case(b, "case1", (21, 19, 22), 6, 2)
    _write_case(val, "v0", (20, 21, 19), 7, 3)
    return a, b, val


def test_two_data_folders_with_weights_and_a_validation_folder(tmp_path):
    a, b, val = _folders(tmp_path)
    config = TrainConfig(data=(str(a), str(b)), data_weights=(3.0, 1.0), val_data=str(val),
                         out=str(tmp_path / "run"), preset="tiny", mode="finetune",
                         loss="dicece", steps=1, batch_size=1, click_iters=1, val_clicks=1,
                         lr=1e-3, warmup=0, model_overrides={"image_size": 64}, device="cpu",
                         seed=1)
    result = train(config)
    data = result.history[0]
    assert data["event"] == "start" and data["train_cases"] == 3 and data["val_cases"] == 1
    from SGPSAMLib.build import load_model

    meta = load_model(result.last).checkpoint_metadata["data"]
    assert meta["train_cases"] == ["a/case0", "b/case0", "b/case1"]
    assert meta["val_cases"] == ["v0"] and meta["val_folder"] == str(val)
    assert config.to_dict()["data"] == [str(a), str(b)]
    assert TrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(SGPSAMError, match="data-weights"):
        TrainConfig(data=(str(a), str(b)), data_weights=(1.0,), out="x")
    with pytest.raises(SGPSAMError, match="data-weights"):
        TrainConfig(data=str(a), data_weights=(0.0,), out="x")


def test_recipe_options_are_defaults_that_flags_override():
    args = argparse.Namespace(data="d", out="o", recipe="demo", lr=2e-4, steps=None)
    config = TrainConfig.from_args(args)
    demo = recipe("demo")
    assert config.recipe == "demo" and config.lr == 2e-4
    assert config.preset == demo["preset"] and config.rollout == demo["rollout"]
    assert config.click_mode == demo["click_mode"] and config.loss == demo["loss"]
    demo["lr"] = 1.0
    assert RECIPES["demo"]["lr"] != 1.0  # recipe() hands out a copy
    with pytest.raises(SGPSAMError, match="--recipe"):
        TrainConfig.from_args(argparse.Namespace(data="d", out="o", recipe="fast"))
