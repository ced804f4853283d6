"""What an image file's header declares, checked against the file *before* anything is allocated.

ITK trusts headers: it allocates the declared voxel buffer first, and for NIfTI (and compressed
MetaImage) it fills data that is missing from the file with zeros without an error. A file cut
in half then reads "fine", and a 100-byte file declaring 50000^3 voxels makes the process
allocate and touch gigabytes. :func:`check_image_file` parses the headers itself and refuses,
with one :class:`VolumeIOError` naming the file:

- **a declared size above the limit** (:func:`max_image_bytes`: ``SGPSAM_MAX_IMAGE_GB``,
  default 4 GiB of voxel data as stored), for every format ITK can read;
- **data shorter than the header declares**: raw data against the file size, ASCII/hex data
  against its length; compressed data against the most any deflate stream of that size can
  expand to (about 1032:1) and, for NIfTI and MetaImage, by decompressing it once in bounded
  chunks and counting (ITK would zero-fill there; NRRD's reader counts gzip data itself);
- **NaN/Inf voxels in NIfTI float data**, counted in the same pass, because ITK's NIfTI reader
  turns them into 0 (the reader then refuses them, as it does for every other format).

Formats it cannot parse (DICOM, other ITK formats) get the limit check from ITK's header-only
``ReadImageInformation``. A file whose header is not recognisable at all is left to ITK, which
reports it as unreadable.
"""
from __future__ import annotations

import bz2
import gzip
import math
import os
import re
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import VolumeError, VolumeIOError

__all__ = ["DeclaredImage", "check_image_file", "check_declared_size", "max_image_bytes",
           "MAX_IMAGE_GB_ENV", "DEFAULT_MAX_IMAGE_GB"]

MAX_IMAGE_GB_ENV = "SGPSAM_MAX_IMAGE_GB"
DEFAULT_MAX_IMAGE_GB = 4.0
# Deflate expands at most ~1032:1 (a 258-byte match per 2-bit code); slack for the headers.
_DEFLATE_RATIO = 1032
_DEFLATE_SLACK = 1 << 16
_CHUNK = 1 << 22
_HEADER_LIMIT = 1 << 20  # a text header longer than 1 MiB is not one we parse
_MAX_DATA_FILES = 100_000

# NIfTI datatype code -> (name, bytes per voxel, float type to scan for NaN/Inf or None).
_NIFTI_TYPES = {
    2: ("uint8", 1, None), 4: ("int16", 2, None), 8: ("int32", 4, None),
    16: ("float32", 4, "f4"), 32: ("complex64", 8, "f4"), 64: ("float64", 8, "f8"),
    128: ("rgb24", 3, None), 256: ("int8", 1, None), 512: ("uint16", 2, None),
    768: ("uint32", 4, None), 1024: ("int64", 8, None), 1280: ("uint64", 8, None),
    1536: ("float128", 16, None), 1792: ("complex128", 16, "f8"), 2048: ("complex256", 32, None),
    2304: ("rgba32", 4, None),
}
_NRRD_TYPES = {
    1: ("signed char", "int8", "int8_t", "uchar", "unsigned char", "uint8", "uint8_t"),
    2: ("short", "short int", "signed short", "signed short int", "int16", "int16_t",
        "ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t"),
    4: ("int", "signed int", "int32", "int32_t", "uint", "unsigned int", "uint32", "uint32_t",
        "float"),
    8: ("longlong", "long long", "long long int", "signed long long", "signed long long int",
        "int64", "int64_t", "ulonglong", "unsigned long long", "unsigned long long int",
        "uint64", "uint64_t", "double"),
}
_NRRD_TYPE_BYTES = {name: size for size, names in _NRRD_TYPES.items() for name in names}
_MET_TYPE_BYTES = {
    "MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4,
    "MET_UINT": 4, "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8,
    "MET_FLOAT": 4, "MET_DOUBLE": 8,
}
_SITK_BYTES = {"8-bit": 1, "16-bit": 2, "32-bit": 4, "64-bit": 8}


