"""Export of annotated scene cases to an MSD folder, against real MRML (slicer-core)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")

from SGPSAMSlicerLib.training_cases import (  # noqa: E402
    AnnotatedPair,
    case_name,
    export_training_cases,
    find_annotated_pairs,
    non_empty_segment_ids,
)

from SGPSAMLib.errors import SGPSAMError  # noqa: E402
from SGPSAMLib.io import read_volume  # noqa: E402

SHAPE = (12, 16, 20)  # (K, J, I)


def _rotation_z(degrees: float) -> np.ndarray:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _oblique_volume(scene, name: str = "CT chest #1"):
    """An oblique, anisotropic, LPS-flipped volume with distinct voxel values."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    node.SetSpacing(0.8, 1.25, 2.5)
    node.SetOrigin(12.5, -30.0, 41.0)
    node.SetIJKToRASDirections(_rotation_z(30.0) @ np.diag([-1.0, -1.0, 1.0]))
    array = (np.arange(np.prod(SHAPE)) % 3001 - 1000).astype(np.int16).reshape(SHAPE)
    slicer.util.updateVolumeFromArray(node, array)
    return node, array


def _masks() -> tuple[np.ndarray, np.ndarray]:
    first = np.zeros(SHAPE, np.uint8)
    first[2:5, 3:7, 4:9] = 1
    second = np.zeros(SHAPE, np.uint8)
    second[7:10, 9:13, 12:18] = 1
    second[8, 10, 13] = 1
    return first, second


def _segmentation(scene, volume, masks, names=("Tumour", "Node"), extra_empty=False):
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Lesions")
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    ids = []
    for index, (mask, name) in enumerate(zip(masks, names)):
        sid = node.GetSegmentation().AddEmptySegment(f"seg{index}", name, [1.0, 0.0, 0.0])
        slicer.util.updateSegmentBinaryLabelmapFromArray(mask, node, sid, volume)
        ids.append(sid)
    if extra_empty:
        ids.append(node.GetSegmentation().AddEmptySegment("empty", "Nothing", [0.0, 0.0, 1.0]))
    return node, ids


def _ijk_to_ras(node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def test_oblique_case_round_trips_geometry_and_labels(mrml, tmp_path: Path) -> None:
    volume, array = _oblique_volume(mrml.scene)
    first, second = _masks()
    segmentation, ids = _segmentation(mrml.scene, volume, (first, second), extra_empty=True)
    nodes_before = mrml.scene.GetNumberOfNodes()

    cases = export_training_cases([(volume, segmentation, None)], tmp_path / "data",
                                  modality="CT")

    assert mrml.scene.GetNumberOfNodes() == nodes_before  # the temporary labelmap is gone
    assert len(cases) == 1
    case = cases[0]
    assert case.case_id == "CT_chest_1" and case.segment_names == ["Tumour", "Node"]
    assert case.image == tmp_path / "data" / "imagesTr" / "CT_chest_1.nii.gz"
    assert case.label == tmp_path / "data" / "labelsTr" / "CT_chest_1.nii.gz"

    image = read_volume(case.image)
    np.testing.assert_array_equal(image.array, array)
    assert image.array.dtype == np.int16
    np.testing.assert_allclose(image.ijk_to_ras, _ijk_to_ras(volume), atol=1e-4)

    label = read_volume(case.label)
    expected = np.where(second > 0, 2, np.where(first > 0, 1, 0))
    np.testing.assert_array_equal(label.array, expected)
    assert label.array.dtype == np.uint8
    np.testing.assert_allclose(label.ijk_to_ras, image.ijk_to_ras, atol=1e-6)

    dataset = json.loads((tmp_path / "data" / "dataset.json").read_text())
    assert dataset["numTraining"] == 1 and dataset["modality"] == {"0": "CT"}
    assert dataset["training"] == [{"image": "./imagesTr/CT_chest_1.nii.gz",
                                    "label": "./labelsTr/CT_chest_1.nii.gz",
                                    "segments": {"1": "Tumour", "2": "Node"}}]
    assert sorted(p.name for p in (tmp_path / "data").rglob("*")) == [
        "CT_chest_1.nii.gz", "CT_chest_1.nii.gz", "dataset.json", "imagesTr", "labelsTr"]


def test_chosen_segment_order_sets_label_values(mrml, tmp_path: Path) -> None:
    volume, _ = _oblique_volume(mrml.scene, "vol")
    first, second = _masks()
    segmentation, ids = _segmentation(mrml.scene, volume, (first, second))
    volume2, _ = _oblique_volume(mrml.scene, "vol")
    segmentation2, ids2 = _segmentation(mrml.scene, volume2, (first,))
    cases = export_training_cases(
        [(volume, segmentation, [ids[1], ids[0]]), (volume2, segmentation2, [ids2[0]])],
        tmp_path / "out")
    assert [c.case_id for c in cases] == ["vol", "vol_2"]
    label = read_volume(cases[0].label).array
    np.testing.assert_array_equal(label, np.where(first > 0, 2, np.where(second > 0, 1, 0)))
    assert cases[0].segment_names == ["Node", "Tumour"]
    np.testing.assert_array_equal(read_volume(cases[1].label).array, first)
    dataset = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert dataset["modality"] == {"0": "unknown"} and dataset["numTraining"] == 2


def test_linear_parent_transform_is_applied_to_the_written_geometry(mrml, tmp_path):
    volume, array = _oblique_volume(mrml.scene)
    first, second = _masks()
    segmentation, _ = _segmentation(mrml.scene, volume, (first, second))
    transform = mrml.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "T")
    to_parent = np.eye(4)
    to_parent[:3, :3] = _rotation_z(-20.0)
    to_parent[:3, 3] = (5.0, -7.0, 11.0)
    transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(to_parent))
    volume.SetAndObserveTransformNodeID(transform.GetID())
    segmentation.SetAndObserveTransformNodeID(transform.GetID())

    case = export_training_cases([(volume, segmentation)], tmp_path / "t")[0]
    image = read_volume(case.image)
    np.testing.assert_array_equal(image.array, array)
    np.testing.assert_allclose(image.ijk_to_ras, to_parent @ _ijk_to_ras(volume), atol=1e-4)
    label = read_volume(case.label)
    np.testing.assert_array_equal(label.array, np.where(second > 0, 2, np.where(first, 1, 0)))
    np.testing.assert_allclose(label.ijk_to_ras, image.ijk_to_ras, atol=1e-6)


