"""PNG plots of training and evaluation: loss and validation Dice per step, Dice per click.

Why matplotlib is optional: the library must install and run without it (Slicer's Python, CI
images, servers); only these plots need it. It is imported inside the functions, and drawn
through its object API (``Figure`` + the Agg canvas), never through ``pyplot``, so the plots
neither need a display nor change the backend of a host application (Slicer) that uses
matplotlib itself. Without matplotlib the writers raise :class:`PlotUnavailable`, whose message
says how to install it.

The data preparation (:func:`training_curve_data`, :func:`dice_per_click_data`) is separate
from the drawing and needs no matplotlib; it tolerates the records a resumed or just-started
training emits (repeated steps, no validation yet, None values).
"""
from __future__ import annotations

import math
import numbers
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

__all__ = ["PlotUnavailable", "INSTALL_HINT", "matplotlib_available", "TrainingCurve",
           "DiceSeries", "training_curve_data", "dice_per_click_data", "training_curve_figure",
           "dice_per_click_figure", "write_training_curve", "write_dice_per_click",
           "default_dice_plot_path", "LINE_COLOURS"]

PathLike = Union[str, "os.PathLike[str]"]

INSTALL_HINT = "pip install matplotlib  (or: pip install 'sgpsamlib[plots]')"
#: Line colours (hex) by series key; markers and line styles differ too (colour-blind safe).
LINE_COLOURS = {"loss": "#1f77b4", "val_first": "#d62728", "val_last": "#2ca02c",
                "all": "#000000", "small": "#d62728", "large": "#1f77b4"}
_STYLES = {"val_first": ("o", "-"), "val_last": ("s", "--"), "all": ("o", "-"),
           "small": ("v", "--"), "large": ("^", ":")}
_FIGURE_INCHES = {"training": (8.0, 6.0), "clicks": (7.0, 4.5)}
_DPI = 100


class PlotUnavailable(ImportError):
    """matplotlib is missing (or failed to draw): the plot was not written."""


def matplotlib_available() -> bool:
    """Whether matplotlib can be imported (without importing it)."""
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def _number(value: Any) -> float | None:
    """A finite float, or None (None, NaN, inf, strings and bools are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


# ----------------------------------------------------------------------------------------------
# Data.

@dataclass
class TrainingCurve:
    """Loss per logged step and validation Dice per validation step, sorted by step."""

    loss_steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    val_steps: list[int] = field(default_factory=list)
    val_first: list[float | None] = field(default_factory=list)   # Dice after click 1
    val_last: list[float | None] = field(default_factory=list)    # after the last click


def training_curve_data(history_records: Iterable[Any]) -> TrainingCurve:
    """Collect the curve from trainer records (only ``"event": "progress"`` ones are used).

    A step that occurs twice (a resumed run repeats steps after its last checkpoint) keeps its
    latest record. Validation values are taken once per ``val_step`` (every progress record
    repeats the latest validation until the next one); records before the first validation
    (``val_step`` None) contribute only their loss.
    """
    losses: dict[int, float] = {}
    vals: dict[int, tuple[float | None, float | None]] = {}
    for record in history_records or ():
        if not isinstance(record, Mapping) or record.get("event") != "progress":
            continue
        step = _number(record.get("step"))
        loss = _number(record.get("loss"))
        if step is not None and loss is not None:
            losses[int(step)] = loss
        val_step = _number(record.get("val_step"))
        if val_step is not None:
            first, last = _number(record.get("val_dice")), _number(record.get("val_dice_clicks"))
            if first is not None or last is not None:
                vals[int(val_step)] = (first, last)
    curve = TrainingCurve()
    for step in sorted(losses):
        curve.loss_steps.append(step)
        curve.loss.append(losses[step])
    for step in sorted(vals):
        curve.val_steps.append(step)
        curve.val_first.append(vals[step][0])
        curve.val_last.append(vals[step][1])
    return curve


@dataclass
class DiceSeries:
    """Mean Dice after each click for one group of lesions (None: no lesion in the group)."""

    key: str
    label: str
    lesions: int
    dice: list[float | None]


def dice_per_click_data(summary: Mapping[str, Any]) -> list[DiceSeries]:
    """All lesions, lesions < 1 mL and >= 1 mL from an evaluation summary.

    Reads ``summary["dice_per_click"]`` / ``["lesions"]`` and the same keys of
    ``summary["small"]`` and ``summary["large"]`` (see :func:`SGPSAMLib.evaluation.evaluate`);
    a missing group counts as empty. Raises ValueError if the summary has no Dice per click.
    """
    if not isinstance(summary, Mapping) or not isinstance(summary.get("dice_per_click"),
                                                          (list, tuple)):
        raise ValueError("evaluation summary: expected a 'dice_per_click' list (the summary "
                         "of sgpsam evaluate / evaluation.evaluate)")
    clicks = len(summary["dice_per_click"])
    threshold = _number(summary.get("small_lesion_ml")) or 1.0
    series = []
    for key, label, group in (("all", "all lesions", summary),
                              ("small", f"< {threshold:g} mL", summary.get("small")),
                              ("large", f">= {threshold:g} mL", summary.get("large"))):
        group = group if isinstance(group, Mapping) else {}
        values = list(group.get("dice_per_click") or [])[:clicks]
        values += [None] * (clicks - len(values))
        lesions = _number(group.get("lesions"))
        series.append(DiceSeries(key, label, int(lesions) if lesions is not None else 0,
                                 [_number(v) for v in values]))
    return series


# ----------------------------------------------------------------------------------------------
# Drawing.

def _matplotlib() -> tuple[Any, Any]:
    """(Figure class, Agg canvas class), or PlotUnavailable with the install command."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise PlotUnavailable(f"plots need matplotlib, which is not installed ({exc}): "
                              f"{INSTALL_HINT}") from None
    return Figure, FigureCanvasAgg


