"""Read and write volumes and labelmaps with SimpleITK, keeping the exact voxel grid.

Reading is defensive (see ``headers.py``): every header is checked against the file and a size
limit before ITK allocates anything, data shorter than declared is refused, and so are voxels
that are NaN or infinite, for every format (policy: refuse, never guess a value for them).

Geometry goes through ``geometry.py`` only: SimpleITK reports spacing, origin and direction
in LPS; ``volume_from_sitk`` turns them into a ``Volume`` with an IJK->RAS matrix and
``volume_to_sitk`` does the reverse. Writes are atomic (temporary file in the target folder,
then ``os.replace``) so a crash never leaves a half-written result under the final name.
"""
from __future__ import annotations

import logging
import os
import secrets
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Union

import numpy as np
import SimpleITK as sitk

from .errors import VolumeError, VolumeIOError
from .geometry import Volume, ijk_to_ras_matrix, lps_geometry
from .headers import check_declared_size, check_image_file, declared_by_itk
from .options import WRITE_SUFFIXES

__all__ = [
    "READ_FORMATS",
    "WRITE_SUFFIXES",
    "read_volume",
    "write_volume",
    "write_labelmap",
    "atomic_write",
    "volume_from_sitk",
    "volume_to_sitk",
    "to_sitk",
]

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

READ_FORMATS = (
    "NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd) "
    "or a folder holding a DICOM series"
)
# WRITE_SUFFIXES are single-file formats only: a two-file header (.nhdr, .mhd) names its data
# file, which a temporary name followed by a rename would break.


def _suffix(path: Path) -> str:
    """The format suffix, with '.gz' kept together with the one before it ('.nii.gz')."""
    suffixes = path.suffixes
    if len(suffixes) >= 2 and suffixes[-1].lower() == ".gz":
        return "".join(suffixes[-2:])
    return suffixes[-1] if suffixes else ""


def _stem(path: Path) -> str:
    """File name without its format suffix: 'case.nii.gz' -> 'case'."""
    suffix = _suffix(path)
    return path.name[: len(path.name) - len(suffix)] if suffix else path.name


