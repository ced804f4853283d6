"""SGP-SAM: interactive, batch and trainable 3D lesion segmentation for 3D Slicer.

The four standard classes of a scripted module, each kept small:

- ``SGPSAM``: module description.
- ``SGPSAMParameterNode``: the scene state (session nodes, the Batch and Training forms);
  saved with the scene.
- ``SGPSAMLogic``: Slicer's logic base plus ``SGPSAMSlicerLib.module_logic.ModuleLogic``, the
  only bridge between MRML and ``SGPSAMLib``; it needs no Qt, so it runs in Slicer's Python
  console, in scripts and in plain pytest against real MRML.
- ``SGPSAMWidget``: loads the .ui, binds the parameter node and hands each tab to its panel
  (``SGPSAMGui``: segment_panel, batch_panel, training_panel); life cycle only.
- ``SGPSAMTest``: the self-test (a known lesion, real Logic, Dice threshold); skipped with a
  reason when PyTorch is not installed.

Heavy imports (torch, ``SGPSAMLib.session``) happen inside functions only, so Slicer starts
fast and the module loads even before PyTorch is installed.
"""
from __future__ import annotations

import logging
import sys
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

from SGPSAMSlicerLib.forms import BATCH_FORM, TRAINING_FORM, FormField  # noqa: E402
from SGPSAMSlicerLib.module_logic import SHUTDOWN_WAIT_S, ModuleLogic  # noqa: E402
from SGPSAMSlicerLib.mrml_nodes import first_input_volume  # noqa: E402
from SGPSAMSlicerLib.selftest import SelfTestCases, torch_missing_reason  # noqa: E402
from SGPSAMSlicerLib.settings import QSettingsStore, Settings  # noqa: E402
from SGPSAMSlicerLib.shortcuts import SHORTCUTS  # noqa: E402, F401 - part of the module's API

try:  # Slicer >= 5.2: translatable strings
    from slicer.i18n import tr as _
    from slicer.i18n import translate
except ImportError:  # older Slicer, or tests
    def _(text: str) -> str:
        return text

    def translate(context: str, text: str) -> str:
        return text

try:  # Slicer >= 5.4
    from slicer.parameterNodeWrapper import (
        Choice,
        Decimals,
        SingleStep,
        WithinRange,
        parameterNodeWrapper,
        parameterPack,
    )
except ImportError:  # older Slicer, or tests with slicer-core (no Qt)
    parameterNodeWrapper = parameterPack = None

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# Module

class SGPSAM(ScriptedLoadableModule):
    """Module description shown by Slicer."""

    def __init__(self, parent) -> None:
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("SGP-SAM")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = ["Markups", "Segmentations", "Plots"]
        self.parent.contributors = ["SGP-SAM for 3D Slicer contributors"]
        self.parent.helpText = _(
            "Interactive 3D lesion segmentation with SGP-SAM (a SAM-Med3D-compatible 3D Segment "
            "Anything model with Self-Gated Prompting Modules). <b>Segment</b>: choose a volume, "
            "press Initialize, Add lesion, then click positive ({positive}) and negative "
            "({negative}) points; right-click or double-click in a view ends placing; "
            "{nextLesion} = next lesion, {undo} = undo, {reset} = reset the lesion. Points are "
            "markups: drag or delete them and the lesion updates. <b>Batch</b>: segment a "
            "folder of volumes from seed points. <b>Training</b>: fine-tune on your annotated "
            "cases.").format(**SHORTCUTS)
        self.parent.acknowledgementText = _(
            "SGP-SAM builds on SAM-Med3D (uni-medical/SAM-Med3D, Apache-2.0). Model weights "
            "that you download carry their own licence, shown before downloading.")


# ----------------------------------------------------------------------------------------------
# Parameter node: built from SGPSAMSlicerLib.forms, so the .ui, the binding and the tab
# logics share one definition of each form field.

