"""Seed points for batch segmentation: Slicer markups files (``.mrk.json``) and one CSV.

Every reader returns :class:`Seed` objects in **RAS millimetres** (the project-wide convention),
whatever the file declares, with a sign (positive = "lesion here") and the name of the lesion
the point belongs to. Each lesion later becomes its own label value / segment.

Slicer markups (``.mrk.json``, any markups type with control points, normally a point list):

- **Coordinates.** Each markups node declares ``"coordinateSystem": "LPS"`` (what Slicer writes
  today) or ``"RAS"`` (older files); a node without the key is LPS, as in Slicer's own reader.
  ``"coordinateUnits"`` must be millimetres when present. Control points whose
  ``positionStatus`` is not ``"defined"`` (``undefined``: placement not finished, ``preview``)
  are skipped.
- **Lesions.** One markups node is one lesion, named after the node's ``"name"`` (or
  ``lesion_<n>`` when it has none; the batch names it after ``<tag>`` for a file called
  ``<case>.<tag>.mrk.json``); two nodes with the same name stay two lesions (``F``, ``F_2``).
  A point can be moved to another lesion with a ``lesion=<name>`` (or ``lesion:<name>``)
  token in its label or description, so a single point list can hold several lesions.
  Lesions are numbered in order of first appearance.
- **Sign.** A point is negative ("not lesion") when its label or description starts or ends
  with ``-`` (``-``, ``bg-``, ``-edge``) or contains one of the words ``neg``, ``negative``,
  ``background``, ``bg``, ``exclude``, ``outside``; otherwise positive (``+``, ``pos``,
  ``positive``, ``foreground``, ``fg`` say so explicitly). Slicer's default labels ``F-1``,
  ``F-2`` ... are positive. Label and description saying opposite things is an error.
- **Shared background list.** A node whose *name* reads negative (``background``, ``negative``,
  ``bg``, ``neg``, a trailing ``-``) holds negative points for every lesion of the case (the
  DeepGrow/DeepEdit "foreground / background" list habit); they are added after each lesion's
  own points.

Text encodings (both kinds of file): UTF-8 with or without a byte-order mark, UTF-16 with a
byte-order mark (Excel's "Unicode text"), and, for files that are not valid UTF-8, Windows-1252
(what Excel writes as plain "CSV" on Western-European Windows, e.g. ``lésion``), with a warning
naming the file. A file that is none of these (binary, or bytes undefined in Windows-1252) is
refused with its file, line and a hint to save it as "CSV UTF-8".

CSV (one file for a whole cohort): a header row naming at least ``case, x, y, z`` and
optionally ``label``, ``lesion`` and ``space``; other columns are ignored, ``#`` lines and blank
lines are skipped. ``label`` is ``+``/``-``, ``1``/``0``, ``positive``/``negative``,
``pos``/``neg``, ``fg``/``bg``, ``foreground``/``background`` or ``yes``/``no`` (empty = positive);
``lesion`` names the lesion (empty = ``1``); ``space`` is ``RAS`` or ``LPS`` per row (default: the
``space`` argument, RAS). Any bad row stops the read with an error naming the file and line.
"""
from __future__ import annotations

import codecs
import csv
import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np

from .errors import PromptError, SGPSAMError
from .geometry import lps_to_ras
from .options import COORDINATE_SPACES

__all__ = ["Seed", "SeedLesion", "SeedFileError", "read_markups", "read_seed_csv",
           "group_lesions", "parse_sign", "seeds_fingerprint", "CSV_COLUMNS", "SPACES"]

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

SPACES = COORDINATE_SPACES
CSV_COLUMNS = ("case", "x", "y", "z", "label", "lesion", "space")
_REQUIRED_CSV = ("case", "x", "y", "z")

