"""Batch segmentation: a folder of volumes + seed points -> one labelmap per case + a summary.

``run_batch(BatchConfig(...))`` is what ``sgpsam batch`` and Slicer's Batch tab run. The
behaviours a user relies on, each a deliberate choice:

- **Cases.** :func:`find_volumes` lists NIfTI, NRRD and MetaImage files and DICOM series
  folders (a folder holding ``*.dcm`` files or files with the DICOM ``DICM`` marker) in the
  input folder (sub-folders too with ``recursive``), skipping hidden entries, ``*.seg.nrrd``
  files and the output folder. The case id is the path relative to the input folder without
  its format suffix (``sub/case01``), sorted, so every run and every shard sees the same list.
- **Seeds** come from ``<case>.mrk.json`` next to the image (also ``<case>.<anything>.mrk.json``,
  e.g. one file per lesion; a file goes to the case with the longest matching name; for a
  DICOM folder also ``*.mrk.json`` inside it), or from one CSV for the whole cohort whose
  ``case`` column holds the case id or, when unambiguous, the file name without suffix.
  Sign and lesion conventions: :mod:`SGPSAMLib.seeds`.
- **Lesions.** Lesion n (in order of first appearance) gets label value n. The prompts are
  reset between lesions but the region embeddings of the case are kept, and a lesion whose
  first positive seed lies in the central half of an already encoded region reuses it, so
  nearby lesions cost one encoder pass. A voxel claimed by an earlier lesion is never
  overwritten by a later one (the count of such voxels is reported per lesion). A lesion
  without a positive seed is skipped with a warning.
- **Outputs** go to ``<output>/<case id><.nii.gz|.nrrd|.seg.nrrd>`` on the input's exact grid
  (``.seg.nrrd``: one named, coloured segment per lesion), written atomically: a crash or a
  stop never leaves a partial file under the final name (and stray temporary files of an
  earlier hard kill are removed when the case is redone).
- **Failures** of one case (unreadable image, seed outside the image, out of memory ...) are
  reported as status ``failed`` with the message, and the run goes on. A case without seeds
  (or with negative seeds only) is reported as ``no_seeds`` and nothing is written.
- **Resume.** After every case a JSON line is appended to
  ``<output>/sgpsam_batch[_shardIofN].jsonl`` (flushed; a torn line from a kill is skipped and
  never swallows the next record) and the summary files are rewritten atomically. A case is
  skipped (status ``skipped``, earlier numbers kept) when some journal in the output folder
  says ``ok`` for the same image *content* (size, modification time and a hash of its first and
  last MiB), the same seed points, the same checkpoint (path, size and SHA-256) and the
  same output file, and that output is still the file written (size and SHA-256). A replaced
  image or checkpoint redoes the case; a missing or unreadable (damaged) output is redone; an
  output that still reads but was changed since (e.g. corrected by hand in Slicer) is kept,
  reported ``skipped`` with its numbers counted from the file and a warning. ``overwrite``
  redoes every case. Failed and ``no_seeds`` cases are retried.
- **One run per folder.** A run holds a lock in the output folder for its whole life (one per
  shard): a second run on the same folder (same shard, or unsharded while shards run) stops at
  once with "folder in use" (exit 2) instead of racing on the same files. A run killed with
  ``kill -9`` blocks nothing (the operating system drops its lock); its stale temporary files
  are removed by the next run.
- **Stop.** ``stop()`` is polled before every case and every lesion; a stop abandons the
  current case (nothing written for it), writes the summary and ends with ``stopped``.
- **Shards.** ``shard=(i, n)`` processes cases ``i, i + n, i + 2n, ...`` of the sorted list
  (``0 <= i < n``), so the ``n`` jobs of a cluster array cover every case exactly once; each
  writes its own journal and ``summary_shard{i}of{n}.csv/.json`` into the shared output
  folder. A final run without ``shard`` skips all finished cases and writes the full summary.
- **One model.** The checkpoint is loaded once per run (on the first case that needs it). A
  model that cannot be loaded ends the run with its error (a ``CheckpointError``, exit status 2
  on the command line) instead of failing every case in turn.
- **Checked before work.** A missing input folder, an input without volumes, an unreadable
  seed CSV, an unknown model and an output folder that cannot be written (a test file is
  created and removed) raise before the first case.
- **Warnings.** A lesion whose mask is empty, or a positive seed on background or air
  (:mod:`SGPSAMLib.result_checks`), leaves the case ``ok`` and is listed in its ``warnings``
  (summary column and JSON).
"""
from __future__ import annotations

