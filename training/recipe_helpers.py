"""Small helpers shared by the recipes (``training/registry.py``): one copy of each."""

from __future__ import annotations

from torch import Tensor, nn

from glow import quantize


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
