"""The command-line package (issue 13 item 7, issue 16 move 3): one module per command, and
parsing arguments or printing ``--help`` imports neither torch nor numpy nor SimpleITK."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import SGPSAMLib
from SGPSAMLib.cli import COMMAND_MODULES, build_parser, main

ROOT = Path(SGPSAMLib.__file__).resolve().parent.parent
HEAVY = ("torch", "numpy", "SimpleITK", "monai", "tqdm")

_PROBE = """
import contextlib, io, json, sys
from SGPSAMLib.cli import COMMAND_MODULES, build_parser, main
parser = build_parser()
parsed = [
    ["segment", "ct.nii.gz", "--model", "demo", "--point=-1,2,3,+", "--out", "m.nii.gz"],
    ["batch", "scans", "--model", "demo", "--out", "masks", "--shard", "0/2"],
    ["train", "--data", "d", "--out", "o", "--init", "demo", "--steps", "3"],
    ["evaluate", "--model", "demo", "--data", "d"],
    ["demo", "--clicks", "2"], ["info", "demo"], ["download", "--yes"], ["models"],
    ["synth", "--out", "s", "--cases", "1"],
]
for argv in parsed:
    parser.parse_args(argv)
codes = []
for argv in (["--help"], *([name, "--help"] for name in COMMAND_MODULES)):
    with contextlib.redirect_stdout(io.StringIO()):
        codes.append(main(argv))
print(json.dumps({"codes": codes, "loaded": sorted(sys.modules)}))
"""


def _python(code: str, path: list[str] | None = None) -> subprocess.CompletedProcess:
    entries = path or [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    environ = dict(os.environ, PYTHONPATH=os.pathsep.join(entries))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=environ, timeout=300, check=False)


def test_parsing_and_help_leave_torch_numpy_and_itk_unimported() -> None:
    result = _python(_PROBE)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["codes"] == [0] * (len(COMMAND_MODULES) + 1)
    loaded = set(report["loaded"])
    assert [m for m in HEAVY if m in loaded] == []
    assert "SGPSAMLib.build" not in loaded and "SGPSAMLib.session" not in loaded


def test_help_works_where_torch_cannot_be_imported(tmp_path: Path) -> None:
    """A Python without torch (Slicer before the PyTorch extension): --help still works."""
    (tmp_path / "torch.py").write_text("raise ImportError('no torch in this Python')\n")
    code = ("import sys; from SGPSAMLib.cli import main; "
            "sys.exit(main(['segment', '--help']) + main(['batch', '--help']))")
    result = _python(code, path=[str(tmp_path), str(ROOT)])
    assert result.returncode == 0, result.stderr
    assert "usage: sgpsam segment" in result.stdout and "usage: sgpsam batch" in result.stdout


def test_one_module_per_command() -> None:
    package = ROOT / "SGPSAMLib" / "cli"
    assert not list((ROOT / "SGPSAMLib").glob("cli_*.py"))  # the flat files are gone
    names = set(build_parser()._subparsers._group_actions[0].choices)  # noqa: SLF001
    assert names == set(COMMAND_MODULES)
    for name in COMMAND_MODULES:
        assert (package / f"{name}.py").is_file(), name
    assert len((package / "__init__.py").read_text().splitlines()) < 120


def test_constants_spelled_out_for_the_parser_match_the_library() -> None:
    from SGPSAMLib.cli import demo, segment
    from SGPSAMLib.io import WRITE_SUFFIXES
    from SGPSAMLib.synthetic import DEMO_SEED_BASE

    assert segment.WRITE_SUFFIXES == WRITE_SUFFIXES
    assert demo.DEMO_SEED_BASE == DEMO_SEED_BASE


def test_exit_codes_are_documented_in_the_help(capsys: pytest.CaptureFixture) -> None:
    assert main(["--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "exit codes: 0 done; 1 part of the work failed" in text
    assert main(["batch", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "0 every case ok or skipped; 1 a case failed, or no case had seeds; 2 a usage" in text
    assert main(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "Stop with Ctrl-C or SIGTERM: the run finishes the current step" in text
