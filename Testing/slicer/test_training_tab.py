"""Training tab logic: form validation, argv accepted by ``sgpsam train``, the live series and
the resulting model from a scripted child, and scene cases exported for training."""
from __future__ import annotations

import argparse
import ast
import math
from pathlib import Path

import numpy as np
import pytest
from replay import ReplayRunner
from SGPSAMSlicerLib.child_job import JobState
from SGPSAMSlicerLib.training_tab import PRESETS, TrainingParams, TrainingTabLogic

from SGPSAMLib.cli import train as cli_train
from SGPSAMLib.errors import SGPSAMError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def form(tmp_path: Path) -> TrainingParams:
    (tmp_path / "data" / "imagesTr").mkdir(parents=True)
    (tmp_path / "base.pt").write_bytes(b"weights")
    return TrainingParams(output_folder=str(tmp_path / "runs" / "r1"),
                          data_folder=str(tmp_path / "data"), base_model=str(tmp_path / "base.pt"),
                          epochs=3, lr=2e-4, device="cpu")


def _parse_like_the_cli(argv: list[str]) -> argparse.Namespace:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true")
    common.add_argument("--verbose", action="store_true")
    parser = argparse.ArgumentParser(prog="sgpsam")
    cli_train.register(parser.add_subparsers(dest="command"), common)
    return parser.parse_args(argv[3:])


def test_argv_is_accepted_by_the_train_command(form: TrainingParams, tmp_path: Path) -> None:
    logic = TrainingTabLogic(python="PythonSlicer")
    argv = logic.build_argv(logic.validate(form))
    assert argv[:4] == ["PythonSlicer", "-m", "SGPSAMLib", "train"]
    args = _parse_like_the_cli(argv)
    assert args.command == "train" and args.json_progress and not args.resume
    assert args.data == [str((tmp_path / "data").resolve())]
    assert args.out == str((tmp_path / "runs" / "r1").resolve())
    assert args.init == str((tmp_path / "base.pt").resolve())
    assert (args.mode, args.epochs, args.steps, args.lr, args.device, args.preset) == (
        "sgp", 3.0, None, 2e-4, "cpu", None)
    assert (args.batch_size, args.val_fraction, args.modality) == (None, None, None)

    form.base_model, form.preset, form.mode = "", "tiny", "finetune"
    form.epochs, form.steps = None, 40
    form.batch_size, form.val_fraction, form.modality = 4, 0.25, "MR"
    args = _parse_like_the_cli(logic.build_argv(logic.validate(form)))
    assert (args.mode, args.init, args.preset, args.steps, args.epochs) == (
        "finetune", None, "tiny", 40, None)
    assert (args.batch_size, args.val_fraction, args.modality) == (4, 0.25, "MR")

    out = Path(form.output_folder)
    out.mkdir(parents=True)
    (out / "state.pt").write_bytes(b"")
    form.resume = True
    assert _parse_like_the_cli(logic.build_argv(logic.validate(form))).resume is True


def test_default_runner_waits_long_enough_for_a_step() -> None:
    from SGPSAMSlicerLib.batch_tab import BATCH_GRACE_S, BatchTabLogic
    from SGPSAMSlicerLib.processes import SubprocessRunner
    from SGPSAMSlicerLib.training_tab import TRAIN_GRACE_S

    for logic, grace in ((TrainingTabLogic(), TRAIN_GRACE_S), (BatchTabLogic(), BATCH_GRACE_S),
                         (TrainingTabLogic(grace_s=5.0), 5.0)):
        assert isinstance(logic.runner, SubprocessRunner) and logic.runner.grace_s == grace
    assert TRAIN_GRACE_S >= 600 and BATCH_GRACE_S >= 120


def test_presets_match_the_library() -> None:
    tree = ast.parse((REPO / "SGPSAMLib" / "presets.py").read_text(encoding="utf-8"))
    keys = next(node.value.keys for node in ast.walk(tree)
                if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "PRESETS")
    assert sorted(k.value for k in keys) == sorted(PRESETS)


