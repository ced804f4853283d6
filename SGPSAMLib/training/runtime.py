"""The run's machinery apart from the recipe: data-parallel helpers, RNG state that survives a
``weights_only`` checkpoint, the learning-rate schedule. (Records and stop flags are the job
protocol's, :mod:`SGPSAMLib.job`.)"""
from __future__ import annotations

import contextlib
import math
import os
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["DistInfo", "init_distributed", "any_rank", "barrier", "rng_state", "set_rng_state",
           "lr_factor"]


@dataclass
class DistInfo:
    world: int = 1
    rank: int = 0
    local_rank: int = 0
    owned: bool = False  # this process group was created by us (destroy it at the end)

    @property
    def active(self) -> bool:
        return self.world > 1


def init_distributed(device_hint: str) -> DistInfo:
    """torchrun's WORLD_SIZE/RANK/LOCAL_RANK -> process group (nccl on CUDA, else gloo)."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return DistInfo()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    owned = False
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and device_hint in ("auto", "cuda")
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if use_cuda else "gloo")
        owned = True
    return DistInfo(dist.get_world_size(), dist.get_rank(), local_rank, owned)


def any_rank(flag: bool, dist_info: DistInfo, device: torch.device) -> bool:
    if not dist_info.active:
        return flag
    import torch.distributed as dist

    value = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def barrier(dist_info: DistInfo) -> None:
    if dist_info.active:
        import torch.distributed as dist

        dist.barrier()


# ----------------------------------------------------------------------------------------------
# RNG state (weights_only-compatible) and schedule.

def rng_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"name": str(name), "keys": torch.from_numpy(keys.astype(np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        with contextlib.suppress(RuntimeError):
            torch.cuda.set_rng_state_all(state["cuda"])


def lr_factor(step: int, warmup: int, total: int, floor: float) -> float:
    """Linear warm-up to 1, then cosine down to ``floor`` at the last step."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

