"""The cohort of a batch run: which cases a folder holds, how shards split them, where each
result goes, and each case's seed points (markups files next to it, or its rows of one CSV).

:mod:`SGPSAMLib.batch` runs the cohort; the rules are in its module docstring (Cases, Seeds,
Shards). Nothing here reads an image or touches a model.
"""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from .errors import SGPSAMError, VolumeIOError
from .options import IMAGE_SUFFIXES, OUTPUT_FORMATS, look_up_option
from .seeds import Seed, read_markups, read_seed_csv

__all__ = ["CaseInput", "SeedSource", "find_volumes", "parse_shard", "check_shard",
           "shard_cases", "output_path", "image_suffix", "strip_image_suffix", "markups_files",
           "match_csv_cases", "MARKUPS_SUFFIX"]

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

MARKUPS_SUFFIX = ".mrk.json"
_DICOM_PROBE_FILES = 3


@dataclass(frozen=True)
class CaseInput:
    """One case: its id (relative path without suffix, '/'-separated) and image file/folder."""

    case_id: str
    path: Path
    dicom: bool = False


# ------------------------------------------------------------------------------------------------
# Finding cases and splitting them.

def image_suffix(name: str) -> str | None:
    """The image format suffix a file name ends with (``.nii.gz``, ...), or None."""
    lower = name.lower()
    for suffix in IMAGE_SUFFIXES:
        if lower.endswith(suffix):
            return suffix
    return None


def _is_dicom_folder(folder: Path) -> bool:
    """A folder holding ``*.dcm`` files or files with the DICOM preamble marker (cheap probe)."""
    probed = 0
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return False
    for entry in entries:
        if entry.name.startswith(".") or not entry.is_file():
            continue
        if entry.name.lower().endswith(".dcm"):
            return True
        if image_suffix(entry.name) or entry.name.lower().endswith((".json", ".csv", ".txt")):
            continue
        if probed >= _DICOM_PROBE_FILES:
            continue
        probed += 1
        try:
            with open(entry.path, "rb") as f:
                head = f.read(132)
        except OSError:
            continue
        if len(head) == 132 and head[128:132] == b"DICM":
            return True
    return False


def find_volumes(folder: PathLike, recursive: bool = False,
                 exclude: Iterable[PathLike] = ()) -> list[CaseInput]:
    """Cases in ``folder``: image files and DICOM series folders, sorted by case id.

    Args:
        folder: the input folder.
        recursive: search sub-folders at any depth (otherwise only the folder itself and its
            DICOM series sub-folders).
        exclude: folders to leave out (e.g. the output folder when it lies inside the input).

    Raises:
        VolumeIOError: ``folder`` is not a folder, or two inputs map to the same case id
            (``a.nii.gz`` and ``a.nrrd``).
    """
    root = Path(folder)
    if not root.is_dir():
        raise VolumeIOError(f"input {root}: not a folder; expected a folder of volumes "
                            "(NIfTI, NRRD, MHA files or DICOM series folders)")
    excluded = {Path(p).resolve() for p in exclude}
    cases: list[CaseInput] = []

    def case_id(path: Path, suffix: str) -> str:
        rel = path.relative_to(root).as_posix()
        return rel[: len(rel) - len(suffix)] if suffix else rel

    if _is_dicom_folder(root):  # the input itself is one DICOM series
        return [CaseInput(root.resolve().name, root, True)]
    for current, dirs, files in os.walk(root):
        here = Path(current)
        kept = []
        for name in sorted(dirs):
            sub = here / name
            if name.startswith(".") or sub.resolve() in excluded:
                continue
            if _is_dicom_folder(sub):
                cases.append(CaseInput(case_id(sub, ""), sub, True))
            elif recursive:
                kept.append(name)
        dirs[:] = kept
        for name in sorted(files):
            suffix = image_suffix(name)
            if suffix is None or name.startswith(".") or name.lower().endswith(".seg.nrrd"):
                continue
            cases.append(CaseInput(case_id(here / name, suffix), here / name, False))
    cases.sort(key=lambda c: c.case_id)
    seen: dict[str, CaseInput] = {}
    for case in cases:
        if case.case_id in seen:
            raise VolumeIOError(f"input {root}: {seen[case.case_id].path.name} and "
                                f"{case.path.name} both give case id {case.case_id!r}; rename or "
                                "move one of them")
        seen[case.case_id] = case
    return cases


def parse_shard(text: str) -> tuple[int, int]:
    """'i/n' -> (i, n) with 0 <= i < n (e.g. '0/4' .. '3/4'), or SGPSAMError naming the value."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not match:
        raise SGPSAMError(f"--shard {text!r}: expected i/n, e.g. 0/4 for the first of four shards")
    index, count = int(match.group(1)), int(match.group(2))
    check_shard(index, count, f"--shard {text!r}")
    return index, count


def check_shard(index: int, count: int, what: str) -> None:
    """SGPSAMError naming ``what`` unless ``0 <= index < count``."""
    if count < 1 or not 0 <= index < count:
        raise SGPSAMError(f"{what}: shard index must satisfy 0 <= i < n, got i={index}, "
                          f"n={count} (shards are numbered from 0)")


def shard_cases(cases: Sequence[CaseInput], index: int, count: int) -> list[CaseInput]:
    """Cases ``index, index + count, ...`` of the sorted list: shards partition the cohort."""
    check_shard(index, count, "shard")
    return list(cases[index::count])


def output_path(output: PathLike, case_id: str, output_format: str) -> Path:
    """Where a case's result goes: ``<output>/<case id><suffix>``."""
    look_up_option(output_format, OUTPUT_FORMATS, "output format")
    return Path(output) / (case_id + OUTPUT_FORMATS[output_format])


