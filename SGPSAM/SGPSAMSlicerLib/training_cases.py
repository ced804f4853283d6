"""Export the user's annotated (volume, segmentation) pairs from the scene as an MSD dataset.

The Training tab trains in a child process that reads files, so the cases the user segmented
in Slicer are written to ``imagesTr/<case>.nii.gz``, ``labelsTr/<case>.nii.gz`` and
``dataset.json`` (Medical Segmentation Decathlon layout, which ``SGPSAMLib.training`` reads).

Geometry decisions (so a label voxel sits exactly on its image voxel):

- The label is computed on the **volume's own grid** by Slicer
  (``vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode`` with the volume as the
  reference); Slicer resamples the segmentation if the two nodes sit under different
  transforms, including non-linear ones on the segmentation.
- A **linear** parent transform of the volume is applied to the written geometry (both files
  get IJK->RAS = transform-to-world x the volume's IJK->RAS; voxels are not resampled), so
  the files show what the user sees. A **non-linear** transform on the volume, or a linear one
  with shear (columns no longer orthogonal, not representable in NIfTI), is refused: harden
  or resample the volume first.
- Label values are 1..N in the order of the chosen segments; where segments overlap the
  later one wins. A chosen segment with no voxel on the volume grid is an error (with
  ``segment_ids=None`` the empty segments are skipped, and at least one must remain).

Writes are atomic (``SGPSAMLib.io``); the target folder must be new or empty, so an export
never mixes with older cases.
"""
from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from SGPSAMLib.errors import SGPSAMError, VolumeError
from SGPSAMLib.geometry import Volume
from SGPSAMLib.io import atomic_write, write_labelmap, write_volume
from SGPSAMLib.options import IMAGE_MODALITIES, look_up_option

from .mrml_nodes import nodes_by_class

__all__ = [
    "AnnotatedPair",
    "ExportedCase",
    "find_annotated_pairs",
    "export_training_cases",
    "non_empty_segment_ids",
    "volume_world_geometry",
    "case_name",
]

logger = logging.getLogger(__name__)

BINARY_LABELMAP = "Binary labelmap"
CLOSED_SURFACE = "Closed surface"
# Tolerance for "the columns of the world IJK->RAS matrix are orthogonal" (cosine).
_ORTHOGONAL_TOL = 1e-4


class AnnotatedPair(NamedTuple):
    """A volume, a segmentation drawn on it, and the IDs of its non-empty segments."""

    volume: Any
    segmentation: Any
    segment_ids: list[str]

    @property
    def label(self) -> str:
        """Text for a list widget: 'CT chest / Lesions (2 segments)'."""
        count = len(self.segment_ids)
        return (f"{self.volume.GetName()} / {self.segmentation.GetName()} "
                f"({count} segment{'s' if count != 1 else ''})")


class ExportedCase(NamedTuple):
    """One written case: its ID, the two files and the segment names per label value."""

    case_id: str
    image: Path
    label: Path
    segment_names: list[str]


def _vtk_to_numpy(array: Any) -> np.ndarray:
    from vtkmodules.util.numpy_support import vtk_to_numpy  # noqa: PLC0415 - only with vtk

    return vtk_to_numpy(array)


def _segment_has_voxels(segmentation: Any, segment_id: str) -> bool:
    """Whether a segment holds anything (labelmap voxels with its value, or surface points)."""
    segment = segmentation.GetSegment(segment_id)
    if segment is None:
        return False
    if segmentation.ContainsRepresentation(BINARY_LABELMAP):
        image = segment.GetRepresentation(BINARY_LABELMAP)
        if image is None or image.IsEmpty():
            return False
        scalars = image.GetPointData().GetScalars()
        if scalars is None:
            return False
        return bool(np.any(_vtk_to_numpy(scalars) == segment.GetLabelValue()))
    if segmentation.ContainsRepresentation(CLOSED_SURFACE):
        surface = segment.GetRepresentation(CLOSED_SURFACE)
        return surface is not None and surface.GetNumberOfPoints() > 0
    return False


