"""The model interface: a :class:`Recipe` subclass per model package, one instance each
(``training.registry.get``). The loop, test.py and evaluate.py call these methods and never
probe for them; an optional hook's default below is what a model without it gets."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: importing the registry stays free of torch
    import torch
    from torch import Tensor, nn


class Recipe:
    """What ``train.py``, ``test.py`` and ``evaluate.py`` know of a model.

    Training: ``Config`` (a dataclass of ``training.config.opt`` fields: the model's flags),
    ``validate``, ``dataset``, ``build``, ``losses`` (named scalar terms), ``loss_weights``
    (the loop sums ``weight * term``) and ``sample`` are required; the other hooks have
    defaults. Test time: ``load_for_test`` and ``generate`` (the talking-face job), the
    evaluation hooks ``eval_systems`` and ``eval_density``.
    """

    NAME: str = ""
    Config: type = object
    TRAIN_DEFAULTS: dict[str, Any] = {}  # overrides of TrainConfig defaults (thesis values)
    DDP_FIND_UNUSED = False
    # N torchrun processes train what one process with the same global batch trains
    # (tests/test_ddp.py checks it per recipe): draw per-step randomness with ctx.global_rand /
    # ctx.generator for the global batch and slice rank::world, and take anything that mixes
    # items of the batch (partners, negatives) from ctx.gather(...). False: torchrun is refused
    # with DDP_NOTE (why).
    DDP_EXACT = True
    DDP_NOTE = "not exact"
    DEFAULT_CHECKPOINT = ""  # file name under CHECKPOINT_DIR when --checkpoint is not given
    GENERATES = False  # has ``generate``: test.py runs the talking-face job with it
    NEEDS_MIX = True  # generate wants the mouth mix (else the source is passed as mix)
    PASTE_REGION = "mouth"  # test.py --paste_back region (faces.paste.PasteRegion.named)

    # -- training ------------------------------------------------------------------------------

    def validate(self, cfg) -> None:
        """Raise ``ValueError`` with a one-line message for flags that cannot work."""

    def dataset(self, cfg, data_dir: Path) -> torch.utils.data.Dataset:
        """The training items; an optional ``set_epoch(epoch, seed)`` on the dataset is called
        every epoch, so random per-item draws can be seeded by (seed, epoch, item)."""
        raise NotImplementedError

    def build(self, cfg) -> nn.Module:
        raise NotImplementedError

    def losses(self, model: nn.Module, batch, ctx) -> dict[str, Tensor]:
        raise NotImplementedError

    def loss_weights(self, cfg) -> dict[str, float]:
        raise NotImplementedError

    def sample(self, model: nn.Module, batch, ctx) -> tuple[Tensor, int]:
        """A grid ``(images [N, 3, H, W] in [-0.5, 0.5], nrow)``."""
        raise NotImplementedError

    def initialize(self, model: nn.Module, batch, ctx) -> None:
        """Data-dependent init on the first batch of a fresh run (default: none)."""

    def param_groups(self, model: nn.Module, cfg, train_cfg) -> list[dict]:
        """Adam groups (default: every trainable parameter at --lr); a group with
        ``clip_norm`` > 0 is clipped on its own."""
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]

    def checkpoint_extra(self, model: nn.Module, cfg) -> dict:
        """Recorded in the checkpoint beside the weights (e.g. the Glow used)."""
        return {}

    def diagnostics(self, model: nn.Module, ctx) -> dict[str, float]:
        """At step 0 and every sample grid: diagnostics.jsonl/.png (default: none)."""
        return {}

    def lr_factor(self, cfg, train_cfg, step: int) -> float | None:
        """The learning rate is ``--lr * factor`` at ``step``; None: no schedule."""
        return None

    def step_in_backward(self, cfg):
        """A context factory ``factory(fn)`` that makes backward call ``fn(params)`` as groups
        of parameter gradients become final (the loop then steps Adam there), or None."""
        return None

    def translate_argv(self, argv: list[str]) -> list[str]:
        """train.py: the model's own flag aliases (default: none)."""
        return argv

    # -- test time -----------------------------------------------------------------------------

    def test_cli(self, argv: list[str]) -> int | None:
        """test.py's whole argv for a model with its own test job; None: the shared job."""
        return None

    def evaluate_cli(self, argv: list[str]) -> int | None:
        """evaluate.py's whole argv (not with --compare); None: the shared evaluation."""
        return None

    def add_test_args(self, parser: argparse.ArgumentParser) -> None:
        """The model's test-time flags (test.py, evaluate.py)."""

    def load_for_test(self, args: argparse.Namespace, device) -> nn.Module:
        """``args.checkpoint`` in eval mode on ``device``."""
        raise ValueError(f"model '{self.NAME}' has no test-time interface (load_for_test)")

    def model_size(self, model: nn.Module) -> int:
        """Frames are resized to this many pixels."""
        return int(model.img_size)

    def generate(self, model: nn.Module, query: Tensor, mix: Tensor, source: Tensor,
                 args) -> Tensor:
        """query [1, 3, S, S], mix and source [T, 3, S, S] in [-0.5, 0.5] -> [T, 3, S, S]."""
        raise ValueError(f"model '{self.NAME}' has no talking-face generation")

    def eval_systems(self, model: nn.Module, args) -> list[tuple[str, argparse.Namespace]]:
        """evaluate.py: one talking-face system per entry, run as ``generate(model, ..., args)``
        (e.g. MI-flow: one per --mode)."""
        return [(self.NAME, args)] if self.GENERATES else []

    def eval_density(self, model: nn.Module, args) -> tuple[nn.Module | None, int, list[str]]:
        """evaluate.py: the flow whose bits/dim is reported (None: none), the bits its data was
        quantised to, and lines for the report header."""
        return None, 0, []

    def log_density(self, density: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(log p(z), log|det|)`` [B] of ``x`` under ``eval_density``'s flow."""
        log_p, logdet = density(x)[:2]
        return log_p, logdet
