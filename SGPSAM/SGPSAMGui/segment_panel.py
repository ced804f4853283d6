"""The Segment tab: model section, session, lesions, points, undo, shortcuts.

Thin: it reads the widgets, calls one Logic method per action (through ``LogicCalls``) and
shows the result. Markups events go through ``PointEventFilter`` (deferred, preview points
ignored) and placing through ``PlaceMode`` (the user's persistence setting restored): both are
Qt-free and tested on real MRML.
"""
from __future__ import annotations

import qt
import slicer
from SGPSAMSlicerLib.place_mode import PlaceMode
from SGPSAMSlicerLib.point_events import PointEventFilter
from SGPSAMSlicerLib.settings import LOCAL_MODEL
from SGPSAMSlicerLib.shortcuts import SHORTCUTS, shortcuts_help

from SGPSAMLib.errors import SGPSAMError

from .common import TITLE, LogicCalls, tr

__all__ = ["SegmentPanel"]


class SegmentPanel:
    """Wires the Segment tab's widgets (``ui``) to the module logic."""

    def __init__(self, ui, logic, calls: LogicCalls) -> None:
        self.ui = ui
        self.logic = logic
        self.calls = calls
        self.shortcuts: list = []
        self.placeMode = PlaceMode.from_application_logic(slicer.app.applicationLogic())
        self.events = PointEventFilter(
            logic, schedule=lambda ms, callback: qt.QTimer.singleShot(ms, callback),
            run=calls.run, busy=lambda: calls.busy,
            on_lesion_switched=self.refreshLesionList, on_result=self.showResult)
        logic.onSessionEnded = self._onSessionEnded
        self._setupModelSection()
        self._setupSegmentSection()
        self._setupShortcuts()

    # -- setup ------------------------------------------------------------------------------
    def _setupModelSection(self) -> None:
        from SGPSAMLib import models  # noqa: PLC0415 - stdlib only

        ui = self.ui
        ui.modelComboBox.clear()
        for name, info in models.KNOWN_MODELS.items():
            ui.modelComboBox.addItem(info.title, name)
        ui.modelComboBox.addItem(tr("Local checkpoint file"), LOCAL_MODEL)
        self.showModelSettings()
        ui.modelComboBox.currentIndexChanged.connect(self.onModelSettingsChanged)
        ui.checkpointPathLineEdit.currentPathChanged.connect(self.onModelSettingsChanged)
        ui.deviceComboBox.currentIndexChanged.connect(self.onModelSettingsChanged)
        ui.modalityComboBox.currentIndexChanged.connect(self.onModelSettingsChanged)
        ui.downloadButton.clicked.connect(self.onDownload)

    def showModelSettings(self) -> None:
        """The model section's widgets from the settings (without feedback loops)."""
        ui, settings = self.ui, self.logic.settings
        widgets = (ui.modelComboBox, ui.checkpointPathLineEdit, ui.deviceComboBox,
                   ui.modalityComboBox)
        for widget in widgets:
            widget.blockSignals(True)
        ui.modelComboBox.setCurrentIndex(max(ui.modelComboBox.findData(settings["model"]), 0))
        ui.checkpointPathLineEdit.currentPath = settings["checkpointPath"]
        ui.deviceComboBox.setCurrentIndex(max(ui.deviceComboBox.findText(settings["device"]), 0))
        ui.modalityComboBox.setCurrentIndex(
            max(ui.modalityComboBox.findText(settings["modality"]), 0))
        for widget in widgets:
            widget.blockSignals(False)
        self.updateModelSection()

    def _setupSegmentSection(self) -> None:
        ui = self.ui
        ui.initializeButton.clicked.connect(self.onInitialize)
        ui.addLesionButton.clicked.connect(self.onAddLesion)
        ui.positiveButton.toggled.connect(lambda on: self.onPlaceToggled(True, on))
        ui.negativeButton.toggled.connect(lambda on: self.onPlaceToggled(False, on))
        ui.undoButton.clicked.connect(self.onUndo)
        ui.resetButton.clicked.connect(self.onReset)
        ui.lesionComboBox.connect("activated(int)", self.onLesionChosen)
        ui.inputVolumeSelector.currentNodeChanged.connect(self.updateButtons)
        ui.segmentationSelector.currentNodeChanged.connect(self.updateButtons)
        ui.statusLabel.setText(tr("Choose a volume and press Initialize."))
        ui.timingLabel.setText("")
        ui.shortcutsLabel.setText(tr(shortcuts_help()))

    def _setupShortcuts(self) -> None:
        """Window shortcuts, enabled only while the module is shown. Without a main window
        (``--no-main-window``, as Slicer's generic module tests run) there are none."""
        mainWindow = slicer.util.mainWindow()
        if mainWindow is None:
            return
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
            shortcut = qt.QShortcut(qt.QKeySequence(keys), mainWindow)  # Qt.WindowShortcut
            shortcut.setEnabled(False)
            shortcut.connect("activated()", actions[name])
            self.shortcuts.append(shortcut)

    def setShortcutsEnabled(self, enabled: bool) -> None:
        for shortcut in self.shortcuts:
            shortcut.setEnabled(enabled)

    def cleanup(self) -> None:
        """Module reload or exit: stop placing, drop observers, delete the shortcuts."""
        self.stopPlacing()
        self.events.unobserve()
        for shortcut in self.shortcuts:
            shortcut.setEnabled(False)
            shortcut.setParent(None)
            shortcut.deleteLater()
        self.shortcuts = []
        self.logic.onSessionEnded = None

    # -- status -----------------------------------------------------------------------------
    def setStatus(self, text: str, repaint: bool = False) -> None:
        """One status line; ``repaint`` for long steps (never from inside VTK events)."""
        self.ui.statusLabel.setText(text)
        if repaint:
            slicer.app.processEvents()

    def showResult(self, result) -> None:
        if result is None:
            return
        self.ui.statusLabel.setText(result.message)
        timings = result.timings
        parts = [f"{tr('Last update')}: {result.seconds:.2f} s"]
        detail = ", ".join(f"{key.replace('_', ' ')} {timings[key]:.2f} s"
                           for key in ("encode", "decode", "map_back") if timings.get(key))
        if detail:
            parts.append(f"({detail})")
        self.ui.timingLabel.setText(" ".join(parts))

    # -- model section ----------------------------------------------------------------------
    def onModelSettingsChanged(self, *args) -> None:
        ui = self.ui
        try:
            self.logic.updateModelSettings(ui.modelComboBox.currentData or "demo",
                                           ui.checkpointPathLineEdit.currentPath,
                                           ui.deviceComboBox.currentText,
                                           ui.modalityComboBox.currentText)
        except ValueError as exc:
            self.setStatus(str(exc))
        self.updateModelSection()

    def updateModelSection(self) -> None:
        self.ui.checkpointPathLineEdit.setEnabled(self.logic.settings["model"] == LOCAL_MODEL)
        self.ui.modelStatusLabel.setText(self.logic.modelStatusText())
        # Persistent while the model runs on the CPU (known after Initialize for "auto").
        self.ui.cpuWarningLabel.setVisible(self.logic.cpuWarning())

    def onDownload(self) -> None:
        offer = self.calls.run(tr("Download"), self.logic.downloadOffer)
        if offer is None:
            return
        title, licence, folder = offer
        text = tr("{licence}\n\nThe file is saved in:\n{folder}\n\nDownload it now?").format(
            licence=licence, folder=folder)
        if not slicer.util.confirmOkCancelDisplay(text, windowTitle=tr("Download model")):
            return
        dialog = slicer.util.createProgressDialog(
            labelText=tr("Downloading {title}...").format(title=title), maximum=1000)

        def progress(done: int, total) -> None:
            from SGPSAMLib.models import format_size  # noqa: PLC0415 - stdlib only

            if total:
                dialog.setValue(int(1000 * done / total))
            dialog.setLabelText(tr("Downloading {title}: {size}").format(
                title=title, size=format_size(done)))
            slicer.app.processEvents()

        try:
            name = self.logic.downloadModel(progress=progress, stop=lambda: dialog.wasCanceled)
        except SGPSAMError as exc:
            slicer.util.errorDisplay(tr("Download failed:\n\n{error}").format(error=exc),
                                     windowTitle=TITLE)
            return
        finally:
            dialog.close()
        self.logic.updateModelSettings(name, self.logic.settings["checkpointPath"],
                                       self.logic.settings["device"],
                                       self.logic.settings["modality"])
        self.showModelSettings()

    # -- session ----------------------------------------------------------------------------
    def onInitialize(self) -> None:
        volume = self.ui.inputVolumeSelector.currentNode()
        segmentation = self.ui.segmentationSelector.currentNode()

        def initialize():
            if not self.calls.ensureDependencies(self.logic, "segment"):
                return None
            self.stopPlacing()
            description, seconds = self.logic.initialize(
                volume, segmentation, status=lambda text: self.setStatus(text, repaint=True))
            self.ui.segmentationSelector.setCurrentNode(self.logic.sessionNodes()[1])
            self.afterLesionChange()
            self.updateModelSection()
            self.setStatus(tr("Ready ({model}); first region prepared in {seconds:.1f} s. "
                              "Place positive ({a}) and negative ({x}) points.").format(
                model=description, seconds=seconds, a=SHORTCUTS["positive"],
                x=SHORTCUTS["negative"]))
            return True

        self.calls.run(tr("Initialize"), initialize)

    def _onSessionEnded(self, reason: str) -> None:
        self.stopPlacing()
        self.events.unobserve()
        self.refreshLesionList()
        self.setStatus(reason)
        self.updateButtons()

    def sceneClosing(self) -> None:
        self.stopPlacing()
        self.events.unobserve()
        self.logic.endSession()

    # -- lesions ----------------------------------------------------------------------------
    def onAddLesion(self) -> None:
        if not self.logic.hasSession():
            return
        self.calls.run(tr("Add lesion"), self.logic.addLesion)
        self.afterLesionChange()

    def onLesionChosen(self, index: int) -> None:
        segmentId = self.ui.lesionComboBox.itemData(index)
        if segmentId and self.logic.hasSession():
            self.calls.run(tr("Choose lesion"), self.logic.setActiveLesion, segmentId)
            self.afterLesionChange()

    def onUndo(self) -> None:
        if self.logic.hasSession():
            self.showResult(self.calls.run(tr("Undo"), self.logic.undo))

    def onReset(self) -> None:
        if self.logic.hasSession():
            self.showResult(self.calls.run(tr("Reset"), self.logic.reset))

    def afterLesionChange(self) -> None:
        """Refresh the lesion list, the markups observers and the place target."""
        self.events.observe()
        self.refreshLesionList()
        if self.ui.positiveButton.checked or self.ui.negativeButton.checked:
            self.startPlacing(self.ui.positiveButton.checked)
        self.updateButtons()

    def refreshLesionList(self) -> None:
        combo = self.ui.lesionComboBox
        combo.blockSignals(True)
        combo.clear()
        for segmentId, name in self.logic.lesions():
            combo.addItem(name, segmentId)
        if self.logic.hasSession():
            combo.setCurrentIndex(max(combo.findData(self.logic.activeLesion()), 0))
        combo.blockSignals(False)

    def updateButtons(self, *args) -> None:
        ui, logic = self.ui, self.logic
        session = logic.hasSession()
        ready = session and logic.activeLesion() is not None
        volume = ui.inputVolumeSelector.currentNode()
        ui.initializeButton.setEnabled(volume is not None and not self.calls.busy)
        for widget in (ui.positiveButton, ui.negativeButton, ui.undoButton, ui.resetButton):
            widget.setEnabled(ready)
        ui.addLesionButton.setEnabled(session)
        ui.lesionComboBox.setEnabled(session)
        sessionVolume, sessionSegmentation = logic.sessionNodes()
        segmentation = ui.segmentationSelector.currentNode()
        if session and (volume is not sessionVolume or
                        segmentation not in (None, sessionSegmentation)):
            ui.statusLabel.setText(tr("The input volume or segmentation changed: press "
                                      "Initialize."))

    # -- placing points ---------------------------------------------------------------------
    def onPlaceToggled(self, positive: bool, on: bool) -> None:
        other = self.ui.negativeButton if positive else self.ui.positiveButton
        if on:
            other.blockSignals(True)
            other.setChecked(False)
            other.blockSignals(False)
            self.startPlacing(positive)
        elif not other.checked:
            self.stopPlacing()

    def startPlacing(self, positive: bool) -> None:
        node = self.logic.activeMarkupsNode(positive)
        if node is not None:
            self.placeMode.start(node)

    def stopPlacing(self) -> None:
        self.placeMode.stop()
        self._uncheckPlaceButtons()

    def interactionModeChanged(self) -> None:
        """Placing ended in a view (right-click, double-click) or elsewhere."""
        if self.placeMode.interaction_mode_changed():
            self._uncheckPlaceButtons()

    def _uncheckPlaceButtons(self) -> None:
        for button in (self.ui.positiveButton, self.ui.negativeButton):
            button.blockSignals(True)
            button.setChecked(False)
            button.blockSignals(False)
