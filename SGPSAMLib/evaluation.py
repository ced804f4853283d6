"""Interactive-click evaluation: what a user gets after 1, 2, ... K clicks on every lesion.

Why this way: the product is the click tool, so the evaluation drives the *real*
:class:`~SGPSAMLib.session.InteractiveSession` (region placement, embedding cache, windows,
mapping back to the original grid) with simulated clicks, and scores the mask on the image's own
voxel grid, not in the model's crop.

Protocol, per lesion (a connected component of the target labels, or a whole label value; see
:func:`SGPSAMLib.cases.load_case`):

1. The session is reset (cached embeddings are kept). Click 1 is positive, at the lesion's most
   interior voxel (largest distance in mm to the nearest non-lesion voxel; ties: nearest the
   lesion's centroid, then the first in array order).
2. After each click the mask is scored against the lesion. Voxels of *other* lesions are
   ignored (neither false positives nor errors to correct): each lesion is judged on its own.
3. Click n + 1 goes to the most interior voxel of the largest connected error region
   (26-connectivity): a false-negative region gives a positive click, a false-positive region a
   negative one (ties: false negatives first). Without any error no click is added and the
   Dice carries over.

Metrics: Dice after every click; Dice-AUC = mean Dice over clicks 1..K (the area under the
Dice-vs-click curve, normalised to [0, 1]); the normalised surface Dice (NSD, Nikolov et al.)
of the final mask at ``nsd_tolerance_mm`` (surface voxels = mask minus its 6-connected erosion,
as MONAI's ``compute_surface_dice``; distances in mm with the voxel spacing, computed with
SimpleITK, so scipy is not needed); the lesion's size (voxels, mL, equivalent diameter).
Summaries are given over all lesions and separately for lesions below 1 mL and from 1 mL on.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Union

import numpy as np

from .click_robot import (
    as_mask,
    check_spacing,
    connected_components,
    distance_to,
    interior_voxel,
    mask_bbox,
    next_click,
)
from .errors import SGPSAMError
from .geometry import Volume
from .job import StopFlag, is_stopped, json_safe  # json_safe: also evaluation.json_safe
from .options import LESION_UNITS, look_up_option

__all__ = [
    "EvaluationResult",
    "evaluate",
    "dice",
    "dice_auc",
    "normalized_surface_dice",
    "interior_voxel",
    "connected_components",
    "next_click",
    "SimulatedClick",
    "simulate_lesion",
    "NSD_TOLERANCE_MM",
    "SMALL_LESION_ML",
    "json_safe",
]

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]
ProgressFn = Callable[[dict], None]

#: Default NSD tolerance (mm).
NSD_TOLERANCE_MM = 2.0
#: Lesions below this volume are summarised separately ("small").
SMALL_LESION_ML = 1.0

BBox = tuple[slice, slice, slice]


# ----------------------------------------------------------------------------------------------
# Masks and metrics (numpy + SimpleITK; exact and unit-tested).

def dice(pred: np.ndarray, truth: np.ndarray, ignore: np.ndarray | None = None) -> float:
    """Dice of two masks, voxels in ``ignore`` left out; 1.0 when both are empty."""
    p, t = as_mask(pred, "pred"), as_mask(truth, "truth")
    if p.shape != t.shape:
        raise ValueError(f"pred {p.shape} and truth {t.shape} must have the same shape")
    if ignore is not None:
        keep = ~as_mask(ignore, "ignore")
        p, t = p & keep, t & keep
    total = int(np.count_nonzero(p)) + int(np.count_nonzero(t))
    if total == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(p & t)) / total


def dice_auc(dice_per_click: Sequence[float]) -> float:
    """Mean Dice over clicks 1..K: the area under the Dice-vs-click curve normalised to [0, 1]."""
    values = [float(v) for v in dice_per_click]
    if not values:
        raise ValueError("dice_per_click must hold at least one value")
    return float(np.mean(values))


def _erode6(mask: np.ndarray) -> np.ndarray:
    """6-connected erosion by one voxel; outside the array counts as background."""
    out = mask.copy()
    for axis in range(3):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        out[tuple(lo)] &= mask[tuple(hi)]
        out[tuple(hi)] &= mask[tuple(lo)]
        edge = [slice(None)] * 3
        edge[axis] = 0
        out[tuple(edge)] = False
        edge[axis] = -1
        out[tuple(edge)] = False
    return out


def normalized_surface_dice(pred: np.ndarray, truth: np.ndarray,
                            spacing: Sequence[float] | None = None,
                            tolerance_mm: float = NSD_TOLERANCE_MM,
                            ignore: np.ndarray | None = None) -> float:
    """Normalised surface Dice at ``tolerance_mm``: the share of both surfaces within tolerance.

    ``spacing`` is (i, j, k) mm, i.e. ``Volume.spacing`` for a (K, J, I) array. Both masks
    empty: NaN (as MONAI); exactly one empty: 0.
    """
    p, t = as_mask(pred, "pred"), as_mask(truth, "truth")
    if p.shape != t.shape:
        raise ValueError(f"pred {p.shape} and truth {t.shape} must have the same shape")
    sp = check_spacing(spacing)
    if ignore is not None:
        keep = ~as_mask(ignore, "ignore")
        p, t = p & keep, t & keep
    box = mask_bbox(p | t, pad=1)
    if box is None:
        return float("nan")
    p, t = p[box], t[box]
    if not p.any() or not t.any():
        return 0.0
    surface_p, surface_t = p & ~_erode6(p), t & ~_erode6(t)
    to_t = distance_to(surface_t, sp)[surface_p]
    to_p = distance_to(surface_p, sp)[surface_t]
    tol = float(tolerance_mm) + 1e-6
    correct = int(np.count_nonzero(to_t <= tol)) + int(np.count_nonzero(to_p <= tol))
    return correct / float(to_t.size + to_p.size)


@dataclass(frozen=True)
class SimulatedClick:
    """A simulated click: array index (k, j, i), RAS mm, and its sign."""

    kji: tuple[int, int, int]
    ras: tuple[float, float, float]
    positive: bool

    def to_dict(self) -> dict[str, Any]:
        return {"kji": list(self.kji), "ras": [round(v, 4) for v in self.ras],
                "positive": self.positive}


# ----------------------------------------------------------------------------------------------
# Driving a session.

def _ras_of(volume: Volume, kji: tuple[int, int, int]) -> tuple[float, float, float]:
    ras = volume.array_index_to_ras(kji)
    return (float(ras[0]), float(ras[1]), float(ras[2]))


def simulate_lesion(session: Any, volume: Volume, truth: np.ndarray, clicks: int,
                    ignore: np.ndarray | None = None,
                    nsd_tolerance_mm: float = NSD_TOLERANCE_MM) -> dict[str, Any]:
    """Click on one lesion ``clicks`` times with a session that already holds ``volume``.

    ``session`` needs ``reset()`` and ``add_point(ras, positive) -> Prediction`` (its ``mask`` is
    read). Returns ``dice`` (per click), ``dice_auc``, ``nsd``, ``clicks`` (list of
    :class:`SimulatedClick`), ``clicks_used``, ``predicted_voxels``, ``timings`` (summed
    seconds per step), ``mask`` (final bool mask, a copy).
    """
    if isinstance(clicks, bool) or not isinstance(clicks, int) or clicks < 1:
        raise ValueError(f"clicks must be an int >= 1; got {clicks!r}")
    truth = as_mask(truth, "truth")
    spacing = tuple(float(s) for s in volume.spacing)
    session.reset()
    done: list[SimulatedClick] = []
    dices: list[float] = []
    timings: dict[str, float] = {}
    kji: tuple[int, int, int] | None = interior_voxel(truth, spacing)
    positive = True
    pred = np.zeros(truth.shape, dtype=bool)
    for _ in range(clicks):
        if kji is not None:
            click = SimulatedClick(tuple(int(v) for v in kji), _ras_of(volume, kji), positive)
            prediction = session.add_point(click.ras, positive=click.positive)
            done.append(click)
            for key, value in dict(getattr(prediction, "timings", {}) or {}).items():
                timings[key] = timings.get(key, 0.0) + float(value)
            pred = np.asarray(prediction.mask).astype(bool)
        dices.append(dice(pred, truth, ignore))
        found = next_click(pred, truth, spacing, ignore)
        kji, positive = (None, True) if found is None else found
    return {"dice": dices, "dice_auc": dice_auc(dices),
            "nsd": normalized_surface_dice(pred, truth, spacing, nsd_tolerance_mm, ignore),
            "clicks": done, "clicks_used": len(done),
            "predicted_voxels": int(np.count_nonzero(pred if ignore is None else pred & ~ignore)),
            "timings": timings, "mask": pred.copy()}


# ----------------------------------------------------------------------------------------------
# Results.

def _mean(values: Sequence[float]) -> float | None:
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return float(np.mean(finite)) if finite else None


#: Lesions whose Dice after the first click is below this are the ones later clicks must fix.
CORRECTION_DICE = 0.8


def _group_summary(rows: list[dict], clicks: int) -> dict[str, Any]:
    per_click = [_mean([r[f"dice_{c}"] for r in rows]) for c in range(1, clicks + 1)]
    weak = [r for r in rows if r["dice_1"] is not None and r["dice_1"] < CORRECTION_DICE]
    return {
        "lesions": len(rows),
        "dice_per_click": per_click,
        "dice_1": per_click[0] if per_click else None,
        "dice_final": per_click[-1] if per_click else None,
        "dice_auc": _mean([r["dice_auc"] for r in rows]),
        "nsd": _mean([r["nsd"] for r in rows]),
        "empty_masks": sum(1 for r in rows if r.get("predicted_voxels") == 0),
        # Do later clicks help where help is needed? Lesions with Dice < 0.8 after click 1.
        "needs_correction": {
            "lesions": len(weak),
            "dice_1": _mean([r["dice_1"] for r in weak]),
            "dice_final": _mean([r[f"dice_{clicks}"] for r in weak]),
            "gain": _mean([r[f"dice_{clicks}"] - r["dice_1"] for r in weak]),
        },
    }


@dataclass
class EvaluationResult:
    """Rows per lesion and per case, and a summary; JSON / CSV writers (atomic).

    ``lesions`` rows: case, lesion, label, voxels, volume_ml, diameter_mm, dice_1..dice_K,
    dice_auc, nsd, clicks_used, predicted_voxels, seconds, clicks (list of dicts; JSON only).
    ``cases`` rows: case, image, label, status (ok | no_lesions | failed), error, lesions,
    dice_1, dice_final, dice_auc, nsd, seconds. ``summary``: see :func:`evaluate`.
    """

    lesions: list[dict[str, Any]] = field(default_factory=list)
    cases: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"summary": self.summary, "cases": self.cases, "lesions": self.lesions}

    def write_json(self, path: PathLike) -> Path:
        """Summary, cases and lesions as one JSON file (NaN written as null)."""
        from .io import atomic_write

        text = json.dumps(json_safe(self.to_dict()), indent=2)
        with atomic_write(path) as tmp:
            Path(tmp).write_text(text, encoding="utf-8")
        return Path(path)

    def write_csv(self, path: PathLike, table: str = "lesions") -> Path:
        """One row per lesion (``table="lesions"``) or per case (``"cases"``)."""
        from .io import atomic_write

        if table not in ("lesions", "cases"):
            raise ValueError(f"table must be 'lesions' or 'cases'; got {table!r}")
        rows = [{k: v for k, v in row.items() if k != "clicks"}
                for row in getattr(self, table)]
        columns: list[str] = []
        for row in rows:
            columns.extend(k for k in row if k not in columns)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(row.get(k)) for k in columns})
        with atomic_write(path) as tmp:
            Path(tmp).write_text(buffer.getvalue(), encoding="utf-8")
        return Path(path)


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if not math.isfinite(value) else f"{value:.6g}"
    return value


# ----------------------------------------------------------------------------------------------
# The driver.

def _load_model(model_or_path: Any, device: Any) -> tuple[Any, dict[str, Any]]:
    """A model object as given, or loaded from a checkpoint path / known model name."""
    if hasattr(model_or_path, "encode") and hasattr(model_or_path, "decode"):
        meta = dict(getattr(model_or_path, "checkpoint_metadata", {}) or {})
        config = getattr(model_or_path, "config", None)
        return model_or_path, {"model": meta.get("path", type(model_or_path).__name__),
                               "preset": getattr(config, "preset", None)}
    from .build import load_model
    from .models import resolve_model

    path = resolve_model(model_or_path, option="--model")
    model = load_model(path, device=device)
    return model, {"model": str(path), "preset": model.config.preset}


def evaluate(model_or_path: Any, data_folder: PathLike, clicks: int = 5,
             device: str = "auto", progress: ProgressFn | None = None, *,
             labels: Sequence[int] | None = None, lesion_unit: str = "component",
             min_lesion_voxels: int = 1, modality: str = "auto", prompt_mode: str = "latest",
             nsd_tolerance_mm: float = NSD_TOLERANCE_MM, max_cases: int | None = None,
             max_windows: int = 8, stop: StopFlag = None, session: Any = None,
             keep_clicked: bool = True, zoom: bool = True) -> EvaluationResult:
    """Evaluate a model with simulated clicks on every lesion of a folder of labelled cases.

    Args:
        model_or_path: an ``SGPSAMModel`` (or any model the session accepts), a checkpoint path,
            or a known model name (``SGPSAMLib.models``).
        data_folder: image/label pairs in any layout ``SGPSAMLib.cases.find_cases`` accepts
            (MSD ``imagesTr/`` + ``labelsTr/``, ...).
        clicks: clicks per lesion (>= 1).
        device: "auto", "cpu", "cuda", ...
        progress: called with JSON-able records: ``start``, ``progress`` (after each lesion),
            ``case`` (a finished case row), ``done`` (the summary).
        labels: target label values (None: every non-zero value).
        lesion_unit: "component" (each connected component is a lesion) or "label".
        min_lesion_voxels: smaller lesions are skipped.
        modality: "auto", "CT" or "MR" (session normalisation).
        prompt_mode: the session's prompting mode ("latest" or "cumulative").
        nsd_tolerance_mm: NSD tolerance.
        max_cases: evaluate only the first N cases (sorted by id).
        max_windows: the session's most windows per lesion (1: never extend across a region
            border).
        stop: Event or callable; checked between lesions; the result then covers the finished
            cases and ``summary["stopped"]`` is True.
        session: a ready session object to use instead of building an ``InteractiveSession``
            (tests, custom settings); ``model_or_path`` is then only recorded.
        keep_clicked: the session drops predicted components no positive click touches
            (``InteractiveSession(keep_clicked=...)``); ignored with ``session``.
        zoom: the session picks a new lesion's crop spacing by the model's zoom policy
            (``InteractiveSession(zoom=...)``); ignored with ``session``.

    Returns:
        :class:`EvaluationResult`. ``summary``: cases, cases_failed, lesions, clicks,
        dice_per_click, dice_1, dice_final, dice_auc, nsd, nsd_tolerance_mm, small (lesions
        < 1 mL) and large (>= 1 mL) with the same Dice/NSD fields, seconds, model, preset,
        device, prompt_mode, data, stopped.

    Raises:
        SGPSAMError / OSError: bad folder, no cases, unreadable model. A case that fails to load
        or segment is reported in its row (status "failed") and the run goes on.
    """
    from .cases import find_cases

    _check_options(clicks, lesion_unit, max_windows, nsd_tolerance_mm)
    start = time.perf_counter()
    cases = find_cases(data_folder, role="evaluation data")
    if max_cases is not None:
        cases = cases[:max(0, int(max_cases))]
    session, info, device_name = _session(model_or_path, device, prompt_mode, max_windows,
                                          session, keep_clicked, zoom)
    emit = progress or (lambda record: None)
    emit({"event": "start", "total_cases": len(cases), "clicks": clicks,
          "data": str(data_folder), "model": info["model"], "device": device_name})

    result = EvaluationResult()
    stopped = False
    lesions_done = 0
    load = dict(labels=labels, lesion_unit=lesion_unit, min_lesion_voxels=min_lesion_voxels,
                modality=modality)
    for case_index, files in enumerate(cases):
        if is_stopped(stop):
            stopped = True
            break

        def lesion_done(row: dict[str, Any], case_number: int = case_index + 1) -> None:
            nonlocal lesions_done
            lesions_done += 1
            emit({"event": "progress", "case_index": case_number,
                  "total_cases": len(cases), "case": row["case"], "lesion": row["lesion"],
                  "lesions_done": lesions_done, "dice_final": row[f"dice_{clicks}"]})

        case_start = time.perf_counter()
        row, case_lesions, stopped = _evaluate_case(session, files, load, clicks,
                                                    nsd_tolerance_mm, stop, lesion_done)
        if stopped and row["status"] == "ok":
            # An interrupted case is dropped whole: its row would mix finished and missing
            # lesions.
            break
        result.lesions.extend(case_lesions)
        group = _group_summary(case_lesions, clicks) if case_lesions else {}
        row.update(lesions=len(case_lesions), dice_1=group.get("dice_1"),
                   dice_final=group.get("dice_final"), dice_auc=group.get("dice_auc"),
                   nsd=group.get("nsd"), seconds=time.perf_counter() - case_start)
        result.cases.append(row)
        emit({"event": "case", **json_safe(row)})

    result.summary = {
        **_summary(result, clicks, nsd_tolerance_mm),
        "seconds": time.perf_counter() - start,
        "model": info["model"], "preset": info["preset"], "device": device_name,
        "prompt_mode": prompt_mode, "max_windows": max_windows, "data": str(data_folder),
        "keep_clicked": bool(getattr(session, "keep_clicked", keep_clicked)),
        "zoom": _zoom_summary(session), "stopped": stopped,
    }
    emit({"event": "done", **json_safe(result.summary)})
    return result


def _check_options(clicks: Any, lesion_unit: Any, max_windows: Any, nsd_tolerance_mm: Any
                   ) -> None:
    """SGPSAMError naming the first bad option (before any case is read)."""
    if isinstance(clicks, bool) or not isinstance(clicks, int) or clicks < 1:
        raise SGPSAMError(f"--clicks: expected an integer >= 1, got {clicks!r}")
    look_up_option(lesion_unit, LESION_UNITS, "--lesion-unit")
    if isinstance(max_windows, bool) or not isinstance(max_windows, int) or max_windows < 1:
        raise SGPSAMError(f"--max-windows: expected an integer >= 1, got {max_windows!r}")
    if not (isinstance(nsd_tolerance_mm, (int, float)) and nsd_tolerance_mm >= 0):
        raise SGPSAMError(f"--nsd-tolerance: expected a number >= 0 (mm), got "
                          f"{nsd_tolerance_mm!r}")


def _session(model_or_path: Any, device: str, prompt_mode: str, max_windows: int,
             session: Any, keep_clicked: bool = True, zoom: bool = True
             ) -> tuple[Any, dict[str, Any], str]:
    """(the session, model info for the summary, device name): the given session, or an
    ``InteractiveSession`` on the loaded model."""
    if session is not None:
        info = {"model": str(getattr(model_or_path, "__name__", model_or_path)),
                "preset": None}
        return session, info, str(getattr(session, "device", device))
    from .devices import resolve_device
    from .session import InteractiveSession

    try:
        torch_device = resolve_device(device)
    except ValueError as exc:
        raise SGPSAMError(f"--device: {exc}") from None
    model, info = _load_model(model_or_path, torch_device)
    session = InteractiveSession(model, device=torch_device, prompt_mode=prompt_mode,
                                 max_windows=max_windows, extend_at_border=max_windows > 1,
                                 keep_clicked=keep_clicked, zoom=zoom)
    return session, info, str(torch_device)


def _zoom_summary(session: Any) -> dict[str, float] | None:
    """The session's zoom policy as a dict (None: fixed crop spacing)."""
    policy = getattr(session, "zoom", None)
    return None if policy is None else asdict(policy)


