"""CUDA paths: device "auto", the session's bf16 autocast (and fp16 on the model), training
with AMP, DDP over NCCL. Skipped without a CUDA device; ``benchmarks/gpu_check.sh`` runs them
on a GPU machine in one call (these tests have not run on the project's CPU-only VMs)."""
from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch

from SGPSAMLib.build import build_model, load_model
from SGPSAMLib.devices import resolve_device
from SGPSAMLib.geometry import Volume
from SGPSAMLib.io import write_labelmap, write_volume
from SGPSAMLib.session import InteractiveSession
from SGPSAMLib.synthetic import DEMO_SEED_BASE, make_case

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


def test_auto_picks_cuda() -> None:
    assert resolve_device("auto").type == "cuda"
    session = InteractiveSession(build_model("tiny"), device="auto")
    assert session.device.type == "cuda"
    assert next(session.model.parameters()).device.type == "cuda"


def _demo_masks(device: str, amp: bool) -> tuple[np.ndarray, dict]:
    case = make_case(DEMO_SEED_BASE + 3, modality="CT", n_lesions=1)
    model = load_model("demo", device=device)
    session = InteractiveSession(model, device=device, amp=amp)
    session.set_volume(case.volume, modality="CT")
    prediction = session.add_point(case.lesions[0].centre_ras)
    return np.asarray(prediction.mask).copy(), dict(prediction.timings)


def test_session_bf16_autocast_matches_fp32() -> None:
    """bf16 on CUDA (the session's default) gives the mask fp32 gives, on CPU and on CUDA."""
    cpu, _ = _demo_masks("cpu", amp=False)
    fp32, _ = _demo_masks("cuda", amp=False)
    bf16, timings = _demo_masks("cuda", amp=True)
    assert cpu.any(), "the demo model should find the held-out lesion"
    assert _dice(fp32, cpu) > 0.99
    assert _dice(bf16, fp32) > 0.95
    assert timings["encode"] > 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_model_autocast_fp16_and_bf16_stay_close(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    model = build_model("tiny").cuda().eval()
    image = torch.randn(1, 1, 128, 128, 128, device="cuda")
    with torch.inference_mode():
        reference = model.encode(image).float()
        with torch.autocast(device_type="cuda", dtype=dtype):
            mixed = model.encode(image).float()
    assert torch.isfinite(mixed).all()
    error = (mixed - reference).norm() / reference.norm()
    assert error < 0.05, f"{dtype}: relative error {error:.3g}"


def _dataset(folder) -> None:
    shape = (32, 32, 32)
    k, j, i = np.indices(shape)
    for n in range(3):
        label = (((k - 16) ** 2 + (j - 15 - n) ** 2 + (i - 16) ** 2) <= 36).astype(np.uint8)
        volume = Volume((label * 150.0 + 10.0).astype(np.float32), np.diag([1.5] * 3 + [1.0]))
        write_volume(volume, folder / f"c{n}.nii.gz")
        write_labelmap(label, volume, folder / f"c{n}_label.nii.gz")


def _config(data, out, **kw):
    from SGPSAMLib.training import TrainConfig

    kw.setdefault("steps", 2)
    return TrainConfig(data=str(data), out=str(out), preset="tiny", mode="finetune",
                       batch_size=1, click_iters=1, val_cases=("c2",), val_every=2,
                       model_overrides={"image_size": 64}, device="cuda", **kw)


@pytest.mark.parametrize("amp", ["bf16", "fp16", "off"])
def test_training_with_amp(tmp_path, amp: str) -> None:
    from SGPSAMLib.training import train

    _dataset(tmp_path)
    result = train(_config(tmp_path, tmp_path / f"run_{amp}", amp=amp))
    losses = [r["loss"] for r in result.history if r["event"] == "progress"]
    assert result.steps == 2 and losses and all(np.isfinite(losses))
    assert load_model(result.last).checkpoint_metadata["step"] == 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ddp_over_nccl_on_one_gpu() -> None:
    """A one-rank NCCL group: all_reduce and a DDP-wrapped model's backward pass on the GPU."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())})
    dist.init_process_group("nccl", rank=0, world_size=1)
    try:
        value = torch.ones(1, device="cuda")
        dist.all_reduce(value)
        assert value.item() == 1.0 and dist.get_backend() == "nccl"
        torch.manual_seed(0)
        model = DistributedDataParallel(build_model("tiny", image_size=64).cuda(),
                                        device_ids=[0])
        embedding = model.module.encode(torch.randn(1, 1, 64, 64, 64, device="cuda"))
        loss = embedding.float().pow(2).mean()
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
    finally:
        dist.destroy_process_group()


def _ddp_worker(rank: int, world: int, port: int, data: str, out: str) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                       "WORLD_SIZE": str(world), "RANK": str(rank), "LOCAL_RANK": str(rank)})
    from SGPSAMLib.training import train

    train(_config(data, out))


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_trainer_ddp_over_nccl_on_two_gpus(tmp_path) -> None:
    import torch.multiprocessing as mp

    _dataset(tmp_path)
    out = tmp_path / "run"
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path), str(out)), nprocs=2, join=True)
    assert load_model(out / "last.pt").checkpoint_metadata["step"] == 2
