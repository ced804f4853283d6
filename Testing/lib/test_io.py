"""io.py: every shared sample case reads with the manifest's geometry and label counts, labelmaps
round-trip exactly through .nii.gz/.nrrd/.mha, a synthetic oblique DICOM series reads correctly,
and bad inputs/outputs raise the right errors without leaving temporary files behind."""
from __future__ import annotations

import gzip
import json
import math
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import SGPSAMLib.io as sio
from SGPSAMLib.errors import VolumeError, VolumeIOError
from SGPSAMLib.geometry import Volume, lps_geometry, lps_to_ras
from SGPSAMLib.io import atomic_write, read_volume, write_labelmap, write_volume

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
MANIFEST = SHARED / "manifest.json"
CASES = json.loads(MANIFEST.read_text())["cases"] if MANIFEST.is_file() else []
needs_data = pytest.mark.skipif(
    not CASES, reason=f"shared sample data not found at {SHARED} (manifest.json missing)"
)
LPS_FLIP = np.diag([-1.0, -1.0, 1.0])
MANIFEST_TOL = 1e-3  # the manifest rounds origins to 0.1 micrometre and spacings to 1e-6 mm


@pytest.fixture(scope="module", params=CASES, ids=[c["id"] for c in CASES])
def case(request):
    """(manifest entry, image Volume, label Volume); module scope so each case is read once."""
    entry = request.param
    return entry, read_volume(SHARED / entry["image"]), read_volume(SHARED / entry["label"])


def _expected_matrix(entry: dict) -> np.ndarray:
    """IJK->RAS written out from the manifest's ITK (LPS) geometry, independent of geometry.py."""
    d_lps = np.array(entry["direction"], dtype=float).reshape(3, 3)
    m = np.eye(4)
    m[:3, :3] = LPS_FLIP @ d_lps @ np.diag(entry["spacing_mm"])
    m[:3, 3] = LPS_FLIP @ np.array(entry["origin_mm"], dtype=float)
    return m


def _as_labels(array: np.ndarray) -> np.ndarray:
    """Integer view of a label array; float label files (OTMultiClass) are cast, others kept."""
    return array.astype(np.int32) if array.dtype.kind == "f" else array


def _centroid_kji(mask: np.ndarray) -> tuple:
    return tuple(int(v) for v in np.round(np.argwhere(mask > 0).mean(axis=0)))


@needs_data
def test_geometry_matches_manifest(case) -> None:
    entry, image, label = case
    for vol, rel in ((image, entry["image"]), (label, entry["label"])):
        assert vol.array.ndim == 3
        assert vol.shape_ijk == tuple(entry["size_xyz"]), rel
        spacing, origin, direction = lps_geometry(vol.ijk_to_ras)
        np.testing.assert_allclose(spacing, entry["spacing_mm"], atol=MANIFEST_TOL, err_msg=rel)
        np.testing.assert_allclose(origin, entry["origin_mm"], atol=MANIFEST_TOL, err_msg=rel)
        np.testing.assert_allclose(direction, entry["direction"], atol=1e-6, err_msg=rel)
        np.testing.assert_allclose(
            vol.ijk_to_ras, _expected_matrix(entry), atol=MANIFEST_TOL, err_msg=rel
        )
        np.testing.assert_allclose(vol.origin_ras, lps_to_ras(entry["origin_mm"]), atol=1e-3)
    assert image.name == Path(entry["image"]).name.split(".")[0]
    assert str(image.array.dtype) == entry["image_dtype"]
    assert str(label.array.dtype) == entry["label_dtype"]


@needs_data
def test_label_voxel_counts(case) -> None:
    entry, _, label = case
    labels = _as_labels(label.array)
    # One comparison per documented value (cheaper than np.unique on 12 M voxels); the total
    # proves there are no other values.
    counts = {v: int(np.count_nonzero(labels == int(v))) for v in entry["label_voxel_counts"]}
    assert counts == entry["label_voxel_counts"]
    assert sum(counts.values()) == labels.size
    target = entry["targets"][entry["default_target"]]
    assert sum(counts[str(v)] for v in target) == entry["target_voxels"]


@needs_data
def test_physical_points_match_simpleitk(case) -> None:
    """RAS of voxels from our matrix == LPS from ITK's own index->point mapping, flipped."""
    entry, image, _ = case
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(SHARED / entry["image"]))
    reader.ReadImageInformation()
    probe = sitk.Image(2, 2, 2, sitk.sitkUInt8)
    probe.SetSpacing(reader.GetSpacing())
    probe.SetOrigin(reader.GetOrigin())
    probe.SetDirection(reader.GetDirection())
    ni, nj, nk = image.shape_ijk
    for ijk in [(0, 0, 0), (ni - 1, nj - 1, nk - 1), (ni / 3, nj / 2, nk / 4)]:
        lps = probe.TransformContinuousIndexToPhysicalPoint([float(v) for v in ijk])
        np.testing.assert_allclose(image.ijk_to_ras_points(ijk), lps_to_ras(lps), atol=1e-6)


