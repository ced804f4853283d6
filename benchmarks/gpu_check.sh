#!/usr/bin/env bash
# One-call GPU check: on a machine with CUDA, install what is needed, run the CUDA tests
# (device "auto", session bf16/fp16 autocast, training AMP, DDP over NCCL) and the encoder,
# session and training-step benchmarks with --device cuda, and print ONE JSON summary on stdout
# (logs go to stderr). Budget: under 8 minutes in all (each step has its own time limit).
#
#   bash benchmarks/gpu_check.sh                 # on the GPU machine, from the repository root
#   bash benchmarks/gpu_check.sh --dry-run       # CPU, tiny sizes, no install: checks the script
#   bash benchmarks/gpu_check.sh --python .venv/bin/python   # use an existing environment
#
# Options: --dry-run (device cpu, tiny presets, no install), --python PY (skip the install and
# use PY), --summary FILE (also write the summary there; default $OUT/gpu_check.json when $OUT
# is set). Exit code 0 when every step passed (skipped steps are fine), 1 otherwise.
set -uo pipefail

cd "$(dirname "$0")/.."
dry_run=0
python_bin=""
summary_file=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry_run=1 ;;
    --python) python_bin=$2; shift ;;
    --summary) summary_file=$2; shift ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
if [ -z "$summary_file" ] && [ -n "${OUT:-}" ]; then summary_file="$OUT/gpu_check.json"; fi

started=$(date +%s)
work=$(mktemp -d "${TMPDIR:-/tmp}/sgpsam-gpu-check.XXXXXX")
trap 'rm -rf "$work"' EXIT
log() { echo "[gpu_check $(( $(date +%s) - started ))s] $*" >&2; }

if [ "$dry_run" = 1 ]; then
  device=cpu
  [ -z "$python_bin" ] && python_bin=$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)
else
  device=cuda
  if [ -z "$python_bin" ]; then
    venv=.venv-gpu
    if [ ! -x "$venv/bin/python" ]; then
      log "creating $venv and installing torch 2.13.0 (CUDA build from the plain index) ..."
      python3 -m venv "$venv" || exit 1
    fi
    # Plain index: on Linux that is the CUDA build. Both lines are no-ops when already there.
    timeout 300 "$venv/bin/python" -m pip install --quiet torch==2.13.0 >&2 || { log "torch install failed"; exit 1; }
    timeout 120 "$venv/bin/python" -m pip install --quiet -e ".[test]" >&2 || { log "package install failed"; exit 1; }
    python_bin=$venv/bin/python
  fi
fi

# step NAME LIMIT_S COMMAND...: run with a time limit; stdout -> $work/NAME.out, record rc/time.
step() {
  local name=$1 limit=$2
  shift 2
  log "$name: $(printf '%s ' "$@" | tr '\n' ' ' | cut -c1-160)"
  local t0=$(date +%s)
  timeout "$limit" "$@" > "$work/$name.out" 2> "$work/$name.err"
  local rc=$?
  echo "$rc $(( $(date +%s) - t0 ))" > "$work/$name.rc"
  [ "$rc" = 0 ] || { log "$name: exit $rc"; tail -5 "$work/$name.err" >&2; }
}

step environment 60 "$python_bin" -c '
import json, platform, torch
cuda = torch.cuda.is_available()
print(json.dumps({"python": platform.python_version(), "torch": torch.__version__,
                  "cuda_available": cuda, "torch_cuda": torch.version.cuda,
                  "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
                  "bf16_supported": bool(cuda and torch.cuda.is_bf16_supported())}))'

if [ "$dry_run" = 1 ]; then
  encoder=(--preset tiny --repeats 1); session=(--preset tiny --repeats 1); train_steps=1
else
  encoder=(--preset sam_med3d --repeats 5 --amp); session=(--preset sam_med3d --repeats 3)
  train_steps=20
fi
step tests 240 "$python_bin" -m pytest -q -p no:cacheprovider Testing/lib/test_cuda.py \
  Testing/lib/test_devices.py --junitxml="$work/tests.xml"
step bench_encoder 90 "$python_bin" benchmarks/bench_encoder.py --device "$device" "${encoder[@]}"
step bench_session 120 "$python_bin" benchmarks/bench_session.py --device "$device" "${session[@]}"
step bench_train_step 120 "$python_bin" benchmarks/bench_train_step.py --device "$device" \
  --steps "$train_steps"

"$python_bin" - "$work" "$device" "$dry_run" "$(( $(date +%s) - started ))" "$summary_file" <<'PY'
import json, sys
import xml.etree.ElementTree as ET
from pathlib import Path

work, device, dry_run, seconds, summary_file = Path(sys.argv[1]), *sys.argv[2:]


def parsed(text: str):
    """The JSON object a script printed (whole output, or its last JSON line)."""
    text = text.strip()
    for candidate in [text] + text.splitlines()[::-1]:
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


steps = {}
for name in ("environment", "tests", "bench_encoder", "bench_session", "bench_train_step"):
    skip = work / f"{name}.skip"
    if skip.exists():
        steps[name] = {"status": "skipped", "reason": skip.read_text().strip()}
        continue
    rc_file = work / f"{name}.rc"
    if not rc_file.exists():
        steps[name] = {"status": "not run"}
        continue
    rc, secs = (int(v) for v in rc_file.read_text().split())
    entry = {"status": "ok" if rc == 0 else ("timeout" if rc == 124 else "failed"),
             "exit_code": rc, "seconds": secs}
    out = (work / f"{name}.out").read_text(errors="replace")
    if name == "tests":
        xml = work / "tests.xml"
        if xml.exists():
            suite = ET.parse(xml).getroot()
            suite = suite.find("testsuite") if suite.tag == "testsuites" else suite
            total = int(suite.get("tests", 0))
            failed = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
            skipped = int(suite.get("skipped", 0))
            entry.update(passed=total - failed - skipped, failed=failed, skipped=skipped,
                         failures=[f"{c.get('classname')}::{c.get('name')}"
                                   for c in suite.iter("testcase")
                                   if c.find("failure") is not None or c.find("error") is not None])
        entry["tail"] = out.strip().splitlines()[-1:] if out.strip() else []
    else:
        entry["result"] = parsed(out)
        if entry["result"] is None and rc == 0:
            entry["status"] = "failed"
            entry["error"] = "no JSON object on stdout"
    if entry["status"] != "ok":
        entry["stderr_tail"] = (work / f"{name}.err").read_text(errors="replace").splitlines()[-5:]
    steps[name] = entry

summary = {"check": "gpu_check", "device": device, "dry_run": dry_run == "1",
           "seconds": int(seconds), "budget_seconds": 480,
           "ok": all(s["status"] in ("ok", "skipped") for s in steps.values()),
           "steps": steps}
text = json.dumps(summary, indent=2)
print(text)
if summary_file:
    Path(summary_file).parent.mkdir(parents=True, exist_ok=True)
    Path(summary_file).write_text(text + "\n")
sys.exit(0 if summary["ok"] else 1)
PY
