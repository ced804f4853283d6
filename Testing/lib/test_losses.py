"""ZoomLoss and make_loss against values written out from the formulas with numpy (float64)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.losses import DiceCELoss

from SGPSAMLib.losses import ZoomLoss, make_loss


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _dice_np(p: np.ndarray, g: np.ndarray, smooth: float = 1e-5) -> float:
    """Soft Dice loss of one sample: 1 - (2 sum(pg) + s) / (sum(p) + sum(g) + s)."""
    return 1.0 - (2.0 * (p * g).sum() + smooth) / (p.sum() + g.sum() + smooth)


def _focal_np(p: np.ndarray, g: np.ndarray, gamma: float) -> np.ndarray:
    p_t = np.where(g > 0, p, 1.0 - p)
    return -((1.0 - p_t) ** gamma) * np.log(p_t)


def _balanced(f: np.ndarray, g: np.ndarray) -> float:
    fg, bg = f[g > 0], f[g == 0]
    if fg.size == 0:
        return float(bg.mean())
    if bg.size == 0:
        return float(fg.mean())
    return 0.5 * float(fg.mean()) + 0.5 * float(bg.mean())


# One 2x2x2 sample: 3 foreground voxels, 5 background voxels, mixed-quality logits.
LOGITS = np.array([2.0, -1.0, 0.5, -3.0, 1.5, 0.0, -0.5, 4.0]).reshape(1, 1, 2, 2, 2)
TARGET = np.array([1, 1, 0, 0, 0, 1, 0, 0], dtype=np.float64).reshape(1, 1, 2, 2, 2)


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.tensor(a, dtype=torch.float32)


@pytest.mark.parametrize("gamma", [0.0, 1.0, 2.0, 3.5])
def test_focal_part_matches_formula(gamma: float) -> None:
    loss = ZoomLoss(lambda_dice=0.0, gamma=gamma)
    expected = _balanced(_focal_np(_sigmoid(LOGITS), TARGET, gamma), TARGET)
    assert loss(_t(LOGITS), _t(TARGET)).item() == pytest.approx(expected, rel=1e-5)


def test_gamma_zero_is_class_balanced_bce() -> None:
    p = _sigmoid(LOGITS.ravel())
    g = TARGET.ravel()
    bce = -(g * np.log(p) + (1 - g) * np.log(1 - p))
    expected = 0.5 * bce[g == 1].mean() + 0.5 * bce[g == 0].mean()
    # Written out: fg voxels have logits 2, -1, 0 and bg voxels 0.5, -3, 1.5, -0.5, 4.
    by_hand = 0.5 * np.mean([math.log1p(math.exp(-v)) for v in (2.0, -1.0, 0.0)]) + 0.5 * np.mean(
        [math.log1p(math.exp(v)) for v in (0.5, -3.0, 1.5, -0.5, 4.0)])
    assert expected == pytest.approx(by_hand, rel=1e-12)
    loss = ZoomLoss(lambda_dice=0.0, gamma=0.0)
    assert loss(_t(LOGITS), _t(TARGET)).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("squared_pred", [False, True])
def test_total_is_weighted_dice_plus_focal(squared_pred: bool) -> None:
    p = _sigmoid(LOGITS.ravel())
    g = TARGET.ravel()
    if squared_pred:
        dice = 1.0 - (2.0 * (p * g).sum() + 1e-5) / ((p**2).sum() + (g**2).sum() + 1e-5)
    else:
        dice = _dice_np(p, g)
    focal = _balanced(_focal_np(p, g, 2.0), g)
    loss = ZoomLoss(lambda_dice=0.7, lambda_focal=1.3, gamma=2.0, squared_pred=squared_pred)
    expected = 0.7 * dice + 1.3 * focal
    assert loss(_t(LOGITS), _t(TARGET)).item() == pytest.approx(expected, rel=1e-5)


def test_probability_input_equals_logit_input() -> None:
    logits = torch.randn(3, 1, 4, 5, 6, generator=torch.Generator().manual_seed(0)) * 3
    target = (torch.rand(3, 1, 4, 5, 6, generator=torch.Generator().manual_seed(1)) > 0.7).float()
    from_logits = ZoomLoss(sigmoid=True, reduction="none")(logits, target)
    from_probs = ZoomLoss(sigmoid=False, reduction="none")(torch.sigmoid(logits), target)
    torch.testing.assert_close(from_probs, from_logits, rtol=1e-4, atol=1e-5)


def test_probability_input_of_exact_zero_and_one_is_finite() -> None:
    probs = torch.tensor([1.0, 0.0, 0.0, 1.0]).reshape(1, 1, 4)
    target = torch.tensor([1.0, 1.0, 0.0, 0.0]).reshape(1, 1, 4)
    value = ZoomLoss(sigmoid=False, lambda_dice=0.0, gamma=0.0)(probs, target)
    # Each wrong voxel costs the log floor (100), as torch.nn.BCELoss: 0.5*50 + 0.5*50.
    assert value.item() == pytest.approx(50.0)


def test_perfect_prediction_is_near_zero() -> None:
    target = torch.zeros(2, 1, 6, 6, 6)
    target[0, 0, 1:3, 2:5, 2:4] = 1
    target[1, 0, 4, 4, 4] = 1
    logits = torch.where(target > 0, 20.0, -20.0)
    value = ZoomLoss(gamma=2.0)(logits, target)
    assert 0.0 <= value.item() < 1e-6


def test_empty_foreground_sample_uses_background_only() -> None:
    logits = np.array([-2.0, 0.5, -1.0, 3.0]).reshape(1, 1, 4)
    target = np.zeros_like(logits)
    p = _sigmoid(logits.ravel())
    focal = float(np.mean(-(p**2) * np.log(1 - p)))  # p_t = 1 - p for background
    dice = 1.0 - 1e-5 / (p.sum() + 1e-5)
    value = ZoomLoss(gamma=2.0, reduction="none")(_t(logits), _t(target))
    assert value.shape == (1,)
    assert value.item() == pytest.approx(dice + focal, rel=1e-5)


def test_all_foreground_sample_uses_foreground_only() -> None:
    logits = np.array([-2.0, 0.5, 1.0]).reshape(1, 1, 3)
    target = np.ones_like(logits)
    p = _sigmoid(logits.ravel())
    value = ZoomLoss(lambda_dice=0.0, gamma=0.0)(_t(logits), _t(target))
    assert value.item() == pytest.approx(float(np.mean(-np.log(p))), rel=1e-6)


def test_one_voxel_lesion_weighs_as_much_as_all_background() -> None:
    """128^3 volume, one lesion voxel: the focal term gives it half of the weight."""
    n = 128
    target = torch.zeros(1, 1, n, n, n)
    target[0, 0, 64, 40, 90] = 1
    focal = ZoomLoss(lambda_dice=0.0, gamma=2.0)
    s4 = _sigmoid(4.0)
    f_right = -((1 - s4) ** 2) * math.log(s4)  # a voxel predicted right with |logit| 4
    f_wrong = -(s4**2) * math.log(1 - s4)  # a voxel predicted wrong with |logit| 4

    missed = torch.full_like(target, -4.0)  # lesion missed, background right
    found = missed.clone()
    found[0, 0, 64, 40, 90] = 4.0  # everything right
    value_missed = focal(missed, target).item()
    value_found = focal(found, target).item()
    assert value_missed == pytest.approx(0.5 * f_wrong + 0.5 * f_right, rel=1e-5)
    assert value_found == pytest.approx(f_right, rel=1e-5)
    assert value_missed - value_found == pytest.approx(0.5 * (f_wrong - f_right), rel=1e-5)
    # An unweighted voxel mean would have changed by (f_wrong - f_right) / n^3, about 1.8e-6.
    assert value_missed - value_found > 0.9

    # Symmetry: missing the one lesion voxel costs exactly as much as getting every one of
    # the 2,097,151 background voxels wrong (with the lesion right).
    all_background_wrong = torch.full_like(target, 4.0)
    assert focal(all_background_wrong, target).item() == pytest.approx(value_missed, rel=1e-5)

    # The full loss (Dice included) changes by the focal change plus the Dice change.
    full = ZoomLoss(gamma=2.0)
    n_bg = n**3 - 1
    dice_missed = 1.0 - (2 * (1 - s4) + 1e-5) / (n_bg * (1 - s4) + (1 - s4) + 1 + 1e-5)
    dice_found = 1.0 - (2 * s4 + 1e-5) / (n_bg * (1 - s4) + s4 + 1 + 1e-5)
    change = full(missed, target).item() - full(found, target).item()
    expected = (dice_missed - dice_found) + 0.5 * (f_wrong - f_right)
    assert change == pytest.approx(expected, rel=1e-4)


def test_reductions() -> None:
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(4, 1, 5, 5, 5, generator=gen)
    target = (torch.rand(4, 1, 5, 5, 5, generator=gen) > 0.8).float()
    target[2] = 0  # one empty sample among them
    per_sample = ZoomLoss(reduction="none")(logits, target)
    assert per_sample.shape == (4,)
    for b in range(4):
        p = torch.sigmoid(logits[b]).double().numpy().ravel()
        g = target[b].double().numpy().ravel()
        expected = _dice_np(p, g) + _balanced(_focal_np(p, g, 2.0), g)
        assert per_sample[b].item() == pytest.approx(expected, rel=1e-5)
    assert ZoomLoss(reduction="mean")(logits, target).item() == pytest.approx(
        per_sample.mean().item(), rel=1e-6)
    assert ZoomLoss(reduction="sum")(logits, target).item() == pytest.approx(
        per_sample.sum().item(), rel=1e-6)


def test_gradient_is_finite_and_forward_leaves_module_unchanged() -> None:
    loss = ZoomLoss(gamma=2.0)
    before = {k: v for k, v in vars(loss).items() if not k.startswith("_")}
    logits = torch.tensor([[[-80.0, 80.0, 0.0, 3.0]]], requires_grad=True)
    target = torch.tensor([[[1.0, 0.0, 0.0, 1.0]]])
    loss(logits, target).backward()
    assert torch.isfinite(logits.grad).all()
    assert logits.grad[0, 0, 0] < 0 and logits.grad[0, 0, 1] > 0  # pushes wrong voxels right
    assert {k: v for k, v in vars(loss).items() if not k.startswith("_")} == before
    assert list(loss.state_dict()) == []


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"reduction": "avg"}, "reduction"),
        ({"lambda_dice": -1.0}, "lambda_dice"),
        ({"lambda_focal": -0.1}, "lambda_focal"),
        ({"lambda_dice": 0.0, "lambda_focal": 0.0}, "lambda_dice and lambda_focal"),
        ({"gamma": -2.0}, "gamma"),
        ({"gamma": float("nan")}, "gamma"),
        ({"smooth_nr": -1e-5}, "smooth_nr"),
        ({"smooth_dr": "0.1"}, "smooth_dr"),
        ({"sigmoid": 1}, "sigmoid"),
        ({"squared_pred": None}, "squared_pred"),
    ],
)
def test_invalid_args(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        ZoomLoss(**kwargs)


def test_invalid_inputs() -> None:
    loss = ZoomLoss()
    with pytest.raises(ValueError, match="same shape"):
        loss(torch.zeros(1, 1, 4, 4, 4), torch.zeros(1, 1, 4, 4, 3))
    with pytest.raises(ValueError, match="one channel"):
        loss(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 4))
    with pytest.raises(ValueError, match="binary"):
        loss(torch.zeros(1, 1, 4, 4), torch.full((1, 1, 4, 4), 2.0))


def test_make_loss() -> None:
    assert isinstance(make_loss("zoom", gamma=1.0), ZoomLoss)
    assert make_loss("zoom", gamma=1.0).gamma == 1.0
    baseline = make_loss("dicece")
    assert isinstance(baseline, DiceCELoss)
    logits = torch.tensor(LOGITS, dtype=torch.float32)
    target = torch.tensor(TARGET, dtype=torch.float32)
    # SAM-Med3D's loss: squared-prediction Dice + BCE with logits, both voxel means.
    p = _sigmoid(LOGITS.ravel())
    g = TARGET.ravel()
    dice = 1.0 - (2.0 * (p * g).sum() + 1e-5) / ((p**2).sum() + g.sum() + 1e-5)
    bce = float(np.mean(-(g * np.log(p) + (1 - g) * np.log(1 - p))))
    assert baseline(logits, target).item() == pytest.approx(dice + bce, rel=1e-5)
    assert make_loss("dicece", lambda_ce=0.0)(logits, target).item() == pytest.approx(dice,
                                                                                      rel=1e-5)
    with pytest.raises(ValueError, match="loss name"):
        make_loss("focal")
    with pytest.raises(ValueError, match="gamma"):
        make_loss("zoom", gamma=-1)
