"""A quick-look PNG: axial, coronal and sagittal slices through a lesion with its mask on top.

Why its own PNG encoder: the demo and the evaluation must show a result without Slicer and
without adding matplotlib or Pillow to the dependencies; a PNG is zlib + a few chunk headers.

Panels are resampled from the original grid (nearest neighbour) on planes along R/A/S through
``centre_ras`` with square pixels (the smallest voxel size, enlarged if a panel would exceed
``max_pixels``), so anisotropic, oblique or permuted images look right. Orientation
(radiological, as Slicer shows it): axial and coronal have the patient's right on the image's
left; axial has anterior at the top; coronal and sagittal have superior at the top; sagittal
has anterior on the left.
"""
from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Union

import numpy as np

from .bitmap_font import CAP_HEIGHT, LINE_HEIGHT, draw_text, text_size
from .errors import VolumeError
from .geometry import Volume, ijk_to_array_index
from .palette import LESION_COLORS, lesion_color_rgb8
from .region import resolve_modality

__all__ = ["render_overlay", "write_overlay", "render_comparison", "write_comparison",
           "ComparisonLayout", "ClickMarker", "encode_png", "write_png", "read_png", "PALETTE",
           "PANELS", "CT_WINDOW", "MARKER_COLOURS", "TEXT_COLOUR", "ROW_LABELS"]

PathLike = Union[str, "os.PathLike[str]"]

#: Mask colours (RGB 0..255) for label values 1, 2, ... (repeating): the lesion palette.
PALETTE = tuple(lesion_color_rgb8(n) for n in range(1, len(LESION_COLORS) + 1))
#: CT display window (HU): soft tissue, level 40, width 400.
CT_WINDOW = (-160.0, 240.0)
#: Panel names and their (screen x, screen y) directions in RAS: x to the right of the screen,
#: y down the screen.
PANELS = {
    "axial": (np.array([-1.0, 0.0, 0.0]), np.array([0.0, -1.0, 0.0])),
    "coronal": (np.array([-1.0, 0.0, 0.0]), np.array([0.0, 0.0, -1.0])),
    "sagittal": (np.array([0.0, -1.0, 0.0]), np.array([0.0, 0.0, -1.0])),
}
_GAP_PIXELS = 4
_GAP_GREY = 40


# ----------------------------------------------------------------------------------------------
# PNG.

