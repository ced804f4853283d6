"""Named training recipes: the options that made a shipped model, in one place.

A recipe is a dict of :class:`~SGPSAMLib.training.TrainConfig` fields. ``sgpsam train
--recipe NAME`` starts from it (explicit flags still win), the training-speed benchmark times
it, and the README quotes it, so the three cannot drift apart.
"""
from __future__ import annotations

from typing import Any

__all__ = ["RECIPES", "recipe"]

RECIPES: dict[str, dict[str, Any]] = {
    # The bundled demo model: from random weights, on a 2-core CPU, within an hour. Every
    # parameter is trained (there is no pretrained backbone to freeze), with the Zoom Loss;
    # RITM-style rounds (two trained, up to three played by the model between) with the
    # evaluation's clicks half of the time.
    "demo": {
        "preset": "demo", "mode": "finetune", "loss": "zoom", "lr": 5e-4, "batch_size": 2,
        "click_iters": 5, "rollout": True, "click_mode": "mixed", "interior_power": 2.0,
        "jitter_fraction": 0.5, "jitter_mm": 8.0,
    },
}


def recipe(name: str) -> dict[str, Any]:
    """A copy of recipe ``name``'s options."""
    if name not in RECIPES:
        raise KeyError(f"unknown recipe {name!r}; known: {sorted(RECIPES)}")
    return dict(RECIPES[name])
