"""``sgpsam evaluate``: simulated-click evaluation of a model on a folder of labelled cases.

Torch is imported only when the command runs. With ``--json-progress`` every stdout line is a
JSON object (``start``, ``progress`` after each lesion, ``case`` per finished case, ``done``
with the summary, ``error``); otherwise progress goes to stderr (a bar on a terminal, plain
lines in a log). Ctrl-C or SIGTERM stops after the current lesion: the unfinished case is
dropped, the outputs are written for the finished cases, ``done`` says ``"stopped": true``,
exit code 0; a second Ctrl-C aborts at once. Creating the ``--stop-file`` stops it the same way.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..errors import SGPSAMError
from ..job import (
    ProgressLines,
    add_stop_file_option,
    json_safe,
    print_record,
    report_errors,
    stop_requests,
)
from ..options import LESION_UNITS, MODALITIES, PROMPT_MODES
from .common import add_session_options, note, one_line, warn

__all__ = ["register"]

_EPILOG = """\
protocol (per lesion = connected component of the target labels, or a whole label value with
--lesion-unit label): click 1 positive at the lesion's most interior voxel; each further click
at the most interior voxel of the largest error region (false negative -> positive, false
positive -> negative). Other lesions' voxels are ignored. Reported: Dice after each click,
Dice-AUC (mean Dice over the clicks), NSD at --nsd-tolerance mm, lesion size; summaries for
all lesions, lesions < 1 mL and >= 1 mL. With --out-json (or --out-plot) and matplotlib
installed, a Dice-per-click plot of the three groups is written too (eval_dice_per_click.png
beside eval.json below; pip install matplotlib if missing).

examples:
  sgpsam synth --out heldout --cases 10 --seed 20000 --diameter 3,15
  sgpsam evaluate --model demo --data heldout --clicks 5 --out-json eval.json --out-csv eval.csv
  sgpsam evaluate --model runs/sgp/best.pt --data Task03_Liver --labels 2 --device cuda
"""


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add the ``evaluate`` sub-command."""
    parser = commands.add_parser(
        "evaluate", parents=[common], help="simulated-click evaluation on labelled cases",
        description="Evaluate a model with the interactive session and simulated clicks on "
                    "every lesion of a folder of image/label pairs (MSD imagesTr/ + labelsTr/, "
                    "images/ + labels/, or case.nii.gz + case_label.nii.gz).",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--model", required=True, metavar="MODEL",
        help="checkpoint file, or a known model name (demo, sam_med3d_turbo)")
    add("--data", required=True, metavar="DIR", help="folder of image/label pairs")
    add("--clicks", type=int, default=5, metavar="K", help="clicks per lesion (default 5)")
    add("--out-json", metavar="FILE", help="write summary, cases and lesions as JSON")
    add("--out-csv", metavar="FILE", help="write one row per lesion as CSV")
    add("--out-plot", metavar="PNG",
        help="write the Dice-per-click plot (all lesions, < 1 mL, >= 1 mL; needs matplotlib); "
             "default with --out-json: <name>_dice_per_click.png beside it")
    add("--no-plot", action="store_true", help="write no Dice-per-click plot")
    add("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N")
    add("--labels", metavar="V[,V...]", help="target label values (default: every non-zero)")
    add("--lesion-unit", default="component", choices=LESION_UNITS,
        help="a lesion is a connected component (default) or a whole label value")
    add("--min-lesion-voxels", type=int, default=1, metavar="N",
        help="skip lesions smaller than N voxels (default 1)")
    add("--nsd-tolerance", type=float, default=2.0, metavar="MM",
        help="NSD tolerance in mm (default 2)")
    add("--modality", default="auto", choices=MODALITIES,
        help="intensity normalisation (default: auto)")
    add("--prompt-mode", default="latest", choices=PROMPT_MODES,
        help="which clicks the model sees (default: latest)")
    add("--max-cases", type=int, metavar="N", help="evaluate only the first N cases")
    add("--max-windows", type=int, default=8, metavar="N",
        help="most overlapping windows per lesion when it crosses a region border (default 8; "
             "1 = never extend)")
    add("--json-progress", action="store_true",
        help="print one JSON record per line on stdout (start, progress, case, done, error)")
    add_session_options(parser)
    add_stop_file_option(parser)
    parser.set_defaults(handler=_evaluate)