def _chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def encode_png(image: np.ndarray) -> bytes:
    """(H, W, 3) RGB or (H, W) grey uint8 -> PNG bytes (8-bit, no filter, zlib level 6)."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"image must be uint8; got {arr.dtype}")
    if arr.ndim == 2:
        colour_type = 0
    elif arr.ndim == 3 and arr.shape[2] == 3:
        colour_type = 2
    else:
        raise ValueError(f"image must be (H, W) or (H, W, 3); got shape {arr.shape}")
    height, width = arr.shape[:2]
    if height < 1 or width < 1:
        raise ValueError(f"image must not be empty; got shape {arr.shape}")
    rows = np.ascontiguousarray(arr).reshape(height, -1)
    raw = np.concatenate([np.zeros((height, 1), dtype=np.uint8), rows], axis=1).tobytes()
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header)
            + _chunk(b"IDAT", zlib.compress(raw, 6)) + _chunk(b"IEND", b""))


def write_png(path: PathLike, image: np.ndarray) -> Path:
    """Write a PNG atomically; returns the path."""
    from .io import atomic_write

    data = encode_png(image)
    with atomic_write(path) as tmp:
        Path(tmp).write_bytes(data)
    return Path(path)


def _unfilter(raw: bytes, height: int, stride: int, bpp: int) -> np.ndarray:
    out = np.zeros((height, stride), dtype=np.uint8)
    prev = np.zeros(stride, dtype=np.int32)
    pos = 0
    for y in range(height):
        kind = raw[pos]
        line = np.frombuffer(raw, dtype=np.uint8, count=stride, offset=pos + 1).astype(np.int32)
        pos += stride + 1
        if kind == 0:
            cur = line
        elif kind == 2:
            cur = (line + prev) & 0xFF
        elif kind in (1, 3, 4):
            cur = np.zeros(stride, dtype=np.int32)
            for x in range(stride):
                left = int(cur[x - bpp]) if x >= bpp else 0
                up = int(prev[x])
                if kind == 1:
                    pred = left
                elif kind == 3:
                    pred = (left + up) // 2
                else:
                    up_left = int(prev[x - bpp]) if x >= bpp else 0
                    p = left + up - up_left
                    pa, pb, pc = abs(p - left), abs(p - up), abs(p - up_left)
                    pred = left if pa <= pb and pa <= pc else (up if pb <= pc else up_left)
                cur[x] = (int(line[x]) + pred) & 0xFF
        else:
            raise ValueError(f"PNG: unknown filter type {kind} on row {y}")
        out[y] = cur
        prev = cur
    return out


def read_png(path_or_bytes: PathLike | bytes) -> np.ndarray:
    """Decode an 8-bit grey / RGB / RGBA, non-interlaced PNG (enough for our own files).

    Returns (H, W) or (H, W, C) uint8. Checks the signature and every chunk's CRC.
    """
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG file (bad signature)")
    pos, header, idat = 8, None, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        if zlib.crc32(kind + body) & 0xFFFFFFFF != crc:
            raise ValueError(f"PNG: bad CRC in chunk {kind!r}")
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        pos += 12 + length
    if header is None:
        raise ValueError("PNG: no IHDR chunk")
    width, height, depth, colour_type, _, _, interlace = header
    channels = {0: 1, 2: 3, 6: 4}.get(colour_type)
    if depth != 8 or channels is None or interlace:
        raise ValueError(f"PNG: only 8-bit non-interlaced grey/RGB/RGBA is supported "
                         f"(depth {depth}, colour type {colour_type}, interlace {interlace})")
    pixels = _unfilter(zlib.decompress(b"".join(idat)), height, width * channels, channels)
    return pixels.reshape(height, width) if channels == 1 else pixels.reshape(height, width,
                                                                                channels)


# ----------------------------------------------------------------------------------------------
# Rendering.

def _default_centre(volume: Volume, mask: np.ndarray | None) -> np.ndarray:
    """The mask voxel nearest the mask's centroid (the volume's centre without a mask)."""
    if mask is None or not np.any(mask):
        centre_ijk = (np.asarray(volume.shape_ijk, dtype=np.float64) - 1.0) / 2.0
        return volume.ijk_to_ras_points(centre_ijk)
    kji = np.argwhere(mask)
    centroid = kji.mean(axis=0)
    nearest = kji[np.argmin(((kji - centroid) ** 2).sum(axis=1))]
    return volume.array_index_to_ras(nearest)


def _window(volume: Volume, window: Sequence[float] | None, modality: str) -> tuple[float, float]:
    if window is not None:
        lo, hi = (float(v) for v in window)
        if not hi > lo:
            raise VolumeError(f"window must be (low, high) with high > low; got {window!r}")
        return lo, hi
    if resolve_modality(volume.array.min(), modality) == "CT":
        return CT_WINDOW
    sample = volume.array[::2, ::2, ::2].astype(np.float32)
    lo, hi = (float(v) for v in np.percentile(sample, (1.0, 99.5)))
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def _plane_frame(centre: np.ndarray, axes: tuple[np.ndarray, np.ndarray], pixel_mm: float,
                 bounds: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, int, int]:
    """(RAS of the panel's top-left corner, width, height) of a plane through ``centre``."""
    low, high = bounds
    sizes, starts = [], []
    for axis_vec in axes:
        extent = np.abs(axis_vec) @ (high - low)
        sizes.append(max(1, int(np.ceil(extent / pixel_mm))))
        # Start at the screen-left / top edge: the bound the axis points away from.
        starts.append(float(np.where(axis_vec < 0, high, low) @ np.abs(axis_vec)))
    base = np.asarray(centre, dtype=np.float64).copy()
    # Replace the in-plane components of the centre by the panel's starting edge.
    for axis_vec, start in zip(axes, starts):
        base = base - (np.abs(axis_vec) @ base) * np.abs(axis_vec) + start * np.abs(axis_vec)
    return base, sizes[0], sizes[1]


def _sample_plane(volume: Volume, mask: np.ndarray | None, centre: np.ndarray,
                  axes: tuple[np.ndarray, np.ndarray], pixel_mm: float,
                  bounds: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray,
                                                                  np.ndarray]:
    """Nearest-neighbour (image, labels, inside) of a plane through ``centre``.

    Pixel (row r, column c) samples the RAS point ``base + (c + 0.5) * pixel_mm * x +
    (r + 0.5) * pixel_mm * y`` (see :func:`_plane_frame`).
    """
    base, width, height = _plane_frame(centre, axes, pixel_mm, bounds)
    xs = (np.arange(width) + 0.5) * pixel_mm
    ys = (np.arange(height) + 0.5) * pixel_mm
    x_vec, y_vec = axes
    points = (base[None, None, :] + ys[:, None, None] * y_vec[None, None, :]
              + xs[None, :, None] * x_vec[None, None, :])
    ijk = np.rint(volume.ras_to_ijk_points(points.reshape(-1, 3))).astype(np.int64)
    shape_ijk = np.asarray(volume.shape_ijk)
    inside = np.all((ijk >= 0) & (ijk < shape_ijk), axis=1)
    kji = ijk_to_array_index(np.where(inside[:, None], ijk, 0))
    index = (kji[:, 0], kji[:, 1], kji[:, 2])
    values = np.where(inside, volume.array[index].astype(np.float32), 0.0)
    labels = (np.where(inside, np.asarray(mask)[index], 0) if mask is not None
              else np.zeros(len(inside), dtype=np.int64))
    return (values.reshape(height, width), labels.reshape(height, width).astype(np.int64),
            inside.reshape(height, width))


def _plane_pixel(point_ras: np.ndarray, centre: np.ndarray, axes: tuple[np.ndarray, np.ndarray],
                 pixel_mm: float, bounds: tuple[np.ndarray, np.ndarray]) -> tuple[int, int]:
    """(row, column) of the panel pixel whose footprint holds ``point_ras`` (projected)."""
    base, _, _ = _plane_frame(centre, axes, pixel_mm, bounds)
    offset = np.asarray(point_ras, dtype=np.float64) - base
    x_vec, y_vec = axes
    return (int(np.floor(float(y_vec @ offset) / pixel_mm)),
            int(np.floor(float(x_vec @ offset) / pixel_mm)))


def _contour(labels: np.ndarray) -> np.ndarray:
    """Pixels of each label whose 4-neighbour differs (the outline), as a bool image."""
    edge = np.zeros(labels.shape, dtype=bool)
    fg = labels > 0
    edge[:-1] |= fg[:-1] & (labels[:-1] != labels[1:])
    edge[1:] |= fg[1:] & (labels[1:] != labels[:-1])
    edge[:, :-1] |= fg[:, :-1] & (labels[:, :-1] != labels[:, 1:])
    edge[:, 1:] |= fg[:, 1:] & (labels[:, 1:] != labels[:, :-1])
    edge[0] |= fg[0]
    edge[-1] |= fg[-1]
    edge[:, 0] |= fg[:, 0]
    edge[:, -1] |= fg[:, -1]
    return edge


def _pixel_size(volume: Volume, bounds: tuple[np.ndarray, np.ndarray], max_pixels: int,
                min_pixels: int | None = None) -> float:
    """Square pixel size (mm): the smallest voxel size, enlarged so the longest panel side is
    at most ``max_pixels``; reduced (zoomed in) so it is at least ``min_pixels`` if given."""
    extent = float(np.max(bounds[1] - bounds[0]))
    pixel_mm = max(float(volume.spacing.min()), extent / max(int(max_pixels), 8))
    if min_pixels and extent / pixel_mm < int(min_pixels):
        pixel_mm = extent / int(min_pixels)
    return pixel_mm


def _render_panel(volume: Volume, mask: np.ndarray | None, centre: np.ndarray, name: str,
                  pixel_mm: float, bounds: tuple[np.ndarray, np.ndarray],
                  window: tuple[float, float], style: str, alpha: float) -> np.ndarray:
    """One panel: the windowed grey image with the mask tinted and/or outlined (uint8 RGB)."""
    lo, hi = window
    values, labels, inside = _sample_plane(volume, mask, centre, PANELS[name], pixel_mm, bounds)
    grey = np.clip((values - lo) / (hi - lo), 0.0, 1.0) * 255.0
    grey = np.where(inside, grey, 0.0)
    rgb = np.repeat(grey[..., None], 3, axis=2).astype(np.float32)
    fg = labels > 0
    if fg.any():
        palette = np.asarray(PALETTE, dtype=np.float32)
        colours = palette[(np.maximum(labels, 1) - 1) % len(palette)]
        if style in ("tint", "both"):
            blend = (1.0 - alpha) * rgb + alpha * colours
            rgb = np.where(fg[..., None], blend, rgb)
        if style in ("contour", "both"):
            edge = _contour(labels)
            rgb = np.where(edge[..., None], colours, rgb)
    return np.rint(rgb).astype(np.uint8)


def _check_options(style: str, alpha: float, panels: Sequence[str]) -> None:
    if style not in ("contour", "tint", "both"):
        raise ValueError(f"style must be 'contour', 'tint' or 'both'; got {style!r}")
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1]; got {alpha!r}")
    unknown = [p for p in panels if p not in PANELS]
    if unknown or not panels:
        raise ValueError(f"panels must be some of {tuple(PANELS)}; got {tuple(panels)!r}")


