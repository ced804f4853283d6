"""Model parts: exact fast attention path, shapes, SGPM identity/conditional compute, config."""
from __future__ import annotations

import pytest
import torch

from SGPSAMLib.build import build_model
from SGPSAMLib.config import ModelConfig
from SGPSAMLib.modeling.image_encoder import Attention3D, Block3D


def _perturb(module: torch.nn.Module, seed: int = 0, scale: float = 0.2) -> None:
    """Give zero-initialised tables and biases real values so every term is exercised."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(torch.randn(param.shape, generator=gen) * scale)


def _official_attention(attn: Attention3D, x: torch.Tensor) -> torch.Tensor:
    """Literal re-statement of the official computation on a full L^3 grid (7-D broadcast)."""
    b, n = x.shape[0], x.shape[1]
    heads, c = attn.num_heads, attn.head_dim
    qkv = attn.qkv(x).reshape(b, n ** 3, 3, heads, c).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.reshape(3, b * heads, n ** 3, c).unbind(0)
    logits = (q * attn.scale) @ k.transpose(-2, -1)
    idx = torch.arange(n)
    rel = idx[:, None] - idx[None, :] + n - 1
    r_q = q.reshape(b * heads, n, n, n, c)
    rel_d = torch.einsum("bdhwc,dkc->bdhwk", r_q, attn.rel_pos_d[rel])
    rel_h = torch.einsum("bdhwc,hkc->bdhwk", r_q, attn.rel_pos_h[rel])
    rel_w = torch.einsum("bdhwc,wkc->bdhwk", r_q, attn.rel_pos_w[rel])
    logits = (logits.view(b * heads, n, n, n, n, n, n) + rel_d[:, :, :, :, None, None]
              + rel_h[:, :, :, None, :, None] + rel_w[:, :, :, None, None, :])
    probs = logits.view(b * heads, n ** 3, n ** 3).softmax(-1)
    out = (probs @ v).view(b, heads, n, n, n, c).permute(0, 2, 3, 4, 1, 5).reshape(b, n, n, n, -1)
    return attn.proj(out)


@pytest.mark.parametrize("grid,window", [(3, 5), (4, 7), (5, 5)])
def test_attention_matches_official_statement(grid: int, window: int) -> None:
    torch.manual_seed(0)
    attn = Attention3D(dim=16, num_heads=2, rel_size=window)
    _perturb(attn)
    x = torch.randn(2, grid, grid, grid, 16)
    padded = torch.nn.functional.pad(x, (0, 0, 0, window - grid, 0, window - grid,
                                         0, window - grid))
    with torch.no_grad():
        expected = _official_attention(attn, padded)[:, :grid, :grid, :grid]
        got = attn(x)
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4)


def test_fast_and_padded_blocks_agree_full_width() -> None:
    """One SAM-Med3D-sized windowed block (768 wide, 8^3 grid in a 14^3 window)."""
    torch.manual_seed(1)
    block = Block3D(dim=768, num_heads=12, mlp_ratio=4.0, window_size=14, grid_size=8)
    _perturb(block, scale=0.05)
    x = torch.randn(1, 8, 8, 8, 768)
    with torch.no_grad():
        block.attn_impl = "fast"
        fast = block(x)
        block.attn_impl = "padded"
        padded = block(x)
    assert (fast - padded).abs().max() < 1e-4 * padded.abs().max()


def test_tiny_encoder_fast_equals_padded() -> None:
    torch.manual_seed(0)
    model = build_model("tiny").eval()
    _perturb(model.image_encoder, scale=0.1)
    image = torch.randn(2, 1, 128, 128, 128)
    with torch.no_grad():
        fast = model.encode(image)
        model.image_encoder.set_attention_impl("padded")
        padded = model.encode(image)
    assert fast.shape == (2, 48, 8, 8, 8)
    torch.testing.assert_close(fast, padded, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="attention impl"):
        model.image_encoder.set_attention_impl("flash")


def test_decode_shapes_and_batch() -> None:
    torch.manual_seed(0)
    model = build_model("tiny").eval()
    emb = torch.randn(2, 48, 8, 8, 8)
    points = torch.tensor([[[64.0, 60.0, 70.0]], [[10.0, 20.0, 30.0]]])
    labels = torch.tensor([[1], [0]])
    with torch.no_grad():
        logits = model.decode(emb, points, labels, torch.zeros(2, 1, 32, 32, 32))
        single = model.decode(emb[1:], points[1:], labels[1:], torch.zeros(1, 1, 32, 32, 32))
    assert logits.shape == (2, 1, 32, 32, 32)
    torch.testing.assert_close(logits[1:], single, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="mask prompt"):
        model.decode(emb, points, labels, torch.zeros(2, 1, 16, 16, 16))
    with pytest.raises(ValueError, match=r"image must be \(B, C, 128"):
        model.encode(torch.zeros(1, 1, 64, 64, 64))


def test_untrained_sgpm_is_identity_and_counts_activations() -> None:
    torch.manual_seed(0)
    with_sgpm = build_model("tiny").eval()
    plain = build_model("tiny", sgpm_blocks=()).eval()
    plain.load_state_dict({k: v for k, v in with_sgpm.state_dict().items() if ".sgpm." not in k})
    image = torch.randn(1, 1, 128, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(with_sgpm.encode(image), plain.encode(image), atol=0, rtol=0)
    assert with_sgpm.gate_statistics() == {"block1": 1.0, "block3": 1.0}
    assert plain.gate_statistics() == {}
    with_sgpm.reset_gate_statistics()
    assert all(v != v for v in with_sgpm.gate_statistics().values())  # nan after reset


def test_sgpm_skips_fusion_per_sample() -> None:
    """Samples whose decision is off are not passed to the fusion block at all."""
    torch.manual_seed(0)
    model = build_model("tiny").eval()
    module = model.image_encoder.sgpm["1"]
    _perturb(module.fusion, scale=0.1)
    seen_batches: list[int] = []
    module.fusion.register_forward_hook(lambda m, inp, out: seen_batches.append(inp[0].shape[0]))
    tokens = torch.randn(3, 8, 8, 8, 48)
    # Decision logits: on iff the pooled first channel is positive.
    with torch.no_grad():
        module.gate.fc1.weight.zero_()
        module.gate.fc1.bias.zero_()
        module.gate.fc1.weight[0, 0] = 1.0
        module.gate.fc_decision.weight.zero_()
        module.gate.fc_decision.bias.zero_()
        module.gate.fc_decision.weight[1, 0] = 1.0
        module.gate.fc_decision.bias[1] = -1e-3
        tokens[0, ..., 0] = 1.0
        tokens[1, ..., 0] = -1.0
        tokens[2, ..., 0] = 2.0
        out = module(tokens)
    assert seen_batches == [2]
    assert module.last_decision.tolist() == [True, False, True]
    torch.testing.assert_close(out[1], tokens[1], atol=0, rtol=0)
    assert (out[0] - tokens[0]).abs().max() > 0
    forced = build_model("tiny", gate_mode="always_off").eval().image_encoder.sgpm["1"]
    forced.load_state_dict(module.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(forced(tokens), tokens, atol=0, rtol=0)


def test_sgpm_trains_through_gumbel_straight_through() -> None:
    torch.manual_seed(0)
    model = build_model("tiny", gate_mode="always_on")
    module = model.image_encoder.sgpm["3"]
    module.train()
    tokens = torch.randn(2, 8, 8, 8, 48, requires_grad=True)
    module(tokens).square().sum().backward()
    assert module.fusion.expand.weight.grad.abs().sum() > 0  # zero-init output still learns
    learned = build_model("tiny").image_encoder.sgpm["3"].train()
    _perturb(learned.fusion, scale=0.1)
    with torch.no_grad():
        learned.gate.fc_decision.bias.copy_(torch.tensor([0.0, 6.0]))  # Gumbel picks "on"
    learned(tokens).square().sum().backward()
    # The straight-through estimator carries a gradient to the decision logits.
    assert learned.gate.fc_decision.bias.grad.abs().sum() > 0


@pytest.mark.parametrize("field,value,match", [
    ("image_size", 100, "multiple of patch_size"),
    ("embed_dim", 50, "divisible by num_heads"),
    ("out_chans", 64, "divisible by 3"),
    ("sgpm_blocks", (12,), "outside 0..11"),
    ("gate_mode", "sometimes", "gate_mode"),
    ("depth", 0, "positive int"),
])
def test_config_validation(field: str, value: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ModelConfig(**{field: value})


def test_config_of_older_checkpoints_with_an_empty_extra_field_still_loads() -> None:
    data = ModelConfig(preset="x").to_dict()
    assert "extra" not in data
    assert ModelConfig.from_dict({**data, "extra": {}}) == ModelConfig(preset="x")
    with pytest.raises(ValueError, match="unknown ModelConfig fields \\['extra'\\]"):
        ModelConfig.from_dict({**data, "extra": {"a": 1}})


def test_config_round_trip() -> None:
    config = ModelConfig(preset="x", sgpm_blocks=(2, 5))
    data = config.to_dict()
    assert data["sgpm_blocks"] == [2, 5]
    assert ModelConfig.from_dict(data) == config
    with pytest.raises(ValueError, match="unknown ModelConfig fields"):
        ModelConfig.from_dict({**data, "bogus": 1})
