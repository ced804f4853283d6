"""training/trainer.py + cli_train.py: what each mode trains, resume exactness, stop, checkpoints,
JSON progress, and that the loss goes down on a trivial case.

Runs use the ``tiny`` preset with a 64^3 crop (``model_overrides``) and 1-2 decoder iterations
so each step is cheap on a CPU.
"""
from __future__ import annotations

import json
import os
import signal
import threading

import numpy as np
import pytest
import torch

from SGPSAMLib.build import build_model, load_model, save_checkpoint
from SGPSAMLib.cli import main
from SGPSAMLib.errors import SGPSAMError
from SGPSAMLib.geometry import Volume
from SGPSAMLib.io import write_labelmap, write_volume
from SGPSAMLib.training import TrainConfig, train, trainable_parameter_names

SHAPE = (40, 40, 40)
PROGRESS_KEYS = {"event", "step", "total_steps", "epoch", "loss", "lr", "val_dice", "val_step",
                 "gate_rates", "eta_s"}


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _write_case(folder, name, centre, radius, seed):
    rng = np.random.default_rng(seed)
    k, j, i = np.indices(SHAPE)
    c = np.asarray(centre)
    label = (((k - c[0]) ** 2 + (j - c[1]) ** 2 + (i - c[2]) ** 2) <= radius ** 2).astype(np.uint8)
    image = np.where(label > 0, 200.0, 20.0) + rng.normal(0, 5, SHAPE)
    matrix = np.diag([1.5, 1.5, 1.5, 1.0])
    volume = Volume(image.astype(np.float32), matrix, name)
    write_volume(volume, folder / f"{name}.nii.gz")
    write_labelmap(label, volume, folder / f"{name}_label.nii.gz")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("spheres")
    for n, (centre, radius) in enumerate((((20, 20, 20), 7), ((18, 22, 20), 8),
                                          ((21, 19, 22), 6))):
        _write_case(folder, f"case{n}", centre, radius, n)
    return folder


def _config(data, out, **kw) -> TrainConfig:
    options = dict(data=str(data), out=str(out), preset="tiny", mode="finetune", loss="zoom",
                   steps=2, batch_size=1, click_iters=2, val_cases=("case2",), val_clicks=2,
                   val_every=100, lr=1e-3, warmup=0, model_overrides={"image_size": 64},
                   jitter_mm=3.0, device="cpu", seed=1)
    options.update(kw)
    return TrainConfig(**options)


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_sgp_mode_trains_exactly_sgpm_prompt_encoder_and_decoder(data, tmp_path):
    init = tmp_path / "init.pt"
    base = build_model("tiny", image_size=64)
    save_checkpoint(base, init)
    config = _config(data, tmp_path / "run", mode="sgp", init=str(init), preset=None,
                     random_insert=False)
    result = train(config)
    after = _state(result.last)
    before = base.state_dict()
    names = trainable_parameter_names(base, "sgp")
    params = dict(base.named_parameters())
    assert set(names) == {n for n in params if ".sgpm." in n
                          or n.startswith(("prompt_encoder.", "mask_decoder."))}
    frozen = [n for n in params if n not in names]
    assert any(n.startswith("image_encoder.blocks.") for n in frozen)
    assert all(torch.equal(before[n], after[n]) for n in frozen)
    changed = {n for n in names if not torch.equal(before[n], after[n])}
    assert any(".sgpm." in n for n in changed)
    assert any(n.startswith("mask_decoder.") for n in changed)
    assert any(n.startswith("prompt_encoder.mask_downscaling") for n in changed)
    metadata = load_model(result.last).checkpoint_metadata
    assert metadata["mode"] == "sgp" and metadata["loss"] == "zoom"


