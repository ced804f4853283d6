"""evaluation.py: exact metrics, click placement, the click loop, the folder driver, writers."""
from __future__ import annotations

import csv
import json
import math
import threading
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from SGPSAMLib.evaluation import (
    EvaluationResult,
    connected_components,
    dice,
    dice_auc,
    evaluate,
    interior_voxel,
    next_click,
    normalized_surface_dice,
    simulate_lesion,
)
from SGPSAMLib.geometry import Volume, array_index_to_ijk
from SGPSAMLib.io import write_labelmap, write_volume


def _cube(shape, lo, hi) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return mask


# ---------------------------------------------------------------------------------------------
# Metrics.

def test_dice_exact_values():
    a = _cube((10, 10, 10), (0, 0, 0), (4, 4, 4))   # 64 voxels
    b = _cube((10, 10, 10), (2, 0, 0), (6, 4, 4))   # 64 voxels, 32 shared
    assert dice(a, b) == pytest.approx(0.5)
    assert dice(a, a) == 1.0
    assert dice(np.zeros((3, 3, 3)), np.zeros((3, 3, 3))) == 1.0
    assert dice(a, np.zeros_like(a)) == 0.0
    # Ignored voxels count neither way: drop the non-shared half of b.
    ignore = _cube((10, 10, 10), (4, 0, 0), (6, 4, 4))
    assert dice(b, a, ignore) == pytest.approx(2 * 32 / (32 + 64))
    with pytest.raises(ValueError, match="same shape"):
        dice(a, a[:5])


def test_dice_auc_is_the_mean_over_clicks():
    assert dice_auc([0.2, 0.4, 0.9]) == pytest.approx(0.5)
    assert dice_auc([0.7]) == pytest.approx(0.7)
    with pytest.raises(ValueError):
        dice_auc([])


def _surface(mask):
    inner = mask.copy()
    for axis in range(3):
        for shift in (1, -1):
            rolled = np.roll(mask, shift, axis=axis)
            edge = [slice(None)] * 3
            edge[axis] = 0 if shift == 1 else -1
            rolled[tuple(edge)] = False
            inner &= rolled
    return mask & ~inner


def _nsd_brute_force(a, b, spacing_ijk, tol):
    """Reference NSD: all pairwise surface distances (small masks only)."""
    scale = np.asarray(spacing_ijk[::-1], dtype=float)
    sa = np.argwhere(_surface(a)) * scale
    sb = np.argwhere(_surface(b)) * scale
    d = np.sqrt(((sa[:, None, :] - sb[None, :, :]) ** 2).sum(-1))
    a_ok = (d.min(axis=1) <= tol + 1e-6).sum()
    b_ok = (d.min(axis=0) <= tol + 1e-6).sum()
    return (a_ok + b_ok) / (len(sa) + len(sb))


@pytest.mark.parametrize("spacing, tol", [((1, 1, 1), 0.0), ((1, 1, 1), 1.0),
                                          ((0.8, 0.8, 3.0), 2.0), ((0.8, 0.8, 3.0), 3.0)])
def test_nsd_matches_brute_force(spacing, tol):
    a = _cube((12, 14, 16), (2, 3, 4), (8, 10, 12))
    b = _cube((12, 14, 16), (3, 3, 5), (9, 11, 12))
    b[5, 5, 5] = False  # a hole: an inner surface too
    got = normalized_surface_dice(a, b, spacing, tol)
    assert got == pytest.approx(_nsd_brute_force(a, b, spacing, tol))


def test_nsd_edge_cases():
    a = _cube((6, 6, 6), (1, 1, 1), (4, 4, 4))
    assert normalized_surface_dice(a, a) == 1.0
    assert normalized_surface_dice(a, np.zeros_like(a)) == 0.0
    assert math.isnan(normalized_surface_dice(np.zeros_like(a), np.zeros_like(a)))
    # 1-voxel shift: fully within 1 mm, not within 0 mm (some surface voxels move).
    b = np.roll(a, 1, axis=2)
    assert normalized_surface_dice(a, b, tolerance_mm=1.0) == 1.0
    assert normalized_surface_dice(a, b, tolerance_mm=0.0) < 1.0
    # Anisotropic: a shift along k (3 mm slices) is 3 mm away.
    c = np.roll(a, 1, axis=0)
    assert normalized_surface_dice(a, c, (1, 1, 3), 2.0) < 1.0
    assert normalized_surface_dice(a, c, (1, 1, 3), 3.0) == 1.0


