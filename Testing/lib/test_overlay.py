"""overlay.py: the PNG codec, panel geometry and orientation, and where the mask colour lands."""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest

from SGPSAMLib.errors import VolumeError
from SGPSAMLib.geometry import Volume
from SGPSAMLib.overlay import (
    PALETTE,
    encode_png,
    read_png,
    render_overlay,
    write_overlay,
    write_png,
)


def test_png_round_trip_and_header(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (7, 11, 3), dtype=np.uint8)
    data = encode_png(rgb)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    assert (width, height, depth, colour) == (11, 7, 8, 2)
    assert np.array_equal(read_png(data), rgb)
    grey = rng.integers(0, 256, (5, 3), dtype=np.uint8)
    path = write_png(tmp_path / "g.png", grey)
    assert np.array_equal(read_png(path), grey)
    with pytest.raises(ValueError, match="uint8"):
        encode_png(rgb.astype(np.float32))
    with pytest.raises(ValueError, match="CRC"):
        read_png(data[:30] + bytes([data[30] ^ 1]) + data[31:])


def test_png_interoperates_with_pillow():
    image_module = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(1)
    rgb = (rng.integers(0, 4, (20, 30, 3)) * 60).astype(np.uint8)  # compressible: filtered rows
    assert np.array_equal(np.asarray(image_module.open(io.BytesIO(encode_png(rgb)))), rgb)
    buffer = io.BytesIO()
    image_module.fromarray(rgb).save(buffer, format="PNG", optimize=True)
    assert np.array_equal(read_png(buffer.getvalue()), rgb)


def test_png_filters_are_decoded():
    # Rows written with filters Sub (1), Up (2), Average (3) and Paeth (4) by hand.
    rows = np.array([[10, 20, 30, 40, 50, 60], [15, 25, 35, 45, 55, 65],
                     [200, 100, 50, 25, 12, 6], [1, 2, 3, 4, 5, 6]], dtype=np.int32)
    bpp = 3
    raw = bytearray()
    prev = np.zeros(6, dtype=np.int32)
    for kind, row in zip((1, 2, 3, 4), rows):
        out = []
        for x in range(6):
            left = row[x - bpp] if x >= bpp else 0
            up = prev[x]
            up_left = prev[x - bpp] if x >= bpp else 0
            if kind == 1:
                pred = left
            elif kind == 2:
                pred = up
            elif kind == 3:
                pred = (left + up) // 2
            else:
                p = left + up - up_left
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - up_left)
                pred = left if pa <= pb and pa <= pc else (up if pb <= pc else up_left)
            out.append((row[x] - pred) & 0xFF)
        raw += bytes([kind, *out])
        prev = row
    def chunk(kind, body):
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 4, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(bytes(raw))) + chunk(b"IEND", b""))
    assert np.array_equal(read_png(png), rows.reshape(4, 2, 3).astype(np.uint8))


def _phantom(shape=(10, 24, 20)):
    kk, jj, ii = np.indices(shape)
    array = (ii * 3 + jj * 2 + kk).astype(np.float32)  # distinct grey values everywhere
    mask = np.zeros(shape, dtype=np.uint8)
    mask[3:7, 5:12, 4:9] = 1
    mask[5, 6, 4] = 0  # make the axial section non-symmetric
    return array, mask


def test_mask_colour_exactly_where_the_mask_is():
    array, mask = _phantom()
    volume = Volume(array, np.eye(4), "phantom")
    centre = (6.0, 8.0, 5.0)  # i, j, k = RAS here (identity matrix)
    image, places = render_overlay(volume, mask, centre_ras=centre, style="tint", alpha=1.0,
                                   window=(0, 100))
    rows, cols = places["axial"]
    axial = image[rows, cols]
    # Identity geometry, 1 mm pixels: column c is R = I - 1 - c, row r is A = J - 1 - r.
    expected = mask[5, ::-1, ::-1].astype(bool)
    assert axial.shape[:2] == expected.shape
    coloured = np.all(axial == np.array(PALETTE[0], dtype=np.uint8), axis=2)
    assert np.array_equal(coloured, expected)
    assert np.all(axial[~expected, 0] == axial[~expected, 1])  # grey elsewhere
    grey = np.clip(array[5, ::-1, ::-1], 0, 100) / 100 * 255
    assert np.array_equal(axial[~expected, 0], np.rint(grey[~expected]).astype(np.uint8))
    # Contour style: colour only on the outline, which lies inside the mask.
    image2, places2 = render_overlay(volume, mask, centre_ras=centre, style="contour",
                                     window=(0, 100))
    outline = np.all(image2[places2["axial"]] == np.array(PALETTE[0], np.uint8), axis=2)
    assert outline.any() and not np.any(outline & ~expected)
    assert outline.sum() < expected.sum()


def test_panels_have_isotropic_pixels_and_follow_physical_space():
    array, mask = _phantom()
    m = np.diag([0.8, 0.8, 3.0, 1.0])
    volume = Volume(array, m)
    image, places = render_overlay(volume, mask, window=(0, 100))
    # Pixels of 0.8 mm: the coronal panel is 10 slices x 3 mm = 30 mm = 38 pixels high.
    rows, cols = places["coronal"]
    assert rows.stop - rows.start == 38 and cols.stop - cols.start == 20
    assert image.dtype == np.uint8 and image.shape[2] == 3
    # The same physical image stored with permuted and flipped axes renders identically.
    perm = np.ascontiguousarray(np.flip(array.transpose(1, 0, 2), axis=2))
    perm_mask = np.ascontiguousarray(np.flip(mask.transpose(1, 0, 2), axis=2))
    q = np.zeros((4, 4))
    q[0, 0], q[0, 3] = -1.0, array.shape[2] - 1   # new i = flipped old i
    q[2, 1], q[1, 2], q[3, 3] = 1.0, 1.0, 1.0     # new j = old k, new k = old j
    moved = Volume(perm, m @ q)
    centre = volume.ijk_to_ras_points([6, 8, 5])
    a, _ = render_overlay(volume, mask, centre_ras=centre, window=(0, 100))
    b, _ = render_overlay(moved, perm_mask, centre_ras=centre, window=(0, 100))
    assert np.array_equal(a, b)


def test_write_overlay_and_validation(tmp_path):
    array, mask = _phantom()
    volume = Volume(array - 1000.0, np.eye(4))  # CT-like: the default window is soft tissue
    path = write_overlay(tmp_path / "o.png", volume, mask)
    image = read_png(path)
    assert image.ndim == 3 and image.shape[2] == 3 and image.shape[1] > 3 * 10
    assert not list(tmp_path.glob(".*tmp*"))
    with pytest.raises(VolumeError, match="mask shape"):
        render_overlay(volume, mask[:5])
    with pytest.raises(ValueError, match="style"):
        render_overlay(volume, mask, style="glow")
    with pytest.raises(ValueError, match="panels"):
        render_overlay(volume, mask, panels=("oblique",))
