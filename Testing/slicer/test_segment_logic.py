"""The module's Logic on real MRML (slicer-core): geometry, segment writes, undo, files, errors.

The model is the transparent oracle of ``SGPSAMSlicerLib.selftest`` (threshold-and-grow on the
crop the real ``InteractiveSession`` samples), so a lesion lands where the phantom has it only
if every geometry step is right; ``test_dice_fails_when_the_volume_transform_is_ignored``
shows that the Dice check does fail when one of them is wrong.
"""
from __future__ import annotations

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")

from SGPSAMSlicerLib import mrml_geometry  # noqa: E402
from SGPSAMSlicerLib.logic import SegmentLogic  # noqa: E402
from SGPSAMSlicerLib.segment import LESION_TERMINOLOGY  # noqa: E402
from SGPSAMSlicerLib.segment_voxels import read_segment_box, write_segment_box  # noqa: E402
from SGPSAMSlicerLib.selftest import dice, make_oracle_model, make_phantom  # noqa: E402
from SGPSAMSlicerLib.settings import QSettingsStore, Settings  # noqa: E402

from SGPSAMLib.errors import PromptError, SGPSAMError, VolumeError  # noqa: E402
from SGPSAMLib.geometry import Volume  # noqa: E402
from SGPSAMLib.palette import lesion_color  # noqa: E402

# A rotation of 90 degrees about S plus a shift: what a registration might put on a volume.
VOLUME_TRANSFORM = np.array([[0.0, -1.0, 0.0, 20.0], [1.0, 0.0, 0.0, -5.0],
                             [0.0, 0.0, 1.0, 12.0], [0.0, 0.0, 0.0, 1.0]])
MARKUPS_TRANSFORM = np.array([[1.0, 0.0, 0.0, 3.0], [0.0, 0.0, -1.0, 7.0],
                              [0.0, 1.0, 0.0, -2.0], [0.0, 0.0, 0.0, 1.0]])


def _transform(scene, matrix: np.ndarray, name: str):
    node = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", name)
    node.SetMatrixTransformToParent(mrml_geometry.vtk_from_matrix(matrix))
    return node


def _volume(scene, array: np.ndarray, ijk_to_ras: np.ndarray, name: str = "phantom"):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(node, array)
    node.SetIJKToRASMatrix(mrml_geometry.vtk_from_matrix(ijk_to_ras))
    return node


def _apply(matrix: np.ndarray, point) -> np.ndarray:
    return matrix[:3, :3] @ np.asarray(point, dtype=float) + matrix[:3, 3]


def _terminology(segment) -> str:
    value = vtk.reference("")
    segment.GetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), value)
    return str(value)


def _segment(segmentation, segment_id, volume) -> np.ndarray:
    return slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segment_id, volume)


@pytest.fixture
def phantom():
    return make_phantom(seed=5)


@pytest.fixture
def scene_case(mrml, phantom):
    """The phantom as a volume under a rotated parent transform, and an oracle logic."""
    volume = _volume(mrml.scene, phantom.array, phantom.ijk_to_ras)
    volume.SetAndObserveTransformNodeID(_transform(mrml.scene, VOLUME_TRANSFORM, "reg").GetID())
    logic = SegmentLogic(Settings({}))
    logic.setModel(make_oracle_model(), "oracle", device="cpu")
    return mrml.scene, volume, logic


# ----------------------------------------------------------------------------------------------
# Geometry (no model).

def test_oblique_volume_under_a_transform_becomes_the_library_volume(mrml, phantom) -> None:
    volume = _volume(mrml.scene, phantom.array, phantom.ijk_to_ras)
    volume.SetAndObserveTransformNodeID(_transform(mrml.scene, VOLUME_TRANSFORM, "reg").GetID())
    local = mrml_geometry.volume_from_node(volume)
    assert isinstance(local, Volume) and local.name == "phantom"
    np.testing.assert_allclose(local.ijk_to_ras, phantom.ijk_to_ras, atol=1e-9)
    assert np.shares_memory(local.array, slicer.util.arrayFromVolume(volume))
    np.testing.assert_array_equal(local.array, phantom.array)
    world = mrml_geometry.volume_from_node(volume, frame="world")
    np.testing.assert_allclose(world.ijk_to_ras, VOLUME_TRANSFORM @ phantom.ijk_to_ras,
                               atol=1e-9)
    np.testing.assert_allclose(world.spacing, [1.2, 1.0, 2.0], atol=1e-9)


