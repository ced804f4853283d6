"""``sgpsam batch``: segment a folder of volumes from seed points (markups files or a CSV).

Progress goes to stderr as a tqdm bar, or, with ``--json-progress``, to stdout as one JSON
object per line (events ``start``, ``progress``, ``case``, ``done``, ``error``) for a parent
process such as Slicer's Batch tab. SIGTERM (and a first Ctrl-C) stops cleanly: the current
case is abandoned without leaving files, the summary is written, ``done`` says
``"stopped": true`` and the exit code is 0. Exit code 2: a usage or input error found before
the first case. Failed cases do not change the exit code; they are rows of the summary.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import SGPSAMError
from .stopfile import add_stop_file_option, stop_file_flag

__all__ = ["register"]

_FORMATS = ("nii.gz", "nrrd", "seg.nrrd")

_DESCRIPTION = """\
Segment every volume in INPUT_DIR (NIfTI, NRRD, MHA files and DICOM series folders) from seed
points and write one labelmap per case on the input's exact grid, plus summary.csv and
summary.json (case, lesions, voxels, volume mL, seconds, status, error) in --out."""

_EPILOG = """\
seed points:
  --seeds markups (default): <case>.mrk.json next to each image (a point list saved from
    Slicer with File > Save Data); <case>.<tag>.mrk.json files are read too (one lesion per
    file, named <tag>). One point list = one lesion, named after the list. A point is
    negative when its label or description starts or ends with '-' or contains neg,
    negative, background or bg; a list named 'background' (or 'negative', 'bg') holds
    negative points for every lesion; 'lesion=NAME' in a point's description moves it to
    lesion NAME. Coordinates are read in the file's coordinate system (LPS or RAS).
  --seeds FILE.csv: header 'case,x,y,z,label,lesion' (label +/- or 1/0, default +; lesion a
    name, default 1; an optional 'space' column RAS|LPS per row, else --csv-space). 'case' is
    the case id (file name without suffix, with sub-folders 'sub/case' under --recursive).
  Lesion n (in order of appearance) gets label value n; a voxel keeps the first lesion's label.

outputs and resuming:
  <out>/<case>.nii.gz | .nrrd | .seg.nrrd (named, coloured segments for 3D Slicer), written
  atomically. Run the same command again to resume: cases already done with the same image,
  seeds and model are skipped (status 'skipped'); --overwrite redoes them. Cases without seeds
  are reported as 'no_seeds', failing cases as 'failed' with the message; the run goes on.

cluster job arrays:
  --shard i/n (0 <= i < n) processes cases i, i+n, i+2n, ... of the sorted case list, so n jobs
  cover every case exactly once; each writes summary_shard{i}of{n}.csv/.json into the shared
  --out. A last run without --shard skips everything done and writes the full summary.

examples:
  sgpsam batch scans/ --model demo --out masks/
  sgpsam batch scans/ --model sam_med3d_turbo --seeds seeds.csv --csv-space LPS \\
      --format seg.nrrd --out segs/ --recursive
  sgpsam batch scans/ --model model.pt --out masks/ --shard $SLURM_ARRAY_TASK_ID/8
"""


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add the ``batch`` sub-command to ``commands`` (an argparse sub-parsers object)."""
    parser = commands.add_parser(
        "batch", parents=[common], help="segment a folder of volumes from seed files",
        description=_DESCRIPTION, epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", metavar="INPUT_DIR", help="folder of volumes")
    parser.add_argument("--model", required=True, metavar="MODEL",
                        help="checkpoint file, or a known model name (demo, sam_med3d_turbo)")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output folder (created if missing; not INPUT_DIR)")
    parser.add_argument("--recursive", action="store_true", help="also search sub-folders")
    parser.add_argument("--seeds", default="markups", metavar="markups|FILE.csv",
                        help="where seed points come from (default: markups)")
    parser.add_argument("--csv-space", default="RAS", type=str.upper, choices=("RAS", "LPS"),
                        help="coordinate system of CSV rows without a 'space' value "
                             "(default: RAS, as Slicer shows points)")
    parser.add_argument("--format", default="nii.gz", choices=_FORMATS,
                        help="output file type (default: nii.gz)")
    parser.add_argument("--shard", metavar="I/N",
                        help="process only shard I of N (0-based), for cluster job arrays")
    parser.add_argument("--device", default="auto",
                        help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps")
    parser.add_argument("--overwrite", action="store_true",
                        help="redo cases that are already done (default: skip them)")
    parser.add_argument("--modality", default="auto", choices=("auto", "CT", "MR"),
                        help="intensity normalisation (default: auto)")
    parser.add_argument("--prompt-mode", default="latest", choices=("latest", "cumulative"),
                        help="which clicks the model sees (default: latest)")
    parser.add_argument("--max-windows", type=int, default=8, metavar="N",
                        help="most overlapping windows per lesion when it crosses a region "
                             "border (default: 8; 1 = never extend)")
    parser.add_argument("--json-progress", action="store_true",
                        help="print one JSON object per line on stdout (start, progress, "
                             "case, done, error) instead of a progress bar")
    add_stop_file_option(parser)
    parser.set_defaults(handler=_batch)


def _print_json(record: dict) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


class _StopHandlers:
    """SIGTERM -> stop; first SIGINT -> stop (with a note), second -> KeyboardInterrupt."""

    def __init__(self, event: threading.Event, notify: Callable[[str], None]) -> None:
        self.event = event
        self.notify = notify
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> _StopHandlers:
        if threading.current_thread() is not threading.main_thread():
            return self
        self.previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._on_term)
        self.previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._on_int)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def _on_term(self, signum: int, frame: object) -> None:
        self.event.set()

    def _on_int(self, signum: int, frame: object) -> None:
        if self.event.is_set():
            raise KeyboardInterrupt
        self.event.set()
        self.notify("stopping after the current lesion (the case is abandoned, nothing partial "
                    "is written); press Ctrl-C again to abort at once")


