"""3D prompt encoder of SAM-Med3D: point clicks -> sparse tokens, previous logits -> dense map.

Two inherited quirks are reproduced on purpose because the public weights were trained with them:
the Fourier features are ``concat(sin, cos, sin)``, and the dense positional encoding swaps the
first two grid axes relative to the point encoding (a 2-D SAM x/y leftover).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .common import LayerNorm3d

__all__ = ["PromptEncoder3D", "PositionEmbeddingRandom3D"]


class PositionEmbeddingRandom3D(nn.Module):
    """Random Fourier features of 3-D coordinates in [0, 1] (buffer loaded from checkpoints)."""

    def __init__(self, num_pos_feats: int, scale: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix",
                             scale * torch.randn((3, num_pos_feats)))

    def encode(self, coords: torch.Tensor) -> torch.Tensor:
        """(..., 3) normalised coordinates -> (..., 3 * num_pos_feats)."""
        gauss = self.positional_encoding_gaussian_matrix
        u = 2 * math.pi * ((2 * coords - 1).to(gauss.dtype) @ gauss)
        return torch.cat([torch.sin(u), torch.cos(u), torch.sin(u)], dim=-1)

    def dense(self, size: tuple[int, int, int]) -> torch.Tensor:
        """(C, X, Y, Z) encoding of the grid cell centres, axes 0 and 1 swapped as trained."""
        x, y, z = size
        device = self.positional_encoding_gaussian_matrix.device
        grid = torch.ones((x, y, z), device=device)
        along0 = (grid.cumsum(0) - 0.5) / x
        along1 = (grid.cumsum(1) - 0.5) / y
        along2 = (grid.cumsum(2) - 0.5) / z
        pe = self.encode(torch.stack([along1, along0, along2], dim=-1))
        return pe.permute(3, 0, 1, 2)

    def points(self, coords: torch.Tensor, image_size: tuple[int, int, int]) -> torch.Tensor:
        """(B, N, 3) voxel-centre coordinates in the crop -> (B, N, C)."""
        scale = torch.tensor(image_size, dtype=coords.dtype, device=coords.device)
        return self.encode(coords / scale)


class PromptEncoder3D(nn.Module):
    """Points (always followed by one padding point) and a low-res mask -> embeddings."""

    def __init__(self, embed_dim: int, image_embedding_size: tuple[int, int, int],
                 input_image_size: tuple[int, int, int], mask_in_chans: int) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.image_embedding_size = tuple(image_embedding_size)
        self.input_image_size = tuple(input_image_size)
        self.pe_layer = PositionEmbeddingRandom3D(embed_dim // 3)
        # 0 = negative, 1 = positive (no box corners: SAM-Med3D ships only these two).
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(2))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_downscaling = nn.Sequential(
            nn.Conv3d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm3d(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv3d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm3d(mask_in_chans),
            nn.GELU(),
            nn.Conv3d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    @property
    def mask_input_size(self) -> tuple[int, int, int]:
        return tuple(4 * n for n in self.image_embedding_size)

    def get_dense_pe(self) -> torch.Tensor:
        """(1, C, X, Y, Z) positional encoding of the image embedding grid."""
        return self.pe_layer.dense(self.image_embedding_size).unsqueeze(0)

    def embed_points(self, points: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """points (B, N, 3) crop voxel indices, labels (B, N) in {0, 1} -> (B, N + 1, C)."""
        points = points.to(self.pe_layer.positional_encoding_gaussian_matrix.dtype) + 0.5
        pad_point = points.new_zeros((points.shape[0], 1, 3))
        pad_label = -torch.ones((labels.shape[0], 1), dtype=labels.dtype, device=labels.device)
        points = torch.cat([points, pad_point], dim=1)
        labels = torch.cat([labels, pad_label], dim=1)
        emb = self.pe_layer.points(points, self.input_image_size)
        emb = torch.where((labels == -1)[..., None], torch.zeros_like(emb), emb)
        emb = emb + (labels == -1)[..., None] * self.not_a_point_embed.weight
        emb = emb + (labels == 0)[..., None] * self.point_embeddings[0].weight
        emb = emb + (labels == 1)[..., None] * self.point_embeddings[1].weight
        return emb

    def forward(self, points: torch.Tensor | None, labels: torch.Tensor | None,
                masks: torch.Tensor | None, batch_size: int = 1
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> sparse (B, N + 1, C) (or (B, 0, C) without points), dense (B, C, X, Y, Z)."""
        if points is not None:
            if labels is None or labels.shape != points.shape[:2] or points.shape[-1] != 3:
                raise ValueError("points must be (B, N, 3) with labels (B, N), got "
                                 f"{tuple(points.shape)} and "
                                 f"{None if labels is None else tuple(labels.shape)}")
            batch_size = points.shape[0]
            sparse = self.embed_points(points, labels)
        else:
            if masks is not None:
                batch_size = masks.shape[0]
            weight = self.not_a_point_embed.weight
            sparse = weight.new_empty((batch_size, 0, self.embed_dim))
        if masks is not None:
            if tuple(masks.shape[1:]) != (1, *self.mask_input_size):
                raise ValueError(f"mask prompt must be (B, 1, {self.mask_input_size}), "
                                 f"got {tuple(masks.shape)}")
            dense = self.mask_downscaling(masks)
        else:
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1, 1).expand(
                batch_size, -1, *self.image_embedding_size)
        return sparse, dense