def test_world_points_map_to_the_right_voxel_through_both_transforms(mrml, phantom) -> None:
    volume = _volume(mrml.scene, phantom.array, phantom.ijk_to_ras)
    volume.SetAndObserveTransformNodeID(_transform(mrml.scene, VOLUME_TRANSFORM, "reg").GetID())
    markups = mrml.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "F")
    markups.SetAndObserveTransformNodeID(
        _transform(mrml.scene, MARKUPS_TRANSFORM, "other").GetID())
    target_kji = (17, 29, 41)
    centre_local = phantom.ijk_to_ras[:3, :3] @ np.array(target_kji[::-1], float) + \
        phantom.ijk_to_ras[:3, 3]
    # The point as the markups node stores it (its own frame) so that in world it sits on the
    # voxel: local = inverse(markups transform) . volume transform . voxel centre.
    world = _apply(VOLUME_TRANSFORM, centre_local)
    markups.AddControlPoint(vtk.vtkVector3d(*_apply(np.linalg.inv(MARKUPS_TRANSFORM), world)))
    position = [0.0, 0.0, 0.0]
    markups.GetNthControlPointPositionWorld(0, position)
    np.testing.assert_allclose(position, world, atol=1e-9)
    ras = mrml_geometry.world_to_volume_ras(volume, position)
    np.testing.assert_allclose(ras, centre_local, atol=1e-9)
    np.testing.assert_allclose(mrml_geometry.volume_ras_to_world(volume, ras), world, atol=1e-9)
    library = mrml_geometry.volume_from_node(volume)
    assert mrml_geometry.ras_to_voxel_index(library, ras) == target_kji
    with pytest.raises(PromptError, match="outside the volume 'phantom'"):
        mrml_geometry.ras_to_voxel_index(library, ras + 500.0)


def test_non_linear_world_frame_and_bad_nodes_are_refused(mrml, phantom) -> None:
    with pytest.raises(VolumeError, match="no input volume"):
        mrml_geometry.volume_from_node(None)
    segmentation = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "S")
    with pytest.raises(VolumeError, match="vtkMRMLSegmentationNode"):
        mrml_geometry.volume_from_node(segmentation)
    colour = mrml.scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "rgb")
    slicer.util.updateVolumeFromArray(colour, np.zeros((3, 4, 5, 3), np.uint8))
    with pytest.raises(VolumeError, match="3 components"):
        mrml_geometry.volume_from_node(colour)
    volume = _volume(mrml.scene, phantom.array, phantom.ijk_to_ras)
    grid = mrml.scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "warp")
    volume.SetAndObserveTransformNodeID(grid.GetID())
    with pytest.raises(VolumeError, match="non-linear"):
        mrml_geometry.volume_from_node(volume, frame="world")


# ----------------------------------------------------------------------------------------------
# Segment box read/write (no model).

def test_box_writes_replace_only_the_box_and_never_other_segments(mrml, phantom) -> None:
    volume = _volume(mrml.scene, phantom.array, phantom.ijk_to_ras)
    segmentation = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "S")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    a = segmentation.GetSegmentation().AddEmptySegment("a", "a", [1, 0, 0])
    b = segmentation.GetSegmentation().AddEmptySegment("b", "b", [0, 1, 0])
    shape = phantom.array.shape
    rng = np.random.default_rng(0)
    mask_a = (rng.random(shape) > 0.7).astype(np.uint8)
    mask_b = (rng.random(shape) > 0.8).astype(np.uint8)
    slicer.util.updateSegmentBinaryLabelmapFromArray(mask_a, segmentation, a, volume)
    slicer.util.updateSegmentBinaryLabelmapFromArray(mask_b, segmentation, b, volume)
    matrix = mrml_geometry.volume_ijk_to_segmentation_matrix(volume, segmentation)
    box = (slice(5, 20), slice(10, 40), slice(3, 30))
    np.testing.assert_array_equal(read_segment_box(segmentation, a, matrix, box), mask_a[box])
    values = (rng.random(tuple(s.stop - s.start for s in box)) > 0.5).astype(np.uint8)
    write_segment_box(segmentation, a, matrix, box, values)
    expected = mask_a.copy()
    expected[box] = values
    np.testing.assert_array_equal(_segment(segmentation, a, volume), expected)
    np.testing.assert_array_equal(_segment(segmentation, b, volume), mask_b)
    # A box reaching past the image edge reads zeros there.
    edge = (slice(shape[0] - 2, shape[0] + 3), slice(0, 4), slice(0, 4))
    assert read_segment_box(segmentation, a, matrix, edge).shape == (5, 4, 4)