def _new_figure(kind: str) -> Any:
    figure_class, canvas_class = _matplotlib()
    figure = figure_class(figsize=_FIGURE_INCHES[kind], dpi=_DPI)
    canvas_class(figure)
    return figure


def _nan(values: Iterable[float | None]) -> list[float]:
    return [math.nan if v is None else float(v) for v in values]


def training_curve_figure(history_records: Iterable[Any], val_clicks: int | None = None,
                          title: str | None = None) -> Any:
    """A matplotlib Figure: loss per step (top; log scale when it spans > 10x) and
    validation Dice after click 1 and after the last click (bottom, 0..1)."""
    curve = training_curve_data(history_records)
    figure = _new_figure("training")
    loss_ax, dice_ax = figure.subplots(2, 1, sharex=True)
    if curve.loss:
        loss_ax.plot(curve.loss_steps, curve.loss, color=LINE_COLOURS["loss"], linewidth=1.5,
                     label="training loss")
        positive = [v for v in curve.loss if v > 0]
        if len(positive) == len(curve.loss) and max(positive) > 10 * min(positive):
            loss_ax.set_yscale("log")
    else:
        loss_ax.text(0.5, 0.5, "no training steps logged yet", ha="center", va="center",
                     transform=loss_ax.transAxes)
    loss_ax.set_ylabel("loss")
    loss_ax.grid(True, alpha=0.3)
    last_name = f"after click {val_clicks}" if val_clicks else "after the last click"
    if curve.val_steps:
        for key, values, name in (("val_first", curve.val_first, "after click 1"),
                                  ("val_last", curve.val_last, last_name)):
            marker, style = _STYLES[key]
            dice_ax.plot(curve.val_steps, _nan(values), color=LINE_COLOURS[key],
                         marker=marker, linestyle=style, linewidth=1.5, markersize=4,
                         label=f"validation Dice {name}")
        dice_ax.legend(loc="lower right", fontsize=9)
    else:
        dice_ax.text(0.5, 0.5, "no validation yet", ha="center", va="center",
                     transform=dice_ax.transAxes)
    dice_ax.set_ylim(0.0, 1.02)
    dice_ax.set_ylabel("validation Dice")
    dice_ax.set_xlabel("step")
    dice_ax.grid(True, alpha=0.3)
    if curve.loss_steps or curve.val_steps:
        last_step = max(curve.loss_steps[-1:] + curve.val_steps[-1:])
        dice_ax.set_xlim(0, max(1, last_step))
    figure.suptitle(title or "Training: loss and validation Dice")
    figure.tight_layout()
    return figure


