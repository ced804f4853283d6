"""The ``sgpsam`` command line, end to end with the real pipeline and a tiny random model."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

import SGPSAMLib
from SGPSAMLib.build import build_model, save_checkpoint
from SGPSAMLib.cli import main, parse_point
from SGPSAMLib.errors import PromptError

SIZE = (64, 64, 40)  # x, y, z voxels
SPACING = (1.0, 1.0, 2.5)
ORIGIN_LPS = (10.0, 20.0, -50.0)
DIRECTION = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)  # j axis runs to anterior
CENTRE_INDEX = (30, 34, 20)  # sphere centre (i, j, k)


def _write_image(array_kji: np.ndarray, path: Path) -> Path:
    image = sitk.GetImageFromArray(array_kji)
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN_LPS)
    image.SetDirection(DIRECTION)
    sitk.WriteImage(image, str(path))
    return path


def _ras_of_index(ijk: tuple[float, float, float]) -> tuple[float, float, float]:
    """RAS mm of a voxel index, through SimpleITK (LPS) alone, not our geometry module."""
    reference = sitk.Image(list(SIZE), sitk.sitkUInt8)
    reference.SetSpacing(SPACING)
    reference.SetOrigin(ORIGIN_LPS)
    reference.SetDirection(DIRECTION)
    x, y, z = reference.TransformContinuousIndexToPhysicalPoint([float(v) for v in ijk])
    return (-x, -y, z)


def _point(ijk: tuple[float, float, float], sign: str = "+", lps: bool = False) -> str:
    r, a, s = _ras_of_index(ijk)
    x, y, z = (-r, -a, s) if lps else (r, a, s)
    return f"--point={x:.3f},{y:.3f},{z:.3f},{sign}"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    save_checkpoint(build_model("tiny"), path, metadata={"trained_on": "nothing (test)"})
    return path


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """64x64x40 volume at 1x1x2.5 mm: noise background and a bright sphere of radius 8 mm."""
    rng = np.random.default_rng(0)
    k, j, i = np.meshgrid(*(np.arange(n) for n in SIZE[::-1]), indexing="ij")
    ci, cj, ck = CENTRE_INDEX
    dist = np.sqrt(((i - ci) * SPACING[0]) ** 2 + ((j - cj) * SPACING[1]) ** 2
                   + ((k - ck) * SPACING[2]) ** 2)
    array = (100 + 10 * rng.standard_normal(dist.shape) + 400 * (dist <= 8)).astype(np.float32)
    return _write_image(array, tmp_path_factory.mktemp("img") / "sphere.nii.gz")


@pytest.fixture()
def no_model_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make loading a model a test failure: the check under test must come first."""
    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("load_model was called before the failing check")

    monkeypatch.setattr("SGPSAMLib.build.load_model", fail)  # what `segment` imports and calls


def _run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _assert_usage_error(result: tuple[int, str, str], fragment: str, folder: Path) -> None:
    code, out, err = result
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sgpsam: error: "), err
    assert fragment in lines[0], lines[0]
    assert "Traceback" not in err
    assert sorted(p.name for p in folder.iterdir()) == []  # no mask, no temporary file


# -- segment: success ---------------------------------------------------------------------------

def test_segment_writes_mask_on_the_exact_image_grid(capsys, tmp_path, image, checkpoint) -> None:
    out = tmp_path / "mask.nii.gz"
    code, stdout, stderr = _run(capsys, "segment", image, "--model", checkpoint,
                                _point(CENTRE_INDEX), "--out", out, "--device", "cpu")
    assert code == 0, stderr
    written = sitk.ReadImage(str(out))
    source = sitk.ReadImage(str(image))
    assert written.GetSize() == source.GetSize() == SIZE
    assert written.GetSpacing() == source.GetSpacing()
    assert written.GetOrigin() == source.GetOrigin()
    assert written.GetDirection() == source.GetDirection()
    assert written.GetPixelID() == sitk.sitkUInt8
    mask = sitk.GetArrayFromImage(written)
    assert set(np.unique(mask).tolist()) <= {0, 1}
    voxels = int(mask.sum())
    assert stdout.count("\n") == 1
    assert f"{out}: {voxels} voxels, {voxels * 2.5 / 1000:.2f} mL" in stdout
    assert "1 point, cpu" in stdout


