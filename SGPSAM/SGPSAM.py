"""SGP-SAM: interactive, batch and trainable 3D lesion segmentation for 3D Slicer.

The four standard classes of a scripted module:

- ``SGPSAM``: module description.
- ``SGPSAMWidget``: the GUI (Segment, Batch and Training tabs, ``Resources/UI/SGPSAM.ui``);
  thin: it reads the form, calls the Logic (or the Qt-free tab logics of
  ``SGPSAMSlicerLib``) and shows results and errors.
- ``SGPSAMLogic``: the only bridge between MRML and ``SGPSAMLib``; needs no Qt, so it runs
  in Slicer's Python console, in scripts and in plain pytest against real MRML.
- ``SGPSAMTest``: the self-test (a known lesion, real Logic, Dice threshold).

Heavy imports (torch, ``SGPSAMLib.session``) happen inside functions only, so Slicer starts
fast and the module loads even before PyTorch is installed.
"""
from __future__ import annotations

import logging
import sys
import traceback
import unittest
from pathlib import Path

import ctk  # noqa: F401 - Slicer convention; the .ui uses ctk widgets
import qt
import slicer
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

_MODULE_DIR = Path(__file__).resolve().parent
# Running from source (SGPSAM/ added to Slicer's module paths): the library is the repository
# root's SGPSAMLib. Installed: CMake puts SGPSAMLib next to this file.
for _path in (_MODULE_DIR, _MODULE_DIR.parent):
    if (_path / "SGPSAMLib").is_dir():
        if str(_path) not in sys.path:
            sys.path.insert(0, str(_path))
        break

from SGPSAMSlicerLib.logic import SegmentLogic  # noqa: E402
from SGPSAMSlicerLib.selftest import SelfTestCases  # noqa: E402
from SGPSAMSlicerLib.settings import LOCAL_MODEL, QSettingsStore, Settings  # noqa: E402

from SGPSAMLib.errors import SGPSAMError  # noqa: E402

try:  # Slicer >= 5.2: translatable strings
    from slicer.i18n import tr as _
    from slicer.i18n import translate
except ImportError:  # older Slicer, or tests
    def _(text: str) -> str:
        return text

    def translate(context: str, text: str) -> str:
        return text

try:  # Slicer >= 5.4
    from slicer.parameterNodeWrapper import parameterNodeWrapper
except ImportError:  # older Slicer, or tests with slicer-core (no Qt)
    parameterNodeWrapper = None

log = logging.getLogger(__name__)

#: Keyboard shortcuts while the module is shown (checked against Slicer's defaults: slice
#: views use r (reset view), f/b, arrows, v, t, g, [, ], {, }; the Segment Editor uses 1-0,
#: z/y with Ctrl; a, s, n and Shift+R are free there).
SHORTCUTS = {
    "positive": "a",
    "negative": "s",
    "nextLesion": "n",
    "undo": "Ctrl+Z",
    "reset": "Shift+R",
}


if parameterNodeWrapper is not None:
    @parameterNodeWrapper
    class SGPSAMParameterNode:
        """Scene state of the module: which volume and segmentation are being edited."""

        inputVolume: slicer.vtkMRMLScalarVolumeNode
        segmentation: slicer.vtkMRMLSegmentationNode
else:
    SGPSAMParameterNode = None


# ----------------------------------------------------------------------------------------------
# Module

class SGPSAM(ScriptedLoadableModule):
    """Module description shown by Slicer."""

    def __init__(self, parent) -> None:
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("SGP-SAM")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["SGP-SAM for 3D Slicer contributors"]
        self.parent.helpText = _(
            "Interactive 3D lesion segmentation with SGP-SAM (a SAM-Med3D-compatible 3D Segment "
            "Anything model with Self-Gated Prompting Modules). <b>Segment</b>: choose a volume, "
            "press Initialize, Add lesion, then click positive (a) and negative (s) points; "
            "n = next lesion, Ctrl+Z = undo, Shift+R = reset the lesion. Points are markups: "
            "drag or delete them and the lesion updates. <b>Batch</b>: segment a folder of "
            "volumes from seed points. <b>Training</b>: fine-tune on your annotated cases.")
        self.parent.acknowledgementText = _(
            "SGP-SAM builds on SAM-Med3D (uni-medical/SAM-Med3D, Apache-2.0). Model weights "
            "that you download carry their own licence, shown before downloading.")