def test_validation_names_the_field(form: TrainingParams, tmp_path: Path) -> None:
    logic = TrainingTabLogic()
    cases = [
        (dict(output_folder=""), "Output folder: not chosen"),
        (dict(output_folder=str(tmp_path / "base.pt")), "Output folder: .*is a file"),
        (dict(resume=True), "Output folder: .*no stopped run to resume"),
        (dict(data_folder=""), "Training data: no folder chosen"),
        (dict(data_folder=str(tmp_path / "nope")), "Training data: .*nope is not an existing"),
        (dict(mode="lora"), "Mode: 'lora'"),
        (dict(base_model=str(tmp_path / "x.pt")), "Base model: .*x.pt"),
        (dict(base_model=""), "Base model: mode 'sgp' trains"),
        (dict(preset="huge"), "Preset: 'huge'"),
        (dict(epochs=0), "Epochs: 0; expected a number > 0"),
        (dict(epochs=None), "Epochs: not set"),
        (dict(epochs="many"), "Epochs: 'many' is not a number"),
        (dict(steps=10), "Epochs: give epochs or steps, not both"),
        (dict(epochs=None, steps=0), "Steps: 0; expected a number >= 1"),
        (dict(lr=0.0), "Learning rate: 0.0; expected a number > 0"),
        (dict(lr=float("nan")), "Learning rate: nan is not a finite number"),
        (dict(batch_size=0), "Batch size: 0; expected a number >= 1"),
        (dict(val_fraction=1.0), "Validation fraction: 1.0; expected a number in"),
        (dict(modality="PET"), "Modality: 'PET'"),
    ]
    for changes, message in cases:
        with pytest.raises(SGPSAMError, match=message):
            logic.validate(TrainingParams(**{**form.__dict__, **changes}))
    out = Path(form.output_folder)
    out.mkdir(parents=True)
    (out / "last.pt").write_bytes(b"")
    with pytest.raises(SGPSAMError, match="Output folder: .*already holds a training run"):
        logic.validate(form)
    # From the scene, no data folder is needed.
    fresh = TrainingParams(**{**form.__dict__, "output_folder": str(tmp_path / "r2"),
                              "data_folder": ""})
    assert logic.validate(fresh, scene_data=True).data_folder == ""


def test_widget_form_dict_maps_onto_the_command(form: TrainingParams, tmp_path: Path) -> None:
    runner = ReplayRunner(hang=True)
    logic = TrainingTabLogic(runner=runner, python="py")
    logic.start_from_form({"data_folder": form.data_folder, "use_scene": False,
                           "output_folder": form.output_folder, "init_model": form.base_model,
                           "epochs": 7, "learning_rate": 5e-5, "validation_fraction": 0.1,
                           "resume": False, "device": "cuda"})
    args = _parse_like_the_cli(runner.calls[0][0])
    assert (args.mode, args.epochs, args.lr, args.val_fraction, args.device, args.resume) == (
        "sgp", 7.0, 5e-5, 0.1, "cuda", None)
    assert args.init == str(Path(form.base_model).resolve())
    assert logic.best_checkpoint() is None
    with pytest.raises(SGPSAMError, match="Training data: no scene"):
        TrainingTabLogic(runner=runner).start_from_form(
            {"output_folder": str(tmp_path / "o"), "use_scene": True, "mode": "finetune"})


def _progress(step: int, loss: float, val=None, **extra) -> dict:
    return {"event": "progress", "step": step, "total_steps": 8, "epoch": step / 4,
            "loss": loss, "lr": 1e-4 * step, "val_dice": val, "val_dice_clicks": None,
            "gate_rates": {"block11": 0.5, "block2": 0.25}, "eta_s": 2.0 * (8 - step),
            **extra}


def test_series_checkpoints_and_result_model(form: TrainingParams, tmp_path: Path) -> None:
    out = tmp_path / "runs" / "r1"
    best, last = out / "best.pt", out / "last.pt"
    script = [
        {"event": "start", "total_steps": 8, "start_step": 0, "mode": "sgp"},
        [_progress(1, 0.9), _progress(2, 0.8), "a log line"],
        [_progress(4, 0.6, val=0.5),
         {"event": "checkpoint", "path": str(best), "kind": "best", "step": 4,
          "val_dice": 0.5},
         {"event": "checkpoint", "path": str(last), "kind": "last", "step": 4,
          "val_dice": 0.5}],
        [_progress(5, 0.55, val=0.5), _progress(8, 0.4, val=0.625)],
        {"event": "done", "stopped": False, "step": 8, "total_steps": 8, "last": str(last),
         "best": str(best), "metrics": {"best_val_dice": 0.625}},
    ]
    logic = TrainingTabLogic(runner=ReplayRunner(chunks=script), python="py")
    progress, checkpoints, states, logs = [], [], [], []
    logic.on_progress = progress.append
    logic.on_checkpoint = lambda kind, path: checkpoints.append((kind, Path(path).name))
    logic.on_state = states.append
    logic.on_log = logs.append
    logic.start(form)
    assert logic.is_running and logic.data_folder == (tmp_path / "data").resolve()
    logic.poll()
    assert logic.total_steps == 8 and logic.status_text == "step 0/8"
    logic.poll()
    assert logic.loss_series == [(1, 0.9), (2, 0.8)] and logs == ["a log line"]
    assert logic.fraction == pytest.approx(0.25)
    assert logic.status_text == "step 2/8, epoch 0.50, loss 0.8000, 12 s left"
    logic.poll()
    assert logic.val_series == [(4, 0.5)] and logic.best_model_path == str(best)
    assert logic.gate_rates == {"block11": 0.5, "block2": 0.25}
    assert logic.gate_rates_text() == "block2: 0.25, block11: 0.50"
    out.mkdir(parents=True)
    best.write_bytes(b"b")
    last.write_bytes(b"l")
    logic.poll()
    logic.poll()
    assert logic.state is JobState.FINISHED and logic.fraction == 1.0
    assert logic.loss_series == [(1, 0.9), (2, 0.8), (4, 0.6), (5, 0.55), (8, 0.4)]
    assert logic.val_series == [(4, 0.5), (8, 0.625)]
    assert logic.lr_series[-1] == (8, pytest.approx(8e-4))
    assert logic.best_val_dice == 0.625 and logic.epoch == 2.0
    assert logic.result_model_path == str(best) and logic.last_model_path == str(last)
    assert logic.best_checkpoint() == str(best)
    assert logic.status_text.endswith(f"; model: {best} (best val Dice 0.625)")
    assert len(progress) == 5 and checkpoints == [("best", "best.pt"), ("last", "last.pt")]
    assert states == [JobState.RUNNING, JobState.FINISHED]


