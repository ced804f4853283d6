"""Interactive-session latency: is the first click close to the encoder's own cost, and is the
next click in the same region a small fraction of it?

Builds a model preset with random weights (the architecture decides the cost, not the weights),
an in-memory CT-like 512 x 512 x 300 int16 volume (0.7 x 0.7 x 1.25 mm, one small lesion), and
prints one JSON object:

- ``encoder_s``: ``model.encode`` on a 128^3 tensor alone;
- ``first_click_s``: fresh session, ``set_volume`` + ``add_point`` (sampling, normalisation,
  encoding, decoding, mapping back), with its per-step breakdown;
- ``next_click_s``: another click in the same region (decode + map back only);
- ``first_over_encoder`` (target <= 1.3) and ``next_over_first`` (target <= 0.1);
- peak RSS, torch threads and the machine.

Medians (and minima: on a shared machine the minimum is the least disturbed run) of
``--repeats`` runs after one warm-up; encoder and first-click runs alternate so both see the
same load. Usage::

    python benchmarks/bench_session.py                 # SAM-Med3D size (slow on CPU)
    python benchmarks/bench_session.py --preset tiny   # quick
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import keep_heap  # noqa: E402

from SGPSAMLib.build import build_model  # noqa: E402
from SGPSAMLib.geometry import Volume  # noqa: E402
from SGPSAMLib.region import Region, map_logits_to_volume, sample_region  # noqa: E402
from SGPSAMLib.session import TIMING_KEYS, InteractiveSession  # noqa: E402

SHAPE_KJI = (300, 512, 512)
SPACING_IJK = (0.7, 0.7, 1.25)
LESION_IJK = (300, 230, 140)
LESION_RADIUS_MM = 9.0


def ct_like_volume(seed: int = 0) -> tuple[Volume, np.ndarray]:
    """Air around an elliptic body of soft tissue with noise, one brighter spherical lesion."""
    rng = np.random.default_rng(seed)
    nk, nj, ni = SHAPE_KJI
    matrix = np.diag([*SPACING_IJK, 1.0])
    matrix[:3, 3] = [-(ni - 1) * SPACING_IJK[0] / 2, -(nj - 1) * SPACING_IJK[1] / 2, -180.0]
    j, i = np.ogrid[:nj, :ni]
    body = ((i - ni / 2) / (0.45 * ni)) ** 2 + ((j - nj / 2) / (0.35 * nj)) ** 2 <= 1.0
    slab = np.where(body, np.int16(40), np.int16(-1000)).astype(np.int16)
    array = np.empty(SHAPE_KJI, dtype=np.int16)
    noise = rng.integers(-20, 21, size=(16, nj, ni), dtype=np.int16)
    for k in range(nk):
        array[k] = slab + noise[k % 16]
    li, lj, lk = LESION_IJK
    r = [int(np.ceil(LESION_RADIUS_MM / s)) for s in SPACING_IJK]
    kk, jj, ii = np.ogrid[lk - r[2]:lk + r[2] + 1, lj - r[1]:lj + r[1] + 1,
                          li - r[0]:li + r[0] + 1]
    sphere = (((ii - li) * SPACING_IJK[0]) ** 2 + ((jj - lj) * SPACING_IJK[1]) ** 2
              + ((kk - lk) * SPACING_IJK[2]) ** 2) <= LESION_RADIUS_MM ** 2
    block = array[lk - r[2]:lk + r[2] + 1, lj - r[1]:lj + r[1] + 1, li - r[0]:li + r[0] + 1]
    block[sphere] += 60
    volume = Volume(array, matrix, "ct_like")
    return volume, volume.ijk_to_ras_points(np.asarray(LESION_IJK, dtype=float))


class LesionShapedDecode:
    """Runs the model's real decoder (its cost is what we time) but returns logits of a sphere
    of ``LESION_RADIUS_MM`` around the newest click, so the mask has a small lesion's size.

    Random weights give arbitrary masks (often the whole crop), which would make map-back time
    depend on chance rather than on the lesion; ``--raw-logits`` keeps the model's own output.
    """

    def __init__(self, decode, crop_spacing_mm: float) -> None:
        self.decode = decode
        self.spacing = crop_spacing_mm

    def __call__(self, embedding, points, labels, mask_logits):
        real = self.decode(embedding, points, labels, mask_logits)
        size = real.shape[-1]
        cells = torch.arange(size, dtype=torch.float32, device=real.device) * 4 + 1.5
        grid = torch.stack(torch.meshgrid(cells, cells, cells, indexing="ij"), dim=-1)
        click = points[0, -1].to(torch.float32)
        distance_mm = self.spacing * (grid - click).norm(dim=-1)
        logits = (LESION_RADIUS_MM - distance_mm) / 3.0
        return (logits[None, None] + 0.0 * real.float()).to(real.dtype)


def _alloc_touch_seconds(megabytes: int = 100) -> float:
    """Time to allocate and first-touch fresh memory: very slow on some VMs, where it dominates
    every large temporary array (reported so timings can be read against it)."""
    start = time.perf_counter()
    block = np.ones(megabytes * (1 << 18), dtype=np.float32)
    seconds = time.perf_counter() - start
    del block
    return seconds


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="sam_med3d", help="model preset (default sam_med3d)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, mps or auto")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: as is)")
    parser.add_argument("--raw-logits", action="store_true",
                        help="map back the random model's own logits instead of a lesion-shaped "
                             "map (see LesionShapedDecode)")
    parser.add_argument("--extend", action="store_true",
                        help="allow border windows (off by default: random weights give masks "
                             "that fill the crop, which would time several encodes per click)")
    parser.add_argument("--keep-heap", action="store_true",
                        help="glibc: keep freed memory for reuse (see _keep_heap); on VMs where "
                             "first-touching memory is slow this separates our work from it")
    args = parser.parse_args(argv)
    kept_heap = keep_heap() if args.keep_heap else False
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(args.preset).eval()
    if not args.raw_logits:
        model.decode = LesionShapedDecode(model.decode, model.config.crop_spacing_mm)
    volume, lesion = ct_like_volume()

    # Encoder alone.
    options = dict(device=args.device, extend_at_border=args.extend)
    session = InteractiveSession(model, **options)
    device = session.device
    image = torch.randn(1, 1, 128, 128, 128, device=device)

    def encode() -> None:
        with torch.inference_mode(), session._autocast():
            model.encode(image)
        session._sync()

    encode()

    # Sampling alone (the session-side cost that scales with the volume).
    region = Region(tuple(lesion), 128, 1.5)
    sample_region(volume, region)
    sampling = [_timed(lambda: sample_region(volume, region)) for _ in range(args.repeats)]

    # Worst-case map-back: every low-res cell positive (a mask filling the crop).
    full = torch.ones(32, 32, 32)
    map_logits_to_volume(full, region, volume)
    map_full = [_timed(lambda: map_logits_to_volume(full, region, volume))
                for _ in range(args.repeats)]

    # First click: a fresh session each time.
    def first_click() -> tuple[float, dict, InteractiveSession]:
        fresh = InteractiveSession(model, **options)
        start = time.perf_counter()
        fresh.set_volume(volume)
        pred = fresh.add_point(lesion)
        return time.perf_counter() - start, pred.timings, fresh

    first_click()
    # Encoder and first click interleaved, so both see the same machine load.
    encoder, first, first_timings = [], [], []
    for _ in range(args.repeats):
        encoder.append(_timed(encode))
        seconds, timings, warm = first_click()  # the last session serves the next clicks
        first.append(seconds)
        first_timings.append(timings)
    breakdown = {key: _median([t[key] for t in first_timings]) for key in TIMING_KEYS}

    # Next clicks in the same region.
    offsets = [np.array([1.5, -1.0, 0.5]) * (n + 1) for n in range(args.repeats + 1)]
    warm.add_point(lesion + offsets[0])
    nexts, next_timings, voxels = [], [], []
    for offset in offsets[1:]:
        start = time.perf_counter()
        pred = warm.add_point(lesion + offset)
        nexts.append(time.perf_counter() - start)
        next_timings.append(pred.timings)
        voxels.append(pred.voxels)
    next_breakdown = {key: _median([t[key] for t in next_timings]) for key in TIMING_KEYS}

    enc, fst, nxt = _median(encoder), _median(first), _median(nexts)
    result = {
        "preset": args.preset,
        "device": str(device),
        "repeats": args.repeats,
        "volume": {"shape_kji": list(SHAPE_KJI), "dtype": "int16",
                   "spacing_ijk_mm": list(SPACING_IJK)},
        "extend_at_border": args.extend,
        "keep_heap": kept_heap,
        "logits": "model output" if args.raw_logits else
                  "lesion-shaped (real decode run, its output replaced; see LesionShapedDecode)",
        "encoder_s": round(enc, 4),
        "encoder_min_s": round(min(encoder), 4),
        "sample_region_s": round(_median(sampling), 4),
        "sample_region_min_s": round(min(sampling), 4),
        "first_click_s": round(fst, 4),
        "first_click_min_s": round(min(first), 4),
        "first_click_breakdown_s": {k: round(v, 4) for k, v in breakdown.items()},
        "next_click_s": round(nxt, 4),
        "next_click_min_s": round(min(nexts), 4),
        "next_click_breakdown_s": {k: round(v, 4) for k, v in next_breakdown.items()},
        "mask_voxels_next": voxels,
        "map_back_full_crop_s": round(_median(map_full), 4),
        "map_back_full_crop_min_s": round(min(map_full), 4),
        "first_over_encoder": round(fst / enc, 3),
        "next_over_first": round(nxt / fst, 4),
        "targets": {"first_over_encoder<=1.3": fst / enc <= 1.3,
                    "next_over_first<=0.1": nxt / fst <= 0.1},
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "torch_threads": torch.get_num_threads(),
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpu_count": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__, "numpy": np.__version__,
                    "load_avg_1m": round(os.getloadavg()[0], 2),
                    "alloc_touch_100mb_s": round(_alloc_touch_seconds(), 4)},
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
