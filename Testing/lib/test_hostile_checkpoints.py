"""Checkpoints that lie or are not what we expect (issue 14, items 4 and 6; issue 13 item 8):
a stored config is validated on the meta device against the file's tensors and a parameter
bound before any real allocation; every unreadable or unsafe file is one CheckpointError that
says what is accepted and never repeats torch's advice to load with ``weights_only=False``."""
from __future__ import annotations

import argparse
import os
import pickle
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from SGPSAMLib import build, config_check
from SGPSAMLib.build import PRESETS, build_model, describe_checkpoint, load_model, save_checkpoint
from SGPSAMLib.errors import CheckpointError
from SGPSAMLib.modeling import SGPSAMModel

LIMIT_ENV = "SGPSAM_MAX_MODEL_PARAMETERS"


@pytest.fixture(scope="module")
def tiny() -> SGPSAMModel:
    torch.manual_seed(0)
    return build_model("tiny")


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the device of every SGPSAMModel that load_model constructs."""
    devices: list[str] = []

    recording = _recording(devices)
    monkeypatch.setattr(build, "SGPSAMModel", recording)
    monkeypatch.setattr(config_check, "SGPSAMModel", recording)
    return devices


def _recording(devices: list[str]) -> type:
    """SGPSAMModel that records where it is built and refuses a real build of a crafted giant
    (so that a regression fails this test instead of exhausting the machine's memory)."""

    class Recording(SGPSAMModel):
        def __init__(self, config) -> None:
            device = torch.empty(0).device.type
            devices.append(device)
            if device != "meta" and (config.embed_dim > 1024 or config.depth > 64):
                raise AssertionError(f"a real {config.embed_dim}-wide, {config.depth}-block "
                                     "model was built from a crafted config")
            super().__init__(config)

    return Recording


def _crafted(path: Path, config: object, state: dict | None = None) -> Path:
    torch.save({"format": "sgpsam", "config": config,
                "state_dict": state or {"image_encoder.pos_embed": torch.zeros(2)}}, path)
    return path


def test_huge_stored_config_is_refused_without_allocating(tmp_path: Path, tiny: SGPSAMModel,
                                                          builds: list[str]) -> None:
    """Item 4: a 2 kB file declaring a 16384-wide, 64-block ViT is refused by the bound on the
    meta device; no real model is ever constructed."""
    config = dict(tiny.config.to_dict(), embed_dim=16384, depth=64, num_heads=16,
                  global_attn_indexes=[63], sgpm_blocks=[])
    path = _crafted(tmp_path / "huge.pt", config)
    assert path.stat().st_size < 4000
    with pytest.raises(CheckpointError, match=rf"declares more than 1,000,000,000 parameters.*"
                                              rf"{LIMIT_ENV}") as info:
        load_model(path)
    assert str(path) in str(info.value)
    assert builds == ["meta"]


def test_config_building_far_more_tensors_than_the_file_stops_early(
        tmp_path: Path, tiny: SGPSAMModel, builds: list[str]) -> None:
    """A million blocks of width 8: few parameters, but far more tensors than the file has;
    construction stops at the tensor budget instead of building a million modules."""
    config = dict(tiny.config.to_dict(), depth=1_000_000, embed_dim=8, num_heads=2,
                  global_attn_indexes=[0], sgpm_blocks=[0])
    path = _crafted(tmp_path / "deep.pt", config)
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match="builds more than .* tensors"):
        load_model(path)
    assert time.perf_counter() - start < 30 and builds == ["meta"]