def _evaluate_case(session: Any, files: Any, load: dict[str, Any], clicks: int,
                   nsd_tolerance_mm: float, stop: StopFlag,
                   lesion_done: Callable[[dict[str, Any]], None]
                   ) -> tuple[dict[str, Any], list[dict[str, Any]], bool]:
    """One case: (its row, its lesion rows, whether a stop came between lesions). A case that
    cannot be read or segmented is a "failed" row without lesion rows."""
    from .cases import load_case

    row: dict[str, Any] = {"case": files.case_id, "image": str(files.image),
                           "label": str(files.label), "status": "ok", "error": None,
                           "lesions": 0}
    case_lesions: list[dict[str, Any]] = []
    stopped = False
    try:
        loaded = load_case(files, **load)
        if not loaded.lesions:
            row["status"] = "no_lesions"
        else:
            session.set_volume(loaded.volume, modality=loaded.modality)
        volume = loaded.volume
        lesion_map = loaded.lesion_volume.array
        targets = lesion_map > 0
        for lesion in loaded.lesions:
            if is_stopped(stop):
                stopped = True
                break
            lesion_start = time.perf_counter()
            truth = lesion_map == lesion.index
            others = targets & ~truth
            outcome = simulate_lesion(session, volume, truth, clicks,
                                      ignore=others if others.any() else None,
                                      nsd_tolerance_mm=nsd_tolerance_mm)
            case_lesions.append(_lesion_row(files.case_id, lesion, volume, outcome,
                                            time.perf_counter() - lesion_start))
            lesion_done(case_lesions[-1])
    except (SGPSAMError, OSError, ValueError) as exc:
        log.warning("case %s failed: %s", files.case_id, exc)
        row.update(status="failed", error=str(exc))
        case_lesions = []
    return row, case_lesions, stopped