import logging
import os
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Union

import numpy as np

from .batch_inputs import (
    CaseInput,
    SeedSource,
    check_shard,
    find_volumes,
    output_path,
    parse_shard,
    shard_cases,
)
from .batch_journal import (
    JOURNAL_PREFIX,
    append_journal,
    lock_output_folder,
    read_journals,
    reusable_record,
    shard_suffix,
    write_summary,
)
from .boxes import bbox_union
from .errors import CheckpointError, PromptError, SGPSAMError, VolumeIOError
from .geometry import Volume
from .io import read_volume, write_labelmap
from .job import StopFlag, is_stopped
from .options import COORDINATE_SPACES, IMAGE_SUFFIXES, OUTPUT_FORMATS, look_up_option
from .result_checks import background_level, background_point_warning
from .runfiles import fingerprint, remove_stale_temporaries, sha256_file
from .seeds import (
    SeedLesion,
    group_lesions,
    seeds_fingerprint,
)
from .segfile import SegmentInfo, default_color, write_segmentation

__all__ = ["BatchConfig", "BatchSummary", "CaseInput", "CaseResult", "find_volumes",
           "shard_cases", "parse_shard", "run_batch", "output_path", "OUTPUT_FORMATS",
           "IMAGE_SUFFIXES", "STATUSES", "SUMMARY_COLUMNS", "JOURNAL_PREFIX"]

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]
ProgressFn = Callable[[dict], None]

STATUSES = ("ok", "skipped", "no_seeds", "failed")
SUMMARY_COLUMNS = ("case", "image", "output", "lesions", "voxels", "volume_ml", "seconds",
                   "status", "error", "warnings")


@dataclass
class BatchConfig:
    """Everything a batch run needs (see the module docstring for the behaviours).

    Attributes:
        input: folder of volumes.
        output: folder for outputs, journal and summary (created if missing; not ``input``).
        model: checkpoint path, a known model name (``SGPSAMLib.models``), or a loaded model
            object with the session's interface.
        seeds: "markups" (``<case>.mrk.json`` files) or the path of one CSV.
        csv_space: coordinate system of CSV rows without a ``space`` value: "RAS" or "LPS".
        output_format: "nii.gz", "nrrd" (labelmaps) or "seg.nrrd" (Slicer segmentation).
        recursive: also search sub-folders.
        device: "auto", "cpu", "cuda", "cuda:N" or "mps".
        shard: (i, n) to process every n-th case starting at i (0-based), or None for all.
        resume: skip cases a journal marks finished (see module docstring).
        overwrite: redo every case (wins over ``resume``).
        modality: "auto", "CT" or "MR" intensity normalisation.
        prompt_mode: "latest" or "cumulative" (see ``InteractiveSession``).
        extend_at_border: follow large lesions across region borders with extra windows.
        max_windows: most windows per lesion.
        reuse_regions: let a lesion reuse an encoded region of an earlier lesion of the case.
        keep_clicked: drop predicted components no seed touches (``InteractiveSession``).
        zoom: choose each lesion's crop spacing by the model's zoom policy
            (``InteractiveSession``).
    """

    input: PathLike
    output: PathLike
    model: Any
    seeds: str | PathLike = "markups"
    csv_space: str = "RAS"
    output_format: str = "nii.gz"
    recursive: bool = False
    device: str = "auto"
    shard: tuple[int, int] | None = None
    resume: bool = True
    overwrite: bool = False
    modality: str = "auto"
    prompt_mode: str = "latest"
    extend_at_border: bool = True
    max_windows: int = 8
    reuse_regions: bool = True
    keep_clicked: bool = True
    zoom: bool = True


