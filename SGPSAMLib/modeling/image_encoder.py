"""3D ViT image encoder of SAM-Med3D (``vit_b_ori``), with an exact fast path for its windows.

Two facts of the official code shape this module:

1. **Relative positions are broadcast the way the official code broadcasts them.** Its
   decomposed relative-position term adds ``rel_d[:, :, :, :, None, None]``,
   ``rel_h[:, :, :, None, :, None]`` and ``rel_w[:, :, :, None, None, :]`` to the 7-D attention
   map, which (on a cubic grid of side L) does not pair each axis with its own key axis. For query
   i = (qd, qh, qw) and key j = (kd, kh, kw) the logit bias actually computed is::

       A = q[qd,qh,qw] . Rd[qd - kw + L-1]     (depends on the key through kw only)
       B = q[qd,qh,kd] . Rh[qh - kw + L-1]     (the q of *another* token, at w = kd)
       C = q[qd,qh,kh] . Rw[kh - kw + L-1]     (the q of the token at w = kh)

   The public weights were trained with exactly this, so it is reproduced (and tested against
   the official outputs in ``../shared/fixtures``).
2. **Windows larger than the grid.** Windowed blocks use a 14^3 window on the 8^3 token grid: the
   normed grid is zero-padded to 2,744 tokens, attention runs over all of them and only the 512
   real outputs are kept. Padded tokens are zero vectors, so their q, k, v are the qkv biases.
   The padded keys share k = b_k and v = b_v, and the bias above factorises over kw, so for each
   real query the 2,232 padded keys collapse into one virtual key with value b_v and logit
   ``scale * q.b_k + log(S_all - S_real)`` where
   ``S = sum_kw exp(A[kw]) * sum_kd exp(B[kd, kw]) * sum_kh exp(C[kh, kw])`` over the whole
   window (S_all) or the real part (S_real). ``attn_impl="fast"`` computes that (512 queries x
   513 keys); ``"padded"`` is the literal official computation, kept as the test reference.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .common import LayerNorm3d, MLPBlock
from .sgpm import SelfGatedPromptingModule

__all__ = ["ImageEncoderViT3D", "Block3D", "Attention3D", "ATTENTION_IMPLS"]

ATTENTION_IMPLS = ("fast", "padded")


def _relative_table(rel_pos: torch.Tensor, size: int) -> torch.Tensor:
    """(size, size, C) table T[p, k] = rel_pos[p - k + size - 1]."""
    idx = torch.arange(size, device=rel_pos.device)
    return rel_pos[idx[:, None] - idx[None, :] + (size - 1)]


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x <= 0, accurate at both ends."""
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


