"""Batch throughput and memory: cases per minute and peak RSS of ``run_batch`` on CT-sized cases.

Writes ``--cases`` synthetic CT-like volumes of 512 x 512 x 300 int16 (0.7 x 0.7 x 1.25 mm, air
around an elliptic body with noise, 1 or 2 brighter spherical lesions each) to a temporary
folder with a seed CSV (one positive click per lesion and a second, refining click), then runs
``SGPSAMLib.batch.run_batch`` once, as ``sgpsam batch`` does, and prints one JSON object:

- ``cases_per_minute`` over the run (model loading excluded, reported as ``model_load_s``) and
  ``case_seconds_median`` (read + segment + write of one case);
- ``peak_rss_mb`` (``VmHWM``, the process's high-water mark; ``ru_maxrss`` agrees) against the
  target ``target_rss_mb`` = 3072, ``rss_ok``; and ``rss_after_load_mb`` (model in memory);
- the machine (CPU count, torch threads, device, load average) and every parameter.

The data are generated in a child process so that generating them does not count in the peak.
With random weights (``--preset``) the decoder still runs (its cost is timed) but its logits are
replaced by a sphere of the lesion's radius around the newest click (``--raw-logits`` keeps the
model's own output, which for random weights often fills the crop and adds border windows).

Usage::

    python benchmarks/bench_batch.py --preset sam_med3d --cases 3       # ViT-B, slow on CPU
    python benchmarks/bench_batch.py --preset tiny --cases 2            # quick
    python benchmarks/bench_batch.py --model sam_med3d_turbo.pth --device cuda
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPE_KJI = (300, 512, 512)
SPACING_IJK = (0.7, 0.7, 1.25)
TARGET_RSS_MB = 3072


def _status_mb(field: str) -> float | None:
    """A ``/proc/self/status`` memory field (VmRSS, VmHWM) in MiB, None where absent."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _lesions(rng: np.random.Generator, count: int) -> list[tuple[tuple[int, int, int], float]]:
    """(centre ijk, radius mm) inside the body, away from the borders."""
    nk, nj, ni = SHAPE_KJI
    out = []
    for _ in range(count):
        radius = float(rng.uniform(8.0, 20.0))
        centre = (int(rng.integers(ni * 0.3, ni * 0.7)), int(rng.integers(nj * 0.35, nj * 0.65)),
                  int(rng.integers(nk * 0.2, nk * 0.8)))
        out.append((centre, radius))
    return out


def _write_case(path: Path, lesions, seed: int, compress: bool) -> None:
    """One CT-like volume (int16 HU) written with SimpleITK; built slab by slab (low memory)."""
    import SimpleITK as sitk

    rng = np.random.default_rng(seed)
    nk, nj, ni = SHAPE_KJI
    j, i = np.ogrid[:nj, :ni]
    body = ((i - ni / 2) / (0.45 * ni)) ** 2 + ((j - nj / 2) / (0.35 * nj)) ** 2 <= 1.0
    slab = np.where(body, np.int16(40), np.int16(-1000)).astype(np.int16)
    array = np.empty(SHAPE_KJI, dtype=np.int16)
    noise = rng.integers(-20, 21, size=(16, nj, ni), dtype=np.int16)
    for k in range(nk):
        array[k] = slab + noise[k % 16]
    for (li, lj, lk), radius in lesions:
        r = [int(np.ceil(radius / s)) for s in SPACING_IJK]
        kk, jj, ii = np.ogrid[lk - r[2]:lk + r[2] + 1, lj - r[1]:lj + r[1] + 1,
                              li - r[0]:li + r[0] + 1]
        sphere = (((ii - li) * SPACING_IJK[0]) ** 2 + ((jj - lj) * SPACING_IJK[1]) ** 2
                  + ((kk - lk) * SPACING_IJK[2]) ** 2) <= radius ** 2
        block = array[lk - r[2]:lk + r[2] + 1, lj - r[1]:lj + r[1] + 1,
                      li - r[0]:li + r[0] + 1]
        block[sphere] += 60
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING_IJK)
    image.SetOrigin((-(ni - 1) * SPACING_IJK[0] / 2, -(nj - 1) * SPACING_IJK[1] / 2, -180.0))
    sitk.WriteImage(image, str(path), useCompression=compress)


def _generate(folder: str, cases: int, suffix: str, lesions_max: int, seed: int) -> None:
    """Child process: write the cases and ``seeds.csv`` (RAS, as Slicer shows points)."""
    from SGPSAMLib.geometry import ijk_to_ras_matrix

    rng = np.random.default_rng(seed)
    nk, nj, ni = SHAPE_KJI
    origin = (-(ni - 1) * SPACING_IJK[0] / 2, -(nj - 1) * SPACING_IJK[1] / 2, -180.0)
    matrix = ijk_to_ras_matrix(SPACING_IJK, origin, np.eye(3), space="LPS")
    rows = ["case,x,y,z,label,lesion"]
    for n in range(cases):
        lesions = _lesions(rng, 1 + n % lesions_max)
        name = f"ct{n:03d}"
        _write_case(Path(folder) / f"{name}{suffix}", lesions, seed + n, suffix.endswith(".gz"))
        for m, (centre, radius) in enumerate(lesions, start=1):
            ras = matrix[:3, :3] @ np.asarray(centre, dtype=float) + matrix[:3, 3]
            second = ras + np.array([0.3, -0.4, 0.2]) * radius  # a refining click inside
            for point in (ras, second):
                rows.append(f"{name},{point[0]:.3f},{point[1]:.3f},{point[2]:.3f},+,"
                            f"lesion{m}")
    (Path(folder) / "seeds.csv").write_text("\n".join(rows) + "\n")