def _nifti_header_matrix(path: Path) -> np.ndarray:
    """IJK->RAS straight from a NIfTI-1 header: sform rows if sform_code > 0, else the qform
    quaternion (NIfTI world space is RAS by definition, no LPS involved)."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as fh:
        header = fh.read(348)
    pixdim = struct.unpack("<8f", header[76:108])
    qform_code, sform_code = struct.unpack("<hh", header[252:256])
    m = np.eye(4)
    if sform_code > 0:
        m[:3, :] = np.array(struct.unpack("<12f", header[280:328])).reshape(3, 4)
        return m
    assert qform_code > 0, f"{path} has neither sform nor qform"
    b, c, d, qx, qy, qz = struct.unpack("<6f", header[256:280])
    a = math.sqrt(max(0.0, 1.0 - (b * b + c * c + d * d)))
    rotation = np.array([
        [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
        [2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)],
        [2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - c * c - b * b],
    ])
    qfac = -1.0 if pixdim[0] < 0 else 1.0
    m[:3, :3] = rotation @ np.diag([pixdim[1], pixdim[2], qfac * pixdim[3]])
    m[:3, 3] = (qx, qy, qz)
    return m


def _nrrd_ras_matrix(path: Path) -> np.ndarray:
    """IJK->RAS from a NRRD text header ('space directions' are the i, j, k columns)."""
    with open(path, "rb") as fh:
        text = fh.read(4096).split(b"\n\n")[0].decode("latin-1")
    fields = dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)
    vectors = [
        [float(v) for v in vec.split(",")]
        for vec in re.findall(r"\(([^)]*)\)", fields["space directions"])
    ]
    origin = [float(v) for v in re.findall(r"\(([^)]*)\)", fields["space origin"])[0].split(",")]
    m = np.eye(4)
    m[:3, :3] = np.array(vectors).T
    m[:3, 3] = origin
    if fields["space"] in ("left-posterior-superior", "LPS"):
        m[:3, :] = LPS_FLIP @ m[:3, :]
    else:
        assert fields["space"] in ("right-anterior-superior", "RAS")
    return m


@needs_data
def test_matrix_matches_raw_file_header(case) -> None:
    """Cross-check against the file's own header, bypassing SimpleITK's LPS convention."""
    entry, _, label = case
    path = SHARED / entry["label"]
    if path.name.endswith(".nrrd"):
        expected = _nrrd_ras_matrix(path)
    else:
        expected = _nifti_header_matrix(path)
    np.testing.assert_allclose(label.ijk_to_ras, expected, atol=1e-4)


@needs_data
@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_labelmap_round_trip(case, suffix: str, tmp_path: Path) -> None:
    entry, image, label = case
    mask = _as_labels(label.array)
    out = write_labelmap(mask, image, tmp_path / f"lesion{suffix}")
    assert out == tmp_path / f"lesion{suffix}"
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"lesion{suffix}"]  # no temp left
    back = read_volume(out)
    assert back.name == "lesion"
    assert back.array.dtype == np.uint8  # all sample labels are < 256
    assert np.array_equal(back.array, mask)  # (numpy.testing's version is slow on 12 M voxels)
    np.testing.assert_allclose(back.ijk_to_ras, image.ijk_to_ras, atol=1e-5)
    assert back.shape_ijk == image.shape_ijk
    # The lesion centroid voxel lies at the same RAS point before and after.
    kji = _centroid_kji(mask)
    ijk = kji[::-1]
    np.testing.assert_allclose(
        back.ijk_to_ras_points(ijk), label.ijk_to_ras_points(ijk), atol=1e-5
    )
    ras = label.ijk_to_ras_points(ijk)
    np.testing.assert_allclose(back.ras_to_ijk_points(ras), ijk, atol=1e-6)
    assert back.array[kji] == mask[kji]


# ---------------------------------------------------------------- synthetic volumes

def _oblique_volume(dtype=np.float32) -> Volume:
    c, s = math.cos(math.radians(30.0)), math.sin(math.radians(30.0))
    m = np.eye(4)
    m[:3, :3] = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ np.diag([0.5, 0.8, 6.5])
    m[:3, 3] = (-12.5, 40.25, -7.0)
    array = np.random.default_rng(0).normal(size=(4, 6, 5)).astype(dtype)
    return Volume(array, m, name="oblique")


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_write_volume_round_trip_oblique(suffix: str, tmp_path: Path) -> None:
    vol = _oblique_volume()
    back = read_volume(write_volume(vol, tmp_path / f"img{suffix}"))
    assert back.array.dtype == np.float32
    np.testing.assert_array_equal(back.array, vol.array)
    np.testing.assert_allclose(back.ijk_to_ras, vol.ijk_to_ras, atol=1e-5)
    assert [p.name for p in tmp_path.iterdir()] == [f"img{suffix}"]


def test_write_labelmap_dtypes(tmp_path: Path) -> None:
    ref = _oblique_volume()
    mask = np.zeros(ref.array.shape, dtype=np.int32)
    mask[1, 2, 3] = 300
    assert read_volume(write_labelmap(mask, ref, tmp_path / "a.nrrd")).array.dtype == np.uint16
    boolean = np.zeros(ref.array.shape, dtype=bool)
    boolean[0, 0, 0] = True
    back = read_volume(write_labelmap(boolean, ref, tmp_path / "b.nrrd"))
    assert back.array.dtype == np.uint8 and back.array.sum() == 1 and back.array[0, 0, 0] == 1
    floats = mask.astype(np.float32)  # integral float labels (like OTMultiClass) are accepted
    assert read_volume(write_labelmap(floats, ref, tmp_path / "c.mha")).array.max() == 300


def test_write_labelmap_rejects_bad_masks(tmp_path: Path) -> None:
    ref = _oblique_volume()
    with pytest.raises(VolumeError, match=r"mask shape \(6, 4, 5\).*\(4, 6, 5\)"):
        write_labelmap(np.zeros((6, 4, 5), np.uint8), ref, tmp_path / "x.nii.gz")
    bad = np.zeros(ref.array.shape, dtype=np.int64)
    bad[0, 0, 0] = -1
    with pytest.raises(VolumeError, match=r"0\.\.65535.*-1"):
        write_labelmap(bad, ref, tmp_path / "x.nii.gz")
    bad[0, 0, 0] = 70000
    with pytest.raises(VolumeError, match=r"0\.\.65535"):
        write_labelmap(bad, ref, tmp_path / "x.nii.gz")
    with pytest.raises(VolumeError, match=r"non-integral"):
        write_labelmap(np.full(ref.array.shape, 0.5), ref, tmp_path / "x.nii.gz")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- DICOM

def _write_dicom_series(folder: Path, array: np.ndarray, spacing, origin_lps, direction_lps,
                        uid: str, prefix: str) -> None:
    """One file per slice with the geometry tags a scanner writes (positions in LPS)."""
    folder.mkdir(exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    d = np.asarray(direction_lps, dtype=float).reshape(3, 3)
    orientation = "\\".join(f"{v:.8f}" for v in list(d[:, 0]) + list(d[:, 1]))
    for k in range(array.shape[0]):
        sl = sitk.GetImageFromArray(array[k])
        sl.SetSpacing(spacing[:2])
        position = np.asarray(origin_lps) + d[:, 2] * spacing[2] * k
        tags = {
            "0008|0060": "CT",
            "0020|000e": uid,
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.6f}" for v in position),
            "0020|0037": orientation,
            "0028|0030": f"{spacing[1]:.6f}\\{spacing[0]:.6f}",  # row spacing \ column spacing
            "0008|0018": f"{uid}.{k + 1}",
        }
        for tag, value in tags.items():
            sl.SetMetaData(tag, value)
        # File names run against the slice order: the reader must sort by position.
        writer.SetFileName(str(folder / f"{prefix}{array.shape[0] - k:03d}.dcm"))
        writer.Execute(sl)


def test_read_dicom_series_oblique(tmp_path: Path) -> None:
    c, s = math.cos(math.radians(30.0)), math.sin(math.radians(30.0))
    direction = np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])  # columns i, j, k in LPS
    spacing = (0.7, 0.9, 2.5)
    origin = (-12.5, 30.25, -40.0)
    array = np.random.default_rng(3).integers(-1000, 2000, size=(5, 7, 9)).astype(np.int16)
    folder = tmp_path / "series"
    _write_dicom_series(folder, array, spacing, origin, direction, "1.2.826.0.1.3680043.2.1125.7.1",
                        "a")
    # A second, smaller series in the same folder must not be chosen.
    _write_dicom_series(folder, array[:2] + 1, spacing, origin, direction,
                        "1.2.826.0.1.3680043.2.1125.7.2", "b")
    vol = read_volume(folder)
    assert vol.name == "series"
    assert vol.shape_ijk == (9, 7, 5)
    np.testing.assert_array_equal(vol.array, array)
    expected = np.eye(4)
    expected[:3, :3] = LPS_FLIP @ direction @ np.diag(spacing)
    expected[:3, 3] = LPS_FLIP @ np.array(origin)
    np.testing.assert_allclose(vol.ijk_to_ras, expected, atol=1e-5)


def test_read_folder_without_dicom(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(VolumeIOError, match=r"holds no DICOM series.*NIfTI"):
        read_volume(tmp_path)


# ---------------------------------------------------------------- read errors

def test_read_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nothing.nii.gz"
    with pytest.raises(VolumeIOError, match=r"nothing\.nii\.gz: no such file.*NIfTI.*NRRD.*DICOM"):
        read_volume(missing)


def test_read_text_file_named_nifti(tmp_path: Path) -> None:
    fake = tmp_path / "fake.nii.gz"
    fake.write_text("this is not an image\n")
    with pytest.raises(VolumeIOError, match=r"cannot read .*fake\.nii\.gz as an image.*NIfTI"):
        read_volume(fake)


@pytest.mark.parametrize("suffix", [".png", ".nrrd"])
def test_read_2d_image(suffix: str, tmp_path: Path) -> None:
    path = tmp_path / f"flat{suffix}"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((8, 9), np.uint8)), str(path))
    with pytest.raises(VolumeError, match=r"flat.* is 2-D \(size \(9, 8\)\); expected a 3-D"):
        read_volume(path)


def test_read_vector_image(tmp_path: Path) -> None:
    path = tmp_path / "rgb.mha"
    vec = sitk.GetImageFromArray(np.zeros((3, 4, 5, 3), np.uint8), isVector=True)
    sitk.WriteImage(vec, str(path))
    with pytest.raises(VolumeError, match=r"rgb\.mha has 3 components per voxel"):
        read_volume(path)


def test_read_single_slice_is_allowed(tmp_path: Path) -> None:
    vol = Volume(np.arange(12, dtype=np.int16).reshape(1, 3, 4), np.diag([0.5, 0.5, 3.0, 1.0]))
    back = read_volume(write_volume(vol, tmp_path / "one.nrrd"))
    assert back.array.shape == (1, 3, 4)
    np.testing.assert_array_equal(back.array, vol.array)


# ---------------------------------------------------------------- write errors / atomicity

def test_write_into_missing_folder(tmp_path: Path) -> None:
    target = tmp_path / "absent" / "x.nii.gz"
    with pytest.raises(VolumeIOError, match=r"x\.nii\.gz.*folder .*absent does not exist"):
        write_volume(_oblique_volume(), target)
    assert list(tmp_path.iterdir()) == []


def test_write_with_file_as_folder(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(VolumeIOError, match=r"afile is a file, not a folder"):
        write_labelmap(np.zeros((4, 6, 5), np.uint8), _oblique_volume(),
                       tmp_path / "afile" / "x.nrrd")
    assert [p.name for p in tmp_path.iterdir()] == ["afile"]


def test_write_onto_folder_and_bad_extension(tmp_path: Path) -> None:
    (tmp_path / "dir.nii.gz").mkdir()
    with pytest.raises(VolumeIOError, match=r"it is a folder"):
        write_volume(_oblique_volume(), tmp_path / "dir.nii.gz")
    for name in ("x.png", "x.mhd", "x"):
        with pytest.raises(VolumeIOError, match=r"unsupported extension.*\.nii\.gz"):
            write_volume(_oblique_volume(), tmp_path / name)
    assert [p.name for p in tmp_path.iterdir()] == ["dir.nii.gz"]


def test_write_into_unwritable_folder(tmp_path: Path, monkeypatch) -> None:
    # Tests may run as root, who can write anywhere: simulate a read-only folder instead.
    monkeypatch.setattr(sio.os, "access", lambda path, mode: False)
    with pytest.raises(VolumeIOError, match=r"x\.mha: folder .* is not writable"):
        write_volume(_oblique_volume(), tmp_path / "x.mha")
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "keep.nii.gz"
    target.write_bytes(b"previous result")

    def broken_write(image, path, useCompression=False):
        Path(path).write_bytes(b"half written")
        raise RuntimeError("ITK ERROR: disk full")

    monkeypatch.setattr(sio.sitk, "WriteImage", broken_write)
    with pytest.raises(VolumeIOError, match=r"cannot write .*keep\.nii\.gz: ITK ERROR: disk full"):
        write_volume(_oblique_volume(), target)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.nii.gz"]
    assert target.read_bytes() == b"previous result"


def test_atomic_write(tmp_path: Path) -> None:
    target = tmp_path / "case.seg.nii.gz"
    target.write_text("old")
    with atomic_write(target) as tmp:
        assert tmp.parent == tmp_path
        assert tmp.name.startswith(".case.seg.tmp") and tmp.name.endswith(".nii.gz")
        assert not tmp.exists()
        tmp.write_text("new")
        assert target.read_text() == "old"  # not replaced before the block ends
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["case.seg.nii.gz"]

    with pytest.raises(KeyError):
        with atomic_write(target) as tmp:
            tmp.write_text("partial")
            raise KeyError("boom")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["case.seg.nii.gz"]