def test_connected_components_use_26_connectivity():
    mask = np.zeros((6, 6, 6), dtype=bool)
    mask[0, 0, 0] = mask[1, 1, 1] = True      # diagonal neighbours: one component
    mask[4:6, 4:6, 4:6] = True
    ids, n = connected_components(mask)
    assert n == 2
    assert ids[0, 0, 0] == ids[1, 1, 1] != ids[5, 5, 5]
    assert (ids > 0).sum() == mask.sum()
    assert connected_components(np.zeros((3, 3, 3)))[1] == 0


def test_interior_voxel_is_the_deepest_point():
    assert interior_voxel(_cube((9, 9, 9), (2, 2, 2), (7, 7, 7))) == (4, 4, 4)
    # Anisotropic voxels: 5 slices of 3 mm x 15 x 15 at 1 mm -> the middle slice and centre.
    mask = _cube((7, 17, 17), (1, 1, 1), (6, 16, 16))
    assert interior_voxel(mask, (1.0, 1.0, 3.0)) == (3, 8, 8)
    # Dumbbell: a big ball and a small one joined by a bar -> the big ball's centre.
    kk, jj, ii = np.indices((21, 21, 41))
    big = (kk - 10) ** 2 + (jj - 10) ** 2 + (ii - 10) ** 2 <= 36
    small = (kk - 10) ** 2 + (jj - 10) ** 2 + (ii - 30) ** 2 <= 9
    bar = (kk == 10) & (jj == 10)
    assert interior_voxel(big | small | bar) == (10, 10, 10)
    # The array's edge counts as outside.
    edge = _cube((5, 5, 9), (0, 0, 0), (5, 5, 9))
    assert interior_voxel(edge) == (2, 2, 4)
    with pytest.raises(ValueError, match="empty"):
        interior_voxel(np.zeros((3, 3, 3)))


def test_next_click_sign_and_place():
    truth = _cube((12, 12, 12), (2, 2, 2), (10, 10, 10))
    pred = truth.copy()
    pred[2:10, 2:10, 6:10] = False              # 256 false negatives
    pred[0:2, 0:2, 0:2] = True                  # 8 false positives
    (k, j, i), positive = next_click(pred, truth)
    assert positive and truth[k, j, i] and not pred[k, j, i]
    assert (k, j, i) == (5, 5, 7)  # deepest FN voxel, nearest the FN centroid on ties
    # Now a large false positive region wins: negative click inside it.
    pred2 = truth | _cube((12, 12, 12), (0, 0, 0), (12, 12, 2))
    (k, j, i), positive = next_click(pred2, truth)
    assert not positive and pred2[k, j, i] and not truth[k, j, i]
    assert next_click(truth, truth) is None
    # Ignored voxels are not errors.
    assert next_click(pred2, truth, ignore=~truth) is None


# ---------------------------------------------------------------------------------------------
# The click loop with a scripted session.

def _identity_volume(array) -> Volume:
    m = np.diag([0.8, 0.9, 2.0, 1.0])
    m[:3, 3] = (-10.0, 5.0, 30.0)
    return Volume(array, m, "scripted")


class ThresholdSession:
    """A stand-in session: the first positive click segments voxels > 150 (the core), a later
    positive click voxels > 50 (core + rim); a negative click removes its own voxel's island
    of > 50 that does not hold the first click. Clicks are recorded."""

    def __init__(self) -> None:
        self.clicks = []
        self.volume = None
        self.device = "cpu"

    def set_volume(self, volume, modality="auto"):
        self.volume = volume

    def reset(self):
        self.clicks = []

    def add_point(self, ras, positive=True):
        self.clicks.append((np.asarray(ras), positive))
        array = self.volume.array
        mask = array > (150 if len(self.clicks) == 1 else 50)
        ids, _ = connected_components(mask)
        first = self._kji(self.clicks[0][0])
        keep = ids == ids[first] if ids[first] else np.zeros_like(mask)
        return SimpleNamespace(mask=keep.astype(np.uint8), timings={"decode": 0.01})

    def _kji(self, ras):
        ijk = np.rint(self.volume.ras_to_ijk_points(ras)).astype(int)
        return tuple(array_index_to_ijk(ijk))


