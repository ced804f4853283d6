"""The demo model shipped in ``SGPSAMLib/resources``: present, small, self-describing, and it
segments a held-out synthetic lesion at least as well as measured when it was bundled.

The pass marks sit below the figures ``benchmarks/bench_demo_model.py`` measured for this file
(README, "Models and weights"), so a change that breaks loading, preprocessing or geometry for
the shipped model fails here even when the tiny random-weight models of the other tests pass.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from SGPSAMLib import models
from SGPSAMLib.build import load_model, read_checkpoint
from SGPSAMLib.cli import main
from SGPSAMLib.cli.demo import DEFAULT_DEMO_SEED, run_demo, shared_data_root
from SGPSAMLib.evaluation import evaluate
from SGPSAMLib.geometry import array_index_to_ijk
from SGPSAMLib.io import read_volume
from SGPSAMLib.synthetic import DEMO_SEED_BASE, EVAL_SEED_BASE, write_dataset

#: Limit for a file tracked in the repository and shipped in the extension.
MAX_BYTES = 25 * 1000 * 1000
#: `sgpsam demo` (default held-out case, seed 10017: one 2.1 mL MR lesion; 3 clicks): Dice
#: 0.866 / 0.878 / 0.906 when bundled. The README promises a case the model handles well.
DEMO_CASE_MIN_DICE = 0.8
#: ... and the predicted mask's centroid was 0.1 mm from the lesion's.
MAX_CENTROID_OFFSET_MM = 3.0
#: Held-out synthetic cases of the quality test: the first half of the README's benchmark set
#: (seeds 20000-20009, 21 lesions, 3 clicks).
HELDOUT_CASES = 10
#: Mean Dice over those lesions when bundled, with the session's zoom (SGPSAMLib.zoom): 0.616
#: after click 1, 0.689 after click 3 (one empty mask); lesions >= 1 mL 0.644 -> 0.830;
#: lesions < 1 mL 0.605 after click 1 (0.534 without the zoom). Without the zoom 0.566 ->
#: 0.650; the model bundled before this one: 0.517 -> 0.559; the one before that 0.20.
HELDOUT_MIN_DICE_1 = 0.56
HELDOUT_MIN_DICE_3 = 0.63
HELDOUT_LARGE_MIN_DICE_3 = 0.75
HELDOUT_SMALL_MIN_DICE_1 = 0.56


@pytest.fixture(scope="module")
def demo_path():
    path = models.bundled_model_path()
    assert path is not None, "SGPSAMLib/resources/sgpsam_demo.pt is missing from the checkout"
    return path


def test_the_demo_model_is_bundled_and_small(demo_path):
    assert demo_path.name == "sgpsam_demo.pt"
    assert 0 < demo_path.stat().st_size <= MAX_BYTES
    status = models.model_status("demo")
    assert status["present"] is True and status["state"] == "bundled"


def test_the_demo_checkpoint_describes_itself(demo_path):
    stored = torch.load(demo_path, map_location="cpu", weights_only=True)
    assert stored["format"] == "sgpsam"
    assert stored["config"]["preset"] == "demo"
    meta = stored["metadata"]
    assert meta["mode"] in ("sgp", "finetune") and meta["step"] > 0
    assert meta["train_config"]["preset"] == "demo"
    assert 0.0 < meta["metrics"]["val_dice"] <= 1.0
    assert models.resolve_model("demo") == demo_path
    model = load_model(demo_path, device="cpu")
    assert model.config.preset == "demo" and model.config.image_size == 64
    assert model.config.patch_size == 8 and not model.training


def test_demo_command_segments_the_held_out_lesion(tmp_path, capsys):
    code = main(["demo", "--out", str(tmp_path), "--clicks", "3", "--device", "cpu", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    record = json.loads(captured.out)
    assert record["seed"] == DEFAULT_DEMO_SEED >= DEMO_SEED_BASE and record["held_out"] is True
    assert record["dice"] >= DEMO_CASE_MIN_DICE, record["lesions"]
    predicted = read_volume(record["files"]["mask"])
    mask = predicted.array > 0
    truth = read_volume(record["files"]["truth"]).array > 0
    assert mask.any()
    # The prediction is on the lesion, not elsewhere: their centroids are close (RAS mm).
    centroids = np.stack([np.argwhere(mask).mean(axis=0), np.argwhere(truth).mean(axis=0)])
    predicted_ras, truth_ras = predicted.ijk_to_ras_points(array_index_to_ijk(centroids))
    offset = predicted_ras - truth_ras
    assert np.linalg.norm(offset) <= MAX_CENTROID_OFFSET_MM, offset


def test_the_bundled_model_segments_held_out_synthetic_lesions(tmp_path):
    """Mean Dice over every lesion of a few held-out cases (seeds no training set uses), after
    the first click and after the robot's corrections: a regression in the model, its
    preprocessing, the refinement head's inputs or the click protocol moves these."""
    folder = tmp_path / "heldout"
    write_dataset(folder, HELDOUT_CASES, seed=EVAL_SEED_BASE)
    summary = evaluate("demo", folder, clicks=3, device="cpu").summary
    assert summary["lesions"] == 21 and summary["cases_failed"] == 0
    assert summary["empty_masks"] <= 2, summary
    dice = summary["dice_per_click"]
    assert dice[0] >= HELDOUT_MIN_DICE_1, dice
    assert dice[-1] >= HELDOUT_MIN_DICE_3, dice
    assert summary["large"]["dice_final"] >= HELDOUT_LARGE_MIN_DICE_3, summary["large"]
    assert summary["small"]["dice_1"] >= HELDOUT_SMALL_MIN_DICE_1, summary["small"]
    assert summary["zoom"] == {"probe_mm": 0.75, "wide_mm": 1.5, "large_mm": 10.0}
    # Later clicks help where help is needed (lesions with Dice < 0.8 after click 1).
    assert summary["needs_correction"]["gain"] > 0.0, summary["needs_correction"]