def test_finetune_trains_every_parameter_and_checkpoints_describe_themselves(data, tmp_path):
    config = _config(data, tmp_path / "run", val_every=2)
    torch.manual_seed(0)
    result = train(config)
    assert result.steps == 2 and not result.stopped
    assert result.steps_per_s > 0
    model = build_model("tiny", image_size=64)
    assert trainable_parameter_names(model, "finetune") == [n for n, _ in
                                                            model.named_parameters()]
    last = load_model(result.last)
    best = load_model(result.best)
    for loaded in (last, best):
        meta = loaded.checkpoint_metadata
        assert meta["format"] == "sgpsam" and meta["mode"] == "finetune"
        assert meta["train_config"]["loss"] == "zoom"
        assert meta["data"]["train_cases"] == ["case0", "case1"]
        assert meta["data"]["val_cases"] == ["case2"]
        assert meta["library_version"]
        assert loaded.config.image_size == 64
    assert last.checkpoint_metadata["kind"] == "last"
    assert best.checkpoint_metadata["kind"] == "best"
    assert best.checkpoint_metadata["metrics"]["val_dice"] == result.metrics["best_val_dice"]
    # The encoder was trained too (random init of the same seed differs from the result).
    initial = build_model("tiny", image_size=64)
    assert not torch.equal(initial.image_encoder.patch_embed.proj.weight,
                           last.image_encoder.patch_embed.proj.weight)
    events = [r["event"] for r in result.history]
    assert events[0] == "start" and events[-1] == "done"
    assert {"progress", "checkpoint"} <= set(events)
    with pytest.raises(SGPSAMError, match="already holds a training run"):
        train(config)


def test_resume_is_bit_exact(data, tmp_path):
    straight = train(_config(data, tmp_path / "straight", steps=3, batch_size=2,
                             val_every=2))
    stop = threading.Event()

    def on_record(record):
        if record["event"] == "progress" and record["step"] == 1:
            stop.set()

    first = train(_config(data, tmp_path / "split", steps=3, batch_size=2, val_every=2),
                  progress=on_record, stop=stop)
    assert first.stopped and first.steps == 1
    assert load_model(first.last).checkpoint_metadata["step"] == 1
    resumed = train(_config(data, tmp_path / "split", steps=3, batch_size=2, val_every=2,
                            resume=True))
    assert resumed.steps == 3 and not resumed.stopped
    a, b = _state(straight.last), _state(resumed.last)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.metrics["val_dice"] == straight.metrics["val_dice"]
    with pytest.raises(SGPSAMError, match="options differ"):
        train(_config(data, tmp_path / "split", steps=4, batch_size=2, lr=5e-4, resume=True))
    with pytest.raises(SGPSAMError, match="no .*state.pt"):
        train(_config(data, tmp_path / "nothing", resume=True))


def test_sigterm_stops_cleanly_through_the_cli(data, tmp_path, capsys, monkeypatch):
    import SGPSAMLib.cli.train as cli_train

    init = tmp_path / "tiny64.pt"  # the CLI has no flag for a 64^3 crop: an init of that shape
    save_checkpoint(build_model("tiny", image_size=64), init)
    out = tmp_path / "run"
    original = cli_train._printer

    def printer(json_progress):
        emit, close = original(json_progress)

        def emit_then_signal(record):
            emit(record)
            if record.get("event") == "progress" and record["step"] == 1:
                os.kill(os.getpid(), signal.SIGTERM)
        return emit_then_signal, close

    monkeypatch.setattr(cli_train, "_printer", printer)
    code = main(["train", "--data", str(data), "--out", str(out), "--init", str(init),
                 "--mode", "finetune", "--steps", "5", "--batch-size", "1",
                 "--click-iters", "1", "--val-cases", "case2", "--val-every", "100",
                 "--device", "cpu", "--json-progress"])
    assert code == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert records[0]["event"] == "start"
    done = records[-1]
    assert done["event"] == "done" and done["stopped"] is True and done["step"] == 1
    assert load_model(out / "last.pt").checkpoint_metadata["step"] == 1
    state = torch.load(out / "state.pt", map_location="cpu", weights_only=True)
    assert state["step"] == 1
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    kinds = set()
    for record in records:
        assert record["event"] in ("start", "progress", "checkpoint", "done")
        if record["event"] == "progress":
            assert PROGRESS_KEYS <= set(record)
            assert record["total_steps"] == 5 and isinstance(record["gate_rates"], dict)
        if record["event"] == "checkpoint":
            kinds.add(record["kind"])
            assert os.path.exists(record["path"])
    assert kinds == {"last"}