def _itk_reason(exc: Exception) -> str:
    """One short line out of a long multi-line ITK exception text."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    nrrd = [ln for ln in lines if ln.startswith("[nrrd]")]
    if nrrd:  # NrrdIO's innermost line says what is wrong ("expected N bytes but received M")
        return nrrd[-1]
    for ln in lines:
        if "ITK ERROR" in ln or "Could not" in ln or "Unable" in ln:
            return ln
    return lines[-1] if lines else type(exc).__name__


def volume_from_sitk(image: sitk.Image, name: str = "") -> Volume:
    """A 3-D scalar SimpleITK image -> Volume (array copy in (K, J, I) order, RAS matrix)."""
    dim = image.GetDimension()
    if dim != 3:
        raise VolumeError(
            f"image {name or '(unnamed)'} is {dim}-D (size {image.GetSize()}); "
            "expected a 3-D volume (for DICOM, pass the series folder, not one file)"
        )
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise VolumeError(
            f"image {name or '(unnamed)'} has {image.GetNumberOfComponentsPerPixel()} "
            f"components per voxel ({image.GetPixelIDTypeAsString()}); "
            "expected a scalar (single-component) volume"
        )
    matrix = ijk_to_ras_matrix(
        image.GetSpacing(), image.GetOrigin(), image.GetDirection(), space="LPS"
    )
    return Volume(sitk.GetArrayFromImage(image), matrix, name)


def volume_to_sitk(volume: Volume) -> sitk.Image:
    """Volume -> SimpleITK image with LPS spacing/origin/direction (bool stored as uint8)."""
    array = volume.array
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    elif array.dtype == np.float16:
        array = array.astype(np.float32)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array), isVector=False)
    spacing, origin, direction = lps_geometry(volume.ijk_to_ras)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    return image


to_sitk = volume_to_sitk


def _read_dicom_folder(folder: Path, max_bytes: int | None = None) -> sitk.Image:
    """Read the DICOM series with the most files in ``folder`` (not searched recursively)."""
    reader = sitk.ImageSeriesReader()
    series_ids = sorted(reader.GetGDCMSeriesIDs(str(folder)))
    if not series_ids:
        raise VolumeIOError(
            f"folder {folder} holds no DICOM series; expected a DICOM series folder "
            f"or an image file: {READ_FORMATS}"
        )
    files_per_series = {sid: reader.GetGDCMSeriesFileNames(str(folder), sid) for sid in series_ids}
    chosen = max(series_ids, key=lambda sid: len(files_per_series[sid]))
    if len(series_ids) > 1:
        logger.info(
            "%s holds %d DICOM series; reading %s (%d files)",
            folder, len(series_ids), chosen, len(files_per_series[chosen]),
        )
    files = files_per_series[chosen]
    declared = declared_by_itk(Path(files[0]), files=len(files))
    if declared is not None:
        check_declared_size(declared, max_bytes)
    reader.SetFileNames(files)
    return reader.Execute()


def _refuse_nonfinite(array: np.ndarray, path: Path, hidden: int) -> None:
    """VolumeError when voxels are NaN/Inf (``hidden``: those ITK's NIfTI reader zeroed).

    Checked slab by slab so that a large float volume needs no full-size temporary.
    """
    nan = inf = 0
    if array.dtype.kind in "fc":
        for slab in array.reshape(array.shape[0], -1) if array.ndim > 1 else [array]:
            nan += int(np.count_nonzero(np.isnan(slab)))
            inf += int(np.count_nonzero(np.isinf(slab)))
    if hidden or nan or inf:
        found = f"{hidden} voxels are NaN or infinite" if hidden else \
            f"{nan} voxels are NaN and {inf} infinite"
        raise VolumeError(f"{path}: {found} (of {array.size}); SGP-SAM refuses images with "
                          "undefined intensities rather than guess a value for them: replace "
                          "them (e.g. with the background value) and save the image again")


# What ITK's readers print on the C++ stderr when they give up on the data but still return an
# image (MetaIO, NIfTI): such an image holds zeros or garbage and is refused.
_SILENT_FAILURES = ("Uncompress failed", "data not read completely",
                    "file stream is fail after read")
_STDERR_LOCK = threading.Lock()


@contextmanager
def _native_stderr_captured(printed: list[str]) -> Iterator[None]:
    """Collect what C++ code writes on file descriptor 2 meanwhile (ITK's MetaIO and NIfTI
    readers print there directly), so that a command-line error stays one line; the text is
    logged, and kept in ``printed`` for :func:`_refuse_silent_failures`. One thread at a time:
    descriptor 2 is process-wide."""
    with _STDERR_LOCK:
        try:
            saved = os.dup(2)
        except OSError:  # no usable stderr (some GUI processes): nothing to capture
            yield
            return
        try:
            with tempfile.TemporaryFile() as sink:
                try:
                    sys.stderr.flush()
                except (AttributeError, OSError, ValueError):
                    pass
                os.dup2(sink.fileno(), 2)
                try:
                    yield
                finally:
                    os.dup2(saved, 2)
                    sink.seek(0)
                    text = sink.read(1 << 16).decode("utf-8", "replace").strip()
                    if text:
                        printed.append(text)
                        logger.info("ITK: %s", " | ".join(text.splitlines()[:20]))
        finally:
            os.close(saved)


def _refuse_silent_failures(path: Path, printed: list[str]) -> None:
    lines = [line.strip() for text in printed for line in text.splitlines()]
    for line in lines:
        if any(phrase in line for phrase in _SILENT_FAILURES):
            raise VolumeIOError(f"cannot read {path}: ITK could not decode its voxel data "
                                f"({line}); the file is damaged")


def read_volume(path: PathLike, max_bytes: int | None = None) -> Volume:
    """Read a 3-D scalar volume from a file or a DICOM series folder; name = file stem.

    Missing or unreadable input, a header declaring more data than the file holds, or more
    than ``max_bytes`` (default: ``SGPSAM_MAX_IMAGE_GB``, 4 GiB) -> VolumeIOError; a 2-D or
    multi-component image, or NaN/Inf voxels -> VolumeError. A 3-D image with a single slice
    is returned as is (callers decide).
    """
    p = Path(path)
    if not p.exists():
        raise VolumeIOError(f"{p}: no such file or folder; expected {READ_FORMATS}")
    hidden_nonfinite = 0
    printed: list[str] = []
    try:
        if not p.is_dir():
            hidden_nonfinite = check_image_file(p, max_bytes)
        with _native_stderr_captured(printed):
            image = _read_dicom_folder(p, max_bytes) if p.is_dir() else sitk.ReadImage(str(p))
        name = p.name if p.is_dir() else _stem(p)
    except RuntimeError as exc:
        raise VolumeIOError(
            f"cannot read {p} as an image ({_itk_reason(exc)}); expected {READ_FORMATS}"
        ) from exc
    _refuse_silent_failures(p, printed)
    volume = volume_from_sitk(image, name=str(p))
    _refuse_nonfinite(volume.array, p, hidden_nonfinite)
    return Volume(volume.array, volume.ijk_to_ras, name)


@contextmanager
def atomic_write(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success move it onto ``path``.

    The temporary name keeps the format suffix (``.case.tmp<hex>.nii.gz``) so writers that
    choose the format by extension pick the right one. If the block raises, the temporary
    file is removed and the error propagates; ``path`` is untouched.
    """
    target = Path(path)
    parent = target.parent
    if not parent.is_dir():
        problem = "is a file, not a folder" if parent.exists() else "does not exist"
        raise VolumeIOError(f"cannot write {target}: folder {parent} {problem}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise VolumeIOError(f"cannot write {target}: folder {parent} is not writable")
    if target.is_dir():
        raise VolumeIOError(f"cannot write {target}: it is a folder; expected a file path")
    suffix = _suffix(target)
    stem = _stem(target)
    while True:
        tmp = parent / f".{stem}.tmp{secrets.token_hex(4)}{suffix}"
        if not tmp.exists():
            break
    try:
        yield tmp
        try:
            os.replace(tmp, target)
        except OSError as exc:
            raise VolumeIOError(f"cannot write {target}: {exc}") from exc
    finally:
        # After a successful replace tmp no longer exists; otherwise clean up.
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:  # pragma: no cover - e.g. a permission change meanwhile
            logger.warning("could not remove temporary file %s: %s", tmp, exc)


def _write_image(image: sitk.Image, path: PathLike) -> Path:
    target = Path(path)
    suffix = _suffix(target).lower()
    if suffix not in WRITE_SUFFIXES:
        raise VolumeIOError(
            f"cannot write {target}: unsupported extension {suffix or '(none)'}; "
            f"expected one of {', '.join(WRITE_SUFFIXES)}"
        )
    with atomic_write(target) as tmp:
        try:
            sitk.WriteImage(image, str(tmp), useCompression=True)
        except RuntimeError as exc:
            raise VolumeIOError(f"cannot write {target}: {_itk_reason(exc)}") from exc
    return target


def write_volume(volume: Volume, path: PathLike) -> Path:
    """Write ``volume`` (any scalar dtype SimpleITK supports) atomically; returns the path."""
    return _write_image(volume_to_sitk(volume), path)


def write_labelmap(mask: np.ndarray, reference: Volume, path: PathLike) -> Path:
    """Write a (K, J, I) label array on the exact grid of ``reference``; returns the path.

    Stored as uint8 when the largest label is below 256, else uint16. Integer, bool or
    integral float labels are accepted; negative, non-integral or > 65535 values are not.
    """
    mask = np.asarray(mask)
    if mask.shape != reference.array.shape:
        raise VolumeError(
            f"mask shape {mask.shape} differs from the reference volume's array shape "
            f"{reference.array.shape}; expected a (K, J, I) label array on its grid"
        )
    if mask.dtype.kind not in "biuf":
        raise VolumeError(f"mask must hold integer labels; got dtype {mask.dtype}")
    if mask.dtype.kind == "f" and not (
        np.all(np.isfinite(mask)) and np.array_equal(mask, np.round(mask))
    ):
        raise VolumeError("mask must hold integer labels; got non-integral float values")
    top = int(mask.max()) if mask.size else 0
    low = int(mask.min()) if mask.size else 0
    if low < 0 or top > np.iinfo(np.uint16).max:
        raise VolumeError(f"mask labels must lie in 0..65535; got {low}..{top}")
    dtype = np.uint8 if top < 256 else np.uint16
    return write_volume(reference.with_array(mask.astype(dtype, copy=False)), path)