def test_stored_config_must_match_the_weights_before_building(tmp_path: Path, tiny: SGPSAMModel,
                                                              builds: list[str]) -> None:
    config = dict(tiny.config.to_dict(), embed_dim=96, num_heads=2)
    path = _crafted(tmp_path / "other.pt", config, tiny.state_dict())
    with pytest.raises(CheckpointError, match=r"(?s)'tiny' architecture.*mis-shaped keys .*"
                                              r"image_encoder.pos_embed \(1, 8, 8, 8, 48\) vs "
                                              r"\(1, 8, 8, 8, 96\)"):
        load_model(path)
    assert builds == ["meta"]
    good = save_checkpoint(tiny, tmp_path / "good.pt")
    loaded = load_model(good)
    assert builds == ["meta", "cpu"]  # exactly a preset of ours: built, then compared
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in tiny.state_dict().items())
    variant = _crafted(tmp_path / "variant.pt", dict(tiny.config.to_dict(),
                                                      gate_mode="always_on"), tiny.state_dict())
    assert load_model(variant).config.gate_mode == "always_on"
    assert builds == ["meta", "cpu", "meta", "cpu"]  # not a preset: validated first


@pytest.mark.parametrize("config, message", [
    ("abcd", "stored model config is a str, expected a dict"),
    ([1, 2], "stored model config is a list, expected a dict"),
    ({"embed_dim": "wide"}, "invalid stored model config: ModelConfig.embed_dim must be a "
                            "positive int"),
    ({"mlp_ratio": float("nan")}, "cannot be built: ValueError"),
    ({"image_size": 2 ** 20, "patch_size": 1}, "cannot be built|declares more than"),
    ({"global_attn_indexes": 5}, "invalid stored model config"),
])
def test_bad_stored_configs_are_named(tmp_path: Path, tiny: SGPSAMModel, config: object,
                                      message: str) -> None:
    """Item 6: a config that is a string is reported as such, not as unknown fields a, b, c."""
    if isinstance(config, dict):
        config = dict(tiny.config.to_dict(), **config)
    path = _crafted(tmp_path / "c.pt", config)
    with pytest.raises(CheckpointError, match=message) as info:
        load_model(path)
    assert "unknown ModelConfig fields ['a'" not in str(info.value)
    if not isinstance(config, dict):
        with pytest.raises(CheckpointError, match=message):
            describe_checkpoint(path)  # `sgpsam info` too


def test_without_the_meta_device_the_cpu_build_is_bounded_before_allocating(
        tmp_path: Path, tiny: SGPSAMModel, monkeypatch: pytest.MonkeyPatch) -> None:
    """If the meta build fails for a reason that is not the config's (a missing meta kernel,
    an optional import torch makes lazily), the check builds on the CPU under the same limits,
    every tensor factory call checked before it allocates."""
    requested: list[str] = []

    class NoMeta(SGPSAMModel):
        def __init__(self, config) -> None:
            requested.append(torch.empty(0).device.type)
            if requested[-1] == "meta":
                raise NotImplementedError("no meta kernel for some op")
            super().__init__(config)

    monkeypatch.setattr(config_check, "SGPSAMModel", NoMeta)
    good = _crafted(tmp_path / "variant.pt", dict(tiny.config.to_dict(), gate_mode="always_on"),
                    tiny.state_dict())  # not exactly a preset: its config is checked
    assert load_model(good).config.gate_mode == "always_on" and requested == ["meta", "cpu"]
    monkeypatch.setenv(LIMIT_ENV, "1000000")  # a 1.5 M-parameter config: over this limit
    wide = _crafted(tmp_path / "wide.pt", dict(tiny.config.to_dict(), embed_dim=256,
                                                num_heads=2))
    allocated: list[int] = []
    real_empty = torch.empty

    def recording_empty(*args, **kwargs):
        tensor = real_empty(*args, **kwargs)
        allocated.append(tensor.numel())
        return tensor

    monkeypatch.setattr(torch, "empty", recording_empty)
    with pytest.raises(CheckpointError, match="declares more than 1,000,000 parameters"):
        load_model(wide)
    assert sum(allocated) <= 1_000_000  # stopped before the allocation that crossed it
    monkeypatch.setattr(config_check, "SGPSAMModel", NoMeta)
    broken = _crafted(tmp_path / "nan.pt", dict(tiny.config.to_dict(), mlp_ratio=float("nan")))
    with pytest.raises(CheckpointError, match="cannot be built: ValueError"):
        load_model(broken)


