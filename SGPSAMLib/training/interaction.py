"""One training sample's interaction: the image encoded once, simulated clicks, the loss.

A module of its own (an ``nn.Module``) so that ``DistributedDataParallel`` can wrap the whole
interaction, and so that the schedule of rounds can be read apart from the run's bookkeeping.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..modeling import SGPSAMModel
from .clicks import corrective_clicks
from .sampling import sample_seed

__all__ = ["InteractiveLoss"]



class InteractiveLoss(nn.Module):
    """Embedding once, several interaction rounds with simulated clicks, summed loss.

    Two schedules:

    - SAM-Med3D's (``rollout=False``): ``click_iters`` rounds, every one with a loss, the
      previous logits fed back without detaching (gradients flow through all rounds); with
      ``random_insert`` one random middle round and the last get no point.
    - RITM's (``rollout=True``, Sofiiuk et al. 2021): the first round is trained, then a random
      number (0 .. click_iters - 2) of rounds is played by the model itself without gradient,
      then one more round is trained. The model learns to correct its *own* mistakes from the
      clicks they provoke, at the cost of two trained rounds instead of ``click_iters``.

    With a refinement head, the loss is the model's full-resolution answer plus
    ``coarse_weight`` times the decoder's own low-res answer (deep supervision), and the head
    sees every click of the crop so far while the decoder sees the newest (``latest``).
    """

    def __init__(self, model: SGPSAMModel, loss: nn.Module, click_iters: int,
                 random_insert: bool = True, prompt_mode: str = "latest",
                 autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
                 rollout: bool = False, click_mode: str = "uniform",
                 coarse_weight: float = 0.5) -> None:
        super().__init__()
        self.model = model
        self.loss = loss
        self.click_iters = click_iters
        self.random_insert = random_insert and not rollout
        self.prompt_mode = prompt_mode
        self.rollout = rollout
        self.click_mode = click_mode
        self.coarse_weight = float(coarse_weight)
        self._autocast = autocast or contextlib.nullcontext

    def no_point_iterations(self, rng: np.random.Generator) -> set[int]:
        """SAM-Med3D's point-free iterations: one random in [2, n-3] and the last (n >= 4)."""
        n = self.click_iters
        if not self.random_insert or n < 4:
            return set()
        return {int(rng.integers(2, max(3, n - 2))), n - 1}

    def schedule(self, rng: np.random.Generator) -> tuple[int, set[int]]:
        """(rounds to play, rounds with a loss) for one micro-batch."""
        n = self.click_iters
        if not self.rollout or n < 2:
            return n, set(range(n))
        played = int(rng.integers(0, n - 1))  # rounds without gradient between the two
        return played + 2, {0, played + 1}

    def _round_loss(self, logits: torch.Tensor, low: torch.Tensor, target: torch.Tensor
                    ) -> torch.Tensor:
        size = target.shape[-1]

        def full(x: torch.Tensor) -> torch.Tensor:
            if x.shape[-1] == size:
                return x.float()
            return F.interpolate(x.float(), size=(size,) * 3, mode="trilinear",
                                 align_corners=False)

        value = self.loss(full(logits), target)
        if low is not logits and self.coarse_weight > 0:
            value = value + self.coarse_weight * self.loss(full(low), target)
        return value

    def forward(self, image: torch.Tensor, label: torch.Tensor, point: torch.Tensor,
                seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (loss summed over trained rounds, per-round losses (trained rounds,) detached)."""
        model = self.model
        size = image.shape[-1]
        generator = torch.Generator().manual_seed(sample_seed(seed, 0))
        rng = np.random.default_rng(sample_seed(seed, 1))
        skip = self.no_point_iterations(rng)
        rounds, trained = self.schedule(rng)
        truth = label.bool()
        target = label.float()
        with self._autocast():
            embedding = model.encode(image)
        points = point[:, None, :].float()
        labels = torch.ones((image.shape[0], 1), dtype=torch.long, device=image.device)
        all_points, all_labels = points, labels
        total = image.new_zeros((), dtype=torch.float32)
        parts = []
        previous = predicted = None
        for it in range(rounds):
            if it > 0:
                points, labels = corrective_clicks(truth, predicted, generator, self.click_mode)
                all_points = torch.cat([all_points, points], dim=1)
                all_labels = torch.cat([all_labels, labels], dim=1)
            if it in skip:
                use_points = use_labels = None
            elif self.prompt_mode == "cumulative":
                use_points, use_labels = all_points, all_labels
            else:
                use_points, use_labels = points, labels
            with torch.set_grad_enabled(it in trained and torch.is_grad_enabled()), \
                    self._autocast():
                logits, low = model.predict(embedding, image, use_points, use_labels, previous,
                                            all_points, all_labels)
            if it in trained:
                value = self._round_loss(logits, low, target)
                total = total + value
                parts.append(value.detach())
            previous = logits.detach() if self.rollout else logits
            up = previous.detach().float()
            if up.shape[-1] != size:
                up = F.interpolate(up, size=(size,) * 3, mode="trilinear", align_corners=False)
            predicted = up > 0
        return total, torch.stack(parts)