@dataclass
class CaseResult:
    """One summary row plus the details that go to the JSON summary and the journal."""

    case: str
    image: str
    output: str = ""
    lesions: int = 0
    voxels: int = 0
    volume_ml: float = 0.0
    seconds: float = 0.0
    status: str = "failed"
    error: str = ""
    lesion_details: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seeds_sha: str = ""
    model: str = ""
    output_format: str = ""
    finished_at: str = ""
    # Resume evidence (see batch_journal): what the case was computed from and what it wrote.
    image_fingerprint: str = ""
    model_fingerprint: str = ""
    session_options: dict[str, Any] = field(default_factory=dict)
    output_sha256: str = ""
    output_bytes: int = 0

    def row(self) -> dict[str, Any]:
        """The summary table row (SUMMARY_COLUMNS)."""
        return {"case": self.case, "image": self.image, "output": self.output,
                "lesions": self.lesions, "voxels": self.voxels,
                "volume_ml": round(self.volume_ml, 4), "seconds": round(self.seconds, 3),
                "status": self.status, "error": self.error, "warnings": "; ".join(self.warnings)}

    def record(self) -> dict[str, Any]:
        """Everything, JSON-ready (journal line and JSON summary entry)."""
        record = asdict(self)
        record.update(self.row())
        return record


@dataclass
class BatchSummary:
    """What a run did: one result per case handled, in case order, and where it wrote."""

    results: list[CaseResult]
    stopped: bool
    seconds: float
    total: int
    found: int
    summary_csv: Path
    summary_json: Path
    journal: Path
    unmatched_seed_cases: list[str] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(STATUSES, 0)
        for result in self.results:
            counts[result.status] = counts.get(result.status, 0) + 1
        return counts

    def done_event(self) -> dict[str, Any]:
        return {"event": "done", "stopped": self.stopped, "total": self.total,
                "processed": len(self.results), "counts": self.counts,
                "seconds": round(self.seconds, 3), "summary_csv": str(self.summary_csv),
                "summary_json": str(self.summary_json), "journal": str(self.journal),
                "unmatched_seed_cases": list(self.unmatched_seed_cases)}


class _Stopped(Exception):
    """Raised inside a case when the stop flag is seen: abandon it, write nothing."""


class _CallbackError(Exception):
    """A progress or stop callback raised: not the case's fault, so the run ends with it."""


class _ModelError(Exception):
    """The model could not be loaded: no case can succeed, so the run ends with the error."""


# ------------------------------------------------------------------------------------------------
# The run.

def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _one_line(exc: BaseException) -> str:
    """The error for the summary: our messages as they are, others prefixed by their type."""
    text = re.sub(r"\s*\n\s*", " ", str(exc)).strip()
    if isinstance(exc, (SGPSAMError, OSError)) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _model_id(model: Any) -> str:
    if isinstance(model, (str, os.PathLike)):
        return str(Path(model).resolve())
    meta = getattr(model, "checkpoint_metadata", None)
    if isinstance(meta, dict) and meta.get("path"):
        return str(Path(meta["path"]).resolve())
    return type(model).__name__


def session_options(config: BatchConfig) -> dict[str, Any]:
    """The options that shape a case's masks besides image, seeds and model (resume evidence:
    a case done with other options is redone)."""
    return {"modality": config.modality, "prompt_mode": config.prompt_mode,
            "extend_at_border": bool(config.extend_at_border),
            "max_windows": int(config.max_windows), "reuse_regions": bool(config.reuse_regions),
            "keep_clicked": bool(config.keep_clicked), "zoom": bool(config.zoom)}


def _model_fingerprint(model: Any) -> str:
    """The checkpoint's size and SHA-256: a replaced checkpoint at the same path redoes the
    cases, the same file copied or downloaded again (new modification time) does not."""
    if not isinstance(model, (str, os.PathLike)):
        meta = getattr(model, "checkpoint_metadata", None)
        if not (isinstance(meta, dict) and meta.get("path")):
            return ""
        model = meta["path"]
    try:
        return f"{Path(model).stat().st_size}:{sha256_file(Path(model))}"
    except OSError:
        return ""


