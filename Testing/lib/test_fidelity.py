"""Fidelity to the official SAM-Med3D code (vit_b_ori) on the shared reference fixture.

The fixture holds what the official implementation computes with deterministic stand-in
weights; the checkpoint goes through the normal loader, as a user's file would.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from SGPSAMLib.build import load_model

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures"
pytestmark = pytest.mark.skipif(not (FIXTURES / "reference_weights.py").is_file(),
                                reason=f"reference fixtures not found at {FIXTURES}")


@pytest.fixture(scope="module")
def reference():
    spec = importlib.util.spec_from_file_location("reference_weights",
                                                  FIXTURES / "reference_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def official_checkpoint(tmp_path_factory, reference) -> Path:
    return reference.save_official_checkpoint(tmp_path_factory.mktemp("ckpt") / "off.pth", seed=0)


@pytest.mark.parametrize("preset", ["sam_med3d", "sgp_sam"])
def test_reproduces_official_outputs(official_checkpoint: Path, reference, preset: str) -> None:
    expected = np.load(FIXTURES / "sam_med3d_reference_seed0.npz")
    model = load_model(official_checkpoint, preset=preset)
    assert model.config.preset == preset
    with torch.inference_mode():
        embedding = model.encode(reference.reference_input(0))
        ref_emb = expected["image_embedding"]
        rel = np.linalg.norm(embedding.numpy() - ref_emb) / np.linalg.norm(ref_emb)
        assert rel <= 1e-4, f"embedding relative error {rel:.2e}"
        np.testing.assert_allclose(model.prompt_encoder.get_dense_pe().numpy(),
                                   expected["dense_pe"], atol=1e-5)
        points = torch.from_numpy(expected["points"])[None]
        labels = torch.from_numpy(expected["labels"])[None]
        previous = torch.zeros(1, 1, 32, 32, 32)
        # Decode from our own embedding: the whole chain, not just the decoder.
        for step in (1, 2, 3):
            sparse, dense = model.prompt_encoder(points[:, :step], labels[:, :step], previous)
            np.testing.assert_allclose(sparse.numpy(), expected[f"sparse_{step}"], atol=1e-4)
            if step == 1:
                np.testing.assert_allclose(dense.numpy(), expected["dense_1"], atol=1e-4)
            logits = model.decode(embedding, points[:, :step], labels[:, :step], previous)
            diff = np.abs(logits.numpy() - expected[f"low_res_logits_{step}"]).max()
            assert diff <= 1e-3, f"step {step}: logits max abs diff {diff:.2e}"
            previous = logits
    if preset == "sgp_sam":
        assert model.gate_statistics() == {f"block{i}": 1.0 for i in (2, 5, 8, 11)}
