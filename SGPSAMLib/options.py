"""The option vocabulary: every set of named choices a user can give, defined once.

The command line's ``choices``, :class:`~SGPSAMLib.training.config.TrainConfig`, the session,
the model config, batch and the Slicer module's settings and forms all take their allowed values
from here, and check a value with :func:`look_up_option`, which names the option, lists what is
allowed and suggests the nearest valid value (MONAI's ``look_up_option`` does the same), e.g.
``--prompt-mode: 'lastest'; expected one of latest, cumulative; did you mean 'latest'?``

Stdlib only (and :mod:`SGPSAMLib.errors`): the command-line parser and the Slicer module import
it before torch exists.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable

from .errors import SGPSAMError

__all__ = ["OptionError", "look_up_option", "nearest_option", "MODALITIES", "IMAGE_MODALITIES",
           "SYNTH_MODALITIES", "SYNTH_APPEARANCES", "PROMPT_MODES", "GATE_MODES", "TRAIN_MODES",
           "LOSSES",
           "CLICK_MODES", "AMP_MODES", "LESION_UNITS", "COORDINATE_SPACES", "OUTPUT_FORMATS",
           "IMAGE_SUFFIXES", "WRITE_SUFFIXES"]

#: What an image is, for intensity normalisation: CT (clipped to [-1000, 1000] HU) or MR.
IMAGE_MODALITIES = ("CT", "MR")
#: The modality option of segment, batch, evaluate, train and Slicer: "auto" decides from the
#: image (CT when its minimum is below -500).
MODALITIES = ("auto", *IMAGE_MODALITIES)
#: Synthetic cases (``sgpsam synth``, ``demo``): "random" draws CT or MR from the seed.
SYNTH_MODALITIES = (*IMAGE_MODALITIES, "random")
#: Synthetic lesions' looks: one contrast with light texture, or the varied kinds.
SYNTH_APPEARANCES = ("plain", "varied")
#: What the model sees at a click: the newest click + previous logits, or every click so far.
PROMPT_MODES = ("latest", "cumulative")
#: The SGPM gate: learned, or forced on / off (ablations).
GATE_MODES = ("learned", "always_on", "always_off")
#: Training recipes: SGP-SAM transfer (backbone frozen) or full fine-tuning.
TRAIN_MODES = ("sgp", "finetune")
#: Training losses: the Zoom Loss or SAM-Med3D's DiceCE.
LOSSES = ("zoom", "dicece")
#: Where a simulated corrective click goes in training (``training/clicks.py``).
CLICK_MODES = ("uniform", "center", "mixed")
#: Mixed precision in training.
AMP_MODES = ("auto", "off", "bf16", "fp16")
#: What one lesion of a label map is: a connected component or a whole label value.
LESION_UNITS = ("component", "label")
#: Coordinate systems of seed files and points (``lps = (-r, -a, s)``).
COORDINATE_SPACES = ("RAS", "LPS")
#: Batch output formats -> file suffix (labelmaps, or Slicer's segmentation file).
OUTPUT_FORMATS = {"nii.gz": ".nii.gz", "nrrd": ".nrrd", "seg.nrrd": ".seg.nrrd"}
#: Image files read as volumes (DICOM series are folders).
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
#: Labelmap files ``write_labelmap`` writes.
WRITE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha")


class OptionError(SGPSAMError, ValueError):
    """A value that is not one of an option's choices (a ValueError for library callers, an
    SGPSAMError, i.e. one line and exit code 2, on the command line)."""


def nearest_option(value: object, options: Iterable[str]) -> str | None:
    """The valid value nearest ``value`` (case-insensitive spelling similarity), or None."""
    options = [str(option) for option in options]
    by_lower = {option.lower(): option for option in options}
    close = difflib.get_close_matches(str(value).lower(), list(by_lower), n=1, cutoff=0.6)
    return by_lower[close[0]] if close else None


def look_up_option(value: object, options: Iterable[str], name: str, *,
                   case_sensitive: bool = True,
                   error: type[Exception] = OptionError) -> str:
    """``value`` as spelled in ``options`` (mapping keys count), or ``error`` naming ``name``.

    Args:
        value: what the user gave.
        options: the allowed values.
        name: the option as the user knows it (``--prompt-mode``, ``ModelConfig.gate_mode``).
        case_sensitive: False accepts any case and returns the spelling in ``options``
            (``"ct"`` -> ``"CT"``).
        error: the exception type to raise (default :class:`OptionError`).

    Raises:
        ``error``: "NAME: 'x'; expected one of A, B; did you mean 'A'?".
    """
    options = tuple(options)
    if isinstance(value, str):
        if value in options:
            return value
        if not case_sensitive:
            for option in options:
                if option.lower() == value.lower():
                    return option
    hint = nearest_option(value, options) if isinstance(value, str) else None
    message = f"{name}: {value!r}; expected one of {', '.join(options)}"
    if hint is not None:
        message += f"; did you mean {hint!r}?"
    raise error(message)
