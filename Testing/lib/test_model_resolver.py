"""One resolver for model names and paths (issue 13 item 4, issue 16 move 5), the bundled model
as package data (item 3), and plain messages for files that are not checkpoints (item 8)."""
from __future__ import annotations

import gzip
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import SGPSAMLib
from SGPSAMLib import models
from SGPSAMLib.build import build_model, describe_checkpoint, save_checkpoint
from SGPSAMLib.cli import main
from SGPSAMLib.errors import CheckpointError
from SGPSAMLib.geometry import Volume
from SGPSAMLib.io import write_labelmap, write_volume

PACKAGE = Path(SGPSAMLib.__file__).resolve().parent


def test_load_model_accepts_a_model_name() -> None:
    """README: a name works wherever a checkpoint is asked for, the library included."""
    model = SGPSAMLib.load_model("demo")
    assert model.config.preset == "demo" and not model.training
    assert model.checkpoint_metadata["path"] == str(PACKAGE / "resources" / "sgpsam_demo.pt")
    assert describe_checkpoint("demo")["preset"] == "demo"


def test_the_bundled_model_is_package_data() -> None:
    assert models.bundled_model_path() == PACKAGE / "resources" / "sgpsam_demo.pt"
    pyproject = (PACKAGE.parent / "pyproject.toml").read_text()
    assert 'SGPSAMLib = ["resources/*.pt"]' in pyproject
    cmake = (PACKAGE.parent / "SGPSAM" / "CMakeLists.txt").read_text()
    assert "set(_demo_model SGPSAMLib/resources/sgpsam_demo.pt)" in cmake
    assert not (PACKAGE.parent / "Resources" / "Models").exists()


def test_a_name_wins_over_a_file_of_that_name(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").write_bytes(b"not the demo model")
    assert models.resolve_model("demo") == models.bundled_model_path()
    assert models.resolve_model("./demo") == Path("./demo")
    assert models.resolve_model(Path("demo")) == Path("demo")  # a Path is always a path


@pytest.fixture
def sentinel(monkeypatch: pytest.MonkeyPatch) -> list:
    """Every entry point must ask SGPSAMLib.models.resolve_model: record it, then refuse."""
    calls: list = []

    def resolver(spec, verify=False, option=None):
        calls.append((str(spec), option))
        raise CheckpointError(f"resolver asked for {spec} ({option})")

    monkeypatch.setattr(models, "resolve_model", resolver)
    return calls


@pytest.mark.parametrize("argv, option", [
    (["info", "mine.pt"], "CKPT"),
    (["segment", "{image}", "--model", "mine.pt", "--point=0,0,0", "--out", "{out}/m.nii.gz"],
     "--model"),
    (["batch", "{folder}", "--model", "mine.pt", "--out", "{out}"], "--model"),
    (["evaluate", "--model", "mine.pt", "--data", "{data}"], "--model"),
    (["demo", "--model", "mine.pt", "--out", "{out}/demo"], "--model"),
    (["train", "--data", "{data}", "--out", "{out}/run", "--init", "mine.pt"], "--init"),
])
def test_every_command_uses_the_one_resolver(argv, option, sentinel, tmp_path, capsys) -> None:
    data = tmp_path / "data"
    data.mkdir()
    array = np.zeros((16, 16, 16), np.float32)
    array[4:10, 4:10, 4:10] = 100.0
    volume = Volume(array + np.random.default_rng(0).random(array.shape, np.float32),
                    np.diag([1.5, 1.5, 1.5, 1.0]))
    write_volume(volume, data / "c0.nii.gz")
    write_labelmap((array > 0).astype(np.uint8), volume, data / "c0_label.nii.gz")
    (tmp_path / "out").mkdir()
    values = {"image": data / "c0.nii.gz", "out": tmp_path / "out", "folder": data,
              "data": data}
    code = main([a.format(**values) for a in argv] + ["--device", "cpu"] * (argv[0] != "info"))
    err = capsys.readouterr().err
    assert code == 2, err
    assert sentinel == [("mine.pt", option)], err
    assert f"sgpsam: error: resolver asked for mine.pt ({option})" in err


def _write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


@pytest.mark.parametrize("content, fragment", [
    (b"", "the file is empty (0 bytes), not a checkpoint"),
    (b"test run notes\n", "not a readable PyTorch checkpoint (it looks like a text file)"),
    (b"hello world\n", "not a readable PyTorch checkpoint (it looks like a text file)"),
    (gzip.compress(b"\x00" * 100), "it looks like a gzip file, such as a .nii.gz image"),
    (b"NRRD0004\ntype: float\n", "it looks like an NRRD image"),
])
def test_files_that_are_not_checkpoints_get_a_plain_message(tmp_path, content, fragment,
                                                            capsys) -> None:
    path = _write(tmp_path / "model.pt", content)
    assert main(["info", str(path)]) == 2
    err = capsys.readouterr().err
    assert fragment in err and str(path) in err
    for leak in ("pop from empty list", "(101)", "weights_only", "Traceback"):
        assert leak not in err


def test_a_truncated_checkpoint_is_called_incomplete(tmp_path: Path) -> None:
    torch.manual_seed(0)
    whole = save_checkpoint(build_model("tiny"), tmp_path / "whole.pt")
    assert zipfile.is_zipfile(whole)
    cut = _write(tmp_path / "cut.pt", whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="a damaged or incomplete checkpoint"):
        SGPSAMLib.load_model(cut)
    assert SGPSAMLib.load_model(whole).config.preset == "tiny"  # the whole file still loads
