"""The files that make a batch run resumable and safe to run twice: journal, summary, lock.

- **Journal** ``sgpsam_batch[_shardIofN].jsonl``: one JSON line per finished case, appended
  and flushed to disk. A kill mid-append leaves a torn last line; the next append starts on a
  fresh line, and the reader skips torn text (recovering a record glued to it by an older
  version), so no record is ever lost.
- **Resume evidence**: each record holds fingerprints of the image (size, time and edge
  hashes), of the checkpoint, the seeds' hash, the session options that shape the masks
  (modality, prompting, windows, region reuse, clicked components, zoom) and the SHA-256 and
  size of the output written.
  :func:`check_output` says whether the output on disk is still that file, damaged, or changed.
- **Lock**: a run holds ``.sgpsam_batch.lock`` (``.sgpsam_batch_shardIofN.lock`` for a shard)
  in the output folder. A second run of the same shard, or an unsharded run while shards run
  (and the reverse), is refused with "folder in use" instead of racing on the same files.
- **Summary** files are rewritten atomically; stale temporaries of this run's own files (a
  kill during a rewrite) are removed when a run starts.
"""
from __future__ import annotations

import csv
import io as _io
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import SGPSAMError, VolumeIOError
from .io import atomic_write, read_volume
from .runfiles import FolderInUse, FolderLock, is_locked, sha256_file

__all__ = ["JOURNAL_PREFIX", "shard_suffix", "read_journals", "append_journal",
           "write_summary", "lock_output_folder", "check_output", "reusable_record",
           "count_output"]

log = logging.getLogger(__name__)

JOURNAL_PREFIX = "sgpsam_batch"
_RECORD_START = '{"case":'


def shard_suffix(shard: tuple[int, int] | None) -> str:
    return "" if shard is None else f"_shard{shard[0]}of{shard[1]}"


def _records_in(line: str) -> list[dict]:
    """The record(s) of one journal line: whole, or a complete one glued after torn text."""
    try:
        record = json.loads(line)
        return [record] if isinstance(record, dict) else []
    except json.JSONDecodeError:
        pass
    start = line.find(_RECORD_START, 1)
    while start > 0:
        try:
            record = json.loads(line[start:])
            return [record] if isinstance(record, dict) else []
        except json.JSONDecodeError:
            start = line.find(_RECORD_START, start + 1)
    return []


def read_journals(folder: Path) -> dict[str, dict]:
    """Latest record per case over every journal in ``folder`` (torn text skipped)."""
    latest: dict[str, dict] = {}
    for path in sorted(folder.glob(f"{JOURNAL_PREFIX}*.jsonl")):
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError as exc:
            log.warning("cannot read journal %s: %s", path, exc)
            continue
        for line in lines:
            for record in _records_in(line):
                if "case" not in record:
                    continue
                previous = latest.get(record["case"])
                if previous is None or str(record.get("finished_at", "")) >= \
                        str(previous.get("finished_at", "")):
                    latest[record["case"]] = record
    return latest


def append_journal(path: Path, record: dict) -> None:
    """Append one record as one line, on a fresh line even after a torn one; flushed to disk."""
    line = (json.dumps(record, separators=(",", ":")) + "\n").encode("utf-8")
    try:
        with open(path, "a+b") as handle:
            handle.seek(0, os.SEEK_END)
            if handle.tell() > 0:
                handle.seek(-1, os.SEEK_END)
                if handle.read(1) != b"\n":  # an earlier append was cut off by a kill
                    line = b"\n" + line
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        raise VolumeIOError(f"cannot write the batch journal {path}: {exc}") from exc


def _write_text_atomic(path: Path, text: str) -> None:
    with atomic_write(path) as tmp:
        try:
            tmp.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise VolumeIOError(f"cannot write {path}: {exc}") from exc


def write_summary(results: Sequence[Any], csv_path: Path, json_path: Path, meta: dict,
                  columns: Sequence[str], statuses: Sequence[str]) -> None:
    """summary.csv (``columns`` of ``result.row()``) and summary.json, both atomically."""
    buffer = _io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for result in results:
        writer.writerow(result.row())
    _write_text_atomic(csv_path, buffer.getvalue())
    counts = dict.fromkeys(statuses, 0)
    for result in results:
        counts[result.status] = counts.get(result.status, 0) + 1
    document = dict(meta, counts=counts, cases=[r.record() for r in results])
    _write_text_atomic(json_path, json.dumps(document, indent=1) + "\n")


