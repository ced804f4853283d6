"""Model registry: which checkpoints SGP-SAM knows, where they live, and whether they are intact.

Two models are known by name:

- ``demo``: a small SGP-SAM trained by this project, shipped inside the package as package data
  (``SGPSAMLib/resources/sgpsam_demo.pt``), so a source checkout, a wheel (``pip install .``)
  and the Slicer extension (which installs ``SGPSAMLib`` next to ``SGPSAM.py``) all find it in
  the same place and everything works offline. ``SGPSAM_DEMO_MODEL`` points at another copy.
- ``sam_med3d_turbo``: the official SAM-Med3D-turbo weights, downloaded on request (with the
  licence shown first) from Hugging Face into :func:`cache_dir` and checked against a pinned
  SHA-256.

A verified download gets a small sidecar ``<file>.sha256`` (JSON: sha256, size, mtime_ns) so that
later starts trust the file after a ``stat`` instead of re-hashing 400 MB; ``verify=True``
re-hashes. This module is stdlib-only (no torch) so the Slicer module can list models and offer
the download before PyTorch is installed.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from .errors import CheckpointError, SGPSAMError

__all__ = [
    "ModelInfo", "KNOWN_MODELS", "DEFAULT_DOWNLOAD", "bundled_model_path", "cache_dir",
    "model_path_in_cache", "cached_model_path", "resolve_model", "model_status", "model_url",
    "write_verified_marker", "sha256_file", "format_size", "check_checkpoint_file",
]

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

#: The model ``sgpsam download`` fetches when no name is given.
DEFAULT_DOWNLOAD = "sam_med3d_turbo"

_PACKAGE_DIR = Path(__file__).resolve().parent
# Package data: travels with a wheel, an installed Slicer extension and a source checkout alike.
_BUNDLED_DIR = _PACKAGE_DIR / "resources"
_SIDECAR_SUFFIX = ".sha256"
_HF_DEFAULT = "https://huggingface.co"


@dataclass(frozen=True)
class ModelInfo:
    """A known model: where it comes from, how big it is, and under which licence.

    ``url`` is None for bundled models. ``size_bytes`` is the exact size when published (it is
    checked during a download); ``approx_bytes`` is only for telling the user what to expect.
    ``preset`` is the architecture for checkpoints without a stored config.
    """

    name: str
    title: str
    filename: str
    url: str | None
    sha256: str | None
    size_bytes: int | None
    licence: str
    licence_url: str
    preset: str
    description: str = ""
    approx_bytes: int | None = None

    @property
    def downloadable(self) -> bool:
        return self.url is not None and self.sha256 is not None

    def licence_text(self) -> str:
        """The notice to show before downloading (dialog or terminal)."""
        size = self.size_bytes or self.approx_bytes
        lines = [f"{self.title} ({self.name})"]
        if self.description:
            lines.append(self.description)
        if self.url:
            lines.append(f"Source:  {self.url}" + (f" (about {format_size(size)})" if size else ""))
        lines.append(f"Licence: {self.licence} - {self.licence_url}")
        return "\n".join(lines)


KNOWN_MODELS: dict[str, ModelInfo] = {
    "demo": ModelInfo(
        name="demo",
        title="SGP-SAM demo model (bundled)",
        filename="sgpsam_demo.pt",
        url=None,
        sha256=None,
        size_bytes=None,
        licence="Apache-2.0",
        licence_url="https://www.apache.org/licenses/LICENSE-2.0",
        preset="demo",
        description="A small SGP-SAM trained by this project on synthetic lesions, shipped with "
                    "the extension so that everything works offline. Good for trying the tool; "
                    "use SAM-Med3D-turbo or a fine-tuned model for real images.",
    ),
    "sam_med3d_turbo": ModelInfo(
        name="sam_med3d_turbo",
        title="SAM-Med3D-turbo",
        filename="sam_med3d_turbo.pth",
        url="https://huggingface.co/blueyo0/SAM-Med3D/resolve/main/sam_med3d_turbo.pth",
        sha256="899a46d04d3b70f723282ceb489149373558bf0aaba389a346f5ab57da5cdd3c",
        size_bytes=None,  # not published exactly; the SHA-256 check covers integrity
        licence="Apache-2.0",
        licence_url="https://huggingface.co/blueyo0/SAM-Med3D",
        preset="sam_med3d",
        description="Official SAM-Med3D-turbo weights (uni-medical/SAM-Med3D, ViT-B, 128^3 "
                    "crops at 1.5 mm) from the Hugging Face repository blueyo0/SAM-Med3D. "
                    "Loads as 'sam_med3d' and as 'sgp_sam' (the SGPM start as identity).",
        approx_bytes=402_000_000,
    ),
}


def format_size(num_bytes: int | None) -> str:
    """'402 MB' style size for messages; '?' when unknown."""
    if num_bytes is None:
        return "?"
    if num_bytes >= 1e9:
        return f"{num_bytes / 1e9:.1f} GB"
    if num_bytes >= 1e6:
        return f"{num_bytes / 1e6:.0f} MB"
    if num_bytes >= 1e3:
        return f"{num_bytes / 1e3:.0f} kB"
    return f"{num_bytes} bytes"


def _known(name: str) -> ModelInfo:
    info = KNOWN_MODELS.get(name)
    if info is None:
        raise CheckpointError(f"unknown model {name!r}; known models: "
                              f"{', '.join(KNOWN_MODELS)}")
    return info


def model_url(info: ModelInfo) -> str | None:
    """The download URL, honouring ``HF_ENDPOINT`` (a Hugging Face mirror) like huggingface_hub.

    Safe because the file is checked against the pinned SHA-256 whatever server sends it.
    """
    if info.url is None:
        return None
    endpoint = os.environ.get("HF_ENDPOINT", "").strip().rstrip("/")
    if endpoint and info.url.startswith(_HF_DEFAULT + "/"):
        return endpoint + info.url[len(_HF_DEFAULT):]
    return info.url


# --------------------------------------------------------------------------------- locations
def bundled_model_path() -> Path | None:
    """The bundled demo checkpoint, or None when it is not installed.

    Searched in order: ``$SGPSAM_DEMO_MODEL`` (a file), then the package data
    ``SGPSAMLib/resources/sgpsam_demo.pt``.
    """
    env = os.environ.get("SGPSAM_DEMO_MODEL", "").strip()
    if env:
        candidate = Path(env).expanduser()
        if candidate.is_file():
            return candidate
        log.warning("SGPSAM_DEMO_MODEL=%s is not a file; ignoring it", env)
    bundled = _bundled_file()
    return bundled if bundled.is_file() else None


def _bundled_file() -> Path:
    return _BUNDLED_DIR / KNOWN_MODELS["demo"].filename


def _default_cache_dir() -> Path:
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "sgpsam"
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "sgpsam"
    return Path.home() / ".cache" / "sgpsam"


def cache_dir(create: bool = True) -> Path:
    """Folder for downloaded models: ``$SGPSAM_CACHE_DIR``, else ``~/.cache/sgpsam``.

    (``$XDG_CACHE_HOME/sgpsam`` when that is set; ``%LOCALAPPDATA%\\sgpsam`` on Windows.)

    Raises:
        SGPSAMError: ``create`` and the folder cannot be created (names it and the variable).
    """
    env = os.environ.get("SGPSAM_CACHE_DIR", "").strip()
    folder = Path(env).expanduser() if env else _default_cache_dir()
    if create:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SGPSAMError(f"cannot create the model cache folder {folder}: "
                              f"{exc.strerror or exc}; set SGPSAM_CACHE_DIR to a writable "
                              "folder") from exc
    return folder


def model_path_in_cache(name: str, directory: PathLike | None = None) -> Path:
    """Where a downloadable model is (or would be) stored; does not check anything."""
    folder = Path(directory) if directory is not None else cache_dir(create=False)
    return folder / _known(name).filename


# ------------------------------------------------------------------------------ verification
def sha256_file(path: PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + _SIDECAR_SUFFIX)


def write_verified_marker(path: PathLike, sha256: str) -> Path:
    """Record that ``path`` (as it is now: size, mtime) has hash ``sha256``; atomic write."""
    path = Path(path)
    stat = path.stat()
    record = {"sha256": sha256.lower(), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
              "file": path.name}
    sidecar = _sidecar(path)
    handle, tmp = tempfile.mkstemp(prefix=f".{sidecar.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(record, out)
        os.replace(tmp, sidecar)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return sidecar


def _marker_matches(path: Path, sha256: str) -> bool:
    try:
        record = json.loads(_sidecar(path).read_text(encoding="utf-8"))
        stat = path.stat()
        return (isinstance(record, dict) and record.get("sha256") == sha256.lower()
                and record.get("size") == stat.st_size
                and record.get("mtime_ns") == stat.st_mtime_ns)
    except (OSError, ValueError):
        return False


def _check_file(path: Path, sha256: str, verify: bool) -> str:
    """'ok', 'missing' or 'mismatch' for a cached file; hashes only when the sidecar is stale."""
    if not path.is_file():
        return "missing"
    if not verify and _marker_matches(path, sha256):
        return "ok"
    log.info("checking SHA-256 of %s", path)
    try:
        actual = sha256_file(path)
    except OSError as exc:
        log.warning("cannot read %s: %s", path, exc)
        return "mismatch"
    if actual != sha256.lower():
        log.warning("%s: SHA-256 %s does not match the published %s", path, actual, sha256)
        return "mismatch"
    try:
        write_verified_marker(path, actual)
    except OSError as exc:  # a read-only cache still works, it is just hashed every time
        log.info("cannot write the verification record next to %s: %s", path, exc)
    return "ok"


def cached_model_path(name: str, verify: bool = False,
                      directory: PathLike | None = None) -> Path | None:
    """Path of a downloaded model whose content matches the pinned SHA-256, else None.

    A file with a matching sidecar (same size and mtime) is trusted without hashing unless
    ``verify``; a file without one (e.g. copied in by hand) is hashed once and then recorded.
    """
    info = _known(name)
    if not info.downloadable:
        return None
    path = model_path_in_cache(name, directory)
    return path if _check_file(path, info.sha256 or "", verify) == "ok" else None


def model_status(name: str, verify: bool = False,
                 directory: PathLike | None = None) -> dict[str, Any]:
    """JSON-able status of one known model for listings (CLI ``models``, the Slicer module).

    ``state``: ``bundled`` | ``downloaded`` | ``unverified`` (a file without a valid record;
    only without ``verify``) | ``corrupt`` (hash mismatch) | ``missing``.
    """
    info = _known(name)
    record: dict[str, Any] = {
        "name": info.name, "title": info.title, "preset": info.preset,
        "licence": info.licence, "licence_url": info.licence_url, "url": model_url(info),
        "sha256": info.sha256, "size_bytes": info.size_bytes,
        "approx_bytes": info.size_bytes or info.approx_bytes,
        "downloadable": info.downloadable,
    }
    if not info.downloadable:
        path = bundled_model_path()
        record.update(present=path is not None, state="bundled" if path else "missing",
                      path=str(path) if path else None,
                      expected_path=str(_bundled_file()))
        return record
    path = model_path_in_cache(name, directory)
    if not path.is_file():
        state = "missing"
    elif not verify and not _marker_matches(path, info.sha256 or ""):
        state = "unverified"
    else:
        state = "downloaded" if _check_file(path, info.sha256 or "", verify) == "ok" \
            else "corrupt"
    present = state in ("downloaded", "unverified")
    record.update(present=present, state=state, path=str(path) if present else None,
                  expected_path=str(path))
    return record


def check_checkpoint_file(path: PathLike) -> None:
    """Refuse, with a plain message, a file that cannot be a checkpoint written by ``torch.save``.

    A cheap look at the first bytes, before ``torch.load`` would answer with its internals
    ("pop from empty list", a bare number, advice about ``weights_only``): a checkpoint is a zip
    archive (PyTorch >= 1.6) or a legacy pickle (first byte 0x80).

    Raises:
        CheckpointError: empty, truncated zip, or not a checkpoint (with what it looks like).
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({exc.strerror or exc})"
                              ) from exc
    accepted = ("expected a checkpoint written by torch.save: a SAM-Med3D .pth, a file from "
                "sgpsam train, or a state_dict")
    if not head:
        raise CheckpointError(f"{path}: the file is empty (0 bytes), not a checkpoint; an "
                              f"interrupted download or copy? {accepted}")
    if head.startswith(b"PK\x03\x04"):
        if not zipfile.is_zipfile(path):
            raise CheckpointError(f"{path}: a damaged or incomplete checkpoint (its zip "
                                  "archive has no end record); download or copy it again")
        return
    if head[0] == 0x80:  # pickle protocol >= 2: the legacy torch.save format
        return
    raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({_looks_like(head)}); "
                          f"{accepted}")