# ----------------------------------------------------------------------------------------------
# Interactive segmentation with the oracle.

def test_lesion_lands_where_it_is_in_its_own_segment_only(scene_case, phantom) -> None:
    scene, volume, logic = scene_case
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "mine")
    segmentation.CreateDefaultDisplayNodes()
    segmentation.SetAndObserveTransformNodeID(volume.GetTransformNodeID())
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    manual = segmentation.GetSegmentation().AddEmptySegment("manual", "manual", [0, 0, 1])
    painted = np.zeros(phantom.array.shape, np.uint8)
    painted[15:25, 20:40, 15:35] = 1  # overlaps lesion 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(painted, segmentation, manual, volume)

    assert logic.startSession(volume, segmentation) is segmentation
    first = logic.addLesion()
    segment = segmentation.GetSegmentation().GetSegment(first)
    assert segment.GetName() == "Lesion 2"  # "manual" is segment 1
    assert _terminology(segment) == LESION_TERMINOLOGY
    assert segment.GetColor() == pytest.approx(lesion_color(2))  # the library's palette
    world = _apply(VOLUME_TRANSFORM, phantom.centres_ras[0])
    result = logic.addPoint(world)
    assert result.action == "add" and result.voxels_changed > 0
    assert result.timings["decode"] > 0 and result.seconds > 0
    lesion1 = _segment(segmentation, first, volume)
    assert dice(lesion1, phantom.label == 1) >= 0.85
    np.testing.assert_array_equal(_segment(segmentation, manual, volume), painted)
    # The written box is where the changes are; nothing outside it changed.
    outside = np.ones(lesion1.shape, bool)
    outside[result.changed_bbox] = False
    assert not lesion1[outside].any()
    # The point is a markup in the lesion's positive list, in world coordinates.
    node = logic.activeMarkupsNode(True)
    assert node.GetNumberOfControlPoints() == 1
    assert node.GetAttribute("SGPSAM.SegmentID") == first

    second = logic.addLesion()
    logic.addPoint(_apply(VOLUME_TRANSFORM, phantom.centres_ras[1]))
    assert dice(_segment(segmentation, second, volume), phantom.label == 2) >= 0.75
    np.testing.assert_array_equal(_segment(segmentation, first, volume), lesion1)
    np.testing.assert_array_equal(_segment(segmentation, manual, volume), painted)
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 3


def test_dice_fails_when_the_volume_transform_is_ignored(mrml, phantom, monkeypatch) -> None:
    """Negative control: the same Dice check catches a click mapped without the transform."""
    from SGPSAMSlicerLib import segment  # noqa: PLC0415

    shift = np.array([[1.0, 0.0, 0.0, -25.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0],
                      [0.0, 0.0, 0.0, 1.0]])
    volume = _volume(mrml.scene, phantom.array, phantom.ijk_to_ras)
    volume.SetAndObserveTransformNodeID(_transform(mrml.scene, shift, "shift").GetID())
    logic = SegmentLogic(Settings({}))
    logic.setModel(make_oracle_model(), "oracle", device="cpu")
    segmentation = logic.startSession(volume)
    lesion = logic.addLesion()
    world = _apply(shift, phantom.centres_ras[0])
    # The bug being simulated: world RAS taken as the volume's own RAS.
    monkeypatch.setattr(segment, "world_to_volume_ras", lambda node, points: np.asarray(points))
    assert logic.segmenter.volume.contains_ras(world), "the control needs a click inside"
    logic.addPoint(world)
    assert dice(_segment(segmentation, lesion, volume), phantom.label == 1) < 0.3


