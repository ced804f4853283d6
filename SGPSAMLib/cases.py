"""Annotated cases: find image/label pairs in a folder, load them, and list their lesions.

Shared by training (:mod:`SGPSAMLib.training`) and evaluation (:mod:`SGPSAMLib.evaluation`), so
both read the same layouts and count the same lesions; neither imports the other.

Accepted folder layouts (the first that matches wins):

1. **MSD / nnU-Net**: ``imagesTr/`` and ``labelsTr/`` (pairs from ``dataset.json``'s
   ``"training"`` list when present, else by file name; an image ``x_0000.nii.gz`` pairs with
   the label ``x.nii.gz``).
2. **images/ + labels/** (also ``masks/`` or ``segmentations/``): equal names (``_0000`` too).
   DICOM series folders are matched by folder name.
3. **One folder of matching names**: ``x.nii.gz`` with ``x_label.nii.gz``, ``x-label.nrrd``,
   ``x_seg.nii.gz``, ``x_segmentation.nrrd``, ``x_mask.mha``, ``x_gt.nii`` (the keyword after
   ``_``, ``-`` or ``.``; case-insensitive).

A *lesion* is one connected component (26-connectivity) of one selected label value
(``lesion_unit="component"``), or all voxels of one label value (``"label"``). Labels must lie
on their image's voxel grid; they are read as integers.
"""
from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np
import SimpleITK as sitk

from .errors import SGPSAMError, VolumeError, VolumeIOError
from .geometry import Volume
from .io import read_volume
from .options import IMAGE_SUFFIXES, LESION_UNITS, look_up_option
from .region import resolve_modality

__all__ = ["CaseFiles", "LoadedCase", "LabelLesion", "find_cases", "load_case", "split_cases",
           "LESION_UNITS", "VOLUME_SUFFIXES", "LABEL_KEYWORDS"]

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

VOLUME_SUFFIXES = IMAGE_SUFFIXES
LABEL_KEYWORDS = ("label", "labels", "seg", "segmentation", "mask", "gt")
_IMAGE_DIRS = ("images",)
_LABEL_DIRS = ("labels", "masks", "segmentations")
_LABEL_NAME = re.compile(r"^(?P<stem>.+?)[_.\-](?:" + "|".join(LABEL_KEYWORDS) + r")$",
                         re.IGNORECASE)
_CHANNEL_SUFFIX = re.compile(r"_\d{4}$")
# Tolerance on the IJK->RAS matrix when checking that a label lies on its image's grid (mm).
_GRID_TOLERANCE_MM = 1e-3


@dataclass(frozen=True)
class CaseFiles:
    """One annotated case: an image file (or DICOM folder), its label file, and an id."""

    image: Path
    label: Path
    case_id: str


@dataclass(frozen=True)
class LabelLesion:
    """One lesion of a case's label map: a training target, an evaluation target.

    (Not ``seeds.SeedLesion``, a batch lesion's seed points, nor the Slicer module's
    ``EditedLesion``.)

    Attributes:
        index: 1-based id in the case's ``lesion_map``.
        label_value: the label value it comes from.
        voxels: voxel count on the original grid.
        flat_indices: flat (C-order) indices of its voxels in the (K, J, I) array.
    """

    index: int
    label_value: int
    voxels: int
    flat_indices: np.ndarray = field(repr=False, compare=False)


@dataclass
class LoadedCase:
    """A case in memory: the image, a map of lesion ids on its grid, and the lesions."""

    files: CaseFiles
    volume: Volume
    lesion_volume: Volume
    lesions: list[LabelLesion]
    modality: str

    @property
    def case_id(self) -> str:
        return self.files.case_id


def _suffix(name: str) -> str:
    lower = name.lower()
    for suffix in VOLUME_SUFFIXES:
        if lower.endswith(suffix):
            return suffix
    return ""


def _stem(path: Path) -> str:
    suffix = _suffix(path.name)
    return path.name[: len(path.name) - len(suffix)] if suffix else path.name


