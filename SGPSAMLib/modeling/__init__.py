"""Model parts; parameter names follow the official SAM-Med3D checkpoints."""
from .image_encoder import ImageEncoderViT3D
from .mask_decoder import MaskDecoder3D
from .prompt_encoder import PromptEncoder3D
from .sgp_sam import SGPSAMModel
from .sgpm import SelfGatedPromptingModule

__all__ = ["ImageEncoderViT3D", "MaskDecoder3D", "PromptEncoder3D", "SGPSAMModel",
           "SelfGatedPromptingModule"]
