"""Quantisation, dequantisation and bits per dimension for images in [-0.5, 0.5]."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def quantize(x: Tensor, n_bits: int = 5) -> Tensor:
    """Reduce 8-bit images in [-0.5, 0.5] to ``n_bits`` levels, still in [-0.5, 0.5)."""
    n_bins = 2.0**n_bits
    x255 = torch.round((x + 0.5) * 255)
    if n_bits < 8:
        x255 = torch.floor(x255 / 2 ** (8 - n_bits))
    return x255 / n_bins - 0.5


def dequantize(x: Tensor, n_bits: int = 5, generator: torch.Generator | None = None) -> Tensor:
    """Add uniform noise of one bin width to quantised ``x``."""
    noise = torch.rand(x.shape, generator=generator, device=x.device if generator is None
                       else generator.device, dtype=x.dtype).to(x.device)
    return x + noise / 2.0**n_bits


def bits_per_dim(log_p: Tensor, logdet: Tensor, n_dims: int, n_bits: int = 5) -> Tensor:
    """``-(log_p + logdet - D log(n_bins)) / (D log 2)`` per sample, shape [B]."""
    n_bins = 2.0**n_bits
    return -(log_p + logdet - n_dims * math.log(n_bins)) / (n_dims * math.log(2))
