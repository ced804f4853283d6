"""Results a user must hear about although nothing failed: an empty mask, a click on air.

A model that finds nothing, or a positive click placed on background, gives a valid but useless
result. Every front end says so in the same words: ``sgpsam segment`` prints a warning (and
``--json`` lists it), ``sgpsam batch`` marks the case in its summary, the Slicer status line
adds it. numpy only; no torch.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from .geometry import Volume

__all__ = ["EMPTY_PREDICTION", "empty_prediction_warning", "background_level",
           "background_point_warning", "prediction_warnings"]

#: The words for a prediction without a single voxel.
EMPTY_PREDICTION = ("the prediction is empty (no voxel): the model found no lesion at the "
                    "point(s); place a positive point inside the lesion, or try another model")
#: Voxels sampled to estimate an image's darkest level (a strided subset: fast on a 512^3 CT).
_SAMPLE_VOXELS = 1_000_000
#: A voxel this far above the 1st percentile, as a fraction of the 1st-99th percentile range,
#: still counts as background (air in CT, the zero surround of MR).
_BACKGROUND_FRACTION = 0.02


def empty_prediction_warning(voxels: int) -> str | None:
    """:data:`EMPTY_PREDICTION` when ``voxels`` is 0, else None."""
    return EMPTY_PREDICTION if int(voxels) == 0 else None


def background_level(volume: Volume) -> float | None:
    """The intensity at or below which a voxel is background or air; None for a flat image.

    The 1st percentile plus 2 % of the 1st-99th percentile range, from a strided subset.
    """
    array = volume.array
    stride = max(1, int(np.ceil((array.size / _SAMPLE_VOXELS) ** (1 / 3))))
    sample = np.asarray(array[::stride, ::stride, ::stride], dtype=np.float64)
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return None
    low, high = np.percentile(sample, [1.0, 99.0])
    if not high > low:
        return None
    return float(low + _BACKGROUND_FRACTION * (high - low))


_COMPUTE = object()


def background_point_warning(volume: Volume, ras: Sequence[float], label: str,
                             level: float | None | object = _COMPUTE) -> str | None:
    """A warning when the voxel under ``ras`` (RAS mm) is background or air, else None.

    Args:
        volume: the image.
        ras: the point, RAS mm.
        label: how to name the point in the message (``"--point '1,2,3'"``, ``"seed 4"``).
        level: :func:`background_level` of the volume when already computed (None: a flat
            image, never a warning); computed here when not given.
    """
    if level is _COMPUTE:
        level = background_level(volume)
    if level is None:
        return None
    kji = volume.nearest_voxel(ras)
    if kji is None:
        return None
    value = float(volume.array[kji])
    if not value <= float(level):  # type: ignore[arg-type]
        return None
    return (f"{label} lies on background or air (voxel value {value:.4g}, at the image's "
            f"darkest level <= {level:.4g}); a positive point belongs inside the lesion")


def prediction_warnings(volume: Volume, voxels: int,
                        positive_points: Iterable[tuple[str, Sequence[float]]],
                        level: float | None | object = _COMPUTE) -> list[str]:
    """Every warning for one result: empty prediction, positive points on background.

    Args:
        volume: the image.
        voxels: voxels in the predicted mask.
        positive_points: (label for the message, RAS mm) of each positive point.
        level: :func:`background_level` of the volume, when already computed (a session
            that checks every click computes it once).
    """
    warnings = [w for w in (empty_prediction_warning(voxels),) if w]
    for label, ras in positive_points:
        if level is _COMPUTE:
            level = background_level(volume)
        warning = background_point_warning(volume, ras, label, level)
        if warning:
            warnings.append(warning)
    return warnings