def test_segment_json_and_point_sequence(capsys, tmp_path, image, checkpoint) -> None:
    out = tmp_path / "mask.nrrd"
    code, stdout, stderr = _run(
        capsys, "segment", image, "--model", checkpoint, _point(CENTRE_INDEX),
        _point((40, 40, 30), "-"), _point((28, 34, 20), "+"), "--out", out, "--json",
        "--prompt-mode", "cumulative", "--device", "cpu")
    assert code == 0, stderr
    record = json.loads(stdout)
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    assert record["voxels"] == int(np.count_nonzero(mask))
    assert record["volume_ml"] == pytest.approx(record["voxels"] * 2.5 / 1000, abs=1e-4)
    assert [p["positive"] for p in record["points"]] == [True, False, True]
    np.testing.assert_allclose(record["points"][1]["ras"], _ras_of_index((40, 40, 30)),
                               atol=1e-3)
    assert record["out"] == str(out) and record["device"] == "cpu"
    assert record["seconds"] > 0 and isinstance(record["timings"], dict)


def test_lps_points_give_the_same_mask_as_ras_points(capsys, tmp_path, image,
                                                     checkpoint) -> None:
    ras_out, lps_out = tmp_path / "ras.nii.gz", tmp_path / "lps.nii.gz"
    assert _run(capsys, "segment", image, "--model", checkpoint, _point(CENTRE_INDEX),
                "--out", ras_out, "--device", "cpu")[0] == 0
    assert _run(capsys, "segment", image, "--model", checkpoint,
                _point(CENTRE_INDEX, lps=True), "--lps", "--out", lps_out,
                "--device", "cpu")[0] == 0
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(ras_out))),
                                  sitk.GetArrayFromImage(sitk.ReadImage(str(lps_out))))
    # The same numbers read as RAS point outside the image (R and A change sign).
    outside = tmp_path / "outside"
    outside.mkdir()
    result = _run(capsys, "segment", image, "--model", checkpoint,
                  _point(CENTRE_INDEX, lps=True), "--out", outside / "m.nii.gz")
    _assert_usage_error(result, "is outside the image", outside)


# -- segment: errors, found before the model is loaded -----------------------------------------

@pytest.mark.usefixtures("no_model_load")
@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("1,2", "--point '1,2': expected R,A,S"),
        ("1,2,3,+,4", "got 5 comma-separated values"),
        ("a,2,3", "--point 'a,2,3': 'a' is not a number"),
        ("1,2,nan", "'nan' is not a finite number"),
        ("1,2,3,pos", "the sign must be '+' (positive) or '-' (negative), got 'pos'"),
        ("", "expected R,A,S"),
    ],
)
def test_malformed_point(capsys, tmp_path, image, checkpoint, value, fragment) -> None:
    result = _run(capsys, "segment", image, "--model", checkpoint, f"--point={value}",
                  "--out", tmp_path / "m.nii.gz")
    _assert_usage_error(result, fragment, tmp_path)


@pytest.mark.usefixtures("no_model_load")
def test_point_outside_image(capsys, tmp_path, image, checkpoint) -> None:
    result = _run(capsys, "segment", image, "--model", checkpoint, _point((30, 34, 41)),
                  "--out", tmp_path / "m.nii.gz")
    _assert_usage_error(result, "is outside the image", tmp_path)
    assert "which spans RAS mm R " in result[2]


@pytest.mark.usefixtures("no_model_load")
def test_missing_image(capsys, tmp_path, checkpoint) -> None:
    result = _run(capsys, "segment", tmp_path / "absent.nii.gz", "--model", checkpoint,
                  "--point=1,2,3", "--out", tmp_path / "m.nii.gz")
    _assert_usage_error(result, "absent.nii.gz: no such file or folder", tmp_path)


@pytest.mark.usefixtures("no_model_load")
def test_two_dimensional_image(capsys, tmp_path, checkpoint) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    flat = folder / "flat.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((20, 30), np.float32)), str(flat))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = _run(capsys, "segment", flat, "--model", checkpoint, "--point=1,2,3",
                  "--out", out_dir / "m.nii.gz")
    _assert_usage_error(result, "is 2-D", out_dir)


