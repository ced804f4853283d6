"""training/data.py, sampling.py, clicks.py: discovery, lesions, split, crops, streams, clicks."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from SGPSAMLib.errors import SGPSAMError, VolumeError, VolumeIOError
from SGPSAMLib.geometry import Volume
from SGPSAMLib.io import write_labelmap, write_volume
from SGPSAMLib.training.clicks import error_clicks, random_voxel
from SGPSAMLib.training.data import find_cases, load_case, split_cases
from SGPSAMLib.training.sampling import SampleStream, sample_crop, sample_seed

SHAPE = (24, 28, 32)  # (K, J, I)


def _volume(spacing=(1.5, 1.5, 1.5), origin=(-20.0, 10.0, 5.0), shape=SHAPE) -> Volume:
    matrix = np.diag([*spacing, 1.0])
    matrix[:3, 3] = origin
    return Volume(np.zeros(shape, dtype=np.int16), matrix, "v")


def _sphere(shape, centre_kji, radius) -> np.ndarray:
    k, j, i = np.indices(shape)
    c = np.asarray(centre_kji)
    return ((k - c[0]) ** 2 + (j - c[1]) ** 2 + (i - c[2]) ** 2) <= radius ** 2


def _write_pair(image_path: Path, label_path: Path, label: np.ndarray,
                volume: Volume | None = None) -> None:
    volume = volume or _volume(shape=label.shape)
    image = np.where(label > 0, 300, -50).astype(np.int16) + np.int16(-1000) * 0
    image[0] = -1000  # a CT-like minimum
    write_volume(volume.with_array(image), image_path)
    write_labelmap(label.astype(np.uint8), volume, label_path)


def _two_lesions() -> np.ndarray:
    label = np.zeros(SHAPE, dtype=np.uint8)
    label[_sphere(SHAPE, (8, 8, 8), 3)] = 1
    label[_sphere(SHAPE, (16, 18, 22), 4)] = 1
    label[_sphere(SHAPE, (6, 20, 24), 2)] = 2
    return label


# ---------------------------------------------------------------------------------------------
# Discovery.

def test_find_cases_msd_with_dataset_json(tmp_path):
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    for name in ("b", "a"):
        _write_pair(tmp_path / "imagesTr" / f"{name}.nii.gz",
                    tmp_path / "labelsTr" / f"{name}.nii.gz", _two_lesions())
    (tmp_path / "dataset.json").write_text(json.dumps({"training": [
        {"image": "./imagesTr/b.nii.gz", "label": "./labelsTr/b.nii.gz"},
        {"image": "./imagesTr/a.nii.gz", "label": "./labelsTr/a.nii.gz"}]}))
    cases = find_cases(tmp_path)
    assert [c.case_id for c in cases] == ["a", "b"]
    assert cases[0].image == (tmp_path / "imagesTr" / "a.nii.gz").resolve()
    assert cases[0].label == (tmp_path / "labelsTr" / "a.nii.gz").resolve()


def test_find_cases_msd_by_name_with_channel_suffix(tmp_path):
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    _write_pair(tmp_path / "imagesTr" / "liver_3_0000.nii.gz",
                tmp_path / "labelsTr" / "liver_3.nii.gz", _two_lesions())
    _write_pair(tmp_path / "imagesTr" / "liver_9_0000.nii.gz",
                tmp_path / "labelsTr" / "other.nii.gz", _two_lesions())  # no label: skipped
    cases = find_cases(tmp_path)
    assert [(c.case_id, c.image.name, c.label.name) for c in cases] == [
        ("liver_3", "liver_3_0000.nii.gz", "liver_3.nii.gz")]


def test_find_cases_images_labels_folders(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    _write_pair(tmp_path / "images" / "p1.nrrd", tmp_path / "labels" / "p1.nrrd", _two_lesions())
    cases = find_cases(tmp_path)
    assert [(c.case_id, c.image.parent.name, c.label.parent.name) for c in cases] == [
        ("p1", "images", "labels")]


def test_find_cases_matching_names(tmp_path):
    label = _two_lesions()
    _write_pair(tmp_path / "x.nii.gz", tmp_path / "x_label.nii.gz", label)
    _write_pair(tmp_path / "y.nrrd", tmp_path / "y-seg.nrrd", label)
    _write_pair(tmp_path / "z.mha", tmp_path / "z_Segmentation.mha", label)
    write_volume(_volume(), tmp_path / "lonely.nii.gz")  # image without label: ignored
    cases = find_cases(tmp_path)
    assert [(c.case_id, c.image.name, c.label.name) for c in cases] == [
        ("x", "x.nii.gz", "x_label.nii.gz"), ("y", "y.nrrd", "y-seg.nrrd"),
        ("z", "z.mha", "z_Segmentation.mha")]


def test_find_cases_errors(tmp_path):
    with pytest.raises(VolumeIOError, match="not found"):
        find_cases(tmp_path / "missing")
    with pytest.raises(VolumeIOError, match="no image/label pairs"):
        find_cases(tmp_path)
    label = _two_lesions()
    _write_pair(tmp_path / "x.nii.gz", tmp_path / "x_label.nii.gz", label)
    write_labelmap(label, _volume(), tmp_path / "x_mask.nii.gz")
    with pytest.raises(VolumeIOError, match="several label files"):
        find_cases(tmp_path)


# ---------------------------------------------------------------------------------------------
# Loading and lesions.

def test_load_case_components_labels_and_units(tmp_path):
    _write_pair(tmp_path / "c.nii.gz", tmp_path / "c_label.nii.gz", _two_lesions())
    (files,) = find_cases(tmp_path)
    case = load_case(files)
    assert case.modality == "CT"
    assert [(les.index, les.label_value) for les in case.lesions] == [(1, 1), (2, 1), (3, 2)]
    expected = [int(_sphere(SHAPE, c, r).sum()) for c, r in
                (((8, 8, 8), 3), ((16, 18, 22), 4), ((6, 20, 24), 2))]
    assert sorted(les.voxels for les in case.lesions[:2]) == sorted(expected[:2])
    assert case.lesions[2].voxels == expected[2]
    lesion_map = case.lesion_volume.array
    for les in case.lesions:
        assert np.array_equal(np.flatnonzero(lesion_map == les.index), les.flat_indices)
    by_label = load_case(files, lesion_unit="label")
    assert [(les.label_value, les.voxels) for les in by_label.lesions] == [
        (1, expected[0] + expected[1]), (2, expected[2])]
    only_two = load_case(files, labels=[2])
    assert [les.label_value for les in only_two.lesions] == [2]
    big_only = load_case(files, min_lesion_voxels=expected[2] + 1)
    assert [les.label_value for les in big_only.lesions] == [1, 1]


def test_load_case_grid_mismatch_and_float_labels(tmp_path):
    label = _two_lesions()
    volume = _volume()
    write_volume(volume.with_array(label.astype(np.int16)), tmp_path / "a.nii.gz")
    shifted = _volume(origin=(-20.0, 10.0, 8.0))
    write_labelmap(label, shifted, tmp_path / "a_label.nii.gz")
    (files,) = find_cases(tmp_path)
    with pytest.raises(VolumeIOError, match="not on the voxel grid"):
        load_case(files)
    write_volume(volume.with_array(label * 0.5), tmp_path / "a_label.nii.gz")
    with pytest.raises(VolumeError, match="non-integer"):
        load_case(files)
    with pytest.raises(VolumeError, match="lesion_unit"):
        load_case(files, lesion_unit="blob")


def test_split_cases_seeded_and_explicit():
    ids = [f"c{i}" for i in range(10)]
    train, val = split_cases(ids, 0.2, seed=3)
    assert len(val) == 2 and sorted(train + val) == sorted(ids)
    assert split_cases(ids, 0.2, seed=3) == (train, val)
    assert split_cases(["a", "b"], 0.01, seed=0)[1] != []  # at least one validation case
    assert split_cases(["a"], 0.5, seed=0) == (["a"], [])
    assert split_cases(ids, 0.2, val_cases=["c5"]) == ([i for i in ids if i != "c5"], ["c5"])
    with pytest.raises(SGPSAMError, match="unknown case ids"):
        split_cases(ids, val_cases=["nope"])
    with pytest.raises(SGPSAMError, match="no training case"):
        split_cases(["a"], val_cases=["a"])


# ---------------------------------------------------------------------------------------------
# Crops.

@pytest.fixture(scope="module")
def sphere_case(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sphere")
    _write_pair(folder / "s.nii.gz", folder / "s_label.nii.gz", _two_lesions())
    return load_case(find_cases(folder)[0])


def test_crop_centred_on_lesion_voxel(sphere_case):
    for seed in range(4):
        sample = sample_crop(sphere_case, 2, seed, size=32, jitter_voxels=0.0, flip=False,
                             augment=False)
        centre = (32 - 1) / 2.0
        # Same 1.5 mm spacing as the crop: the lesion voxel sits exactly on the crop centre.
        assert np.abs(sample.point - centre).max() <= 0.5
        assert sample.label[tuple(sample.point.astype(int))] == 1
        # The crop label is lesion 2 only, resampled with nearest neighbour: same voxel count.
        assert int(sample.label.sum()) == sphere_case.lesions[1].voxels
        assert sample.flips == ()


def test_crop_jitter_bounds_and_flips(sphere_case):
    size, jitter = 32, 3.0
    for seed in range(6):
        plain = sample_crop(sphere_case, 2, seed, size=size, jitter_voxels=jitter, flip=False,
                            augment=False)
        flipped = sample_crop(sphere_case, 2, seed, size=size, jitter_voxels=jitter, flip=True,
                              augment=False)
        assert np.abs(plain.point - (size - 1) / 2.0).max() <= jitter + 0.5
        assert plain.label[tuple(plain.point.astype(int))] == 1
        assert flipped.region == plain.region
        axes = flipped.flips
        assert np.array_equal(flipped.label, np.flip(plain.label, axes))
        assert np.array_equal(flipped.image, np.flip(plain.image, axes))
        expected = plain.point.copy()
        for axis in axes:
            expected[axis] = size - 1 - expected[axis]
        assert np.array_equal(flipped.point, expected)
        assert flipped.label[tuple(flipped.point.astype(int))] == 1
    assert {len(sample_crop(sphere_case, 1, s, size=16, augment=False).flips)
            for s in range(12)} != {0}


def test_crop_augmentation_seeded_and_light(sphere_case):
    a = sample_crop(sphere_case, 1, 5, size=32, augment=True)
    b = sample_crop(sphere_case, 1, 5, size=32, augment=True)
    plain = sample_crop(sphere_case, 1, 5, size=32, augment=False)
    assert np.array_equal(a.image, b.image)
    assert np.array_equal(a.label, plain.label)
    assert np.abs(a.image - plain.image).mean() < 0.5
    # The lesion stays the bright structure.
    assert a.image[a.label == 1].mean() > a.image[a.label == 0].mean() + 0.5


def test_sample_stream_sharding_and_restart():
    n, world = 7, 2
    streams = [SampleStream(n, seed=1, world=world, rank=r) for r in range(world)]
    assert streams[0].per_rank == 4
    for epoch in range(2):
        items = [s.key(epoch * 4 + p)[0] for s in streams for p in range(4)]
        assert set(items) == set(range(n)) and len(items) == 8  # padded with one repeat
    seeds = {s.key(p)[1] for s in streams for p in range(8)}
    assert len(seeds) == 16  # every global position has its own sample seed
    single = SampleStream(n, seed=1)
    assert sorted(single.key(p)[0] for p in range(7)) == list(range(n))
    full = list(SampleStream(n, seed=1, start=0, count=10))
    assert list(SampleStream(n, seed=1, start=4, count=6)) == full[4:]
    assert sample_seed(1, 2) == sample_seed(1, 2) != sample_seed(1, 3)


# ---------------------------------------------------------------------------------------------
# Clicks.

def test_first_click_and_error_clicks():
    size = 16
    truth = torch.zeros((2, 1, size, size, size), dtype=torch.bool)
    truth[0, 0, 4:8, 4:8, 4:8] = True
    truth[1, 0, 2:6, 2:6, 2:6] = True
    predicted = torch.zeros_like(truth)
    predicted[1, 0, 2:6, 2:6, 2:6] = True  # sample 1: lesion found ...
    predicted[1, 0, 10:12, 10:12, 10:12] = True  # ... plus a false positive blob
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        points, labels = error_clicks(truth, predicted, generator)
        p0, p1 = points[0, 0].long(), points[1, 0].long()
        assert labels[0, 0] == 1 and bool(truth[0, 0][tuple(p0)])  # FN -> positive
        assert labels[1, 0] == 0 and bool(predicted[1, 0][tuple(p1)])  # FP -> negative
        assert not bool(truth[1, 0][tuple(p1)])
    # No error left: a random lesion voxel, positive.
    points, labels = error_clicks(truth, truth, generator)
    assert labels.tolist() == [[1], [1]]
    assert bool(truth[0, 0][tuple(points[0, 0].long())])
    # Uniform over the region: every voxel of a 2-voxel region is drawn.
    mask = torch.zeros((4, 4, 4), dtype=torch.bool)
    mask[1, 2, 3] = mask[3, 0, 0] = True
    drawn = {tuple(random_voxel(mask, generator).tolist()) for _ in range(40)}
    assert drawn == {(1, 2, 3), (3, 0, 0)}
    assert random_voxel(torch.zeros((2, 2, 2), dtype=torch.bool), generator) is None


def test_close_fraction_samples_crops_at_half_the_spacing(sphere_case):
    """``close_fraction``: that share of crops is sampled at half the crop spacing (the zoom's
    close look: the lesion covers 8x the crop voxels), the rest as before, bit for bit."""
    from SGPSAMLib.training.sampling import CropDataset

    def dataset(fraction: float) -> CropDataset:
        return CropDataset([sphere_case], size=32, spacing_mm=1.5, jitter_voxels=0.0,
                           flip=False, augment=False, close_fraction=fraction)

    lesion = 1  # item 1 is lesion 2 of the case (the one of the crop tests above)
    voxels = sphere_case.lesions[1].voxels
    plain, never, always, half = dataset(0.0), dataset(0.0), dataset(1.0), dataset(0.5)
    close_counts = []
    for seed in range(40):
        a = plain[(lesion, seed)]
        assert torch.equal(a["image"], never[(lesion, seed)]["image"])
        assert int(a["label"].sum()) == voxels  # 1.5 mm crop of a 1.5 mm image
        close = int(always[(lesion, seed)]["label"].sum())
        assert 7 * voxels <= close <= 9 * voxels  # 0.75 mm: 8x the voxels
        close_counts.append(int(half[(lesion, seed)]["label"].sum()) > 2 * voxels)
    assert 10 <= sum(close_counts) <= 30  # about half, fixed by the seeds
    assert close_counts == [int(half[(lesion, s)]["label"].sum()) > 2 * voxels
                            for s in range(40)]
