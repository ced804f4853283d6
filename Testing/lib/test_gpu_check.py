"""benchmarks/gpu_check.sh: its CPU dry run exercises every step and prints the one JSON
summary a GPU run prints (the real run needs a CUDA machine; none was available here)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def test_dry_run_prints_one_json_summary(tmp_path: Path) -> None:
    summary_file = tmp_path / "gpu_check.json"
    result = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--python", sys.executable,
                             "--summary", str(summary_file)], capture_output=True, text=True,
                            cwd=tmp_path, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout)  # stdout is exactly one JSON document
    assert summary == json.loads(summary_file.read_text())
    assert summary["check"] == "gpu_check" and summary["device"] == "cpu"
    assert summary["dry_run"] is True and summary["ok"] is True
    assert summary["budget_seconds"] == 480 and 0 <= summary["seconds"] < 480
    steps = summary["steps"]
    assert set(steps) == {"environment", "tests", "bench_encoder", "bench_session",
                          "bench_train_step"}
    assert steps["environment"]["result"]["cuda_available"] is False
    tests = steps["tests"]
    assert tests["status"] == "ok" and tests["failed"] == 0 and tests["passed"] > 0
    assert tests["skipped"] >= 8  # the CUDA tests, skipped on a CPU
    assert steps["bench_encoder"]["result"]["benchmark"] == "image_encoder"
    assert steps["bench_encoder"]["result"]["device"] == "cpu"
    assert steps["bench_session"]["status"] == "ok" and steps["bench_session"]["result"]
    train = steps["bench_train_step"]
    assert train["status"] == "ok" and {"steps_per_s", "samples_per_s"} <= set(train["result"])
    assert train["result"]["steps"] == 1 and train["result"]["steps_per_s"] > 0
    assert "[gpu_check " in result.stderr  # the log goes to stderr


def test_unknown_option_is_refused() -> None:
    result = subprocess.run(["bash", str(SCRIPT), "--fast"], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 2 and "unknown option --fast" in result.stderr
