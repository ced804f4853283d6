"""Image files that lie (issue 14, items 1-3): data shorter than the header declares, declared
sizes beyond what the file can hold or a sane limit, NaN/Inf voxels. Every format, one clear
error naming the file, checked before ITK allocates; the command line stays within a bounded
address space (a child process under RLIMIT_AS) and exits 2 with one line."""
from __future__ import annotations

import gzip
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from SGPSAMLib.errors import VolumeError, VolumeIOError
from SGPSAMLib.io import read_volume
from SGPSAMLib.segfile import read_segmentation

MAX_IMAGE_GB_ENV = "SGPSAM_MAX_IMAGE_GB"
ARRAY = (np.arange(12 * 10 * 8, dtype=np.int16).reshape(8, 10, 12) % 700) - 200  # (K, J, I)


def _write(path: Path, array: np.ndarray = ARRAY, compress: bool = True) -> Path:
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path), useCompression=compress)
    return path


def _nifti_header(sizes: tuple[int, ...], datatype: int = 4, bitpix: int = 16) -> bytes:
    header = bytearray(352)
    struct.pack_into("<i", header, 0, 348)
    struct.pack_into("<8h", header, 40, len(sizes), *sizes, *([1] * (7 - len(sizes))))
    struct.pack_into("<hh", header, 70, datatype, bitpix)
    struct.pack_into("<8f", header, 76, 1, 1, 1, 1, 1, 1, 1, 1)
    struct.pack_into("<f", header, 108, 352.0)
    struct.pack_into("<f", header, 112, 1.0)
    header[344:348] = b"n+1\0"
    return bytes(header)


