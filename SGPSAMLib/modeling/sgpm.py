"""Self-Gated Prompting Module (SGPM): a light gate decides whether multi-scale fusion runs.

``x <- x + decision * (gates * MSFF(x))`` on the encoder's token grid. The gate looks at the
globally pooled tokens and produces (a) per-channel gates in [0, 1] and (b) a binary per-sample
decision. The Multi-Scale Feature Fusion block (MSFF) is skipped for samples whose decision is
off (conditional compute). Its output projection is zero-initialised, so an untrained SGPM leaves
a pretrained encoder's output exactly unchanged.

Training uses Gumbel-Softmax with a straight-through estimator for the decision; inference uses
the argmax. Samples skipped by the decision give no gradient to the fusion block (the price of
conditional compute); the Gumbel noise keeps both branches explored.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SelfGatedPromptingModule", "GatingUnit", "MultiScaleFeatureFusion"]


class GatingUnit(nn.Module):
    """GAP -> Linear(C, hidden) -> ReLU -> {sigmoid channel gates (C), decision logits (2)}."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc_gates = nn.Linear(hidden, dim)
        self.fc_decision = nn.Linear(hidden, 2)
        # Start "on" (logit 1 vs 0) so the fusion block is trained from the first step.
        nn.init.zeros_(self.fc_decision.weight)
        with torch.no_grad():
            self.fc_decision.bias.copy_(torch.tensor([0.0, 1.0]))

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (B, D, H, W, C) -> gates (B, C) in [0, 1], decision logits (B, 2)."""
        pooled = tokens.mean(dim=(1, 2, 3))
        hidden = torch.relu(self.fc1(pooled))
        return torch.sigmoid(self.fc_gates(hidden)), self.fc_decision(hidden)


class MultiScaleFeatureFusion(nn.Module):
    """Bottleneck, parallel dilated depthwise 3x3x3 convolutions, fuse, GELU, back to C."""

    def __init__(self, dim: int, bottleneck: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.reduce = nn.Conv3d(dim, bottleneck, kernel_size=1)
        self.branches = nn.ModuleList(
            nn.Conv3d(bottleneck, bottleneck, kernel_size=3, padding=d, dilation=d,
                      groups=bottleneck)
            for d in dilations
        )
        self.fuse = nn.Conv3d(bottleneck * len(dilations), bottleneck, kernel_size=1)
        self.act = nn.GELU()
        self.expand = nn.Conv3d(bottleneck, dim, kernel_size=1)
        nn.init.zeros_(self.expand.weight)
        nn.init.zeros_(self.expand.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, D, H, W, C) -> residual update of the same shape."""
        x = self.reduce(self.norm(tokens).permute(0, 4, 1, 2, 3))
        x = self.fuse(torch.cat([branch(x) for branch in self.branches], dim=1))
        return self.expand(self.act(x)).permute(0, 2, 3, 4, 1)


class SelfGatedPromptingModule(nn.Module):
    """Residual, gated, conditionally computed multi-scale fusion on encoder tokens."""

    def __init__(self, dim: int, gate_hidden: int, bottleneck: int, dilations: tuple[int, ...],
                 gate_mode: str = "learned", tau: float = 1.0) -> None:
        super().__init__()
        self.gate = GatingUnit(dim, gate_hidden)
        self.fusion = MultiScaleFeatureFusion(dim, bottleneck, dilations)
        self.gate_mode = gate_mode
        self.tau = tau
        # Activation statistics (not saved with the weights): samples seen / samples fused.
        self.register_buffer("samples_seen", torch.zeros((), dtype=torch.long), persistent=False)
        self.register_buffer("samples_on", torch.zeros((), dtype=torch.long), persistent=False)
        self.last_decision: torch.Tensor | None = None

    def _decision(self, logits: torch.Tensor) -> torch.Tensor:
        """(B,) float in {0, 1}; differentiable (straight-through) while training."""
        batch = logits.shape[0]
        if self.gate_mode == "always_on":
            return logits.new_ones(batch)
        if self.gate_mode == "always_off":
            return logits.new_zeros(batch)
        if self.training:
            return F.gumbel_softmax(logits.float(), tau=self.tau, hard=True)[:, 1].to(logits.dtype)
        return (logits[:, 1] > logits[:, 0]).to(logits.dtype)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        gates, logits = self.gate(tokens)
        decision = self._decision(logits)
        on = decision.detach() > 0.5
        self.last_decision = on.detach()
        self.samples_seen += on.numel()
        self.samples_on += int(on.sum())
        if not bool(on.any()):
            return tokens
        idx = on.nonzero(as_tuple=True)[0]
        selected = tokens if len(idx) == tokens.shape[0] else tokens[idx]
        update = self.fusion(selected) * gates[idx][:, None, None, None, :]
        update = update * decision[idx][:, None, None, None, None]
        if len(idx) == tokens.shape[0]:
            return tokens + update
        return tokens.index_add(0, idx, update)

    def activation_rate(self) -> float:
        """Fraction of samples for which the fusion block ran since the last reset (nan if none)."""
        seen = int(self.samples_seen)
        return float(self.samples_on) / seen if seen else float("nan")

    def reset_statistics(self) -> None:
        self.samples_seen.zero_()
        self.samples_on.zero_()
