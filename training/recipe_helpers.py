"""Small helpers shared by the recipes (``training/registry.py``): one copy of each."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from cliargs import grid_count, model_size, nonnegative, positive_int, whole
from glow import quantize

from .config import opt


@dataclass
class GlowFlags:
    """The Glow architecture and likelihood flags (thesis names and defaults), shared by every
    model that trains a Glow-shaped flow (Glow itself, MI-flow)."""

    n_flow: int = opt(32, "flows per block (K)", check=positive_int)
    n_block: int = opt(4, "number of blocks (L)", check=positive_int)
    conv_lu: bool = opt(True, "use the plain invertible 1x1 conv instead of its LU form",
                        flag="--no_lu")
    affine: bool = opt(False, "affine coupling instead of additive")
    hidden: int = opt(512, "hidden channels of the coupling networks", check=positive_int)
    n_bits: int = opt(5, "bits per colour channel after quantisation", check=whole(1, 8))
    img_size: int = opt(64, "image size (must be divisible by 2^n_block)", check=model_size)
    temp: float = opt(0.7, "temperature of the sample grids", check=nonnegative)
    n_sample: int = opt(20, "images per sample grid", check=grid_count)


def validate_glow_flags(cfg: GlowFlags) -> None:
    """One-line errors for Glow flags that cannot work (Glow, MI-flow)."""
    if cfg.n_block < 1 or cfg.n_flow < 1:
        raise ValueError("--n_block and --n_flow must be at least 1")
    if cfg.img_size % (2**cfg.n_block):
        raise ValueError(f"--img_size {cfg.img_size} is not divisible by 2^n_block = "
                         f"{2**cfg.n_block}; use a multiple of {2**cfg.n_block}")
    if not 1 <= cfg.n_bits <= 8:
        raise ValueError(f"--n_bits {cfg.n_bits} must be between 1 and 8")


def images(batch) -> Tensor:
    """The images [B, 3, S, S] of a batch that is either the images or ``(images, labels...)``."""
    return batch[0] if isinstance(batch, (list, tuple)) else batch


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP (or DataParallel) wrapper; the model itself otherwise."""
    return model.module if hasattr(model, "module") else model


def dequantised(x: Tensor, n_bits: int, ctx) -> Tensor:
    """``x`` [B, ...] in [-0.5, 0.5] quantised to ``n_bits`` plus uniform noise of one bin.

    The noise comes from ``ctx.global_rand`` (drawn for the global batch and sliced per rank),
    so N processes dequantise exactly what one process with the same global batch does."""
    return quantize(x, n_bits) + ctx.global_rand(tuple(x.shape)).to(x.dtype) / 2**n_bits