# ----------------------------------------------------------------------------------------------
# Logic

class SGPSAMLogic(ScriptedLoadableModuleLogic, SegmentLogic):
    """The module's logic: Slicer's parameter node plus ``SGPSAMSlicerLib.logic.SegmentLogic``.

    No Qt is needed at import or run time. Typical use from Slicer's Python console::

        logic = slicer.util.getModuleLogic("SGPSAM")
        logic.loadModel("demo")                       # a known name or a checkpoint path
        segmentation = logic.startSession(volumeNode)  # creates "<volume> lesions"
        logic.addLesion()
        logic.addPoint([12.0, -30.5, 41.0])            # world RAS mm, positive
        logic.undo()
    """

    def __init__(self, settings: Settings | None = None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        SegmentLogic.__init__(self, settings)

    def getParameterNode(self):
        node = ScriptedLoadableModuleLogic.getParameterNode(self)
        return SGPSAMParameterNode(node) if SGPSAMParameterNode is not None else node

    def _sessionStarted(self, volumeNode, segmentationNode) -> None:
        if SGPSAMParameterNode is not None:
            parameters = self.getParameterNode()
            parameters.inputVolume = volumeNode
            parameters.segmentation = segmentationNode


# ----------------------------------------------------------------------------------------------
# Widget

class SGPSAMWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The GUI: wires the .ui to the Logic and the Batch/Training tab logics."""

    # Markups events -> handler name: placed, moved (end of a drag, or edited in the Markups
    # module's table), deleted. (Custom MRML events reach Python callbacks as "UserEvent",
    # so each event gets its own handler.)
    MARKUPS_EVENTS = {
        "PointPositionDefinedEvent": "_onPointChanged",
        "PointRemovedEvent": "_onPointChanged",
        "PointModifiedEvent": "_onPointModified",
        "PointStartInteractionEvent": "_onPointDragStart",
        "PointEndInteractionEvent": "_onPointDragEnd",
    }

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._shortcuts = []
        self._observedMarkups = []
        self._syncScheduled = False
        self._dragging = False
        self._busy = False
        self.batch = None
        self.training = None
        self.trainingPlot = None
        self._timer = None

    # -- setup -----------------------------------------------------------------------------
    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SGPSAM.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.settings = Settings(QSettingsStore(qt.QSettings()))
        self.logic = SGPSAMLogic(self.settings)

        self._setupModelSection()
        self._setupSegmentSection()
        self._setupShortcuts()
        self._setupBatchTab()
        self._setupTrainingTab()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        interaction = slicer.app.applicationLogic().GetInteractionNode()
        self.addObserver(interaction, interaction.InteractionModeChangedEvent,
                         self._onInteractionModeChanged)
        self.initializeParameterNode()
        self._updateSegmentButtons()

    def _setupModelSection(self) -> None:
        from SGPSAMLib import models  # noqa: PLC0415 - stdlib only

        ui = self.ui
        ui.modelComboBox.clear()
        for name, info in models.KNOWN_MODELS.items():
            ui.modelComboBox.addItem(info.title, name)
        ui.modelComboBox.addItem(_("Local checkpoint file"), LOCAL_MODEL)
        index = ui.modelComboBox.findData(self.settings["model"])
        ui.modelComboBox.setCurrentIndex(max(index, 0))
        ui.checkpointPathLineEdit.currentPath = self.settings["checkpointPath"]
        ui.deviceComboBox.setCurrentIndex(max(ui.deviceComboBox.findText(self.settings["device"]),
                                              0))
        ui.modalityComboBox.setCurrentIndex(
            max(ui.modalityComboBox.findText(self.settings["modality"]), 0))
        ui.modelComboBox.currentIndexChanged.connect(self._onModelSettingsChanged)
        ui.checkpointPathLineEdit.currentPathChanged.connect(self._onModelSettingsChanged)
        ui.deviceComboBox.currentIndexChanged.connect(self._onModelSettingsChanged)
        ui.modalityComboBox.currentIndexChanged.connect(self._onModelSettingsChanged)
        ui.downloadButton.clicked.connect(self.onDownload)
        self._updateModelSection()

    def _setupSegmentSection(self) -> None:
        ui = self.ui
        ui.initializeButton.clicked.connect(self.onInitialize)
        ui.addLesionButton.clicked.connect(self.onAddLesion)
        ui.positiveButton.toggled.connect(lambda on: self.onPlaceToggled(True, on))
        ui.negativeButton.toggled.connect(lambda on: self.onPlaceToggled(False, on))
        ui.undoButton.clicked.connect(self.onUndo)
        ui.resetButton.clicked.connect(self.onReset)
        ui.lesionComboBox.connect("activated(int)", self.onLesionChosen)
        ui.inputVolumeSelector.currentNodeChanged.connect(self._updateSegmentButtons)
        ui.segmentationSelector.currentNodeChanged.connect(self._updateSegmentButtons)
        ui.statusLabel.setText(_("Choose a volume and press Initialize."))
        ui.timingLabel.setText("")
        ui.shortcutsLabel.setText(_(
            "Shortcuts: {a} positive point, {s} negative point, {n} next lesion, {u} undo, "
            "{r} reset lesion, Esc stop placing").format(
            a=SHORTCUTS["positive"], s=SHORTCUTS["negative"], n=SHORTCUTS["nextLesion"],
            u=SHORTCUTS["undo"], r=SHORTCUTS["reset"]))

    def _setupShortcuts(self) -> None:
        actions = {
            "positive": lambda: self.ui.positiveButton.setChecked(
                not self.ui.positiveButton.checked),
            "negative": lambda: self.ui.negativeButton.setChecked(
                not self.ui.negativeButton.checked),
            "nextLesion": self.onAddLesion,
            "undo": self.onUndo,
            "reset": self.onReset,
        }
        for name, keys in SHORTCUTS.items():
            shortcut = qt.QShortcut(slicer.util.mainWindow())
            shortcut.setKey(qt.QKeySequence(keys))
            shortcut.setContext(qt.Qt.ApplicationShortcut)
            shortcut.setEnabled(False)
            shortcut.connect("activated()", actions[name])
            self._shortcuts.append(shortcut)

    # -- life cycle ------------------------------------------------------------------------
    def cleanup(self) -> None:
        self.removeObservers()
        for shortcut in self._shortcuts:
            shortcut.setEnabled(False)
            shortcut.setParent(None)
        self._shortcuts = []
        if self._timer is not None:
            self._timer.stop()
        for tab in (self.batch, self.training):
            if tab is not None and hasattr(tab, "cleanup"):
                tab.cleanup()

    def enter(self) -> None:
        self.initializeParameterNode()
        for shortcut in self._shortcuts:
            shortcut.setEnabled(True)

    def exit(self) -> None:
        for shortcut in self._shortcuts:
            shortcut.setEnabled(False)
        self._stopPlacing()
        if self._parameterNode is not None and self._parameterNodeGuiTag is not None:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

    def onSceneStartClose(self, caller, event) -> None:
        self._stopPlacing()
        self._unobserveMarkups()
        if self.logic is not None:
            self.logic.endSession()
        self.trainingPlot = None  # its nodes go with the scene; the next run makes new ones
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()
        self._updateSegmentButtons()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if SGPSAMParameterNode is not None and not self._parameterNode.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first is not None:
                self._parameterNode.inputVolume = first

    def setParameterNode(self, parameterNode) -> None:
        if self._parameterNode is not None and self._parameterNodeGuiTag is not None:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
        self._parameterNode = parameterNode
        if self._parameterNode is not None and SGPSAMParameterNode is not None:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
        self._updateSegmentButtons()

    # -- errors and status -----------------------------------------------------------------
    def _run(self, what: str, function, *args):
        """Run a Logic call; show a clear dialog instead of a traceback on failure."""
        if self._busy:
            return None
        self._busy = True
        try:
            with slicer.util.WaitCursor():
                return function(*args)
        except (SGPSAMError, ValueError, OSError) as exc:
            self._setStatus(f"{what} failed: {exc}")
            slicer.util.errorDisplay(f"{what} failed:\n\n{exc}", windowTitle="SGP-SAM")
        except Exception as exc:  # noqa: BLE001 - anything else: message + details
            log.exception("%s failed", what)
            self._setStatus(f"{what} failed: {exc}")
            slicer.util.errorDisplay(f"{what} failed because of an unexpected error:\n\n{exc}",
                                     detailedText=traceback.format_exc(),
                                     windowTitle="SGP-SAM")
        finally:
            self._busy = False
            self._updateSegmentButtons()
        return None

    def _setStatus(self, text: str) -> None:
        self.ui.statusLabel.setText(text)
        slicer.app.processEvents()

    def _showResult(self, result) -> None:
        if result is None:
            return
        self.ui.statusLabel.setText(result.message)
        timings = result.timings
        parts = [f"{_('Last update')}: {result.seconds:.2f} s"]
        detail = ", ".join(f"{key.replace('_', ' ')} {timings[key]:.2f} s"
                           for key in ("encode", "decode", "map_back") if timings.get(key))
        if detail:
            parts.append(f"({detail})")
        self.ui.timingLabel.setText(" ".join(parts))

    # -- model section ---------------------------------------------------------------------
    def _onModelSettingsChanged(self, *args) -> None:
        ui = self.ui
        try:
            self.settings.update({
                "model": ui.modelComboBox.currentData or "demo",
                "checkpointPath": ui.checkpointPathLineEdit.currentPath,
                "device": ui.deviceComboBox.currentText,
                "modality": ui.modalityComboBox.currentText,
            })
        except ValueError as exc:
            self._setStatus(str(exc))
        self._updateModelSection()

    def _updateModelSection(self) -> None:
        from SGPSAMLib import models  # noqa: PLC0415

        ui = self.ui
        name = self.settings["model"]
        ui.checkpointPathLineEdit.setEnabled(name == LOCAL_MODEL)
        if name == LOCAL_MODEL:
            text = _("Checkpoint file: {path}").format(
                path=self.settings["checkpointPath"] or _("(none chosen)"))
        else:
            try:
                status = models.model_status(name)
                text = {
                    "bundled": _("Bundled demo model (works offline)."),
                    "downloaded": _("Downloaded to {path}."),
                    "unverified": _("Found {path} (checked on first use)."),
                    "corrupt": _("The cached file is damaged: download it again."),
                    "missing": _("Not downloaded yet: press Download."),
                }.get(status["state"], status["state"]).format(path=status.get("path") or "")
                if name == "demo" and status["state"] == "missing":
                    text = _("The bundled demo model is not installed in this build; choose "
                             "another model or a checkpoint file.")
            except SGPSAMError as exc:
                text = str(exc)
        cpu = self.settings["device"] == "cpu"
        if self.logic is not None and self.logic.model is not None:
            text += "\n" + _("Loaded: {model}").format(model=self.logic.modelDescription)
            cpu = cpu or self.logic.isUsingCPU()
        ui.modelStatusLabel.setText(text)
        # Persistent while the model runs on the CPU (known after Initialize for "auto").
        ui.cpuWarningLabel.setVisible(cpu)

    def onDownload(self) -> None:
        from SGPSAMLib import download, models  # noqa: PLC0415

        name = models.DEFAULT_DOWNLOAD
        info = models.KNOWN_MODELS[name]
        try:
            folder = models.cache_dir()
        except SGPSAMError as exc:
            slicer.util.errorDisplay(str(exc), windowTitle="SGP-SAM")
            return
        text = _("{licence}\n\nThe file is saved in:\n{folder}\n\nDownload it now?").format(
            licence=info.licence_text(), folder=folder)
        if not slicer.util.confirmOkCancelDisplay(text, windowTitle=_("Download model")):
            return
        dialog = slicer.util.createProgressDialog(
            labelText=_("Downloading {title}...").format(title=info.title), maximum=1000)

        def progress(done: int, total) -> None:
            if total:
                dialog.setValue(int(1000 * done / total))
            dialog.setLabelText(_("Downloading {title}: {size}").format(
                title=info.title, size=models.format_size(done)))
            slicer.app.processEvents()

        try:
            download.download_model(name, consent=True, progress=progress,
                                     stop=lambda: dialog.wasCanceled)
            self.settings["downloadConsent"] = True
        except SGPSAMError as exc:
            slicer.util.errorDisplay(_("Download failed:\n\n{error}").format(error=exc),
                                     windowTitle="SGP-SAM")
            return
        finally:
            dialog.close()
        index = self.ui.modelComboBox.findData(name)
        if index >= 0:
            self.ui.modelComboBox.setCurrentIndex(index)
        self._updateModelSection()

    # -- dependencies ----------------------------------------------------------------------
    def _ensureDependencies(self) -> bool:
        """Ask once and install missing Python packages; False when not available (yet)."""
        from SGPSAMSlicerLib import dependencies  # noqa: PLC0415

        problems = dependencies.check_dependencies()
        if not problems:
            return True
        text = dependencies.confirmation_text(problems)
        if not slicer.util.confirmOkCancelDisplay(text, windowTitle=_("SGP-SAM: install")):
            self._setStatus(_("Python packages are missing; nothing was installed."))
            return False

        def torchInstaller(requirement: str):
            import PyTorchUtils  # noqa: PLC0415 - the PyTorch extension

            return PyTorchUtils.PyTorchUtilsLogic().installTorch(
                askConfirmation=False, torchVersionRequirement=requirement)

        hasTorchExtension = hasattr(slicer.modules, "pytorchutils")
        self._setStatus(_("Installing Python packages (this can take several minutes)..."))
        result = dependencies.install_missing(
            problems, pip_install=slicer.util.pip_install,
            torch_installer=torchInstaller if hasTorchExtension else None)
        if result.restart_required:
            if slicer.util.confirmOkCancelDisplay(
                    _("Packages were updated; 3D Slicer must restart to use them. Restart now?"),
                    windowTitle="SGP-SAM"):
                slicer.util.restart()
            return False
        return True

    # -- segment section -------------------------------------------------------------------
    def onInitialize(self) -> None:
        volume = self.ui.inputVolumeSelector.currentNode()
        segmentation = self.ui.segmentationSelector.currentNode()

        def initialize():
            if not self._ensureDependencies():
                return None
            self._setStatus(_("Loading the model..."))
            description = self.logic.loadModel()
            self._updateModelSection()
            self._setStatus(_("Preparing the session on {volume}...").format(
                volume=volume.GetName() if volume else "?"))
            node = self.logic.startSession(volume, segmentation)
            self.ui.segmentationSelector.setCurrentNode(node)
            self._setStatus(_("Computing the first region (image embedding)..."))
            seconds = self.logic.prepare()
            if self.logic.activeLesion() is None:
                segments = node.GetSegmentation()
                if segments.GetNumberOfSegments():  # continue the last existing segment
                    last = segments.GetNthSegmentID(segments.GetNumberOfSegments() - 1)
                    self.logic.setActiveLesion(last)
                else:
                    self.logic.addLesion()
            self._afterLesionChange()
            self._updateModelSection()
            self._setStatus(_("Ready ({model}); first region prepared in {seconds:.1f} s. "
                              "Place positive (a) and negative (s) points.").format(
                model=description, seconds=seconds))
            return True

        self._run(_("Initialize"), initialize)

    def onAddLesion(self) -> None:
        if self.logic is None or not self.logic.hasSession():
            return
        self._run(_("Add lesion"), self.logic.addLesion)
        self._afterLesionChange()

    def onLesionChosen(self, index: int) -> None:
        segmentId = self.ui.lesionComboBox.itemData(index)
        if segmentId and self.logic.hasSession():
            self._run(_("Choose lesion"), self.logic.setActiveLesion, segmentId)
            self._afterLesionChange()

    def onUndo(self) -> None:
        if self.logic is not None and self.logic.hasSession():
            self._showResult(self._run(_("Undo"), self.logic.undo))

    def onReset(self) -> None:
        if self.logic is not None and self.logic.hasSession():
            self._showResult(self._run(_("Reset"), self.logic.reset))

    def _afterLesionChange(self) -> None:
        """Refresh the lesion list, markups observers and the place target."""
        self._observeMarkups()
        self._refreshLesionList()
        if self.ui.positiveButton.checked or self.ui.negativeButton.checked:
            self._startPlacing(self.ui.positiveButton.checked)
        self._updateSegmentButtons()

    def _refreshLesionList(self) -> None:
        combo = self.ui.lesionComboBox
        combo.blockSignals(True)
        combo.clear()
        if self.logic.hasSession():
            segmentation = self.logic.segmenter.segmentation_node.GetSegmentation()
            for n in range(segmentation.GetNumberOfSegments()):
                combo.addItem(segmentation.GetNthSegment(n).GetName(),
                              segmentation.GetNthSegmentID(n))
            combo.setCurrentIndex(max(combo.findData(self.logic.activeLesion()), 0))
        combo.blockSignals(False)

    def _updateSegmentButtons(self, *args) -> None:
        if not hasattr(self, "ui") or self.logic is None:
            return
        ready = self.logic.hasSession() and self.logic.activeLesion() is not None
        volume = self.ui.inputVolumeSelector.currentNode()
        self.ui.initializeButton.setEnabled(volume is not None and not self._busy)
        for widget in (self.ui.positiveButton, self.ui.negativeButton, self.ui.undoButton,
                       self.ui.resetButton):
            widget.setEnabled(ready)
        self.ui.addLesionButton.setEnabled(self.logic.hasSession())
        self.ui.lesionComboBox.setEnabled(self.logic.hasSession())
        segmentation = self.ui.segmentationSelector.currentNode()
        if self.logic.hasSession() and (
                volume is not self.logic.segmenter.volume_node or
                segmentation not in (None, self.logic.segmenter.segmentation_node)):
            self.ui.statusLabel.setText(_("The input volume or segmentation changed: press "
                                          "Initialize."))

    # -- placing points --------------------------------------------------------------------
    def onPlaceToggled(self, positive: bool, on: bool) -> None:
        other = self.ui.negativeButton if positive else self.ui.positiveButton
        if on:
            other.blockSignals(True)
            other.setChecked(False)
            other.blockSignals(False)
            self._startPlacing(positive)
        elif not other.checked:
            self._stopPlacing()

    def _startPlacing(self, positive: bool) -> None:
        node = self.logic.activeMarkupsNode(positive)
        if node is None:
            return
        selection = slicer.app.applicationLogic().GetSelectionNode()
        selection.SetReferenceActivePlaceNodeClassName("vtkMRMLMarkupsFiducialNode")
        selection.SetActivePlaceNodeID(node.GetID())
        interaction = slicer.app.applicationLogic().GetInteractionNode()
        interaction.SetPlaceModePersistence(1)
        interaction.SetCurrentInteractionMode(interaction.Place)

    def _stopPlacing(self) -> None:
        interaction = slicer.app.applicationLogic().GetInteractionNode()
        if interaction.GetCurrentInteractionMode() == interaction.Place:
            interaction.SetCurrentInteractionMode(interaction.ViewTransform)

    def _onInteractionModeChanged(self, caller, event) -> None:
        if caller.GetCurrentInteractionMode() != caller.Place:
            for button in (self.ui.positiveButton, self.ui.negativeButton):
                button.blockSignals(True)
                button.setChecked(False)
                button.blockSignals(False)

    # -- markups observers -----------------------------------------------------------------
    def _unobserveMarkups(self) -> None:
        for node in self._observedMarkups:
            for event, handler in self.MARKUPS_EVENTS.items():
                self.removeObserver(node, getattr(node, event), getattr(self, handler))
        self._observedMarkups = []

    def _observeMarkups(self) -> None:
        self._unobserveMarkups()
        if not self.logic.hasSession():
            return
        for node in self.logic.segmenter.markups_nodes():
            for event, handler in self.MARKUPS_EVENTS.items():
                self.addObserver(node, getattr(node, event), getattr(self, handler))
            self._observedMarkups.append(node)

    def _onPointDragStart(self, caller, event) -> None:
        self._dragging = True

    def _onPointDragEnd(self, caller, event) -> None:
        self._dragging = False
        self._onPointChanged(caller, event)

    def _onPointModified(self, caller, event) -> None:
        if not self._dragging:  # a drag updates once, at its end
            self._onPointChanged(caller, event)

    def _onPointChanged(self, caller, event) -> None:
        """A point was placed, moved or deleted: update once, soon."""
        if self._syncScheduled or not self.logic.hasSession():
            return
        segmentId = self.logic.segmenter.lesion_of_markups(caller)
        if segmentId is not None and segmentId != self.logic.activeLesion():
            self._run(_("Choose lesion"), self.logic.setActiveLesion, segmentId)
            self._refreshLesionList()
        self._syncScheduled = True
        qt.QTimer.singleShot(0, self._syncPoints)

    def _syncPoints(self) -> None:
        self._syncScheduled = False
        if self._busy:  # a prediction is running: try again when it is done
            self._syncScheduled = True
            qt.QTimer.singleShot(50, self._syncPoints)
            return
        self._showResult(self._run(_("Update"), self.logic.syncPoints))

    # -- Batch tab -------------------------------------------------------------------------
    def _setupBatchTab(self) -> None:
        from SGPSAMSlicerLib.batch_tab import OUTPUT_FORMATS, BatchTabLogic  # noqa: PLC0415

        ui = self.ui
        self.batch = BatchTabLogic()
        ui.batchFormatComboBox.clear()
        for name in OUTPUT_FORMATS:
            ui.batchFormatComboBox.addItem(name)
        ui.batchTable.setColumnCount(6)
        ui.batchTable.setHorizontalHeaderLabels(
            [_("Case"), _("Status"), _("Lesions"), _("Volume (mL)"), _("Seconds"), _("Notes")])
        ui.batchSeedsComboBox.currentIndexChanged.connect(self._updateBatchForm)
        ui.batchStartButton.clicked.connect(self.onBatchStart)
        ui.batchStopButton.clicked.connect(self.onBatchStop)
        ui.batchOpenResultButton.clicked.connect(self.onBatchOpenResult)
        self.batch.on_row = self._onBatchRow
        self._timer = qt.QTimer()
        self._timer.setInterval(300)
        self._timer.timeout.connect(self._pollJobs)
        self._updateBatchForm()

    def _updateBatchForm(self, *args) -> None:
        ui = self.ui
        csv = ui.batchSeedsComboBox.currentIndex == 1
        ui.batchSeedsCsvPathLineEdit.setEnabled(csv)
        ui.batchCsvSpaceComboBox.setEnabled(csv)
        running = self.batch is not None and self.batch.is_running
        ui.batchStartButton.setEnabled(not running)
        ui.batchStopButton.setEnabled(running)

    def onBatchStart(self) -> None:
        from SGPSAMSlicerLib.batch_tab import SEED_MARKUPS, BatchParams  # noqa: PLC0415

        ui = self.ui
        csv = ui.batchSeedsComboBox.currentIndex == 1
        params = BatchParams(
            input_folder=ui.batchInputPathLineEdit.currentPath,
            output_folder=ui.batchOutputPathLineEdit.currentPath,
            model=self.settings.model_spec(),
            seeds=ui.batchSeedsCsvPathLineEdit.currentPath if csv else SEED_MARKUPS,
            output_format=ui.batchFormatComboBox.currentText,
            recursive=ui.batchRecursiveCheckBox.checked,
            device=self.settings["device"],
            overwrite=ui.batchOverwriteCheckBox.checked,
            csv_space=ui.batchCsvSpaceComboBox.currentText,
            modality=self.settings["modality"],
        )
        ui.batchTable.setRowCount(0)
        if self._run(_("Batch"), self.batch.start, params) is not None:
            self._timer.start()
        self._updateBatchForm()

    def onBatchStop(self) -> None:
        self.batch.stop()
        self.ui.batchStatusLabel.setText(_("Stopping after the current case..."))

    def _onBatchRow(self, index: int, row) -> None:
        table = self.ui.batchTable
        if table.rowCount <= index:
            table.setRowCount(index + 1)
        for column, text in enumerate(row.cells()):
            table.setItem(index, column, qt.QTableWidgetItem(text))

    def onBatchOpenResult(self) -> None:
        row = self.ui.batchTable.currentRow()
        if row < 0:
            slicer.util.errorDisplay(_("Select a case in the table first."),
                                     windowTitle="SGP-SAM")
            return
        nodes = self._run(_("Open result"), self.batch.open_result, row, slicer.mrmlScene)
        if nodes:
            volume, segmentation = nodes
            slicer.util.setSliceViewerLayers(background=volume, fit=True)

    def _pollJobs(self) -> None:
        active = False
        for tab, label, bar in ((self.batch, self.ui.batchStatusLabel, self.ui.batchProgressBar),
                                (self.training, self.ui.trainStatusLabel,
                                 self.ui.trainProgressBar)):
            if tab is None:
                continue
            tab.poll()
            if tab.job is not None:
                bar.setValue(int(round(100 * tab.fraction)))
                text = tab.status_text
                if tab.error_message:
                    text += "\n" + tab.error_message
                label.setText(text)
            active = active or tab.is_running
        if self.training is not None:
            self.ui.trainGateRatesLabel.setText(self.training.gate_rates_text())
            if self.trainingPlot is not None:
                self.trainingPlot.update(self.training.loss_series, self.training.val_series)
        self._updateBatchForm()
        self._updateTrainingForm()
        if not active:
            self._timer.stop()

    # -- Training tab ----------------------------------------------------------------------
    def _setupTrainingTab(self) -> None:
        try:
            from SGPSAMSlicerLib.training_tab import TrainingTabLogic  # noqa: PLC0415
        except ImportError:
            log.warning("the Training tab is not available in this build")
            self.ui.trainingTab.setEnabled(False)
            return
        ui = self.ui
        self.training = TrainingTabLogic()
        ui.trainStartButton.clicked.connect(self.onTrainStart)
        ui.trainStopButton.clicked.connect(self.onTrainStop)
        ui.trainUseModelButton.clicked.connect(self.onTrainUseModel)
        if hasattr(self.training, "on_log"):
            self.training.on_log = ui.trainLogTextEdit.appendPlainText
        self.training.on_state = self._onTrainingState
        self._updateTrainingForm()

    def _updateTrainingForm(self, *args) -> None:
        if self.training is None:
            return
        running = self.training.is_running
        self.ui.trainStartButton.setEnabled(not running)
        self.ui.trainStopButton.setEnabled(running)

    def onTrainStart(self) -> None:
        ui = self.ui
        form = {
            "data_folder": ui.trainDataPathLineEdit.currentPath,
            "use_scene": ui.trainFromSceneCheckBox.checked,
            "output_folder": ui.trainOutputPathLineEdit.currentPath,
            "init_model": self.settings.model_spec(),
            "mode": ui.trainModeComboBox.currentText,
            "modality": self.settings["modality"],
            "epochs": ui.trainEpochsSpinBox.value,
            "learning_rate": ui.trainLearningRateSpinBox.value,
            "validation_fraction": ui.trainValidationSpinBox.value,
            "resume": ui.trainResumeCheckBox.checked,
            "device": self.settings["device"],
        }
        ui.trainLogTextEdit.clear()
        if self._run(_("Training"), self.training.start_from_form, form,
                     slicer.mrmlScene) is not None:
            self._showTrainingPlot()
            self._timer.start()
        self._updateTrainingForm()

    def _showTrainingPlot(self) -> None:
        """Loss and validation Dice in Slicer's plot view (nodes: SGPSAMSlicerLib.training_plot)."""
        from SGPSAMSlicerLib.training_plot import TrainingPlot  # noqa: PLC0415

        self.trainingPlot = TrainingPlot(slicer.mrmlScene)
        self.trainingPlot.clear()
        slicer.modules.plots.logic().ShowChartInLayout(self.trainingPlot.chart)

    def _onTrainingState(self, state) -> None:
        """When a run ends with a model, offer it to the Segment tab (after this poll)."""
        if state.ended and self.training.result_model_path:
            qt.QTimer.singleShot(0, self._offerTrainedModel)

    def _offerTrainedModel(self) -> None:
        path = self.training.result_model_path
        if path and slicer.util.confirmYesNoDisplay(
                _("Training ended. Use the new model in the Segment tab?\n{path}").format(
                    path=path), windowTitle="SGP-SAM"):
            self.onTrainUseModel()

    def onTrainStop(self) -> None:
        if self.training is not None:
            self.training.stop()
            self.ui.trainStatusLabel.setText(_("Stopping: the current checkpoint is saved..."))

    def onTrainUseModel(self) -> None:
        path = None if self.training is None else self.training.best_checkpoint()
        if not path:
            slicer.util.errorDisplay(_("No checkpoint yet: train first."), windowTitle="SGP-SAM")
            return
        index = self.ui.modelComboBox.findData(LOCAL_MODEL)
        self.ui.modelComboBox.setCurrentIndex(index)
        self.ui.checkpointPathLineEdit.currentPath = str(path)
        self.ui.tabWidget.setCurrentIndex(0)
        self._setStatus(_("Model set to {path}: press Initialize to use it.").format(path=path))


# ----------------------------------------------------------------------------------------------
# Self-test

class SGPSAMTest(ScriptedLoadableModuleTest, SelfTestCases):
    """Known lesions, the real Logic, Dice thresholds (runs in Slicer and in pytest).

    The test methods live in ``SGPSAMSlicerLib.selftest.SelfTestCases``.
    """

    def setUp(self) -> None:
        slicer.mrmlScene.Clear(0)

    def makeLogic(self) -> SGPSAMLogic:
        return SGPSAMLogic()

    def runTest(self) -> None:
        for name in self.TEST_NAMES:
            self.setUp()
            try:
                getattr(self, name)()
            except unittest.SkipTest as exc:
                self.delayDisplay(f"{name} skipped: {exc}")