def _check_mask(volume: Volume, mask: np.ndarray | None, name: str = "mask"
                ) -> np.ndarray | None:
    if mask is None:
        return None
    mask = np.asarray(mask)
    if mask.shape != volume.array.shape:
        raise VolumeError(f"{name} shape {mask.shape} differs from the volume's array shape "
                          f"{volume.array.shape}")
    return mask


def render_overlay(volume: Volume, mask: np.ndarray | None = None,
                   centre_ras: Sequence[float] | None = None,
                   window: Sequence[float] | None = None, style: str = "both",
                   alpha: float = 0.35, modality: str = "auto", max_pixels: int = 384,
                   panels: Sequence[str] = ("axial", "coronal", "sagittal")
                   ) -> tuple[np.ndarray, dict[str, tuple[slice, slice]]]:
    """Side-by-side slice panels with the mask drawn on top.

    Args:
        volume: the image.
        mask: (K, J, I) labels on the volume's grid (0 background; value v gets
            ``PALETTE[(v - 1) % len(PALETTE)]``), or None.
        centre_ras: where the three planes cross; default: the mask voxel nearest its centroid.
        window: (low, high) display range; default: CT soft tissue (-160, 240) HU, else the
            1st-99.5th percentiles.
        style: "contour" (outline), "tint" (blend with ``alpha``; 1 = solid colour) or "both"
            (tint plus a solid outline).
        alpha: tint opacity in [0, 1].
        modality: "auto", "CT" or "MR" (only chooses the default window).
        max_pixels: the longest panel side; pixels grow above the smallest voxel size if needed.
        panels: which of "axial", "coronal", "sagittal", in order.

    Returns:
        (rgb (H, W, 3) uint8, {panel name: (row slice, column slice) of the panel in rgb}).
    """
    _check_options(style, alpha, panels)
    mask = _check_mask(volume, mask)
    centre = (_default_centre(volume, mask) if centre_ras is None
              else np.asarray(centre_ras, dtype=np.float64).reshape(3))
    lo, hi = _window(volume, window, modality)
    bounds = volume.ras_bounds()
    pixel_mm = _pixel_size(volume, bounds, max_pixels)
    rendered = [(name, _render_panel(volume, mask, centre, name, pixel_mm, bounds, (lo, hi),
                                     style, alpha)) for name in panels]
    height = max(img.shape[0] for _, img in rendered)
    width = sum(img.shape[1] for _, img in rendered) + _GAP_PIXELS * (len(rendered) - 1)
    canvas = np.full((height, width, 3), _GAP_GREY, dtype=np.uint8)
    places: dict[str, tuple[slice, slice]] = {}
    x = 0
    for name, img in rendered:
        top = (height - img.shape[0]) // 2
        canvas[top:top + img.shape[0], x:x + img.shape[1]] = img
        places[name] = (slice(top, top + img.shape[0]), slice(x, x + img.shape[1]))
        x += img.shape[1] + _GAP_PIXELS
    return canvas, places


