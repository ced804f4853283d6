"""The Segment tab's logic without Qt: model management and interactive segmentation on MRML.

``SGPSAM.SGPSAMLogic`` is this class plus Slicer's ``ScriptedLoadableModuleLogic`` (parameter
node); keeping the body here lets it run, and be tested, anywhere MRML exists (the Python
console, scripts, plain pytest with ``slicer-core``). Method names follow Slicer's camelCase.
Heavy imports (torch, ``SGPSAMLib.session``) happen inside methods.
"""
from __future__ import annotations

import logging
import sys
import time
from typing import Any, Callable

import numpy as np

from SGPSAMLib.errors import CheckpointError, SGPSAMError, VolumeError

from .settings import Settings

__all__ = ["SegmentLogic"]

log = logging.getLogger(__name__)


class SegmentLogic:
    """Model management and interactive segmentation on MRML nodes.

    Typical use (Slicer's Python console, through the module's logic)::

        logic = slicer.util.getModuleLogic("SGPSAM")
        logic.loadModel("demo")                       # a known name or a checkpoint path
        segmentation = logic.startSession(volumeNode)  # creates "<volume> lesions"
        logic.addLesion()
        logic.addPoint([12.0, -30.5, 41.0])            # world RAS mm, positive
        logic.addPoint([15.0, -28.0, 41.0], positive=False)
        logic.undo()

    Args:
        settings: persisted settings (a dict-backed ``Settings`` when None).
    """

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings if settings is not None else Settings()
        self.model = None
        self.modelDescription = ""
        self._modelKey: tuple | None = None
        self._session = None
        self.segmenter = None
        self.lastResult = None
        #: Called with a reason when the session ends because its volume or segmentation was
        #: removed from the scene (the Widget refreshes its buttons).
        self.onSessionEnded: Callable[[str], None] | None = None
        self._removalObservation: tuple[Any, int] | None = None

    # -- model -----------------------------------------------------------------------------
    def setModel(self, model: Any, description: str = "custom model",
                 device: str | None = None) -> None:
        """Use an already built model object (anything with SAM-Med3D's encode/decode)."""
        from SGPSAMLib.session import InteractiveSession  # noqa: PLC0415 - heavy

        device = device or self.settings["device"]
        session = InteractiveSession(model, device=device, prompt_mode=self.settings["promptMode"],
                                     keep_clicked=self.settings["keepClickedComponents"],
                                     zoom=self.settings["zoomToLesion"])
        self.model = model
        self.modelDescription = description
        self._modelKey = ("object", id(model), device)
        self._replaceSession(session)

    def loadModel(self, spec: str | None = None, device: str | None = None) -> str:
        """Load a known model by name or a checkpoint file; returns a description.

        Nothing is reloaded when the same file (same modification time) and device are asked
        for again.

        Raises:
            CheckpointError: unknown name, file missing, model not downloaded yet, or a file
                that is not a compatible checkpoint (the message says which).
            ValueError: a device this machine does not have (the message lists those it has).
        """
        from SGPSAMLib import models  # noqa: PLC0415
        from SGPSAMLib.build import load_model  # noqa: PLC0415 - imports torch
        from SGPSAMLib.devices import resolve_device  # noqa: PLC0415
        from SGPSAMLib.session import InteractiveSession  # noqa: PLC0415

        spec = self.settings.model_spec() if spec is None else spec
        if not spec:
            raise CheckpointError("no checkpoint file chosen: pick a file under 'Checkpoint' "
                                  "or choose a model from the list")
        device = device or self.settings["device"]
        resolved = str(resolve_device(device))
        path = models.resolve_model(spec)
        key = (str(path), path.stat().st_mtime_ns, resolved)
        if key == self._modelKey and self.model is not None:
            return self.modelDescription
        info = models.KNOWN_MODELS.get(spec)
        model = load_model(path, device=resolved, preset=info.preset if info else None)
        session = InteractiveSession(model, device=resolved,
                                     prompt_mode=self.settings["promptMode"],
                                     keep_clicked=self.settings["keepClickedComponents"],
                                     zoom=self.settings["zoomToLesion"])
        self.model = model
        self._modelKey = key
        self.modelDescription = f"{info.title if info else path.name} on {resolved}"
        self._replaceSession(session)
        return self.modelDescription

    @property
    def device(self) -> str | None:
        """The torch device type in use ("cpu", "cuda", "mps"); None before a model."""
        return None if self._session is None else self._session.device.type

    def isUsingCPU(self) -> bool:
        return self.device == "cpu"

    def _replaceSession(self, session: Any) -> None:
        """A new model: keep the volume, segmentation and points, and restart on them."""
        self._session = session
        if self.segmenter is not None:
            volume = self.segmenter.volume_node
            segmentation = self.segmenter.segmentation_node
            active = self.segmenter.active_id
            self.segmenter = None
            self.startSession(volume, segmentation)
            if active is not None:
                self.setActiveLesion(active)

    # -- session ---------------------------------------------------------------------------
    def startSession(self, volumeNode: Any, segmentationNode: Any = None,
                     modality: str | None = None) -> Any:
        """Start segmenting ``volumeNode``; returns the segmentation node (new if None).

        Raises:
            VolumeError: no volume, not a scalar 3-D volume, constant voxels... (the scene is
                unchanged).
            SGPSAMError: no model loaded yet.
        """
        from .segment import LesionSegmenter  # noqa: PLC0415

        if volumeNode is None:
            raise VolumeError("no input volume: select a CT or MRI volume in 'Input volume'")
        if self._session is None:
            raise SGPSAMError("no model loaded: choose a model and press Initialize")
        modality = modality or self.settings["modality"]
        self._unobserveRemovals()
        self.segmenter = LesionSegmenter(self._session, volumeNode, segmentationNode,
                                         modality=modality)
        self._observeRemovals(volumeNode.GetScene())
        self._sessionStarted(volumeNode, self.segmenter.segmentation_node)
        return self.segmenter.segmentation_node

    def initialize(self, volumeNode: Any, segmentationNode: Any = None,
                   status: Callable[[str], None] | None = None) -> tuple[str, float]:
        """What the Initialize button does: load the model chosen in the settings, start the
        session, prepare the first region and make a lesion active (the last existing segment,
        else a new one). Returns (model description, seconds for the first region)."""
        say = status or (lambda text: None)
        say("Loading the model...")
        description = self.loadModel()
        say(f"Preparing the session on {volumeNode.GetName() if volumeNode else '?'}...")
        segmentation = self.startSession(volumeNode, segmentationNode)
        say("Computing the first region (image embedding)...")
        seconds = self.prepare()
        if self.activeLesion() is None:
            segments = segmentation.GetSegmentation()
            if segments.GetNumberOfSegments():  # continue the last existing segment
                self.setActiveLesion(segments.GetNthSegmentID(segments.GetNumberOfSegments() - 1))
            else:
                self.addLesion()
        return description, seconds

    # -- the session's nodes leaving the scene ---------------------------------------------
    def _observeRemovals(self, scene: Any) -> None:
        import vtk  # noqa: PLC0415 - only where MRML exists
        from vtkmodules.util.misc import calldata_type  # noqa: PLC0415

        @calldata_type(vtk.VTK_OBJECT)
        def removed(caller: Any, event: Any, node: Any) -> None:
            self._nodeAboutToBeRemoved(node)

        tag = scene.AddObserver(scene.NodeAboutToBeRemovedEvent, removed)
        self._removalObservation = (scene, tag)

    def _unobserveRemovals(self) -> None:
        if self._removalObservation is not None:
            scene, tag = self._removalObservation
            scene.RemoveObserver(tag)
            self._removalObservation = None

    def _nodeAboutToBeRemoved(self, node: Any) -> None:
        """The Data module (or a script) deletes the session's volume or segmentation: end
        the session instead of writing into a detached node later."""
        if self.segmenter is None or node is None:
            return
        if node is self.segmenter.volume_node:
            what = "volume"
        elif node is self.segmenter.segmentation_node:
            what = "segmentation"
        else:
            return
        reason = (f"The session's {what} {node.GetName()!r} was removed from the scene; "
                  "choose a volume and press Initialize.")
        log.info(reason)
        self.endSession()
        if self.onSessionEnded is not None:
            self.onSessionEnded(reason)

    def _sessionStarted(self, volumeNode: Any, segmentationNode: Any) -> None:
        """Hook: the module records the nodes in its parameter node."""

    def hasSession(self, volumeNode: Any = None, segmentationNode: Any = None) -> bool:
        """Whether a session runs (on these nodes, when given)."""
        if self.segmenter is None:
            return False
        if volumeNode is not None and volumeNode is not self.segmenter.volume_node:
            return False
        return segmentationNode is None or segmentationNode is self.segmenter.segmentation_node

    def _segmenter(self) -> Any:
        if self.segmenter is None:
            raise SGPSAMError("not initialized: choose a volume and press Initialize")
        return self.segmenter

    def prepare(self, rasWorld: Any = None) -> float:
        """Compute a region's image embedding ahead of the first click -> seconds.

        ``rasWorld`` defaults to the centre of the volume.
        """
        from .mrml_geometry import world_to_volume_ras  # noqa: PLC0415

        segmenter = self._segmenter()
        start = time.perf_counter()
        if rasWorld is None:
            volume = segmenter.volume
            centre_ijk = (np.asarray(volume.shape_ijk, dtype=float) - 1.0) / 2.0
            ras = volume.ijk_to_ras_points(centre_ijk)
        else:
            ras = world_to_volume_ras(segmenter.volume_node, rasWorld)
        segmenter.session.prepare(ras)
        return time.perf_counter() - start

    def addLesion(self, name: str | None = None) -> str:
        """A new lesion segment, made active; returns its segment ID."""
        return self._segmenter().add_lesion(name)

    def setActiveLesion(self, segmentId: str) -> None:
        """Continue (or start editing) an existing segment."""
        self._segmenter().set_active_lesion(segmentId)

    def activeLesion(self) -> str | None:
        return None if self.segmenter is None else self.segmenter.active_id

    def activeMarkupsNode(self, positive: bool = True) -> Any:
        """The active lesion's positive or negative point list (None without a lesion)."""
        lesion = None if self.segmenter is None else self.segmenter.active
        return None if lesion is None else lesion.nodes["positive" if positive else "negative"]

    def addPoint(self, rasWorld: Any, positive: bool = True) -> Any:
        """Add a point (world RAS mm) to the active lesion and update its segment."""
        self.lastResult = self._segmenter().add_point(rasWorld, positive)
        return self.lastResult

    def syncPoints(self) -> Any:
        """Update the active lesion after its markups changed; None when nothing changed."""
        return self._keep(self._segmenter().sync_points())

    def undo(self) -> Any:
        """Undo the active lesion's last action; None when there is nothing to undo."""
        return self._keep(self._segmenter().undo())

    def reset(self) -> Any:
        """Remove the active lesion's points and model voxels (undoable)."""
        return self._keep(self._segmenter().reset())

    def _keep(self, result: Any) -> Any:
        if result is not None:
            self.lastResult = result
        return result

    # -- what the Widget shows ---------------------------------------------------------------
    def sessionNodes(self) -> tuple[Any, Any]:
        """(volume, segmentation) of the running session, or (None, None)."""
        if self.segmenter is None:
            return None, None
        return self.segmenter.volume_node, self.segmenter.segmentation_node

    def lesions(self) -> list[tuple[str, str]]:
        """(segment ID, name) of every segment of the session's segmentation, in order."""
        if self.segmenter is None:
            return []
        segmentation = self.segmenter.segmentation_node.GetSegmentation()
        return [(segmentation.GetNthSegmentID(n), segmentation.GetNthSegment(n).GetName())
                for n in range(segmentation.GetNumberOfSegments())]

    def markupsNodes(self) -> list:
        """Every point list of the session's lesions (for observers)."""
        return [] if self.segmenter is None else self.segmenter.markups_nodes()

    def lesionOfMarkups(self, markupsNode: Any) -> str | None:
        """The segment ID a point list belongs to (None for other nodes)."""
        return None if self.segmenter is None else self.segmenter.lesion_of_markups(markupsNode)

    def pointsChanged(self, markupsNode: Any = None) -> bool:
        """Whether the lesion of ``markupsNode`` (default: the active one) has point edits the
        segment does not show yet; False for preview points. Cheap: no model runs."""
        if self.segmenter is None:
            return False
        segmentId = None if markupsNode is None else self.lesionOfMarkups(markupsNode)
        if markupsNode is not None and segmentId is None:
            return False
        return self.segmenter.points_changed(segmentId)

    def endSession(self) -> None:
        """Stop the session (segments and point lists stay in the scene)."""
        self._unobserveRemovals()
        self.segmenter = None

    def releaseModel(self) -> None:
        """End the session and free the model (and its GPU memory), e.g. on module reload."""
        self.endSession()
        self._session = None
        self.model = None
        self.modelDescription = ""
        self._modelKey = None
        self.lastResult = None
        import gc  # noqa: PLC0415

        gc.collect()
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()