def _is_volume_file(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and bool(_suffix(path.name))


def _entries(folder: Path, allow_dirs: bool) -> dict[str, Path]:
    """Volume files (and, optionally, sub-folders = DICOM series) of a folder by stem."""
    out: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if _is_volume_file(path) or (allow_dirs and path.is_dir()):
            out[_stem(path)] = path
    return out


def _pair_by_name(images: dict[str, Path], labels: dict[str, Path], where: str
                  ) -> list[CaseFiles]:
    """Pair equal stems; an image ``x_0000`` also pairs with label ``x`` (nnU-Net channels)."""
    cases = []
    for stem, image in images.items():
        key = stem if stem in labels else _CHANNEL_SUFFIX.sub("", stem)
        if key in labels:
            cases.append(CaseFiles(image, labels[key], key))
        else:
            log.info("%s: image %s has no label; skipped", where, image.name)
    return cases


def _msd_cases(folder: Path) -> list[CaseFiles]:
    images_dir, labels_dir = folder / "imagesTr", folder / "labelsTr"
    manifest = folder / "dataset.json"
    if manifest.is_file():
        try:
            data = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise VolumeIOError(f"{manifest}: not readable JSON ({exc})") from exc
        training = data.get("training") if isinstance(data, dict) else None
        entries = [t for t in training or [] if isinstance(t, dict)
                   and isinstance(t.get("image"), str) and isinstance(t.get("label"), str)]
        if entries:
            cases = []
            for entry in entries:
                image = (folder / entry["image"]).resolve()
                label = (folder / entry["label"]).resolve()
                if not image.exists() and image.name.endswith(".nii.gz"):
                    # nnU-Net v2 lists "x" but stores "x_0000.nii.gz".
                    alt = image.with_name(image.name[:-7] + "_0000.nii.gz")
                    image = alt if alt.exists() else image
                if not image.exists() or not label.exists():
                    log.warning("%s: %s / %s listed but missing; skipped", manifest,
                                entry["image"], entry["label"])
                    continue
                cases.append(CaseFiles(image, label, _stem(label)))
            return cases
    return _pair_by_name(_entries(images_dir, True), _entries(labels_dir, True), str(folder))


def _flat_cases(folder: Path) -> list[CaseFiles]:
    files = _entries(folder, allow_dirs=False)
    labels: dict[str, Path] = {}
    for stem, path in files.items():
        match = _LABEL_NAME.match(stem)
        if match and match.group("stem") in files:
            image_stem = match.group("stem")
            if image_stem in labels:
                raise VolumeIOError(
                    f"{folder}: image {files[image_stem].name} has several label files "
                    f"({labels[image_stem].name}, {path.name}); keep one per image")
            labels[image_stem] = path
    used = set(labels.values())
    return [CaseFiles(files[stem], label, stem) for stem, label in labels.items()
            if files[stem] not in used]


def find_cases(folder: PathLike, role: str = "training data") -> list[CaseFiles]:
    """Image/label pairs of a folder, sorted by case id (see the module docstring).

    ``role`` names the folder in messages ("training data", "evaluation data").

    Raises:
        VolumeIOError: the folder does not exist or holds no image/label pair.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise VolumeIOError(f"{role} folder {folder}: not found or not a folder")
    layout: str
    if (folder / "imagesTr").is_dir() and (folder / "labelsTr").is_dir():
        layout, cases = "MSD (imagesTr/ + labelsTr/)", _msd_cases(folder)
    else:
        image_dir = next((folder / d for d in _IMAGE_DIRS if (folder / d).is_dir()), None)
        label_dir = next((folder / d for d in _LABEL_DIRS if (folder / d).is_dir()), None)
        if image_dir is not None and label_dir is not None:
            layout = f"{image_dir.name}/ + {label_dir.name}/"
            cases = _pair_by_name(_entries(image_dir, True), _entries(label_dir, True),
                                  str(folder))
        else:
            layout, cases = "matching file names", _flat_cases(folder)
    if not cases:
        raise VolumeIOError(
            f"{role} folder {folder}: no image/label pairs found (layout tried: {layout}). "
            "Expected imagesTr/ + labelsTr/ (MSD), images/ + labels/ with equal names, or files "
            "such as case.nii.gz with case_label.nii.gz (or _seg, _mask, -label) in one folder")
    ids = [c.case_id for c in cases]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise VolumeIOError(f"{role} folder {folder}: duplicate case ids {duplicates}")
    return sorted(cases, key=lambda c: c.case_id)


def _same_grid(image: Volume, label: Volume) -> bool:
    if image.array.shape != label.array.shape:
        return False
    return bool(np.allclose(image.ijk_to_ras, label.ijk_to_ras, rtol=0.0,
                            atol=_GRID_TOLERANCE_MM))


def _grid_text(volume: Volume) -> str:
    spacing = ", ".join(f"{v:.4g}" for v in volume.spacing)
    origin = ", ".join(f"{v:.4g}" for v in volume.origin_ras)
    return f"size (I, J, K) {volume.shape_ijk}, spacing ({spacing}) mm, origin RAS ({origin})"


def _components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """26-connected components of a binary (K, J, I) mask -> (uint32 ids 1..n, n)."""
    image = sitk.GetImageFromArray(mask.astype(np.uint8, copy=False))
    labelled = sitk.ConnectedComponent(image, True)
    ids = sitk.GetArrayFromImage(labelled)
    return ids, int(ids.max()) if ids.size else 0


def load_case(files: CaseFiles, labels: Sequence[int] | None = None,
              lesion_unit: str = "component", min_lesion_voxels: int = 1,
              modality: str = "auto") -> LoadedCase:
    """Read a case and list its lesions.

    Args:
        files: the image and label paths.
        labels: label values that are targets (None: every non-zero value).
        lesion_unit: "component" (each connected component is a lesion) or "label".
        min_lesion_voxels: smaller lesions are ignored (as background of other lesions too).
        modality: "CT", "MR" or "auto" (decided from the image's minimum, as the session does).

    Raises:
        VolumeIOError: unreadable files, or a label not on the image's voxel grid.
        VolumeError: non-integer label values, or a bad ``lesion_unit``.
    """
    look_up_option(lesion_unit, LESION_UNITS, "lesion_unit", error=VolumeError)
    image = read_volume(files.image)
    label = read_volume(files.label)
    if not _same_grid(image, label):
        raise VolumeIOError(
            f"case {files.case_id}: label {files.label} is not on the voxel grid of image "
            f"{files.image}: label {_grid_text(label)} vs image {_grid_text(image)}. "
            "Resample the label onto the image (nearest neighbour) first")
    values = label.array
    if values.dtype.kind == "f":
        if not (np.all(np.isfinite(values)) and np.array_equal(values, np.round(values))):
            raise VolumeError(f"case {files.case_id}: label {files.label} holds non-integer "
                              "values; expected integer label values")
    present = [int(v) for v in np.unique(values) if v != 0]
    wanted = present if labels is None else [v for v in labels if v in present]
    lesion_map = np.zeros(values.shape, dtype=np.int32)
    lesions: list[LabelLesion] = []
    for value in wanted:
        mask = values == value
        if lesion_unit == "label":
            parts, count = mask.astype(np.uint32), 1
        else:
            parts, count = _components(mask)
        flat = parts.reshape(-1)
        order = np.argsort(flat, kind="stable")
        bounds = np.searchsorted(flat[order], np.arange(1, count + 2))
        for part in range(1, count + 1):
            indices = np.sort(order[bounds[part - 1]:bounds[part]])
            if indices.size < max(1, min_lesion_voxels):
                continue
            index = len(lesions) + 1
            lesion_map.reshape(-1)[indices] = index
            lesions.append(LabelLesion(index, int(value), int(indices.size), indices))
    dtype = np.uint8 if len(lesions) < 256 else (np.uint16 if len(lesions) < 65536 else np.int32)
    resolved = resolve_modality(image.array.min() if image.array.size else 0.0, modality)
    return LoadedCase(files, image, image.with_array(lesion_map.astype(dtype)), lesions,
                      resolved)


def split_cases(case_ids: Sequence[str], val_fraction: float = 0.2, seed: int = 0,
                val_cases: Sequence[str] | None = None) -> tuple[list[str], list[str]]:
    """Case-level train/validation split, seeded (or explicit ``val_cases``).

    With ``val_fraction > 0`` at least one case goes to validation and at least one stays in
    training (when there are two or more cases).

    Raises:
        SGPSAMError: unknown ids in ``val_cases``, a fraction outside [0, 1), or no case left
            for training.
    """
    ids = sorted(case_ids)
    if val_cases:
        unknown = sorted(set(val_cases) - set(ids))
        if unknown:
            raise SGPSAMError(f"--val-cases: unknown case ids {unknown}; known: {ids}")
        val = sorted(set(val_cases))
    else:
        if not 0.0 <= val_fraction < 1.0:
            raise SGPSAMError(f"--val-fraction must be in [0, 1), got {val_fraction}")
        n_val = int(round(val_fraction * len(ids)))
        if val_fraction > 0 and len(ids) >= 2:
            n_val = min(max(n_val, 1), len(ids) - 1)
        order = np.random.default_rng(seed).permutation(len(ids))
        val = sorted(ids[i] for i in order[:n_val])
    train = [i for i in ids if i not in set(val)]
    if not train:
        raise SGPSAMError("no training case left after the validation split; lower "
                          "--val-fraction or list fewer --val-cases")
    return train, val