def _lesion_row(case_id: str, lesion: Any, volume: Volume, outcome: dict[str, Any],
                seconds: float) -> dict[str, Any]:
    """A lesion's row: its size, Dice after every click, Dice-AUC, NSD, the clicks."""
    volume_ml = lesion.voxels * volume.voxel_volume_ml
    row: dict[str, Any] = {
        "case": case_id, "lesion": lesion.index, "label": lesion.label_value,
        "voxels": lesion.voxels, "volume_ml": volume_ml,
        "diameter_mm": (6.0 * volume_ml * 1000.0 / math.pi) ** (1.0 / 3.0),
    }
    for c, value in enumerate(outcome["dice"], start=1):
        row[f"dice_{c}"] = value
    row.update(dice_auc=outcome["dice_auc"], nsd=outcome["nsd"],
               clicks_used=outcome["clicks_used"], predicted_voxels=outcome["predicted_voxels"],
               seconds=seconds, clicks=[c.to_dict() for c in outcome["clicks"]])
    return row


def _summary(result: EvaluationResult, clicks: int, nsd_tolerance_mm: float) -> dict[str, Any]:
    """The metrics over all lesions, and over lesions < 1 mL and >= 1 mL."""
    rows = result.lesions
    small = [r for r in rows if r["volume_ml"] < SMALL_LESION_ML]
    large = [r for r in rows if r["volume_ml"] >= SMALL_LESION_ML]
    return {
        "cases": len(result.cases),
        "cases_failed": sum(1 for r in result.cases if r["status"] == "failed"),
        **_group_summary(rows, clicks),
        "clicks": clicks,
        "nsd_tolerance_mm": float(nsd_tolerance_mm),
        "small_lesion_ml": SMALL_LESION_ML,
        "small": _group_summary(small, clicks),
        "large": _group_summary(large, clicks),
    }