def _looks_like(head: bytes) -> str:
    """A few words on what a non-checkpoint file seems to be, from its first bytes."""
    known = ((b"\x1f\x8b", "a gzip file, such as a .nii.gz image"), (b"NRRD", "an NRRD image"),
             (b"\x89HDF", "an HDF5 file"), (b"\x89PNG", "a PNG image"),
             (b"%PDF", "a PDF document"), (b"{", "a JSON file"), (b"<", "an HTML or XML page"))
    for magic, what in known:
        if head.startswith(magic):
            return f"it looks like {what}"
    if len(head) >= 9 and head[8:9] == b"{":
        return "it looks like a safetensors file, which is not supported"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "unknown binary content"
    return "it looks like a text file"


# -------------------------------------------------------------------------------- resolution
def resolve_model(spec: PathLike, verify: bool = False, option: str | None = None) -> Path:
    """Turn a model name or a checkpoint path into an existing checkpoint file.

    The one resolver behind every place that takes a model (``sgpsam segment/info/batch/
    evaluate/demo``, ``train --init``, :func:`SGPSAMLib.build.load_model`, the Slicer module).
    A known name (a ``str`` in :data:`KNOWN_MODELS`) wins over a file of the same name in the
    working folder (write ``./demo`` for the file). Downloadable models must already be in the
    cache; nothing is downloaded here.

    Args:
        spec: a known model name, or a checkpoint file path (``str`` or ``os.PathLike``).
        verify: re-hash a downloaded model instead of trusting its verification record.
        option: the option or field the value came from (``--model``), named in messages.

    Raises:
        CheckpointError: unknown name and no such file, a folder, a model not downloaded yet
            (the message gives the ``sgpsam download`` command), a cached file that fails its
            SHA-256, or a missing bundled demo model.
    """
    text = os.fspath(spec)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    info = KNOWN_MODELS.get(text) if isinstance(spec, str) else None
    if info is not None:
        return _known_model_file(info, verify)
    label = f"{option} {text}" if option else f"model {text}"
    names = ", ".join(KNOWN_MODELS)
    if not text.strip():
        raise CheckpointError(f"{option or 'model'}: empty; expected a checkpoint file or a model "
                              f"name ({names})")
    path = Path(text).expanduser()
    if path.is_dir():
        raise CheckpointError(f"{label}: is a folder; expected a checkpoint file (.pt/.pth) or "
                              f"a model name ({names})")
    if not path.is_file():
        raise CheckpointError(f"{label}: checkpoint file not found, and not a known model name "
                              f"({names})")
    return path


def _known_model_file(info: ModelInfo, verify: bool) -> Path:
    """The file of a known model: the bundled copy, or the verified download in the cache."""
    if not info.downloadable:
        path = bundled_model_path()
        if path is None:
            raise CheckpointError(
                f"model {info.name!r} is not installed: expected {_bundled_file()} (or a file "
                "named by SGPSAM_DEMO_MODEL); reinstall the package, or choose another model or "
                "a checkpoint file")
        return path
    path = model_path_in_cache(info.name)
    state = _check_file(path, info.sha256 or "", verify)
    if state == "missing":
        raise CheckpointError(
            f"model {info.name!r} is not downloaded yet; run `sgpsam download {info.name}` "
            f"(about {format_size(info.size_bytes or info.approx_bytes)}, licence "
            f"{info.licence}) or pass a checkpoint file path (looked in {path.parent}; set "
            "SGPSAM_CACHE_DIR to use another cache folder)")
    if state == "mismatch":
        raise CheckpointError(
            f"model {info.name!r}: {path} does not match the published SHA-256 "
            f"{info.sha256} (incomplete or altered file); run "
            f"`sgpsam download {info.name} --force` to download it again")
    return path
