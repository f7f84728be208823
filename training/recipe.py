"""The model interface: a :class:`Recipe` subclass per model package, one instance each
(``training.registry.get``). The loop, test.py and evaluate.py call these methods and never
probe for them; a hook's default here is what a model without it gets."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from glow.io import CheckpointError

from .config import from_dict


@dataclass
class DataInfo:
    """Facts about the training data, from ``Recipe.dataset`` to ``build`` and the hooks
    (``ctx.data``); ``dataset`` never writes into the config."""

    root: Path  # DATA_DIR as given
    # flags the data decides (e.g. AD-flow's --n_classes 0: the number of words): the loop
    # applies them to the config, which the checkpoint records
    config: dict[str, Any] = field(default_factory=dict)
    words: list[str] | None = None  # class names, recorded in the checkpoint
    dataset: Any = None  # the training items, for an init that reads them all
    # what a recipe builds once from the data and reuses every step (MI-flow's matched pairs)
    cache: dict[str, Any] = field(default_factory=dict)


class Recipe:
    """A model as ``train.py``, ``test.py`` and ``evaluate.py`` see it. Required: ``Config`` (a
    dataclass of ``training.config.opt`` fields, the model's flags), ``dataset``, ``build``,
    ``losses`` (named scalar terms; the loop sums ``weight * term`` with ``loss_weights``) and
    ``sample``; every other hook has a default."""

    NAME: str = ""
    Config: type = object
    TRAIN_DEFAULTS: dict[str, Any] = {}  # overrides of TrainConfig defaults (thesis values)
    DDP_FIND_UNUSED = False
    # N torchrun processes train what one process with the same global batch trains
    # (tests/training/test_ddp.py): per-step randomness from ctx.global_rand / ctx.generator for the
    # global batch, sliced rank::world; what mixes items of the batch from ctx.gather(...).
    # False: torchrun is refused with DDP_NOTE (why).
    DDP_EXACT = True
    DDP_NOTE = "not exact"
    DEFAULT_CHECKPOINT = ""  # file name under CHECKPOINT_DIR when --checkpoint is not given
    GENERATES = False  # has ``generate``: test.py runs the talking-face job with it
    NEEDS_MIX = True  # generate wants the mouth mix (else the source is passed as mix)
    PASTE_REGION = "mouth"  # test.py --paste_back region (faces.paste.PasteRegion.named)

    # -- training: cfg is a Config, ctx a training.loop.StepContext ------------------------------

    def validate(self, cfg) -> None:
        """Raise ``ValueError`` with a one-line message for flags that cannot work."""

    def dataset(self, cfg, data_dir: Path) -> tuple[torch.utils.data.Dataset, DataInfo]:
        """The training items (an optional ``set_epoch(epoch, seed)`` on them is called every
        epoch, so per-item draws can be seeded by (seed, epoch, item)) and what they tell."""
        raise NotImplementedError

    def build(self, cfg, data: DataInfo | None = None) -> nn.Module:
        """The model (``data``: None when rebuilt from a checkpoint)."""
        raise NotImplementedError

    def losses(self, model: nn.Module, batch, ctx) -> dict[str, Tensor]:
        raise NotImplementedError

    def loss_weights(self, cfg) -> dict[str, float]:
        raise NotImplementedError

    def sample(self, model: nn.Module, batch, ctx) -> tuple[Tensor, int]:
        """A grid ``(images [N, 3, H, W] in [-0.5, 0.5], nrow)``."""
        raise NotImplementedError

    def initialize(self, model: nn.Module, batch, ctx) -> None:
        """Data-dependent init on the first batch of a fresh run."""

    def param_groups(self, model: nn.Module, cfg, train_cfg) -> list[dict]:
        """Adam groups (a group with ``clip_norm`` > 0 is clipped on its own)."""
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]

    def checkpoint_extra(self, model: nn.Module, cfg) -> dict:
        """Recorded in the checkpoint beside the weights (e.g. the Glow used)."""
        return {}

    def diagnostics(self, model: nn.Module, ctx) -> dict[str, float]:
        """At step 0 and every sample grid: diagnostics.jsonl/.png."""
        return {}

    def lr_factor(self, cfg, train_cfg, step: int) -> float | None:
        """The learning rate is ``--lr * factor`` at ``step``; None: no schedule."""
        return None

    def step_in_backward(self, cfg):
        """None, or a context factory ``factory(fn)`` making backward call ``fn(params)`` as
        groups of gradients become final (the loop then steps Adam there)."""
        return None

    def translate_argv(self, argv: list[str]) -> list[str]:
        """train.py: the model's own flag aliases."""
        return argv

    # -- test time: test.py and evaluate.py own the command line and run the shared job named
    # here (talking/, evaluation/), which calls the hooks below ---------------------------------

    TEST_JOB = "talking"  # test.py: "talking" (a query driven by a source, through generate)
    #                      or "transfer" (an attribute transfer grid, talking.transfer)
    TRANSFER_GRID = False  # test.py --transfer_grid SOURCES TARGETS (talking.pose_grid)
    EVAL_JOB = "talking"  # evaluate.py: "talking", "attribute" (evaluation.attribute) or
    #                      "pose" (evaluation.pose)

    def add_test_args(self, parser: argparse.ArgumentParser) -> None:
        """The model's flags in test.py and evaluate.py."""

    def from_checkpoint(self, ckpt: dict, path: str | Path = "checkpoint",
                        args: argparse.Namespace | None = None) -> nn.Module:
        """The model of our checkpoint ``ckpt`` (read from ``path``; ``training.checkpoint``
        layout) rebuilt from its recorded config, on the CPU, as built; ``args``: test flags."""
        model = self.build(from_dict(self.Config, ckpt["config"]["model"]))
        try:
            self.load_weights(model, ckpt["weights"])
        except RuntimeError as exc:
            raise CheckpointError(f"{path}: weights do not fit {self.NAME} "
                                  f"({str(exc).splitlines()[0]})") from None
        return model

    def load_weights(self, model: nn.Module, state: dict) -> None:
        """``state`` (a checkpoint's weights) into the model ``build`` made."""
        model.load_state_dict(state)

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

    def builds_on_mix(self, args) -> bool:
        """Whether the output is the mouth mix it was fed, changed (``--paste_back region`` then
        adds the model's change to the mix made at 256 px); ``False``: it is built from the
        query (the change is added to the query). ``NEEDS_MIX`` by default."""
        return self.NEEDS_MIX

    def begin_sequence(self, model: nn.Module, args) -> None:
        """A new source sequence starts: test.py's job and evaluate.py call this before a
        source's first chunk of frames, so a recipe that keeps per-sequence state (AD-flow's
        ``--motion relative`` reference) resets it. Nothing by default."""

    def transfer_poses(self, model: nn.Module, images: Tensor, landmarks: Tensor,
                       target_landmarks: Tensor, temperature: float = 0.0,
                       mirror: bool = False) -> Tensor:
        """test.py --transfer_grid: faces [N, 3, S, S] in [-0.5, 0.5] with their landmarks
        [N, 68, 2] (x, y in 0..1), each re-posed to every target's landmarks [M, 68, 2]
        -> [N, M, 3, S, S] (``mirror``: averaged with the mirrored faces' rendering)."""
        raise ValueError(f"model '{self.NAME}' has no pose transfer")

    def eval_systems(self, model: nn.Module, args) -> list[tuple[str, argparse.Namespace]]:
        """evaluate.py: ``(label, args)`` per talking-face system, run as ``generate(model, ...,
        args)`` (e.g. MI-flow: one per --mode)."""
        return [(self.NAME, args)] if self.GENERATES else []

    def eval_density(self, model: nn.Module, args) -> tuple[nn.Module | None, int, list[str]]:
        """evaluate.py: the flow whose bits/dim is reported (None: none), the bits its data was
        quantised to, and lines for the report header."""
        return None, 0, []

    def log_density(self, density: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(log p(z), log|det|)`` [B] of ``x`` under ``eval_density``'s flow."""
        log_p, logdet = density(x)[:2]
        return log_p, logdet

    # attribute transfer (talking.transfer, evaluation.attribute): images [n, 3, S, S] in [-1, 1]

    def transfer(self, model: nn.Module, a: Tensor, b: Tensor) -> Tensor:
        """``b`` wearing ``a``'s attribute, pair by pair."""
        raise ValueError(f"model '{self.NAME}' has no attribute transfer")

    def remove(self, model: nn.Module, a: Tensor) -> Tensor:
        """``a`` without its attribute."""
        raise ValueError(f"model '{self.NAME}' has no attribute removal")

    def transfer_grid(self, model: nn.Module, a: Tensor, b: Tensor) -> Tensor:
        """``[(n+1)^2, 3, S, S]`` (``nrow = n + 1``): row 0 a blank tile then ``b_1..b_n``;
        row ``i`` ``a_i`` then ``b_j`` wearing ``a_i``'s attribute."""
        tiles = [torch.full_like(b[:1], -1.0), b]
        for i in range(a.shape[0]):
            tiles += [a[i:i + 1], self.transfer(model, a[i:i + 1].expand_as(b), b)]
        return torch.cat(tiles)

    def interpolate(self, model: nn.Module, a: Tensor, b: Tensor, k: int) -> Tensor:
        """``[n * (k + 1), 3, S, S]``: per ``b_j``, the image then ``k`` steps from ``a_1``'s
        attribute to ``a_2``'s (to none when ``a`` holds one image)."""
        raise ValueError(f"model '{self.NAME}' has no attribute interpolation")

    def transfer_info(self, model: nn.Module) -> dict[str, Any]:
        """Test-time settings recorded beside the attribute scores (metrics.json's _info)."""
        return {}
