"""The Logic methods the Widget calls (issue 16: every Widget action goes through the Logic),
with scripted children (``replay.py``) and the Segment tab's settings."""
from __future__ import annotations

from pathlib import Path

import pytest
from replay import ReplayRunner
from SGPSAMSlicerLib.batch_tab import BatchTabLogic
from SGPSAMSlicerLib.child_job import STOP_FILE_OPTION, JobState
from SGPSAMSlicerLib.forms import BATCH_FORM, TRAINING_FORM, SeedSource, form_values
from SGPSAMSlicerLib.module_logic import ModuleLogic
from SGPSAMSlicerLib.settings import LOCAL_MODEL, Settings
from SGPSAMSlicerLib.training_tab import TrainingTabLogic

from SGPSAMLib.errors import SGPSAMError


def _logic(batch_runner=None, training_runner=None) -> ModuleLogic:
    return ModuleLogic(Settings({}),
                       batch=BatchTabLogic(runner=batch_runner or ReplayRunner(), python="py"),
                       training=TrainingTabLogic(runner=training_runner or ReplayRunner(),
                                                 python="py"))


def test_start_batch_reads_the_form_and_the_segment_tab_settings(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "model.pt").write_bytes(b"x")
    (tmp_path / "seeds.csv").write_text("case,x,y,z\n")
    runner = ReplayRunner(hang=True)
    logic = _logic(batch_runner=runner)
    logic.updateModelSettings(LOCAL_MODEL, str(tmp_path / "model.pt"), "cpu", "MR")
    form = form_values(BATCH_FORM, inputFolder=tmp_path / "in", outputFolder=tmp_path / "out",
                       seeds=SeedSource.CSV, seedsCsv=tmp_path / "seeds.csv", overwrite=True)
    logic.startBatch(form)
    argv = runner.calls[0][0]
    assert argv[:5] == ["py", "-m", "SGPSAMLib", "batch", str((tmp_path / "in").resolve())]
    for option, value in (("--model", str((tmp_path / "model.pt").resolve())),
                          ("--seeds", str((tmp_path / "seeds.csv").resolve())),
                          ("--device", "cpu"), ("--modality", "MR")):
        assert argv[argv.index(option) + 1] == value
    assert "--overwrite" in argv and argv[-2] == STOP_FILE_OPTION
    assert runner.stop_files == [argv[-1]]
    assert logic.jobsRunning() and logic.pollJobs()
    logic.stopBatch()
    assert runner.handles[0].terminated
    with pytest.raises(SGPSAMError, match="Input folder: not chosen"):
        _logic().startBatch(form_values(BATCH_FORM))


def test_training_start_use_model_and_shutdown(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    best = tmp_path / "run" / "best.pt"
    runner = ReplayRunner(chunks=[{"event": "start", "total_steps": 4}], hang=True,
                          stop_chunks=[[{"event": "checkpoint", "kind": "best",
                                         "path": str(best), "val_dice": 0.5},
                                        {"event": "done", "stopped": True}]])
    logic = _logic(training_runner=runner)
    logic.updateModelSettings("demo", "", "auto", "auto")
    form = form_values(TRAINING_FORM, dataFolder=tmp_path / "data",
                       outputFolder=tmp_path / "run", mode="finetune", epochs=2)
    job = logic.startTraining(form)
    argv = runner.calls[0][0]
    assert argv[:4] == ["py", "-m", "SGPSAMLib", "train"] and "--stop-file" in argv
    assert argv[argv.index("--epochs") + 1] == "2.0"
    with pytest.raises(SGPSAMError, match="no checkpoint yet"):
        logic.useTrainedModel()
    best.parent.mkdir(parents=True, exist_ok=True)
    best.write_bytes(b"model")
    pumped = []
    assert logic.shutdownJobs(5.0, pump=lambda: pumped.append(1)) is True
    assert job.state is JobState.STOPPED and runner.handles[0].terminated and pumped
    assert logic.useTrainedModel() == str(best)
    assert logic.settings["model"] == LOCAL_MODEL and logic.settings.model_spec() == str(best)


def test_model_status_and_settings() -> None:
    logic = _logic()
    logic.updateModelSettings(LOCAL_MODEL, "", "cpu", "auto")
    assert logic.modelStatusText() == "Checkpoint file: (none chosen)"
    assert logic.cpuWarning() is True
    with pytest.raises(ValueError, match="setting 'device'"):
        logic.updateModelSettings("demo", "", "tpu", "auto")
    assert logic.settings["device"] == "cpu"  # nothing stored from the invalid update
    logic.updateModelSettings("no_such_model", "", "auto", "auto")
    assert "no_such_model" in logic.modelStatusText()
    assert logic.missingDependencies("segment") == []  # this test environment has torch


def test_cleanup_kills_what_does_not_stop_and_frees_the_model(tmp_path: Path) -> None:
    stubborn = ReplayRunner(hang=True, stop_chunks=[[]])
    stubborn.stop_exit_code = None  # "terminated" but never exits on its own
    logic = _logic(batch_runner=stubborn)
    (tmp_path / "in").mkdir()
    logic.updateModelSettings(LOCAL_MODEL, str(tmp_path / "m.pt"), "auto", "auto")
    (tmp_path / "m.pt").write_bytes(b"x")
    logic.startBatch(form_values(BATCH_FORM, inputFolder=tmp_path / "in",
                                 outputFolder=tmp_path / "out"))
    assert logic.cleanup(wait_s=0.2) is False
    assert stubborn.handles[0].killed and not logic.jobsRunning() and logic.model is None