def dice_per_click_figure(summary: Mapping[str, Any], title: str | None = None) -> Any:
    """A matplotlib Figure: mean Dice after each click for all, small and large lesions."""
    series = dice_per_click_data(summary)
    clicks = len(series[0].dice)
    figure = _new_figure("clicks")
    ax = figure.subplots()
    xs = list(range(1, clicks + 1))
    for item in series:
        marker, style = _STYLES[item.key]
        label = f"{item.label} (n={item.lesions})"
        if all(v is None for v in item.dice):
            label += ": none"
        ax.plot(xs, _nan(item.dice), color=LINE_COLOURS[item.key], marker=marker,
                linestyle=style, linewidth=1.8, markersize=6, label=label)
        final = item.dice[-1] if item.dice else None
        if final is not None:
            ax.annotate(f"{final:.2f}", (xs[-1], final), textcoords="offset points",
                        xytext=(6, 0), va="center", fontsize=8, color=LINE_COLOURS[item.key])
    ax.set_xticks(xs)
    ax.set_xlim(0.7, clicks + 0.6)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("click")
    ax.set_ylabel("mean Dice")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=9)
    if title is None:
        model = Path(str(summary.get("model") or "model")).name
        data = Path(str(summary.get("data") or "")).name
        title = f"Dice per click: {model}" + (f" on {data}" if data else "")
    ax.set_title(title)
    figure.tight_layout()
    return figure


def _save(figure_of: Any, path: PathLike) -> Path:
    """Build the figure and write it as PNG atomically; only PlotUnavailable or OSError out."""
    from .io import atomic_write

    target = Path(path)
    try:
        figure = figure_of()
    except PlotUnavailable:
        raise
    except Exception as exc:  # noqa: BLE001 - a plot must never stop training/evaluation
        raise PlotUnavailable(f"could not draw {target}: {type(exc).__name__}: {exc}") from exc
    with atomic_write(target) as tmp:
        try:
            figure.savefig(tmp, format="png", dpi=_DPI)
        except OSError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise PlotUnavailable(f"could not draw {target}: {type(exc).__name__}: {exc}"
                                  ) from exc
    return target


def write_training_curve(history_records: Iterable[Any], path: PathLike,
                         val_clicks: int | None = None, title: str | None = None) -> Path:
    """Write the training curve PNG (800 x 600 px) atomically; returns the path.

    ``history_records``: the trainer's records (any events; see :func:`training_curve_data`).
    ``val_clicks``: the validation's click count, for the legend ("after click 5").
    Raises only :class:`PlotUnavailable` (matplotlib missing or failing) or OSError (cannot
    write), so a caller can log and carry on.
    """
    records = list(history_records or ())
    return _save(lambda: training_curve_figure(records, val_clicks, title), path)


def write_dice_per_click(summary: Mapping[str, Any], path: PathLike,
                         title: str | None = None) -> Path:
    """Write the Dice-per-click PNG (700 x 450 px) of an evaluation summary atomically.

    Raises ValueError for a summary without Dice per click (checked before matplotlib is
    needed), :class:`PlotUnavailable` or OSError.
    """
    dice_per_click_data(summary)
    return _save(lambda: dice_per_click_figure(summary, title), path)


def default_dice_plot_path(out_json: PathLike) -> Path:
    """``eval.json`` -> ``eval_dice_per_click.png`` beside it."""
    out = Path(out_json)
    stem = out.name[:-len(".json")] if out.name.lower().endswith(".json") else out.name
    return out.with_name(f"{stem}_dice_per_click.png")