def write_overlay(path: PathLike, volume: Volume, mask: np.ndarray | None = None,
                  **kwargs) -> Path:
    """Render (see :func:`render_overlay`) and write the PNG atomically; returns the path."""
    image, _ = render_overlay(volume, mask, **kwargs)
    return write_png(path, image)


# ----------------------------------------------------------------------------------------------
# The labelled comparison figure (the demo's picture).

#: Click marker colours: positive green, negative red (their shapes differ too: + and x).
MARKER_COLOURS = {True: (0, 230, 0), False: (255, 32, 32)}
#: Text and scale bar colour, and the figure's background grey.
TEXT_COLOUR = (235, 235, 235)
FIGURE_GREY = 20
#: The two rows of :func:`render_comparison`.
ROW_LABELS = ("Prediction", "Truth")
VIEW_TITLES = {"axial": "Axial", "coronal": "Coronal", "sagittal": "Sagittal"}
_SCALE_BAR_MM = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0)
_DIRECTION_LETTERS = (("L", "R"), ("P", "A"), ("I", "S"))  # (negative, positive) per RAS axis
_AUTO_FOV_MIN_MM = 40.0


@dataclass(frozen=True)
class ClickMarker:
    """Where a click was drawn: figure pixel (row, column) of the marker's centre, and the
    marker's arm length in pixels (its centre is left open; see :func:`_marker_gap`)."""

    index: int
    positive: bool
    row_label: str
    view: str
    pixel: tuple[int, int]
    arm: int


@dataclass(frozen=True)
class ComparisonLayout:
    """Where :func:`render_comparison` put things (figure pixel coordinates).

    ``panels``: (row label, view) -> (row slice, column slice). ``texts``: key -> (top, left,
    text) for "title", "dice", "row:<label>", "header:<view>", "scale", "legend+",
    "legend-", "note<i>". ``scale_bar``: (row, column slice) of one full row of the bar, whose
    length is ``scale_bar_mm / pixel_mm`` pixels (rounded).
    """

    pixel_mm: float
    text_scale: int
    centre_ras: tuple[float, float, float]
    panels: dict[tuple[str, str], tuple[slice, slice]]
    texts: dict[str, tuple[int, int, str]]
    scale_bar_mm: float
    scale_bar: tuple[int, slice]
    markers: list[ClickMarker] = field(default_factory=list)
    clicks_not_shown: int = 0


