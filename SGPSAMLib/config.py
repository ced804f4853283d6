"""Model configuration: every size of the architecture in one validated, serialisable dataclass.

Hyper-parameters live here and in the named presets of ``presets.py`` only, so a checkpoint can
carry its config (``to_dict``) and be rebuilt exactly (``from_dict``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .options import GATE_MODES, look_up_option

__all__ = ["ModelConfig", "GATE_MODES"]


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a SAM-Med3D-style 3D SAM with optional Self-Gated Prompting Modules.

    The defaults are SAM-Med3D ``vit_b_ori`` (the architecture of ``sam_med3d_turbo.pth``).
    """

    preset: str = "sam_med3d"
    # Input crop: a cube of ``image_size`` voxels at ``crop_spacing_mm`` (the model's frame).
    image_size: int = 128
    crop_spacing_mm: float = 1.5
    # Image encoder (3D ViT).
    patch_size: int = 16
    in_chans: int = 1
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    out_chans: int = 384
    window_size: int = 14
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    # Prompt encoder.
    mask_in_chans: int = 16
    # Mask decoder (two-way transformer).
    decoder_depth: int = 2
    decoder_num_heads: int = 8
    decoder_mlp_dim: int = 2048
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    # Self-Gated Prompting Modules, inserted after these encoder blocks (empty = none).
    sgpm_blocks: tuple[int, ...] = ()
    sgpm_gate_hidden: int = 64
    sgpm_bottleneck: int = 96
    sgpm_dilations: tuple[int, ...] = (1, 2, 3)
    gate_mode: str = "learned"
    gumbel_tau: float = 1.0
    # Full-resolution refinement head (modeling/refiner.py): widths of its levels at S/2, S/4,
    # ...; empty = no head (SAM-Med3D presets: official checkpoints have no such weights).
    refine_channels: tuple[int, ...] = ()
    # Standard deviation (crop voxels) of the click bumps the refinement head sees.
    refine_click_sigma: float = 1.5

    def __post_init__(self) -> None:
        for name in ("global_attn_indexes", "sgpm_blocks", "sgpm_dilations", "refine_channels"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        positive = ("image_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads",
                    "out_chans", "mask_in_chans", "decoder_depth", "decoder_num_heads",
                    "decoder_mlp_dim", "iou_head_depth", "iou_head_hidden_dim",
                    "sgpm_gate_hidden", "sgpm_bottleneck")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"ModelConfig.{name} must be a positive int, got {value!r}")
        if self.image_size % self.patch_size:
            raise ValueError(f"ModelConfig.image_size ({self.image_size}) must be a multiple of "
                             f"patch_size ({self.patch_size})")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"ModelConfig.embed_dim ({self.embed_dim}) must be divisible by "
                             f"num_heads ({self.num_heads})")
        if self.out_chans % 3:
            raise ValueError("ModelConfig.out_chans must be divisible by 3 (the 3D Fourier "
                             f"positional encoding has 3 blocks), got {self.out_chans}")
        if self.out_chans % 8 or self.mask_in_chans % 4:
            raise ValueError("ModelConfig.out_chans must be divisible by 8 and mask_in_chans by 4 "
                             f"(upscaling/downscaling stages), got {self.out_chans}, "
                             f"{self.mask_in_chans}")
        if (self.out_chans // 2) % self.decoder_num_heads:
            raise ValueError("ModelConfig.out_chans // 2 must be divisible by decoder_num_heads")
        if self.window_size < 0:
            raise ValueError(f"ModelConfig.window_size must be >= 0, got {self.window_size}")
        for name in ("global_attn_indexes", "sgpm_blocks"):
            bad = [i for i in getattr(self, name) if not 0 <= i < self.depth]
            if bad:
                raise ValueError(f"ModelConfig.{name} has block indices {bad} outside "
                                 f"0..{self.depth - 1}")
        look_up_option(self.gate_mode, GATE_MODES, "ModelConfig.gate_mode")
        if self.crop_spacing_mm <= 0 or self.gumbel_tau <= 0 or self.mlp_ratio <= 0:
            raise ValueError("ModelConfig.crop_spacing_mm, gumbel_tau and mlp_ratio must be > 0")
        if self.refine_channels:
            if any(c <= 0 for c in self.refine_channels):
                raise ValueError("ModelConfig.refine_channels must be positive ints, got "
                                 f"{self.refine_channels}")
            if self.image_size % (2 ** len(self.refine_channels)):
                raise ValueError(f"ModelConfig.image_size ({self.image_size}) must be a multiple "
                                 f"of 2 ** len(refine_channels) ({2 ** len(self.refine_channels)})")
        if not self.refine_click_sigma > 0:
            raise ValueError("ModelConfig.refine_click_sigma must be > 0, got "
                             f"{self.refine_click_sigma!r}")

    @property
    def grid_size(self) -> int:
        """Tokens per axis of the image embedding (8 for SAM-Med3D)."""
        return self.image_size // self.patch_size

    @property
    def low_res_size(self) -> int:
        """Voxels per axis of the decoder's low-res logits (4x the token grid)."""
        return self.grid_size * 4

    @property
    def output_size(self) -> int:
        """Voxels per axis of the logits a prediction returns: the crop's with a refinement
        head, the decoder's low-res grid without."""
        return self.image_size if self.refine_channels else self.low_res_size

    def to_dict(self) -> dict[str, Any]:
        """Plain builtins (lists, not tuples): loadable with ``weights_only=True``."""
        out = dataclasses.asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """A config from ``to_dict``'s output; unknown fields are an error. Checkpoints written
        while the config had an (always empty, never read) ``extra`` field still load."""
        if data.get("extra", None) in ({}, None) and "extra" in data:
            data = {k: v for k, v in data.items() if k != "extra"}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig fields {unknown}; known fields: {sorted(known)}")
        return cls(**data)

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)