def non_empty_segment_ids(segmentation_node: Any) -> list[str]:
    """IDs of the segments of ``segmentation_node`` that contain something, in order."""
    segmentation = segmentation_node.GetSegmentation()
    ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
    return [sid for sid in ids if _segment_has_voxels(segmentation, sid)]


def _is_scalar_image_volume(node: Any) -> bool:
    return (node is not None and node.IsA("vtkMRMLScalarVolumeNode")
            and not node.IsA("vtkMRMLLabelMapVolumeNode")
            and node.GetImageData() is not None
            and node.GetImageData().GetNumberOfScalarComponents() == 1)


def find_annotated_pairs(scene: Any) -> list[AnnotatedPair]:
    """Propose (volume, segmentation) pairs for training.

    A segmentation qualifies when its reference-geometry volume (the volume it was drawn on,
    which Slicer records when editing starts) is still in the scene as a scalar volume and
    it has at least one non-empty segment.
    """
    pairs: list[AnnotatedPair] = []
    for segmentation in nodes_by_class(scene, "vtkMRMLSegmentationNode"):
        role = segmentation.GetReferenceImageGeometryReferenceRole()
        volume = segmentation.GetNodeReference(role)
        if not _is_scalar_image_volume(volume):
            continue
        ids = non_empty_segment_ids(segmentation)
        if ids:
            pairs.append(AnnotatedPair(volume, segmentation, ids))
    return pairs


def volume_world_geometry(volume_node: Any) -> np.ndarray:
    """The volume's IJK->RAS matrix in world coordinates (linear parent transforms applied).

    Raises SGPSAMError for a non-linear transform or a sheared result.
    """
    import vtk  # noqa: PLC0415

    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    local = _matrix_to_numpy(matrix)
    transform = volume_node.GetParentTransformNode()
    if transform is None:
        return local
    if not transform.IsTransformToWorldLinear():
        raise SGPSAMError(
            f"volume {volume_node.GetName()!r} is under the non-linear transform "
            f"{transform.GetName()!r}; harden the transform (Data module: right-click > "
            "Harden transform) or resample the volume before exporting it for training")
    to_world = vtk.vtkMatrix4x4()
    transform.GetMatrixTransformToWorld(to_world)
    world = _matrix_to_numpy(to_world) @ local
    columns = world[:3, :3] / np.linalg.norm(world[:3, :3], axis=0)
    gram = columns.T @ columns
    if np.max(np.abs(gram - np.eye(3))) > _ORTHOGONAL_TOL:
        raise SGPSAMError(
            f"volume {volume_node.GetName()!r} is under the transform "
            f"{transform.GetName()!r} that shears it; NIfTI cannot store sheared voxel "
            "axes. Resample the volume (Resample Scalar/Vector/DWI Volume) or remove the "
            "transform before exporting it for training")
    return world


def _matrix_to_numpy(matrix: Any) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)],
                    dtype=np.float64)


def case_name(text: str, taken: set[str]) -> str:
    """A file-safe, unique case ID from a node name ('CT chest #2' -> 'CT_chest_2')."""
    base = re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_-") or "case"
    name, suffix = base, 2
    while name.lower() in taken:
        name = f"{base}_{suffix}"
        suffix += 1
    taken.add(name.lower())
    return name


def _volume_array(node: Any) -> np.ndarray:
    """(K, J, I) copy of a volume node's voxels (slicer.util-free)."""
    image = node.GetImageData()
    ni, nj, nk = image.GetDimensions()
    scalars = image.GetPointData().GetScalars()
    if scalars is None:
        raise VolumeError(f"volume {node.GetName()!r} has no voxel data")
    return _vtk_to_numpy(scalars).reshape(nk, nj, ni).copy()


