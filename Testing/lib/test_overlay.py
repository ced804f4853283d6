"""overlay.py: the PNG codec, panel geometry and orientation, where the mask colour lands, the
bitmap font and the labelled comparison figure (text, scale bar, click markers)."""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest

from SGPSAMLib.errors import VolumeError
from SGPSAMLib.geometry import Volume
from SGPSAMLib.overlay import (
    MARKER_COLOURS,
    PALETTE,
    ROW_LABELS,
    TEXT_COLOUR,
    encode_png,
    read_png,
    render_comparison,
    render_overlay,
    write_comparison,
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


# ----------------------------------------------------------------------------------------------
# The bitmap font and the labelled comparison figure.

def test_font_glyphs_sizes_scaling_and_clipping():
    from SGPSAMLib import bitmap_font as font

    for char in "AZaz09.,:-+/()%<>=":
        assert font.has_glyph(char)
        assert font.glyph(char).shape == (font.GLYPH_HEIGHT, font.GLYPH_WIDTH)
        assert font.glyph(char).any() or char == " "
    # Distinct glyphs for the characters a figure needs (no two letters drawn alike).
    chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    assert len({font.glyph(c).tobytes() for c in chars}) == len(chars)
    assert not font.has_glyph("~") and font.glyph("~").sum() == 20  # hollow box
    # text_mask: glyphs side by side with one blank column, each pixel a 3x3 block at scale 3.
    mask = font.text_mask("Ag", scale=3)
    assert mask.shape == font.text_size("Ag", 3) == (27, (2 * 6 - 1) * 3)
    assert np.array_equal(mask[:, :15], np.kron(font.glyph("A"), np.ones((3, 3), bool)))
    assert not mask[:, 15:18].any()
    assert np.array_equal(mask[:, 18:], np.kron(font.glyph("g"), np.ones((3, 3), bool)))
    assert font.glyph("g")[7:].any() and not font.glyph("A")[7:].any()  # descender rows
    assert font.text_size("ab\ncde") == (19, 17)
    # draw_text paints exactly the ink, clipped at the border; shadow goes down-right.
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    rows, cols = font.draw_text(image, "T", -2, 5, (9, 8, 7))
    assert (rows, cols) == (slice(0, 7), slice(5, 8))
    assert np.array_equal(image[..., 0] == 9, np.pad(font.glyph("T")[2:9, :3], ((0, 1), (5, 0))))
    shadowed = np.zeros((12, 8, 3), dtype=np.uint8)
    font.draw_text(shadowed, "T", 0, 0, (255, 255, 255), shadow=(1, 1, 1))
    assert shadowed[1, 3, 0] == 1 and shadowed[0, 0, 0] == 255  # shadow right of the T's bar
    with pytest.raises(ValueError, match="scale"):
        font.text_mask("x", scale=0)
    with pytest.raises(ValueError, match="one character"):
        font.glyph("ab")


def _box_case(matrix=None, shape=(12, 40, 36)):
    """A bright box lesion in a gradient; returns (volume, truth, prediction)."""
    array, _ = _phantom(shape)
    truth = np.zeros(shape, dtype=np.uint8)
    truth[4:9, 14:24, 12:22] = 1
    prediction = np.zeros(shape, dtype=np.uint8)
    prediction[4:9, 16:26, 12:22] = 1
    return Volume(array, np.eye(4) if matrix is None else matrix, "box"), truth, prediction


def _text_matches(figure, top, left, text, scale):
    from SGPSAMLib.bitmap_font import text_mask

    mask = text_mask(text, scale)
    region = figure[top:top + mask.shape[0], left:left + mask.shape[1]]
    ink = np.all(region == np.array(TEXT_COLOUR, np.uint8), axis=2)
    return region.shape[:2] == mask.shape and np.array_equal(ink, mask)


def test_comparison_has_two_labelled_rows_view_headers_and_dice():
    from SGPSAMLib.bitmap_font import glyph

    volume, truth, prediction = _box_case()
    clicks = [(volume.ijk_to_ras_points([16, 18, 6]), True)]
    figure, layout = render_comparison(volume, prediction, truth, clicks=clicks, dice=0.9134,
                                       title="box case", window=(0, 150), max_pixels=384,
                                       min_pixels=None, fov_mm=None,
                                       orientation_letters=False, return_layout=True)
    assert figure.dtype == np.uint8 and figure.ndim == 3 and figure.shape[2] == 3
    assert set(layout.panels) == {(r, v) for r in ROW_LABELS
                                  for v in ("axial", "coronal", "sagittal")}
    scale = layout.text_scale
    for key, text in (("row:Prediction", "Prediction"), ("row:Truth", "Truth"),
                      ("header:axial", "Axial"), ("header:coronal", "Coronal"),
                      ("header:sagittal", "Sagittal"), ("title", "box case"),
                      ("dice", "Dice 0.91 after 1 click")):
        top, left, drawn = layout.texts[key]
        assert drawn == text and _text_matches(figure, top, left, text, scale), key
    # The first glyph of the row label, pixel by pixel against the font's bitmap.
    top, left, _ = layout.texts["row:Prediction"]
    p = np.all(figure[top:top + 9 * scale, left:left + 5 * scale] == TEXT_COLOUR, axis=2)
    assert np.array_equal(p, np.kron(glyph("P"), np.ones((scale, scale), bool)))
    # Prediction row above the truth row, labels beside their rows, headers above columns.
    pred_rows, pred_cols = layout.panels[("Prediction", "axial")]
    truth_rows, truth_cols = layout.panels[("Truth", "axial")]
    assert pred_rows.stop <= truth_rows.start and pred_cols == truth_cols
    assert pred_rows.start <= layout.texts["row:Prediction"][0] < pred_rows.stop
    assert truth_rows.start <= layout.texts["row:Truth"][0] < truth_rows.stop
    assert layout.texts["header:axial"][0] < pred_rows.start
    assert pred_cols.start <= layout.texts["header:axial"][1] < pred_cols.stop
    # Without markers or letters, each panel is exactly render_overlay's panel of that mask.
    for row_label, mask in (("Prediction", prediction), ("Truth", truth)):
        plain, places = render_overlay(volume, mask, centre_ras=clicks[0][0], window=(0, 150))
        figure2, layout2 = render_comparison(volume, prediction, truth, centre_ras=clicks[0][0],
                                             window=(0, 150), max_pixels=384, min_pixels=None,
                                             fov_mm=None, orientation_letters=False,
                                             return_layout=True)
        for view in ("axial", "coronal", "sagittal"):
            assert np.array_equal(figure2[layout2.panels[(row_label, view)]], plain[places[view]])
    # The two rows differ exactly where prediction and truth differ.
    assert not np.array_equal(figure[layout.panels[("Prediction", "axial")]],
                              figure[layout.panels[("Truth", "axial")]])
    # Per-click Dice and no clicks.
    _, layout3 = render_comparison(volume, prediction, truth, dice=[0.5, 0.75, None],
                                   clicks=clicks * 3, return_layout=True)
    assert layout3.texts["dice"][2] == "Dice n/a after 3 clicks (per click 0.50, 0.75, n/a)"


def _bar_length(figure, layout):
    row, cols = layout.scale_bar
    line = np.all(figure[row] == np.array(TEXT_COLOUR, np.uint8), axis=1)
    assert line[cols].all() and not line[cols.start - 1] and not line[cols.stop]
    return cols.stop - cols.start


@pytest.mark.parametrize("spacing, fov, expected_pixel_mm", [
    ((1.0, 1.0, 1.0), None, 1.0), ((0.8, 0.8, 3.0), None, 0.8), ((0.5, 0.5, 2.0), 10.0, 10.0 / 160),
])
def test_scale_bar_length_is_its_mm_over_the_pixel_size(spacing, fov, expected_pixel_mm):
    volume, truth, prediction = _box_case(np.diag([*spacing, 1.0]))
    figure, layout = render_comparison(volume, prediction, truth, fov_mm=fov, max_pixels=384,
                                       min_pixels=160 if fov else None, return_layout=True)
    assert layout.pixel_mm == pytest.approx(expected_pixel_mm)
    pixels = _bar_length(figure, layout)
    assert pixels == round(layout.scale_bar_mm / expected_pixel_mm)
    assert abs(pixels * expected_pixel_mm - layout.scale_bar_mm) <= expected_pixel_mm / 2
    # A round length that fits in half of the narrowest panel, labelled with its length.
    narrowest = min(c.stop - c.start for _, c in layout.panels.values()) * layout.pixel_mm
    assert layout.scale_bar_mm in (1, 2, 5, 10, 20, 50) and layout.scale_bar_mm <= narrowest / 2
    top, left, text = layout.texts["scale"]
    assert text == f"{layout.scale_bar_mm:g} mm"
    assert _text_matches(figure, top, left, text, layout.text_scale)
    assert left > layout.scale_bar[1].stop  # the label sits right of the bar


def _marker_pixels_ok(figure, marker):
    r, c = marker.pixel
    colour = np.array(MARKER_COLOURS[marker.positive], np.uint8)
    arm = marker.arm
    if marker.positive:
        arms = [(r, c + arm), (r, c - arm), (r + arm, c), (r - arm, c), (r, c + arm - 1)]
    else:
        arms = [(r + arm, c + arm), (r - arm, c - arm), (r + arm, c - arm), (r - arm, c + arm),
                (r + arm - 1, c + arm - 1)]
    painted = all(np.array_equal(figure[p], colour) for p in arms)
    open_centre = not np.array_equal(figure[r, c], colour)
    return painted and open_centre


def _expected_pixel(volume, ijk, view):
    """Panel (row, col) of a voxel on an axis-aligned diagonal volume (pixel = finest spacing).

    Worked out from the radiological convention, independently of overlay.py: axial columns
    run from patient right (high R) to left, rows from anterior (high A) down; coronal and
    sagittal rows run from superior down; sagittal columns from anterior to posterior.
    """
    spacing = volume.spacing
    ni, nj, nk = volume.shape_ijk
    i, j, k = ijk
    right = (ni - 0.5 - i) * spacing[0]      # mm from the image's right edge
    anterior = (nj - 0.5 - j) * spacing[1]   # mm from its anterior edge
    superior = (nk - 0.5 - k) * spacing[2]   # mm from its superior edge
    row_mm, col_mm = {"axial": (anterior, right), "coronal": (superior, right),
                      "sagittal": (superior, anterior)}[view]
    pixel = float(spacing.min())
    return int(np.floor(row_mm / pixel)), int(np.floor(col_mm / pixel))


def test_click_markers_land_on_the_clicked_pixel_in_the_slices_they_lie_in():
    m = np.diag([0.8, 0.8, 3.0, 1.0])
    volume, truth, prediction = _box_case(m)
    centre_ijk = (16, 18, 6)
    in_all = volume.ijk_to_ras_points(centre_ijk)
    off_axial = volume.ijk_to_ras_points([20, 18, 7])   # 3 mm above: coronal panel only
    nowhere = volume.ijk_to_ras_points([20, 22, 8])
    clicks = [(in_all, True), (off_axial, False), {"ras": nowhere, "positive": True}]
    figure, layout = render_comparison(volume, prediction, truth, clicks=clicks,
                                       max_pixels=384, min_pixels=None, window=(0, 150),
                                       return_layout=True)
    assert layout.pixel_mm == pytest.approx(0.8)
    assert layout.centre_ras == pytest.approx(tuple(in_all))  # planes cross at click 1
    drawn = {(mk.index, mk.row_label, mk.view) for mk in layout.markers}
    assert drawn == {(0, r, v) for r in ROW_LABELS for v in ("axial", "coronal", "sagittal")} | {
        (1, r, "coronal") for r in ROW_LABELS}
    assert layout.clicks_not_shown == 1
    for marker in layout.markers:
        rows, cols = layout.panels[(marker.row_label, marker.view)]
        ijk = centre_ijk if marker.index == 0 else (20, 18, 7)
        expected = _expected_pixel(volume, ijk, marker.view)
        assert (marker.pixel[0] - rows.start, marker.pixel[1] - cols.start) == expected
        assert _marker_pixels_ok(figure, marker), marker
    # Positive and negative differ in colour and in shape (+ versus x).
    plus = next(mk for mk in layout.markers if mk.positive)
    r, c = plus.pixel
    assert not np.array_equal(figure[r + plus.arm, c + plus.arm], MARKER_COLOURS[True])
    assert MARKER_COLOURS[True][1] > 200 and MARKER_COLOURS[False][0] > 200
    # The same physical image stored with permuted and flipped axes draws the same figure.
    perm = np.ascontiguousarray(np.flip(volume.array.transpose(1, 0, 2), axis=2))
    q = np.zeros((4, 4))
    q[0, 0], q[0, 3] = -1.0, volume.array.shape[2] - 1
    q[2, 1], q[1, 2], q[3, 3] = 1.0, 1.0, 1.0
    moved = Volume(perm, m @ q)

    def move(mask):
        return np.ascontiguousarray(np.flip(mask.transpose(1, 0, 2), axis=2))

    figure_b, layout_b = render_comparison(moved, move(prediction), move(truth), clicks=clicks,
                                           max_pixels=384, min_pixels=None, window=(0, 150),
                                           return_layout=True)
    assert layout_b.markers == layout.markers
    assert np.array_equal(figure_b, figure)


def test_click_markers_on_an_oblique_volume():
    # Rotated 30 degrees about S: the click's voxel centre is still marked where it lies.
    angle = np.deg2rad(30.0)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0],
                    [0, 0, 1]])
    m = np.eye(4)
    m[:3, :3] = rot @ np.diag([1.0, 1.0, 2.0])
    volume, truth, prediction = _box_case(m)
    ras = volume.ijk_to_ras_points([16, 18, 6])
    figure, layout = render_comparison(volume, prediction, truth, clicks=[(ras, False)],
                                       min_pixels=None, fov_mm=None, return_layout=True)
    assert len(layout.markers) == 6 and layout.clicks_not_shown == 0
    high = np.max(volume.ijk_to_ras_points(
        [[i, j, k] for i in (-0.5, 35.5) for j in (-0.5, 39.5) for k in (-0.5, 11.5)]), axis=0)
    axial = next(mk for mk in layout.markers if mk.view == "axial")
    rows, cols = layout.panels[(axial.row_label, "axial")]
    assert axial.pixel[1] - cols.start == int((high[0] - ras[0]) // layout.pixel_mm)
    assert axial.pixel[0] - rows.start == int((high[1] - ras[1]) // layout.pixel_mm)
    assert _marker_pixels_ok(figure, axial)


def test_auto_field_of_view_zooms_on_a_small_lesion():
    shape = (40, 160, 160)  # 160 x 160 x 80 mm
    array = np.random.default_rng(0).normal(100, 5, shape).astype(np.float32)
    volume = Volume(array, np.diag([1.0, 1.0, 2.0, 1.0]))
    truth = np.zeros(shape, dtype=np.uint8)
    truth[19:22, 60:66, 90:96] = 1  # 6 x 6 x 6 mm
    array[truth > 0] = 300
    _, auto = render_comparison(volume, truth, truth, return_layout=True)
    _, whole = render_comparison(volume, truth, truth, fov_mm=None, return_layout=True)
    # The lesion's half-extent from its centre voxel (~3.5 mm + 2 mm voxel) x 3 is under the
    # 40 mm minimum: a 40 mm field, drawn at least 160 px wide.
    assert auto.pixel_mm == pytest.approx(40.0 / 160)
    assert whole.pixel_mm == pytest.approx(1.0)  # the voxel size: 160 px panels
    axial = auto.panels[("Truth", "axial")]
    assert axial[1].stop - axial[1].start == 160
    # A lesion filling most of the image: the whole image.
    big = np.zeros(shape, dtype=np.uint8)
    big[5:35, 20:140, 20:140] = 1
    _, layout = render_comparison(volume, big, big, return_layout=True)
    assert layout.pixel_mm == pytest.approx(whole.pixel_mm)
    with pytest.raises(ValueError, match="fov_mm"):
        render_comparison(volume, truth, truth, fov_mm="wide")


def test_comparison_validation_and_writer(tmp_path):
    volume, truth, prediction = _box_case()
    with pytest.raises(VolumeError, match="prediction shape"):
        render_comparison(volume, prediction[:3], truth)
    with pytest.raises(VolumeError, match="truth shape"):
        render_comparison(volume, prediction, truth[:, :3])
    with pytest.raises(ValueError, match=r"clicks\[1\]"):
        render_comparison(volume, prediction, truth, clicks=[((1, 2, 3), True), (1, True)])
    with pytest.raises(ValueError, match="fov_mm"):
        render_comparison(volume, prediction, truth, fov_mm=-5)
    with pytest.raises(ValueError, match="does not overlap"):
        render_comparison(volume, prediction, truth, centre_ras=(500, 500, 500), fov_mm=10)
    path = write_comparison(tmp_path / "c.png", volume, prediction, truth, dice=0.5,
                            notes=["Tint: mask, outline: its border"])
    image = read_png(path)
    assert np.array_equal(image, render_comparison(volume, prediction, truth, dice=0.5,
                                                   notes=["Tint: mask, outline: its border"]))
    assert not list(tmp_path.glob(".*tmp*"))