@dataclass(frozen=True)
class DeclaredImage:
    """What a header declares: format, sizes (fastest axis first), bytes per voxel."""

    path: Path
    format: str
    sizes: tuple[int, ...]
    voxel_bytes: int
    type_name: str

    @property
    def nbytes(self) -> int:
        return math.prod(self.sizes) * self.voxel_bytes

    def describe(self) -> str:
        return (f"{' x '.join(map(str, self.sizes))} voxels of {self.type_name} "
                f"({_format_bytes(self.nbytes)})")


def _format_bytes(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} EiB"  # pragma: no cover


def max_image_bytes() -> int:
    """The largest image (voxel data as stored) read without complaint: env or 4 GiB."""
    text = os.environ.get(MAX_IMAGE_GB_ENV, "").strip()
    if not text:
        return int(DEFAULT_MAX_IMAGE_GB * 1024 ** 3)
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value <= 0:
        raise VolumeError(f"{MAX_IMAGE_GB_ENV}={text!r}: expected a positive number of GiB "
                          f"(default {DEFAULT_MAX_IMAGE_GB:g})")
    return int(value * 1024 ** 3)


def check_declared_size(declared: DeclaredImage, max_bytes: int | None = None) -> None:
    """VolumeIOError when the declared voxel data exceeds the limit (before any allocation)."""
    limit = max_image_bytes() if max_bytes is None else int(max_bytes)
    if declared.nbytes > limit:
        raise VolumeIOError(
            f"{declared.path}: the {declared.format} header declares {declared.describe()}, "
            f"more than the limit of {_format_bytes(limit)}; if the image is really that "
            f"large, set {MAX_IMAGE_GB_ENV} (GiB) higher")


def _short(path: Path, declared: DeclaredImage, problem: str) -> VolumeIOError:
    return VolumeIOError(f"{path}: the {declared.format} header declares {declared.describe()} "
                         f"but {problem}; the file is truncated or its header is wrong")


def _damaged(path: Path, error: str) -> VolumeIOError:
    return VolumeIOError(f"{path}: the compressed data ends early or is damaged ({error}); the "
                         "file is truncated or corrupt")


# ------------------------------------------------------------------------------------------------
# Streams.

def _decompressed_chunks(files: list[Path], offset: int, kind: str,
                         limit: int | None = None) -> Iterator[bytes]:
    """Decompressed bytes of ``files`` (concatenated, the first from ``offset``) in bounded
    chunks, so that a small file declaring (or expanding to) gigabytes never fills memory.

    ``kind`` "gzip" (members one after the other, CRC and length checked, trailing non-gzip
    bytes ignored as zlib's gzread does), "zlib" (zlib or gzip framing, as MetaIO inflates)
    or "bzip2". A stream that ends early or is corrupt raises (EOFError, zlib.error, OSError)
    after the bytes before the damage have been yielded. ``limit``: read at most that many
    compressed bytes of a single file (MetaImage's CompressedDataSize: all its reader reads).
    """
    for n, path in enumerate(files):
        with open(path, "rb") as raw_handle:
            if n == 0 and offset:
                raw_handle.seek(offset)
            handle = _Limited(raw_handle, limit) if limit is not None else raw_handle
            if kind == "bzip2":
                yield from _bzip2_chunks(handle)
                continue
            decomp = zlib.decompressobj(47)
            pending = b""
            while True:
                raw = pending or handle.read(_CHUNK)
                if not raw:
                    chunk = decomp.flush()  # output zlib still holds (at most a window)
                    if chunk:
                        yield chunk
                    if not decomp.eof:
                        raise EOFError("the compressed stream ends early")
                    break
                chunk = decomp.decompress(raw, _CHUNK)
                pending = decomp.unconsumed_tail
                if chunk:
                    yield chunk
                if decomp.eof:
                    rest = decomp.unused_data + (b"" if pending else handle.read(2))
                    if kind != "gzip" or not rest.startswith(b"\x1f\x8b"):
                        break
                    decomp, pending = zlib.decompressobj(47), rest


