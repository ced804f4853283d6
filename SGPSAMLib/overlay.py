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
from collections.abc import Sequence
from pathlib import Path
from typing import Union

import numpy as np

from .errors import VolumeError
from .geometry import Volume, array_index_to_ijk, ijk_to_array_index
from .region import resolve_modality, volume_ras_bounds

__all__ = ["render_overlay", "write_overlay", "encode_png", "write_png", "read_png",
           "PALETTE", "PANELS", "CT_WINDOW"]

PathLike = Union[str, "os.PathLike[str]"]

#: Mask colours (RGB) for label values 1, 2, ... (repeating).
PALETTE = ((255, 64, 64), (64, 200, 255), (255, 200, 0), (120, 255, 120), (255, 100, 255))
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
    return volume.ijk_to_ras_points(array_index_to_ijk(nearest.astype(np.float64)))


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


def _sample_plane(volume: Volume, mask: np.ndarray | None, centre: np.ndarray,
                  axes: tuple[np.ndarray, np.ndarray], pixel_mm: float,
                  bounds: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray,
                                                                  np.ndarray]:
    """Nearest-neighbour (image, labels, inside) of a plane through ``centre``."""
    low, high = bounds
    sizes, starts = [], []
    for axis_vec in axes:
        extent = np.abs(axis_vec) @ (high - low)
        sizes.append(max(1, int(np.ceil(extent / pixel_mm))))
        # Start at the screen-left / top edge: the bound the axis points away from.
        starts.append(float(np.where(axis_vec < 0, high, low) @ np.abs(axis_vec)))
    width, height = sizes
    xs = (np.arange(width) + 0.5) * pixel_mm
    ys = (np.arange(height) + 0.5) * pixel_mm
    x_vec, y_vec = axes
    base = centre.copy()
    # Replace the in-plane components of the centre by the panel's starting edge.
    for axis_vec, start in zip(axes, starts):
        base = base - (np.abs(axis_vec) @ base) * np.abs(axis_vec) + start * np.abs(axis_vec)
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
    if style not in ("contour", "tint", "both"):
        raise ValueError(f"style must be 'contour', 'tint' or 'both'; got {style!r}")
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1]; got {alpha!r}")
    unknown = [p for p in panels if p not in PANELS]
    if unknown or not panels:
        raise ValueError(f"panels must be some of {tuple(PANELS)}; got {tuple(panels)!r}")
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != volume.array.shape:
            raise VolumeError(f"mask shape {mask.shape} differs from the volume's array shape "
                              f"{volume.array.shape}")
    centre = (_default_centre(volume, mask) if centre_ras is None
              else np.asarray(centre_ras, dtype=np.float64).reshape(3))
    lo, hi = _window(volume, window, modality)
    bounds = volume_ras_bounds(volume)
    extent = float(np.max(bounds[1] - bounds[0]))
    pixel_mm = max(float(volume.spacing.min()), extent / max(int(max_pixels), 8))
    palette = np.asarray(PALETTE, dtype=np.float32)
    rendered = []
    for name in panels:
        values, labels, inside = _sample_plane(volume, mask, centre, PANELS[name], pixel_mm,
                                               bounds)
        grey = np.clip((values - lo) / (hi - lo), 0.0, 1.0) * 255.0
        grey = np.where(inside, grey, 0.0)
        rgb = np.repeat(grey[..., None], 3, axis=2).astype(np.float32)
        fg = labels > 0
        if fg.any():
            colours = palette[(np.maximum(labels, 1) - 1) % len(palette)]
            if style in ("tint", "both"):
                blend = (1.0 - alpha) * rgb + alpha * colours
                rgb = np.where(fg[..., None], blend, rgb)
            if style in ("contour", "both"):
                edge = _contour(labels)
                rgb = np.where(edge[..., None], colours, rgb)
        rendered.append((name, np.rint(rgb).astype(np.uint8)))
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
