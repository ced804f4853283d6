"""SGP-SAM: composition of image encoder (+ SGPM), prompt encoder, mask decoder and an optional
full-resolution refinement head."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .image_encoder import ImageEncoderViT3D
from .mask_decoder import MaskDecoder3D
from .prompt_encoder import PromptEncoder3D
from .refiner import MaskRefiner3D, render_click_maps

__all__ = ["SGPSAMModel"]


class SGPSAMModel(nn.Module):
    """A SAM-Med3D-compatible 3D SAM; parameter names match the official checkpoints.

    ``encode`` runs once per 128^3 region; ``decode`` runs per click on the cached embedding.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        grid = config.grid_size
        self.image_encoder = ImageEncoderViT3D(
            image_size=config.image_size, patch_size=config.patch_size,
            in_chans=config.in_chans, embed_dim=config.embed_dim, depth=config.depth,
            num_heads=config.num_heads, mlp_ratio=config.mlp_ratio, out_chans=config.out_chans,
            window_size=config.window_size, global_attn_indexes=config.global_attn_indexes,
            sgpm_blocks=config.sgpm_blocks,
            sgpm_kwargs=dict(gate_hidden=config.sgpm_gate_hidden,
                             bottleneck=config.sgpm_bottleneck, dilations=config.sgpm_dilations,
                             gate_mode=config.gate_mode, tau=config.gumbel_tau),
        )
        self.prompt_encoder = PromptEncoder3D(
            embed_dim=config.out_chans, image_embedding_size=(grid,) * 3,
            input_image_size=(config.image_size,) * 3, mask_in_chans=config.mask_in_chans,
        )
        self.mask_decoder = MaskDecoder3D(
            transformer_dim=config.out_chans, depth=config.decoder_depth,
            num_heads=config.decoder_num_heads, mlp_dim=config.decoder_mlp_dim,
            num_multimask_outputs=config.num_multimask_outputs,
            iou_head_depth=config.iou_head_depth, iou_head_hidden_dim=config.iou_head_hidden_dim,
        )
        self.refiner = (MaskRefiner3D(config.image_size, config.refine_channels,
                                      config.out_chans, config.refine_click_sigma)
                        if config.refine_channels else None)

    @property
    def low_res_size(self) -> int:
        return self.config.low_res_size

    @property
    def output_size(self) -> int:
        """Side of the logits :meth:`predict` returns (crop size with a refiner, else L)."""
        return self.config.output_size

    @property
    def device(self) -> torch.device:
        return self.image_encoder.pos_embed.device

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 1, S, S, S) normalised crop -> (B, C, S/16, S/16, S/16) image embedding."""
        return self.image_encoder(image)

    def decode(self, embedding: torch.Tensor, points: torch.Tensor | None,
               labels: torch.Tensor | None, mask_logits: torch.Tensor | None) -> torch.Tensor:
        """Prompted low-res logits (B, 1, L, L, L) with ``multimask_output=False``.

        Args:
            embedding: (B, C, g, g, g) from :meth:`encode` (B may be 1 for several prompts).
            points: (B, N, 3) crop voxel indices in tensor-axis order (dim2, dim3, dim4);
                a padding point is appended internally, as in SAM-Med3D. ``None``: no points.
            labels: (B, N) integers, 1 = positive, 0 = negative.
            mask_logits: (B, 1, L, L, L) previous low-res logits; zeros for the first click.
        """
        batch = embedding.shape[0] if points is None else points.shape[0]
        sparse, dense = self.prompt_encoder(points, labels, mask_logits, batch_size=batch)
        logits, _ = self.mask_decoder(embedding, self.prompt_encoder.get_dense_pe(), sparse,
                                      dense.to(embedding.dtype), multimask_output=False)
        return logits

    def predict(self, embedding: torch.Tensor, image: torch.Tensor | None,
                points: torch.Tensor | None, labels: torch.Tensor | None,
                previous: torch.Tensor | None, clicks: torch.Tensor | None = None,
                click_labels: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """One interaction step -> (logits (B, 1, O, O, O), decoder low-res logits).

        O is :attr:`output_size`. Without a refinement head this is :meth:`decode` with
        ``previous`` as the mask prompt, and both results are the same tensor. With one, the
        decoder's mask prompt is ``previous`` averaged down to its grid, and the head refines
        the decoder's answer at full resolution from the image, every click so far and
        ``previous``.

        Args:
            embedding: (B or 1, C, g, g, g) from :meth:`encode`.
            image: (B, 1, S, S, S) the crop that was encoded (needed with a refinement head).
            points, labels: the decoder's prompt (see :meth:`decode`), e.g. the newest click.
            previous: (B, 1, O, O, O) the previous logits, or None before the first click.
            clicks, click_labels: (B, N, 3) / (B, N) every click so far in this crop, for the
                refinement head (labels 1, 0, or -1 = padding); default ``points``/``labels``.
        """
        batch = embedding.shape[0] if points is None else points.shape[0]
        low_size = self.low_res_size
        if previous is None:
            prompt = embedding.new_zeros((batch, 1, low_size, low_size, low_size))
        elif previous.shape[-1] != low_size:
            prompt = F.interpolate(previous.float(), size=(low_size,) * 3, mode="area")
        else:
            prompt = previous
        low = self.decode(embedding, points, labels, prompt.to(embedding.dtype))
        if self.refiner is None:
            return low, low
        if image is None:
            raise ValueError("this model has a refinement head: predict() needs the image crop")
        if clicks is None:
            clicks, click_labels = points, labels
        maps = render_click_maps(clicks, click_labels, self.config.image_size,
                                 self.config.refine_click_sigma)
        if maps.shape[0] != batch:
            maps = maps.expand(batch, -1, -1, -1, -1)
        refined = self.refiner(image, low, maps.to(image.device), previous, embedding)
        return refined, low

    def forward(self, image: torch.Tensor, points: torch.Tensor, labels: torch.Tensor,
                mask_logits: torch.Tensor | None = None) -> torch.Tensor:
        """Encode + one prediction (training convenience): logits at :attr:`output_size`."""
        embedding = self.encode(image)
        logits, _ = self.predict(embedding, image, points, labels, mask_logits)
        return logits

    def gate_statistics(self) -> dict[str, float]:
        """Per-SGPM-block fraction of samples that ran the fusion block since the last reset."""
        return {f"block{k}": m.activation_rate() for k, m in self.image_encoder.sgpm.items()}

    def reset_gate_statistics(self) -> None:
        for module in self.image_encoder.sgpm.values():
            module.reset_statistics()
