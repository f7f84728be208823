"""``--init matched``: AD-flow's linear encoders fitted in closed form to the test's own task,
on training data and mouth readings only.

At test time AD-flow outputs, per Glow level, ``z = z_q - E(z_q) + E(z_mix) = z_q + W (z_mix - z_q)``
(the bias cancels): the query's latents moved by a linear map of what the mouth mix changed.
The thesis's terms (and ``--init lstsq``) only ever see a clip with its own lips, so ``W`` never
learns what another person's lips in the query's face should become. The matched pairs of
:mod:`lrw.matched` say it: for a query frame of speaker A and a source frame ``B_t`` of another
speaker, the answer is A's own training frame whose mouth reads nearest ``B_t``'s. The fit is the
ridge regression, over (pair, frame, channel) position vectors (``--encoder full``: over
(pair, frame) vectors of the whole level), of ``z_answer - z_q`` on ``z_mix - z_q``
(uncentred; ``lambda = ridge x tr(S_xx) / P``, ``P`` the vectors' length), with the mix made
as ``test.py`` makes it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch

from lrw.datasets import ClipDataset
from lrw.matched import MatchedPairs, model_tensor

from .init import PairStats, install_fit
from .model import CLOSED_FORM, ADFlow

__all__ = ["fit_matched_encoders"]


def fit_matched_encoders(model: ADFlow, ds: ClipDataset, root: str | Path, pairs: int,
                         ridge: float, seed: int = 0, rank: int = 0, world: int = 1,
                         log: Callable[[str], None] | None = None) -> dict[str, float]:
    """Set every linear encoder of ``model`` to the matched-pairs fit (module docstring);
    returns facts for the log. ``ValueError`` (one line) when the data has no mouth readings
    or fewer than two speakers with them."""
    levels = model.encoder.levels
    if not all(isinstance(m, CLOSED_FORM) for m in levels):
        raise ValueError("--init matched needs --encoder linear or full (the closed form is "
                         "for a linear map); use --init random with mlp or conv encoders")
    matched = MatchedPairs(ds, root, pairs, seed)
    size = int(model.img_size)
    device = next(model.encoder.parameters()).device
    stats = [PairStats(m.features) for m in levels]
    t0 = last = time.time()
    n_frames = 0
    for k, q, mixes, answers in matched.iterate(rank, world, size=size):
        t = len(answers)
        x = model_tensor([q, *mixes, *answers], size).to(device)
        with torch.no_grad():
            zs = model.encode_frames(x)
        for st, enc, z in zip(stats, levels, zs, strict=True):
            z = enc.vectors(z).double().cpu()  # [1 + 2T, C, P], or [1 + 2T, P] for full
            st.add((z[1:1 + t] - z[:1]).reshape(-1, z.shape[-1]),
                   (z[1 + t:] - z[:1]).reshape(-1, z.shape[-1]))
        n_frames += t
        if log is not None and time.time() - last > 10:
            log(f"[ad-flow] matched init: {k + 1}/{pairs} pairs ({time.time() - t0:.0f} s)")
            last = time.time()
    explained = install_fit(stats, levels, ridge, world, device)
    skipped = matched.skipped
    facts = {"pairs": float(pairs), "skipped": float(skipped), "frames": float(n_frames * world),
             "seconds": round(time.time() - t0, 2)}
    facts.update({f"explained_l{i}": e for i, e in enumerate(explained)})
    if log is not None:
        log(f"[ad-flow] matched init from {pairs} pairs of {len(matched.by_speaker)} speakers "
            f"(mouth readings: {matched.source}; {skipped} skipped for an unreadable frame) in "
            f"{facts['seconds']} s; share of z_answer - z_q "
            "explained per level: " + ", ".join(f"{e:.3f}" for e in explained))
    return facts
