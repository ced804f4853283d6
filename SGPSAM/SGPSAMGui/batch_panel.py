"""The Batch tab: its form is bound to the parameter node (``batch.*``); Start, Stop, the
progress bar, the per-case table and *Open selected result* call the module logic."""
from __future__ import annotations

import qt
import slicer
from SGPSAMSlicerLib.batch_tab import TABLE_COLUMNS
from SGPSAMSlicerLib.forms import SeedSource

from .common import TITLE, LogicCalls, tr

__all__ = ["BatchPanel"]


class BatchPanel:
    """Wires the Batch tab. ``form()`` returns the bound form (the parameter node's
    ``batch`` pack); ``jobStarted()`` starts the Widget's polling timer."""

    def __init__(self, ui, logic, calls: LogicCalls, form, jobStarted) -> None:
        self.ui = ui
        self.logic = logic
        self.calls = calls
        self.form = form
        self.jobStarted = jobStarted
        ui.batchTable.setColumnCount(len(TABLE_COLUMNS))
        ui.batchTable.setHorizontalHeaderLabels([tr(title) for title in TABLE_COLUMNS])
        ui.batchSeedsComboBox.currentIndexChanged.connect(self.updateForm)
        ui.batchStartButton.clicked.connect(self.onStart)
        ui.batchStopButton.clicked.connect(self.onStop)
        ui.batchOpenResultButton.clicked.connect(self.onOpenResult)
        logic.batch.on_row = self._onRow
        self.updateForm()

    def updateForm(self, *args) -> None:
        ui = self.ui
        csv = ui.batchSeedsComboBox.currentIndex == list(SeedSource).index(SeedSource.CSV)
        ui.batchSeedsCsvPathLineEdit.setEnabled(csv)
        ui.batchCsvSpaceComboBox.setEnabled(csv)
        running = self.logic.batch.is_running
        ui.batchStartButton.setEnabled(not running)
        ui.batchStopButton.setEnabled(running)

    def onStart(self) -> None:
        def start():
            if not self.calls.ensureDependencies(self.logic, "batch"):
                return None
            return self.logic.startBatch(self.form())

        self.ui.batchTable.setRowCount(0)
        if self.calls.run(tr("Batch"), start) is not None:
            self.jobStarted()
        self.updateForm()

    def onStop(self) -> None:
        self.logic.stopBatch()
        self.ui.batchStatusLabel.setText(tr("Stopping after the current case..."))

    def _onRow(self, index: int, row) -> None:
        table = self.ui.batchTable
        if table.rowCount <= index:
            table.setRowCount(index + 1)
        for column, text in enumerate(row.cells()):
            table.setItem(index, column, qt.QTableWidgetItem(text))

    def onOpenResult(self) -> None:
        row = self.ui.batchTable.currentRow()
        if row < 0:
            slicer.util.errorDisplay(tr("Select a case in the table first."), windowTitle=TITLE)
            return
        nodes = self.calls.run(tr("Open result"), self.logic.openBatchResult, row,
                               slicer.mrmlScene)
        if nodes:
            volume, _ = nodes
            slicer.util.setSliceViewerLayers(background=volume, fit=True)

    def showProgress(self) -> None:
        """After each poll: bar, status line and buttons."""
        tab = self.logic.batch
        if tab.job is not None:
            self.ui.batchProgressBar.setValue(tab.percent)
            self.ui.batchStatusLabel.setText(tab.display_text)
        self.updateForm()