@pytest.mark.usefixtures("no_model_load")
@pytest.mark.parametrize(
    ("out_name", "fragment"),
    [
        ("missing/m.nii.gz", "missing does not exist"),
        ("m.png", "unsupported file type"),
        ("m", "unsupported file type"),
    ],
)
def test_unwritable_output(capsys, tmp_path, image, checkpoint, out_name, fragment) -> None:
    result = _run(capsys, "segment", image, "--model", checkpoint, _point(CENTRE_INDEX),
                  "--out", tmp_path / out_name)
    _assert_usage_error(result, fragment, tmp_path)


@pytest.mark.usefixtures("no_model_load")
def test_output_is_a_folder(capsys, tmp_path, image, checkpoint) -> None:
    folder = tmp_path / "looks_like.nii.gz"
    folder.mkdir()
    code, _, err = _run(capsys, "segment", image, "--model", checkpoint, _point(CENTRE_INDEX),
                        "--out", folder)
    assert code == 2 and "is a folder" in err
    assert list(folder.iterdir()) == []


@pytest.mark.usefixtures("no_model_load")
def test_missing_checkpoint_and_bad_device(capsys, tmp_path, image, checkpoint) -> None:
    result = _run(capsys, "segment", image, "--model", tmp_path / "none.pth",
                  _point(CENTRE_INDEX), "--out", tmp_path / "m.nii.gz")
    _assert_usage_error(result, "none.pth: checkpoint file not found", tmp_path)
    result = _run(capsys, "segment", image, "--model", checkpoint, _point(CENTRE_INDEX),
                  "--out", tmp_path / "m.nii.gz", "--device", "tpu")
    _assert_usage_error(result, "--device: device 'tpu'", tmp_path)


# -- segment: errors found while loading the model or setting the volume ------------------------

def test_checkpoint_of_another_architecture(capsys, tmp_path, image, checkpoint) -> None:
    # Official SAM-Med3D layout, no stored config: read as the ViT-B architecture (sgp_sam, as
    # the file has SGPM weights), which the tiny weights do not fit.
    torch.manual_seed(0)
    foreign = tmp_path / "foreign.pth"
    torch.save({"model_state_dict": build_model("tiny").state_dict()}, foreign)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = _run(capsys, "segment", image, "--model", foreign, _point(CENTRE_INDEX),
                  "--out", out_dir / "m.nii.gz")
    _assert_usage_error(result, "checkpoint does not match the 'sgp_sam' architecture", out_dir)
    assert "mis-shaped keys" in result[2]


@pytest.mark.parametrize(
    ("kind", "fragment"),
    [("constant", "constant"), ("zeros", "constant"), ("nan", "NaN"), ("one_slice", "slice")],
)
def test_unusable_volume(capsys, tmp_path, checkpoint, kind, fragment) -> None:
    shape = (1, 64, 64) if kind == "one_slice" else SIZE[::-1]
    array = np.full(shape, 0.0 if kind == "zeros" else 7.0, dtype=np.float32)
    if kind == "nan":
        array = np.random.default_rng(1).random(shape).astype(np.float32)
        array[3, 4, 5] = np.nan
    folder = tmp_path / "in"
    folder.mkdir()
    path = _write_image(array, folder / f"{kind}.nrrd")  # ITK's NIfTI reader drops NaN
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = _run(capsys, "segment", path, "--model", checkpoint,
                  _point((30, 34, 0)), "--out", out_dir / "m.nii.gz")
    _assert_usage_error(result, fragment, out_dir)


def test_verbose_error_shows_traceback(capsys, tmp_path, checkpoint) -> None:
    code, _, err = _run(capsys, "segment", tmp_path / "absent.nii.gz", "--model", checkpoint,
                        "--point=1,2,3", "--out", tmp_path / "m.nii.gz", "--verbose")
    assert code == 2
    assert "Traceback" in err and "VolumeIOError" in err
    assert err.strip().splitlines()[-1].startswith("sgpsam: error: ")


def test_bare_negative_point_gets_a_hint(capsys, tmp_path, image, checkpoint) -> None:
    code, out, err = _run(capsys, "segment", image, "--model", checkpoint, "--point",
                          "-58.1,22.7,-6.9", "--out", tmp_path / "m.nii.gz")
    assert code == 2 and out == ""
    assert "--point=-58.1,22.7,-6.9,+" in err
    assert list(tmp_path.iterdir()) == []