class _Limited:
    """A binary file's ``read`` that stops after ``limit`` bytes."""

    def __init__(self, handle, limit: int) -> None:
        self.handle, self.left = handle, limit

    def read(self, size: int) -> bytes:
        block = self.handle.read(max(0, min(size, self.left)))
        self.left -= len(block)
        return block


def _bzip2_chunks(handle) -> Iterator[bytes]:
    decomp = bz2.BZ2Decompressor()
    while not decomp.eof:
        raw = handle.read(_CHUNK) if decomp.needs_input else b""
        if decomp.needs_input and not raw:
            raise EOFError("the compressed stream ends early")
        chunk = decomp.decompress(raw, _CHUNK)
        if chunk:
            yield chunk


def _count_stream(chunks: Iterator[bytes], skip: int, needed: int,
                  scan_dtype: str | None) -> tuple[int, int, str]:
    """(data bytes seen after ``skip``, non-finite values among the first ``needed``, error)."""
    seen = 0
    nonfinite = 0
    carry = b""
    itemsize = np.dtype(scan_dtype).itemsize if scan_dtype else 1
    error = ""
    try:
        for chunk in chunks:
            if skip:
                cut = min(skip, len(chunk))
                chunk, skip = chunk[cut:], skip - cut
                if not chunk:
                    continue
            useful = chunk[: max(0, needed - seen)]
            seen += len(chunk)
            if scan_dtype and useful:
                data = carry + useful
                whole = len(data) - len(data) % itemsize
                values = np.frombuffer(data[:whole], dtype=scan_dtype)
                nonfinite += int(values.size - np.count_nonzero(np.isfinite(values)))
                carry = data[whole:]
            if seen >= needed + _DEFLATE_SLACK:  # enough: trailing bytes are ignored anyway
                break
    except (OSError, EOFError, zlib.error, ValueError) as exc:  # cut, corrupt, bad CRC
        error = str(exc) or type(exc).__name__
    return seen, nonfinite, error


def _scan_raw(path: Path, offset: int, needed: int, scan_dtype: str) -> int:
    """Non-finite values in ``needed`` bytes of uncompressed float data at ``offset``."""
    def chunks() -> Iterator[bytes]:
        with open(path, "rb") as handle:
            handle.seek(offset)
            left = needed
            while left > 0:
                block = handle.read(min(_CHUNK, left))
                if not block:
                    return
                left -= len(block)
                yield block

    return _count_stream(chunks(), 0, needed, scan_dtype)[1]


def _check_stream(path: Path, declared: DeclaredImage, files: list[Path], offset: int,
                  kind: str, limit: int | None = None) -> None:
    """Decompress once (bounded chunks) and refuse data shorter than declared, or damaged."""
    seen, _, error = _count_stream(_decompressed_chunks(files, offset, kind, limit), 0,
                                   declared.nbytes, None)
    if seen < declared.nbytes:
        raise _short(path, declared, f"its compressed data holds only {seen} bytes"
                     + (f" ({error})" if error else ""))
    if error:
        raise _damaged(path, error)


def _check_compressed_bound(path: Path, declared: DeclaredImage, compressed: int) -> None:
    if declared.nbytes > compressed * _DEFLATE_RATIO + _DEFLATE_SLACK:
        raise _short(path, declared, f"its {_format_bytes(compressed)} of compressed data can "
                                     f"hold at most {_format_bytes(compressed * _DEFLATE_RATIO)}")


# ------------------------------------------------------------------------------------------------
# NIfTI-1 / NIfTI-2 (and ANALYZE 7.5 pairs).