def _check_pair(volume: Any, segmentation: Any, index: int) -> None:
    where = f"training case {index + 1}"
    if volume is None:
        raise SGPSAMError(f"{where}: no volume given; choose the image the segmentation "
                          "was drawn on")
    if volume.GetScene() is None:
        raise SGPSAMError(f"{where}: volume {volume.GetName()!r} is no longer in the scene")
    if not _is_scalar_image_volume(volume):
        raise SGPSAMError(f"{where}: {volume.GetName()!r} is not a scalar (grey-level) image "
                          "volume with voxel data; expected a CT or MR volume, not a "
                          "labelmap or a colour image")
    if segmentation is None or not segmentation.IsA("vtkMRMLSegmentationNode"):
        raise SGPSAMError(f"{where}: no segmentation given for volume {volume.GetName()!r}")
    if segmentation.GetSegmentation().GetNumberOfSegments() == 0:
        raise SGPSAMError(f"{where}: segmentation {segmentation.GetName()!r} has no segments")


def _export_label(
    volume: Any, segmentation: Any, segment_ids: Sequence[str] | None, index: int,
) -> tuple[np.ndarray, list[str]]:
    """(K, J, I) uint8/uint16 labels 1..N on the volume grid, and the segment names."""
    import slicer  # noqa: PLC0415

    where = f"training case {index + 1} ({volume.GetName()} / {segmentation.GetName()})"
    seg = segmentation.GetSegmentation()
    explicit = segment_ids is not None
    ids = list(segment_ids) if explicit else [
        seg.GetNthSegmentID(i) for i in range(seg.GetNumberOfSegments())]
    if not ids:
        raise SGPSAMError(f"{where}: no segments chosen")
    missing = [sid for sid in ids if seg.GetSegment(sid) is None]
    if missing:
        raise SGPSAMError(f"{where}: segmentation {segmentation.GetName()!r} has no segment "
                          f"with ID {', '.join(repr(m) for m in missing)}")
    names = [seg.GetSegment(sid).GetName() for sid in ids]
    scene = volume.GetScene()
    existing = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__sgpsam_export__")
    try:
        ok = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
            segmentation, ids, labelmap, volume)
        if not ok or labelmap.GetImageData() is None:
            raise SGPSAMError(f"{where}: Slicer could not export the segments to a labelmap "
                              "on the volume's grid")
        labels = _volume_array(labelmap)
    finally:
        _remove_temporary_labelmap(scene, labelmap, existing)
    expected = _volume_array_shape(volume)
    if labels.shape != expected:
        raise SGPSAMError(f"{where}: the exported labelmap has shape {labels.shape}, not the "
                          f"volume's {expected}")
    counts = np.bincount(labels.ravel().astype(np.int64), minlength=len(ids) + 1)
    empty = [i for i in range(len(ids)) if counts[i + 1] == 0]
    if empty and explicit:
        raise SGPSAMError(
            f"{where}: segment{'s' if len(empty) > 1 else ''} "
            f"{', '.join(repr(names[i]) for i in empty)} "
            f"{'have' if len(empty) > 1 else 'has'} no voxel on the volume's grid (empty, "
            "outside the volume, or hidden by an overlapping later segment); remove "
            "it from the selection or paint it")
    keep = [i for i in range(len(ids)) if counts[i + 1] > 0]
    if not keep:
        raise SGPSAMError(f"{where}: all segments are empty on the volume's grid; nothing to "
                          "train on")
    if len(keep) < len(ids):
        logger.warning("%s: skipping empty segments %s", where,
                       [names[i] for i in range(len(ids)) if i not in keep])
        lookup = np.zeros(len(ids) + 1, dtype=np.int64)
        for new_value, old_index in enumerate(keep, start=1):
            lookup[old_index + 1] = new_value
        labels = lookup[labels.astype(np.int64)]
        names = [names[i] for i in keep]
    dtype = np.uint8 if len(names) < 256 else np.uint16
    return labels.astype(dtype), names