# -- parse_point, help, info ---------------------------------------------------------------------

@pytest.mark.parametrize(
    ("text", "xyz", "positive"),
    [
        ("-58.1,22.7,-6.9", (-58.1, 22.7, -6.9), True),
        ("-58.1,22.7,-6.9,+", (-58.1, 22.7, -6.9), True),
        (" 1e1 , 0 ,-0.5 , - ", (10.0, 0.0, -0.5), False),
    ],
)
def test_parse_point(text: str, xyz: tuple, positive: bool) -> None:
    point = parse_point(text)
    assert point.xyz == xyz and point.positive is positive and point.text == text


def test_parse_point_rejects_infinity() -> None:
    with pytest.raises(PromptError, match="'inf' is not a finite number"):
        parse_point("inf,0,0")


def test_help_documents_the_equals_form(capsys) -> None:
    code, out, _ = _run(capsys, "segment", "--help")
    assert code == 0
    assert "--point=-58.1,22.7,-6.9,+" in " ".join(out.split())
    assert "--lps" in out and "--prompt-mode" in out


def test_info(capsys, checkpoint) -> None:
    code, out, err = _run(capsys, "info", checkpoint)
    assert code == 0, err
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert f"sha256:      {digest}" in out
    assert "preset:      tiny (config stored in checkpoint)" in out
    assert "SGPM:        blocks 1, 3" in out
    assert "trained_on: nothing (test)" in out

    code, out, err = _run(capsys, "info", checkpoint, "--json")
    assert code == 0, err
    record = json.loads(out)
    torch.manual_seed(0)
    expected = sum(t.numel() for t in build_model("tiny").state_dict().values())
    assert record["num_parameters"] == expected
    assert record["sha256"] == digest and record["file_bytes"] == checkpoint.stat().st_size
    assert record["sgpm_blocks"] == [1, 3] and record["config"]["preset"] == "tiny"
    assert record["metadata"]["trained_on"] == "nothing (test)"


def test_info_missing_file(capsys, tmp_path) -> None:
    code, out, err = _run(capsys, "info", tmp_path / "none.pth")
    assert code == 2 and out == ""
    assert err.startswith("sgpsam: error: CKPT ") and "checkpoint file not found" in err


def test_model_names_resolve_through_the_registry(capsys, tmp_path, monkeypatch) -> None:
    """`--model demo` / `info demo` use the bundled file, wherever SGPSAM_DEMO_MODEL points."""
    checkpoint = tmp_path / "demo.pt"
    torch.manual_seed(0)
    save_checkpoint(build_model("tiny"), checkpoint)
    monkeypatch.setenv("SGPSAM_DEMO_MODEL", str(checkpoint))
    code, out, err = _run(capsys, "info", "demo", "--json")
    assert code == 0, err
    assert json.loads(out)["path"] == str(checkpoint)


def test_python_dash_m_help() -> None:
    root = Path(SGPSAMLib.__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(root), *filter(None, [os.environ.get("PYTHONPATH")])]))
    result = subprocess.run([sys.executable, "-m", "SGPSAMLib", "--help"], capture_output=True,
                            text=True, env=env, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: sgpsam ")
    assert "segment" in result.stdout and "info" in result.stdout


def test_all_components_reaches_the_session(capsys, tmp_path, image, checkpoint,
                                            monkeypatch) -> None:
    """``--all-components`` is the session's ``keep_clicked=False``, ``--no-zoom`` its
    ``zoom=False``; the default keeps only the clicked components and zooms by the model's
    policy (SGPSAMLib.clicked_components, SGPSAMLib.zoom)."""
    from SGPSAMLib.session import InteractiveSession

    seen: list[tuple[bool, bool]] = []
    original = InteractiveSession.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        seen.append((self.keep_clicked, kwargs.get("zoom")))

    monkeypatch.setattr(InteractiveSession, "__init__", spy)
    for extra in ([], ["--all-components"], ["--no-zoom"]):
        code, _, stderr = _run(capsys, "segment", image, "--model", checkpoint,
                               _point(CENTRE_INDEX), "--out", tmp_path / "m.nii.gz",
                               "--device", "cpu", *extra)
        assert code == 0, stderr
    assert seen == [(True, True), (False, True), (True, False)]