def test_a_click_is_converted_once_and_checked_once_per_layer(scene_case, phantom,
                                                              monkeypatch) -> None:
    """One click: world -> volume RAS once (the point record), one check on the Slicer path and
    one in the session, whatever the number of points the lesion already has."""
    from SGPSAMSlicerLib import segment  # noqa: PLC0415

    scene, volume, logic = scene_case
    logic.startSession(volume)
    logic.addLesion()
    centre = _apply(VOLUME_TRANSFORM, phantom.centres_ras[0])
    logic.addPoint(centre)
    conversions: list = []
    checks: list = []
    original_convert = segment.world_to_volume_ras
    original_check = Volume.check_point

    def convert(node, points):
        conversions.append(np.asarray(points).copy())
        return original_convert(node, points)

    def check(self, ras, what="point"):
        checks.append((np.asarray(ras, dtype=float).copy(), what))
        return original_check(self, ras, what)

    monkeypatch.setattr(segment, "world_to_volume_ras", convert)
    monkeypatch.setattr(Volume, "check_point", check)
    second = centre + np.array([1.0, -1.0, 0.5])
    logic.addPoint(second, positive=False)
    assert len(conversions) == 1
    np.testing.assert_allclose(conversions[0], second)
    new_ras = original_convert(volume, second)
    on_new = [what for ras, what in checks if np.allclose(ras, new_ras)]
    assert on_new == ["point", "add_point: point"]


def test_undo_restores_the_segment_exactly_and_keeps_manual_edits(scene_case, phantom) -> None:
    scene, volume, logic = scene_case
    segmentation = logic.startSession(volume)
    lesion = logic.addLesion()
    centre = phantom.centres_ras[0]
    logic.addPoint(_apply(VOLUME_TRANSFORM, centre))
    after_first = _segment(segmentation, lesion, volume)
    # The user paints far from the lesion and erases one lesion voxel.
    edited = after_first.copy()
    edited[2:5, 2:6, 2:6] = 1
    kji = tuple(int(v) for v in np.argwhere(after_first)[0])
    edited[kji] = 0
    slicer.util.updateSegmentBinaryLabelmapFromArray(edited, segmentation, lesion, volume)

    # A negative click inside the lesion removes it (the oracle drops the clicked blob).
    result = logic.addPoint(_apply(VOLUME_TRANSFORM, centre), positive=False)
    after_negative = _segment(segmentation, lesion, volume)
    assert result.voxels_changed > 0
    assert after_negative[2:5, 2:6, 2:6].all(), "a manual edit outside the box was lost"
    assert after_negative.sum() < after_first.sum() / 4

    undone = logic.undo()
    assert undone.action == "undo"
    np.testing.assert_array_equal(_segment(segmentation, lesion, volume), edited)
    assert logic.activeMarkupsNode(False).GetNumberOfControlPoints() == 0
    assert logic.activeMarkupsNode(True).GetNumberOfControlPoints() == 1

    logic.undo()
    expected = edited.copy()
    expected[after_first > 0] = 0
    expected[kji] = 0
    # Undoing the first click restores the box it wrote exactly (the painted block lies
    # outside it and stays).
    np.testing.assert_array_equal(_segment(segmentation, lesion, volume), expected)
    assert logic.activeMarkupsNode(True).GetNumberOfControlPoints() == 0
    assert logic.undo() is None


