"""The Training tab's live plot as MRML nodes: loss and validation Dice against the step.

Why MRML and not a Qt chart: Slicer's plot view shows any ``vtkMRMLPlotChartNode``, the nodes
are saved with the scene (the curves of a run stay inspectable after Slicer restarts), and the
update logic runs, and is tested, without Qt. The Widget only asks Slicer to show the chart.

Two tables, because the curves have different x values: ``loss`` has a point per progress
record, ``validation Dice`` one per validation.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["TrainingPlot", "CHART_NAME"]

CHART_NAME = "SGP-SAM training"
_SERIES = (
    # (role, y column, series name, colour, marker style)
    ("loss", "loss", "training loss", (0.85, 0.33, 0.10), "none"),
    ("val", "val_dice", "validation Dice", (0.0, 0.45, 0.74), "circle"),
)


class TrainingPlot:
    """Owns one chart, two tables and two series in ``scene``; ``update`` rewrites the data.

    Nodes are looked up by their attribute ``SGPSAM.TrainingPlot`` = role, so a plot made
    before (an earlier run, a reloaded scene) is reused instead of piling up copies.
    """

    ATTRIBUTE = "SGPSAM.TrainingPlot"

    def __init__(self, scene: Any) -> None:
        self.scene = scene
        self.chart = self._node("vtkMRMLPlotChartNode", "chart", CHART_NAME)
        self.tables: dict[str, Any] = {}
        self.series: dict[str, Any] = {}
        for role, column, name, colour, marker in _SERIES:
            table = self._node("vtkMRMLTableNode", f"{role}_table", f"{CHART_NAME}: {name}")
            self._ensure_columns(table, ("step", column))
            series = self._node("vtkMRMLPlotSeriesNode", f"{role}_series", name)
            series.SetAndObserveTableNodeID(table.GetID())
            series.SetXColumnName("step")
            series.SetYColumnName(column)
            series.SetPlotType(series.PlotTypeScatter)
            series.SetLineStyle(series.LineStyleSolid)
            series.SetMarkerStyle(series.GetMarkerStyleFromString(marker))
            series.SetColor(*colour)
            if not self._chart_has(series.GetID()):
                self.chart.AddAndObservePlotSeriesNodeID(series.GetID())
            self.tables[role], self.series[role] = table, series
        self.chart.SetTitle(CHART_NAME)
        self.chart.SetXAxisTitle("step")
        self.chart.SetYAxisTitle("loss / Dice")
        self.chart.SetLegendVisibility(True)

    # -- nodes -----------------------------------------------------------------------------
    def _node(self, class_name: str, role: str, name: str) -> Any:
        for index in range(self.scene.GetNumberOfNodesByClass(class_name)):
            node = self.scene.GetNthNodeByClass(index, class_name)
            if node.GetAttribute(self.ATTRIBUTE) == role:
                return node
        node = self.scene.AddNewNodeByClass(class_name, name)
        node.SetAttribute(self.ATTRIBUTE, role)
        return node

    def _chart_has(self, series_id: str) -> bool:
        return any(self.chart.GetNthPlotSeriesNodeID(i) == series_id
                   for i in range(self.chart.GetNumberOfPlotSeriesNodes()))

    @staticmethod
    def _ensure_columns(table_node: Any, names: Sequence[str]) -> None:
        import vtk  # noqa: PLC0415 - only where MRML exists

        table = table_node.GetTable()
        for name in names:
            if table.GetColumnByName(name) is None:
                column = vtk.vtkDoubleArray()
                column.SetName(name)
                table.AddColumn(column)

    # -- data ------------------------------------------------------------------------------
    def update(self, loss_series: Sequence[tuple[float, float]],
               val_series: Sequence[tuple[float, float]]) -> None:
        """Replace both curves with these (step, value) points."""
        for role, points in (("loss", loss_series), ("val", val_series)):
            table = self.tables[role].GetTable()
            table.SetNumberOfRows(len(points))
            x, y = table.GetColumn(0), table.GetColumn(1)
            for row, (step, value) in enumerate(points):
                x.SetValue(row, float(step))
                y.SetValue(row, float(value))
            table.Modified()
            self.tables[role].Modified()

    def clear(self) -> None:
        self.update([], [])

    def points(self, role: str) -> list[tuple[float, float]]:
        """The (step, value) points the chart shows for "loss" or "val" (for tests, scripts)."""
        table = self.tables[role].GetTable()
        x, y = table.GetColumn(0), table.GetColumn(1)
        return [(x.GetValue(r), y.GetValue(r)) for r in range(table.GetNumberOfRows())]
