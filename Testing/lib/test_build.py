"""Checkpoint loading: accepted layouts, strict key checks, safety, self-describing round trip."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from SGPSAMLib.build import PRESETS, build_model, describe_checkpoint, load_model, save_checkpoint
from SGPSAMLib.errors import CheckpointError


@pytest.fixture(scope="module")
def tiny_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = build_model("tiny")
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.01 * torch.randn_like(param))
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same_weights(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> bool:
    loaded = model.state_dict()
    return loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)


@pytest.mark.parametrize("layout", ["official", "bare", "ddp", "state_dict"])
def test_accepted_layouts(tmp_path: Path, tiny_state: dict, layout: str) -> None:
    state = {"ddp": {f"module.{k}": v for k, v in tiny_state.items()}}.get(layout, tiny_state)
    payload = {"official": {"model_state_dict": state}, "state_dict": {"state_dict": state}}
    path = tmp_path / "ckpt.pth"
    torch.save(payload.get(layout, state), path)
    model = load_model(path, preset="tiny")
    assert not model.training
    assert _same_weights(model, tiny_state)


def test_self_describing_round_trip(tmp_path: Path, tiny_state: dict) -> None:
    model = build_model("tiny")
    model.load_state_dict(tiny_state)
    path = save_checkpoint(model, tmp_path / "ours.pth", metadata={"note": "unit test"})
    assert [p.name for p in tmp_path.iterdir()] == ["ours.pth"]  # no temp files left
    loaded = load_model(path)  # no preset needed: the config travels with the weights
    assert loaded.config == model.config
    assert _same_weights(loaded, tiny_state)
    assert loaded.checkpoint_metadata["note"] == "unit test"
    info = describe_checkpoint(path)
    assert info["preset"] == "tiny" and info["sgpm_blocks"] == [1, 3]
    assert info["config_source"] == "stored in checkpoint"
    assert info["num_parameters"] == sum(v.numel() for v in tiny_state.values())
    assert info["metadata"]["note"] == "unit test" and "library_version" in info["metadata"]
    assert len(info["sha256"]) == 64


def test_official_weights_into_sgp_sam_leave_sgpm_at_init(tmp_path: Path, tiny_state: dict) -> None:
    plain = {k: v for k, v in tiny_state.items() if ".sgpm." not in k}
    path = tmp_path / "official.pth"
    torch.save({"model_state_dict": plain}, path)
    model = load_model(path, preset="tiny")
    for key, value in model.state_dict().items():
        if ".sgpm." not in key:
            assert torch.equal(value, plain[key]), key
    for module in model.image_encoder.sgpm.values():  # zero-init output projection: identity
        assert torch.count_nonzero(module.fusion.expand.weight) == 0
        assert torch.count_nonzero(module.fusion.expand.bias) == 0


def test_key_mismatch_is_reported_exactly(tmp_path: Path, tiny_state: dict) -> None:
    state = dict(tiny_state)
    del state["mask_decoder.iou_token.weight"]
    state["image_encoder.extra.weight"] = torch.zeros(3)
    state["image_encoder.pos_embed"] = torch.zeros(1, 4, 4, 4, 48)
    path = tmp_path / "bad.pth"
    torch.save({"model_state_dict": state}, path)
    with pytest.raises(CheckpointError) as info:
        load_model(path, preset="tiny")
    text = str(info.value)
    assert str(path) in text and "'tiny' architecture" in text
    assert "missing keys (1): mask_decoder.iou_token.weight" in text
    assert "unexpected keys (1): image_encoder.extra.weight" in text
    shape_line = "image_encoder.pos_embed (1, 4, 4, 4, 48) vs (1, 8, 8, 8, 48)"
    assert f"mis-shaped keys (1): {shape_line}" in text


def test_other_architecture_is_rejected(tmp_path: Path, tiny_state: dict) -> None:
    path = tmp_path / "tiny_as_official.pth"
    torch.save({"model_state_dict": tiny_state}, path)
    with pytest.raises(CheckpointError, match="'sgp_sam' architecture") as info:
        load_model(path)  # no config stored: defaults to the full-size architecture
    assert "mis-shaped keys" in str(info.value) and "missing keys" in str(info.value)


class _Namespace:  # stands for argparse.Namespace inside a training checkpoint
    lr = 1e-4


def test_pickled_objects_are_refused(tmp_path: Path, tiny_state: dict) -> None:
    path = tmp_path / "train_ckpt.pth"
    torch.save({"model_state_dict": tiny_state, "args": _Namespace()}, path)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_model(path, preset="tiny")


@pytest.mark.parametrize("content,match", [
    (None, "not found"),
    (b"definitely not a checkpoint", "not a readable PyTorch checkpoint"),
    ([1, 2, 3], "expected a dict checkpoint"),
    ({"epoch": 3}, "no state_dict of tensors"),
])
def test_unusable_files(tmp_path: Path, content: object, match: str) -> None:
    path = tmp_path / "x.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(CheckpointError, match=match):
        load_model(path)


def test_unknown_preset() -> None:
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        build_model("huge")
    assert set(PRESETS) == {"sam_med3d", "sgp_sam", "tiny", "demo"}


def test_demo_preset_fits_the_bundle_budget() -> None:
    """The bundled demo model must stay under 25 MB as float32 and keep SAM-Med3D's voxel size
    and token grid (1.5 mm, 8^3) on its smaller 64^3 crop."""
    torch.manual_seed(0)
    model = build_model("demo")
    n_params = sum(p.numel() for p in model.parameters())
    assert 3_000_000 < n_params * 4 < 25_000_000
    assert model.config.image_size == 64 and model.config.crop_spacing_mm == 1.5
    assert model.config.image_size // model.config.patch_size == 8
    assert model.low_res_size == 32
    assert any(".sgpm." in name for name, _ in model.named_parameters())


def test_save_failure_leaves_nothing(tmp_path: Path) -> None:
    model = build_model("tiny")
    target = tmp_path / "missing_dir" / "model.pth"
    with pytest.raises(OSError):
        save_checkpoint(model, target)
    assert not target.parent.exists()
    assert os.listdir(tmp_path) == []