def test_moving_and_deleting_points_in_markups_updates_the_lesion(scene_case, phantom) -> None:
    scene, volume, logic = scene_case
    segmentation = logic.startSession(volume)
    lesion = logic.addLesion()
    positive = logic.activeMarkupsNode(True)
    # The user places a point on lesion 2 (as the place tool does) and the widget syncs.
    positive.AddControlPointWorld(vtk.vtkVector3d(*_apply(VOLUME_TRANSFORM,
                                                           phantom.centres_ras[1])))
    result = logic.syncPoints()
    assert result.action == "add"
    assert dice(_segment(segmentation, lesion, volume), phantom.label == 2) >= 0.75
    assert logic.syncPoints() is None  # nothing changed since

    # Dragging it onto lesion 1 replays the points there.
    positive.SetNthControlPointPositionWorld(0, *_apply(VOLUME_TRANSFORM, phantom.centres_ras[0]))
    result = logic.syncPoints()
    assert result.action == "move"
    moved = _segment(segmentation, lesion, volume)
    assert dice(moved, phantom.label == 1) >= 0.85
    assert not np.logical_and(moved, phantom.label == 2).any()

    # Deleting it removes the model's voxels; undo brings the point and the lesion back.
    positive.RemoveNthControlPoint(0)
    assert logic.syncPoints().action == "delete"
    assert _segment(segmentation, lesion, volume).sum() == 0
    logic.undo()
    np.testing.assert_array_equal(_segment(segmentation, lesion, volume), moved)
    assert positive.GetNumberOfControlPoints() == 1

    # Reset clears the lesion (undoable too).
    assert logic.reset().action == "reset"
    assert _segment(segmentation, lesion, volume).sum() == 0
    assert positive.GetNumberOfControlPoints() == 0
    logic.undo()
    np.testing.assert_array_equal(_segment(segmentation, lesion, volume), moved)


def test_switching_lesions_continues_each_one(scene_case, phantom) -> None:
    scene, volume, logic = scene_case
    segmentation = logic.startSession(volume)
    first = logic.addLesion()
    logic.addPoint(_apply(VOLUME_TRANSFORM, phantom.centres_ras[0]))
    lesion1 = _segment(segmentation, first, volume)
    second = logic.addLesion()
    logic.addPoint(_apply(VOLUME_TRANSFORM, phantom.centres_ras[1]))
    lesion2 = _segment(segmentation, second, volume)
    logic.setActiveLesion(first)  # replays lesion 1's point: nothing is written
    np.testing.assert_array_equal(_segment(segmentation, first, volume), lesion1)
    np.testing.assert_array_equal(_segment(segmentation, second, volume), lesion2)
    logic.undo()  # undo on lesion 1 now
    assert _segment(segmentation, first, volume).sum() == 0
    np.testing.assert_array_equal(_segment(segmentation, second, volume), lesion2)

    # Voxels edited under the session (e.g. by another module): the next click restarts the
    # session on the new voxels instead of using stale ones.
    previous = logic.segmenter.volume
    slicer.util.arrayFromVolume(volume)[:] += 1.0
    slicer.util.arrayFromVolumeModified(volume)
    logic.addPoint(_apply(VOLUME_TRANSFORM, phantom.centres_ras[0]))
    assert logic.segmenter.volume is not previous
    assert dice(_segment(segmentation, first, volume), phantom.label == 1) >= 0.85


def test_segmentation_saved_as_seg_nrrd_reloads_equal(scene_case, phantom, tmp_path) -> None:
    scene, volume, logic = scene_case
    segmentation = logic.startSession(volume)
    ids = []
    for centre in phantom.centres_ras:
        ids.append(logic.addLesion())
        logic.addPoint(_apply(VOLUME_TRANSFORM, centre))
    arrays = [_segment(segmentation, sid, volume) for sid in ids]
    path = tmp_path / "lesions.seg.nrrd"
    storage = segmentation.CreateDefaultStorageNode()
    storage.SetFileName(str(path))
    assert storage.WriteData(segmentation)
    reloaded = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "reloaded")
    reader = slicer.vtkMRMLSegmentationStorageNode()
    reader.SetFileName(str(path))
    assert reader.ReadData(reloaded)
    reloaded.SetAndObserveTransformNodeID(volume.GetTransformNodeID())
    for sid, array in zip(ids, arrays):
        original = segmentation.GetSegmentation().GetSegment(sid)
        copy = reloaded.GetSegmentation().GetSegment(sid)
        assert copy.GetName() == original.GetName()
        np.testing.assert_allclose(copy.GetColor(), original.GetColor(), atol=1e-6)
        assert _terminology(copy) == LESION_TERMINOLOGY
        np.testing.assert_array_equal(_segment(reloaded, sid, volume), array)