def _annotated(field: FormField):
    """The field's type with the annotations Slicer's GUI binding applies to its widget."""
    from typing import Annotated  # noqa: PLC0415

    extras = []
    if field.choices is not None:
        extras.append(Choice(list(field.choices)))
    if field.minimum is not None and field.maximum is not None:
        extras.append(WithinRange(field.minimum, field.maximum))
    if field.decimals is not None:
        extras.append(Decimals(field.decimals))
    if field.single_step is not None:
        extras.append(SingleStep(field.single_step))
    return Annotated[(field.type, *extras)] if extras else field.type


def _parameterPack(name: str, fields: tuple[FormField, ...]):
    namespace = {"__annotations__": {f.name: _annotated(f) for f in fields},
                 "__module__": __name__}
    namespace.update({f.name: f.default for f in fields})
    return parameterPack(type(name, (), namespace))


if parameterNodeWrapper is not None:
    SGPSAMBatchForm = _parameterPack("SGPSAMBatchForm", BATCH_FORM)
    SGPSAMTrainingForm = _parameterPack("SGPSAMTrainingForm", TRAINING_FORM)

    @parameterNodeWrapper
    class SGPSAMParameterNode:
        """Scene state of the module: the session's nodes and the Batch and Training forms
        (``SlicerParameterName`` ``batch.*`` / ``training.*`` in the .ui)."""

        inputVolume: slicer.vtkMRMLScalarVolumeNode
        segmentation: slicer.vtkMRMLSegmentationNode
        batch: SGPSAMBatchForm
        training: SGPSAMTrainingForm
else:
    SGPSAMParameterNode = None


# ----------------------------------------------------------------------------------------------
# Logic