def _remove_temporary_labelmap(scene: Any, labelmap: Any, existing: set[str]) -> None:
    """Remove the export labelmap and what the export added for it (display node, and the
    '<segmentation>_ColorTable' node Slicer creates), leaving the user's scene as it was."""
    display = labelmap.GetDisplayNode()
    color = display.GetColorNode() if display is not None else None
    if display is not None:
        scene.RemoveNode(display)
    storage = labelmap.GetStorageNode()
    if storage is not None:
        scene.RemoveNode(storage)
    scene.RemoveNode(labelmap)
    if color is not None and color.GetID() not in existing:
        scene.RemoveNode(color)


def _volume_array_shape(volume: Any) -> tuple[int, int, int]:
    ni, nj, nk = volume.GetImageData().GetDimensions()
    return (nk, nj, ni)


def export_training_cases(
    pairs: Sequence[Sequence[Any]],
    folder: str | Path,
    modality: str | None = None,
    dataset_name: str = "SGPSAM annotations",
) -> list[ExportedCase]:
    """Write ``pairs`` of (volume_node, segmentation_node[, segment_ids or None]) to ``folder``.

    ``folder`` must not exist or be empty. ``modality`` ("CT", "MR" or None = unknown) goes to
    dataset.json. Returns one ``ExportedCase`` per pair, in order. Nothing is written unless
    every pair is valid (all are checked and converted first).
    """
    target = Path(folder)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise SGPSAMError(f"training data folder {target} already exists and is not empty; "
                          "choose a new or empty folder so old cases do not mix in")
    if not pairs:
        raise SGPSAMError("no training cases chosen; add at least one volume with its "
                          "segmentation")
    if modality is not None:
        look_up_option(modality, IMAGE_MODALITIES, "modality")

    prepared: list[tuple[str, Volume, np.ndarray, list[str]]] = []
    taken: set[str] = set()
    for index, pair in enumerate(pairs):
        if len(pair) not in (2, 3):
            raise SGPSAMError(f"training case {index + 1}: expected (volume, segmentation) or "
                              f"(volume, segmentation, segment IDs); got {len(pair)} items")
        volume, segmentation = pair[0], pair[1]
        segment_ids = pair[2] if len(pair) == 3 else None
        _check_pair(volume, segmentation, index)
        world = volume_world_geometry(volume)
        labels, names = _export_label(volume, segmentation, segment_ids, index)
        name = case_name(volume.GetName(), taken)
        image = Volume(_volume_array(volume), world, name)
        prepared.append((name, image, labels, names))

    images_dir = target / "imagesTr"
    labels_dir = target / "labelsTr"
    try:
        images_dir.mkdir(parents=True, exist_ok=True)
        labels_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SGPSAMError(f"cannot create the training data folder {target}: {exc}") from exc

    cases: list[ExportedCase] = []
    for name, image, labels, names in prepared:
        image_path = write_volume(image, images_dir / f"{name}.nii.gz")
        label_path = write_labelmap(labels, image, labels_dir / f"{name}.nii.gz")
        cases.append(ExportedCase(name, image_path, label_path, names))
        logger.info("exported training case %s (%d segments)", name, len(names))

    dataset = {
        "name": dataset_name,
        "description": "Cases annotated in 3D Slicer, exported by the SGPSAM module",
        "tensorImageSize": "3D",
        "modality": {"0": modality or "unknown"},
        "labels": {"0": "background", "1": "lesion"},
        "numTraining": len(cases),
        "numTest": 0,
        "training": [
            {"image": f"./imagesTr/{case.case_id}.nii.gz",
             "label": f"./labelsTr/{case.case_id}.nii.gz",
             "segments": {str(v): n for v, n in enumerate(case.segment_names, start=1)}}
            for case in cases
        ],
        "test": [],
    }
    with atomic_write(target / "dataset.json") as tmp:
        tmp.write_text(json.dumps(dataset, indent=2) + "\n", encoding="utf-8")
    return cases
