"""``Adam``: ``torch.optim.Adam`` whose calls do not import ``torch._dynamo``.

``torch.optim`` marks its methods as not-to-be-compiled: ``step`` imports ``torch._dynamo`` on
every call (to place graph breaks) and ``add_param_group``/``zero_grad``/``state_dict``/
``load_state_dict`` go through ``torch._disable_dynamo``, which imports it on first use. Outside
``torch.compile`` both wrappers only call the method, but the import costs about 1.6 s and 75 MiB
resident (150 MiB with triton) in every training process (docs/performance.md). This subclass
calls the wrapped methods directly, in the grad mode ``torch.optim`` would set: the same
arithmetic, state dict and checkpoints as ``torch.optim.Adam`` (``tests/training/test_training.py``).
Nothing here compiles an optimiser; code that does should use ``torch.optim.Adam``.

:class:`StepInBackward` steps an optimiser on a few parameters at a time during a low-memory
backward (``glow.memory.on_grads_ready``) and frees their gradients there: the same update as
one ``step()`` after backward, parameter by parameter, without a whole model's gradients alive
at once (-284 MiB at the thesis config, docs/performance.md).
"""

from __future__ import annotations

import torch


def _plain(method):
    """The function under torch's dynamo wrapper (the method itself if it has none)."""
    return getattr(method, "__wrapped__", method)


class Adam(torch.optim.Adam):
    """``torch.optim.Adam`` (same arguments) without the ``torch._dynamo`` import."""

    def step(self, closure=None):
        with torch.set_grad_enabled(self.defaults["differentiable"]):
            return _plain(torch.optim.Adam.step)(self, closure)

    def zero_grad(self, set_to_none: bool = True) -> None:
        _plain(torch.optim.Optimizer.zero_grad)(self, set_to_none)

    def add_param_group(self, param_group: dict) -> None:
        _plain(torch.optim.Optimizer.add_param_group)(self, param_group)

    def state_dict(self) -> dict:
        return _plain(torch.optim.Optimizer.state_dict)(self)

    def load_state_dict(self, state_dict: dict) -> None:
        _plain(torch.optim.Optimizer.load_state_dict)(self, state_dict)


def grads_finite(params) -> bool:
    """Whether every gradient of ``params`` (those that have one) is finite."""
    grads = [p.grad for p in params if p.grad is not None]
    return not grads or bool(torch.isfinite(
        torch.stack([g.float().abs().max() for g in grads]).sum()))


def fused_applies(params) -> bool:
    """Whether torch's fused Adam kernel takes all these parameters: floating point, on the CPU
    or a CUDA device."""
    params = list(params)
    return bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda")
                                for p in params)


def training_adam(groups: list[dict], lr: float, eps: float) -> Adam:
    """The training loop's Adam: torch's fused kernel where it applies (one pass over each
    tensor, no temporaries the size of the model: 77.5 ms per step against 232.8 ms for the
    one-tensor-at-a-time loop that ``torch.optim.Adam`` runs on the CPU by default, thesis
    Glow, 2-core AMD EPYC, ``bench/adam_step.py``), else that loop. The same update to float
    rounding."""
    params = [p for g in groups for p in g["params"]]
    if fused_applies(params):
        return Adam(groups, lr=lr, eps=eps, fused=True)
    return Adam(groups, lr=lr, eps=eps, foreach=False)


def group_of(optimizer: torch.optim.Optimizer) -> dict[int, int]:
    """``{id(parameter): index of its param group}``."""
    return {id(p): i for i, g in enumerate(optimizer.param_groups) for p in g["params"]}


def step_only(optimizer: torch.optim.Optimizer, params: list[torch.Tensor],
              owner: dict[int, int] | None = None) -> None:
    """``optimizer.step()`` for ``params`` alone, each with its own group's settings (lr,
    betas, ...); every other parameter and its state is left as it is. For optimisers whose
    update of a parameter reads only that parameter's gradient and state (Adam, SGD).
    ``owner``: :func:`group_of` the optimiser, when the caller keeps it between calls."""
    owner = group_of(optimizer) if owner is None else owner
    picked: dict[int, list[torch.Tensor]] = {}
    for p in params:
        if id(p) not in owner:
            raise ValueError("step_only: a parameter that is not in the optimiser")
        picked.setdefault(owner[id(p)], []).append(p)
    groups = optimizer.param_groups
    optimizer.param_groups = [{**groups[i], "params": ps} for i, ps in picked.items()]
    try:
        optimizer.step()
    finally:
        optimizer.param_groups = groups


class StepInBackward:
    """The callback for ``glow.memory.on_grads_ready``: steps ``optimizer`` on each batch of
    parameters whose gradients are final, then frees those gradients.

    A non-finite gradient stops the updates for the rest of this backward (``bad`` is then
    True; the loop skips the step and counts it). Layers already stepped keep their update:
    backward reaches the layers from the last to the first, and a gradient that overflows
    inside the network is non-finite in every layer before it, so in practice a bad step
    changes nothing or only the layers behind the overflow. Parameters the callback never sees
    (outside the recomputed flows, or shared between layers) keep ``.grad``: one ordinary
    ``optimizer.step()`` after backward updates them and skips the freed ones."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self.owner = group_of(optimizer)
        self.bad = False

    def __call__(self, params: list[torch.Tensor]) -> None:
        params = [p for p in params if id(p) in self.owner]  # others keep .grad
        if not params:
            return
        self.bad = self.bad or not grads_finite(params)
        if not self.bad:
            step_only(self.optimizer, params, self.owner)
        for p in params:
            p.grad = None
