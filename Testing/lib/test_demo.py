"""``sgpsam demo``: files and geometry with a real (tiny) checkpoint, Dice with an oracle model,
shared-data cases, and clear errors."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from SGPSAMLib.build import build_model, save_checkpoint
from SGPSAMLib.cli import demo as cli_demo
from SGPSAMLib.cli import main
from SGPSAMLib.geometry import Volume
from SGPSAMLib.io import read_volume, write_labelmap, write_volume
from SGPSAMLib.overlay import read_png
from SGPSAMLib.synthetic import DEMO_SEED_BASE, LesionSpec, SyntheticCase, make_case

DEFAULT_DEMO_SEED = cli_demo.DEFAULT_DEMO_SEED

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_evaluation import CropThresholdModel  # noqa: E402


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(build_model("tiny"), path, {"note": "random tiny model for tests"})
    return path


def test_demo_with_a_real_checkpoint(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "demo"
    # One window per lesion: a random model's noisy masks would otherwise grow windows.
    code = main(["demo", "--model", str(tiny_checkpoint), "--out", str(out), "--clicks", "2",
                 "--device", "cpu", "--max-windows", "1", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    record = json.loads(captured.out)
    for key in ("model", "device", "case", "seed", "held_out", "modality", "lesions", "dice_1",
                "dice", "timings", "files"):
        assert key in record
    assert record["seed"] == DEFAULT_DEMO_SEED and record["held_out"] is True
    assert record["device"] == "cpu" and record["model"] == str(tiny_checkpoint)
    lesion = record["lesions"][0]
    assert len(lesion["dice_per_click"]) == 2 and 0.0 <= lesion["dice"] <= 1.0
    assert lesion["clicks"][0]["positive"] is True
    assert {"load_model_s", "encode_s", "decode_s", "mean_click_s", "total_s"} <= set(
        record["timings"])
    # Files: the input, its truth and the prediction share the synthetic case's exact grid.
    case = make_case(DEFAULT_DEMO_SEED, n_lesions=1)
    for name in ("image", "truth", "mask"):
        written = read_volume(record["files"][name])
        assert written.array.shape == case.volume.array.shape
        assert np.allclose(written.ijk_to_ras, case.volume.ijk_to_ras, atol=1e-5)
    assert np.array_equal(read_volume(record["files"]["truth"]).array, case.label)
    assert set(np.unique(read_volume(record["files"]["mask"]).array)) <= {0, 1}
    png = read_png(record["files"]["overlay"])
    assert png.ndim == 3 and png.shape[2] == 3
    saved = json.loads(Path(record["files"]["result"]).read_text())
    assert saved["dice"] == pytest.approx(record["dice"])


def _ball_case(seed, **kwargs):
    shape = (24, 64, 64)
    kk, jj, ii = np.indices(shape)
    ball = ((kk - 12) * 2.0) ** 2 + (jj - 30) ** 2 + (ii - 33) ** 2 <= 16.0 ** 2
    array = np.where(ball, 300.0, 100.0).astype(np.float32)
    volume = Volume(array, np.diag([1.0, 1.0, 2.0, 1.0]), "ball")
    lesion = LesionSpec(1, (33.0, 30.0, 24.0), 32.0, float(ball.sum()) * 2e-3, 200.0,
                        int(ball.sum()), 32.0)
    return SyntheticCase(volume, ball.astype(np.uint8), [lesion], "MR", seed)


def test_demo_dice_with_an_oracle_model(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli_demo, "_load_model",
                        lambda spec, device: (CropThresholdModel(), "oracle"))
    monkeypatch.setattr("SGPSAMLib.synthetic.make_case", _ball_case)
    code = main(["demo", "--out", str(tmp_path), "--clicks", "1", "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    folder = tmp_path / f"synthetic_{DEFAULT_DEMO_SEED}"
    assert "Dice per click" in captured.out and f"results in {folder.resolve()}" in captured.out
    assert "how to read this" in captured.out
    record = json.loads((folder / "demo_result.json").read_text())
    assert record["dice"] > 0.8  # 6 mm low-res cells on a 32 mm ball
    mask = read_volume(folder / "demo_mask.nii.gz").array
    truth = _ball_case(0).label
    dice = 2 * np.sum((mask > 0) & (truth > 0)) / (np.sum(mask > 0) + np.sum(truth > 0))
    assert record["dice"] == pytest.approx(dice)


def test_demo_on_a_shared_case(tmp_path, capsys, monkeypatch):
    root = tmp_path / "shared"
    (root / "x").mkdir(parents=True)
    case = _ball_case(0)
    write_volume(case.volume, root / "x" / "img.nii.gz")
    label = case.label * 3  # label value 3 is the target
    label[0, 0, :4] = 3    # a small second component: not the largest
    write_labelmap(label, case.volume, root / "x" / "lab.nii.gz")
    manifest = {"cases": [{"id": "ball", "modality": "MR", "image": "x/img.nii.gz",
                           "label": "x/lab.nii.gz", "targets": {"t": [3]},
                           "default_target": "t"}]}
    (root / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setenv("SGPSAM_SHARED_DATA", str(root))
    monkeypatch.setattr(cli_demo, "_load_model",
                        lambda spec, device: (CropThresholdModel(), "oracle"))
    code = main(["demo", "--case", "shared:ball", "--out", str(tmp_path / "o"), "--clicks",
                 "1", "--device", "cpu", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    record = json.loads(captured.out)
    assert record["case"] == "shared:ball" and record["seed"] is None
    assert len(record["lesions"]) == 1 and record["lesions"][0]["voxels"] == case.label.sum()
    assert "image" not in record["files"] and record["dice"] > 0.8
    code = main(["demo", "--case", "shared:nope", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "unknown case id" in err and "ball" in err


def test_demo_errors(tmp_path, capsys, monkeypatch):
    assert main(["demo", "--case", "mine", "--out", str(tmp_path)]) == 2
    assert "--case 'mine'" in capsys.readouterr().err
    monkeypatch.setattr("SGPSAMLib.models.bundled_model_path", lambda: None)
    assert main(["demo", "--out", str(tmp_path), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "sgpsam: error:" in err and "demo" in err and "not installed" in err
    assert not list(tmp_path.rglob("demo_mask.nii.gz"))


def test_demo_list_names_held_out_seeds_and_shared_cases(tmp_path, capsys, monkeypatch):
    root = tmp_path / "shared"
    root.mkdir()
    (root / "manifest.json").write_text(json.dumps({"cases": [
        {"id": "ball", "modality": "MR", "lesion": "a ball", "target_volume_ml": 2.5}]}))
    monkeypatch.setenv("SGPSAM_SHARED_DATA", str(root))
    monkeypatch.setattr(cli_demo, "LISTED_SEEDS", 3)
    assert main(["demo", "--list"]) == 0
    out = capsys.readouterr().out
    for seed in range(DEMO_SEED_BASE, DEMO_SEED_BASE + 3):
        assert f"--seed {seed}" in out
    assert "--case shared:ball  MR  2.5 mL, a ball" in out
    assert main(["demo", "--list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["seed"] for r in rows] == [DEMO_SEED_BASE, DEMO_SEED_BASE + 1, DEMO_SEED_BASE + 2,
                                         None]
    first = make_case(DEMO_SEED_BASE, n_lesions=1).lesions[0]
    assert rows[0]["lesion_ml"] == round(first.volume_ml, 3)
    assert not list(tmp_path.glob("sgpsam_demo*"))  # --list writes nothing
