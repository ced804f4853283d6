"""Named training recipes: the options that made a shipped model, in one place.

A recipe is a dict of :class:`~SGPSAMLib.training.TrainConfig` fields. ``sgpsam train
--recipe NAME`` starts from it (explicit flags still win), the training-speed benchmark times
it, and the README quotes it, so the three cannot drift apart.
"""
from __future__ import annotations

from typing import Any

__all__ = ["RECIPES", "recipe"]

RECIPES: dict[str, dict[str, Any]] = {
    # The bundled demo model: from random weights, on a 2-core CPU, within an hour
    # (scripts/train_demo_model.py feeds it its data). Every parameter is trained (there is no
    # pretrained backbone to freeze). Measured choices (README, "The demo model"):
    # - DiceCE, not the Zoom Loss: from scratch the Zoom Loss's voxel-balanced focal term, in
    #   which a small lesion's few voxels weigh as much as the whole background, made the model
    #   draw a blob several times larger than every small lesion;
    # - a high learning rate without tight gradient clipping: the gradient norm is ~5-10, so
    #   the default clip at 1 trained at a tenth of the nominal rate;
    # - RITM-style rounds (two trained, up to three played by the model between) with the
    #   evaluation's clicks half of the time, so that later clicks correct.
    "demo": {
        "preset": "demo", "mode": "finetune", "loss": "dicece", "lr": 2e-3,
        "weight_decay": 0.01, "grad_clip": 10.0, "batch_size": 2, "click_iters": 5,
        "rollout": True, "click_mode": "mixed", "coarse_weight": 0.2, "interior_power": 2.0,
        "jitter_fraction": 0.5, "jitter_mm": 8.0, "steps": 2600, "val_every": 400,
        "val_max_lesions": 40,
    },
}


def recipe(name: str) -> dict[str, Any]:
    """A copy of recipe ``name``'s options."""
    if name not in RECIPES:
        raise KeyError(f"unknown recipe {name!r}; known: {sorted(RECIPES)}")
    return dict(RECIPES[name])
