"""Issue 15 on real MRML: markups events (preview points, deferred lesion switching), place-mode
persistence, the session's nodes deleted, the model released, the auto-picked volume, the
lesion terminology."""
from __future__ import annotations

import gc
import weakref

import pytest

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")

from SGPSAMSlicerLib import mrml_geometry  # noqa: E402
from SGPSAMSlicerLib.logic import SegmentLogic  # noqa: E402
from SGPSAMSlicerLib.mrml_nodes import first_input_volume, nodes_by_class  # noqa: E402
from SGPSAMSlicerLib.place_mode import PlaceMode  # noqa: E402
from SGPSAMSlicerLib.point_events import RETRY_MS, PointEventFilter  # noqa: E402
from SGPSAMSlicerLib.segment import LESION_TERMINOLOGY  # noqa: E402
from SGPSAMSlicerLib.selftest import make_oracle_model, make_phantom  # noqa: E402
from SGPSAMSlicerLib.settings import Settings  # noqa: E402

from SGPSAMLib.errors import SGPSAMError  # noqa: E402


class FakeTimer:
    """``schedule(delay_ms, callback)`` that only records; ``fire()`` runs what is due."""

    def __init__(self) -> None:
        self.queue: list[tuple[int, object]] = []

    def __call__(self, delay_ms: int, callback) -> None:
        self.queue.append((delay_ms, callback))

    def fire(self) -> list[int]:
        due, self.queue = self.queue, []
        for _, callback in due:
            callback()
        return [delay for delay, _ in due]


@pytest.fixture
def session(mrml):
    phantom = make_phantom(seed=5)
    volume = mrml.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "phantom")
    slicer.util.updateVolumeFromArray(volume, phantom.array)
    volume.SetIJKToRASMatrix(mrml_geometry.vtk_from_matrix(phantom.ijk_to_ras))
    logic = SegmentLogic(Settings({}))
    logic.setModel(make_oracle_model(), "oracle", device="cpu")
    segmentation = logic.startSession(volume)
    logic.addLesion()
    return logic, volume, segmentation, phantom


def _add_defined(node, ras) -> int:
    return node.AddControlPointWorld(vtk.vtkVector3d(*[float(v) for v in ras]))


def test_preview_points_and_no_op_events_schedule_nothing(session) -> None:
    logic, volume, _, phantom = session
    timer = FakeTimer()
    runs = []
    events = PointEventFilter(logic, timer, run=lambda title, f, *a: runs.append(title) or f(*a))
    positive = logic.activeMarkupsNode(True)
    centre = mrml_geometry.volume_ras_to_world(volume, phantom.centres_ras[0])

    # Place mode: the markups widget adds a preview point (PointAddedEvent, not observed) and
    # moves it with the mouse: positions with status "preview" (UpdatePreviewPoint).
    index = positive.AddControlPoint(vtk.vtkVector3d(*centre))
    positive.SetNthControlPointPositionWorld(index, *centre, positive.PositionPreview)
    events.observe()
    for step in range(20):
        positive.SetNthControlPointPositionWorld(index, *(centre + step * 0.5),
                                                 positive.PositionPreview)
    assert timer.queue == [] and runs == [] and not logic.pointsChanged(positive)
    # The click defines it: exactly one deferred update, nothing ran inside the events.
    positive.SetNthControlPointPositionWorld(index, *centre, positive.PositionDefined)
    assert runs == [] and [delay for delay, _ in timer.queue] == [0]
    timer.fire()
    assert runs == ["Update"] and logic.lastResult.action == "add"
    # Touching the list without changing a point (display, label) schedules nothing.
    positive.SetNthControlPointLabel(index, "renamed")
    positive.GetDisplayNode().SetSelectedColor(0.1, 0.2, 0.3)
    assert timer.queue == []
    # A drag: nothing until it ends, then one update.
    positive.InvokeEvent(positive.PointStartInteractionEvent)
    for step in range(5):
        positive.SetNthControlPointPositionWorld(index, *(centre + [0.5 * step, 0, 0]))
    assert timer.queue == []
    positive.InvokeEvent(positive.PointEndInteractionEvent)
    assert len(timer.queue) == 1
    timer.fire()
    assert runs == ["Update", "Update"] and logic.lastResult.action == "move"
    events.unobserve()
    positive.SetNthControlPointPositionWorld(index, *centre)
    assert timer.queue == []


def test_lesion_switch_is_deferred_and_waits_for_a_running_prediction(session) -> None:
    logic, volume, segmentation, phantom = session
    first = logic.activeLesion()
    first_list = logic.activeMarkupsNode(True)
    second = logic.addLesion()
    timer = FakeTimer()
    busy = [True]
    switched, results, calls = [], [], []

    def run(title, function, *args):
        calls.append(title)
        return function(*args)

    events = PointEventFilter(logic, timer, run=run, busy=lambda: busy[0],
                              on_lesion_switched=lambda: switched.append(logic.activeLesion()),
                              on_result=results.append)
    events.observe()
    # The user drops a point into lesion 1's list while lesion 2 is active.
    _add_defined(first_list, mrml_geometry.volume_ras_to_world(volume, phantom.centres_ras[0]))
    assert logic.activeLesion() == second and calls == []  # nothing inside the VTK event
    assert timer.fire() == [0]
    assert calls == [] and [delay for delay, _ in timer.queue] == [RETRY_MS]  # busy: retry
    busy[0] = False
    timer.fire()
    assert calls == ["Choose lesion", "Update"] and switched == [first]
    assert logic.activeLesion() == first and results[-1].action == "add"
    mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, first, volume)
    assert mask.sum() > 0
    assert slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, second, volume).sum() == 0


