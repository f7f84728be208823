"""``Adam``: ``torch.optim.Adam`` whose calls do not import ``torch._dynamo``.

``torch.optim`` marks its methods as not-to-be-compiled: ``step`` imports ``torch._dynamo`` on
every call (to place graph breaks) and ``add_param_group``/``zero_grad``/``state_dict``/
``load_state_dict`` go through ``torch._disable_dynamo``, which imports it on first use. Outside
``torch.compile`` both wrappers only call the method, but the import costs about 1.6 s and 75 MiB
resident (150 MiB with triton) in every training process (docs/performance.md). This subclass
calls the wrapped methods directly, in the grad mode ``torch.optim`` would set: the same
arithmetic, state dict and checkpoints as ``torch.optim.Adam`` (``tests/test_training.py``).
Nothing here compiles an optimiser; code that does should use ``torch.optim.Adam``.
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