def lock_output_folder(folder: Path, shard: tuple[int, int] | None) -> FolderLock:
    """Take this run's lock in ``folder``; FolderInUse if a conflicting run holds one.

    A shard conflicts with the same shard and with an unsharded run; an unsharded run
    conflicts with every run. (Locks die with their process, so a killed run blocks nothing.)
    """
    lock = FolderLock(folder, f".{JOURNAL_PREFIX}{shard_suffix(shard)}.lock", "batch run")
    lock.acquire()
    try:
        others = [folder / f".{JOURNAL_PREFIX}.lock"] if shard is not None else \
            sorted(folder.glob(f".{JOURNAL_PREFIX}_shard*.lock"))
        for other in others:
            holder = is_locked(other)
            if holder is not None:
                kind = "an unsharded batch run" if shard is not None else \
                    f"batch shard {other.name[len(JOURNAL_PREFIX) + 7:-5].replace('of', '/')}"
                raise FolderInUse(f"{folder} is in use by {kind} (process "
                                  f"{holder.get('pid', '?')} on {holder.get('host', '?')}); "
                                  "wait for it to finish or choose another folder")
    except BaseException:
        lock.release()
        raise
    return lock


def check_output(out: Path, record: dict) -> str:
    """Is the output a journal record describes still on disk as written?

    Returns "same" (same size and SHA-256), "missing", or "changed" (different content; the
    caller decides whether it still reads). Records of older versions without a hash give
    "changed" unless the file is missing.
    """
    try:
        size = out.stat().st_size
    except OSError:
        return "missing"
    if not out.is_file():
        return "missing"
    if record.get("output_bytes") != size or not record.get("output_sha256"):
        return "changed"
    try:
        return "same" if sha256_file(out) == record["output_sha256"] else "changed"
    except OSError:
        return "changed"


def count_output(out: Path, output_format: str) -> tuple[int, int, float] | None:
    """(lesions, voxels, mL) of an output file that reads, or None when it does not."""
    try:
        if output_format == "seg.nrrd":
            from .segfile import read_segmentation
            volume, _ = read_segmentation(out)
        else:
            volume = read_volume(out)
    except (SGPSAMError, OSError) as exc:
        log.debug("cannot read %s: %s", out, exc)
        return None
    labels = volume.array
    voxels = int(np.count_nonzero(labels))
    lesions = int(np.unique(labels[labels != 0]).size) if voxels else 0
    return lesions, voxels, voxels * volume.voxel_volume_ml


def reusable_record(record: dict | None, case_id: str, image: str, out: Path, seeds_sha: str,
                    image_fp: str, model_id: str, model_fp: str,
                    output_format: str, options: dict[str, Any] | None = None) -> dict | None:
    """The journal record a resumed run may keep for a case (skipping it), or None to redo it.

    Kept only for an ``ok`` record of the same image path *and content*, seeds, checkpoint
    (path and fingerprint), session ``options`` (None: not compared) and output path whose
    output is still the file written; a record without options (written by a version that did
    not record them) is redone. An output
    that was changed but still reads (corrected by hand?) is kept too, never overwritten: the
    record then carries the numbers counted from the file and a warning. A missing or
    unreadable output, or any other difference, means: redo.
    """
    if not record or record.get("status") not in ("ok", "skipped"):
        return None
    if (record.get("image") != image or record.get("output") != str(out.resolve())
            or record.get("seeds_sha") != seeds_sha or record.get("model") != model_id):
        return None
    if not image_fp or record.get("image_fingerprint") != image_fp:
        log.info("case %s: the image changed since it was done; redoing it", case_id)
        return None
    if record.get("model_fingerprint", "") != model_fp:
        log.info("case %s: the checkpoint changed since it was done; redoing it", case_id)
        return None
    if options is not None and record.get("session_options") != options:
        before = record.get("session_options")
        if not isinstance(before, dict):
            log.info("case %s: done without recorded session options; redoing it", case_id)
        else:
            changed = ", ".join(f"{k}: {before.get(k)!r} -> {options.get(k)!r}"
                                for k in sorted(set(before) | set(options))
                                if before.get(k) != options.get(k))
            log.info("case %s: session options changed since it was done (%s); redoing it",
                     case_id, changed)
        return None
    state = check_output(out, record)
    if state != "changed":
        return record if state == "same" else None
    counted = count_output(out, output_format)
    if counted is None:
        log.warning("case %s: output %s is damaged (unreadable); redoing the case", case_id,
                    out)
        return None
    lesions, voxels, volume_ml = counted
    note = (f"output {out.name} was changed after the run that wrote it; kept as it is "
            "(numbers counted from the file); --overwrite redoes the case")
    log.warning("case %s: %s", case_id, note)
    return dict(record, lesions=lesions, voxels=voxels, volume_ml=volume_ml,
                warnings=[*record.get("warnings", []), note])
