"""``training.registry.load_model`` rebuilds every model kind from a tiny checkpoint of its own:
the same class, in eval mode, with the very weights that were saved."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from glow.io import CheckpointError
from training import registry
from training.checkpoint import save_checkpoint
from training.config import from_dict

GLOW = {"img_size": 16, "n_flow": 2, "n_block": 2, "hidden": 8}
TINY = {
    "glow": GLOW,
    "ad-flow": {"cls_hidden": "16", "n_classes": 3},  # plus --glow: the tiny Glow's file
    "mi-flow": {**GLOW, "mi_weight": 0.01, "mi_hidden": 8, "mi_cond_pool": 2},
    "content-ae": {"img_size": 16, "code": 32, "sep": 4, "disc_hidden": 16, "n_down": 3,
                   "e1_widths": "8", "e2_widths": "8,8", "dec_widths": "16,8"},
    "pose-flow": {"img_size": 16, "n_flow": 1, "n_block": 2, "n_header": 2, "hidden": 8},
}


def save(name: str, path, **flags) -> torch.nn.Module:
    """A tiny ``name`` model with perturbed weights, saved as train.py saves it, at ``path``."""
    recipe = registry.get(name)
    cfg = from_dict(recipe.Config, {**TINY[name], **flags})
    model = recipe.build(cfg)
    if name == "glow":
        model.initialize(torch.rand(4, 3, 16, 16) - 0.5)  # AD-flow refuses an untrained Glow
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))  # weights no fresh build has
    save_checkpoint(path, model_name=name, model_config=dataclasses.asdict(cfg),
                    train_config=None, weights=model.state_dict(),
                    extra=recipe.checkpoint_extra(model, cfg))
    return model


@pytest.mark.parametrize("name", registry.names())
def test_load_model_rebuilds_each_model(name, tmp_path):
    torch.manual_seed(0)
    flags = {}
    if name == "ad-flow":
        save("glow", tmp_path / "glow.pt")
        flags["glow"] = str(tmp_path / "glow.pt")
    saved = save(name, tmp_path / "model.pt", **flags)
    loaded = registry.load_model(tmp_path / "model.pt")
    assert type(loaded) is type(saved) and not loaded.training
    want, got = saved.state_dict(), loaded.state_dict()
    assert list(got) == list(want)
    for k in want:
        assert torch.equal(got[k], want[k]), k


def test_load_model_refuses_another_model(tmp_path):
    torch.manual_seed(0)
    save("pose-flow", tmp_path / "pose.pt")
    with pytest.raises(CheckpointError, match="a 'pose-flow' checkpoint, expected 'glow'"):
        registry.load_model(tmp_path / "pose.pt", expect="glow")
