"""Full-resolution refinement head: the mask at the crop's own resolution, from the image, the
clicks and the decoder's coarse answer.

Why: SAM-Med3D's mask decoder answers at a quarter of the crop's resolution (6 mm cells for its
128^3 crop, 3 mm for the demo's 64^3) and sees a click only as one sparse token. A 5-10 mm
lesion is then one or two cells, and a corrective click far from the token grid's structure is
easily ignored. Interactive systems that follow clicks well (nnInteractive, DeepGrow, RITM,
PRISM's refine net) give the clicks and the previous mask to a convolutional network as
full-resolution input channels. This head does that on top of the SAM path:

    logits = head(image, image - tissue under the positive clicks, sigmoid(upsample(coarse)),
                  +clicks, -clicks, previous mask, regions grown from the positive clicks;
                  image embedding at its deepest level)

The grown regions (:func:`grown_regions`: the classical "grow from seeds" at four intensity
tolerances, negative clicks as walls) are proposals the network learns to choose between and
correct; with them a model trained from scratch on a CPU follows the lesion's own boundary
within a few hundred steps instead of drawing a blob of typical lesion size around the click.

It is a small U-Net run on a space-to-depth view of the crop (every 2x2x2 block of voxels
becomes 8 channels of one cell, a lossless rearrangement), so its convolutions work at half the
crop's resolution where they are cheap on a CPU, and its output is rearranged back to full
resolution the same way. The decoder keeps its own low-res answer (trained beside the head's,
and the only answer of models without a head). Models without it (the SAM-Med3D presets) have
no such parameters at all, so official checkpoints load and compute exactly as before.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MaskRefiner3D", "render_click_maps", "space_to_depth", "depth_to_space",
           "HEAD_PRIOR_LOGIT"]

#: Initial bias of the head's output: logit of a 2 % foreground prior.
HEAD_PRIOR_LOGIT = -4.0

#: Input channels at full resolution: image, its difference to the tissue under the positive
#: clicks, coarse probability, +clicks, -clicks, previous.
_INPUTS = 6
#: Tolerances (multiples of the noise around the click) of the grown-region channels.
GROW_TOLERANCES = (3.0, 8.0, 20.0, 50.0)
#: Growing steps (one cell of S/2 each): reaches 30 mm at the demo's 1.5 mm crop voxels.
GROW_STEPS = 10


def space_to_depth(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """(B, C, D, H, W) -> (B, C * f^3, D / f, H / f, W / f); each f^3 block becomes channels."""
    b, c, d, h, w = x.shape
    f = factor
    x = x.reshape(b, c, d // f, f, h // f, f, w // f, f)
    return x.permute(0, 1, 3, 5, 7, 2, 4, 6).reshape(b, c * f ** 3, d // f, h // f, w // f)


def depth_to_space(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Inverse of :func:`space_to_depth`."""
    b, c, d, h, w = x.shape
    f = factor
    x = x.reshape(b, c // f ** 3, f, f, f, d, h, w)
    return x.permute(0, 1, 5, 2, 6, 3, 7, 4).reshape(b, c // f ** 3, d * f, h * f, w * f)


def render_click_maps(points: torch.Tensor | None, labels: torch.Tensor | None, size: int,
                      sigma: float) -> torch.Tensor:
    """Positive and negative click maps (B, 2, S, S, S): a Gaussian bump of peak 1 per click.

    Args:
        points: (B, N, 3) crop voxel indices in tensor-axis order (as the decoder takes them),
            or None for no clicks.
        labels: (B, N) 1 positive, 0 negative, -1 padding (ignored).
        size: crop side S.
        sigma: Gaussian standard deviation in crop voxels.

    Overlapping bumps of one sign are combined by their maximum. Separable: three 1-D Gaussians
    per click and one outer product, so N clicks cost N * S^3 multiplications.
    """
    if points is None or points.shape[1] == 0:
        batch = 1 if points is None else points.shape[0]
        device = None if points is None else points.device
        return torch.zeros((batch, 2, size, size, size), device=device)
    axis = torch.arange(size, device=points.device, dtype=torch.float32)
    offsets = axis[None, None, None, :] - points.float()[..., None]  # (B, N, 3, S)
    g = torch.exp(-0.5 * (offsets / float(sigma)) ** 2)
    bumps = (g[:, :, 0, :, None, None] * g[:, :, 1, None, :, None]
             * g[:, :, 2, None, None, :])  # (B, N, S, S, S)
    maps = []
    for sign in (1, 0):
        chosen = (labels == sign).to(bumps.dtype)[..., None, None, None]
        maps.append((bumps * chosen).amax(dim=1) if bumps.shape[1] else bumps.sum(dim=1))
    return torch.stack(maps, dim=1)


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` (same parameters) that always takes oneDNN's kernel for CPU float32.

    PyTorch picks its reference ``slow_conv3d`` for a single 3-D sample with few channels
    (a heuristic in ``ConvParams::use_mkldnn``): 10-20x slower for the head's convolutions at
    batch 1, i.e. for every click of an interactive session. oneDNN gives the same result
    (to float rounding) and gradients.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type == "cpu" and x.dtype == torch.float32
                and self.weight.dtype == torch.float32 and torch.backends.mkldnn.is_available()
                and torch.backends.mkldnn.enabled and self.padding_mode == "zeros"
                and isinstance(self.padding, tuple)):
            return torch.mkldnn_convolution(x.contiguous(), self.weight, self.bias,
                                            self.padding, self.stride, self.dilation,
                                            self.groups)
        return super().forward(x)


def _click_contrast(image: torch.Tensor, click_maps: torch.Tensor) -> torch.Tensor:
    """The image minus the mean intensity under the positive click bumps (0 without one).

    Tells every voxel at once how much it differs from the tissue the user clicked, a value a
    convolutional network could otherwise only carry across the crop through its receptive
    field; lesions are mostly regions of similar intensity around the click.
    """
    weight = click_maps[:, :1]
    total = weight.sum(dim=(2, 3, 4), keepdim=True)
    mean = (weight * image).sum(dim=(2, 3, 4), keepdim=True) / total.clamp(min=1e-6)
    return (image - mean) * (total > 1e-6)


@torch.no_grad()
def grown_regions(image: torch.Tensor, click_maps: torch.Tensor,
                  tolerances: tuple[float, ...] = GROW_TOLERANCES,
                  steps: int = GROW_STEPS) -> torch.Tensor:
    """Region growing from the positive clicks at half resolution -> (B, T, S/2, S/2, S/2).

    The classical interactive tool (Slicer's "Grow from seeds" family) as input channels: on the
    crop averaged over 2x2x2 blocks, the cells connected (26-neighbourhood, ``steps`` cells at
    most) to a positive click through cells whose intensity is within ``k`` times the noise
    of the clicked tissue, one channel per ``k`` in ``tolerances``. A network learns in a few
    hundred steps to refine such a proposal where it learns in thousands to find the region
    itself; later, negative clicks and the image tell it where the proposal leaked. Pure
    tensor operations (repeated 3x3x3 dilation), the same on a CPU and a GPU.
    """
    small = F.avg_pool3d(image.float(), 2)
    # The clicked tissue's level: a sharp average around the clicks (bump ** 4).
    weight = F.avg_pool3d(click_maps[:, :1].float(), 2) ** 4
    total = weight.sum(dim=(2, 3, 4), keepdim=True).clamp(min=1e-12)
    mean = (weight * small).sum(dim=(2, 3, 4), keepdim=True) / total
    # The noise: the robust spread of differences between neighbouring cells over the crop
    # (edges are few, so they barely move the median).
    step = (small[:, :, 1:] - small[:, :, :-1]).abs().flatten(1)
    noise = (1.4826 / 2 ** 0.5 * step.median(dim=1).values).clamp(min=1e-3)
    noise = noise[:, None, None, None, None]
    seeds = (F.max_pool3d(click_maps[:, :1].float(), 2) > 0.5).float()
    # Negative clicks are walls: growing never enters the cells they cover.
    walls = F.max_pool3d(click_maps[:, 1:2].float(), 2) > 0.5
    k = torch.tensor(tolerances, dtype=small.dtype, device=small.device)[None, :, None, None,
                                                                         None]
    inside = (((small - mean).abs() <= k * noise) & ~walls).float()  # (B, T, ...)
    grown = seeds * inside
    for _ in range(steps):
        grown = _dilate(grown) * inside
    return grown


def _dilate(x: torch.Tensor) -> torch.Tensor:
    """3x3x3 binary dilation of a 0/1 tensor (B, C, D, H, W): ``max_pool3d(x, 3, 1, 1)``.

    Separable (a running maximum with both neighbours along each axis in turn), so 6 element-
    wise maxima: 10x faster on a CPU than ``max_pool3d``, which also computes indices, and the
    same result exactly.
    """
    for dim in (2, 3, 4):
        n = x.shape[dim]
        if n < 2:
            continue
        y = x.clone()
        y.narrow(dim, 1, n - 1).copy_(torch.maximum(y.narrow(dim, 1, n - 1),
                                                     x.narrow(dim, 0, n - 1)))
        y.narrow(dim, 0, n - 1).copy_(torch.maximum(y.narrow(dim, 0, n - 1),
                                                     x.narrow(dim, 1, n - 1)))
        x = y
    return x


def _groups(channels: int) -> int:
    for groups in (8, 4, 2):
        if channels % groups == 0 and channels // groups >= 2:
            return groups
    return 1


class _ResBlock(nn.Module):
    """conv-GN-GELU-conv-GN + identity, GELU. GroupNorm: the same in training and inference,
    whatever the batch size (a session segments one crop at a time)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = Conv3d(channels, channels, 3, padding=1, bias=False)
        self.norm1 = nn.GroupNorm(_groups(channels), channels)
        self.conv2 = Conv3d(channels, channels, 3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(_groups(channels), channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.norm1(self.conv1(x)))
        return F.gelu(x + self.norm2(self.conv2(y)))


class _Stage(nn.Module):
    """Projection to ``channels`` + a residual block. The first level projects with a 1x1
    convolution (its input is the space-to-depth crop, 40 channels per cell: a 3x3x3 there
    would cost as much as the rest of the head); deeper levels with a strided 3x3x3."""

    def __init__(self, in_channels: int, channels: int, first: bool) -> None:
        super().__init__()
        self.proj = (Conv3d(in_channels, channels, 1, bias=False) if first else
                     Conv3d(in_channels, channels, 3, stride=2, padding=1, bias=False))
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.block = _ResBlock(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(F.gelu(self.norm(self.proj(x))))


class _Merge(nn.Module):
    """Decoder step: a coarser level upsampled onto a skip, added, then one 3x3x3 convolution."""

    def __init__(self, coarse: int, channels: int) -> None:
        super().__init__()
        self.lateral = Conv3d(coarse, channels, 1)
        self.conv = Conv3d(channels, channels, 3, padding=1, bias=False)
        self.norm = nn.GroupNorm(_groups(channels), channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(self.lateral(x), size=tuple(skip.shape[2:]), mode="trilinear",
                          align_corners=False)
        return F.gelu(self.norm(self.conv(x + skip)))


class MaskRefiner3D(nn.Module):
    """A U-Net on the space-to-depth crop; adds a learned full-resolution correction.

    Args:
        image_size: crop side S (divisible by 2 ** len(channels)).
        channels: widths of the levels at S/2, S/4, ... (e.g. (16, 32, 64)).
        embed_dim: channels of the image embedding, fused at the deepest level.
        click_sigma: click bump standard deviation in crop voxels.
    """

    def __init__(self, image_size: int, channels: tuple[int, ...], embed_dim: int,
                 click_sigma: float) -> None:
        super().__init__()
        if not channels:
            raise ValueError("MaskRefiner3D needs at least one level")
        self.image_size = int(image_size)
        self.click_sigma = float(click_sigma)
        self.down = nn.ModuleList()
        previous = _INPUTS * 8 + len(GROW_TOLERANCES)
        for level, width in enumerate(channels):
            self.down.append(_Stage(previous, width, first=level == 0))
            previous = width
        self.context = Conv3d(embed_dim, channels[-1], 1)
        self.up = nn.ModuleList(_Merge(channels[i + 1], channels[i])
                                for i in range(len(channels) - 1))
        self.head = Conv3d(channels[0], 8, 1)
        # Small weights and a background prior (p = 0.02): training starts from "nothing
        # here" with live gradients everywhere, instead of spending its first hundred steps
        # learning that most voxels are background (Lin et al. 2017, focal loss's prior init).
        nn.init.normal_(self.head.weight, std=0.01)
        nn.init.constant_(self.head.bias, HEAD_PRIOR_LOGIT)

    def forward(self, image: torch.Tensor, coarse: torch.Tensor, click_maps: torch.Tensor,
                previous: torch.Tensor | None, embedding: torch.Tensor) -> torch.Tensor:
        """Refined logits (B, 1, S, S, S).

        Args:
            image: (B, 1, S, S, S) normalised crop.
            coarse: (B, 1, L, L, L) decoder logits (any L dividing S).
            click_maps: (B, 2, S, S, S) from :func:`render_click_maps`.
            previous: (B, 1, S, S, S) the previous refined logits; None before the first
                prediction (the channel is then 0: "nothing segmented yet").
            embedding: (B or 1, C, g, g, g) image embedding.
        """
        size = self.image_size
        up = F.interpolate(coarse.float(), size=(size,) * 3, mode="trilinear",
                           align_corners=False)
        prior = torch.zeros_like(up) if previous is None else torch.sigmoid(previous.float())
        x = torch.cat([image.float(), _click_contrast(image.float(), click_maps.float()),
                       torch.sigmoid(up), click_maps.float(), prior], dim=1)
        x = torch.cat([space_to_depth(x), grown_regions(image, click_maps)], dim=1)
        skips = []
        for stage in self.down:
            x = stage(x)
            skips.append(x)
        context = embedding.float()
        if context.shape[0] != x.shape[0]:
            context = context.expand(x.shape[0], -1, -1, -1, -1)
        if tuple(context.shape[2:]) != tuple(x.shape[2:]):
            context = F.interpolate(context, size=tuple(x.shape[2:]), mode="trilinear",
                                    align_corners=False)
        x = x + self.context(context)
        for i in reversed(range(len(self.up))):
            x = self.up[i](x, skips[i])
        return depth_to_space(self.head(x))