def _nifti_pair(path: Path) -> tuple[Path, Path]:
    """(header file, data file) for .nii(.gz), .hdr(.gz) or .img(.gz)."""
    name = path.name.lower()
    gz = name.endswith(".gz")
    base = path.name[: -3] if gz else path.name
    stem, ext = base[: -4], base[-4:].lower()
    if ext == ".img":
        header = path.with_name(stem + ".hdr" + (".gz" if gz else ""))
        return (header if header.exists() else path.with_name(stem + ".hdr")), path
    if ext == ".hdr":
        data = path.with_name(stem + ".img" + (".gz" if gz else ""))
        return path, data if data.exists() else path.with_name(stem + ".img")
    return path, path


def _is_gzip(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(2) == b"\x1f\x8b"
    except OSError:
        return False


def _read_head(path: Path, size: int) -> bytes:
    """The first ``size`` (decompressed) bytes, or fewer; b"" when unreadable."""
    try:
        if _is_gzip(path):
            with gzip.open(path, "rb") as handle:
                return handle.read(size)
        with open(path, "rb") as handle:
            return handle.read(size)
    except (OSError, EOFError, zlib.error):
        return b""


def _parse_nifti(head: bytes, path: Path) -> tuple[DeclaredImage, int, str, str | None] | None:
    """(declared, vox_offset, magic, float dtype to scan) or None when not a NIfTI header."""
    if len(head) < 348:
        return None
    for endian in "<>":
        sizeof_hdr = struct.unpack(endian + "i", head[:4])[0]
        if sizeof_hdr in (348, 540):
            break
    else:
        return None
    if sizeof_hdr == 540:
        if len(head) < 540:
            return None
        datatype, _bitpix = struct.unpack(endian + "hh", head[12:16])
        dims = struct.unpack(endian + "8q", head[16:80])
        vox_offset = float(struct.unpack(endian + "q", head[168:176])[0])
        magic = head[4:7].decode("latin-1")
        fmt = "NIfTI-2"
    else:
        dims = struct.unpack(endian + "8h", head[40:56])
        datatype, _bitpix = struct.unpack(endian + "hh", head[70:74])
        vox_offset = struct.unpack(endian + "f", head[108:112])[0]
        magic = head[344:347].decode("latin-1")
        fmt = "NIfTI-1" if magic in ("n+1", "ni1") else "ANALYZE 7.5"
    ndim = dims[0]
    if not 1 <= ndim <= 7:
        raise VolumeIOError(f"{path}: invalid {fmt} header: dim[0] = {ndim}, expected 1..7")
    sizes = tuple(int(d) for d in dims[1: ndim + 1])
    if any(d < 1 for d in sizes):
        raise VolumeIOError(f"{path}: invalid {fmt} header: image sizes {sizes} must all be "
                            "at least 1")
    if datatype not in _NIFTI_TYPES:
        raise VolumeIOError(f"{path}: {fmt} header declares the unknown datatype {datatype}")
    type_name, voxel_bytes, kind = _NIFTI_TYPES[datatype]
    if not math.isfinite(vox_offset) or vox_offset < 0:
        raise VolumeIOError(f"{path}: invalid {fmt} header: vox_offset = {vox_offset}")
    offset = int(vox_offset)
    if magic in ("n+1", "n+2") and offset < sizeof_hdr:
        offset = sizeof_hdr  # as niftilib: the data never starts inside the header
    declared = DeclaredImage(path, fmt, sizes, voxel_bytes, type_name)
    scan = (endian + kind) if kind else None
    return declared, offset, magic, scan


def _check_nifti(path: Path, max_bytes: int | None) -> int:
    header_path, data_path = _nifti_pair(path)
    parsed = _parse_nifti(_read_head(header_path, 540), header_path)
    if parsed is None:
        return 0
    declared, offset, magic, scan = parsed
    declared = DeclaredImage(path, declared.format, declared.sizes, declared.voxel_bytes,
                             declared.type_name)
    check_declared_size(declared, max_bytes)
    if not data_path.is_file():
        raise VolumeIOError(f"{path}: its data file {data_path} does not exist")
    needed = declared.nbytes
    compressed_size = data_path.stat().st_size
    if _is_gzip(data_path):
        _check_compressed_bound(path, declared, compressed_size)
        seen, nonfinite, error = _count_stream(
            _decompressed_chunks([data_path], 0, "gzip"), offset, needed, scan)
        if seen < needed:
            why = f" ({error})" if error else ""
            raise _short(path, declared, f"its compressed data holds only {max(seen, 0)} bytes "
                                         f"of voxel data after byte {offset}{why}")
        if error:
            raise _damaged(path, error)
        return nonfinite
    available = compressed_size - offset
    if available < needed:
        raise _short(path, declared, f"the file holds only {max(available, 0)} bytes of voxel "
                                     f"data after byte {offset} (needs {needed})")
    return _scan_raw(data_path, offset, needed, scan) if scan else 0


# ------------------------------------------------------------------------------------------------
# NRRD (attached .nrrd and detached .nhdr).

def _text_header(path: Path, stop_at_blank: bool) -> tuple[list[str], int] | None:
    """Header lines and the byte offset just after the header (None when too long)."""
    try:
        with open(path, "rb") as handle:
            blob = handle.read(_HEADER_LIMIT)
    except OSError:
        return None
    lines: list[str] = []
    position = 0
    while position < len(blob):
        end = blob.find(b"\n", position)
        if end < 0:
            if len(blob) == _HEADER_LIMIT:
                return None
            end = len(blob) - 1
        line = blob[position:end + 1].decode("latin-1").rstrip("\r\n")
        position = end + 1
        if stop_at_blank and not line.strip():
            return lines, position
        lines.append(line)
        if not stop_at_blank and line.strip().lower().startswith("elementdatafile"):
            return lines, position
    return lines, position


def _data_files(spec: str, header: Path, extra_lines: list[str], slices: int) -> list[Path]:
    """The data files a NRRD/MetaImage header names (single, LIST or printf pattern)."""
    folder = header.parent
    parts = spec.split()
    if parts and parts[0].upper() == "LIST":
        names = [line.strip() for line in extra_lines if line.strip()]
    elif len(parts) >= 4 and "%" in parts[0]:
        try:
            first, last, step = int(parts[1]), int(parts[2]), int(parts[3])
        except ValueError:
            return []
        if step == 0 or abs((last - first) // step) + 1 > min(_MAX_DATA_FILES, max(slices, 1)):
            return []
        try:
            names = [parts[0] % n for n in range(first, last + (1 if step > 0 else -1), step)]
        except (TypeError, ValueError):
            return []
    else:
        names = [spec.strip()]
    return [Path(name) if os.path.isabs(name) else folder / name for name in names]


def _check_nrrd(path: Path, max_bytes: int | None) -> None:
    parsed = _text_header(path, stop_at_blank=True)
    if parsed is None or not parsed[0] or not parsed[0][0].startswith("NRRD000"):
        return
    lines, data_start = parsed
    fields: dict[str, str] = {}
    after_list: list[str] = []
    for n, line in enumerate(lines[1:], start=1):
        if line.startswith("#") or ":" not in line:
            continue
        if ":=" in line and (": " not in line or line.index(":=") < line.index(": ")):
            continue  # a key/value pair, not a field
        key, value = line.split(":", 1)
        key = key.strip().lower().replace(" ", "")
        fields[key] = value.strip()
        if key == "datafile" and value.strip().upper().startswith("LIST"):
            after_list = lines[n + 1:]
            break
    try:
        sizes = tuple(int(v) for v in fields.get("sizes", "").split())
    except ValueError:
        raise VolumeIOError(f"{path}: invalid NRRD header: sizes {fields.get('sizes')!r}"
                            ) from None
    type_name = " ".join(fields.get("type", "").lower().split())
    voxel_bytes = _NRRD_TYPE_BYTES.get(type_name)
    if type_name == "block":
        try:
            voxel_bytes = int(fields.get("blocksize", ""))
        except ValueError:
            voxel_bytes = None
    if not sizes or voxel_bytes is None:
        return  # not a header we understand in full: ITK decides
    if any(s < 1 for s in sizes):
        raise VolumeIOError(f"{path}: invalid NRRD header: sizes {sizes} must all be >= 1")
    declared = DeclaredImage(path, "NRRD", sizes, voxel_bytes, type_name)
    check_declared_size(declared, max_bytes)
    encoding = fields.get("encoding", "raw").lower()
    encoding = {"gz": "gzip", "bz2": "bzip2", "txt": "text", "ascii": "text"}.get(encoding,
                                                                                  encoding)
    spec = fields.get("datafile")
    if spec is not None:
        files = _data_files(spec, path, after_list, sizes[-1])
        if not files:
            return
        missing = [f for f in files if not f.is_file()]
        if missing:
            raise VolumeIOError(f"{path}: its data file {missing[0]} does not exist")
        start = 0
    else:
        files, start = [path], data_start
    try:
        byte_skip = int(fields.get("byteskip", "0"))
    except ValueError:
        return
    total = sum(f.stat().st_size for f in files) - start
    # byte skip -1: the data is the last bytes of the file; skipped lines are not counted.
    available = total - max(byte_skip, 0)
    needed = declared.nbytes
    if encoding == "raw":
        if available < needed:
            raise _short(path, declared, f"the data holds only {max(available, 0)} bytes "
                                         f"(needs {needed})")
    elif encoding == "hex":
        if available < 2 * needed:
            raise _short(path, declared, f"its hex data holds only {max(available, 0) // 2} "
                                         "bytes")
    elif encoding == "text":
        voxels = math.prod(sizes)
        if available < 2 * voxels - 1:
            raise _short(path, declared, f"its {max(available, 0)} characters of text cannot "
                                         f"hold {voxels} values")
    elif encoding == "gzip":  # NrrdIO counts what it inflates itself: only bound memory
        _check_compressed_bound(path, declared, max(available, 0))
    elif encoding == "bzip2":  # no useful ratio bound: count
        _check_stream(path, declared, files, start + max(byte_skip, 0), encoding)


# ------------------------------------------------------------------------------------------------
# MetaImage (.mha with LOCAL data, .mhd with a data file).

def _check_metaimage(path: Path, max_bytes: int | None) -> None:
    parsed = _text_header(path, stop_at_blank=False)
    if parsed is None:
        return
    lines, data_start = parsed
    fields: dict[str, str] = {}
    for line in lines:
        if "=" in line:
            key, value = line.split("=", 1)
            fields[key.strip().lower()] = value.strip()
    if "elementdatafile" not in fields or "dimsize" not in fields:
        return
    try:
        sizes = tuple(int(v) for v in fields["dimsize"].split())
        channels = int(fields.get("elementnumberofchannels", "1"))
        header_size = int(fields.get("headersize", "0"))
    except ValueError:
        raise VolumeIOError(f"{path}: invalid MetaImage header: DimSize "
                            f"{fields['dimsize']!r}") from None
    element = fields.get("elementtype", "").upper().replace("_ARRAY", "")
    if element not in _MET_TYPE_BYTES or not sizes:
        return
    if any(s < 1 for s in sizes) or channels < 1:
        raise VolumeIOError(f"{path}: invalid MetaImage header: DimSize {sizes} and "
                            f"ElementNumberOfChannels {channels} must be >= 1")
    declared = DeclaredImage(path, "MetaImage", sizes, _MET_TYPE_BYTES[element] * channels,
                             element)
    check_declared_size(declared, max_bytes)
    spec = fields["elementdatafile"]
    if spec.upper() == "LOCAL":
        files, start = [path], data_start
    else:
        extra = []
        if spec.upper().startswith("LIST"):
            extra = _remaining_lines(path, data_start)
        files = _data_files(spec, path, extra, sizes[-1])
        if not files:
            return
        missing = [f for f in files if not f.is_file()]
        if missing:
            raise VolumeIOError(f"{path}: its data file {missing[0]} does not exist")
        start = max(header_size, 0)
    needed = declared.nbytes
    compressed = fields.get("compresseddata", "false").lower() in ("true", "1", "yes")
    binary = fields.get("binarydata", "true").lower() in ("true", "1", "yes")
    available = sum(f.stat().st_size for f in files) - start
    if not compressed:
        if not binary:
            if available < 2 * math.prod(sizes) * channels - 1:
                raise _short(path, declared, f"its {max(available, 0)} characters of text "
                                             "cannot hold that many values")
        elif available < needed:
            raise _short(path, declared, f"the data holds only {max(available, 0)} bytes "
                                         f"(needs {needed})")
        return
    limit = None
    size_field = fields.get("compresseddatasize", "")
    if size_field:  # MetaIO reads exactly this many compressed bytes
        try:
            limit = int(size_field)
        except ValueError:
            raise VolumeIOError(f"{path}: invalid MetaImage header: CompressedDataSize "
                                f"{size_field!r}") from None
        if limit <= 0 or limit > max(available, 0):
            raise _short(path, declared, f"its CompressedDataSize = {limit} bytes is not what "
                                         f"the file holds ({max(available, 0)} bytes)")
        if len(files) != 1:
            limit = None
    _check_compressed_bound(path, declared, limit or max(available, 0))
    _check_stream(path, declared, files, start, "zlib", limit)


def _remaining_lines(path: Path, start: int) -> list[str]:
    try:
        with open(path, "rb") as handle:
            handle.seek(start)
            return handle.read(_HEADER_LIMIT).decode("latin-1").splitlines()
    except OSError:
        return []


# ------------------------------------------------------------------------------------------------
# Anything else ITK reads (and DICOM slices): the declared size from ITK's header-only read.

def declared_by_itk(path: Path, files: int = 1) -> DeclaredImage | None:
    """Sizes and pixel type from SimpleITK's ``ReadImageInformation`` (no voxel data read)."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    sizes = tuple(int(s) for s in reader.GetSize())
    if files > 1:
        sizes = (*sizes[:2], max(sizes[2] if len(sizes) > 2 else 1, 1) * files)
    type_text = sitk.GetPixelIDValueAsString(reader.GetPixelID())
    match = re.search(r"(8|16|32|64)-bit", type_text)
    component = _SITK_BYTES[match.group(0)] if match else 1
    if "complex" in type_text:
        component *= 2
    voxel_bytes = component * max(int(reader.GetNumberOfComponents()), 1)
    return DeclaredImage(path, "image", sizes, voxel_bytes, type_text)


def check_image_file(path: Path | str, max_bytes: int | None = None) -> int:
    """Refuse a file whose header lies (see the module docstring) before ITK reads it.

    Returns the number of NaN/Inf voxels found in NIfTI float data (ITK would hide them);
    0 for other formats, whose voxels the reader checks after reading.

    Raises:
        VolumeIOError: declared size over the limit, data shorter than declared, or an
            impossible header; the message names the file.
    """
    p = Path(path)
    name = p.name.lower()
    if name.endswith((".nii", ".nii.gz", ".hdr", ".hdr.gz", ".img", ".img.gz")):
        return _check_nifti(p, max_bytes)
    if name.endswith((".nrrd", ".nhdr")):
        _check_nrrd(p, max_bytes)
    elif name.endswith((".mha", ".mhd")):
        _check_metaimage(p, max_bytes)
    else:
        declared = declared_by_itk(p)
        if declared is not None:
            check_declared_size(declared, max_bytes)
    return 0
