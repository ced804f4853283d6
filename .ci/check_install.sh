#!/usr/bin/env bash
# CI: install the project the way a user does (non-editable, into a fresh virtual environment)
# and run it from another folder: the wheel must carry the bundled demo model, and
# `sgpsam demo`, `sgpsam models` and `SGPSAMLib.load_model("demo")` must find it there.
# Usage: bash .ci/check_install.sh   (PYTHON=python3.x to choose the interpreter)
set -euo pipefail

cd "$(dirname "$0")/.."
repo=$(pwd)
python_bin=${PYTHON:-python3}
work=$(mktemp -d "${TMPDIR:-/tmp}/sgpsam-install-check.XXXXXX")
trap 'rm -rf "$work"' EXIT

"$python_bin" -m venv "$work/venv"
pip=("$work/venv/bin/python" -m pip install --quiet)
# torch pinned: on this machine the plain line takes the local CPU wheel (see README, Set up).
"${pip[@]}" torch==2.13.0
"${pip[@]}" "$repo"   # not -e: a wheel is built and installed into site-packages

mkdir "$work/elsewhere"
cd "$work/elsewhere"   # no checkout here: only what the wheel installed can be used
site=$("$work/venv/bin/python" -c "import SGPSAMLib, pathlib; print(pathlib.Path(SGPSAMLib.__file__).parent)")
case "$site" in
  "$work/venv/"*) ;;
  *) echo "FAIL: SGPSAMLib imported from $site, not from the fresh virtual environment"; exit 1 ;;
esac
[ -f "$site/resources/sgpsam_demo.pt" ] || { echo "FAIL: the wheel lacks resources/sgpsam_demo.pt"; exit 1; }

"$work/venv/bin/sgpsam" models --json > models.json
"$work/venv/bin/sgpsam" demo --device cpu --out demo_out --json > demo.json
"$work/venv/bin/python" - "$site" <<'PY'
import json, sys
from pathlib import Path

site = Path(sys.argv[1])
listed = {m["name"]: m for m in json.loads(Path("models.json").read_text())["models"]}
assert listed["demo"]["state"] == "bundled", listed["demo"]
assert Path(listed["demo"]["path"]).parent == site / "resources", listed["demo"]["path"]
record = json.loads(Path("demo.json").read_text())
assert Path(record["model"]).resolve() == (site / "resources" / "sgpsam_demo.pt").resolve()
for name in ("mask", "overlay", "result"):
    assert Path(record["files"][name]).is_file(), record["files"]
assert 0.0 <= record["dice"] <= 1.0 and record["device"] == "cpu"

import SGPSAMLib
model = SGPSAMLib.load_model("demo")
assert model.config.preset == "demo" and not model.training
print(f"ok   installed wheel: sgpsam demo from {Path.cwd().name}/ used {record['model']} "
      f"(Dice {record['dice']:.3f}); load_model('demo') works")
PY
