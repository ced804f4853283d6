"""The Training tab: its form is bound to the parameter node (``training.*``); Start, Stop,
progress, gate rates, the live chart (Slicer's plot view) and *Use trained model* call the
module logic."""
from __future__ import annotations

import qt
import slicer

from .common import TITLE, LogicCalls, tr

__all__ = ["TrainingPanel"]


class TrainingPanel:
    """Wires the Training tab. ``form()`` returns the bound form (the parameter node's
    ``training`` pack); ``jobStarted()`` starts the polling timer; ``modelChosen(path)``
    shows the Segment tab with the new model."""

    def __init__(self, ui, logic, calls: LogicCalls, form, jobStarted, modelChosen) -> None:
        self.ui = ui
        self.logic = logic
        self.calls = calls
        self.form = form
        self.jobStarted = jobStarted
        self.modelChosen = modelChosen
        self.plot = None
        ui.trainStartButton.clicked.connect(self.onStart)
        ui.trainStopButton.clicked.connect(self.onStop)
        ui.trainUseModelButton.clicked.connect(self.onUseModel)
        logic.training.on_log = ui.trainLogTextEdit.appendPlainText
        logic.training.on_state = self._onState
        self.updateForm()

    def updateForm(self, *args) -> None:
        running = self.logic.training.is_running
        self.ui.trainStartButton.setEnabled(not running)
        self.ui.trainStopButton.setEnabled(running)

    def onStart(self) -> None:
        def start():
            if not self.calls.ensureDependencies(self.logic, "train"):
                return None
            return self.logic.startTraining(self.form(), slicer.mrmlScene)

        self.ui.trainLogTextEdit.clear()
        if self.calls.run(tr("Training"), start) is not None:
            self._showPlot()
            self.jobStarted()
        self.updateForm()

    def _showPlot(self) -> None:
        """Loss and validation Dice in Slicer's plot view (nodes: SGPSAMSlicerLib.training_plot)."""
        from SGPSAMSlicerLib.training_plot import TrainingPlot  # noqa: PLC0415

        self.plot = TrainingPlot(slicer.mrmlScene)
        self.plot.clear()
        slicer.modules.plots.logic().ShowChartInLayout(self.plot.chart)

    def sceneClosing(self) -> None:
        self.plot = None  # its nodes go with the scene; the next run makes new ones

    def _onState(self, state) -> None:
        """When a run ends with a model, offer it to the Segment tab (after this poll)."""
        if state.ended and self.logic.training.result_model_path:
            qt.QTimer.singleShot(0, self._offerTrainedModel)

    def _offerTrainedModel(self) -> None:
        path = self.logic.training.result_model_path
        if path and slicer.util.confirmYesNoDisplay(
                tr("Training ended. Use the new model in the Segment tab?\n{path}").format(
                    path=path), windowTitle=TITLE):
            self.onUseModel()

    def onStop(self) -> None:
        self.logic.stopTraining()
        self.ui.trainStatusLabel.setText(tr("Stopping: the current checkpoint is saved..."))

    def onUseModel(self) -> None:
        path = self.calls.run(tr("Use trained model"), self.logic.useTrainedModel)
        if path:
            self.modelChosen(path)

    def showProgress(self) -> None:
        """After each poll: bar, status, gate rates, chart and buttons."""
        tab = self.logic.training
        if tab.job is not None:
            self.ui.trainProgressBar.setValue(tab.percent)
            self.ui.trainStatusLabel.setText(tab.display_text)
        self.ui.trainGateRatesLabel.setText(tab.gate_rates_text())
        if self.plot is not None:
            self.plot.update(tab.loss_series, tab.val_series)
        self.updateForm()
