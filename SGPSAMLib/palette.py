"""The lesion colours: lesion (label value) n has the same colour everywhere.

Interactive segments in Slicer, batch ``.seg.nrrd`` segments, batch results loaded back into
Slicer and the PNG overlays of ``sgpsam demo`` all take lesion n's colour from here, so a
lesion is recognisable across them. Distinct, colour-blind-friendly colours (Okabe-Ito, then
Paul Tol's bright), lesion 1 first; they cycle after the twelfth. Stdlib only.
"""
from __future__ import annotations

__all__ = ["LESION_COLORS", "lesion_color", "lesion_color_rgb8"]

#: RGB in 0..1 of lesions 1, 2, ... (cycled).
LESION_COLORS: tuple[tuple[float, float, float], ...] = (
    (0.835, 0.369, 0.0), (0.0, 0.447, 0.698), (0.0, 0.620, 0.451), (0.941, 0.894, 0.259),
    (0.8, 0.475, 0.655), (0.337, 0.706, 0.914), (0.902, 0.624, 0.0), (0.933, 0.4, 0.467),
    (0.133, 0.533, 0.2), (0.667, 0.2, 0.467), (0.4, 0.8, 0.933), (0.8, 0.733, 0.267),
)


def lesion_color(label_value: int) -> tuple[float, float, float]:
    """RGB (0..1) of a lesion's label value (1-based; it cycles)."""
    return LESION_COLORS[(int(label_value) - 1) % len(LESION_COLORS)]


def lesion_color_rgb8(label_value: int) -> tuple[int, int, int]:
    """The same colour as 0..255 integers (images)."""
    r, g, b = lesion_color(label_value)
    return round(255 * r), round(255 * g), round(255 * b)