_NEGATIVE_WORDS = frozenset({"neg", "negative", "background", "bg", "exclude", "outside"})
_POSITIVE_WORDS = frozenset({"pos", "positive", "foreground", "fg"})
_CSV_SIGNS = {
    "": True, "+": True, "1": True, "positive": True, "pos": True, "fg": True,
    "foreground": True, "yes": True, "true": True, "p": True,
    "-": False, "0": False, "negative": False, "neg": False, "bg": False,
    "background": False, "no": False, "false": False, "n": False,
}
_LESION_TOKEN = re.compile(r"lesion\s*[:=]\s*([^\s,;|]+)", re.IGNORECASE)
_WORD = re.compile(r"[a-z]+")
_MM_UNITS = ("mm", "millimeter", "millimetre", "millimeters", "millimetres")


class SeedFileError(SGPSAMError, ValueError):
    """A seed file (markups or CSV) is unreadable or holds an invalid entry."""


_MAX_SEED_FILE_BYTES = 256 * 1024 * 1024
_UTF8_HINT = ("save it as UTF-8 (Excel: File > Save As > 'CSV UTF-8 (Comma delimited)'; any "
              "text editor: encoding UTF-8)")


def _decode_seed_file(path: Path, what: str) -> str:
    """The text of a seed file in the encodings users really produce (module docstring)."""
    try:
        size = path.stat().st_size
        if size > _MAX_SEED_FILE_BYTES:
            raise SeedFileError(f"{path}: {size / 2**20:.0f} MiB is far too large for a {what} "
                                f"(limit {_MAX_SEED_FILE_BYTES // 2**20} MiB)")
        raw = path.read_bytes()
    except OSError as exc:
        raise SeedFileError(f"{path}: cannot read {what} ({exc.strerror or exc})") from exc
    for bom, codec in ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"),
                       (codecs.BOM_UTF16_BE, "utf-16-be")):
        if raw.startswith(bom):
            return _strict_decode(raw[len(bom):], codec, path, what)
    if b"\0" in raw:
        line = raw[: raw.index(b"\0")].count(b"\n") + 1
        raise SeedFileError(f"{path}:{line}: holds NUL bytes, so it is not a text {what} "
                            f"(binary, or UTF-16 without a byte-order mark); {_UTF8_HINT}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        first = exc
    try:
        text = raw.decode("cp1252")
    except UnicodeDecodeError:
        raise _encoding_error(raw, first.start, path, what) from None
    log.warning("%s is not UTF-8 (byte 0x%02x on line %d); read it as Windows-1252 (cp1252), "
                "the encoding of Excel's plain 'CSV' on Western-European Windows", path,
                raw[first.start], raw[: first.start].count(b"\n") + 1)
    return text


def _strict_decode(raw: bytes, codec: str, path: Path, what: str) -> str:
    try:
        return raw.decode(codec)
    except UnicodeDecodeError as exc:
        raise _encoding_error(raw, exc.start, path, what, codec) from None


def _encoding_error(raw: bytes, position: int, path: Path, what: str,
                    codec: str = "UTF-8 or Windows-1252") -> SeedFileError:
    line = raw[:position].count(b"\n") + 1
    column = position - (raw.rfind(b"\n", 0, position) + 1) + 1
    return SeedFileError(f"{path}:{line}: byte 0x{raw[position]:02x} at column {column} is not "
                         f"valid {codec} text; {_UTF8_HINT}")


@dataclass(frozen=True, eq=False)
class Seed:
    """One click: RAS mm, its sign and the lesion it belongs to.

    Attributes:
        ras: (3,) float64 RAS millimetres.
        positive: True for "lesion here", False for "not lesion".
        lesion: name of the lesion ("" for a shared negative that applies to every lesion).
        source: where it came from, for messages ("file.mrk.json point 'F-1'", "seeds.csv:12").
    """

    ras: np.ndarray
    positive: bool = True
    lesion: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        ras = np.array(self.ras, dtype=np.float64).reshape(-1)
        if ras.shape != (3,) or not np.all(np.isfinite(ras)):
            raise PromptError(f"{self.source or 'seed'}: position must be 3 finite numbers "
                              f"(mm), got {self.ras!r}")
        ras.setflags(write=False)
        object.__setattr__(self, "ras", ras)
        object.__setattr__(self, "positive", bool(self.positive))
        object.__setattr__(self, "lesion", str(self.lesion))


@dataclass
class SeedLesion:
    """The seeds of one lesion in click order; ``label_value`` is 1..N in lesion order.

    (Not ``cases.LabelLesion``, a lesion of a label map, nor the Slicer module's
    ``EditedLesion``.)"""

    name: str
    label_value: int
    seeds: list[Seed] = field(default_factory=list)

    @property
    def has_positive(self) -> bool:
        return any(s.positive for s in self.seeds)


def parse_sign(*texts: str) -> bool | None:
    """The sign a label/description states: True, False, or None when it says nothing.

    Raises:
        ValueError: the texts state both signs (e.g. label "+" and description "negative").
    """
    found: set[bool] = set()
    for text in texts:
        t = (text or "").strip().lower()
        if not t:
            continue
        t_wo_lesion = _LESION_TOKEN.sub(" ", t).strip()
        if t_wo_lesion.startswith("-") or t_wo_lesion.endswith("-"):
            found.add(False)
        if t_wo_lesion.startswith("+") or t_wo_lesion.endswith("+"):
            found.add(True)
        words = set(_WORD.findall(t_wo_lesion))
        if words & _NEGATIVE_WORDS:
            found.add(False)
        if words & _POSITIVE_WORDS:
            found.add(True)
    if len(found) > 1:
        raise ValueError(f"states both positive and negative: {' / '.join(texts)!r}")
    return found.pop() if found else None


def _lesion_token(*texts: str) -> str | None:
    for text in texts:
        match = _LESION_TOKEN.search(text or "")
        if match:
            return match.group(1)
    return None


def _units_are_mm(units: Any) -> bool:
    if units is None:
        return True
    if isinstance(units, dict):  # coded entry {"codeValue": "mm", "codingSchemeDesignator": ...}
        units = units.get("codeValue", units.get("CodeValue"))
    if isinstance(units, list) and units:  # ["mm", "UCUM", "millimeter"]
        units = units[0]
    return isinstance(units, str) and units.strip().lower() in _MM_UNITS


def read_markups(path: PathLike, lesion_name: str | None = None,
                 taken: set[str] | None = None) -> list[Seed]:
    """Seeds (RAS mm) from a Slicer markups file, in file order (conventions: module docstring).

    Args:
        path: a ``.mrk.json`` file.
        lesion_name: name for the lesion of every node (``<name>_<n>`` when the file has several
            lesion nodes) instead of the node names; ``lesion=`` tokens still win.
        taken: lesion names already used by other files of the same case; a node whose name
            is taken gets ``_2``, ``_3`` ... appended (one node is one lesion). Updated in place.

    Raises:
        SeedFileError: unreadable JSON, no ``markups`` list, a bad coordinate system or unit, a
            point without a 3-number position, or a point whose label and description disagree.
    """
    p = Path(path)
    nodes = _markups_nodes(p)
    taken = set() if taken is None else taken
    lesion_nodes = [node for node in nodes if isinstance(node, dict)
                    and _node_sign(node) is not False]
    seeds: list[Seed] = []
    for n, node in enumerate(nodes, start=1):
        where = f"{p} markups[{n - 1}]"
        system, points = _checked_node(node, where)
        shared_negative = _node_sign(node) is False
        lesion_default = _default_lesion(node, n, lesion_name, len(lesion_nodes), taken)
        used_default = False
        for m, point in enumerate(points, start=1):
            seed = _point_seed(point, m, where, p.name, system, shared_negative,
                               lesion_default, taken)
            if seed is not None:
                used_default = used_default or seed.lesion == lesion_default
                seeds.append(seed)
        if used_default:
            taken.add(lesion_default)
    return seeds


def _markups_nodes(p: Path) -> list:
    """The ``markups`` list of a markups file (decoded as seed files are)."""
    text = _decode_seed_file(p, "markups file")
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SeedFileError(f"{p}: not valid JSON (line {exc.lineno}: {exc.msg}); expected a "
                            "Slicer markups file (.mrk.json)") from exc
    nodes = document.get("markups") if isinstance(document, dict) else None
    if not isinstance(nodes, list):
        raise SeedFileError(f"{p}: no 'markups' list; expected a Slicer markups file (.mrk.json) "
                            "as written by Slicer's Markups module")
    return nodes


def _checked_node(node: Any, where: str) -> tuple[str, list]:
    """(coordinate system, control points) of a markups node, or SeedFileError."""
    if not isinstance(node, dict):
        raise SeedFileError(f"{where}: expected an object, got {type(node).__name__}")
    system = str(node.get("coordinateSystem", "LPS")).strip().upper()
    if system not in SPACES:
        raise SeedFileError(f"{where}: coordinateSystem {node.get('coordinateSystem')!r}; "
                            "expected 'LPS' or 'RAS'")
    if not _units_are_mm(node.get("coordinateUnits")):
        raise SeedFileError(f"{where}: coordinateUnits {node.get('coordinateUnits')!r}; "
                            "only millimetres (mm) are supported")
    points = node.get("controlPoints", [])
    if not isinstance(points, list):
        raise SeedFileError(f"{where}: 'controlPoints' must be a list")
    return system, points


def _default_lesion(node: dict, n: int, lesion_name: str | None, lesion_nodes: int,
                    taken: set[str]) -> str:
    """The lesion of node ``n``'s points: ``lesion_name`` (numbered when the file has several
    lesion nodes) or the node's name, made unique among the names ``taken``."""
    if lesion_name:
        base = lesion_name if lesion_nodes <= 1 else f"{lesion_name}_{n}"
    else:
        base = str(node.get("name") or "").strip() or f"lesion_{n}"
    lesion_default = base
    suffix = 2
    while lesion_default in taken:
        lesion_default, suffix = f"{base}_{suffix}", suffix + 1
    return lesion_default


def _point_seed(point: Any, m: int, where: str, file_name: str, system: str,
                shared_negative: bool, lesion_default: str, taken: set[str]) -> Seed | None:
    """Control point ``m`` of a node as a seed (None: not placed), or SeedFileError."""
    if not isinstance(point, dict):
        raise SeedFileError(f"{where} control point {m}: expected an object")
    label = str(point.get("label") or "")
    description = str(point.get("description") or "")
    source = f"{file_name} point {label or m!r}" if label else f"{file_name} point {m}"
    status = str(point.get("positionStatus", "defined")).strip().lower()
    if status != "defined":
        log.info("%s: skipped (positionStatus %s)", source, status)
        return None
    position = point.get("position")
    try:
        xyz = np.array(position, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        xyz = np.empty(0)
    if xyz.shape != (3,) or not np.all(np.isfinite(xyz)):
        raise SeedFileError(f"{where} control point {label or m}: position {position!r}; "
                            "expected 3 finite numbers")
    try:
        sign = parse_sign(label, description)
    except ValueError as exc:
        raise SeedFileError(f"{where} control point {label or m}: label/description "
                            f"{exc}") from None
    token = _lesion_token(label, description)
    if shared_negative and token is None:
        positive = False if sign is None else sign
        lesion = "" if not positive else lesion_default
    else:
        positive = True if sign is None else sign
        lesion = token or lesion_default
    if token:
        taken.add(token)
    ras = lps_to_ras(xyz) if system == "LPS" else xyz
    return Seed(ras, positive, lesion, source)


def _node_sign(node: dict) -> bool | None:
    """The sign a markups node's name states (a "background" list holds shared negatives)."""
    name = str(node.get("name") or "").strip()
    try:
        return parse_sign(name) if name else None
    except ValueError:
        return None


def _csv_float(value: str, column: str, where: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SeedFileError(f"{where}: column {column!r} = {value!r} is not a number") from None
    if not math.isfinite(number):
        raise SeedFileError(f"{where}: column {column!r} = {value!r} is not finite")
    return number


def read_seed_csv(path: PathLike, space: str = "RAS") -> dict[str, list[Seed]]:
    """Seeds per case from one CSV (columns: module docstring), in file order.

    Args:
        path: the CSV file (comma separated; ``;`` or tab also detected).
        space: coordinate system of rows without a ``space`` column value: "RAS" or "LPS".

    Returns:
        case name -> seeds (RAS mm), cases in order of first appearance.

    Raises:
        SeedFileError: missing file, no header, a missing required column, or a bad row (the
            message names the file and line).
    """
    p = Path(path)
    default_space = str(space).strip().upper()
    if default_space not in SPACES:
        raise SeedFileError(f"seed CSV space {space!r}; expected 'RAS' or 'LPS'")
    text = _decode_seed_file(p, "seed CSV")
    lines = [(n, line) for n, line in enumerate(text.splitlines(), start=1)
             if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        raise SeedFileError(f"{p}: empty; expected a header row 'case,x,y,z,label,lesion' and "
                            "one row per seed point")
    try:
        dialect = csv.Sniffer().sniff(lines[0][1], delimiters=",;\t")
        delimiter = dialect.delimiter
    except csv.Error:
        delimiter = ","
    rows = list(csv.reader([line for _, line in lines], delimiter=delimiter))
    header = [h.strip().lower() for h in rows[0]]
    missing = [c for c in _REQUIRED_CSV if c not in header]
    if missing:
        raise SeedFileError(f"{p}:{lines[0][0]}: header {rows[0]!r} lacks column(s) "
                            f"{', '.join(missing)}; expected 'case,x,y,z,label,lesion' "
                            "(label, lesion and space optional)")
    index = {name: header.index(name) for name in CSV_COLUMNS if name in header}
    result: dict[str, list[Seed]] = {}
    for (line_no, _), row in zip(lines[1:], rows[1:]):
        where = f"{p}:{line_no}"
        if len(row) < len(header):
            row = row + [""] * (len(header) - len(row))

        def cell(name: str, row: list[str] = row) -> str:
            return row[index[name]].strip() if name in index else ""

        case = cell("case")
        if not case:
            raise SeedFileError(f"{where}: empty 'case'")
        xyz = np.array([_csv_float(cell(c), c, where) for c in ("x", "y", "z")])
        sign_text = cell("label").lower()
        if sign_text not in _CSV_SIGNS:
            raise SeedFileError(f"{where}: label {cell('label')!r}; expected + or -, 1 or 0, "
                                "positive or negative (empty = positive)")
        row_space = (cell("space") or default_space).upper()
        if row_space not in SPACES:
            raise SeedFileError(f"{where}: space {cell('space')!r}; expected RAS or LPS")
        ras = lps_to_ras(xyz) if row_space == "LPS" else xyz
        lesion = cell("lesion") or "1"
        result.setdefault(case, []).append(
            Seed(ras, _CSV_SIGNS[sign_text], lesion, f"{p.name}:{line_no}"))
    return result


def group_lesions(seeds: Iterable[Seed]) -> list[SeedLesion]:
    """Seeds -> lesions in order of first appearance, label values 1..N.

    Seeds with an empty lesion name are shared negatives: they are appended to every lesion.
    """
    lesions: dict[str, SeedLesion] = {}
    shared: list[Seed] = []
    for seed in seeds:
        if not seed.lesion:
            shared.append(seed)
            continue
        if seed.lesion not in lesions:
            lesions[seed.lesion] = SeedLesion(seed.lesion, len(lesions) + 1)
        lesions[seed.lesion].seeds.append(seed)
    for lesion in lesions.values():
        lesion.seeds.extend(shared)
    return list(lesions.values())


def seeds_fingerprint(seeds: Sequence[Seed]) -> str:
    """Short hash of positions, signs and lesions (resume redoes a case whose seeds changed)."""
    digest = hashlib.sha256()
    for seed in seeds:
        digest.update(np.round(seed.ras, 4).tobytes())
        digest.update(b"+" if seed.positive else b"-")
        digest.update(seed.lesion.encode("utf-8") + b"\0")
    return digest.hexdigest()[:16]