class SGPSAMLogic(ScriptedLoadableModuleLogic, ModuleLogic):
    """The module's logic: Slicer's parameter node plus ``SGPSAMSlicerLib``'s ``ModuleLogic``.

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
        ModuleLogic.__init__(self, settings)

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
    """Loads the .ui, binds the parameter node, and hands each tab to its panel."""

    POLL_MS = 300

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._quitting = False

    def setup(self) -> None:
        from SGPSAMGui.batch_panel import BatchPanel  # noqa: PLC0415
        from SGPSAMGui.common import LogicCalls  # noqa: PLC0415
        from SGPSAMGui.segment_panel import SegmentPanel  # noqa: PLC0415
        from SGPSAMGui.training_panel import TrainingPanel  # noqa: PLC0415

        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SGPSAM.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = SGPSAMLogic(Settings(QSettingsStore(qt.QSettings())))
        self.timer = qt.QTimer()
        self.timer.setInterval(self.POLL_MS)
        self.timer.timeout.connect(self._pollJobs)
        self.calls = LogicCalls(status=self.ui.statusLabel.setText, after=self._updateButtons)
        self.segment = SegmentPanel(self.ui, self.logic, self.calls)
        self.batch = BatchPanel(self.ui, self.logic, self.calls,
                                form=lambda: self._parameterNode.batch,
                                jobStarted=self.timer.start)
        self.training = TrainingPanel(self.ui, self.logic, self.calls,
                                      form=lambda: self._parameterNode.training,
                                      jobStarted=self.timer.start,
                                      modelChosen=self._onModelChosen)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        interaction = slicer.app.applicationLogic().GetInteractionNode()
        self.addObserver(interaction, interaction.InteractionModeChangedEvent,
                         lambda caller, event: self.segment.interactionModeChanged())
        slicer.app.connect("aboutToQuit()", self._onAboutToQuit)
        self.initializeParameterNode()
        self._updateButtons()
        # Developer > Reload calls setup() but not enter(): a shown module gets its shortcuts.
        if self.parent.isEntered:
            self.segment.setShortcutsEnabled(True)

    # -- life cycle -------------------------------------------------------------------------
    def enter(self) -> None:
        self.initializeParameterNode()
        self.segment.setShortcutsEnabled(True)

    def exit(self) -> None:
        self.segment.setShortcutsEnabled(False)
        self.segment.stopPlacing()
        self._disconnectParameterNode()

    def _onAboutToQuit(self) -> None:
        self._quitting = True

    def cleanup(self) -> None:
        """Reload or application exit: observers, timer, shortcuts, the parameter node GUI,
        running jobs (stopped gracefully: asked on Reload) and the model."""
        self.removeObservers()
        slicer.app.disconnect("aboutToQuit()", self._onAboutToQuit)
        self.timer.stop()
        self.segment.cleanup()
        self._disconnectParameterNode()
        if self.logic.jobsRunning():
            self._stopJobs()
        self.logic.releaseModel()

    def _stopJobs(self) -> None:
        wait_s = SHUTDOWN_WAIT_S
        mainWindow = slicer.util.mainWindow()
        quitting = self._quitting or mainWindow is None or not mainWindow.isVisible()
        if not quitting and not slicer.util.confirmYesNoDisplay(
                _("A batch or training run is in progress. Let it save its checkpoint before "
                  "the module reloads (up to {seconds:.0f} s)? 'No' stops it at once.").format(
                    seconds=wait_s), windowTitle="SGP-SAM"):
            wait_s = 0.0
        dialog = slicer.util.createProgressDialog(
            labelText=_("Stopping the running job: saving its checkpoint..."), maximum=0)
        try:
            self.logic.shutdownJobs(wait_s, pump=slicer.app.processEvents)
        finally:
            dialog.close()

    def onSceneStartClose(self, caller, event) -> None:
        self.segment.sceneClosing()
        self.training.sceneClosing()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()
        self._updateButtons()

    # -- parameter node ---------------------------------------------------------------------
    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if SGPSAMParameterNode is not None and not self._parameterNode.inputVolume:
            volume = first_input_volume(slicer.mrmlScene)
            if volume is not None:
                self._parameterNode.inputVolume = volume

    def setParameterNode(self, parameterNode) -> None:
        self._disconnectParameterNode()
        self._parameterNode = parameterNode
        if self._parameterNode is not None and SGPSAMParameterNode is not None:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
        self._updateButtons()

    def _disconnectParameterNode(self) -> None:
        if self._parameterNode is not None and self._parameterNodeGuiTag is not None:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
        self._parameterNodeGuiTag = None

    # -- shared -----------------------------------------------------------------------------
    def _updateButtons(self) -> None:
        if getattr(self, "segment", None) is None:
            return
        self.segment.updateButtons()
        self.batch.updateForm()
        self.training.updateForm()

    def _pollJobs(self) -> None:
        running = self.logic.pollJobs()
        self.batch.showProgress()
        self.training.showProgress()
        if not running:
            self.timer.stop()

    def _onModelChosen(self, path: str) -> None:
        self.segment.showModelSettings()
        self.ui.tabWidget.setCurrentIndex(0)
        self.segment.setStatus(_("Model set to {path}: press Initialize to use it.").format(
            path=path))


# ----------------------------------------------------------------------------------------------
# Self-test

class SGPSAMTest(ScriptedLoadableModuleTest, SelfTestCases):
    """Known lesions, the real Logic, Dice thresholds (runs in Slicer and in pytest).

    The test methods live in ``SGPSAMSlicerLib.selftest.SelfTestCases``. Without PyTorch (a
    fresh Slicer, an extension build machine) every test is skipped with the reason, under
    ``ctest -R py_SGPSAM`` (unittest) and under Reload and Test alike.
    """

    def setUp(self) -> None:
        reason = torch_missing_reason()
        if reason:
            self.skipTest(reason)
        slicer.mrmlScene.Clear(0)

    def makeLogic(self) -> SGPSAMLogic:
        return SGPSAMLogic()

    def runTest(self) -> None:
        for name in self.TEST_NAMES:
            try:
                self.setUp()
                getattr(self, name)()
            except unittest.SkipTest as exc:
                self.delayDisplay(f"{name} skipped: {exc}")
