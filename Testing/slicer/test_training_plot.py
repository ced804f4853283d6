"""The Training tab's live plot on real MRML: curves follow the child's progress records, the
chart holds exactly the two series, and a second plot in the same scene reuses the nodes."""
from __future__ import annotations

from pathlib import Path

import pytest
from replay import ReplayRunner
from SGPSAMSlicerLib.training_plot import CHART_NAME, TrainingPlot
from SGPSAMSlicerLib.training_tab import TrainingParams, TrainingTabLogic

pytest.importorskip("slicer")


def _progress(step: int, loss: float, val=None, val_step=None) -> dict:
    return {"event": "progress", "step": step, "total_steps": 6, "loss": loss, "lr": 1e-4,
            "val_dice": val, "val_step": val_step, "gate_rates": {"block2": 0.5}}


def _series_names(chart) -> list[str]:
    return [chart.GetNthPlotSeriesNode(i).GetName()
            for i in range(chart.GetNumberOfPlotSeriesNodes())]


def test_plot_follows_the_training_records(mrml, tmp_path: Path, no_vtk_errors) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "base.pt").write_bytes(b"weights")
    form = TrainingParams(output_folder=str(tmp_path / "run"), data_folder=str(tmp_path / "data"),
                          base_model=str(tmp_path / "base.pt"), epochs=1, device="cpu")
    script = [[_progress(1, 0.9), _progress(2, 0.7, val=0.4, val_step=2)],
              [_progress(3, 0.65, val=0.4, val_step=2), _progress(4, 0.5, val=0.55, val_step=4)]]
    logic = TrainingTabLogic(runner=ReplayRunner(chunks=script, hang=True), python="py")
    plot = TrainingPlot(mrml.scene)
    logic.start(form)

    logic.poll()
    plot.update(logic.loss_series, logic.val_series)
    assert plot.points("loss") == [(1.0, 0.9), (2.0, 0.7)]
    assert plot.points("val") == [(2.0, pytest.approx(0.4))]
    logic.poll()
    plot.update(logic.loss_series, logic.val_series)
    assert [y for _, y in plot.points("loss")] == pytest.approx([0.9, 0.7, 0.65, 0.5])
    assert plot.points("val") == [(2.0, pytest.approx(0.4)), (4.0, pytest.approx(0.55))]

    chart = plot.chart
    assert chart.GetName() == CHART_NAME
    assert _series_names(chart) == ["training loss", "validation Dice"]
    val_series = chart.GetNthPlotSeriesNode(1)
    assert val_series.GetXColumnName() == "step" and val_series.GetYColumnName() == "val_dice"
    assert val_series.GetTableNode() is plot.tables["val"]

    # A new run in the same scene (or a reloaded scene) reuses the nodes, nothing piles up.
    counts = {c: mrml.scene.GetNumberOfNodesByClass(c) for c in
              ("vtkMRMLPlotChartNode", "vtkMRMLPlotSeriesNode", "vtkMRMLTableNode")}
    again = TrainingPlot(mrml.scene)
    assert again.chart is chart and _series_names(again.chart) == _series_names(chart)
    assert counts == {c: mrml.scene.GetNumberOfNodesByClass(c) for c in counts}
    assert counts == {"vtkMRMLPlotChartNode": 1, "vtkMRMLPlotSeriesNode": 2,
                      "vtkMRMLTableNode": 2}
    again.clear()
    assert plot.points("loss") == [] and plot.points("val") == []
    logic.stop()
