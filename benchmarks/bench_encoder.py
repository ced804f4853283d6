"""Image-encoder speed: our exact fast path vs a plain ViT-B over 512 tokens (and the official
padded computation, optionally), measured in the same run, interleaved, median of repeats.

    python benchmarks/bench_encoder.py [--preset sam_med3d] [--repeats 5] [--with-padded]

Prints one JSON object. The acceptance figure is ``ratio_fast_vs_vit_b`` (target <= 2.0).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from SGPSAMLib.build import build_model
from SGPSAMLib.devices import resolve_device

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import keep_heap  # noqa: E402


def _timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="sam_med3d")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--with-padded", action="store_true",
                        help="also time the official padded attention once (slow on CPU)")
    parser.add_argument("--keep-heap", action="store_true",
                        help="glibc: reuse freed memory instead of first-touching new pages")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (GPU)")
    args = parser.parse_args()
    kept_heap = keep_heap() if args.keep_heap else False
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = build_model(args.preset).to(device).eval()
    cfg = model.config
    image = torch.randn(1, 1, cfg.image_size, cfg.image_size, cfg.image_size, device=device)
    layer = torch.nn.TransformerEncoderLayer(768, 12, 3072, activation="gelu", batch_first=True,
                                             norm_first=True)
    vit = torch.nn.TransformerEncoder(layer, 12, enable_nested_tensor=False).to(device).eval()
    tokens = torch.randn(1, 512, 768, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp)

    def run_fast() -> None:
        model.encode(image)

    def run_vit() -> None:
        vit(tokens)

    fast, base = [], []
    with torch.inference_mode(), autocast:
        run_fast()
        run_vit()  # warm-up
        for _ in range(args.repeats):  # interleaved so machine load hits both alike
            fast.append(_timed(run_fast, device))
            base.append(_timed(run_vit, device))
        padded = None
        if args.with_padded:
            model.image_encoder.set_attention_impl("padded")
            padded = _timed(run_fast, device)
            model.image_encoder.set_attention_impl("fast")
    med_fast, med_base = statistics.median(fast), statistics.median(base)
    result = {
        "benchmark": "image_encoder",
        "preset": args.preset,
        "device": str(device),
        "amp_bf16": args.amp,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "repeats": args.repeats,
        "keep_heap": kept_heap,
        "encoder_fast_s_median": round(med_fast, 4),
        "encoder_fast_s_all": [round(t, 4) for t in fast],
        "vit_b_512_tokens_s_median": round(med_base, 4),
        "vit_b_512_tokens_s_all": [round(t, 4) for t in base],
        "ratio_fast_vs_vit_b": round(med_fast / med_base, 3),
        "target_ratio": 2.0,
    }
    if padded is not None:
        result["encoder_official_padded_s"] = round(padded, 3)
        result["speedup_vs_official_padded"] = round(padded / med_fast, 2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
