"""Low-memory training: recompute activations from the invertible outputs during backward.

A flow's input can be rebuilt from its output with ``reverse``, so nothing inside a run of
invertible layers needs to be kept for backward. :func:`reversible_forward` runs a sequence of
layers (each with the contract ``forward(x, cond) -> (y, logdet [B])``, ``reverse(y, cond) -> x``)
under ``no_grad`` and keeps only the final output. During backward it walks the layers from the
last to the first: rebuild the layer's input with ``reverse``, run that one layer forward again
with autograd on, back-propagate into its input, its parameters and ``cond``, then drop its graph.
At most one layer's activations are alive at a time (instead of all of them), for roughly one
extra forward and one reverse per layer (about 1.3-1.6x the time of a normal step).

Gradients arrive as ordinary ``.grad`` through autograd (the parameters are inputs of the
autograd function), so optimisers, gradient clipping and DistributedDataParallel's hooks work
unchanged. Gradients equal the normal ones up to floating-point rounding: the rebuilt inputs
differ from the originals by the reverse's round-off (float32: ~1e-6 relative).

Use with a Glow::

    from glow.memory import enable_low_memory
    enable_low_memory(model)   # every Block's flows now run through reversible_forward

Use in a conditional flow (e.g. a block whose flows take a condition tensor)::

    y, logdet = reversible_forward(self.flows, x, cond)   # cond [B, Cc, H, W] or None

``cond`` receives its gradient (summed over the layers). Requirements on the layers: ``reverse``
must invert ``forward`` for the same ``cond`` (to rounding), ``forward`` must have no side effects
(ActNorm's data init is an explicit call, so it does not run here), and layers must not be
stochastic. Inference (``no_grad``, or nothing requiring grad) takes the plain path.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class _ReversibleFunction(torch.autograd.Function):
    """(x, cond, *params) -> (y, logdet); see :func:`reversible_forward`.

    Use the per-device subclasses from :func:`_function_for`: their ``forward``/``backward``
    carry ``torch.amp.custom_fwd``/``custom_bwd``, so the recomputation in ``backward`` runs
    under the same autocast state as the forward did (without it, an AMP step would recompute
    the layers in float32 and back-propagate through a different function than it ran).
    """

    @staticmethod
    def forward(ctx, x: Tensor, cond: Tensor | None, layers: Sequence[nn.Module],
                *params: Tensor) -> tuple[Tensor, Tensor]:
        # Autograd is off in here: every temporary dies as soon as it is consumed.
        y = x
        logdet = x.new_zeros(x.shape[0])
        for layer in layers:
            y, det = layer(y, cond)
            logdet = logdet + det
        ctx.layers = layers
        ctx.n_params = len(params)
        ctx.save_for_backward(y, cond)
        return y, logdet

    @staticmethod
    def backward(ctx, grad_y: Tensor, grad_logdet: Tensor):
        y, cond = ctx.saved_tensors
        cond_needs_grad = cond is not None and ctx.needs_input_grad[1]
        grad_cond = torch.zeros_like(cond) if cond_needs_grad else None
        param_grads: dict[int, Tensor] = {}
        for layer in reversed(ctx.layers):
            with torch.no_grad():
                x = layer.reverse(y, cond)
            params = [p for p in layer.parameters() if p.requires_grad]
            with torch.enable_grad():
                x = x.detach().requires_grad_(True)
                c = cond.detach().requires_grad_(True) if cond_needs_grad else cond
                out, det = layer(x, c)
                outs, grads = [out], [grad_y]
                if det.requires_grad:
                    outs.append(det)
                    grads.append(grad_logdet)
                inputs = [x, *params] + ([c] if cond_needs_grad else [])
                got = torch.autograd.grad(outs, inputs, grads, allow_unused=True)
            grad_y = got[0] if got[0] is not None else torch.zeros_like(x)
            for p, g in zip(params, got[1:1 + len(params)], strict=True):
                if g is not None:
                    param_grads[id(p)] = param_grads[id(p)] + g if id(p) in param_grads else g
            if cond_needs_grad and got[-1] is not None:
                grad_cond = grad_cond + got[-1]
            y = x.detach()
            del out, det, outs, got, x
        all_params = [p for layer in ctx.layers for p in layer.parameters()]
        seen: set[int] = set()
        out_grads = []
        for p in all_params:  # same order as the forward's ``*params``
            if id(p) in seen:
                continue
            seen.add(id(p))
            out_grads.append(param_grads.get(id(p)))
        return (grad_y, grad_cond, None, *out_grads)


def _with_autocast(device_type: str) -> type:
    """A subclass whose forward/backward are wrapped in custom_fwd/custom_bwd for one device
    type (the decorators take the device type when applied, the tensors' device decides)."""
    base = _ReversibleFunction
    return type(f"_Reversible_{device_type}", (base,), {
        "forward": staticmethod(torch.amp.custom_fwd(base.forward, device_type=device_type)),
        "backward": staticmethod(torch.amp.custom_bwd(base.backward, device_type=device_type)),
    })


_FUNCTIONS: dict[str, type] = {}


def _function_for(device_type: str) -> type:
    if device_type not in _FUNCTIONS:
        _FUNCTIONS[device_type] = _with_autocast(device_type)
    return _FUNCTIONS[device_type]


def _unique_params(layers: Sequence[nn.Module]) -> list[Tensor]:
    seen: set[int] = set()
    out = []
    for layer in layers:
        for p in layer.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


def reversible_forward(layers: Sequence[nn.Module], x: Tensor,
                       cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Run invertible ``layers`` on ``x`` [B, ...] -> (y, logdet [B]) without storing activations.

    Falls back to the plain loop when no gradient is needed (inference costs nothing extra).
    """
    layers = tuple(layers)
    params = _unique_params(layers)
    needs_grad = torch.is_grad_enabled() and (
        x.requires_grad or (cond is not None and cond.requires_grad)
        or any(p.requires_grad for p in params))
    if not needs_grad:
        logdet = x.new_zeros(x.shape[0])
        for layer in layers:
            x, det = layer(x, cond)
            logdet = logdet + det
        return x, logdet
    return _function_for(x.device.type).apply(x, cond, layers, *params)


def enable_low_memory(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Switch every Glow ``Block`` in ``model`` to recompute-in-backward (or back); returns it.

    Only the training step's memory changes: outputs, gradients (to rounding), the state dict
    and inference are the same as without it.
    """
    # Duck-typed (any block exposing a boolean ``low_memory`` switch, e.g. a conditional
    # block built on the same flows), which also keeps this module free of model imports.
    found = 0
    for module in model.modules():
        if isinstance(getattr(module, "low_memory", None), bool):
            module.low_memory = enabled
            found += 1
    if not found:
        raise ValueError("enable_low_memory: the model has no glow Block")
    return model
