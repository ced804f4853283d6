"""Exception types raised for bad user input; each message names the file or parameter."""
from __future__ import annotations

__all__ = ["SGPSAMError", "CheckpointError", "VolumeIOError", "VolumeError", "PromptError"]


class SGPSAMError(Exception):
    """Base class: the command line turns these into one clear message and exit code 2."""


class CheckpointError(SGPSAMError):
    """A checkpoint file cannot be used with the requested architecture."""


class VolumeIOError(SGPSAMError, OSError):
    """An image file or folder is missing, unreadable or cannot be written."""


class VolumeError(SGPSAMError, ValueError):
    """An image is unusable for segmentation (2-D, empty, constant, non-finite, bad geometry)."""


class PromptError(SGPSAMError, ValueError):
    """A prompt (point) is invalid, e.g. outside the image."""