def _core_rim_case(shape=(14, 20, 24)):
    array = np.zeros(shape, dtype=np.float32)
    truth = _cube(shape, (3, 4, 4), (11, 16, 20))
    core = _cube(shape, (3, 4, 4), (11, 16, 12))
    array[truth] = 100
    array[core] = 200
    return array, truth, core


def test_simulate_lesion_exact_dice_and_clicks():
    array, truth, core = _core_rim_case()
    volume = _identity_volume(array)
    session = ThresholdSession()
    session.set_volume(volume)
    out = simulate_lesion(session, volume, truth, clicks=4)
    d1 = 2 * core.sum() / (core.sum() + truth.sum())
    assert out["dice"] == pytest.approx([d1, 1.0, 1.0, 1.0])
    assert out["dice_auc"] == pytest.approx((d1 + 3.0) / 4)
    assert out["nsd"] == 1.0 and out["clicks_used"] == 2
    first, second = out["clicks"]
    assert first.positive and first.kji == interior_voxel(truth, volume.spacing)
    assert second.positive and truth[second.kji] and not core[second.kji]
    # The click's RAS is the voxel centre of its index.
    assert np.allclose(session.clicks[1][0], second.ras)
    assert np.allclose(volume.ras_to_ijk_points(second.ras), second.kji[::-1])
    assert out["timings"] == {"decode": pytest.approx(0.02)}
    assert out["predicted_voxels"] == truth.sum()


def test_simulate_lesion_ignores_other_lesions():
    array, truth, core = _core_rim_case()
    other = _cube(array.shape, (3, 4, 20), (11, 16, 22))  # touches the lesion: merged by > 50
    array[other] = 100
    volume = _identity_volume(array)
    session = ThresholdSession()
    session.set_volume(volume)
    out = simulate_lesion(session, volume, truth, clicks=3, ignore=other)
    assert out["dice"][1:] == [1.0, 1.0]  # the other lesion is not a false positive


# ---------------------------------------------------------------------------------------------
# The folder driver.

def _write_case(folder, case_id, array, label, volume_matrix):
    volume = Volume(array, volume_matrix, case_id)
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    write_volume(volume, folder / "imagesTr" / f"{case_id}.nii.gz")
    write_labelmap(label, volume, folder / "labelsTr" / f"{case_id}.nii.gz")


@pytest.fixture
def dataset(tmp_path):
    """Two cases: one lesion (core + rim), and two separate lesions (labels 1 and 2)."""
    folder = tmp_path / "data"
    m = np.diag([0.8, 0.9, 2.0, 1.0])
    array, truth, _ = _core_rim_case()
    _write_case(folder, "a", array, truth.astype(np.uint8), m)
    array2 = np.zeros((14, 20, 30), dtype=np.float32)
    label2 = np.zeros(array2.shape, dtype=np.uint8)
    big = _cube(array2.shape, (2, 2, 2), (12, 18, 14))   # 1400 voxels * 1.44 mm3 = 2.0 mL
    small = _cube(array2.shape, (5, 6, 20), (8, 10, 24))  # 48 voxels: < 1 mL
    array2[big] = array2[small] = 200
    label2[big], label2[small] = 1, 2
    _write_case(folder, "b", array2, label2, m)
    return folder