class Attention3D(nn.Module):
    """Multi-head attention with SAM-Med3D's relative-position bias (``qkv``, ``rel_pos_*``)."""

    def __init__(self, dim: int, num_heads: int, rel_size: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.rel_size = rel_size  # side of the (cubic) attention grid the tables were made for
        self.rel_pos_d = nn.Parameter(torch.zeros(2 * rel_size - 1, self.head_dim))
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * rel_size - 1, self.head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * rel_size - 1, self.head_dim))

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, n, n, n, C) -> q, k, v each (B, heads, n^3, head_dim)."""
        b, d, h, w, _ = x.shape
        qkv = self.qkv(x).reshape(b, d * h * w, 3, self.num_heads, self.head_dim)
        return qkv.permute(2, 0, 3, 1, 4).unbind(0)

    def _tables(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        size = self.rel_size
        return tuple(_relative_table(t, size).to(dtype)
                     for t in (self.rel_pos_d, self.rel_pos_h, self.rel_pos_w))

    @staticmethod
    def _real_terms(q_grid: torch.Tensor, tables: tuple[torch.Tensor, ...]
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A, B, C of the module docstring for real queries and real x = kd / kh.

        q_grid (b, heads, n, n, n, c) -> A (b,h,n,n,n,L) indexed [qd,qh,qw,kw],
        B (b,h,n,n,n,L) indexed [qd,qh,kd,kw], C (b,h,n,n,n,L) indexed [qd,qh,kh,kw].
        """
        n = q_grid.shape[2]
        t_d, t_h, t_w = tables
        a = torch.einsum("bndhwc,dkc->bndhwk", q_grid, t_d[:n])
        b = torch.einsum("bndhxc,hkc->bndhxk", q_grid, t_h[:n])
        c = torch.einsum("bndhxc,xkc->bndhxk", q_grid, t_w[:n])
        return a, b, c

    @staticmethod
    def _real_bias(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """(b, heads, n^3, n^3) bias between real queries and real keys.

        B and C share the query's (qd, qh) and the key's kw, so they are summed first on the
        small (qd, qh, kd, kh, kw) grid; one broadcast add with A then writes the full map. Two
        plain broadcasts instead of strided copies into an 8-D view: about 5x faster forward and
        backward on a CPU, the same numbers up to float rounding.
        """
        batch, heads, n = a.shape[0], a.shape[1], a.shape[2]
        a, b, c = a[..., :n], b[..., :n], c[..., :n]  # real keys only (kw < n)
        bc = b[:, :, :, :, :, None, :] + c[:, :, :, :, None, :, :]  # qd qh kd kh kw
        full = bc[:, :, :, :, None] + a[:, :, :, :, :, None, None, :]  # qd qh qw kd kh kw
        return full.reshape(batch, heads, n ** 3, n ** 3)

    def _output(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """(B, heads, n^3, head_dim) -> (B, n, n, n, C), heads concatenated head-major."""
        x = x.permute(0, 2, 1, 3).reshape(x.shape[0], n, n, n, self.num_heads * self.head_dim)
        return self.proj(x)

    def _check_grid(self, x: torch.Tensor) -> int:
        d, h, w = x.shape[1:4]
        if not d == h == w:
            raise ValueError(f"attention needs a cubic token grid, got {(d, h, w)}")
        if d > self.rel_size:
            raise ValueError(f"grid side {d} exceeds the relative-position size {self.rel_size}; "
                             "partition into windows first")
        return d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attention over x (B, n, n, n, C).

        n == rel_size: plain (official) attention. n < rel_size: the exact result of zero-padding
        x to rel_size^3, attending and cropping back (virtual-key fast path).
        """
        n = self._check_grid(x)
        size = self.rel_size
        q, k, v = self._qkv(x)
        batch, heads, tokens, c = q.shape
        tables = self._tables(q.dtype)
        a, b, cc = self._real_terms(q.reshape(batch, heads, n, n, n, c), tables)
        bias = self._real_bias(a, b, cc)
        if n < size:
            dim = heads * c
            if self.qkv.bias is not None:
                b_q, b_k, b_v = (self.qkv.bias[i * dim:(i + 1) * dim].reshape(heads, c).to(q.dtype)
                                 for i in range(3))
            else:
                b_q = b_k = b_v = q.new_zeros(heads, c)
            virtual = self._virtual_key_bias(a, b, cc, b_q, tables).to(bias.dtype)
            bias = torch.cat([bias, virtual], dim=-1)
            k = torch.cat([k, b_k[None, :, None].expand(batch, -1, -1, -1)], dim=2)
            v = torch.cat([v, b_v[None, :, None].expand(batch, -1, -1, -1)], dim=2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        return self._output(out, n)

    def _virtual_key_bias(self, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor,
                          b_q: torch.Tensor, tables: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """log of the summed exp(bias) of all padded keys, per real query -> (b, h, n^3, 1).

        Padded tokens have q = b_q, so B at kd >= n is b_q . Rh[qh - kw + L-1] (one value per
        padded kd) and C at kh >= n is b_q . Rw[kh - kw + L-1].
        """
        n, size = a.shape[2], self.rel_size
        _, t_h, t_w = tables
        a, b, c = a.float(), b.float(), c.float()
        b_pad = torch.einsum("nc,hkc->nhk", b_q.float(), t_h[:n].float())  # (heads, qh, kw)
        c_pad = torch.einsum("nc,xkc->nxk", b_q.float(), t_w[n:].float())  # (heads, kh, kw)
        lse_b_real = torch.logsumexp(b, dim=-2)  # over kd < n -> (b, h, qd, qh, kw)
        lse_c_real = torch.logsumexp(c, dim=-2)
        lse_b_all = torch.logaddexp(lse_b_real, b_pad[None, :, None] + math.log(size - n))
        lse_c_all = torch.logaddexp(lse_c_real, torch.logsumexp(c_pad, dim=1)[None, :, None, None])
        log_all = torch.logsumexp(a + (lse_b_all + lse_c_all)[:, :, :, :, None, :], dim=-1)
        log_real = torch.logsumexp(
            a[..., :n] + (lse_b_real + lse_c_real)[:, :, :, :, None, :n], dim=-1)
        virtual = log_all + _log1mexp(log_real - log_all)
        return virtual.reshape(a.shape[0], a.shape[1], n ** 3, 1)


def _window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Zero-pad (B, D, H, W, C) to multiples of window and split into windows."""
    b, d, h, w, c = x.shape
    pads = [(-n) % window for n in (d, h, w)]
    if any(pads):
        x = F.pad(x, (0, 0, 0, pads[2], 0, pads[1], 0, pads[0]))
    dp, hp, wp = d + pads[0], h + pads[1], w + pads[2]
    x = x.view(b, dp // window, window, hp // window, window, wp // window, window, c)
    windows = x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, window, window, window, c)
    return windows, (dp, hp, wp)


def _window_unpartition(windows: torch.Tensor, window: int, padded: tuple[int, int, int],
                        size: tuple[int, int, int]) -> torch.Tensor:
    dp, hp, wp = padded
    b = windows.shape[0] // ((dp // window) * (hp // window) * (wp // window))
    x = windows.view(b, dp // window, hp // window, wp // window, window, window, window, -1)
    x = x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, dp, hp, wp, -1)
    d, h, w = size
    return x[:, :d, :h, :w, :].contiguous()


class Block3D(nn.Module):
    """Pre-norm transformer block; windowed (window_size > 0) or global attention."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, window_size: int,
                 grid_size: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.window_size = window_size
        self.attn = Attention3D(dim, num_heads, window_size if window_size > 0 else grid_size)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio), act=nn.GELU)
        self.attn_impl = "fast"

    def _attention(self, x: torch.Tensor) -> torch.Tensor:
        if self.window_size <= 0:
            return self.attn(x)
        size = tuple(x.shape[1:4])
        if self.attn_impl == "fast" and len(set(size)) == 1 and size[0] <= self.window_size:
            return self.attn(x)  # one window: exact virtual-key path
        windows, padded = _window_partition(x, self.window_size)
        return _window_unpartition(self.attn(windows), self.window_size, padded, size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self._attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed3D(nn.Module):
    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 4, 1)  # channels last


class ImageEncoderViT3D(nn.Module):
    """(B, 1, S, S, S) crop -> (B, out_chans, S/p, S/p, S/p) image embedding."""

    def __init__(self, image_size: int, patch_size: int, in_chans: int, embed_dim: int,
                 depth: int, num_heads: int, mlp_ratio: float, out_chans: int, window_size: int,
                 global_attn_indexes: tuple[int, ...], sgpm_blocks: tuple[int, ...] = (),
                 sgpm_kwargs: dict | None = None) -> None:
        super().__init__()
        self.image_size = image_size
        grid = image_size // patch_size
        self.patch_embed = PatchEmbed3D(patch_size, in_chans, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, grid, embed_dim))
        self.blocks = nn.ModuleList(
            Block3D(embed_dim, num_heads, mlp_ratio,
                    0 if i in global_attn_indexes else window_size, grid)
            for i in range(depth)
        )
        self.neck = nn.Sequential(
            nn.Conv3d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm3d(out_chans),
            nn.Conv3d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm3d(out_chans),
        )
        self.sgpm = nn.ModuleDict({
            str(i): SelfGatedPromptingModule(embed_dim, **(sgpm_kwargs or {}))
            for i in sorted(sgpm_blocks)
        })

    def set_attention_impl(self, impl: str) -> None:
        """"fast" (exact virtual-key path) or "padded" (the official computation, slow)."""
        if impl not in ATTENTION_IMPLS:
            raise ValueError(f"attention impl must be one of {ATTENTION_IMPLS}, got {impl!r}")
        for block in self.blocks:
            block.attn_impl = impl

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        expected = (self.image_size,) * 3
        if x.ndim != 5 or tuple(x.shape[2:]) != expected:
            raise ValueError(f"image must be (B, C, {self.image_size}, {self.image_size}, "
                             f"{self.image_size}), got {tuple(x.shape)}")
        x = self.patch_embed(x) + self.pos_embed
        for i, block in enumerate(self.blocks):
            x = block(x)
            key = str(i)
            if key in self.sgpm:
                x = self.sgpm[key](x)
        return self.neck(x.permute(0, 4, 1, 2, 3))