def test_non_linear_and_shearing_transforms_are_refused(mrml, tmp_path: Path) -> None:
    volume, _ = _oblique_volume(mrml.scene)
    segmentation, _ = _segmentation(mrml.scene, volume, _masks())
    shear = mrml.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "Shear")
    matrix = np.eye(4)
    matrix[0, 1] = 0.3
    shear.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(matrix))
    volume.SetAndObserveTransformNodeID(shear.GetID())
    with pytest.raises(SGPSAMError, match="'Shear' that shears it"):
        export_training_cases([(volume, segmentation)], tmp_path / "a")

    warp = mrml.scene.AddNewNodeByClass("vtkMRMLTransformNode", "Warp")
    spline = vtk.vtkThinPlateSplineTransform()
    source, target = vtk.vtkPoints(), vtk.vtkPoints()
    for point in ((0, 0, 0), (50, 0, 0), (0, 50, 0), (0, 0, 50)):
        source.InsertNextPoint(*point)
        target.InsertNextPoint(point[0] + 3.0, point[1], point[2] + (point[0] > 0) * 4.0)
    spline.SetSourceLandmarks(source)
    spline.SetTargetLandmarks(target)
    spline.SetBasisToR()
    warp.SetAndObserveTransformToParent(spline)
    volume.SetAndObserveTransformNodeID(warp.GetID())
    with pytest.raises(SGPSAMError, match="non-linear transform 'Warp'; harden"):
        export_training_cases([(volume, segmentation)], tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_invalid_inputs_raise_clear_errors_and_write_nothing(mrml, tmp_path: Path) -> None:
    volume, _ = _oblique_volume(mrml.scene, "vol")
    first, second = _masks()
    segmentation, ids = _segmentation(mrml.scene, volume, (first, second), extra_empty=True)
    out = tmp_path / "x"
    with pytest.raises(SGPSAMError, match="segment 'Nothing' has no voxel"):
        export_training_cases([(volume, segmentation, [ids[0], "empty"])], out)
    with pytest.raises(SGPSAMError, match="no segment with ID 'nope'"):
        export_training_cases([(volume, segmentation, ["nope"])], out)
    with pytest.raises(SGPSAMError, match="training case 1: no volume given"):
        export_training_cases([(None, segmentation)], out)
    with pytest.raises(SGPSAMError, match="no training cases chosen"):
        export_training_cases([], out)
    labelmap = mrml.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "lm")
    slicer.util.updateVolumeFromArray(labelmap, first)
    with pytest.raises(SGPSAMError, match="'lm' is not a scalar"):
        export_training_cases([(labelmap, segmentation)], out)
    only_empty = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "E")
    only_empty.GetSegmentation().AddEmptySegment("e", "E", [1, 1, 0])
    with pytest.raises(SGPSAMError, match="all segments are empty"):
        export_training_cases([(volume, only_empty)], out)
    no_segments = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "None")
    with pytest.raises(SGPSAMError, match="'None' has no segments"):
        export_training_cases([(volume, no_segments)], out)
    assert not out.exists()

    out.mkdir()
    (out / "old.txt").write_text("x")
    with pytest.raises(SGPSAMError, match="already exists and is not empty"):
        export_training_cases([(volume, segmentation)], out)
    mrml.scene.RemoveNode(volume)
    with pytest.raises(SGPSAMError, match="no longer in the scene"):
        export_training_cases([(volume, segmentation)], tmp_path / "y")


def test_find_annotated_pairs_proposes_volumes_with_non_empty_segments(mrml) -> None:
    volume, _ = _oblique_volume(mrml.scene, "Patient A")
    first, second = _masks()
    segmentation, ids = _segmentation(mrml.scene, volume, (first, second), extra_empty=True)
    # Not proposed: no reference volume; only empty segments; reference volume removed.
    mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "orphan").GetSegmentation() \
        .AddEmptySegment("x", "x", [1, 0, 0])
    other, _ = _oblique_volume(mrml.scene, "Patient B")
    empty = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "empty")
    empty.SetReferenceImageGeometryParameterFromVolumeNode(other)
    empty.GetSegmentation().AddEmptySegment("e", "E", [1, 0, 0])
    gone, _ = _oblique_volume(mrml.scene, "Patient C")
    stale, _ = _segmentation(mrml.scene, gone, (first,))
    mrml.scene.RemoveNode(gone)

    pairs = find_annotated_pairs(mrml.scene)
    assert pairs == [AnnotatedPair(volume, segmentation, ids[:2])]
    assert pairs[0].label == "Patient A / Lesions (2 segments)"
    assert non_empty_segment_ids(segmentation) == ids[:2]


def test_case_names_are_file_safe_and_unique() -> None:
    taken: set[str] = set()
    assert [case_name(n, taken) for n in ("CT chest #1", "ct chest 1", "###", "", "a/b\\c")] == [
        "CT_chest_1", "ct_chest_1_2", "case", "case_2", "a_b_c"]