def test_evaluate_rows_summary_and_events(dataset, tmp_path):
    events = []
    result = evaluate("scripted", dataset, clicks=3, progress=events.append,
                      session=ThresholdSession())
    assert [r["case"] for r in result.cases] == ["a", "b"]
    assert [r["status"] for r in result.cases] == ["ok", "ok"]
    assert [(r["case"], r["lesion"], r["label"]) for r in result.lesions] == [
        ("a", 1, 1), ("b", 1, 1), ("b", 2, 2)]
    a = result.lesions[0]
    array, truth, core = _core_rim_case()
    d1 = 2 * core.sum() / (core.sum() + truth.sum())
    assert [a["dice_1"], a["dice_2"], a["dice_3"]] == pytest.approx([d1, 1.0, 1.0])
    assert a["voxels"] == truth.sum()
    assert a["volume_ml"] == pytest.approx(truth.sum() * 0.8 * 0.9 * 2.0 / 1000)
    assert a["diameter_mm"] == pytest.approx((6 * a["volume_ml"] * 1000 / math.pi) ** (1 / 3))
    for row in result.lesions[1:]:
        assert row["dice_1"] == 1.0 and row["clicks_used"] == 1
    summary = result.summary
    assert summary["lesions"] == 3 and summary["cases"] == 2 and summary["clicks"] == 3
    assert summary["dice_per_click"] == pytest.approx([(d1 + 2) / 3, 1.0, 1.0])
    assert summary["small"]["lesions"] == 1 and summary["large"]["lesions"] == 2
    assert summary["small"]["dice_1"] == 1.0
    assert summary["large"]["dice_1"] == pytest.approx((d1 + 1) / 2)
    assert summary["nsd"] == 1.0 and summary["stopped"] is False
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done"
    assert kinds.count("progress") == 3 and kinds.count("case") == 2
    json.dumps(events)  # every record is JSON-able

    out_json = result.write_json(tmp_path / "eval.json")
    data = json.loads(out_json.read_text())
    assert data["summary"]["lesions"] == 3 and len(data["lesions"]) == 3
    assert data["lesions"][0]["clicks"][0]["positive"] is True
    out_csv = result.write_csv(tmp_path / "eval.csv")
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == 3 and "clicks" not in rows[0]
    assert float(rows[0]["dice_1"]) == pytest.approx(d1, abs=1e-5)
    cases_csv = result.write_csv(tmp_path / "cases.csv", table="cases")
    assert [r["case"] for r in csv.DictReader(cases_csv.open())] == ["a", "b"]


def test_evaluate_labels_lesion_unit_stop_and_failures(dataset):
    only2 = evaluate("scripted", dataset, clicks=1, labels=[2], session=ThresholdSession())
    assert [(r["case"], r["label"]) for r in only2.lesions] == [("b", 2)]
    assert only2.cases[0]["status"] == "no_lesions"
    stop = threading.Event()
    stop.set()
    stopped = evaluate("scripted", dataset, clicks=1, stop=stop, session=ThresholdSession())
    assert stopped.summary["stopped"] is True and stopped.cases == []
    # A broken label file fails its case only.
    broken = dataset / "labelsTr" / "a.nii.gz"
    broken.write_bytes(b"not an image")
    partial = evaluate("scripted", dataset, clicks=1, session=ThresholdSession())
    assert [r["status"] for r in partial.cases] == ["failed", "ok"]
    assert "a.nii.gz" in partial.cases[0]["error"]
    assert partial.summary["cases_failed"] == 1 and partial.summary["lesions"] == 2


def test_evaluation_result_nan_is_null(tmp_path):
    result = EvaluationResult(lesions=[{"case": "x", "nsd": float("nan")}], cases=[],
                              summary={"nsd": None})
    data = json.loads(result.write_json(tmp_path / "r.json").read_text())
    assert data["lesions"][0]["nsd"] is None
    rows = list(csv.DictReader(result.write_csv(tmp_path / "r.csv").open()))
    assert rows[0]["nsd"] == ""


# ---------------------------------------------------------------------------------------------
# The real InteractiveSession with an oracle model.

class CropThresholdModel(nn.Module):
    """Model interface. A positive click: logits = the 4x average-pooled crop minus a threshold
    halfway between the clicked cell and the crop's median (a real, geometry-dependent
    prediction). A negative click: the previous logits with the clicked cell's neighbourhood
    set to background."""

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(image_size=128, crop_spacing_mm=1.5, preset="oracle")
        self.low_res_size = 32

    def encode(self, image):
        return F.avg_pool3d(image.float(), 4)

    def decode(self, embedding, points, labels, mask_logits):
        x = embedding
        cell = (points[0, -1] / 4).long().clamp(0, 31)
        if int(labels[0, -1]) == 0:
            grid = torch.stack(torch.meshgrid(*[torch.arange(32)] * 3, indexing="ij"), -1)
            near = ((grid - cell) ** 2).sum(-1) <= 2
            return torch.where(near[None, None], torch.full_like(mask_logits, -10.0),
                               mask_logits)
        value = x[0, 0, cell[0], cell[1], cell[2]]
        background = x.median()
        return (x - 0.5 * (value + background)) * torch.sign(value - background)


