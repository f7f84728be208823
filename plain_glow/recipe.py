"""Glow as a trainable model (``train.py --model glow``): maximum likelihood on dequantised
images (bits/dim), and its evaluation face (``evaluate.py --model glow``: bits/dim only).

A recipe (see ``training/registry.py``) on the core in ``glow``, which never imports it. Its
flags are ``training.recipe_helpers.GlowFlags``, shared with MI-flow.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from glow.io import glow_from_checkpoint, load_glow, recorded_n_bits
from glow.likelihood import bits_per_dim
from glow.memory import enable_low_memory, on_grads_ready
from glow.model import Glow
from lrw.datasets import ImageFolderDataset, training_root
from training.config import opt
from training.recipe import DataInfo, Recipe
from training.recipe_helpers import GlowFlags, dequantised, images, validate_glow_flags


@dataclass
class Config(GlowFlags):
    """Glow hyper-parameters (thesis names and defaults)."""

    low_memory: bool = opt(False, "recompute activations from the invertible outputs during "
                           "backward instead of storing them, and step Adam on each flow inside "
                           "backward unless --grad_clip is set (much lower peak memory)")


class GlowRecipe(Recipe):
    """Glow: maximum likelihood on dequantised images; evaluated for bits/dim only."""

    NAME = "glow"
    Config = Config
    DEFAULT_CHECKPOINT = "glow_checkpoint.pt"
    # The thesis's Glow training: batch 16, lr 1e-4, 200k iterations, samples every 100.
    TRAIN_DEFAULTS = {"batch": 16, "lr": 1e-4, "iter": 200000, "sample_every": 100,
                      "save_every": 10000}
    validate = staticmethod(validate_glow_flags)

    def build(self, cfg: Config, data: DataInfo | None = None) -> nn.Module:
        model = Glow(3, cfg.n_flow, cfg.n_block, affine=cfg.affine, conv_lu=cfg.conv_lu,
                     hidden=cfg.hidden, img_size=cfg.img_size)
        if cfg.low_memory:
            enable_low_memory(model)
        return model

    def step_in_backward(self, cfg: Config):
        """With --low_memory, the loop steps Adam on each flow's parameters as soon as the
        recomputing backward has their gradients (``glow.memory.on_grads_ready``): the same
        update, without the whole model's gradients held at once."""
        if not cfg.low_memory:
            return None
        return on_grads_ready

    def dataset(self, cfg: Config, data_dir: Path):
        return ImageFolderDataset(training_root(data_dir), cfg.img_size), DataInfo(data_dir)

    def initialize(self, model: Glow, batch, ctx) -> None:
        x = dequantised(images(batch), ctx.model_cfg.n_bits, ctx)
        model.initialize(ctx.gather(x))

    def losses(self, model: nn.Module, batch, ctx) -> dict[str, Tensor]:
        cfg: Config = ctx.model_cfg
        x = dequantised(images(batch), cfg.n_bits, ctx)
        log_p, logdet, _ = model(x)
        n_dims = x[0].numel()
        bpd = bits_per_dim(log_p, logdet, n_dims, cfg.n_bits).mean()
        return {"bpd": bpd, "log_p": (log_p / n_dims).mean().detach(),
                "logdet": (logdet / n_dims).mean().detach()}

    def loss_weights(self, cfg: Config) -> dict[str, float]:
        return {"bpd": 1.0}

    def sample(self, model: Glow, batch, ctx) -> tuple[Tensor, int]:
        """A grid of prior samples from fixed noise (the same z at every step)."""
        cfg: Config = ctx.model_cfg
        g = torch.Generator().manual_seed(ctx.train_cfg.seed)
        return model.sample(cfg.n_sample, cfg.temp, generator=g), 10

    # Test time: a Glow generates nothing (test.py refuses it); evaluate.py reports its bits/dim.

    def from_checkpoint(self, ckpt: dict, path: str | Path = "checkpoint", args=None) -> Glow:
        return glow_from_checkpoint(ckpt, path)

    def load_for_test(self, args: argparse.Namespace, device: torch.device | str = "cpu") -> Glow:
        """The Glow at ``args.checkpoint`` (ours or a reference/thesis state dict), in eval mode."""
        return load_glow(args.checkpoint).to(device).eval()

    def eval_density(self, model: Glow, args) -> tuple[nn.Module, int, list[str]]:
        """The Glow itself, at the ``n_bits`` its checkpoint records (thesis files: 5)."""
        return model, recorded_n_bits(args.checkpoint), []


RECIPE = GlowRecipe()
