"""The named model architectures: a :class:`~SGPSAMLib.config.ModelConfig` per preset name.

Next to ``ModelConfig`` and torch-free, so the command line, the model registry and the Slicer
module can list and check preset names without importing torch; :mod:`SGPSAMLib.build` builds
them (``from SGPSAMLib.build import PRESETS`` keeps working).
"""
from __future__ import annotations

from .config import ModelConfig
from .options import nearest_option

__all__ = ["PRESETS", "preset_config"]

PRESETS: dict[str, ModelConfig] = {
    # SAM-Med3D vit_b_ori: the architecture of the public sam_med3d(_turbo).pth checkpoints.
    "sam_med3d": ModelConfig(preset="sam_med3d"),
    # The same backbone with an SGPM after each global-attention block.
    "sgp_sam": ModelConfig(preset="sgp_sam", sgpm_blocks=(2, 5, 8, 11)),
    # Same code and geometry (128^3 crop, 8^3 tokens, 14^3 padded windows), small widths: tests.
    "tiny": ModelConfig(
        preset="tiny", embed_dim=48, depth=4, num_heads=2, out_chans=48,
        global_attn_indexes=(1, 3), mask_in_chans=8, decoder_num_heads=2, decoder_mlp_dim=64,
        iou_head_hidden_dim=32, sgpm_blocks=(1, 3), sgpm_gate_hidden=8, sgpm_bottleneck=8,
    ),
    # The bundled demo model: small enough to train on a 2-core CPU within an hour and to ship
    # (< 25 MB). SAM-Med3D's voxel size (1.5 mm) on a 64^3 crop (96 mm field of view) with 8^3
    # patches (8^3 tokens, all attention global: the grid is smaller than a window), and a
    # full-resolution refinement head (modeling/refiner.py) so that the mask has 1.5 mm cells
    # instead of the decoder's 3 mm: small lesions are a few cells of the decoder's grid.
    "demo": ModelConfig(
        preset="demo", image_size=64, patch_size=8, embed_dim=192, depth=6, num_heads=4,
        out_chans=96, window_size=0,
        global_attn_indexes=(2, 5), mask_in_chans=8, decoder_num_heads=4, decoder_mlp_dim=256,
        iou_head_hidden_dim=64, sgpm_blocks=(2, 5), sgpm_gate_hidden=32, sgpm_bottleneck=32,
        refine_channels=(16, 32, 64),
    ),
}


def preset_config(name: str, option: str = "", error: type[Exception] = ValueError
                  ) -> ModelConfig:
    """The config of a preset name, or ``error`` ("[OPTION: ]unknown preset 'x'; choose one of
    ...; did you mean ...?")."""
    if name in PRESETS:
        return PRESETS[name]
    hint = nearest_option(name, PRESETS)
    raise error(f"{option + ': ' if option else ''}unknown preset {name!r}; choose one of "
                f"{', '.join(sorted(PRESETS))}" + (f"; did you mean {hint!r}?" if hint else ""))