SHORT = ARRAY.tobytes()[: ARRAY.nbytes // 3]
NRRD = "NRRD0004\ntype: short\ndimension: 3\nsizes: 12 10 8\nendian: little\nencoding: {}\n{}\n"
MHA = ("ObjectType = Image\nNDims = 3\nDimSize = 12 10 8\nElementType = MET_SHORT\n"
       "{}ElementDataFile = {}\n")


def _short_files(folder: Path) -> dict[str, Path]:
    """One file per format and encoding whose data is a third of what its header declares."""
    files = {
        "nii": folder / "short.nii", "nii.gz": folder / "short.nii.gz",
        "nrrd raw": folder / "raw.nrrd", "nrrd gzip": folder / "gz.nrrd",
        "nhdr": folder / "detached.nhdr", "mha raw": folder / "raw.mha",
        "mha zlib": folder / "z.mha", "mhd": folder / "detached.mhd",
        "nrrd text": folder / "text.nrrd",
    }
    files["nii"].write_bytes(_nifti_header((12, 10, 8)) + SHORT)
    files["nii.gz"].write_bytes(gzip.compress(_nifti_header((12, 10, 8)) + SHORT))
    files["nrrd raw"].write_bytes(NRRD.format("raw", "").encode() + SHORT)
    files["nrrd gzip"].write_bytes(NRRD.format("gzip", "").encode() + gzip.compress(SHORT))
    (folder / "detached.raw").write_bytes(SHORT)
    files["nhdr"].write_text(NRRD.format("raw", "data file: detached.raw\n"))
    files["mha raw"].write_bytes(MHA.format("", "LOCAL").encode() + SHORT)
    packed = zlib.compress(SHORT)
    files["mha zlib"].write_bytes(MHA.format(f"CompressedData = True\nCompressedDataSize = "
                                             f"{len(packed)}\n", "LOCAL").encode() + packed)
    (folder / "detached2.raw").write_bytes(SHORT)
    files["mhd"].write_text(MHA.format("", "detached2.raw"))
    files["nrrd text"].write_bytes(NRRD.format("text", "").encode() + b"1 2 3 4 5\n")
    return files


def test_truncated_nifti_is_refused(tmp_path: Path) -> None:
    """Item 1: a .nii.gz cut in half, or a .nii missing even its last byte, is not read."""
    for suffix in (".nii", ".nii.gz"):
        whole = _write(tmp_path / f"whole{suffix}").read_bytes()
        for keep in (len(whole) // 2, len(whole) - 1):
            cut = tmp_path / f"cut{keep}{suffix}"
            cut.write_bytes(whole[:keep])
            with pytest.raises(VolumeIOError, match=r"(declares 12 x 10 x 8 voxels of int16"
                                                    r".* but |ends early).*truncated") as info:
                read_volume(cut)
            assert str(cut) in str(info.value)
        np.testing.assert_array_equal(read_volume(tmp_path / f"whole{suffix}").array, ARRAY)


def test_data_shorter_than_declared_in_every_format(tmp_path: Path) -> None:
    """Item 1, the class of bug: each format and encoding ITK reads (ITK zero-fills NIfTI and
    compressed MetaImage) refuses data shorter than its header declares, naming the file."""
    for kind, path in _short_files(tmp_path).items():
        # NRRD's own reader counts gzip data (it does not zero-fill): its words, then.
        message = "expected 1920 bytes but received 640" if kind == "nrrd gzip" else \
            "declares .* but "
        with pytest.raises(VolumeIOError, match=message) as info:
            read_volume(path)
        assert str(path) in str(info.value), kind


def test_damaged_gzip_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.nii.gz")
    data = bytearray(path.read_bytes())
    data[-6] ^= 0xFF  # the CRC-32 of the gzip trailer: the data no longer matches it
    path.write_bytes(bytes(data))
    with pytest.raises(VolumeIOError, match="damaged.*incorrect data check"):
        read_volume(path)


def test_declared_size_over_the_limit_is_refused_before_reading(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Item 2: what the header declares is checked against the limit first (every format,
    also those only ITK parses), and the limit is raised through the environment."""
    huge = {
        "nii.gz": gzip.compress(_nifti_header((30000, 30000, 3000))),
        "nrrd": NRRD.replace("12 10 8", "30000 30000 3000").format("gzip", "").encode(),
        "mha": MHA.replace("12 10 8", "30000 30000 3000").format("", "LOCAL").encode(),
        "vtk": b"# vtk DataFile Version 3.0\nx\nBINARY\nDATASET STRUCTURED_POINTS\n"
               b"DIMENSIONS 30000 30000 3000\nSPACING 1 1 1\nORIGIN 0 0 0\n"
               b"POINT_DATA 2700000000000\nSCALARS s short 1\nLOOKUP_TABLE default\n",
    }
    for suffix, content in huge.items():
        path = tmp_path / f"huge.{suffix}"
        path.write_bytes(content)
        with pytest.raises(VolumeIOError, match=r"declares 30000 x 30000 x 3000 .*more than the "
                                                rf"limit of 4\.0 GiB.*{MAX_IMAGE_GB_ENV}"):
            read_volume(path)
    small = _write(tmp_path / "small.nrrd")
    monkeypatch.setenv(MAX_IMAGE_GB_ENV, "0.000001")  # about 1 kB: the image is 1.9 kB
    with pytest.raises(VolumeIOError, match="more than the limit of 1.0 KiB"):
        read_volume(small)
    assert read_volume(small, max_bytes=10_000).array.shape == ARRAY.shape
    monkeypatch.setenv(MAX_IMAGE_GB_ENV, "lots")
    with pytest.raises(VolumeError, match=f"{MAX_IMAGE_GB_ENV}='lots'"):
        read_volume(small)
    # Raised high enough, a lying file is still refused by what it can hold.
    monkeypatch.setenv(MAX_IMAGE_GB_ENV, "100000")
    with pytest.raises(VolumeIOError, match="compressed data can hold at most"):
        read_volume(tmp_path / "huge.nii.gz")


def test_declared_size_beyond_what_the_file_can_hold(tmp_path: Path) -> None:
    """Item 2: within the limit, a tiny compressed file cannot expand to what it declares."""
    cases = {
        "tiny.nii.gz": gzip.compress(_nifti_header((1000, 1000, 500))),  # 1 GB from 50 bytes
        "tiny.nrrd": NRRD.replace("12 10 8", "1000 1000 500").format("gzip", "").encode()
        + gzip.compress(b"\0" * 1000),
        "tiny.mha": MHA.replace("12 10 8", "1000 1000 500").format(
            "CompressedData = True\n", "LOCAL").encode() + zlib.compress(b"\0" * 1000),
    }
    for name, content in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        assert path.stat().st_size < 1300
        with pytest.raises(VolumeIOError, match="compressed data can hold at most"):
            read_volume(path)


def test_dicom_series_is_bounded_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "series"
    folder.mkdir()
    image = sitk.GetImageFromArray(ARRAY)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetDepth()):
        piece = image[:, :, k]
        piece.SetMetaData("0020|000e", "1.2.826.0.1.3680043.2.1125.9.1")
        piece.SetMetaData("0020|0032", f"0\\0\\{k}")
        piece.SetMetaData("0020|0013", str(k))
        writer.SetFileName(str(folder / f"{k:03d}.dcm"))
        writer.Execute(piece)
    assert read_volume(folder).array.shape == ARRAY.shape
    monkeypatch.setenv(MAX_IMAGE_GB_ENV, "0.000001")
    with pytest.raises(VolumeIOError, match=r"declares 12 x 10 x 8 voxels"):
        read_volume(folder)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd", ".mha", ".nhdr", ".mhd"])
def test_nonfinite_voxels_are_refused_in_every_format(suffix: str, tmp_path: Path) -> None:
    """Item 3: ITK's NIfTI reader turns NaN/Inf into 0; the reader still sees and refuses
    them (policy: refuse, never guess), for every format, counting them."""
    array = ARRAY.astype(np.float32)
    array[1, 2, 3] = np.nan
    array[4, 5, 6] = np.inf
    array[0, 0, 0] = -np.inf
    path = _write(tmp_path / f"nan{suffix}", array)
    with pytest.raises(VolumeError, match=r"3 voxels are NaN or infinite|1 voxels are NaN and "
                                          r"2 infinite") as info:
        read_volume(path)
    assert str(path) in str(info.value)
    all_nan = _write(tmp_path / f"allnan{suffix}", np.full((4, 5, 6), np.nan, np.float32))
    with pytest.raises(VolumeError, match="NaN") as info:
        read_volume(all_nan)
    assert "every voxel has the value" not in str(info.value)
    assert str(read_volume(_write(tmp_path / f"fine{suffix}", ARRAY.astype(np.float64)))
               .array.dtype) == "float64"


def test_valid_files_still_read_exactly(tmp_path: Path) -> None:
    """No false alarms: every format round-trips, gzip with two members and trailing padding
    too (as bgzip / some archivers write), and float data without NaN."""
    for suffix in (".nii", ".nii.gz", ".nrrd", ".mha", ".nhdr", ".mhd"):
        for compress in (True, False):
            path = _write(tmp_path / f"ok{int(compress)}{suffix}", compress=compress)
            np.testing.assert_array_equal(read_volume(path).array, ARRAY)
    raw = _write(tmp_path / "plain.nii").read_bytes()
    members = gzip.compress(raw[:500]) + gzip.compress(raw[500:]) + b"\0" * 16
    (tmp_path / "members.nii.gz").write_bytes(members)
    np.testing.assert_array_equal(read_volume(tmp_path / "members.nii.gz").array, ARRAY)
    labels = np.zeros((6, 7, 8), np.uint8)
    labels[2:4, 3:5, 4:6] = 1
    seg = _write(tmp_path / "s.nrrd", labels)
    np.testing.assert_array_equal(read_volume(seg).array, labels)


def test_segmentation_reader_refuses_lying_header(tmp_path: Path) -> None:
    path = tmp_path / "bad.seg.nrrd"
    path.write_bytes(NRRD.format("raw", "").encode() + SHORT)
    with pytest.raises(VolumeIOError, match="declares .* but"):
        read_segmentation(path)


def test_text_file_with_image_suffix_is_left_to_itk(tmp_path: Path) -> None:
    fake = tmp_path / "fake.nii.gz"
    fake.write_text("this is not an image\n")
    with pytest.raises(VolumeIOError, match=r"cannot read .*fake\.nii\.gz as an image"):
        read_volume(fake)


# ------------------------------------------------------------------------------------------------
# Memory bound: the command line in a child process with a limited address space.

AS_LIMIT = int(1.5 * 2**30)


def run_cli_limited(args: list[str], cwd: Path, limit: int = AS_LIMIT,
                    env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m SGPSAMLib ARGS`` with RLIMIT_AS = ``limit`` bytes (about 1 GB goes to
    Python, torch and SimpleITK themselves)."""
    import resource

    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return subprocess.run([sys.executable, "-m", "SGPSAMLib", *args], cwd=cwd,
                          preexec_fn=limit_memory, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS is Linux-only")
def test_cli_crafted_headers_exit_2_within_bounded_memory(tmp_path: Path) -> None:
    """Item 2 proof: files of a few hundred bytes declaring 1-2 GB (within the size limit, so
    only what the file can hold stops them) end as one error line and exit 2 under a 1.5 GB
    address-space limit; before the fix ITK tried to allocate the declared buffer."""
    crafted = {
        "crafted.nii.gz": gzip.compress(_nifti_header((1200, 1200, 400), 16, 32)),
        "crafted.nrrd": NRRD.replace("short", "float").replace("12 10 8", "1100 1000 500")
        .format("gzip", "").encode() + gzip.compress(b"\0" * 1024),
        "crafted.mha": MHA.replace("12 10 8", "1100 1000 500").replace("MET_SHORT", "MET_FLOAT")
        .format("CompressedData = True\n", "LOCAL").encode() + zlib.compress(b"\0" * 1024),
        "crafted.nii": _nifti_header((1200, 1200, 400), 16, 32) + b"\0" * 512,
    }
    for name, content in crafted.items():
        (tmp_path / name).write_bytes(content)
        result = run_cli_limited(["segment", name, "--model", "demo", "--point=0,0,0",
                                  "--out", "mask.nii.gz"], tmp_path)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2, (name, result.stderr[-2000:])
        assert len(lines) == 1 and lines[0].startswith("sgpsam: error: "), result.stderr
        assert name in lines[0] and "declares" in lines[0], lines[0]
        assert not (tmp_path / "mask.nii.gz").exists()


def test_what_itk_only_prints_is_caught_and_kept_off_the_console(
        tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    """ITK's MetaImage reader prints "Uncompress failed" on the C++ stderr and returns garbage
    when CompressedDataSize is missing; that is refused, and nothing ITK prints reaches the
    console (a command-line error stays one line)."""
    whole = _write(tmp_path / "whole.mha").read_bytes()
    renamed = tmp_path / "nosize.mha"
    renamed.write_bytes(whole.replace(b"CompressedDataSize", b"CompressedDataSiXe"))
    with pytest.raises(VolumeIOError, match="ITK could not decode its voxel data .*Uncompress "
                                            "failed"):
        read_volume(renamed)
    lying = tmp_path / "lying.mha"
    size = int(whole.split(b"CompressedDataSize = ")[1].split(b"\n")[0])
    lying.write_bytes(whole.replace(f"CompressedDataSize = {size}".encode(),
                                    f"CompressedDataSize = {size * 50}".encode()))
    with pytest.raises(VolumeIOError, match="CompressedDataSize"):
        read_volume(lying)
    broken = tmp_path / "noheader.mha"
    broken.write_bytes(b"ObjectType = Image\nNDims = 3\nElementDataFile = LOCAL\n" + SHORT)
    with pytest.raises(VolumeIOError, match="cannot read"):
        read_volume(broken)
    captured = capfd.readouterr()
    assert "required and not defined" not in captured.err and "Uncompress" not in captured.err
    np.testing.assert_array_equal(read_volume(tmp_path / "whole.mha").array, ARRAY)
    print("stderr works again", file=sys.stderr)
    assert "stderr works again" in capfd.readouterr().err


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS is Linux-only")
def test_cli_malformed_metaimage_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "bad.mha").write_bytes(b"ObjectType = Image\nNDims = 3\nElementDataFile = "
                                       b"LOCAL\n" + SHORT)
    result = run_cli_limited(["segment", "bad.mha", "--model", "demo", "--point=0,0,0",
                              "--out", "mask.nii.gz"], tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("sgpsam: error: cannot read bad.mha")
