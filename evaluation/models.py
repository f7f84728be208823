"""Loading a trained model for evaluation and running it on one query and one source sequence.

A model is loaded through its recipe's test-time side (``training.recipe.Recipe``:
``load_for_test``, ``generate``, ``NEEDS_MIX``, and the evaluation hooks ``eval_systems``,
``eval_density`` and ``log_density``); nothing here names a model. Inputs go through the talking-face job's own helpers
(``talking.inputs.read_rgb``, ``talking.job.to_tensor``/``to_uint8``, ``faces.blend.mouth_mix``),
so a frame is evaluated exactly as ``test.py`` would produce it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from faces.paste import PasteRegion, paste_back
from glow import CheckpointError, bits_per_dim
from talking.job import model_inputs, paste_inputs, to_tensor, to_uint8
from training import registry
from training.recipe import Recipe

__all__ = ["BASELINE_BLEND", "BASELINE_COPY", "EvalModel", "System", "load_for_evaluation",
           "pasted_label", "run_sequence"]

BASELINE_COPY = "baseline: copy query"
BASELINE_BLEND = "baseline: mouth blend"


@dataclass
class System:
    """Something that turns (query, mix, source) into frames: a model, or a model in one mode.

    ``fn(query [1,3,S,S], mix [T,3,S,S], source [T,3,S,S]) -> [T,3,S,S]``, all in [-0.5, 0.5],
    called chunk by chunk in frame order; ``begin()`` (when given) before each source sequence's
    first chunk (``Recipe.begin_sequence``).
    """

    label: str
    fn: Callable[[Tensor, Tensor, Tensor], Tensor]
    region: str = "mouth"  # what test.py pastes back (faces.paste.PasteRegion.named)
    fed_mix: bool = False  # fn changes the mouth mix (test.py --paste_back region adds to it)
    begin: Callable[[], None] | None = None  # called before each source sequence's frames


@dataclass
class EvalModel:
    """A loaded model with what evaluation needs to know about it."""

    kind: str  # registry name (training.registry)
    recipe: Recipe
    model: nn.Module
    checkpoint: Path
    size: int  # image size the model works at
    n_bits: int  # quantisation of its (or its Glow's) training data, for bits/dim
    density: nn.Module  # the flow whose likelihood is reported (AD-flow: its Glow)
    systems: list[System] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def bits_per_dim(self, x: Tensor) -> Tensor:
        """Bits/dim [B] of dequantised images ``x`` [B, 3, S, S] under ``density`` (its
        log-density as the recipe's ``log_density`` reads it)."""
        log_p, logdet = self.recipe.log_density(self.density, x)
        return bits_per_dim(log_p, logdet, x[0].numel(), self.n_bits)


def load_for_evaluation(kind: str, args: argparse.Namespace, device: torch.device) -> EvalModel:
    """Load ``args.checkpoint`` as model ``kind`` (see :func:`training.registry.get`) with
    what is evaluated of it: its talking-face systems and the flow whose bits/dim is reported.

    ``args`` carries the recipe's test-time flags (``add_test_args``). What is evaluated comes
    from the recipe's hooks (``training/registry.py``): ``eval_systems`` (the talking-face
    systems, e.g. MI-flow in both its modes) and ``eval_density`` (the flow whose bits/dim is
    reported, e.g. AD-flow's frozen Glow). Raises ``CheckpointError``/``ValueError`` with one
    line.
    """
    path = Path(args.checkpoint)
    recipe = registry.get(kind)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file (train one with train.py, or "
                              "pass the right path)")
    model = recipe.load_for_test(args, device).eval()
    size = int(recipe.model_size(model))
    needs_mix, region = recipe.NEEDS_MIX, recipe.PASTE_REGION

    def system(label: str, run_args: argparse.Namespace) -> System:
        def fn(query: Tensor, mix: Tensor, source: Tensor) -> Tensor:
            return recipe.generate(model, query, mix if needs_mix else source, source, run_args)

        def begin() -> None:
            recipe.begin_sequence(model, run_args)
        return System(label, fn, region, needs_mix and recipe.builds_on_mix(run_args), begin)

    entries = recipe.eval_systems(model, args)
    density, n_bits, notes = recipe.eval_density(model, args)
    return EvalModel(kind, recipe, model, path, size, int(n_bits), density,
                     [system(label, a) for label, a in entries], list(notes))


def pasted_label(label: str) -> str:
    """The row of ``label``'s output as people see it: pasted back at 256 px (a baseline: made
    at 256 px)."""
    return f"{label} @256 px"


def run_sequence(query256: np.ndarray, frames256: Sequence[np.ndarray], size: int,
                 systems: Sequence[System], device: torch.device | str = "cpu",
                 batch: int = 16, blend: str = "poisson",
                 paste: bool | str = False) -> dict[str, np.ndarray]:
    """Every system's output for one query and one source sequence, plus both baselines.

    ``query256``: uint8 [256, 256, 3]; ``frames256``: source frames uint8 [256, 256, 3].
    Returns ``{label: uint8 [T, size, size, 3]}`` with :data:`BASELINE_COPY` (the query as the
    model sees it, every frame) and :data:`BASELINE_BLEND` (the mouth blend at 256 brought to
    the model's size, i.e. the model's ``mix`` input, made with ``blend``, one of
    ``talking.job.BLENDS``), and one entry per system. With ``paste`` also, under
    :func:`pasted_label`, each at 256 px as ``test.py`` writes it: the systems' outputs pasted
    back into the query as ``test.py --paste_back PASTE`` does (``paste``: ``"region"``, the
    default of ``True``: the model's change to its input as it saw it, upsampled and added to
    that input at 256 px, the mouth mix for a model fed one; ``"query"``: added to the query;
    ``talking.job.paste_inputs``), the query itself and the mouth blend made at 256 px
    (``uint8 [T, 256, 256, 3]``).
    """
    mode = "region" if paste is True else paste
    query_t = to_tensor([query256], size).to(device)
    query8 = to_uint8(query_t)[0]
    outs: dict[str, list[np.ndarray]] = {BASELINE_COPY: [], BASELINE_BLEND: []}
    outs.update({s.label: [] for s in systems})
    if paste:
        outs.update({pasted_label(k): [] for k in list(outs)})
    for s in systems:
        if s.begin is not None:
            s.begin()
    for start in range(0, len(frames256), batch):
        chunk = list(frames256[start:start + batch])
        mixes256: list[np.ndarray] = []
        src_t, mix_t = model_inputs(query256, chunk, size, device, blend, mixes256)
        outs[BASELINE_BLEND].extend(to_uint8(mix_t))
        outs[BASELINE_COPY].extend([query8] * len(chunk))
        if paste:
            outs[pasted_label(BASELINE_BLEND)].extend(mixes256)
            outs[pasted_label(BASELINE_COPY)].extend([query256] * len(chunk))
        mix8 = to_uint8(mix_t)
        for s in systems:
            with torch.inference_mode():
                out = s.fn(query_t, mix_t, src_t)
            out8 = to_uint8(out)
            outs[s.label].extend(out8)
            if mode:
                region = PasteRegion.named(s.region)
                for o, m8, m256 in zip(out8, mix8, mixes256, strict=True):
                    ref, offset = paste_inputs(mode, query8, query256,
                                               m8 if s.fed_mix and blend != "none" else None,
                                               m256)
                    outs[pasted_label(s.label)].append(
                        paste_back(query256, o, region, reference=ref, reference_offset=offset))
    return {k: np.stack(v) if v else np.zeros((0, size, size, 3), np.uint8)
            for k, v in outs.items()}


def like_model_input(image256: np.ndarray, size: int) -> np.ndarray:
    """A 256 px uint8 image brought to the model's size exactly as its inputs are."""
    return to_uint8(to_tensor([image256], size))[0]