# ------------------------------------------------------------------------------------------------
# Seed files per case.

def markups_files(cases: Sequence[CaseInput]) -> dict[str, list[Path]]:
    """case id -> its markups files (see module docstring), each file given to one case."""
    by_folder: dict[Path, list[tuple[str, CaseInput]]] = {}
    for case in cases:
        by_folder.setdefault(case.path.parent, []).append((_case_stem(case), case))
    result: dict[str, list[Path]] = {c.case_id: [] for c in cases}
    for folder, entries in by_folder.items():
        try:
            names = sorted(n for n in os.listdir(folder) if n.lower().endswith(MARKUPS_SUFFIX))
        except OSError:
            continue
        for name in names:
            base = name[: -len(MARKUPS_SUFFIX)]
            owners = [(stem, case) for stem, case in entries
                      if base == stem or base.startswith(stem + ".")]
            if owners:
                owner = max(owners, key=lambda e: len(e[0]))[1]
                result[owner.case_id].append(folder / name)
    for case in cases:
        if case.dicom:
            inside = sorted(p for p in case.path.iterdir()
                            if p.name.lower().endswith(MARKUPS_SUFFIX))
            result[case.case_id].extend(inside)
    return result


def strip_image_suffix(name: str) -> str:
    """A file name without its image format suffix (``case.nii.gz`` -> ``case``)."""
    suffix = image_suffix(name)
    return name[: len(name) - len(suffix)] if suffix else name


def _case_stem(case: CaseInput) -> str:
    """The name its markups files start with: the DICOM folder's, or the file's stem."""
    return case.path.name if case.dicom else strip_image_suffix(case.path.name)


def match_csv_cases(seed_map: dict[str, list[Seed]], cases: Sequence[CaseInput]
                    ) -> tuple[dict[str, list[Seed]], list[str]]:
    """CSV case names -> case ids (exact id, else unique file stem); and unmatched names."""
    ids = {c.case_id for c in cases}
    by_stem: dict[str, list[str]] = {}
    for c in cases:
        by_stem.setdefault(c.case_id.rsplit("/", 1)[-1], []).append(c.case_id)
    matched: dict[str, list[Seed]] = {}
    unmatched: list[str] = []
    for name, seeds in seed_map.items():
        key = strip_image_suffix(name.strip().replace("\\", "/"))
        if key in ids:
            target = key
        elif len(by_stem.get(key, [])) == 1:
            target = by_stem[key][0]
        else:
            unmatched.append(name)
            continue
        matched.setdefault(target, []).extend(seeds)
    return matched, unmatched


# ------------------------------------------------------------------------------------------------
# The seed source of a run.

class SeedSource:
    """Where each case's seeds come from: ``seeds="markups"`` (its markups files) or the path
    of one CSV for the cohort (rows in ``csv_space`` unless they say otherwise).

    Attributes:
        unmatched: CSV case names that match no case (logged; listed in the summary).
    """

    def __init__(self, seeds: str | PathLike, csv_space: str, cases: Sequence[CaseInput]
                 ) -> None:
        self.seed_map: dict[str, list[Seed]] | None = None
        self.markups: dict[str, list[Path]] = {}
        self.csv_name = ""
        self.unmatched: list[str] = []
        if str(seeds) == "markups":
            self.markups = markups_files(cases)
            return
        csv_path = Path(seeds)
        self.csv_name = csv_path.name
        self.seed_map, self.unmatched = match_csv_cases(
            read_seed_csv(csv_path, space=str(csv_space).upper()), cases)
        if self.unmatched:
            log.warning("%d case name(s) in %s match no volume: %s", len(self.unmatched),
                        csv_path, ", ".join(self.unmatched[:10]))

    def seeds_for(self, case: CaseInput) -> tuple[list[Seed], str]:
        """The case's seeds and, when there are none, why."""
        if self.seed_map is not None:
            seeds = self.seed_map.get(case.case_id, [])
            return seeds, "" if seeds else f"case {case.case_id!r} has no rows in {self.csv_name}"
        files = self.markups.get(case.case_id, [])
        if not files:
            where = case.path.parent / (_case_stem(case) + MARKUPS_SUFFIX)
            return [], f"no seed file (expected {where})"
        stem = _case_stem(case)
        seeds: list[Seed] = []
        taken: set[str] = set()
        for path in files:
            base = path.name[: -len(MARKUPS_SUFFIX)]
            tag = base[len(stem) + 1:] if base.startswith(stem + ".") else None
            seeds.extend(read_markups(path, lesion_name=tag or None, taken=taken))
        return seeds, "" if seeds else "the markups file(s) hold no defined control points"