def _labels(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise SGPSAMError(f"--labels {text!r}: expected comma-separated integers, e.g. 1,2"
                          ) from None


class _CaseLines:
    """Text-mode progress over cases on stderr (see :class:`SGPSAMLib.job.ProgressLines`)."""

    def __init__(self) -> None:
        self.lines: ProgressLines | None = None

    def __call__(self, record: dict) -> None:
        event = record.get("event")
        if event == "start":
            self.lines = ProgressLines(record["total_cases"], "case")
        elif event == "case" and self.lines is not None:
            self.lines.update(self.lines.done + 1, f"{record.get('case')} {record.get('status')}")

    def close(self) -> None:
        if self.lines is not None:
            self.lines.close()


def _check_out(path: str | None, flag: str) -> Path | None:
    if not path:
        return None
    out = Path(path)
    if out.is_dir():
        raise SGPSAMError(f"{flag} {out}: is a folder; give a file name")
    if not out.parent.is_dir():
        raise SGPSAMError(f"{flag} {out}: folder {out.parent} does not exist")
    return out


def _plot_target(args: argparse.Namespace, out_json: Path | None) -> Path | None:
    """Where the Dice-per-click plot goes (None: no plot); checked before the evaluation."""
    from ..plots import INSTALL_HINT, default_dice_plot_path, matplotlib_available

    if args.no_plot:
        return None
    if args.out_plot:
        out = _check_out(args.out_plot, "--out-plot")
        if not matplotlib_available():
            raise SGPSAMError(f"--out-plot {out}: matplotlib is not installed: {INSTALL_HINT}")
        return out
    if out_json is None:
        return None
    if not matplotlib_available():
        note(f"no Dice-per-click plot: matplotlib is not installed ({INSTALL_HINT})")
        return None
    return default_dice_plot_path(out_json)


def _write_plot(summary: dict, out_plot: Path | None) -> Path | None:
    from ..plots import PlotUnavailable, write_dice_per_click

    if out_plot is None:
        return None
    try:
        return write_dice_per_click(summary, out_plot)
    except (PlotUnavailable, ValueError) as exc:
        warn(f"Dice-per-click plot not written: {one_line(exc)}")
        return None


def _evaluate(args: argparse.Namespace) -> int:
    from ..evaluation import evaluate

    if args.clicks < 1:
        raise SGPSAMError(f"--clicks {args.clicks}: expected an integer >= 1")
    if args.max_cases is not None and args.max_cases < 1:
        raise SGPSAMError(f"--max-cases {args.max_cases}: expected an integer >= 1")
    if args.min_lesion_voxels < 1:
        raise SGPSAMError(f"--min-lesion-voxels {args.min_lesion_voxels}: expected >= 1")
    out_json = _check_out(args.out_json, "--out-json")
    out_csv = _check_out(args.out_csv, "--out-csv")
    out_plot = _plot_target(args, out_json)
    labels = _labels(args.labels)
    text_progress = None if args.json_progress else _CaseLines()
    try:
        with report_errors(args.json_progress), \
                stop_requests(args.stop_file, note, "the current lesion") as stop:
            result = evaluate(
                args.model, args.data, clicks=args.clicks, device=args.device,
                progress=print_record if args.json_progress else text_progress, labels=labels,
                lesion_unit=args.lesion_unit, min_lesion_voxels=args.min_lesion_voxels,
                modality=args.modality, prompt_mode=args.prompt_mode,
                nsd_tolerance_mm=args.nsd_tolerance, max_cases=args.max_cases,
                max_windows=args.max_windows, stop=stop,
                keep_clicked=not args.all_components,
                zoom=not args.no_zoom)
    finally:
        if text_progress is not None:
            text_progress.close()
    if out_json is not None:
        result.write_json(out_json)
    if out_csv is not None:
        result.write_csv(out_csv)
    summary = result.summary
    plot = _write_plot(summary, out_plot)
    if args.json_progress:
        return 0
    if args.json:
        print(json.dumps(json_safe({**summary, "out_json": args.out_json,
                                     "out_csv": args.out_csv,
                                     "out_plot": str(plot) if plot else None})))
        return 0

    def fmt(value: Any) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    per_click = ", ".join(fmt(v) for v in summary["dice_per_click"])
    lines = [
        f"{'stopped' if summary['stopped'] else 'done'}: {summary['cases']} cases "
        f"({summary['cases_failed']} failed), {summary['lesions']} lesions, "
        f"{summary['seconds']:.1f} s on {summary['device']}",
        f"Dice per click: {per_click}",
        f"Dice-AUC {fmt(summary['dice_auc'])}, NSD@{summary['nsd_tolerance_mm']:g}mm "
        f"{fmt(summary['nsd'])}",
    ]
    for name, label in (("small", "< 1 mL"), ("large", ">= 1 mL")):
        group = summary[name]
        lines.append(f"lesions {label}: {group['lesions']}, Dice click 1 {fmt(group['dice_1'])}"
                     f", click {summary['clicks']} {fmt(group['dice_final'])}, "
                     f"NSD {fmt(group['nsd'])}")
    for row in result.cases:
        if row["status"] == "failed":
            lines.append(f"failed {row['case']}: {row['error']}")
    if plot is not None:
        lines.append(f"Dice-per-click plot: {plot}")
    print("\n".join(lines))
    return 0