#: Held-out real cases (every case of ../shared/data the model was not trained on, its largest
#: lesion, 5 clicks) when bundled: median Dice 0.652, none empty (0.16-0.82 per case).
REAL_MIN_MEDIAN_DICE_5 = 0.58
#: pyradiomics lung1 (a 1.4 mL CT nodule, held out) after 3 clicks when bundled: Dice 0.59 with
#: the session's default (only the components a positive click touches), 0.018 with every
#: component kept (the model also draws a 19,000-voxel look-alike beside the nodule).
REAL_NODULE = "pyradiomics_lung1"
REAL_NODULE_MIN_DICE_3 = 0.45
REAL_NODULE_ALL_COMPONENTS_MAX_DICE_3 = 0.1


def _held_out_shared_cases(demo_path) -> list[str]:
    root = shared_data_root()
    manifest = root / "manifest.json"
    if not manifest.is_file():
        pytest.skip("../shared/data is not beside this checkout")
    _, _, meta = read_checkpoint(demo_path)
    trained = {str(c).rsplit("/", 1)[-1] for c in meta["data"]["train_cases"]}
    cases = [c["id"] for c in json.loads(manifest.read_text(encoding="utf-8"))["cases"]]
    return [c for c in cases if c not in trained]


def test_the_bundled_model_segments_held_out_real_lesions(demo_path, tmp_path, monkeypatch):
    """The README's real-case figure: every shared case the model never saw, 5 clicks."""
    held_out = _held_out_shared_cases(demo_path)
    assert REAL_NODULE in held_out and len(held_out) >= 5, held_out
    monkeypatch.setenv("SGPSAM_SHARED_DATA", str(shared_data_root()))
    final, nodule = [], None
    for case in held_out:
        record = run_demo(out=tmp_path, case=f"shared:{case}", clicks=5, device="cpu")
        lesion = record["lesions"][0]
        assert lesion["predicted_voxels"] > 0, (case, lesion)
        final.append(lesion["dice"])
        if case == REAL_NODULE:
            nodule = lesion["dice_per_click"]
    assert float(np.median(final)) >= REAL_MIN_MEDIAN_DICE_5, dict(zip(held_out, final))
    # The clicked-components rule is what finds the nodule: the same model and clicks without.
    assert nodule[2] >= REAL_NODULE_MIN_DICE_3, nodule
    everything = run_demo(out=tmp_path / "all", case=f"shared:{REAL_NODULE}", clicks=3,
                          device="cpu", keep_clicked=False)
    assert everything["dice"] <= REAL_NODULE_ALL_COMPONENTS_MAX_DICE_3, everything["lesions"]