def test_bad_inputs_raise_named_errors_and_leave_the_scene_alone(mrml, phantom) -> None:
    logic = SegmentLogic(Settings({}))
    with pytest.raises(SGPSAMError, match="no model loaded"):
        logic.startSession(_volume(mrml.scene, phantom.array, phantom.ijk_to_ras))
    logic.setModel(make_oracle_model(), "oracle", device="cpu")
    before = mrml.scene.GetNumberOfNodes()
    with pytest.raises(VolumeError, match="no input volume"):
        logic.startSession(None)
    flat = _volume(mrml.scene, phantom.array[:1], phantom.ijk_to_ras, "flat")
    before = mrml.scene.GetNumberOfNodes()
    with pytest.raises(VolumeError, match="flat.*single slice"):
        logic.startSession(flat)
    constant = _volume(mrml.scene, np.zeros((4, 5, 6), np.int16), np.eye(4), "blank")
    before = mrml.scene.GetNumberOfNodes()
    with pytest.raises(VolumeError, match="blank.*constant"):
        logic.startSession(constant)
    assert mrml.scene.GetNumberOfNodes() == before
    with pytest.raises(SGPSAMError, match="not initialized"):
        logic.addPoint([0.0, 0.0, 0.0])

    volume = _volume(mrml.scene, phantom.array, phantom.ijk_to_ras, "good")
    segmentation = logic.startSession(volume)
    with pytest.raises(SGPSAMError, match="no active lesion"):
        logic.addPoint([0.0, 0.0, 0.0])
    lesion = logic.addLesion()
    before = mrml.scene.GetNumberOfNodes()
    with pytest.raises(PromptError, match=r"outside the volume 'good'"):
        logic.addPoint([900.0, 0.0, 0.0])
    assert logic.activeMarkupsNode(True).GetNumberOfControlPoints() == 0
    # A point the user places outside is refused and taken out of the list again.
    logic.activeMarkupsNode(False).AddControlPointWorld(vtk.vtkVector3d(0.0, 900.0, 0.0))
    with pytest.raises(PromptError, match="negative point"):
        logic.syncPoints()
    assert logic.activeMarkupsNode(False).GetNumberOfControlPoints() == 0
    assert mrml.scene.GetNumberOfNodes() == before
    assert _segment(segmentation, lesion, volume).sum() == 0


# ----------------------------------------------------------------------------------------------
# Settings.

def test_settings_validate_convert_and_fall_back_to_defaults() -> None:
    store: dict = {}
    settings = Settings(store)
    assert settings["device"] == "auto" and settings.model_spec() == "demo"
    settings.update({"model": "local", "checkpointPath": "/x/model.pt", "device": "cpu"})
    assert settings.model_spec() == "/x/model.pt"
    assert store["SGPSAM/device"] == "cpu"
    with pytest.raises(ValueError, match="'device' must be one of"):
        settings["device"] = "tpu"
    with pytest.raises(ValueError):
        settings.update({"modality": "CT", "device": "gpu"})
    assert settings["modality"] == "auto"  # nothing stored from the failed update
    store["SGPSAM/promptMode"] = "everything"  # a hand-edited settings file
    assert settings["promptMode"] == "latest"
    store["SGPSAM/downloadConsent"] = "true"  # QSettings returns strings on some platforms
    assert settings["downloadConsent"] is True
    with pytest.raises(KeyError, match="unknown setting"):
        settings["colour"]


def test_qsettings_store_adapts_a_qsettings_like_object() -> None:
    class FakeQSettings:
        def __init__(self) -> None:
            self.values: dict = {"Other/key": 1}

        def value(self, key):
            return self.values.get(key)

        def setValue(self, key, value) -> None:  # noqa: N802 - Qt's name
            self.values[key] = value

        def contains(self, key) -> bool:
            return key in self.values

        def remove(self, key) -> None:
            del self.values[key]

        def allKeys(self):  # noqa: N802
            return list(self.values)

    fake = FakeQSettings()
    settings = Settings(QSettingsStore(fake))
    settings["device"] = "cuda"
    assert fake.values["SGPSAM/device"] == "cuda"
    assert Settings(QSettingsStore(fake))["device"] == "cuda"
    assert list(QSettingsStore(fake)) == ["SGPSAM/device"]
    settings.reset("device")
    assert settings["device"] == "auto" and "SGPSAM/device" not in fake.values
