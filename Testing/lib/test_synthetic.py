"""synthetic.py: determinism, lesion sizes and placement, visible contrast, geometry, MSD files."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from SGPSAMLib.errors import VolumeError
from SGPSAMLib.geometry import array_index_to_ijk
from SGPSAMLib.io import read_volume
from SGPSAMLib.region import resolve_modality
from SGPSAMLib.synthetic import (
    DEFAULT_SHAPE,
    SyntheticCase,
    _dilate,
    equivalent_diameter_mm,
    make_case,
    write_dataset,
)

SEEDS = range(8)


@pytest.fixture(scope="module")
def cases() -> list[SyntheticCase]:
    return [make_case(seed) for seed in SEEDS]


def _voxel_mm3(case: SyntheticCase) -> float:
    return float(np.prod(case.volume.spacing))


def test_same_seed_same_case_other_seed_other_case():
    a, b, c = make_case(5), make_case(5), make_case(6)
    assert np.array_equal(a.volume.array, b.volume.array)
    assert a.volume.array.dtype == b.volume.array.dtype
    assert np.array_equal(a.label, b.label)
    assert np.array_equal(a.volume.ijk_to_ras, b.volume.ijk_to_ras)
    assert a.lesions == b.lesions and a.parameters == b.parameters
    assert not np.array_equal(a.volume.ijk_to_ras, c.volume.ijk_to_ras)


def test_explicit_arguments_are_honoured():
    case = make_case(3, modality="MR", shape=(40, 44, 24), spacing=(0.8, 0.9, 2.0), n_lesions=2,
                     diameter_mm=(4.0, 8.0), oblique=False)
    assert case.modality == "MR"
    assert case.volume.array.shape == (24, 44, 40) and case.label.shape == (24, 44, 40)
    assert np.allclose(case.volume.spacing, (0.8, 0.9, 2.0))
    assert len(case.lesions) == 2
    # Not oblique: every axis is along R, A or S (a signed permutation).
    direction = case.volume.direction_ras
    assert np.allclose(np.sort(np.abs(direction), axis=0), [[0, 0, 0], [0, 0, 0], [1, 1, 1]])


def test_default_grid_and_geometry(cases):
    for case in cases:
        assert case.volume.shape_ijk == DEFAULT_SHAPE
        assert case.label.shape == case.volume.array.shape and case.label.dtype == np.uint8
        d = case.volume.direction_ras
        assert np.allclose(d.T @ d, np.eye(3), atol=1e-9)
        spacing = case.volume.spacing
        assert spacing[0] == pytest.approx(spacing[1])
        assert 0.7 <= spacing[0] <= 1.0 and 1.5 <= spacing[2] <= 5.0
        assert case.modality in ("CT", "MR")
    assert {c.modality for c in cases} == {"CT", "MR"}  # "random" draws both over 8 seeds
    # Oblique by default: a rotation by >= 5 degrees tilts some axis by >= 5 * sqrt(2/3) degrees.
    for case in cases:
        tilt = np.degrees(np.arccos(np.abs(case.volume.direction_ras).max(axis=0).clip(0, 1)))
        assert tilt.max() >= 4.0


def test_intensity_ranges_match_modality(cases):
    for case in cases:
        array = case.volume.array
        if case.modality == "CT":
            assert array.dtype == np.int16 and array.min() < -900 and array.max() < 3072
        else:
            assert array.dtype == np.float32 and array.min() >= 0
        assert resolve_modality(array, "auto") == case.modality


def test_lesion_sizes_are_measured_and_in_range(cases):
    for case in cases:
        voxel = _voxel_mm3(case)
        assert 1 <= len(case.lesions) <= 3
        for lesion in case.lesions:
            voxels = int(np.count_nonzero(case.label == lesion.label))
            assert voxels == lesion.voxels > 0
            measured = equivalent_diameter_mm(voxels, voxel)
            assert lesion.diameter_mm == pytest.approx(measured)
            assert lesion.volume_ml == pytest.approx(voxels * voxel / 1000.0)
            # Exact voxel count for the target (within half a voxel of its volume), or smaller
            # when a large lesion had to shrink to fit, but never below the requested minimum.
            target_volume = math.pi / 6 * lesion.target_diameter_mm ** 3
            assert voxels * voxel <= target_volume + 0.5 * voxel + 1e-6
            assert voxels * voxel >= math.pi / 6 * 3.0 ** 3 - 0.5 * voxel
            assert 3.0 * 0.95 <= measured <= 40.0 * 1.05


def test_small_diameter_range():
    case = make_case(11, n_lesions=3, diameter_mm=(3.0, 6.0))
    voxel = _voxel_mm3(case)
    for lesion in case.lesions:
        half_voxel = equivalent_diameter_mm(1, voxel / 2)
        assert 3.0 - half_voxel <= lesion.diameter_mm <= 6.0 + half_voxel
        assert lesion.volume_ml < 0.12


def test_lesions_inside_separate_and_centred(cases):
    for case in cases:
        label = case.label
        values = sorted(int(v) for v in np.unique(label) if v)
        assert values == [lesion.label for lesion in case.lesions]
        # Off the grid's outer faces.
        for face in (label[0], label[-1], label[:, 0], label[:, -1], label[:, :, 0],
                     label[:, :, -1]):
            assert not face.any()
        # A gap of at least one voxel between lesions.
        for lesion in case.lesions:
            grown = _dilate(label == lesion.label, 1)
            assert set(np.unique(label[grown])) <= {0, lesion.label}
        # centre_ras lies in a voxel of its own lesion.
        for lesion in case.lesions:
            ijk = np.rint(case.volume.ras_to_ijk_points(lesion.centre_ras)).astype(int)
            assert label[tuple(array_index_to_ijk(ijk))] == lesion.label


def test_lesion_contrast_is_visible(cases):
    for case in cases:
        array = case.volume.array.astype(np.float32)
        for lesion in case.lesions:
            mask = case.label == lesion.label
            shell = _dilate(mask, 3) & ~_dilate(mask, 1) & (case.label == 0)
            diff = float(array[mask].mean() - np.median(array[shell]))
            assert np.sign(diff) == np.sign(lesion.contrast)
            assert abs(diff) > 0.3 * abs(lesion.contrast)
            assert abs(diff) > case.noise_sigma


def test_contrast_ranges(cases):
    for case in cases:
        for lesion in case.lesions:
            if case.modality == "CT":
                assert 20 <= abs(lesion.contrast) <= 80
            else:
                organ = case.parameters["levels"]["organ"]
                assert 0.2 * organ <= abs(lesion.contrast) <= 0.6 * organ


@pytest.mark.parametrize("kwargs, match", [
    (dict(seed=-1), "seed"), (dict(seed=1.5), "seed"), (dict(seed=0, modality="PET"), "modality"),
    (dict(seed=0, shape=(4, 4, 4)), "shape"), (dict(seed=0, shape=(32, 32)), "shape"),
    (dict(seed=0, spacing=(1, 0, 1)), "spacing"), (dict(seed=0, n_lesions=0), "n_lesions"),
    (dict(seed=0, diameter_mm=(5, 3)), "diameter_mm"),
])
def test_invalid_arguments(kwargs, match):
    with pytest.raises(VolumeError, match=match):
        make_case(**kwargs)


def test_no_room_is_a_clear_error():
    with pytest.raises(VolumeError, match="larger shape"):
        make_case(0, shape=(16, 16, 8), spacing=(1.0, 1.0, 1.0), diameter_mm=(30, 40))


def test_write_dataset_round_trip(tmp_path):
    kwargs = dict(shape=(40, 36, 20), diameter_mm=(4.0, 10.0))
    written = write_dataset(tmp_path / "set", 2, seed=7, **kwargs)
    assert [p.name for pair in written for p in pair] == ["case_000.nii.gz"] * 2 + [
        "case_001.nii.gz"] * 2
    for index, (image_path, label_path) in enumerate(written):
        assert image_path.parent.name == "imagesTr" and label_path.parent.name == "labelsTr"
        case = make_case(7 + index, **kwargs)
        image, label = read_volume(image_path), read_volume(label_path)
        assert np.array_equal(image.array, case.volume.array)
        assert image.array.dtype == case.volume.array.dtype
        assert np.array_equal(label.array, case.label)
        assert np.allclose(image.ijk_to_ras, case.volume.ijk_to_ras, atol=1e-5)
        assert np.allclose(label.ijk_to_ras, case.volume.ijk_to_ras, atol=1e-5)
    meta = json.loads((tmp_path / "set" / "dataset.json").read_text())
    assert meta["numTraining"] == 2
    assert meta["training"][1] == {"image": "./imagesTr/case_001.nii.gz",
                                   "label": "./labelsTr/case_001.nii.gz"}
    assert meta["labels"]["0"] == "background" and meta["labels"]["1"] == "lesion 1"
    block = meta["sgpsam_synthetic"]
    assert block["seed"] == 7 and block["n_cases"] == 2
    assert block["parameters"] == {"shape": [40, 36, 20], "diameter_mm": [4.0, 10.0]}
    assert block["cases"][1]["seed"] == 8
    assert [les["label"] for les in block["cases"][0]["lesions"]] == [
        les.label for les in make_case(7, **kwargs).lesions]
    assert not list((tmp_path / "set").rglob(".*tmp*"))  # no temporary files left


def test_write_dataset_validates(tmp_path):
    with pytest.raises(VolumeError, match="n_cases"):
        write_dataset(tmp_path, 0, seed=1)


def test_cli_synth(tmp_path, capsys):
    from SGPSAMLib.cli import main

    out = tmp_path / "cli"
    code = main(["synth", "--out", str(out), "--cases", "2", "--seed", "3", "--modality", "CT",
                 "--shape", "40,36,20", "--diameter", "4,8", "--lesions", "2", "--no-oblique",
                 "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    record = json.loads(captured.out)
    assert record["cases"] == 2 and record["lesions"] == 4 and record["small_lesions"] == 4
    case = make_case(4, modality="CT", shape=(40, 36, 20), diameter_mm=(4.0, 8.0), n_lesions=2,
                     oblique=False)
    assert np.array_equal(read_volume(out / "labelsTr" / "case_001.nii.gz").array, case.label)
    assert main(["synth", "--out", str(out), "--cases", "1", "--shape", "40,36"]) == 2
    assert "--shape '40,36'" in capsys.readouterr().err
    assert main(["synth", "--out", str(out), "--cases", "0"]) == 2