def test_parameter_limit_is_configurable(tmp_path: Path, tiny: SGPSAMModel,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    path = _crafted(tmp_path / "variant.pt", dict(tiny.config.to_dict(), gate_mode="always_on"),
                    tiny.state_dict())
    monkeypatch.setenv(LIMIT_ENV, "1000")
    with pytest.raises(CheckpointError, match="declares more than 1,000 parameters"):
        load_model(path)
    monkeypatch.setenv(LIMIT_ENV, "ten")
    with pytest.raises(CheckpointError, match=f"{LIMIT_ENV}='ten'"):
        load_model(path)
    monkeypatch.setenv(LIMIT_ENV, "2e9")
    assert load_model(path).config.gate_mode == "always_on"
    # A file holding exactly one of our presets needs no check of its config (nor the limit).
    monkeypatch.setenv(LIMIT_ENV, "1000")
    assert load_model(save_checkpoint(tiny, tmp_path / "tiny.pt")).config == tiny.config


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_on_the_meta_device_with_the_real_shapes(name: str) -> None:
    """The validation needs nothing but the model class: any config it accepts builds on the
    meta device with exactly the shapes of a real build (new heads included)."""
    with torch.device("meta"):
        meta = SGPSAMModel(PRESETS[name])
    real = SGPSAMModel(PRESETS[name]) if name in ("tiny", "demo") else None
    shapes = {k: v.shape for k, v in meta.state_dict().items()}
    assert all(v.device.type == "meta" for v in meta.state_dict().values())
    if real is not None:
        assert shapes == {k: v.shape for k, v in real.state_dict().items()}
    assert build.check_config_buildable(PRESETS[name], "x.pt", len(shapes)) == shapes


class _Namespace(argparse.Namespace):
    pass


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _files(tmp_path: Path, tiny: SGPSAMModel) -> dict[str, Path]:
    """Unusable files of every kind we have seen."""
    paths: dict[str, Path] = {}

    def put(name: str, content: bytes) -> None:
        paths[name] = tmp_path / name
        paths[name].write_bytes(content)

    put("empty.pth", b"")
    put("text.pth", b"definitely not a checkpoint")
    torch.save({"model_state_dict": tiny.state_dict(), "args": argparse.Namespace(lr=1)},
               tmp_path / "namespace.pth")
    paths["namespace.pth"] = tmp_path / "namespace.pth"
    torch.save({"x": _Exploit()}, tmp_path / "exploit.pth")
    paths["exploit.pth"] = tmp_path / "exploit.pth"
    put("raw_pickle.pth", pickle.dumps(_Exploit(), protocol=4))
    whole = (save_checkpoint(tiny, tmp_path / "whole.pt")).read_bytes()
    put("truncated.pt", whole[: len(whole) // 2])
    put("cut_end.pt", whole[:-100])
    # A zip whose pickle declares a storage much larger than its record.
    torch.save({"a": torch.zeros(10)}, tmp_path / "small.pt")
    with zipfile.ZipFile(tmp_path / "small.pt") as source:
        entries = {n: source.read(n) for n in source.namelist()}
    key = next(n for n in entries if n.endswith("data.pkl"))
    entries[key] = entries[key].replace(b"K\nt", b"J\xff\xff\xff\x7ft", 1)
    with zipfile.ZipFile(tmp_path / "lying_storage.pt", "w", zipfile.ZIP_STORED) as target:
        for n, data in entries.items():
            target.writestr(n, data)
    paths["lying_storage.pt"] = tmp_path / "lying_storage.pt"
    return paths


def test_unusable_files_one_message_never_unsafe_advice(tmp_path: Path,
                                                        tiny: SGPSAMModel) -> None:
    """Item 6 / issue 13 item 8: every failure names the file and what is accepted; a refused
    pickle says the file is not a safe checkpoint; torch's advice never reaches the user."""
    expected = {
        "empty.pth": r"the file is empty \(0 bytes\)",
        "text.pth": "not a readable PyTorch checkpoint",
        "namespace.pth": "not a safe checkpoint: it holds the Python object "
                         "argparse.Namespace.*model_state_dict",
        "exploit.pth": "not a safe checkpoint: it holds the Python object (posix|nt).system",
        "raw_pickle.pth": "not a readable PyTorch checkpoint",
        "truncated.pt": "damaged or incomplete checkpoint|not a readable PyTorch checkpoint",
        "cut_end.pt": "damaged or incomplete checkpoint|not a readable PyTorch checkpoint",
        "lying_storage.pt": "not a readable PyTorch checkpoint",
    }
    for name, path in _files(tmp_path, tiny).items():
        with pytest.raises(CheckpointError, match=expected[name]) as info:
            load_model(path)
        text = str(info.value)
        assert str(path) in text, text
        if "damaged or incomplete" not in text:  # what is accepted, in either message's words
            assert "accepted: a SAM-Med3D .pth" in text or \
                "expected a checkpoint written by torch.save" in text, text
        assert "()" not in text, text
        for advice in ("weights_only=False", "`weights_only` set to `False`", "Re-running",
                       "add_safe_globals", "safe_globals", "trusted source", "file an issue"):
            assert advice not in text, (name, text)
        assert "\n" not in text


def test_cli_messages_for_unsafe_files(tmp_path: Path, tiny: SGPSAMModel,
                                       capsys: pytest.CaptureFixture) -> None:
    from SGPSAMLib.cli import main

    for name, path in _files(tmp_path, tiny).items():
        assert main(["info", str(path)]) == 2, name
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("sgpsam: error: ") and str(path) in err
        assert "weights_only=False" not in err and "weights_only` set to `False" not in err
    # In a real process too: torch's UserWarnings ("please file an issue") stay silent.
    result = subprocess.run([sys.executable, "-m", "SGPSAMLib", "info", "raw_pickle.pth"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr


def test_training_init_checkpoint_config_is_bounded(tmp_path: Path, tiny: SGPSAMModel,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """``train --init hostile.pt`` is refused the same way, before the model is allocated."""
    from SGPSAMLib.training import trainer
    from SGPSAMLib.training.config import TrainConfig

    constructed: list[str] = []
    monkeypatch.setattr(trainer, "SGPSAMModel", _recording(constructed))
    config = dict(tiny.config.to_dict(), embed_dim=16384, depth=64, num_heads=16,
                  global_attn_indexes=[63], sgpm_blocks=[])
    path = _crafted(tmp_path / "huge.pt", config)
    with pytest.raises(CheckpointError, match="declares more than"):
        trainer.build_initial_model(TrainConfig(data="d", out="o", init=str(path),
                                                mode="finetune"))
    assert constructed == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS is Linux-only")
def test_cli_crafted_checkpoint_exits_2_within_bounded_memory(tmp_path: Path,
                                                              tiny: SGPSAMModel) -> None:
    """Item 4 proof: under a 1.5 GB address-space limit the crafted checkpoint ends as one
    error line and exit 2 (before the fix: a MemoryError traceback, exit 1)."""
    from test_hostile_images import run_cli_limited

    image = np.zeros((24, 24, 24), np.int16)
    image[8:16, 8:16, 8:16] = 500
    sitk.WriteImage(sitk.GetImageFromArray(image), str(tmp_path / "ct.nii.gz"))
    config = dict(tiny.config.to_dict(), embed_dim=16384, depth=64, num_heads=16,
                  global_attn_indexes=[63], sgpm_blocks=[])
    _crafted(tmp_path / "crafted.pt", config)
    for extra_env in ({}, {LIMIT_ENV: "1e12"}):  # also with the bound lifted: shapes disagree
        result = run_cli_limited(["segment", "ct.nii.gz", "--model", "crafted.pt",
                                  "--point=-12,-12,12", "--out", "mask.nii.gz", "--device",
                                  "cpu"], tmp_path, env=extra_env)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2, result.stderr[-3000:]
        assert len(lines) == 1 and lines[0].startswith("sgpsam: error: crafted.pt:"), lines
        assert not (tmp_path / "mask.nii.gz").exists()
