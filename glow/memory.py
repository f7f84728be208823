"""Low-memory training: recompute activations from the invertible outputs during backward.

A flow's input can be rebuilt from its output with ``reverse``, so nothing inside a run of
invertible layers needs to be kept for backward. :func:`reversible_forward` runs a sequence of
layers (each with the contract ``forward(x, cond) -> (y, logdet [B])``, ``reverse(y, cond) -> x``)
under ``no_grad`` and keeps only the final output. During backward it walks the layers from the
last to the first: rebuild the layer's input with ``reverse``, run that one layer forward again
with autograd on, back-propagate into its input, its parameters and ``cond``, then drop its graph.
At most one layer's activations are alive at a time (instead of all of them), for roughly one
extra forward and one reverse per layer (about 1.3-1.6x the time of a normal step).

Parameter gradients are added into ``.grad`` as each layer's are computed, as
``AccumulateGrad`` would add them (the transient is one layer's gradients, not a whole block's:
-80 MiB at the thesis config), so optimisers and gradient clipping see ordinary ``.grad``.
Inside :func:`on_grads_ready` the backward also hands each layer's parameters, once their
gradients are final, to a callback: the training loop steps Adam on them there and frees the
gradients, so a whole model's gradients are never held at once (``training.optim``).
Hooks registered on a parameter's gradient do not run, and ``torch.autograd.grad`` with respect
to the parameters would not see these gradients (nothing here calls it; use
``enable_low_memory(model, False)`` for that). Inside a ``torch.distributed`` process group
they go through autograd instead (the parameters are inputs of the autograd function), where
DistributedDataParallel's hooks see them. Each layer's recomputation runs over
:data:`RECOMPUTE_PARTS` parts of the batch (the layers act on each sample alone). Gradients
equal the normal ones up to floating-point rounding: the rebuilt inputs differ from the
originals by the reverse's round-off (float32: ~1e-6 relative).

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

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

# Parts of the batch one layer's recomputation runs over in backward: 2 halves the transient
# graph for no measurable time (4: 20 MiB less again, ~10 % slower; docs/performance.md).
RECOMPUTE_PARTS = 2


# The callback of :func:`on_grads_ready` (one at a time; a plain global, not thread-local:
# autograd may run a backward on its own device threads).
_GRADS_READY: list[Callable[[list[Tensor]], None]] = []


@contextmanager
def on_grads_ready(fn: Callable[[list[Tensor]], None]) -> Iterator[None]:
    """While active, the recomputing backward calls ``fn(params)`` after each layer with that
    layer's parameters whose gradients in ``.grad`` are now final: parameters that belong to
    that one layer of the sequence (a parameter shared between layers is left in ``.grad``).
    Only on the direct path (not inside a process group, where DDP must see the gradients) and
    only for ``reversible_forward`` sequences: everything else keeps ordinary ``.grad``. ``fn``
    may step an optimiser on them and set ``.grad`` to None; nothing here reads them after.
    A parameter must not also be used outside its layer, where a later gradient would arrive
    after ``fn`` has seen it (true of every Glow flow)."""
    if _GRADS_READY:
        raise RuntimeError("on_grads_ready: already active")
    _GRADS_READY.append(fn)
    try:
        yield
    finally:
        _GRADS_READY.clear()


def _direct_grads_allowed() -> bool:
    """Whether backward may add parameter gradients straight into ``.grad``: not inside a
    process group, where DistributedDataParallel's hooks must see them pass through autograd."""
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized())


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
        direct = _direct_grads_allowed()
        ready = _GRADS_READY[0] if direct and _GRADS_READY else None
        if ready is not None:  # parameters that belong to one layer alone
            owners: dict[int, int] = {}
            for layer in ctx.layers:
                for q in layer.parameters():  # each once per layer
                    owners[id(q)] = owners.get(id(q), 0) + 1
        # The layers act on each sample alone, so one layer's recomputation can run over parts
        # of the batch: its transient graph (the 512-channel activations) is a part's size.
        n, k = y.shape[0], min(RECOMPUTE_PARTS, y.shape[0])
        parts = [slice(i * n // k, (i + 1) * n // k) for i in range(k)]
        for layer in reversed(ctx.layers):
            params = [p for p in layer.parameters() if p.requires_grad]
            xs, grads_x, grads_c = [], [], []
            for sl in parts:
                c = cond[sl] if cond is not None else None
                with torch.no_grad():
                    x = layer.reverse(y[sl], c)
                with torch.enable_grad():
                    x = x.detach().requires_grad_(True)
                    if cond_needs_grad:
                        c = c.detach().requires_grad_(True)
                    out, det = layer(x, c)
                    outs, grads = [out], [grad_y[sl]]
                    if det.requires_grad:
                        outs.append(det)
                        grads.append(grad_logdet[sl])
                    inputs = [x, *params] + ([c] if cond_needs_grad else [])
                    got = torch.autograd.grad(outs, inputs, grads, allow_unused=True)
                grads_x.append(got[0] if got[0] is not None else torch.zeros_like(x))
                for p, g in zip(params, got[1:1 + len(params)], strict=True):
                    if g is None:
                        continue
                    if direct:  # straight into .grad: no block-wide set of new tensors
                        # (what AccumulateGrad would do with them; the block's return is None)
                        if p.grad is None:  # in the parameter's layout, as AccumulateGrad
                            # stores it (a channels-last conv's weight gradient is channels-last;
                            # torch's fused Adam reads a gradient as laid out like its parameter)
                            p.grad = g if g.stride() == p.stride() else \
                                torch.empty_like(p).copy_(g)
                        else:
                            p.grad.add_(g)
                    else:
                        param_grads[id(p)] = (param_grads[id(p)] + g if id(p) in param_grads
                                              else g)
                if cond_needs_grad:
                    grads_c.append(got[-1] if got[-1] is not None else torch.zeros_like(c))
                xs.append(x.detach())
                del out, det, outs, got, x
            if ready is not None:
                own = [p for p in params if owners[id(p)] == 1 and p.grad is not None]
                if own:
                    ready(own)
            one = len(parts) == 1
            grad_y = grads_x[0] if one else torch.cat(grads_x)
            y = xs[0] if one else torch.cat(xs)
            if cond_needs_grad:
                grad_cond = grad_cond + (grads_c[0] if one else torch.cat(grads_c))
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
