"""Training losses: the SGP-SAM Zoom Loss and the SAM-Med3D DiceCE baseline.

Lesions are often a tiny fraction of a volume (837 voxels in 12.6 M for a lung nodule), so a plain
voxel-averaged loss is dominated by background. The Zoom Loss adds to Dice a focal term in which
the foreground and the background voxels of each sample carry half of the weight each, so one
lesion voxel counts as much as all background voxels together.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, DiceLoss
from torch import nn

from .options import LOSSES

__all__ = ["ZoomLoss", "make_loss", "LOSS_NAMES", "REDUCTIONS"]

REDUCTIONS = ("mean", "sum", "none")
#: The loss names :func:`make_loss` accepts (the option vocabulary's).
LOSS_NAMES = LOSSES

# Floor of log(p) for probability inputs, as torch.nn.BCELoss does, so p == 0 gives a finite loss.
_LOG_FLOOR = -100.0


class ZoomLoss(nn.Module):
    """``lambda_dice * Dice + lambda_focal * voxel-balanced focal`` for binary lesion masks.

    SGP-SAM (arXiv 2604.22825) trains with this loss so that small lesions are not swamped by
    background. Per sample, with ``p_t`` the predicted probability of the true class of a voxel:

    - focal term of a voxel: ``f = -(1 - p_t) ** gamma * log(p_t)`` (computed from logits with
      ``logsigmoid``, so it is finite for any logit);
    - voxel-balanced focal: ``0.5 * mean(f over foreground) + 0.5 * mean(f over background)``.
      A sample with no foreground voxel (or no background voxel) gives the whole weight to the
      class it has: its focal term is the plain mean over its voxels;
    - Dice: ``monai.losses.DiceLoss`` per sample (``batch=False``).

    With ``gamma=0`` the focal part is a class-balanced binary cross-entropy.

    Args:
        sigmoid: if True the input holds logits; if False it holds probabilities in [0, 1].
        reduction: ``"mean"`` or ``"sum"`` over the batch, or ``"none"`` for per-sample losses of
            shape (B,).
        lambda_dice: weight of the Dice part, >= 0.
        lambda_focal: weight of the voxel-balanced focal part, >= 0 (not both weights 0).
        gamma: focusing parameter of the focal term, >= 0.
        smooth_nr: constant added to the Dice numerator, >= 0.
        smooth_dr: constant added to the Dice denominator, >= 0.
        squared_pred: use squared predictions in the Dice denominator (as SAM-Med3D's DiceCE).

    Raises:
        ValueError: an argument is out of range; the message names it.

    Example:
        >>> loss = ZoomLoss(gamma=2.0)
        >>> logits = torch.zeros(2, 1, 8, 8, 8, requires_grad=True)
        >>> target = torch.zeros(2, 1, 8, 8, 8)
        >>> target[:, :, 2:4, 2:4, 2:4] = 1
        >>> loss(logits, target).backward()
    """

    def __init__(
        self,
        sigmoid: bool = True,
        reduction: str = "mean",
        lambda_dice: float = 1.0,
        lambda_focal: float = 1.0,
        gamma: float = 2.0,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        squared_pred: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(sigmoid, bool):
            raise ValueError(f"sigmoid must be True or False, got {sigmoid!r}")
        if not isinstance(squared_pred, bool):
            raise ValueError(f"squared_pred must be True or False, got {squared_pred!r}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        for name, value in (("lambda_dice", lambda_dice), ("lambda_focal", lambda_focal),
                            ("gamma", gamma), ("smooth_nr", smooth_nr), ("smooth_dr", smooth_dr)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        if lambda_dice == 0 and lambda_focal == 0:
            raise ValueError("lambda_dice and lambda_focal cannot both be 0")
        self.sigmoid = sigmoid
        self.reduction = reduction
        self.lambda_dice = float(lambda_dice)
        self.lambda_focal = float(lambda_focal)
        self.gamma = float(gamma)
        self.dice = DiceLoss(sigmoid=sigmoid, squared_pred=squared_pred, smooth_nr=smooth_nr,
                             smooth_dr=smooth_dr, batch=False, reduction="none")

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss of ``input`` (B, 1, *spatial) logits or probabilities against a binary target.

        Returns a scalar for ``reduction="mean"|"sum"`` and a (B,) tensor for ``"none"``.

        Raises:
            ValueError: shapes differ, the channel dimension is not 1, or the target is not
                binary (e.g. an MSD label with values 0/1/2 passed without selecting a class).
        """
        if input.shape != target.shape:
            raise ValueError(f"input and target must have the same shape, got {tuple(input.shape)} "
                             f"and {tuple(target.shape)}")
        if input.dim() < 3 or input.shape[1] != 1:
            raise ValueError("input must have shape (B, 1, *spatial) with one channel, got "
                             f"{tuple(input.shape)}")
        target = target.to(torch.float32)
        if bool(((target != 0) & (target != 1)).any()):
            raise ValueError("target must be binary (values 0 and 1 only)")
        per_sample = input.new_zeros(input.shape[0], dtype=torch.float32)
        if self.lambda_dice > 0:
            dice = self.dice(input.float(), target).reshape(input.shape[0], -1).mean(dim=1)
            per_sample = per_sample + self.lambda_dice * dice
        if self.lambda_focal > 0:
            per_sample = per_sample + self.lambda_focal * self._balanced_focal(input, target)
        if self.reduction == "mean":
            return per_sample.mean()
        if self.reduction == "sum":
            return per_sample.sum()
        return per_sample

    def _balanced_focal(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-sample (B,) focal term with foreground and background each weighted one half."""
        x = input.float().flatten(1)
        y = target.flatten(1)
        if self.sigmoid:
            # z > 0 means "confidently right": log p_t = logsigmoid(z), 1 - p_t = sigmoid(-z).
            z = torch.where(y > 0, x, -x)
            log_pt = F.logsigmoid(z)
            modulation = torch.exp(self.gamma * F.logsigmoid(-z)) if self.gamma else None
        else:
            p_t = torch.where(y > 0, x, 1.0 - x)
            log_pt = torch.log(p_t).clamp(min=_LOG_FLOOR)
            modulation = (1.0 - p_t).clamp(min=0.0) ** self.gamma if self.gamma else None
        f = -log_pt if modulation is None else -modulation * log_pt
        n_fg = y.sum(dim=1)
        n_bg = y.shape[1] - n_fg
        mean_fg = (f * y).sum(dim=1) / n_fg.clamp(min=1)
        mean_bg = (f * (1.0 - y)).sum(dim=1) / n_bg.clamp(min=1)
        # Half each; a sample missing one class gives the whole weight to the other.
        has_fg = (n_fg > 0).float()
        has_bg = (n_bg > 0).float()
        w_fg = has_fg / (has_fg + has_bg)
        return w_fg * mean_fg + (1.0 - w_fg) * mean_bg


def make_loss(name: str, **kwargs: Any) -> nn.Module:
    """The training loss called ``name``: ``"zoom"`` (SGP-SAM) or ``"dicece"`` (SAM-Med3D).

    ``"dicece"`` is ``monai.losses.DiceCELoss(sigmoid=True, squared_pred=True)``, the loss
    SAM-Med3D was trained with; ``kwargs`` override those defaults or go to ``ZoomLoss``.

    Raises:
        ValueError: unknown ``name`` or invalid keyword arguments.
    """
    if name == "zoom":
        return ZoomLoss(**kwargs)
    if name == "dicece":
        options: dict[str, Any] = {"sigmoid": True, "squared_pred": True, "reduction": "mean"}
        options.update(kwargs)
        return DiceCELoss(**options)
    raise ValueError(f"loss name must be one of {LOSS_NAMES}, got {name!r}")