def test_place_mode_restores_the_users_persistence(mrml) -> None:
    interaction = mrml.app_logic.GetInteractionNode()
    place = PlaceMode.from_application_logic(mrml.app_logic)
    node = mrml.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "F")
    interaction.SetPlaceModePersistence(0)
    place.start(node)
    assert place.placing and interaction.GetPlaceModePersistence() == 1
    assert mrml.app_logic.GetSelectionNode().GetActivePlaceNodeID() == node.GetID()
    place.start(node)  # switching lists keeps the saved value
    place.stop()
    assert not place.placing and interaction.GetPlaceModePersistence() == 0
    # Ended in a view (right-click): the mode changes; persistence comes back too.
    place.start(node)
    interaction.SetCurrentInteractionMode(interaction.ViewTransform)
    assert place.interaction_mode_changed() is True
    assert interaction.GetPlaceModePersistence() == 0
    # A user who had persistence on keeps it.
    interaction.SetPlaceModePersistence(1)
    place.start(node)
    place.stop()
    assert interaction.GetPlaceModePersistence() == 1
    place.stop()  # not placing: nothing to do, nothing changes
    assert interaction.GetCurrentInteractionMode() == interaction.ViewTransform


@pytest.mark.parametrize("which", ["volume", "segmentation"])
def test_removing_the_sessions_node_ends_the_session(session, mrml, which) -> None:
    logic, volume, segmentation, phantom = session
    ended = []
    logic.onSessionEnded = ended.append
    other = mrml.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "other")
    mrml.scene.RemoveNode(other)
    assert logic.hasSession() and ended == []
    mrml.scene.RemoveNode(volume if which == "volume" else segmentation)
    assert not logic.hasSession() and len(ended) == 1 and which in ended[0]
    with pytest.raises(SGPSAMError, match="not initialized"):
        logic.addPoint(phantom.centres_ras[0])
    # Removing the other node later does not call back again (the observer is gone).
    mrml.scene.RemoveNode(segmentation if which == "volume" else volume)
    assert len(ended) == 1


def test_release_model_frees_it(session) -> None:
    logic, *_ = session
    model = weakref.ref(logic.model)
    logic.releaseModel()
    gc.collect()
    assert model() is None and logic.model is None and not logic.hasSession()
    assert logic.device is None
    with pytest.raises(SGPSAMError, match="no model loaded"):
        logic.startSession(first_input_volume(slicer.mrmlScene))


def test_first_input_volume_is_one_the_selector_shows(mrml) -> None:
    scene = mrml.scene
    assert first_input_volume(scene) is None
    scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    hidden = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "hidden")
    hidden.SetHideFromEditors(True)
    assert first_input_volume(scene) is None
    ct = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "ct")
    assert first_input_volume(scene) is ct
    assert [n.GetName() for n in nodes_by_class(scene, "vtkMRMLScalarVolumeNode")] == [
        "labels", "hidden", "ct"]


def test_lesion_terminology_is_mass_of_the_general_anatomy_list() -> None:
    """'Morphologically Altered Structure / Mass' as in Slicer 5.8/5.10's
    SegmentationCategoryTypeModifier-SlicerGeneralAnatomy.json (Lesion is in no shipped
    context); Slicer's serialisation: context~category~type~modifier~region context~...~..."""
    parts = LESION_TERMINOLOGY.split("~")
    assert len(parts) == 7
    assert parts[0] == "Segmentation category and type - 3D Slicer General Anatomy list"
    assert parts[1] == "SCT^49755003^Morphologically Altered Structure"
    assert parts[2] == "SCT^4147007^Mass"
    assert "52988006" not in LESION_TERMINOLOGY
    assert all(len(part.split("^")) == 3 for index, part in enumerate(parts) if index not in (0, 4))


def test_lesions_list_and_session_nodes(session) -> None:
    logic, volume, segmentation, _ = session
    assert logic.sessionNodes() == (volume, segmentation)
    second = logic.addLesion()
    assert [name for _, name in logic.lesions()] == ["Lesion 1", "Lesion 2"]
    assert logic.lesions()[-1][0] == second
    nodes = logic.markupsNodes()
    assert len(nodes) == 4 and logic.lesionOfMarkups(nodes[-1]) == second
    assert logic.lesionOfMarkups(volume) is None and logic.pointsChanged(volume) is False
    logic.endSession()
    assert logic.sessionNodes() == (None, None) and logic.lesions() == []