def _parse_clicks(clicks: Iterable[Any]) -> list[tuple[np.ndarray, bool]]:
    """(ras, positive) pairs, dicts with "ras"/"positive", or objects with .ras/.positive."""
    parsed = []
    for index, click in enumerate(clicks or ()):
        if isinstance(click, dict):
            ras, positive = click.get("ras"), click.get("positive", True)
        elif hasattr(click, "ras"):
            ras, positive = click.ras, getattr(click, "positive", True)
        else:
            try:
                ras, positive = click
            except (TypeError, ValueError):
                raise ValueError(f"clicks[{index}]: expected (ras, positive); got {click!r}"
                                 ) from None
        try:
            point = np.asarray(ras, dtype=np.float64).reshape(3)
        except (TypeError, ValueError):
            raise ValueError(f"clicks[{index}]: ras must be 3 numbers (RAS mm); got {ras!r}"
                             ) from None
        if not np.all(np.isfinite(point)):
            raise ValueError(f"clicks[{index}]: ras must be finite; got {ras!r}")
        parsed.append((point, bool(positive)))
    return parsed


def _dice_text(dice: float | Sequence[float] | None, clicks: int) -> str | None:
    if dice is None:
        return None
    values = [dice] if np.ndim(dice) == 0 else list(dice)
    if not values:
        return None
    final = values[-1]
    count = clicks or (len(values) if np.ndim(dice) else 0)

    def fmt(value: Any) -> str:
        return "n/a" if value is None or not np.isfinite(float(value)) else f"{float(value):.2f}"

    text = f"Dice {fmt(final)}"
    if count:
        text += f" after {count} click{'' if count == 1 else 's'}"
    if len(values) > 1:
        text += " (per click " + ", ".join(fmt(v) for v in values) + ")"
    return text


def _scale_bar_mm(narrowest_mm: float) -> float:
    """The longest round length that fits in half the narrowest panel (1 mm at least)."""
    fitting = [mm for mm in _SCALE_BAR_MM if mm <= 0.5 * narrowest_mm]
    return fitting[-1] if fitting else _SCALE_BAR_MM[0]


