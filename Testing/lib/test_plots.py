"""plots.py: the curve data from trainer records, Dice per click from a summary, the PNGs
(where the lines are drawn), the missing-matplotlib error, and ``sgpsam evaluate``'s plot."""
from __future__ import annotations

import builtins
import json
import math
from pathlib import Path

import numpy as np
import pytest

from SGPSAMLib import plots
from SGPSAMLib.overlay import read_png
from SGPSAMLib.plots import (
    LINE_COLOURS,
    PlotUnavailable,
    default_dice_plot_path,
    dice_per_click_data,
    training_curve_data,
    write_dice_per_click,
    write_training_curve,
)


def _records(steps=2000, log_every=10, val_every=250, resume_at=None):
    """Trainer-like history: loss decays; validation every ``val_every`` steps, repeated in
    every progress record until the next one; optionally a resume that repeats steps."""
    records = [{"event": "start", "total_steps": steps}]
    val = {"val_dice": None, "val_dice_clicks": None, "val_step": None}
    for step in range(log_every, steps + 1, log_every):
        if step % val_every == 0:
            first = 0.1 + 0.4 * (1 - math.exp(-step / 700))
            val = {"val_dice": first, "val_dice_clicks": first + 0.15, "val_step": step}
        records.append({"event": "progress", "step": step, "loss": 1.5 * math.exp(-step / 500)
                        + 0.2, "lr": 1e-3, **val})
        if step % 500 == 0:
            records.append({"event": "checkpoint", "step": step, "val_dice": val["val_dice"]})
    if resume_at is not None:  # the resumed run repeats steps after its checkpoint
        records.append({"event": "start", "resumed": True})
        for step in range(resume_at + log_every, steps + 1, log_every):
            records.append({"event": "progress", "step": step, "loss": 9.0, "val_dice": 0.9,
                            "val_dice_clicks": 0.95, "val_step": steps})
    records.append({"event": "done", "step": steps})
    return records


def _summary():
    return {"dice_per_click": [0.5, 0.6, 0.7, 0.72, 0.75], "lesions": 12, "clicks": 5,
            "small_lesion_ml": 1.0, "model": "/somewhere/runs/best.pt", "data": "/d/heldout",
            "small": {"lesions": 5, "dice_per_click": [0.2, 0.4, 0.5, 0.55, 0.6]},
            "large": {"lesions": 7, "dice_per_click": [0.7, 0.75, 0.8, 0.85, 0.86]}}


# ----------------------------------------------------------------------------------------------
# Data (no matplotlib needed).

def test_training_curve_data_from_trainer_records():
    curve = training_curve_data(_records())
    assert curve.loss_steps == list(range(10, 2001, 10))
    assert curve.loss[0] == pytest.approx(1.5 * math.exp(-10 / 500) + 0.2)
    # One point per validation, not one per progress record; none before the first one.
    assert curve.val_steps == list(range(250, 2001, 250))
    assert curve.val_first[0] == pytest.approx(0.1 + 0.4 * (1 - math.exp(-250 / 700)))
    assert curve.val_last[-1] == pytest.approx(curve.val_first[-1] + 0.15)
    # A resumed run's repeated steps replace the earlier records of those steps.
    resumed = training_curve_data(_records(resume_at=1500))
    assert resumed.loss_steps == curve.loss_steps
    assert resumed.loss[curve.loss_steps.index(1500)] == curve.loss[curve.loss_steps.index(1500)]
    assert resumed.loss[curve.loss_steps.index(1510)] == 9.0
    assert resumed.val_first[-1] == 0.9 and resumed.val_steps == curve.val_steps
    # Garbage is skipped, not fatal: non-dicts, strings, NaN, bools, missing keys.
    junk = [None, 5, "x", {"event": "progress", "step": "10", "loss": 1.0},
            {"event": "progress", "step": 20, "loss": float("nan")},
            {"event": "progress", "step": True, "loss": 1.0},
            {"event": "progress", "step": 30, "loss": np.float32(0.5), "val_step": 30,
             "val_dice": None, "val_dice_clicks": float("inf")},
            {"event": "progress", "step": 40, "loss": 0.25, "val_step": 40, "val_dice": 0.3}]
    curve = training_curve_data(junk)
    assert curve.loss_steps == [30, 40] and curve.loss == [0.5, 0.25]
    assert curve.val_steps == [40] and curve.val_first == [0.3] and curve.val_last == [None]
    assert training_curve_data([]).loss == [] and training_curve_data(None).val_steps == []