def test_cli_errors_are_one_line(data, tmp_path, capsys):
    code = main(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o"),
                 "--json-progress"])
    assert code == 2
    captured = capsys.readouterr()
    assert json.loads(captured.out.strip())["event"] == "error"
    assert captured.err.startswith("sgpsam: error: training data folder")
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "o"),
                 "--batch-size", "0"]) == 2
    assert "--batch-size: expected an integer >= 1" in capsys.readouterr().err
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "o"),
                 "--labels", "1,x"]) == 2
    assert "--labels" in capsys.readouterr().err


def test_loss_decreases_on_a_trivial_case(data, tmp_path):
    config = _config(data, tmp_path / "overfit", steps=24, lr=3e-3, grad_clip=0.0,
                     click_iters=1, val_fraction=0.0, val_cases=None, jitter_mm=0.0, flip=False,
                     intensity_aug=False, log_every=1, random_insert=False)
    result = train(config)
    losses = [r["loss"] for r in result.history if r["event"] == "progress"]
    assert len(losses) == 24
    thirds = [np.mean(losses[i:i + 8]) for i in (0, 8, 16)]
    assert thirds[0] > thirds[1] > thirds[2]
    assert np.mean(losses[-4:]) < 0.9 * np.mean(losses[:4])
    assert result.best is None


def test_sigterm_stops_the_library_run_and_a_second_one_aborts(data, tmp_path):
    """train() without the CLI: one SIGTERM stops after the step and saves; two abort at once
    (job.StopOnSignals' rule), and the previous handler is back either way."""
    from SGPSAMLib.job import Interrupted

    def signal_at_step_1(times):
        def progress(record):
            if record.get("event") == "progress" and record["step"] == 1:
                for _ in range(times):
                    os.kill(os.getpid(), signal.SIGTERM)
        return progress

    result = train(_config(data, tmp_path / "one", steps=4), progress=signal_at_step_1(1))
    assert result.stopped and result.steps == 1 and result.last.exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    with pytest.raises(Interrupted) as caught:
        train(_config(data, tmp_path / "two", steps=4), progress=signal_at_step_1(2))
    assert caught.value.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_an_init_checkpoint_that_does_not_fit_gets_the_one_key_report(tmp_path):
    """train --init has the key contract and message of load_model (build.check_state_dict)."""
    from SGPSAMLib.errors import CheckpointError
    from SGPSAMLib.training import build_initial_model

    state = build_model("tiny").state_dict()
    state["mask_decoder.iou_token.weight"] = torch.zeros(2, 3)  # mis-shaped
    del state["image_encoder.neck.0.weight"]                    # missing
    bare = tmp_path / "bare.pth"
    torch.save({"model_state_dict": state}, bare)
    with pytest.raises(CheckpointError) as caught:
        build_initial_model(TrainConfig(data="d", out="o", init=str(bare), preset="tiny",
                                        mode="finetune"))
    text = str(caught.value)
    assert text.startswith(f"--init {bare}: checkpoint does not match the 'tiny' architecture")
    assert "missing keys (1): image_encoder.neck.0.weight" in text
    assert "mis-shaped keys (1): mask_decoder.iou_token.weight (2, 3) vs" in text
    assert text.endswith("use --preset to name the architecture of a file without a config")
    with pytest.raises(CheckpointError, match="mis-shaped keys \\(1\\)"):
        load_model(bare, preset="tiny")