def _resolve_model_spec(spec: Any) -> Any:
    """A path or known model name (-> its file, via the one resolver) or a model object."""
    if not isinstance(spec, (str, os.PathLike)):
        if not all(hasattr(spec, name) for name in ("encode", "decode", "config")):
            raise CheckpointError(f"model {type(spec).__name__}: expected a checkpoint path, a "
                                  "known model name or a model with encode/decode/config")
        return spec
    from .models import resolve_model

    return resolve_model(spec, option="--model")


def _check_writable(folder: Path) -> None:
    """VolumeIOError unless a file can be created in ``folder`` (tried, then removed)."""
    try:
        handle, name = tempfile.mkstemp(prefix=".sgpsam_write_test.", dir=folder)
        os.close(handle)
        os.unlink(name)
    except OSError as exc:
        raise VolumeIOError(f"output {folder}: cannot write there ({exc.strerror or exc}); "
                            "choose a folder you can write to") from exc


class _Runner:
    """State of one run: the model (loaded once), seeds, journal, results."""

    def __init__(self, config: BatchConfig, progress: ProgressFn | None,
                 stop: StopFlag) -> None:
        self.config = config
        self.progress = progress
        self.stop = stop
        self._model = None
        self.model_spec = _resolve_model_spec(config.model)
        self.model_id = _model_id(self.model_spec)
        self.model_fingerprint = _model_fingerprint(self.model_spec)
        self.session_options = session_options(config)

    # -- helpers ---------------------------------------------------------------------------

    def emit(self, event: dict) -> None:
        if self.progress is not None:
            try:
                self.progress(event)
            except Exception as exc:
                raise _CallbackError(exc) from exc

    def stopping(self) -> bool:
        try:
            return is_stopped(self.stop)
        except Exception as exc:
            raise _CallbackError(exc) from exc

    def model(self):
        if self._model is None:
            spec = self.model_spec
            if isinstance(spec, Path):
                from .build import load_model  # torch import only when a case needs it
                tick = time.perf_counter()
                try:
                    self._model = load_model(spec, device=self.device)
                except SGPSAMError as exc:
                    raise _ModelError(exc) from exc
                except Exception as exc:  # e.g. out of memory: still the model, not the case
                    raise _ModelError(CheckpointError(
                        f"model {spec}: cannot be loaded on {self.device} ({_one_line(exc)})"
                    )) from exc
                log.info("loaded %s in %.1f s", spec, time.perf_counter() - tick)
            else:
                self._model = spec
        return self._model

    def session(self):
        from .session import InteractiveSession
        c = self.config
        return InteractiveSession(self.model(), device=self.device, prompt_mode=c.prompt_mode,
                                  extend_at_border=c.extend_at_border,
                                  max_windows=c.max_windows, keep_clicked=c.keep_clicked,
                                  zoom=c.zoom)

    # -- one case --------------------------------------------------------------------------

    def previous_ok(self, case: CaseInput, out: Path, sha: str, image_fp: str) -> dict | None:
        """The journal record to keep for this case (skip it), or None to redo it."""
        c = self.config
        if c.overwrite or not c.resume:
            return None
        return reusable_record(self.journal.get(case.case_id), case.case_id,
                               str(case.path.resolve()), out, sha, image_fp, self.model_id,
                               self.model_fingerprint, c.output_format,
                               self.session_options)

    def segment(self, case: CaseInput, volume: Volume, lesions: list[SeedLesion],
                result: CaseResult, index: int) -> np.ndarray:
        """Label array with lesion n = n (first come, first kept)."""
        c = self.config
        for lesion in lesions:
            for seed in lesion.seeds:
                if not volume.contains_ras(seed.ras):
                    r, a, s = seed.ras
                    raise PromptError(f"seed {seed.source} (lesion {lesion.name!r}, RAS {r:.1f}, "
                                      f"{a:.1f}, {s:.1f} mm) is outside the image {case.path}")
        session = self.session()
        session.set_volume(volume, modality=c.modality)
        level = background_level(volume)
        dtype = np.uint8 if len(lesions) < 256 else np.uint16
        labels = np.zeros(volume.array.shape, dtype=dtype)
        for n, lesion in enumerate(lesions, start=1):
            self.emit(self.progress_event(index, case, "segment", n, len(lesions)))
            if self.stopping():
                raise _Stopped
            detail = {"name": lesion.name, "label_value": lesion.label_value,
                      "seeds": len(lesion.seeds),
                      "positive": sum(s.positive for s in lesion.seeds),
                      "voxels": 0, "volume_ml": 0.0, "overlap_voxels": 0,
                      "encoded_regions": 0}
            result.lesion_details.append(detail)
            if not lesion.has_positive:
                result.warnings.append(f"lesion {lesion.name!r}: no positive seed; skipped")
                continue
            session.reset()
            first = next((s for s in lesion.seeds if s.positive), None)
            if c.reuse_regions and first is not None:
                session.reuse_encoded_region(first.ras)
            encodes = 0
            for seed in lesion.seeds:
                prediction = session.add_point(seed.ras, positive=seed.positive)
                encodes += int(prediction.timings.get("encode", 0.0) > 0.0)
            detail["encoded_regions"] = encodes
            written, overlap = _assign(labels, session.state, lesion.label_value)
            detail["voxels"] = written
            detail["overlap_voxels"] = overlap
            detail["volume_ml"] = round(written * volume.voxel_volume_ml, 4)
            if written == 0:
                result.warnings.append(f"lesion {lesion.name!r}: empty mask")
            for seed in lesion.seeds:
                warning = seed.positive and background_point_warning(
                    volume, seed.ras, f"seed {seed.source}", level=level)
                if warning:
                    result.warnings.append(f"lesion {lesion.name!r}: {warning}")
        return labels

    def write(self, labels: np.ndarray, volume: Volume, lesions: list[SeedLesion],
              out: Path) -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries([out])
        if self.config.output_format == "seg.nrrd":
            segments = [SegmentInfo(lesion.label_value, lesion.name,
                                    default_color(lesion.label_value)) for lesion in lesions]
            write_segmentation(labels, volume, out, segments)
        else:
            write_labelmap(labels, volume, out)

    def progress_event(self, index: int, case: CaseInput, stage: str, lesion: int = 0,
                       lesions: int = 0) -> dict:
        done = self.processed
        eta = None
        if self.work_seconds and self.worked:
            eta = round(self.work_seconds / self.worked * (self.total - done), 1)
        return {"event": "progress", "step": done, "total_steps": self.total,
                "case": case.case_id, "case_index": index, "stage": stage, "lesion": lesion,
                "lesions": lesions, "eta_s": eta}

    def run_case(self, case: CaseInput, index: int) -> CaseResult:
        c = self.config
        start = time.perf_counter()
        out = output_path(c.output, case.case_id, c.output_format)
        result = CaseResult(case=case.case_id, image=str(case.path.resolve()),
                            model=self.model_id, output_format=c.output_format)
        try:
            self.emit(self.progress_event(index, case, "seeds"))
            seeds, why = self.seed_source.seeds_for(case)
            result.seeds_sha = seeds_fingerprint(seeds)
            result.image_fingerprint = fingerprint(case.path)
            result.model_fingerprint = self.model_fingerprint
            result.session_options = dict(self.session_options)
            previous = self.previous_ok(case, out, result.seeds_sha, result.image_fingerprint)
            if previous is not None:
                for key in ("output", "lesions", "voxels", "volume_ml", "seconds",
                            "lesion_details", "warnings", "finished_at", "output_sha256",
                            "output_bytes"):
                    if key in previous:
                        setattr(result, key, previous[key])
                result.status = "skipped"
                return result
            lesions = group_lesions(seeds)
            if not seeds or not any(lesion.has_positive for lesion in lesions):
                result.status = "no_seeds"
                result.error = why or "only negative seed points; nothing to segment"
                return result
            if out.resolve() == case.path.resolve():
                raise VolumeIOError(f"output {out} would overwrite the input image")
            self.emit(self.progress_event(index, case, "read"))
            volume = read_volume(case.path)
            labels = self.segment(case, volume, lesions, result, index)
            self.emit(self.progress_event(index, case, "write"))
            self.write(labels, volume, lesions, out)
            voxels = sum(d["voxels"] for d in result.lesion_details)
            result.output = str(out.resolve())
            result.output_sha256 = sha256_file(out)
            result.output_bytes = out.stat().st_size
            result.lesions = len(lesions)
            result.voxels = int(voxels)
            result.volume_ml = voxels * volume.voxel_volume_ml
            result.status = "ok"
        except (_Stopped, _CallbackError, _ModelError):
            raise
        except Exception as exc:  # one bad case must not stop the cohort
            log.warning("case %s failed: %s", case.case_id, exc, exc_info=log.isEnabledFor(
                logging.DEBUG))
            result.status = "failed"
            result.error = _one_line(exc)
            _free_device_memory()
        finally:
            result.seconds = time.perf_counter() - start if result.status != "skipped" \
                else result.seconds
            result.finished_at = _now()
        return result

    # -- the whole run ---------------------------------------------------------------------

    def run(self) -> BatchSummary:
        c = self.config
        started = time.perf_counter()
        in_dir, out_dir = Path(c.input), Path(c.output)
        look_up_option(c.output_format, OUTPUT_FORMATS, "output format")
        look_up_option(str(c.csv_space), COORDINATE_SPACES, "csv space", case_sensitive=False)
        if not in_dir.is_dir():
            raise VolumeIOError(f"input {in_dir}: not a folder; expected a folder of volumes")
        if out_dir.exists() and not out_dir.is_dir():
            raise VolumeIOError(f"output {out_dir}: is a file; expected a folder")
        if out_dir.resolve() == in_dir.resolve():
            raise VolumeIOError(f"output {out_dir}: is the input folder; choose another folder "
                                "so outputs are never mistaken for inputs")
        from .devices import resolve_device
        try:
            self.device = resolve_device(c.device)
        except ValueError as exc:
            raise SGPSAMError(f"device: {exc}") from None
        cases_all = find_volumes(in_dir, c.recursive, exclude=[out_dir])
        self.seed_source = SeedSource(c.seeds, c.csv_space, cases_all)
        unmatched = self.seed_source.unmatched
        if not cases_all:
            raise VolumeIOError(f"input {in_dir}: no volumes found (NIfTI, NRRD, MetaImage files "
                                "or DICOM series folders"
                                + (")" if c.recursive else "; --recursive searches sub-folders)"))
        cases = list(cases_all) if c.shard is None else shard_cases(cases_all, *c.shard)
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise VolumeIOError(f"output {out_dir}: cannot create folder ({exc})") from exc
        _check_writable(out_dir)
        lock = lock_output_folder(out_dir, c.shard)  # FolderInUse: another run is here
        try:
            return self.run_locked(cases, cases_all, unmatched, in_dir, out_dir, started)
        finally:
            lock.release()

    def run_locked(self, cases: list[CaseInput], cases_all: list[CaseInput],
                   unmatched: list[str], in_dir: Path, out_dir: Path,
                   started: float) -> BatchSummary:
        """The run proper, while this process holds the output folder's lock."""
        c = self.config
        suffix = shard_suffix(c.shard)
        journal_path = out_dir / f"{JOURNAL_PREFIX}{suffix}.jsonl"
        csv_path_out = out_dir / f"summary{suffix}.csv"
        json_path_out = out_dir / f"summary{suffix}.json"
        # Temporaries of this run's own files that a kill left behind (safe: we hold the lock).
        remove_stale_temporaries([csv_path_out, json_path_out] + [
            output_path(out_dir, case.case_id, c.output_format) for case in cases])
        self.journal = read_journals(out_dir) if c.resume and not c.overwrite else {}
        self.total = len(cases)
        self.processed = 0
        self.worked = 0
        self.work_seconds = 0.0
        meta = {"version": 1, "input": str(in_dir.resolve()), "output": str(out_dir.resolve()),
                "model": self.model_id, "format": c.output_format,
                "seeds": str(c.seeds) if str(c.seeds) == "markups"
                else str(Path(c.seeds).resolve()),
                "shard": list(c.shard) if c.shard else None, "found": len(cases_all),
                "total": len(cases), "started_at": _now(), "stopped": False,
                "unmatched_seed_cases": unmatched}
        self.emit({"event": "start", "total": len(cases), "total_steps": len(cases),
                   "found": len(cases_all), "shard": meta["shard"], "input": meta["input"],
                   "output": meta["output"], "format": c.output_format, "model": self.model_id,
                   "device": str(self.device), "resume": bool(c.resume and not c.overwrite)})
        results: list[CaseResult] = []
        stopped = False
        try:
            for index, case in enumerate(cases):
                if self.stopping():
                    stopped = True
                    break
                try:
                    result = self.run_case(case, index)
                except _Stopped:
                    log.info("stop requested: case %s abandoned, nothing written",
                             case.case_id)
                    stopped = True
                    break
                results.append(result)
                self.processed += 1
                if result.status not in ("skipped",):
                    self.worked += 1
                    self.work_seconds += result.seconds
                    append_journal(journal_path, result.record())
                meta["finished_at"] = _now()
                write_summary(results, csv_path_out, json_path_out, meta, SUMMARY_COLUMNS,
                              STATUSES)
                self.emit(dict(result.row(), event="case", index=index + 1, total=len(cases),
                               warnings=result.warnings))
        finally:
            meta["stopped"] = stopped
            meta["finished_at"] = _now()
            write_summary(results, csv_path_out, json_path_out, meta, SUMMARY_COLUMNS, STATUSES)
        summary = BatchSummary(results=results, stopped=stopped,
                               seconds=time.perf_counter() - started, total=len(cases),
                               found=len(cases_all), summary_csv=csv_path_out,
                               summary_json=json_path_out, journal=journal_path,
                               unmatched_seed_cases=unmatched)
        self.emit(summary.done_event())
        return summary


