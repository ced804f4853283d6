"""A built-in 5x7 pixel font (with 2 descender rows) to label figures without any font library.

Why: the demo's overlay PNG must carry its labels ("Prediction", "Truth", view names, Dice,
scale bar) while the library stays free of Pillow and matplotlib. Each glyph is 5 columns by
9 rows: capitals and digits use rows 0-6 (the baseline is row 6), descenders (g j p q y , ;)
reach rows 7-8. Characters advance by 6 columns (one blank column between glyphs) and lines by
10 rows; ``scale`` enlarges every font pixel to a ``scale`` x ``scale`` block. Characters
without a glyph are drawn as a hollow box, so a missing glyph is visible rather than silent.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["GLYPH_WIDTH", "GLYPH_HEIGHT", "CAP_HEIGHT", "ADVANCE", "LINE_HEIGHT", "glyph",
           "has_glyph", "text_size", "text_mask", "draw_text"]

GLYPH_WIDTH = 5
GLYPH_HEIGHT = 9
CAP_HEIGHT = 7
ADVANCE = GLYPH_WIDTH + 1
LINE_HEIGHT = GLYPH_HEIGHT + 1

# Rows top to bottom; '#' is ink. Glyphs given with 7 rows get two blank descender rows.
_GLYPHS: dict[str, tuple[str, ...]] = {
    " ": (".....",) * 7,
    "0": (".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###."),
    "1": ("..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."),
    "2": (".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"),
    "3": ("#####", "...#.", "..#..", "...#.", "....#", "#...#", ".###."),
    "4": ("...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."),
    "5": ("#####", "#....", "####.", "....#", "....#", "#...#", ".###."),
    "6": ("..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###."),
    "7": ("#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."),
    "8": (".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."),
    "9": (".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##.."),
    "A": (".###.", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"),
    "B": ("####.", "#...#", "#...#", "####.", "#...#", "#...#", "####."),
    "C": (".###.", "#...#", "#....", "#....", "#....", "#...#", ".###."),
    "D": ("###..", "#..#.", "#...#", "#...#", "#...#", "#..#.", "###.."),
    "E": ("#####", "#....", "#....", "####.", "#....", "#....", "#####"),
    "F": ("#####", "#....", "#....", "####.", "#....", "#....", "#...."),
    "G": (".###.", "#...#", "#....", "#.###", "#...#", "#...#", ".####"),
    "H": ("#...#", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"),
    "I": (".###.", "..#..", "..#..", "..#..", "..#..", "..#..", ".###."),
    "J": ("..###", "...#.", "...#.", "...#.", "...#.", "#..#.", ".##.."),
    "K": ("#...#", "#..#.", "#.#..", "##...", "#.#..", "#..#.", "#...#"),
    "L": ("#....", "#....", "#....", "#....", "#....", "#....", "#####"),
    "M": ("#...#", "##.##", "#.#.#", "#.#.#", "#...#", "#...#", "#...#"),
    "N": ("#...#", "#...#", "##..#", "#.#.#", "#..##", "#...#", "#...#"),
    "O": (".###.", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."),
    "P": ("####.", "#...#", "#...#", "####.", "#....", "#....", "#...."),
    "Q": (".###.", "#...#", "#...#", "#...#", "#.#.#", "#..#.", ".##.#"),
    "R": ("####.", "#...#", "#...#", "####.", "#.#..", "#..#.", "#...#"),
    "S": (".####", "#....", "#....", ".###.", "....#", "....#", "####."),
    "T": ("#####", "..#..", "..#..", "..#..", "..#..", "..#..", "..#.."),
    "U": ("#...#", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."),
    "V": ("#...#", "#...#", "#...#", "#...#", "#...#", ".#.#.", "..#.."),
    "W": ("#...#", "#...#", "#...#", "#.#.#", "#.#.#", "#.#.#", ".#.#."),
    "X": ("#...#", "#...#", ".#.#.", "..#..", ".#.#.", "#...#", "#...#"),
    "Y": ("#...#", "#...#", ".#.#.", "..#..", "..#..", "..#..", "..#.."),
    "Z": ("#####", "....#", "...#.", "..#..", ".#...", "#....", "#####"),
    "a": (".....", ".....", ".###.", "....#", ".####", "#...#", ".####"),
    "b": ("#....", "#....", "#.##.", "##..#", "#...#", "#...#", "####."),
    "c": (".....", ".....", ".###.", "#....", "#....", "#...#", ".###."),
    "d": ("....#", "....#", ".##.#", "#..##", "#...#", "#...#", ".####"),
    "e": (".....", ".....", ".###.", "#...#", "#####", "#....", ".###."),
    "f": ("..##.", ".#..#", ".#...", "###..", ".#...", ".#...", ".#..."),
    "g": (".....", ".....", ".####", "#...#", "#...#", "#...#", ".####", "....#", ".###."),
    "h": ("#....", "#....", "#.##.", "##..#", "#...#", "#...#", "#...#"),
    "i": ("..#..", ".....", ".##..", "..#..", "..#..", "..#..", ".###."),
    "j": ("...#.", ".....", "..##.", "...#.", "...#.", "...#.", "...#.", "#..#.", ".##.."),
    "k": ("#....", "#....", "#..#.", "#.#..", "##...", "#.#..", "#..#."),
    "l": (".##..", "..#..", "..#..", "..#..", "..#..", "..#..", ".###."),
    "m": (".....", ".....", "##.#.", "#.#.#", "#.#.#", "#.#.#", "#.#.#"),
    "n": (".....", ".....", "#.##.", "##..#", "#...#", "#...#", "#...#"),
    "o": (".....", ".....", ".###.", "#...#", "#...#", "#...#", ".###."),
    "p": (".....", ".....", "####.", "#...#", "#...#", "#...#", "####.", "#....", "#...."),
    "q": (".....", ".....", ".####", "#...#", "#...#", "#...#", ".####", "....#", "....#"),
    "r": (".....", ".....", "#.##.", "##..#", "#....", "#....", "#...."),
    "s": (".....", ".....", ".####", "#....", ".###.", "....#", "####."),
    "t": (".#...", ".#...", "###..", ".#...", ".#...", ".#..#", "..##."),
    "u": (".....", ".....", "#...#", "#...#", "#...#", "#..##", ".##.#"),
    "v": (".....", ".....", "#...#", "#...#", "#...#", ".#.#.", "..#.."),
    "w": (".....", ".....", "#...#", "#...#", "#.#.#", "#.#.#", ".#.#."),
    "x": (".....", ".....", "#...#", ".#.#.", "..#..", ".#.#.", "#...#"),
    "y": (".....", ".....", "#...#", "#...#", "#...#", "#...#", ".####", "....#", ".###."),
    "z": (".....", ".....", "#####", "...#.", "..#..", ".#...", "#####"),
    ".": (".....", ".....", ".....", ".....", ".....", ".##..", ".##.."),
    ",": (".....", ".....", ".....", ".....", ".....", ".##..", ".##..", "..#..", ".#..."),
    ":": (".....", ".##..", ".##..", ".....", ".##..", ".##..", "....."),
    ";": (".....", ".##..", ".##..", ".....", ".##..", ".##..", "..#..", ".#..."),
    "-": (".....", ".....", ".....", "#####", ".....", ".....", "....."),
    "+": (".....", "..#..", "..#..", "#####", "..#..", "..#..", "....."),
    "=": (".....", ".....", "#####", ".....", "#####", ".....", "....."),
    "<": ("...#.", "..#..", ".#...", "#....", ".#...", "..#..", "...#."),
    ">": (".#...", "..#..", "...#.", "....#", "...#.", "..#..", ".#..."),
    "/": (".....", "....#", "...#.", "..#..", ".#...", "#....", "....."),
    "(": ("...#.", "..#..", ".#...", ".#...", ".#...", "..#..", "...#."),
    ")": (".#...", "..#..", "...#.", "...#.", "...#.", "..#..", ".#..."),
    "[": (".###.", ".#...", ".#...", ".#...", ".#...", ".#...", ".###."),
    "]": (".###.", "...#.", "...#.", "...#.", "...#.", "...#.", ".###."),
    "%": ("##...", "##..#", "...#.", "..#..", ".#...", "#..##", "...##"),
    "!": ("..#..", "..#..", "..#..", "..#..", "..#..", ".....", "..#.."),
    "?": (".###.", "#...#", "....#", "...#.", "..#..", ".....", "..#.."),
    "'": ("..#..", "..#..", ".#...", ".....", ".....", ".....", "....."),
    '"': (".#.#.", ".#.#.", ".....", ".....", ".....", ".....", "....."),
    "#": (".#.#.", ".#.#.", "#####", ".#.#.", "#####", ".#.#.", ".#.#."),
    "*": (".....", "..#..", "#.#.#", ".###.", "#.#.#", "..#..", "....."),
    "_": (".....", ".....", ".....", ".....", ".....", ".....", ".....", "#####", "....."),
    "|": ("..#..", "..#..", "..#..", "..#..", "..#..", "..#..", "..#.."),
}
_MISSING = ("#####", "#...#", "#...#", "#...#", "#...#", "#...#", "#####")


def _bitmap(rows: Sequence[str]) -> np.ndarray:
    padded = list(rows) + ["." * GLYPH_WIDTH] * (GLYPH_HEIGHT - len(rows))
    bitmap = np.array([[c == "#" for c in row] for row in padded], dtype=bool)
    if bitmap.shape != (GLYPH_HEIGHT, GLYPH_WIDTH):
        raise ValueError(f"glyph rows must be {GLYPH_WIDTH} wide and at most {GLYPH_HEIGHT} "
                         f"tall; got {bitmap.shape}")
    bitmap.setflags(write=False)
    return bitmap


_BITMAPS = {char: _bitmap(rows) for char, rows in _GLYPHS.items()}
_MISSING_BITMAP = _bitmap(_MISSING)


def has_glyph(char: str) -> bool:
    """Whether ``char`` has its own glyph (others draw as a hollow box)."""
    return char in _BITMAPS


def glyph(char: str) -> np.ndarray:
    """The (9, 5) bool bitmap of one character (read-only; a hollow box if unknown)."""
    if len(char) != 1:
        raise ValueError(f"glyph() takes one character; got {char!r}")
    return _BITMAPS.get(char, _MISSING_BITMAP)


def _check_scale(scale: int) -> int:
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 1:
        raise ValueError(f"scale must be an integer >= 1; got {scale!r}")
    return int(scale)


def text_size(text: str, scale: int = 1) -> tuple[int, int]:
    """(height, width) in pixels of ``text`` (lines split at newlines) at ``scale``."""
    scale = _check_scale(scale)
    lines = str(text).split("\n")
    width = max(len(line) for line in lines) * ADVANCE - 1
    height = len(lines) * LINE_HEIGHT - 1
    return height * scale, max(width, 0) * scale


def text_mask(text: str, scale: int = 1) -> np.ndarray:
    """A bool image of ``text``: True where ink is, the size :func:`text_size` gives."""
    scale = _check_scale(scale)
    lines = str(text).split("\n")
    height, width = text_size(text, 1)
    mask = np.zeros((height, width), dtype=bool)
    for row, line in enumerate(lines):
        top = row * LINE_HEIGHT
        for col, char in enumerate(line):
            left = col * ADVANCE
            mask[top:top + GLYPH_HEIGHT, left:left + GLYPH_WIDTH] = glyph(char)
    if scale > 1:
        mask = np.repeat(np.repeat(mask, scale, axis=0), scale, axis=1)
    return mask


def draw_text(image: np.ndarray, text: str, top: int, left: int,
              colour: Sequence[int] = (255, 255, 255), scale: int = 1,
              shadow: Sequence[int] | None = None) -> tuple[slice, slice]:
    """Paint ``text`` into an (H, W, 3) uint8 ``image`` in place, its top-left at (top, left).

    Ink outside the image is clipped. ``shadow``: a colour painted one font pixel down and to
    the right of the ink first, so text stays readable on a busy image. Returns the (rows,
    columns) the text box covers, clipped to the image.
    """
    mask = text_mask(text, scale)
    if shadow is not None:
        shifted = np.zeros((mask.shape[0] + scale, mask.shape[1] + scale), dtype=bool)
        shifted[scale:, scale:] = mask
        _paint(image, shifted, top, left, shadow)
    return _paint(image, mask, top, left, colour)


def _paint(image: np.ndarray, mask: np.ndarray, top: int, left: int,
           colour: Sequence[int]) -> tuple[slice, slice]:
    height, width = image.shape[:2]
    r0, c0 = max(int(top), 0), max(int(left), 0)
    r1 = min(int(top) + mask.shape[0], height)
    c1 = min(int(left) + mask.shape[1], width)
    if r1 <= r0 or c1 <= c0:
        return slice(r0, r0), slice(c0, c0)
    part = mask[r0 - int(top):r1 - int(top), c0 - int(left):c1 - int(left)]
    region = image[r0:r1, c0:c1]
    region[part] = np.asarray(colour, dtype=np.uint8)
    return slice(r0, r1), slice(c0, c1)
