"""Model registry: ``train.py``/``test.py``/``evaluate.py`` pick a model by name and never
branch per model.

A model is a :class:`training.recipe.Recipe` subclass in its own package (``plain_glow.recipe``,
``ad_flow.recipe``, ...), whose module holds one instance, ``RECIPE``. The base class lists the
interface: the training side (``Config``, ``validate``, ``dataset``, ``build``, ``losses``,
``loss_weights``, ``sample``, and hooks with defaults such as ``initialize``, ``param_groups``,
``lr_factor``), the test-time side (``load_for_test``, ``generate``, ``eval_systems``,
``eval_density``) and the constants (``NAME``, ``DEFAULT_CHECKPOINT``, ``NEEDS_MIX``, ...).
"""

from __future__ import annotations

import importlib
from pathlib import Path

from torch import nn

from .checkpoint import load_checkpoint
from .recipe import Recipe

# The model test.py and evaluate.py use when --model is not given (the thesis's main model).
DEFAULT_MODEL = "ad-flow"

RECIPES: dict[str, str] = {
    "glow": "plain_glow.recipe",
    "ad-flow": "ad_flow.recipe",
    "mi-flow": "mi_flow.recipe",
    "pose-flow": "pose_flow.recipe",
    "content-ae": "content_ae.recipe",
}


def names() -> list[str]:
    return list(RECIPES)


def get(name: str) -> Recipe:
    """The recipe registered under ``name`` (its module imported on first use)."""
    if name not in RECIPES:
        raise ValueError(f"unknown model '{name}'; choose one of: {', '.join(RECIPES)}")
    try:
        return importlib.import_module(RECIPES[name]).RECIPE
    except ModuleNotFoundError as exc:
        raise ValueError(f"model '{name}' is registered but its package is missing ({exc})") \
            from None


def load_model(path: str | Path, device="cpu", expect: str | None = None) -> nn.Module:
    """The model of our checkpoint at ``path`` (any model: the checkpoint names it; ``expect``:
    refuse any other) rebuilt by its recipe's ``from_checkpoint``, in eval mode on ``device``."""
    ckpt = load_checkpoint(path, expect_model=expect)
    return get(ckpt["model"]).from_checkpoint(ckpt, path).to(device).eval()