class _Bar:
    """tqdm progress over cases on stderr (plain lines when tqdm is missing)."""

    def __init__(self) -> None:
        self.bar = None

    def __call__(self, event: dict) -> None:
        kind = event.get("event")
        if kind == "start":
            try:
                from tqdm import tqdm
            except ImportError:  # pragma: no cover - tqdm is a dependency
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=event["total"], unit="case", file=sys.stderr,
                                dynamic_ncols=True)
            self.write(f"{event['total']} case(s) to process ({event['found']} found) -> "
                       f"{event['output']}")
        elif kind == "progress" and self.bar is not None:
            stage = event.get("stage", "")
            if stage == "segment" and event.get("lesions"):
                stage = f"lesion {event['lesion']}/{event['lesions']}"
            self.bar.set_description_str(f"{event['case']} {stage}".strip(), refresh=True)
        elif kind == "case":
            if event["status"] == "failed":
                self.write(f"{event['case']}: FAILED: {event['error']}")
            elif event["status"] == "no_seeds":
                self.write(f"{event['case']}: no seeds: {event['error']}")
            if self.bar is not None:
                self.bar.update(1)
                self.bar.set_postfix_str(event["status"])

    def write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _batch(args: argparse.Namespace) -> int:
    from .batch import BatchConfig, parse_shard, run_batch

    shard = parse_shard(args.shard) if args.shard else None
    if args.max_windows < 1:
        raise SGPSAMError(f"--max-windows {args.max_windows}: expected an integer >= 1")
    seeds = args.seeds
    if seeds != "markups" and not Path(seeds).is_file():
        raise SGPSAMError(f"--seeds {seeds}: no such file; expected 'markups' or a CSV file")
    config = BatchConfig(
        input=Path(args.input), output=Path(args.out), model=args.model, seeds=seeds,
        csv_space=args.csv_space, output_format=args.format, recursive=args.recursive,
        device=args.device, shard=shard, overwrite=args.overwrite, modality=args.modality,
        prompt_mode=args.prompt_mode, max_windows=args.max_windows,
        extend_at_border=args.max_windows > 1)
    stop = threading.Event()
    bar = None if args.json_progress else _Bar()
    progress = _print_json if args.json_progress else bar

    def notify(text: str) -> None:
        if bar is not None:
            bar.write(text)
        else:
            print(text, file=sys.stderr)

    try:
        with _StopHandlers(stop, notify):
            summary = run_batch(config, progress=progress,
                                stop=stop_file_flag(args.stop_file, stop.is_set))
    except (SGPSAMError, OSError) as exc:
        if args.json_progress:
            _print_json({"event": "error", "message": " ".join(str(exc).split())})
        raise
    finally:
        if bar is not None:
            bar.close()
    done = summary.done_event()
    if args.json and not args.json_progress:
        print(json.dumps(done))
    elif not args.json_progress:
        counts = done["counts"]
        state = "stopped" if summary.stopped else "done"
        print(f"{state}: {counts['ok']} ok, {counts['skipped']} skipped, "
              f"{counts['no_seeds']} without seeds, {counts['failed']} failed "
              f"({len(summary.results)}/{summary.total} cases, {summary.seconds:.1f} s); "
              f"summary: {summary.summary_csv}")
    return 0