def test_val_step_keeps_repeated_values_apart(form: TrainingParams) -> None:
    script = [[_progress(1, 1.0, val=0.0, val_step=1), _progress(2, 0.9, val=0.0, val_step=1),
               _progress(3, 0.8, val=0.0, val_step=3)]]
    logic = TrainingTabLogic(runner=ReplayRunner(chunks=script, hang=True), python="py")
    logic.start(form)
    logic.poll()
    assert logic.val_series == [(1, 0.0), (3, 0.0)]


def test_stop_offers_the_last_model_and_crash_offers_none(form: TrainingParams,
                                                          tmp_path: Path) -> None:
    last = tmp_path / "last.pt"
    last.write_bytes(b"l")
    runner = ReplayRunner(chunks=[_progress(1, 0.9)], hang=True, stop_chunks=[[
        {"event": "checkpoint", "path": str(last), "kind": "last", "step": 1},
        {"event": "done", "stopped": True, "step": 1, "last": str(last), "best": None,
         "metrics": {"best_val_dice": None}}]])
    logic = TrainingTabLogic(runner=runner, python="py")
    logic.start(form)
    logic.poll()
    with pytest.raises(SGPSAMError, match="already in progress"):
        logic.start(form)
    logic.stop()
    assert runner.handles[0].terminated and logic.state is JobState.STOPPING
    logic.poll()
    assert logic.state is JobState.STOPPED
    assert logic.result_model_path == str(last) and logic.best_model_path is None
    assert logic.fraction == pytest.approx(1 / 8)

    logic = TrainingTabLogic(runner=ReplayRunner(chunks=[_progress(1, 0.9)], exit_code=-9,
                                                 stderr=["CUDA out of memory"]), python="py")
    logic.start(form)
    logic.poll()
    logic.poll()
    assert logic.state is JobState.FAILED and logic.result_model_path is None
    assert logic.error_message.startswith("Training ran out of memory")
    assert logic.error_message.endswith("CUDA out of memory")
    assert math.isclose(logic.loss_series[0][1], 0.9)


def test_scene_cases_are_exported_and_trained_on(mrml, form: TrainingParams,
                                                 tmp_path: Path) -> None:
    slicer = pytest.importorskip("slicer")
    from SGPSAMLib.io import read_volume

    volume = mrml.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "MR brain")
    volume.SetSpacing(1.0, 1.0, 3.0)
    array = np.arange(5 * 6 * 7, dtype=np.int16).reshape(5, 6, 7)
    slicer.util.updateVolumeFromArray(volume, array)
    mask = np.zeros(array.shape, np.uint8)
    mask[1:3, 2:4, 3:6] = 1

    runner = ReplayRunner(hang=True)
    logic = TrainingTabLogic(runner=runner, python="py")
    request = {"use_scene": True, "output_folder": form.output_folder,
               "init_model": form.base_model, "epochs": 2, "modality": "MR"}
    empty = mrml.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "unannotated")
    slicer.util.updateVolumeFromArray(empty, array)
    with pytest.raises(SGPSAMError, match="Training data: the scene has no segmentation"):
        logic.start_from_form(request, mrml.scene)
    segmentation = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    sid = segmentation.GetSegmentation().AddEmptySegment("t", "tumour", [1, 0, 0])
    slicer.util.updateSegmentBinaryLabelmapFromArray(mask, segmentation, sid, volume)
    logic.start_from_form(request, mrml.scene)
    out = Path(form.output_folder).resolve()
    assert logic.data_folder == out / "training_data"
    argv = runner.calls[0][0]
    assert argv[argv.index("--data") + 1] == str(out / "training_data")
    [case] = logic.exported_cases
    np.testing.assert_array_equal(read_volume(case.label).array, mask)
    np.testing.assert_array_equal(read_volume(case.image).array, array)
    logic.cleanup()
    assert runner.handles[0].killed
    again = logic.export_scene_cases([(volume, segmentation)], out)
    assert again == out / "training_data_2"