def test_evaluate_with_the_real_session(tmp_path):
    folder = tmp_path / "data"
    shape = (24, 64, 64)
    kk, jj, ii = np.indices(shape)
    lesion = ((kk - 12) * 2.0) ** 2 + (jj - 30) ** 2 + (ii - 33) ** 2 <= 16.0 ** 2  # 32 mm ball
    array = np.where(lesion, 300.0, 100.0).astype(np.float32)
    array += np.random.default_rng(0).normal(0, 5, shape).astype(np.float32)
    m = np.diag([1.0, 1.0, 2.0, 1.0])
    _write_case(folder, "ball", array, lesion.astype(np.uint8), m)
    result = evaluate(CropThresholdModel(), folder, clicks=3, device="cpu")
    row = result.lesions[0]
    # 6 mm low-res cells on a 32 mm ball: good, not perfect.
    assert row["dice_1"] > 0.8
    assert 0.0 <= row["nsd"] <= 1.0 and row["clicks_used"] == 3
    assert result.summary["device"] == "cpu" and result.summary["preset"] == "oracle"
    assert result.summary["keep_clicked"] is True  # the session's default
    assert result.summary["zoom"] is None  # this model's preset has no zoom policy
    everything = evaluate(CropThresholdModel(), folder, clicks=1, device="cpu",
                          keep_clicked=False)
    assert everything.summary["keep_clicked"] is False
    assert everything.lesions[0]["dice_1"] == pytest.approx(row["dice_1"])  # one component
    # Click 1 is positive at the ball's centre; every click's sign says whether it lies in the
    # lesion (a positive click fixes a false negative, a negative one a false positive).
    assert row["clicks"][0]["kji"] == [12, 30, 33]
    for click in row["clicks"]:
        assert bool(lesion[tuple(click["kji"])]) == click["positive"]


def test_clicks_validation():
    with pytest.raises(Exception, match="clicks"):
        evaluate("x", ".", clicks=0, session=ThresholdSession())


def test_cli_evaluate(dataset, tmp_path, capsys, monkeypatch):
    from SGPSAMLib import evaluation
    from SGPSAMLib.cli import main

    monkeypatch.setattr(evaluation, "_load_model",
                        lambda spec, device: (CropThresholdModel(),
                                              {"model": str(spec), "preset": "oracle"}))
    out_json, out_csv = tmp_path / "e.json", tmp_path / "e.csv"
    code = main(["evaluate", "--model", "oracle", "--data", str(dataset), "--clicks", "2",
                 "--device", "cpu", "--labels", "1", "--out-json", str(out_json), "--out-csv",
                 str(out_csv), "--json-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    records = [json.loads(line) for line in captured.out.splitlines()]
    assert [r["event"] for r in records][0] == "start" and records[-1]["event"] == "done"
    assert records[-1]["lesions"] == 2 and records[-1]["model"] == "oracle"
    assert json.loads(out_json.read_text())["summary"]["clicks"] == 2
    assert len(list(csv.DictReader(out_csv.open()))) == 2
    code = main(["evaluate", "--model", "oracle", "--data", str(dataset), "--clicks", "1",
                 "--device", "cpu", "--max-cases", "1"])
    captured = capsys.readouterr()
    assert code == 0 and "Dice per click" in captured.out and "lesions < 1 mL" in captured.out
    stop_file = tmp_path / "stop"
    stop_file.touch()  # evaluate takes the same --stop-file as batch and train
    code = main(["evaluate", "--model", "oracle", "--data", str(dataset), "--clicks", "1",
                 "--device", "cpu", "--stop-file", str(stop_file), "--json-progress"])
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 0 and records[-1]["stopped"] is True and records[-1]["cases"] == 0
    assert main(["evaluate", "--model", "m", "--data", str(dataset), "--labels", "x"]) == 2
    assert "--labels 'x'" in capsys.readouterr().err
    assert main(["evaluate", "--model", "m", "--data", str(tmp_path / "none")]) == 2
    assert "not found" in capsys.readouterr().err
