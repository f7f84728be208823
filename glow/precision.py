"""Inference with the coupling conditioners in bf16 and everything invertible in float32.

Nearly all of a Glow's compute is in the coupling conditioners (conv3x3 -> conv1x1 ->
ZeroConv): those may run in bf16. The invertible path (ActNorm, the 1x1 convolutions, the
additive/affine update), the log-determinants and the priors stay float32, so ``x -> z -> x``
stays exact to float32 rounding plus what a bf16 conditioner gives for inputs that differ by
float32 rounding (``tests/training/test_precision.py``: within 1/255 per pixel at the thesis layout;
the whole model under plain bf16 autocast is off by whole pixel ranges).

:func:`cast_conditioners` converts the conditioners' weights once (no per-call cast as autocast
would do); :class:`glow.layers.Coupling` feeds a low-precision net its input in the net's dtype
and returns the output in float32. Which dtype to use on which machine is decided by the
scripts (``training.precision``); this module knows nothing of CPUs or flags.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from .layers import Coupling

LOW_PRECISION = (torch.bfloat16, torch.float16)


def every_module(model: nn.Module) -> Iterator[nn.Module]:
    """``model.modules()`` and the modules a model holds without registering them.

    A model that keeps a network out of its state dict (AD-flow's frozen Glow: the checkpoint
    records which Glow file it belongs to) names it in a ``frozen_modules()`` method; a plain
    ``model.modules()`` walk would miss it, and with it every conditioner that matters."""
    seen: set[int] = set()
    stack = [model]
    while stack:
        for m in stack.pop().modules():
            if id(m) in seen:
                continue
            seen.add(id(m))
            yield m
            held = getattr(m, "frozen_modules", None)
            if callable(held):
                stack.extend(held())


def cast_conditioners(model: nn.Module, dtype: torch.dtype | None) -> nn.Module:
    """Cast every coupling conditioner in ``model`` to ``dtype`` (None or float32: float32).

    In place; returns ``model``. Only the ``net`` of each :class:`glow.layers.Coupling` (and
    subclasses, e.g. the pose flow's), found by :func:`every_module` (so AD-flow's frozen Glow
    too), changes dtype; ActNorm, 1x1 convolutions, priors and any
    other network stay as they are. For inference: training keeps float32 weights and uses
    autocast (``train.py --amp``).
    """
    target = torch.float32 if dtype is None else dtype
    if target not in (torch.float32, *LOW_PRECISION):
        raise ValueError(f"conditioners run in float32, bfloat16 or float16, not {target}")
    for m in every_module(model):
        if isinstance(m, Coupling):
            m.net.to(target)
    return model


def conditioner_dtypes(model: nn.Module) -> set[torch.dtype]:
    """The parameter dtypes of the coupling conditioners in ``model`` (for reports/tests)."""
    return {p.dtype for m in every_module(model) if isinstance(m, Coupling)
            for p in m.net.parameters()}
