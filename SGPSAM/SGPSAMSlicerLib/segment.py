"""Point-prompted lesion segmentation on MRML nodes: markups in, one segment updated.

:class:`LesionSegmenter` joins an ``SGPSAMLib.session.InteractiveSession`` to a volume node, a
segmentation node and, per lesion, two markups point lists (positive, negative). It needs no
Qt, so it runs in plain Python against real MRML (``slicer-core``) as well as in Slicer.

Policies (each one deliberate, each one tested):

- **One lesion = one segment** with a lesion terminology and its own colour; several lesions
  are several segments. Any existing segment can be made the active lesion ("edit").
- **Points are markups.** Each lesion has a positive and a negative point list. Whatever the
  user does to them (place, drag, delete), :meth:`LesionSegmenter.sync_points` compares the
  lists with the points it knows and runs the model: a new point at the end costs one decode;
  a moved or deleted point replays the lesion's points (the embedding is cached, so decodes
  only). A point outside the volume is refused and taken out of the list again.
- **Only the active segment, only the changed box.** The session reports the box of voxels
  its mask changed (``Prediction.changed_bbox``); only voxels inside that box **whose
  prediction changed** are written: switched on -> set, switched off -> cleared. Everything
  else keeps its value: other segments (Slicer keeps overlapping segments on separate
  layers), voxels of the same segment outside the box, and voxels inside the box that the
  user painted or erased and the model did not change. So when editing an existing segment
  the model's lesion is merged into it (union), and the model never removes voxels it did not
  add itself. The session's mask is the record of what the model owns.
- **Undo** (per lesion, one step per action): before every write the segment's content in
  the box is kept; undo writes it back exactly, puts the points back as they were and brings
  the session to the same state (``InteractiveSession.undo`` for an added point, a replay
  otherwise). Exact as long as the segmentation's labelmap grid is the volume's grid, which
  holds for segmentations this class creates (their reference geometry is the volume's).
- **Lesion switch** (:meth:`set_active_lesion`) resets the session and replays that lesion's
  points without writing anything (the prediction is deterministic; the embedding cache
  survives ``reset``).
- **Geometry**: the session works in the volume's own RAS frame; markups positions (world
  RAS, their own parent transforms applied by MRML) go through the volume's parent transform
  (:mod:`.mrml_geometry`). Results are written on the volume's voxel grid mapped into the
  segmentation's frame.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import slicer
import vtk

from SGPSAMLib.boxes import BBox, bbox_union
from SGPSAMLib.errors import PromptError, SGPSAMError
from SGPSAMLib.palette import LESION_COLORS, lesion_color

from .mrml_geometry import (
    volume_from_node,
    volume_ijk_to_segmentation_matrix,
    world_to_volume_ras,
)
from .mrml_nodes import nodes_by_class
from .segment_voxels import read_segment_box, write_segment_box

__all__ = [
    "LesionSegmenter", "EditedLesion", "PointRecord", "ClickResult", "LESION_TERMINOLOGY",
    "LESION_COLORS", "POSITIVE_COLOR", "NEGATIVE_COLOR", "ROLE_ATTRIBUTE", "SEGMENT_ATTRIBUTE",
]

log = logging.getLogger(__name__)

#: SNOMED-CT "Morphologically Altered Structure / Mass" of the terminology context Slicer ships
#: and selects by default ("3D Slicer General Anatomy list"; the DICOM master list has the same
#: codes), serialised as Slicer's terminology selector stores it in a segment's
#: ``TerminologyEntry`` tag. ("Lesion", SCT 52988006, is in no context Slicer ships, so the
#: selector could not show it.)
LESION_TERMINOLOGY = (
    "Segmentation category and type - 3D Slicer General Anatomy list"
    "~SCT^49755003^Morphologically Altered Structure~SCT^4147007^Mass~^^"
    "~Anatomic codes - DICOM master list~^^~^^"
)
POSITIVE_COLOR = (0.15, 0.85, 0.25)
NEGATIVE_COLOR = (0.95, 0.15, 0.15)
ROLE_ATTRIBUTE = "SGPSAM.Role"          # "positive" | "negative" on a lesion's markups node
SEGMENT_ATTRIBUTE = "SGPSAM.SegmentID"  # the segment a markups node prompts
SEGMENTATION_REFERENCE = "SGPSAMSegmentation"
ROLES = ("positive", "negative")
# Positions closer than this (mm) count as unchanged (float round trips through VTK).
_MOVE_TOLERANCE_MM = 1e-4


@dataclass
class PointRecord:
    """A point the segmenter knows: its list, its control point ID and where it is.

    Attributes:
        role: "positive" or "negative" (which of the lesion's lists holds it).
        point_id: the control point's ID in that list.
        world: (3,) world RAS mm, as the markups node reports it (what ``_restore_markups``
            puts back).
        ras: (3,) the same point in the volume's own RAS frame (what the session gets),
            converted once when the record is made (:meth:`LesionSegmenter._record`).
    """

    role: str
    point_id: str
    world: np.ndarray
    ras: np.ndarray

    @property
    def positive(self) -> bool:
        return self.role == "positive"


@dataclass
class _UndoStep:
    box: BBox | None
    before: np.ndarray | None
    points_before: list[PointRecord]
    kind: str


@dataclass
class EditedLesion:
    """A lesion being edited: its segment, its point lists, its points in click order and
    undo steps (``seeds.SeedLesion`` is a batch lesion's seeds, ``cases.LabelLesion`` one
    found in a label map)."""

    segment_id: str
    nodes: dict[str, Any]
    points: list[PointRecord] = field(default_factory=list)
    undo_steps: list[_UndoStep] = field(default_factory=list)
    box: BBox | None = None  # union of every box the session changed for this lesion


@dataclass
class ClickResult:
    """What one action did, for the status and timing lines.

    Attributes:
        segment_id: the lesion's segment.
        action: "add", "move", "delete", "replay", "reset", "undo" or "none".
        changed_bbox: array-order (K, J, I) box that was written, or None.
        voxels_changed: voxels of the segment whose value changed.
        lesion_voxels: voxels the model holds for this lesion now.
        seconds: wall time of the whole action (model + segment update).
        timings: the session's breakdown (encode, decode, ...) summed over the action.
        message: one line for the user.
    """

    segment_id: str
    action: str
    changed_bbox: BBox | None
    voxels_changed: int
    lesion_voxels: int
    seconds: float
    timings: dict[str, float]
    message: str


# ----------------------------------------------------------------------------------------------
# The segmenter.

def _sum_timings(total: dict[str, float], add: dict[str, float]) -> None:
    for key, value in add.items():
        total[key] = total.get(key, 0.0) + float(value)


class LesionSegmenter:
    """Interactive lesion segmentation of one volume into one segmentation node.

    Args:
        session: an ``InteractiveSession`` (its model and device); ``set_volume`` is called here.
        volume_node: the CT/MRI scalar volume.
        segmentation_node: where lesions go; created (named after the volume, same parent
            transform, the volume as reference geometry) when None.
        modality: "auto", "CT" or "MR" (intensity normalisation).

    Raises:
        VolumeError: no volume, not a scalar volume, a 2-D image, constant voxels... (the scene
            is unchanged: nothing is created before the volume passes).
    """

    def __init__(self, session, volume_node, segmentation_node=None, modality: str = "auto"
                 ) -> None:
        volume = volume_from_node(volume_node)
        session.set_volume(volume, modality=modality)
        self.session = session
        self.volume_node = volume_node
        self.volume = volume
        self._fingerprint = self._volume_fingerprint()
        if segmentation_node is None:
            segmentation_node = self._new_segmentation_node()
        self.segmentation_node = segmentation_node
        self.ijk_to_segmentation = volume_ijk_to_segmentation_matrix(volume_node,
                                                                     segmentation_node)
        self._ensure_labelmap_source()
        self._synced = np.zeros(volume.array.shape, dtype=np.uint8)
        self.lesions: dict[str, EditedLesion] = {}
        self.active_id: str | None = None
        self._updating_markups = False

    # ------------------------------------------------------------------------------------------
    # Nodes.

    @property
    def scene(self):
        return self.volume_node.GetScene()

    def _volume_fingerprint(self) -> tuple:
        """Changes when the voxels or the voxel grid change (not on renames or display)."""
        image = self.volume_node.GetImageData()
        matrix = vtk.vtkMatrix4x4()
        self.volume_node.GetIJKToRASMatrix(matrix)
        grid = tuple(matrix.GetElement(r, c) for r in range(3) for c in range(4))
        return (id(image), image.GetMTime() if image is not None else 0, grid)

    def _new_segmentation_node(self):
        scene = self.scene
        name = scene.GenerateUniqueName(f"{self.volume_node.GetName()} lesions")
        node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
        node.CreateDefaultDisplayNodes()
        parent = self.volume_node.GetParentTransformNode()
        if parent is not None:
            node.SetAndObserveTransformNodeID(parent.GetID())
        # After the transform: Slicer maps the volume's grid into the segmentation's frame
        # as it is now, so the reference geometry is then exactly the volume's own grid.
        node.SetReferenceImageGeometryParameterFromVolumeNode(self.volume_node)
        return node

    def _ensure_labelmap_source(self) -> None:
        """Segments are edited as binary labelmaps (as the Segment Editor does)."""
        node = self.segmentation_node
        segmentation = node.GetSegmentation()
        binary = slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName()
        getter = getattr(segmentation, "GetSourceRepresentationName", None) or \
            segmentation.GetMasterRepresentationName
        if getter() == binary:
            return
        node.CreateBinaryLabelmapRepresentation()
        setter = getattr(node, "SetSourceRepresentationToBinaryLabelmap", None) or \
            node.SetMasterRepresentationToBinaryLabelmap
        setter()

    def _segment(self, segment_id: str):
        segment = self.segmentation_node.GetSegmentation().GetSegment(segment_id)
        if segment is None:
            raise SGPSAMError(f"segment {segment_id!r} is not in "
                              f"{self.segmentation_node.GetName()!r} (deleted?); choose another "
                              "lesion or press Add lesion")
        return segment

    def _markups_nodes(self, segment_id: str) -> dict[str, Any]:
        scene = self.scene
        segment = self._segment(segment_id)
        nodes = {}
        for role, color, sign in (("positive", POSITIVE_COLOR, "+"),
                                  ("negative", NEGATIVE_COLOR, "-")):
            name = scene.GenerateUniqueName(f"{segment.GetName()} {role}")
            node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
            node.CreateDefaultDisplayNodes()
            display = node.GetDisplayNode()
            if display is not None:
                display.SetSelectedColor(*color)
                display.SetColor(*color)
                if hasattr(display, "SetActiveColor"):
                    display.SetActiveColor(*color)
            node.SetControlPointLabelFormat(f"{sign}%d")
            node.SetAttribute(ROLE_ATTRIBUTE, role)
            node.SetAttribute(SEGMENT_ATTRIBUTE, segment_id)
            node.SetNodeReferenceID(SEGMENTATION_REFERENCE, self.segmentation_node.GetID())
            parent = self.volume_node.GetParentTransformNode()
            if parent is not None:  # the points move with the image
                node.SetAndObserveTransformNodeID(parent.GetID())
            nodes[role] = node
        return nodes

    def _existing_markups_nodes(self, segment_id: str) -> dict[str, Any] | None:
        """Point lists made earlier for this segment of this segmentation (a saved scene)."""
        found: dict[str, Any] = {}
        for node in nodes_by_class(self.scene, "vtkMRMLMarkupsFiducialNode"):
            role = node.GetAttribute(ROLE_ATTRIBUTE)
            if role in ROLES and role not in found and \
                    node.GetAttribute(SEGMENT_ATTRIBUTE) == segment_id and \
                    node.GetNodeReferenceID(SEGMENTATION_REFERENCE) == \
                    self.segmentation_node.GetID():
                found[role] = node
        return found if len(found) == len(ROLES) else None

    def _nodes_alive(self, lesion: EditedLesion) -> bool:
        return all(node is not None and node.GetScene() is self.scene
                   and self.scene.GetNodeByID(node.GetID()) is node
                   for node in lesion.nodes.values())

    # ------------------------------------------------------------------------------------------
    # Lesions.

    @property
    def active(self) -> EditedLesion | None:
        return self.lesions.get(self.active_id) if self.active_id else None

    def add_lesion(self, name: str | None = None) -> str:
        """A new empty segment with the lesion terminology, made the active lesion."""
        segmentation = self.segmentation_node.GetSegmentation()
        number = segmentation.GetNumberOfSegments() + 1
        existing = {segmentation.GetNthSegment(n).GetName()
                    for n in range(segmentation.GetNumberOfSegments())}
        if name is None:
            while f"Lesion {number}" in existing:
                number += 1
            name = f"Lesion {number}"
        color = lesion_color(number)
        segment_id = segmentation.AddEmptySegment("", name, list(color))
        segment = segmentation.GetSegment(segment_id)
        segment.SetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), LESION_TERMINOLOGY)
        self.set_active_lesion(segment_id)
        return segment_id

    def set_active_lesion(self, segment_id: str) -> EditedLesion:
        """Make a segment (new, earlier or pre-existing) the one the points edit.

        The session is reset and the lesion's own points replayed, so later clicks continue it;
        nothing is written to the segmentation.
        """
        self._segment(segment_id)
        lesion = self.lesions.get(segment_id)
        fresh = lesion is None or not self._nodes_alive(lesion)
        if fresh:
            if lesion is not None:
                log.info("point lists of %s were removed; its points start afresh (its voxels "
                         "stay)", segment_id)
            existing = self._existing_markups_nodes(segment_id)
            lesion = EditedLesion(segment_id, existing or self._markups_nodes(segment_id))
            if existing:  # continue from the points saved with the scene
                lesion.points = self.current_points(lesion)
            self.lesions[segment_id] = lesion
        if fresh or segment_id != self.active_id:
            self._switch_session(lesion)
        self.active_id = segment_id
        return lesion

    def _switch_session(self, lesion: EditedLesion) -> None:
        self.session.reset()
        self._synced.fill(0)
        box, _ = self._replay(lesion.points)
        if box is not None:
            self._synced[box] = self.session.state.mask[box]
        lesion.box = bbox_union(lesion.box, box)

    def lesion_of_markups(self, markups_node) -> str | None:
        """Segment ID of a lesion's point list (None for other nodes)."""
        if markups_node is None:
            return None
        for lesion in self.lesions.values():
            if any(node is markups_node for node in lesion.nodes.values()):
                return lesion.segment_id
        return None

    def markups_nodes(self) -> list:
        """Every point list of every lesion (for observers)."""
        return [node for lesion in self.lesions.values() for node in lesion.nodes.values()]

    # ------------------------------------------------------------------------------------------
    # Points.

    def _require_active(self) -> EditedLesion:
        lesion = self.active
        if lesion is None:
            raise SGPSAMError("no active lesion: press 'Add lesion' (or choose a segment) first")
        self._segment(lesion.segment_id)
        if not self._nodes_alive(lesion):
            lesion = self.set_active_lesion(lesion.segment_id)
        return lesion

    def _check_volume_unchanged(self) -> None:
        """Start the session again if the volume's voxels or geometry changed under it."""
        if self._volume_fingerprint() == self._fingerprint:
            return
        log.info("volume %s changed; restarting the session", self.volume_node.GetName())
        volume = volume_from_node(self.volume_node)
        self.session.set_volume(volume, modality=self.session.state.modality)
        self.volume = volume
        self._fingerprint = self._volume_fingerprint()
        self.ijk_to_segmentation = volume_ijk_to_segmentation_matrix(self.volume_node,
                                                                     self.segmentation_node)
        self._synced = np.zeros(volume.array.shape, dtype=np.uint8)
        lesion = self.active
        if lesion is not None:
            box, _ = self._replay(lesion.points)
            if box is not None:
                self._synced[box] = self.session.state.mask[box]
            lesion.box = box

    def _record(self, role: str, point_id: str, world: Sequence[float]) -> PointRecord:
        """A point as the segmenter keeps it: world RAS converted to the volume's RAS once."""
        world = np.asarray(world, dtype=np.float64).reshape(-1)
        ras = world_to_volume_ras(self.volume_node, world) if world.shape == (3,) else world
        return PointRecord(role, point_id, world, np.asarray(ras, dtype=np.float64))

    def current_points(self, lesion: EditedLesion | None = None) -> list[PointRecord]:
        """The defined control points of a lesion's lists (world RAS), in list order."""
        lesion = lesion or self._require_active()
        points = []
        for role in ROLES:
            node = lesion.nodes[role]
            for index in range(node.GetNumberOfControlPoints()):
                if node.GetNthControlPointPositionStatus(index) != node.PositionDefined:
                    continue
                position = [0.0, 0.0, 0.0]
                node.GetNthControlPointPositionWorld(index, position)
                points.append(self._record(role, node.GetNthControlPointID(index), position))
        return points

    def add_point(self, world_ras: Sequence[float], positive: bool = True) -> ClickResult:
        """Add a control point to the active lesion's list and update the segment.

        Raises:
            PromptError: the point is not 3 finite numbers or outside the volume (nothing is
                added).
        """
        lesion = self._require_active()
        role = "positive" if positive else "negative"
        record = self._record(role, "", world_ras)
        self.volume.check_point(record.ras, "point")  # before the list is touched
        node = lesion.nodes[role]
        self._updating_markups = True
        try:
            index = node.AddControlPointWorld(vtk.vtkVector3d(*[float(v) for v in record.world]))
        finally:
            self._updating_markups = False
        record.point_id = node.GetNthControlPointID(index)
        return self._apply(lesion, [*lesion.points, record], "add", checked=1)

    def _point_changes(self, lesion: EditedLesion) -> tuple[list[PointRecord], str] | None:
        """(new point list, kind of change) when the lesion's lists differ from the points
        it knows; None when they hold the same points (preview points do not count)."""
        current = self.current_points(lesion)
        known = {(p.role, p.point_id): p for p in lesion.points}
        now = {(p.role, p.point_id): p for p in current}
        kept = []
        moved = False
        for key, point in known.items():
            if key not in now:
                continue
            new = now[key]
            if np.max(np.abs(new.world - point.world)) > _MOVE_TOLERANCE_MM:
                moved = True
            kept.append(new)
        added = [p for key, p in now.items() if key not in known]
        removed = len(kept) < len(lesion.points)
        if not added and not removed and not moved:
            return None
        if added and not removed and not moved and len(added) == 1:
            kind = "add"
        else:
            kind = "move" if moved and not removed and not added else (
                "delete" if removed and not moved and not added else "replay")
        return kept + added, kind

    def points_changed(self, segment_id: str | None = None) -> bool:
        """Whether a lesion's point lists (default: the active one) differ from what the
        segment shows: cheap, no model. False for preview points (a point that follows the
        mouse while placing), for our own edits and for unknown segments."""
        if self._updating_markups:
            return False
        lesion = self.lesions.get(segment_id) if segment_id is not None else self.active
        if lesion is None or not self._nodes_alive(lesion):
            return False
        return self._point_changes(lesion) is not None

    def sync_points(self) -> ClickResult | None:
        """Bring the segment in line with the active lesion's point lists (after user edits).

        Returns None when the lists hold the points already known (e.g. a point still being
        placed, or our own edits).
        """
        if self._updating_markups:
            return None
        lesion = self._require_active()
        changes = self._point_changes(lesion)
        if changes is None:
            return None
        points, kind = changes
        return self._apply(lesion, points, kind)

    def reset(self) -> ClickResult | None:
        """Remove the active lesion's points and the voxels the model set for it (undoable)."""
        lesion = self._require_active()
        if not lesion.points and lesion.box is None:
            return None
        return self._apply(lesion, [], "reset")

    # ------------------------------------------------------------------------------------------
    # Running the model and writing the result.

    def _replay(self, points: list[PointRecord]) -> tuple[BBox | None, dict[str, float]]:
        """Feed points to the (reset) session in order -> (union of changed boxes, timings)."""
        box, timings = None, {}
        for point in points:
            prediction = self.session.add_point(point.ras, positive=point.positive)
            box = bbox_union(box, prediction.changed_bbox)
            _sum_timings(timings, prediction.timings)
        return box, timings

    def _apply(self, lesion: EditedLesion, points: list[PointRecord], kind: str,
               checked: int = 0) -> ClickResult:
        """Run the model for the new point list, write the changed voxels, record undo.

        Every point is checked once (:meth:`SGPSAMLib.geometry.Volume.check_point`) before
        anything changes; the last ``checked`` ones were checked by the caller already. On any
        failure the session, the segment and the point lists are as before.
        """
        start = time.perf_counter()
        self._check_volume_unchanged()
        state_points = list(lesion.points)
        timings: dict[str, float] = {}
        try:
            for point in points[:len(points) - checked]:
                self.volume.check_point(point.ras, f"{point.role} point")
        except PromptError:
            self._restore_markups(lesion, state_points)
            raise
        written: list = []
        try:
            session_undo = kind == "add" and self._same(points[:-1], state_points)
            if session_undo:
                new = points[-1]
                prediction = self.session.add_point(new.ras, positive=new.positive)
                box = prediction.changed_bbox
                _sum_timings(timings, prediction.timings)
            else:
                self.session.reset()
                replay_box, timings = self._replay(points)
                box = bbox_union(lesion.box, replay_box)
            changed, before = self._write_delta(lesion, box, written)
        except BaseException:
            self._rollback_failed(lesion, state_points, written)
            raise
        lesion.undo_steps.append(_UndoStep(box, before, state_points,
                                           "session" if session_undo else "replay"))
        lesion.points = points
        if kind == "reset":
            self._restore_markups(lesion, points)
        lesion.box = bbox_union(lesion.box, box)
        seconds = time.perf_counter() - start
        voxels = int(self.session.state.voxels)
        message = self._message(kind, lesion, changed, voxels, seconds)
        message += self._warnings(points, voxels)
        return ClickResult(lesion.segment_id, kind, box, changed, voxels, seconds, timings,
                           message)

    def _warnings(self, points: list[PointRecord], voxels: int) -> str:
        """' Warning: ...' for an empty mask or a positive point on background/air, or ''."""
        from SGPSAMLib.result_checks import (  # noqa: PLC0415
            background_level,
            prediction_warnings,
        )

        positives = [(f"{p.role} point {p.point_id}", p.ras) for p in points if p.positive]
        if not positives:
            return ""
        if getattr(self, "_background", (None,))[0] is not self.volume:
            self._background = (self.volume, background_level(self.volume))
        warnings = prediction_warnings(self.volume, voxels, positives,
                                       level=self._background[1])
        return "".join(f" Warning: {text}." for text in warnings)

    @staticmethod
    def _same(a: list[PointRecord], b: list[PointRecord]) -> bool:
        return len(a) == len(b) and all(
            p.role == q.role and p.point_id == q.point_id and np.allclose(p.world, q.world)
            for p, q in zip(a, b))

    def _rollback_failed(self, lesion: EditedLesion, points: list[PointRecord], written: list
                         ) -> None:
        """After a failure: segment, session and point lists back to where they were."""
        try:
            for box, before in written:
                write_segment_box(self.segmentation_node, lesion.segment_id,
                                  self.ijk_to_segmentation, box, before)
            self.session.reset()
            box, _ = self._replay(points)
            self._synced.fill(0)
            if box is not None:
                self._synced[box] = self.session.state.mask[box]
        except Exception:  # noqa: BLE001 - already failing; keep the first error
            log.exception("could not restore the session after an error")
        self._restore_markups(lesion, points)

    def _write_delta(self, lesion: EditedLesion, box: BBox | None, written: list
                     ) -> tuple[int, np.ndarray | None]:
        """Write voxels whose prediction changed inside ``box``; -> (count, segment before).

        ``written`` receives (box, before) once the segment was modified (for a rollback).
        """
        if box is None:
            return 0, None
        new = self.session.state.mask[box]
        switched = new != self._synced[box]
        count = int(np.count_nonzero(switched))
        if not count:
            return 0, None
        before = read_segment_box(self.segmentation_node, lesion.segment_id,
                                  self.ijk_to_segmentation, box)
        after = before.copy()
        after[switched] = new[switched]
        if not np.array_equal(after, before):
            written.append((box, before))
            write_segment_box(self.segmentation_node, lesion.segment_id,
                              self.ijk_to_segmentation, box, after)
        self._synced[box] = new
        return count, before

    def undo(self) -> ClickResult | None:
        """Take back the active lesion's last action exactly; None if there is none."""
        lesion = self._require_active()
        if not lesion.undo_steps:
            return None
        start = time.perf_counter()
        step = lesion.undo_steps.pop()
        timings: dict[str, float] = {}
        box = step.box
        if step.kind == "session":
            prediction = self.session.undo()
            if prediction is not None:
                box = bbox_union(box, prediction.changed_bbox)
        else:
            self.session.reset()
            replay_box, timings = self._replay(step.points_before)
            box = bbox_union(box, lesion.box, replay_box)
        if step.box is not None and step.before is not None:
            current = read_segment_box(self.segmentation_node, lesion.segment_id,
                                       self.ijk_to_segmentation, step.box)
            if not np.array_equal(current, step.before):
                write_segment_box(self.segmentation_node, lesion.segment_id,
                                  self.ijk_to_segmentation, step.box, step.before)
        if box is not None:
            self._synced[box] = self.session.state.mask[box]
        self._restore_markups(lesion, step.points_before)
        lesion.points = [PointRecord(p.role, p.point_id, p.world.copy(), p.ras.copy())
                         for p in step.points_before]
        seconds = time.perf_counter() - start
        voxels = int(self.session.state.voxels)
        return ClickResult(lesion.segment_id, "undo", step.box, 0, voxels, seconds, timings,
                           f"Undone ({len(lesion.points)} point(s) left, {voxels} voxels).")

    def _restore_markups(self, lesion: EditedLesion, points: list[PointRecord]) -> None:
        """Make the point lists hold exactly ``points`` (re-adding deleted ones, moving back)."""
        if not self._nodes_alive(lesion):
            return
        self._updating_markups = True
        try:
            for role in ROLES:
                node = lesion.nodes[role]
                wanted = {p.point_id: p for p in points if p.role == role}
                for index in reversed(range(node.GetNumberOfControlPoints())):
                    point_id = node.GetNthControlPointID(index)
                    if point_id not in wanted:
                        node.RemoveNthControlPoint(index)
                        continue
                    position = [0.0, 0.0, 0.0]
                    node.GetNthControlPointPositionWorld(index, position)
                    target = wanted[point_id].world
                    if np.max(np.abs(np.asarray(position) - target)) > _MOVE_TOLERANCE_MM:
                        node.SetNthControlPointPositionWorld(index, *[float(v) for v in target])
                present = {node.GetNthControlPointID(i)
                           for i in range(node.GetNumberOfControlPoints())}
                for point in points:
                    if point.role == role and point.point_id not in present:
                        index = node.AddControlPointWorld(
                            vtk.vtkVector3d(*[float(v) for v in point.world]))
                        point.point_id = node.GetNthControlPointID(index)
        finally:
            self._updating_markups = False

    # ------------------------------------------------------------------------------------------
    # Reporting.

    def _message(self, kind: str, lesion: EditedLesion, changed: int, voxels: int,
                 seconds: float) -> str:
        name = self._segment(lesion.segment_id).GetName()
        ml = voxels * self.volume.voxel_volume_ml
        what = {"add": "point added", "move": "point moved", "delete": "point deleted",
                "replay": "points updated", "reset": "lesion reset"}.get(kind, kind)
        return (f"{name}: {what}; {ml:.2f} mL ({voxels} voxels), {changed} voxels changed "
                f"in {seconds:.2f} s")