def test_dice_per_click_data_groups_counts_and_empty_groups():
    series = dice_per_click_data(_summary())
    assert [(s.key, s.label, s.lesions) for s in series] == [
        ("all", "all lesions", 12), ("small", "< 1 mL", 5), ("large", ">= 1 mL", 7)]
    assert series[2].dice == [0.7, 0.75, 0.8, 0.85, 0.86]
    empty = _summary()
    empty["small"] = {"lesions": 0, "dice_per_click": [None] * 5}
    del empty["large"]
    series = dice_per_click_data(empty)
    assert series[1].dice == [None] * 5 and series[1].lesions == 0
    assert series[2].dice == [None] * 5 and series[2].lesions == 0
    with pytest.raises(ValueError, match="dice_per_click"):
        dice_per_click_data({"lesions": 3})
    assert default_dice_plot_path("out/eval.json") == Path("out/eval_dice_per_click.png")
    assert default_dice_plot_path("eval.JSON").name == "eval_dice_per_click.png"
    assert default_dice_plot_path("results").name == "results_dice_per_click.png"


def test_without_matplotlib_the_error_says_how_to_install(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.split(".")[0] == "matplotlib":
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    for write, data in ((write_training_curve, _records()), (write_dice_per_click, _summary())):
        with pytest.raises(PlotUnavailable, match="pip install matplotlib"):
            write(data, tmp_path / "p.png")
    assert list(tmp_path.iterdir()) == []
    assert issubclass(PlotUnavailable, ImportError)


# ----------------------------------------------------------------------------------------------
# Drawing.

def _rgb(hex_colour):
    return np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)])


def _ink_near(image, x_pixel, y_pixel, colour, radius=1, tolerance=30):
    """Whether a pixel within ``radius`` of display point (x, y) has ``colour``."""
    col, row = int(round(x_pixel)), int(round(image.shape[0] - y_pixel))
    patch = image[max(row - radius, 0):row + radius + 1,
                  max(col - radius, 0):col + radius + 1, :3].astype(int)
    return bool(np.min(np.abs(patch - _rgb(colour)).sum(axis=2)) <= tolerance)


def _canvas(figure):
    figure.canvas.draw()
    return np.asarray(figure.canvas.buffer_rgba())


def test_training_curve_png_has_the_lines_where_the_data_is(tmp_path):
    pytest.importorskip("matplotlib")
    records = _records()
    curve = training_curve_data(records)
    figure = plots.training_curve_figure(records, val_clicks=5)
    image = _canvas(figure)
    loss_ax, dice_ax = figure.axes[:2]
    path = write_training_curve(records, tmp_path / "training_curve.png", val_clicks=5)
    png = read_png(path)
    assert png.shape[:2] == (600, 800) == image.shape[:2]
    assert not list(tmp_path.glob(".*tmp*"))
    for canvas in (image, png):
        for step, loss in zip(curve.loss_steps[::10], curve.loss[::10]):
            assert _ink_near(canvas, *loss_ax.transData.transform((step, loss)),
                             LINE_COLOURS["loss"]), step
        for key, values in (("val_first", curve.val_first), ("val_last", curve.val_last)):
            for step, value in zip(curve.val_steps, values):
                assert _ink_near(canvas, *dice_ax.transData.transform((step, value)),
                                 LINE_COLOURS[key]), (key, step)
        # ... and not where it is not: well above the loss curve, below the Dice curves.
        assert not _ink_near(canvas, *loss_ax.transData.transform((1500, 1.4)),
                             LINE_COLOURS["loss"], radius=3)
        assert not _ink_near(canvas, *dice_ax.transData.transform((1500, 0.1)),
                             LINE_COLOURS["val_first"], radius=3)
    legend = [t.get_text() for t in dice_ax.get_legend().get_texts()]
    assert legend == ["validation Dice after click 1", "validation Dice after click 5"]
    assert dice_ax.get_ylim() == pytest.approx((0.0, 1.02))


def test_training_curve_before_any_validation_and_on_garbage(tmp_path):
    pytest.importorskip("matplotlib")
    early = _records(steps=100, val_every=1000)
    figure = plots.training_curve_figure(early)
    texts = [t.get_text() for t in figure.axes[1].texts]
    assert texts == ["no validation yet"]
    assert read_png(write_training_curve(early, tmp_path / "a.png")).shape[:2] == (600, 800)
    assert write_training_curve([None, {"event": "progress"}], tmp_path / "b.png").is_file()


