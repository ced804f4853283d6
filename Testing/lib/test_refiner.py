"""The full-resolution refinement head: exact rearrangements, click maps, identity at init, the
fast convolution, and the model's ``predict`` with and without a head."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from SGPSAMLib.build import build_model
from SGPSAMLib.modeling.refiner import (
    HEAD_PRIOR_LOGIT,
    Conv3d,
    MaskRefiner3D,
    _click_contrast,
    _dilate,
    depth_to_space,
    render_click_maps,
    space_to_depth,
)

# A 32^3 crop, 4^3 tokens, a 2-level head: small enough for a test, same code as the demo.
SMALL = dict(image_size=32, patch_size=8, window_size=0, refine_channels=(8, 16))


def test_space_to_depth_is_a_lossless_rearrangement():
    x = torch.arange(2 * 3 * 4 * 6 * 8, dtype=torch.float32).reshape(2, 3, 4, 6, 8)
    cells = space_to_depth(x)
    assert cells.shape == (2, 24, 2, 3, 4)
    # Channel c * 8 + (a * 4 + b * 2 + d) of cell (i, j, k) is voxel (2i + a, 2j + b, 2k + d).
    assert cells[1, 2 * 8 + 5, 1, 2, 3] == x[1, 2, 3, 4, 7]
    assert torch.equal(depth_to_space(cells), x)


@pytest.mark.parametrize("shape", [(2, 4, 16, 16, 16), (1, 1, 1, 5, 7), (1, 2, 3, 2, 9)])
def test_dilation_is_max_pooling_exactly(shape):
    """The region growing's fast dilation is ``max_pool3d(x, 3, 1, 1)`` bit for bit, borders
    and size-1 axes included."""
    torch.manual_seed(0)
    x = (torch.rand(shape) > 0.8).float()
    assert torch.equal(_dilate(x), F.max_pool3d(x, 3, stride=1, padding=1))


def test_click_maps_are_gaussian_bumps_by_sign():
    points = torch.tensor([[[5.0, 6.0, 7.0], [20.0, 20.0, 20.0], [0.0, 0.0, 0.0]]])
    labels = torch.tensor([[1, 0, -1]])
    maps = render_click_maps(points, labels, 32, sigma=2.0)
    assert maps.shape == (1, 2, 32, 32, 32)
    positive, negative = maps[0]
    assert positive[5, 6, 7] == pytest.approx(1.0)
    assert positive[5, 6, 9] == pytest.approx(math.exp(-0.5 * (2 / 2.0) ** 2), rel=1e-5)
    assert negative[20, 20, 20] == pytest.approx(1.0) and positive[20, 20, 20] < 1e-10
    assert negative[0, 0, 0] < 1e-10 and positive[0, 0, 0] < 1e-5  # padding draws nothing
    empty = render_click_maps(None, None, 16, sigma=1.0)
    assert empty.shape == (1, 2, 16, 16, 16) and not empty.any()


def test_untrained_head_starts_from_a_background_prior_and_reads_its_inputs():
    torch.manual_seed(0)
    head = MaskRefiner3D(32, (8, 16), embed_dim=12, click_sigma=1.5).eval()
    image = torch.randn(2, 1, 32, 32, 32)
    coarse = torch.randn(2, 1, 16, 16, 16)
    maps = torch.rand(2, 2, 32, 32, 32)
    embedding = torch.randn(1, 12, 4, 4, 4)
    with torch.no_grad():
        out = head(image, coarse, maps, None, embedding)
        assert out.shape == (2, 1, 32, 32, 32)
        # Small output weights on a prior bias: "background" everywhere, but not a constant.
        assert (out - HEAD_PRIOR_LOGIT).abs().max() < 0.5 and out.std() > 1e-4
        other = head(image, coarse, maps, torch.randn(2, 1, 32, 32, 32), embedding)
        assert (other - out).abs().max() > 1e-5  # the previous mask is an input


def test_click_contrast_is_the_image_minus_the_clicked_tissue():
    image = torch.zeros(1, 1, 8, 8, 8)
    image[..., :4] = 5.0
    maps = torch.zeros(1, 2, 8, 8, 8)
    maps[0, 0, 2, 2, 1] = 1.0  # a positive click in the bright half
    contrast = _click_contrast(image, maps)
    assert torch.allclose(contrast[..., :4], torch.zeros(1)) and torch.allclose(
        contrast[..., 4:], torch.full((1,), -5.0))
    assert not _click_contrast(image, torch.zeros(1, 2, 8, 8, 8)).any()  # no positive click


@pytest.mark.parametrize("kernel,stride", [(3, 1), (3, 2), (1, 1)])
def test_fast_convolution_equals_torchs(kernel, stride):
    torch.manual_seed(1)
    fast = Conv3d(6, 10, kernel, stride=stride, padding=kernel // 2)
    plain = torch.nn.Conv3d(6, 10, kernel, stride=stride, padding=kernel // 2)
    plain.load_state_dict(fast.state_dict())
    x = torch.randn(1, 6, 12, 12, 12, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    y, y2 = fast(x), plain(x2)
    torch.testing.assert_close(y, y2, rtol=1e-5, atol=1e-5)
    y.square().sum().backward()
    y2.square().sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fast.weight.grad, plain.weight.grad, rtol=1e-4, atol=1e-4)


def test_predict_without_a_head_is_the_official_decode():
    torch.manual_seed(0)
    model = build_model("tiny").eval()
    assert model.refiner is None and model.output_size == model.low_res_size
    assert not any(k.startswith("refiner.") for k in model.state_dict())
    image = torch.randn(1, 1, 128, 128, 128)
    with torch.no_grad():
        embedding = model.encode(image)
        points, labels = torch.tensor([[[60.0, 64.0, 70.0]]]), torch.ones(1, 1, dtype=torch.long)
        logits, low = model.predict(embedding, image, points, labels, None)
        zeros = torch.zeros(1, 1, 32, 32, 32)
        assert logits is low and torch.equal(logits, model.decode(embedding, points, labels,
                                                                     zeros))
        again, _ = model.predict(embedding, image, points, labels, logits)
        assert torch.equal(again, model.decode(embedding, points, labels, logits))


def test_predict_with_a_head_answers_at_crop_resolution():
    torch.manual_seed(0)
    model = build_model("demo", **SMALL).eval()
    assert model.output_size == 32 and model.low_res_size == 16
    image = torch.randn(1, 1, 32, 32, 32)
    points, labels = torch.tensor([[[15.0, 16.0, 14.0]]]), torch.ones(1, 1, dtype=torch.long)
    with torch.no_grad():
        embedding = model.encode(image)
        logits, low = model.predict(embedding, image, points, labels, None)
        assert logits.shape == (1, 1, 32, 32, 32) and low.shape == (1, 1, 16, 16, 16)
        # The decoder's mask prompt is the previous full-resolution answer averaged down.
        _, low2 = model.predict(embedding, image, points, labels, logits)
        expected = model.decode(embedding, points, labels,
                                F.interpolate(logits, size=(16,) * 3, mode="area"))
        assert torch.equal(low2, expected)
    with pytest.raises(ValueError, match="needs the image crop"):
        model.predict(embedding, None, points, labels, None)


def test_head_and_decoder_get_gradients_from_a_refined_loss():
    torch.manual_seed(0)
    model = build_model("demo", **SMALL).train()
    image = torch.randn(2, 1, 32, 32, 32)
    points = torch.tensor([[[15.0, 16.0, 14.0]], [[10.0, 11.0, 12.0]]])
    labels = torch.ones(2, 1, dtype=torch.long)
    logits, _ = model.predict(model.encode(image), image, points, labels, None)
    logits.sigmoid().mean().backward()
    for name in ("refiner.down.0.proj.weight", "refiner.head.weight",
                 "mask_decoder.output_hypernetworks_mlps.0.layers.0.weight",
                 "image_encoder.patch_embed.proj.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_session_with_a_head_keeps_crops_and_answers_at_crop_resolution():
    import numpy as np

    from SGPSAMLib.geometry import Volume
    from SGPSAMLib.session import InteractiveSession

    torch.manual_seed(0)
    model = build_model("demo", **SMALL)
    kk, jj, ii = np.indices((30, 40, 40))
    ball = (kk - 15) ** 2 + (jj - 20) ** 2 + (ii - 20) ** 2 <= 36
    volume = Volume(np.where(ball, 200.0, 50.0).astype(np.float32), np.diag([1.5] * 3 + [1]))
    session = InteractiveSession(model, device="cpu", cache_size=1, extend_at_border=False)
    session.set_volume(volume)
    centre = volume.ijk_to_ras_points(np.array([20.0, 20.0, 15.0]))
    first = session.add_point(centre)
    assert first.low_res_logits.shape == (32, 32, 32)  # the head's grid, not the decoder's
    state = session.state
    assert list(state.crops) == list(state.embeddings) and len(state.crops) == 1
    before = first.mask.copy()
    second = session.add_point(centre + np.array([3.0, 0.0, 0.0]), positive=False)
    assert second.embedding_cached
    session.undo()
    assert np.array_equal(session.state.mask, before)
    # A click far away starts a second region; the one-entry cache drops the first crop too.
    far = volume.ijk_to_ras_points(np.array([2.0, 2.0, 2.0]))
    session.add_point(far)
    assert len(state.crops) == len(state.embeddings) == 1
