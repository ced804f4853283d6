"""``sgpsam batch``: segment a folder of volumes from seed points (markups files or a CSV).

Progress goes to stderr (a bar on a terminal, plain lines in a log), or, with
``--json-progress``, to stdout as one JSON object per line (events ``start``, ``progress``,
``case``, ``done``, ``error``) for a parent process such as Slicer's Batch tab. Ctrl-C or
SIGTERM stops cleanly: the current case is abandoned without leaving files, the summary is
written, ``done`` says ``"stopped": true``; a second Ctrl-C aborts at once.

Exit status: 0 every case ok or skipped (already done); 1 the run ended but a case failed, or
no case had seeds (nothing was segmented); 2 a usage, input, model or output error (bad
option, unreadable seeds CSV, a model that cannot be loaded, an unwritable --out), found before
the first case is segmented where possible. The model is loaded once, when the first case needs
it; the summary marks cases with warnings (an empty mask, a seed on background).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..errors import SGPSAMError
from ..job import ProgressLines, add_stop_file_option, print_record, report_errors, stop_requests
from ..options import COORDINATE_SPACES, MODALITIES, OUTPUT_FORMATS, PROMPT_MODES
from .common import EXIT_FAILED, EXIT_OK, add_session_options, note

__all__ = ["register"]

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

exit status:
  0 every case ok or skipped; 1 a case failed, or no case had seeds; 2 a usage, input, model or
  output error (nothing is segmented after it). Cases with an empty mask or a seed on
  background are 'ok' with a warning (summary column 'warnings', a line on stderr).

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
    parser.add_argument("--csv-space", default="RAS", type=str.upper, choices=COORDINATE_SPACES,
                        help="coordinate system of CSV rows without a 'space' value "
                             "(default: RAS, as Slicer shows points)")
    parser.add_argument("--format", default="nii.gz", choices=tuple(OUTPUT_FORMATS),
                        help="output file type (default: nii.gz)")
    parser.add_argument("--shard", metavar="I/N",
                        help="process only shard I of N (0-based), for cluster job arrays")
    parser.add_argument("--device", default="auto",
                        help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps")
    parser.add_argument("--overwrite", action="store_true",
                        help="redo cases that are already done (default: skip them)")
    parser.add_argument("--modality", default="auto", choices=MODALITIES,
                        help="intensity normalisation (default: auto)")
    parser.add_argument("--prompt-mode", default="latest", choices=PROMPT_MODES,
                        help="which clicks the model sees (default: latest)")
    parser.add_argument("--max-windows", type=int, default=8, metavar="N",
                        help="most overlapping windows per lesion when it crosses a region "
                             "border (default: 8; 1 = never extend)")
    parser.add_argument("--json-progress", action="store_true",
                        help="print one JSON object per line on stdout (start, progress, "
                             "case, done, error) instead of a progress bar")
    add_session_options(parser)
    add_stop_file_option(parser)
    parser.set_defaults(handler=_batch)


class _CaseLines:
    """Text-mode progress over cases on stderr (see :class:`SGPSAMLib.job.ProgressLines`):
    one line per failed, seedless or warned case, and the progress."""

    def __init__(self) -> None:
        self.lines: ProgressLines | None = None

    def __call__(self, event: dict) -> None:
        kind = event.get("event")
        if kind == "start":
            self.lines = ProgressLines(event["total"], "case")
            self.write(f"{event['total']} case(s) to process ({event['found']} found) -> "
                       f"{event['output']}")
        elif kind == "progress" and self.lines is not None:
            stage = event.get("stage", "")
            if stage == "segment" and event.get("lesions"):
                stage = f"lesion {event['lesion']}/{event['lesions']}"
            self.lines.describe(f"{event['case']} {stage}".strip())
        elif kind == "case":
            if event["status"] == "failed":
                self.write(f"{event['case']}: FAILED: {event['error']}")
            elif event["status"] == "no_seeds":
                self.write(f"{event['case']}: no seeds: {event['error']}")
            for warning in event.get("warnings") or []:
                self.write(f"{event['case']}: warning: {warning}")
            if self.lines is not None:
                self.lines.update(self.lines.done + 1, f"{event['case']} {event['status']}")

    def write(self, text: str) -> None:
        if self.lines is not None:
            self.lines.write(text)
        else:
            print(text, file=sys.stderr)

    def close(self) -> None:
        if self.lines is not None:
            self.lines.close()


def exit_status(counts: dict[str, int]) -> int:
    """0 all ok or skipped; 1 a case failed, or cases without seeds and none segmented."""
    done = counts.get("ok", 0) + counts.get("skipped", 0)
    if counts.get("failed", 0) or (counts.get("no_seeds", 0) and not done):
        return EXIT_FAILED
    return EXIT_OK


def _batch(args: argparse.Namespace) -> int:
    from ..batch import BatchConfig, parse_shard, run_batch

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
        extend_at_border=args.max_windows > 1, keep_clicked=not args.all_components,
        zoom=not args.no_zoom)
    lines = None if args.json_progress else _CaseLines()
    progress = print_record if args.json_progress else lines
    what = "the current lesion (the case is abandoned; nothing partial is written)"
    try:
        with report_errors(args.json_progress), \
                stop_requests(args.stop_file, lines.write if lines else note, what) as stop:
            summary = run_batch(config, progress=progress, stop=stop)
    finally:
        if lines is not None:
            lines.close()
    done = summary.done_event()
    if args.json and not args.json_progress:
        print(json.dumps(done))
    elif not args.json_progress:
        counts = done["counts"]
        warned = sum(1 for result in summary.results if result.warnings)
        state = "stopped" if summary.stopped else "done"
        print(f"{state}: {counts['ok']} ok, {counts['skipped']} skipped, "
              f"{counts['no_seeds']} without seeds, {counts['failed']} failed "
              f"({len(summary.results)}/{summary.total} cases, {summary.seconds:.1f} s)"
              + (f", {warned} with warnings" if warned else "")
              + f"; summary: {summary.summary_csv}")
    return exit_status(summary.counts)