def test_write_errors_are_oserror_or_plot_unavailable(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    with pytest.raises(OSError, match="does not exist"):
        write_training_curve(_records(), tmp_path / "missing" / "c.png")

    def broken(*args, **kwargs):
        raise RuntimeError("renderer exploded")

    monkeypatch.setattr(plots, "training_curve_figure", broken)
    with pytest.raises(PlotUnavailable, match="renderer exploded"):
        write_training_curve(_records(), tmp_path / "c.png")
    assert list(tmp_path.iterdir()) == []


def test_dice_per_click_png_shows_three_groups(tmp_path):
    pytest.importorskip("matplotlib")
    summary = _summary()
    figure = plots.dice_per_click_figure(summary)
    image = _canvas(figure)
    ax = figure.axes[0]
    for item in dice_per_click_data(summary):
        for click, value in enumerate(item.dice, start=1):
            assert _ink_near(image, *ax.transData.transform((click, value)),
                             LINE_COLOURS[item.key], radius=2), (item.key, click)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["all lesions (n=12)", "< 1 mL (n=5)", ">= 1 mL (n=7)"]
    assert ax.get_title() == "Dice per click: best.pt on heldout"
    png = read_png(write_dice_per_click(summary, tmp_path / "d.png"))
    assert png.shape[:2] == (450, 700)
    # An empty group is named in the legend and has no points.
    summary["small"] = {"lesions": 0, "dice_per_click": [None] * 5}
    figure = plots.dice_per_click_figure(summary)
    image = _canvas(figure)
    ax = figure.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()][1] == "< 1 mL (n=0): none"
    assert not _ink_near(image, *ax.transData.transform((1, 0.2)), LINE_COLOURS["small"], 3)


# ----------------------------------------------------------------------------------------------
# sgpsam evaluate writes the plot.

class _FakeResult:
    def __init__(self, summary):
        self.summary = {**summary, "cases": 2, "cases_failed": 0, "seconds": 1.0,
                        "device": "cpu", "stopped": False, "dice_auc": 0.6, "nsd": 0.7,
                        "nsd_tolerance_mm": 2.0}
        for name in ("small", "large"):
            group = self.summary[name]
            group.update(dice_1=group["dice_per_click"][0], dice_final=group["dice_per_click"][-1],
                         nsd=0.5)
        self.cases = []

    def write_json(self, path):
        Path(path).write_text(json.dumps({"summary": self.summary}))

    def write_csv(self, path):
        Path(path).write_text("case\n")


def test_cli_evaluate_writes_the_dice_per_click_plot(tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    from SGPSAMLib import evaluation
    from SGPSAMLib.cli import main

    calls = []

    def fake_evaluate(*args, **kwargs):
        calls.append(kwargs)
        return _FakeResult(_summary())

    monkeypatch.setattr(evaluation, "evaluate", fake_evaluate)
    out_json = tmp_path / "eval.json"
    code = main(["evaluate", "--model", "m", "--data", str(tmp_path), "--clicks", "5",
                 "--out-json", str(out_json)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    plot = tmp_path / "eval_dice_per_click.png"
    assert read_png(plot).shape[:2] == (450, 700)
    assert f"Dice-per-click plot: {plot}" in captured.out
    # An explicit path, JSON output naming it; --no-plot writes none.
    other = tmp_path / "curve.png"
    assert main(["evaluate", "--model", "m", "--data", str(tmp_path), "--out-plot", str(other),
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["out_plot"] == str(other) and other.is_file()
    plot.unlink()
    assert main(["evaluate", "--model", "m", "--data", str(tmp_path), "--out-json",
                 str(out_json), "--no-plot"]) == 0
    assert not plot.exists()
    # A bad --out-plot is refused before evaluating.
    calls.clear()
    assert main(["evaluate", "--model", "m", "--data", str(tmp_path), "--out-plot",
                 str(tmp_path / "no" / "p.png")]) == 2
    assert "--out-plot" in capsys.readouterr().err and calls == []


def test_cli_evaluate_without_matplotlib(tmp_path, capsys, monkeypatch):
    from SGPSAMLib import evaluation
    from SGPSAMLib.cli import main

    monkeypatch.setattr(evaluation, "evaluate", lambda *a, **k: _FakeResult(_summary()))
    monkeypatch.setattr(plots, "matplotlib_available", lambda: False)
    out_json = tmp_path / "eval.json"
    assert main(["evaluate", "--model", "m", "--data", str(tmp_path), "--out-json",
                 str(out_json)]) == 0
    captured = capsys.readouterr()
    assert out_json.is_file() and not (tmp_path / "eval_dice_per_click.png").exists()
    lines = [line for line in captured.err.splitlines() if "matplotlib" in line]
    assert len(lines) == 1 and "pip install matplotlib" in lines[0]
    # Asked for explicitly: one clear error, exit 2, nothing evaluated or written.
    out_json.unlink()
    assert main(["evaluate", "--model", "m", "--data", str(tmp_path), "--out-json",
                 str(out_json), "--out-plot", str(tmp_path / "p.png")]) == 2
    assert "pip install matplotlib" in capsys.readouterr().err and not out_json.exists()