def _marker_gap(arm: int) -> int:
    """Blank pixels around a marker's centre, so the voxel clicked on stays visible."""
    return max(1, arm // 3)


def _marker_shape(positive: bool, arm: int) -> np.ndarray:
    """A (2 arm + 1)^2 bool stencil: '+' for positive, 'x' for negative clicks, both open at
    the centre (:func:`_marker_gap`) so a small lesion under the click is not hidden."""
    size = 2 * arm + 1
    shape = np.zeros((size, size), dtype=bool)
    if positive:
        shape[arm, :] = True
        shape[:, arm] = True
    else:
        np.fill_diagonal(shape, True)
        np.fill_diagonal(np.fliplr(shape), True)
    gap = _marker_gap(arm)
    shape[arm - gap:arm + gap + 1, arm - gap:arm + gap + 1] = False
    return shape


def _draw_marker(image: np.ndarray, row: int, col: int, positive: bool, arm: int,
                 clip: tuple[slice, slice] | None = None) -> None:
    """A click marker with a 1-pixel black outline, centred on (row, col), clipped."""
    shape = _marker_shape(positive, arm)
    outline = np.zeros((shape.shape[0] + 2, shape.shape[1] + 2), dtype=bool)
    for dr in (0, 1, 2):
        for dc in (0, 1, 2):
            outline[dr:dr + shape.shape[0], dc:dc + shape.shape[1]] |= shape
    rows, cols = clip or (slice(0, image.shape[0]), slice(0, image.shape[1]))
    for stencil, colour, half in ((outline, (0, 0, 0), arm + 1),
                                  (shape, MARKER_COLOURS[positive], arm)):
        rr, cc = np.nonzero(stencil)
        rr, cc = rr + row - half, cc + col - half
        keep = (rr >= rows.start) & (rr < rows.stop) & (cc >= cols.start) & (cc < cols.stop)
        image[rr[keep], cc[keep]] = colour


def _slice_thickness(volume: Volume, normal: np.ndarray) -> float:
    """Extent of one voxel along ``normal`` (mm): the thickness of the slice a panel shows."""
    return float(np.abs(normal @ volume.ijk_to_ras[:3, :3]).sum())


def _panel_clicks(volume: Volume, clicks: list[tuple[np.ndarray, bool]], centre: np.ndarray,
                  view: str, pixel_mm: float, bounds: tuple[np.ndarray, np.ndarray],
                  shape: tuple[int, int]) -> list[tuple[int, int, int, bool]]:
    """(click index, row, column, positive) of the clicks that lie in the panel's slice."""
    axes = PANELS[view]
    normal = np.cross(axes[0], axes[1])
    half = 0.5 * _slice_thickness(volume, normal) + 1e-6
    found = []
    for index, (ras, positive) in enumerate(clicks):
        if abs(float(normal @ (ras - centre))) > half:
            continue
        row, col = _plane_pixel(ras, centre, axes, pixel_mm, bounds)
        if 0 <= row < shape[0] and 0 <= col < shape[1]:
            found.append((index, row, col, positive))
    return found


def _auto_fov_mm(volume: Volume, masks: Sequence[np.ndarray | None],
                 clicks: list[tuple[np.ndarray, bool]], centre: np.ndarray) -> float | None:
    """A field of view where the masks and clicks fill about the middle third (40 mm at
    least); None when that is not smaller than the image (show it all)."""
    points = [ras for ras, _ in clicks]
    for mask in masks:
        if mask is None or not np.any(mask):
            continue
        kji = np.argwhere(mask)
        lo, hi = kji.min(axis=0), kji.max(axis=0)
        corners = np.array([[k, j, i] for k in (lo[0], hi[0]) for j in (lo[1], hi[1])
                            for i in (lo[2], hi[2])], dtype=np.float64)
        points.extend(volume.array_index_to_ras(corners))
    if not points:
        return None
    half = float(np.max(np.abs(np.asarray(points) - centre))) + float(volume.spacing.max())
    fov = max(_AUTO_FOV_MIN_MM, 3.0 * half)
    low, high = volume.ras_bounds()
    return None if fov >= float(np.max(high - low)) else fov


def _field_of_view(volume: Volume, centre: np.ndarray, fov_mm: Any
                   ) -> tuple[np.ndarray, np.ndarray]:
    """RAS (low, high) of what the panels show: a cube of ``fov_mm`` around the centre
    clipped to the image, or the whole image (None)."""
    low, high = volume.ras_bounds()
    if fov_mm is None:
        return low, high
    try:
        valid = not isinstance(fov_mm, (str, bool)) and bool(np.isfinite(fov_mm) and fov_mm > 0)
    except TypeError:
        valid = False
    if not valid:
        raise ValueError(f"fov_mm must be a positive number of mm, 'auto' or None; "
                         f"got {fov_mm!r}")
    fov_mm = float(fov_mm)
    low_fov, high_fov = np.maximum(low, centre - fov_mm / 2), np.minimum(high, centre + fov_mm / 2)
    if np.any(high_fov <= low_fov):
        raise ValueError(f"the {fov_mm:g} mm field of view around {centre.round(1).tolist()} "
                         "does not overlap the image")
    return low_fov, high_fov


def _orientation_letters(image: np.ndarray, view: str, place: tuple[slice, slice],
                         scale: int) -> None:
    """The patient direction at the panel's left and top edges (e.g. R and A on axial)."""
    rows, cols = place
    for axis_vec, edge in zip(PANELS[view], ("left", "top")):
        axis = int(np.argmax(np.abs(axis_vec)))
        letter = _DIRECTION_LETTERS[axis][0 if axis_vec[axis] > 0 else 1]
        height, width = text_size(letter, scale)
        if edge == "left":
            top, left = (rows.start + rows.stop - height) // 2, cols.start + scale
        else:
            top, left = rows.start + scale, (cols.start + cols.stop - width) // 2
        sub = image[rows, cols]
        draw_text(sub, letter, top - rows.start, left - cols.start, TEXT_COLOUR, scale,
                  shadow=(0, 0, 0))


def render_comparison(volume: Volume, prediction: np.ndarray, truth: np.ndarray,
                      clicks: Iterable[Any] = (), dice: float | Sequence[float] | None = None,
                      title: str | None = None, *, centre_ras: Sequence[float] | None = None,
                      window: Sequence[float] | None = None, modality: str = "auto",
                      fov_mm: float | str | None = "auto", max_pixels: int = 256,
                      min_pixels: int | None = 160, style: str = "both", alpha: float = 0.35,
                      panels: Sequence[str] = ("axial", "coronal", "sagittal"),
                      notes: Sequence[str] = (), orientation_letters: bool = True,
                      return_layout: bool = False
                      ) -> np.ndarray | tuple[np.ndarray, ComparisonLayout]:
    """The demo's labelled figure: prediction and truth through the same three planes.

    Rows "Prediction" and "Truth" (labelled on the left), one column per view (titled on top),
    the Dice line (e.g. "Dice 0.91 after 3 clicks") under ``title``, and a footer with a
    legend, a millimetre scale bar (the longest of 1, 2, 5, 10, 20, 50, ... mm that fits in
    half the narrowest panel) and ``notes`` (one line each). Orientation is radiological as in
    :func:`render_overlay`; letters at each panel's left and top edge name the patient
    direction (R/L, A/P, S/I).

    Click markers: a click is drawn on a panel when it lies in the slice that panel shows,
    i.e. within half a voxel of the panel's plane (the voxel's extent projected onto the
    plane's normal), at the pixel its in-plane position falls in; clicks elsewhere are not
    projected onto the panel (``clicks_not_shown`` in the layout counts those drawn nowhere).
    Positive clicks are green '+', negative clicks red 'x', both with a black outline and
    open at the centre so the clicked voxel stays visible. The
    planes cross at ``centre_ras``, by default the first click, else the truth's (or the
    prediction's) most central voxel, so the first click shows on every panel.

    Args:
        volume: the image; ``prediction`` and ``truth``: (K, J, I) label arrays on its grid.
        clicks: ``(ras, positive)`` pairs in RAS mm (dicts with "ras"/"positive" and objects
            with ``.ras``/``.positive`` work too).
        dice: the final Dice, or Dice per click (the last is the headline).
        title: first line of the figure, e.g. the case name.
        fov_mm: show only a cube of this size (mm) around the centre, clipped to the image;
            "auto" (default): large enough that the masks and clicks fill about its middle
            third, at least 40 mm, so a small lesion is not a few pixels; None: the whole
            image.
        max_pixels / min_pixels: the longest panel side is at most ``max_pixels`` and, by
            zooming in (nearest neighbour), at least ``min_pixels`` (None: never zoom in).
        window, modality, style, alpha, panels: as in :func:`render_overlay`.
        return_layout: also return a :class:`ComparisonLayout` (where everything was drawn).

    Returns:
        The (H, W, 3) uint8 RGB figure, or (figure, layout) with ``return_layout``.
    """
    _check_options(style, alpha, panels)
    prediction = _check_mask(volume, prediction, "prediction")
    truth = _check_mask(volume, truth, "truth")
    parsed = _parse_clicks(clicks)
    centre = _figure_centre(volume, centre_ras, parsed, prediction, truth)
    if isinstance(fov_mm, str) and fov_mm == "auto":
        fov_mm = _auto_fov_mm(volume, (prediction, truth), parsed, centre)
    bounds = _field_of_view(volume, centre, fov_mm)
    pixel_mm = _pixel_size(volume, bounds, max_pixels, min_pixels)
    lo, hi = _window(volume, window, modality)
    images = {(row, view): _render_panel(volume, mask, centre, view, pixel_mm, bounds,
                                         (lo, hi), style, alpha)
              for row, mask in zip(ROW_LABELS, (prediction, truth)) for view in panels}
    hits = {view: _panel_clicks(volume, parsed, centre, view, pixel_mm, bounds,
                                images[(ROW_LABELS[0], view)].shape[:2]) for view in panels}
    shown = {index for found in hits.values() for index, *_ in found}
    figure, layout = _compose_comparison(
        images, panels, pixel_mm, centre, title, _dice_text(dice, len(parsed)), notes)
    markers = []
    longest = max(max(img.shape[:2]) for img in images.values())
    arm = int(min(12, max(4, longest // 24)))
    for (row_label, view), place in layout.panels.items():
        if orientation_letters:
            _orientation_letters(figure, view, place, layout.text_scale)
        for index, row, col, positive in hits[view]:
            pixel = (place[0].start + row, place[1].start + col)
            _draw_marker(figure, pixel[0], pixel[1], positive, arm, clip=place)
            markers.append(ClickMarker(index, positive, row_label, view, pixel, arm))
    layout = replace(layout, markers=markers, clicks_not_shown=len(parsed) - len(shown))
    return (figure, layout) if return_layout else figure


def _figure_centre(volume: Volume, centre_ras: Sequence[float] | None, parsed: list,
                   prediction: np.ndarray | None, truth: np.ndarray | None) -> np.ndarray:
    """Where the planes cross: ``centre_ras``, else the first click, else the truth's (or the
    prediction's) most central voxel."""
    if centre_ras is not None:
        return np.asarray(centre_ras, dtype=np.float64).reshape(3)
    if parsed:
        return parsed[0][0].copy()
    return _default_centre(volume, truth if truth is not None and np.any(truth) else prediction)


def _draw_scale_bar(figure: np.ndarray, top: int, left: int, pixels: int, scale: int) -> None:
    """A bar exactly ``pixels`` wide (scale + 1 rows) with end ticks rising above it."""
    thickness = scale + 1
    figure[top:top + thickness, left:left + pixels] = TEXT_COLOUR
    tick = slice(top - 2 * scale, top + thickness)
    figure[tick, left] = TEXT_COLOUR
    figure[tick, left + pixels - 1] = TEXT_COLOUR


def _compose_comparison(images: dict[tuple[str, str], np.ndarray], panels: Sequence[str],
                        pixel_mm: float, centre: np.ndarray, title: str | None,
                        dice_text: str | None, notes: Sequence[str]
                        ) -> tuple[np.ndarray, ComparisonLayout]:
    """Lay out the panels, texts, legend and scale bar on a dark canvas."""
    panel_widths = [images[(ROW_LABELS[0], v)].shape[1] for v in panels]
    row_height = max(img.shape[0] for img in images.values())
    longest = max(max(img.shape[:2]) for img in images.values())
    scale = 1 if longest < 150 else (2 if longest < 500 else 3)
    # A column is as wide as its panel or its title; the panel is centred in it.
    widths = [max(w, text_size(VIEW_TITLES.get(v, v), scale)[1])
              for v, w in zip(panels, panel_widths)]
    margin, gap, pitch = 4 * scale, 4 * scale, (LINE_HEIGHT + 2) * scale
    bar_mm = _scale_bar_mm(min(panel_widths) * pixel_mm)
    bar_px = max(1, int(round(bar_mm / pixel_mm)))
    scale_text = f"{bar_mm:g} mm"
    legend = (("legend+", "positive click", True), ("legend-", "negative click", False))
    marker_arm = max(2, (CAP_HEIGHT * scale) // 2)
    legend_w = sum(2 * marker_arm + 1 + 3 * scale + text_size(t, scale)[1] + 3 * gap
                   for _, t, _ in legend)
    footer_w = legend_w + 2 * gap + bar_px + 4 * scale + text_size(scale_text, scale)[1]
    label_w = max(text_size(r, scale)[1] for r in ROW_LABELS)
    grid_left = margin + label_w + gap
    lines = [(k, t) for k, t in (("title", title), ("dice", dice_text)) if t]
    text_widths = [text_size(t, scale)[1] for _, t in lines] + [
        text_size(n, scale)[1] for n in notes] + [footer_w]
    width = max(grid_left + sum(widths) + gap * (len(widths) - 1),
                margin + max(text_widths)) + margin
    height = (margin + pitch * (len(lines) + 1) + len(ROW_LABELS) * (row_height + gap)
              + pitch * (1 + len(notes)) + margin)
    figure = np.full((height, width, 3), FIGURE_GREY, dtype=np.uint8)
    texts: dict[str, tuple[int, int, str]] = {}

    def put(key: str, text: str, top: int, left: int) -> None:
        draw_text(figure, text, top, left, TEXT_COLOUR, scale)
        texts[key] = (top, left, text)

    y = margin
    for key, text in lines:
        put(key, text, y, margin)
        y += pitch
    lefts, x = [], grid_left
    for view, w in zip(panels, widths):
        lefts.append(x)
        name = VIEW_TITLES.get(view, view)
        put(f"header:{view}", name, y, x + (w - text_size(name, scale)[1]) // 2)
        x += w + gap
    y += pitch
    places: dict[tuple[str, str], tuple[slice, slice]] = {}
    for row_label in ROW_LABELS:
        put(f"row:{row_label}", row_label, y + (row_height - CAP_HEIGHT * scale) // 2, margin)
        for view, column_left, w in zip(panels, lefts, widths):
            img = images[(row_label, view)]
            top = y + (row_height - img.shape[0]) // 2
            left = column_left + (w - img.shape[1]) // 2
            figure[top:top + img.shape[0], left:left + img.shape[1]] = img
            places[(row_label, view)] = (slice(top, top + img.shape[0]),
                                         slice(left, left + img.shape[1]))
        y += row_height + gap
    x = margin
    for key, text, positive in legend:
        _draw_marker(figure, y + (CAP_HEIGHT * scale) // 2, x + marker_arm, positive,
                     marker_arm)
        x += 2 * marker_arm + 1 + 3 * scale
        put(key, text, y, x)
        x += text_size(text, scale)[1] + 3 * gap
    label_left = width - margin - text_size(scale_text, scale)[1]
    bar_left = label_left - 4 * scale - bar_px
    bar_top = y + (CAP_HEIGHT * scale) // 2
    _draw_scale_bar(figure, bar_top, bar_left, bar_px, scale)
    put("scale", scale_text, y, label_left)
    y += pitch
    for index, note in enumerate(notes):
        put(f"note{index}", note, y, margin)
        y += pitch
    layout = ComparisonLayout(pixel_mm, scale, tuple(float(v) for v in centre), places, texts,
                              bar_mm, (bar_top, slice(bar_left, bar_left + bar_px)))
    return figure, layout


def write_comparison(path: PathLike, volume: Volume, prediction: np.ndarray,
                     truth: np.ndarray, **kwargs) -> Path:
    """Render (see :func:`render_comparison`) and write the PNG atomically; returns the path."""
    kwargs.pop("return_layout", None)
    return write_png(path, render_comparison(volume, prediction, truth, **kwargs))