def run_batch(config: BatchConfig, progress: ProgressFn | None = None,
              stop: StopFlag = None) -> BatchSummary:
    """Segment every case of ``config.input`` (or of its shard); see the module docstring.

    Args:
        config: what to run.
        progress: called with event dicts: ``start``, ``progress`` (per stage of a case),
            ``case`` (one finished row), ``done`` (the summary); the same records
            ``sgpsam batch --json-progress`` prints.
        stop: polled before every case and lesion; True abandons the current case cleanly.

    Raises:
        SGPSAMError / OSError subclasses for problems found before the first case (missing
        input folder, bad seed CSV, unknown model, bad shard ...). Problems of one case never
        raise: they become a ``failed`` row.
    """
    if config.shard is not None:
        index, count = config.shard
        check_shard(int(index), int(count), "shard")
        config.shard = (int(index), int(count))
    try:
        return _Runner(config, progress, stop).run()
    except _CallbackError as exc:  # the caller's own error, as it raised it
        raise exc.__cause__ from None
    except _ModelError as exc:  # the model's error, once, instead of a failed row per case
        raise exc.args[0] from exc.__cause__


# ------------------------------------------------------------------------------------------------
# Small helpers.

def _assign(labels: np.ndarray, state, value: int) -> tuple[int, int]:
    """Write ``value`` where the session's mask is set and no earlier lesion is: (new, kept)."""
    mask = state.mask
    box = bbox_union(*(rs.bbox for rs in state.regions))
    if box is None:
        return 0, 0
    sub_mask = mask[box] != 0
    if int(np.count_nonzero(sub_mask)) != int(state.voxels):  # the box must hold the whole mask
        box = (slice(None),) * 3
        sub_mask = mask != 0
    sub = labels[box]
    free = sub == 0
    write = sub_mask & free
    written = int(np.count_nonzero(write))
    sub[write] = value
    return written, int(np.count_nonzero(sub_mask)) - written


def _free_device_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