class SphereDecode:
    """Runs the real decoder (timed) but answers with a 12 mm sphere around the newest click,
    a lesion-sized mask (random weights would give arbitrary, often crop-filling masks)."""

    def __init__(self, decode, crop_spacing_mm: float) -> None:
        self.decode = decode
        self.spacing = crop_spacing_mm
        self.radius_mm = 12.0

    def __call__(self, embedding, points, labels, mask_logits):
        import torch

        real = self.decode(embedding, points, labels, mask_logits)
        size = real.shape[-1]
        cells = torch.arange(size, dtype=torch.float32, device=real.device) * 4 + 1.5
        grid = torch.stack(torch.meshgrid(cells, cells, cells, indexing="ij"), dim=-1)
        click = points[0, -1].to(torch.float32)
        distance_mm = self.spacing * (grid - click).norm(dim=-1)
        logits = (self.radius_mm - distance_mm) / 3.0
        return (logits[None, None] + 0.0 * real.float()).to(real.dtype)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="sam_med3d",
                        help="random-weight model preset: tiny, demo, sam_med3d (default)")
    parser.add_argument("--model", default=None, help="a checkpoint instead of --preset")
    parser.add_argument("--cases", type=int, default=3)
    parser.add_argument("--lesions", type=int, default=2, help="lesions per case cycle 1..N")
    parser.add_argument("--input-format", default=".nrrd", choices=(".nrrd", ".nii.gz"),
                        help="input files (.nrrd raw is quick to generate; .nii.gz is gzip)")
    parser.add_argument("--format", default="nii.gz", choices=("nii.gz", "nrrd", "seg.nrrd"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--max-windows", type=int, default=8)
    parser.add_argument("--raw-logits", action="store_true")
    parser.add_argument("--workdir", default=None, help="folder for data (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the generated data")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    work = Path(args.workdir or tempfile.mkdtemp(prefix="sgpsam_bench_batch_"))
    data = work / "in"
    data.mkdir(parents=True, exist_ok=True)
    tick = time.perf_counter()
    child = multiprocessing.get_context("spawn").Process(
        target=_generate, args=(str(data), args.cases, args.input_format, args.lesions,
                                args.seed))
    child.start()
    child.join()
    if child.exitcode != 0:
        raise SystemExit(f"data generation failed (exit code {child.exitcode})")
    generate_s = time.perf_counter() - tick

    import torch

    from SGPSAMLib.batch import BatchConfig, run_batch
    from SGPSAMLib.build import build_model, load_model, save_checkpoint

    if args.threads:
        torch.set_num_threads(args.threads)
    checkpoint = Path(args.model) if args.model else work / f"{args.preset}.pt"
    if not args.model:
        torch.manual_seed(0)
        save_checkpoint(build_model(args.preset), checkpoint, {"note": "random weights (bench)"})
    tick = time.perf_counter()
    model = load_model(checkpoint, device=args.device)
    load_s = time.perf_counter() - tick
    sphere = None
    if not args.raw_logits and not args.model:
        sphere = SphereDecode(model.decode, model.config.crop_spacing_mm)
        model.decode = sphere
    rss_after_load = _status_mb("VmRSS")

    case_seconds: list[float] = []

    def progress(event: dict) -> None:
        if event["event"] == "case":
            case_seconds.append(float(event["seconds"]))
            print(json.dumps({k: event[k] for k in ("case", "status", "seconds", "lesions",
                                                    "voxels", "error")}), file=sys.stderr)

    config = BatchConfig(input=data, output=work / "out", model=model,
                         seeds=str(data / "seeds.csv"), output_format=args.format,
                         device=args.device, overwrite=True, max_windows=args.max_windows,
                         extend_at_border=args.max_windows > 1)
    tick = time.perf_counter()
    summary = run_batch(config, progress=progress)
    run_s = time.perf_counter() - tick
    peak = _status_mb("VmHWM")
    maxrss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    peak_mb = peak if peak is not None else maxrss_mb
    result = {
        "benchmark": "batch",
        "preset": None if args.model else args.preset,
        "model": str(checkpoint) if args.model else None,
        "random_weights_sphere_logits": sphere is not None,
        "cases": args.cases,
        "shape_kji": list(SHAPE_KJI),
        "spacing_ijk_mm": list(SPACING_IJK),
        "input_format": args.input_format,
        "output_format": args.format,
        "lesions_total": sum(r.lesions for r in summary.results),
        "statuses": summary.counts,
        "errors": [r.error for r in summary.results if r.error],
        "generate_s": round(generate_s, 1),
        "model_load_s": round(load_s, 2),
        "run_s": round(run_s, 2),
        "cases_per_minute": round(60.0 * len(summary.results) / run_s, 3) if run_s else None,
        "case_seconds": [round(s, 2) for s in case_seconds],
        "case_seconds_median": round(statistics.median(case_seconds), 2)
        if case_seconds else None,
        "rss_after_load_mb": round(rss_after_load, 1) if rss_after_load else None,
        "peak_rss_mb": round(peak_mb, 1),
        "ru_maxrss_mb": round(maxrss_mb, 1),
        "target_rss_mb": TARGET_RSS_MB,
        "rss_ok": bool(peak_mb <= TARGET_RSS_MB),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "device": args.device,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "loadavg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "workdir": str(work) if args.keep else None,
    }
    if not args.keep and not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
