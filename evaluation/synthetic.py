"""Motion, identity and pixel fidelity of generated frames against the synthetic set's truth.

For a query ``q`` and a source ``s`` the ground truth of frame ``t`` is ``q``'s identity drawn
with the mouth of ``s``'s frame ``t`` (``SyntheticSet.ground_truth`` at 256 px; in a ``--hard``
set in the query's pose, light and crop), brought to the model's size with the same resize as
the model's inputs. Both kinds of set go through this one scorer. So the copy-query baseline is exact
everywhere but in the mouth box, and every system is judged at the resolution it works at.

Columns (per system, pooled over every scored frame of every pair):

* ``motion_dev``: the motion error of :mod:`evaluation.motion` (the read-back mouth states'
  deviations from their temporal mean against the truth's: 1 = any static mouth, whatever state
  it holds, as copying the query; 0 = the true motion), ``motion_px`` its pixel counterpart.
  These are what every static mouth fails. ``motion``: the state error beside them (read-back
  states against the true ones, normalised by the query's neutral state). ``motion_fit``: the
  mouth reader's fit error (RMS grey levels over the frames), which says whether the motion
  errors read a mouth at all: near the truth's 0.3, the output shows some state of the query's
  mouth; far above a few levels, it does not and the read states are guesses.
  ``motion_open``: the motion error of the opening alone (the width left out): on the default
  hard set the sources' crops, cut around each frame's mouth (``faces.sequence``, anchor
  "mouth"), carry only a damped, lagging copy of the width's motion, so no system fed them can
  get the width right there, while the opening comes through whole.
* ``psnr``, ``ssim``: whole-frame fidelity to the truth (identity preservation), ``dpsnr`` the
  PSNR minus copying the query's, ``psnr_mouth`` the PSNR inside the mouth box.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from faces.parallel import thread_map
from lrw.synthetic import SyntheticSet
from talking.inputs import read_rgb, resolve_source
from training.progress import progress as make_bar

from .metrics import mean_finite, mouth_crop, mse, psnr_from_mse, ssim
from .models import (
    BASELINE_BLEND,
    BASELINE_COPY,
    System,
    like_model_input,
    pasted_label,
    run_sequence,
)
from .motion import mouth_reader, ratio, state_array

__all__ = ["MIN_READER_SIZE", "evaluate_synthetic", "heldout_scorer", "heldout_scores",
           "is_synthetic", "synthetic_root_of"]

MIN_READER_SIZE = 32
"""Smallest image size the geometric motion error is computed at (NaN below: at 16 px the mouth
box is 3 x 5 pixels and neighbouring mouth states are not told apart)."""


def is_synthetic(path: str | Path) -> bool:
    """True when ``path`` is the root of a set written by ``lrw.synthetic``."""
    return (Path(path) / "manifest.json").is_file()


def evaluate_synthetic(root: str | Path, systems: Sequence[System], size: int,
                       device="cpu", batch: int = 16, pairs: int | None = None,
                       seq_frames: int | None = None, progress: bool = True,
                       blend: str = "poisson", paste: bool | str = False
                       ) -> tuple[dict[str, dict[str, float]], list[dict]]:
    """Score every system and both baselines on query x source pairs of the set at ``root``.

    ``pairs``: the first N pairs in (query, source) order (default all); ``seq_frames``: the
    first N frames of each source (default all); ``blend``: the mouth mix fed to the models and
    scored as the blend baseline (``talking.job.BLENDS``). Returns ``(rows, details)``: ``rows[label]``
    holds ``psnr`` and ``psnr_mouth`` (PSNR of the MSE averaged over every scored frame, in the
    whole image and in the mouth box), ``ssim`` (mean over frames) and ``frames``; ``details``
    one dict per (pair, system) with the same figures over that pair's frames.

    ``paste``: also score what ``test.py`` writes, at 256 px against the 256 px truth, under
    ``models.pasted_label(label)``: each system pasted back into the query (``True`` or
    ``"region"``: its change added to its input at 256 px; ``"query"``: to the query; see
    ``models.run_sequence``), the query itself and
    the mouth blend made at 256 px (their ``dpsnr`` against the query at 256 px). PSNR, SSIM
    and the mouth-box PSNR are taken at 256 px; the mouth states are read back from the frames
    brought to the model's size (the reader at 256 px costs seconds per frame).
    """
    syn = SyntheticSet.load(root)
    todo = list(itertools.product(syn.query_names, syn.source_names))
    if pairs:
        todo = todo[:pairs]
    if not todo:
        raise ValueError(f"{root}: the synthetic set has no query x source pair")
    labels = [BASELINE_COPY, BASELINE_BLEND, *(s.label for s in systems)]
    base_labels = list(labels)
    if paste:
        labels += [pasted_label(lab) for lab in base_labels]
    keys = ("mse", "ssim", "mse_mouth", "motion_num", "motion_den", "dev_num", "dev_den",
            "mpx_num", "mpx_den", "fit_sq", "open_num", "open_den")
    per_frame: dict[str, dict[str, list[float]]] = {lab: {k: [] for k in keys} for lab in labels}
    details: list[dict] = []

    total = sum(min(syn.n_source_frames(s), seq_frames or 10**9) for _, s in todo)
    bar = None
    if progress:
        bar = make_bar(total, f"synthetic {Path(root).name}", unit="frame", file=sys.stderr)
    try:
        for q, s in todo:
            source = resolve_source(str(syn.source_folder(s)), syn.root / "image")
            paths = source.frames[:seq_frames] if seq_frames else source.frames
            frames = [read_rgb(p) for p in paths]
            query = read_rgb(syn.query_path(q))
            outs = run_sequence(query, frames, size, systems, device, batch, blend, paste)
            truth256 = [syn.ground_truth(q, s, t, 256) for t in range(len(frames))]
            truth = np.stack([like_model_input(t256, size) for t256 in truth256])
            states = state_array(syn.source_states(s))[:len(frames)]
            # the geometric reader needs the mouth box to have some pixels (8 x 11 at 32 px)
            # (a --hard set's query is posed, lit and cropped: the reader sees it the same way)
            reader = (mouth_reader(syn.identity(q), size, syn.query_shot(q))
                      if size >= MIN_READER_SIZE and 256 % size == 0 else None)
            for lab in labels:
                if lab in base_labels:
                    vals = _frame_values(outs[lab], truth, states, reader)
                else:
                    vals = _frame_values(outs[lab], np.stack(truth256), states, reader,
                                         read_size=size)
                for k, v in vals.items():
                    per_frame[lab][k].extend(v)
                details.append({"data": str(root), "query": q, "source": s, "system": lab,
                                "frames": len(frames), **_summary(vals)})
            if bar is not None:
                bar.update(len(frames))
    finally:
        if bar is not None:
            bar.close()
    rows = {lab: {**_summary(per_frame[lab]), "frames": len(per_frame[lab]["mse"])}
            for lab in labels}
    def copy_of(lab: str) -> str:
        return BASELINE_COPY if lab in base_labels else pasted_label(BASELINE_COPY)

    for lab in labels:
        rows[lab]["dpsnr"] = rows[lab]["psnr"] - rows[copy_of(lab)]["psnr"]
    for d in details:
        ref = next(r for r in details if r["query"] == d["query"] and
                   r["source"] == d["source"] and r["system"] == copy_of(d["system"]))
        d["dpsnr"] = d["psnr"] - ref["psnr"]
    return rows, details


def synthetic_root_of(data_dir: str | Path | None) -> Path | None:
    """The synthetic set whose training folder is ``data_dir`` (or that is ``data_dir``)."""
    if data_dir is None:
        return None
    d = Path(data_dir)
    return next((r for r in (d, d.parent) if is_synthetic(r)), None)


def heldout_scorer(data_dir: str | Path, device):
    """``training.loop.train``'s ``heldout``: ``score(fn, size, pairs)`` on the held-out pairs
    of the synthetic set whose training folder is ``data_dir``; None when it is not one."""
    root = synthetic_root_of(data_dir)
    if root is None:
        return None
    return lambda fn, size, pairs: heldout_scores(root, fn, size, device, pairs)


def heldout_scores(root: str | Path, fn, size: int, device="cpu", pairs: int = 2,
                   batch: int = 16) -> dict[str, float]:
    """Motion and identity of one generator on the first ``pairs`` held-out pairs of a set.

    ``fn(query [1,3,S,S], mix [T,3,S,S], source [T,3,S,S]) -> [T,3,S,S]`` in [-0.5, 0.5]. Used
    for training diagnostics (e.g. AD-flow at every sample grid). Returns ``motion_dev`` (the
    motion error), ``motion`` (the state error), ``motion_px``, ``psnr`` and ``dpsnr`` (against
    copying the query).
    """
    rows, _ = evaluate_synthetic(root, [System("model", fn)], size, device, batch, pairs,
                                 progress=False)
    r = rows["model"]
    return {k: r[k] for k in ("motion_dev", "motion", "motion_px", "psnr", "dpsnr")}


def _frame_values(out: np.ndarray, truth: np.ndarray, states: np.ndarray, reader,
                  read_size: int | None = None) -> dict[str, list[float]]:
    """Per-frame squared errors, SSIM and the motion errors' per-frame terms (``out``,
    ``truth``, ``states``: one whole sequence, whose temporal means the motion errors use).
    ``read_size``: the mouth states are read from ``out`` brought to this size."""
    if reader is None:
        est, fit = np.full_like(states, np.nan), np.full(len(states), np.nan)
    elif read_size is not None and out.shape[1] != read_size:
        est, fit = reader.read(np.stack([like_model_input(o, read_size) for o in out]), fit=True)
    else:
        est, fit = reader.read(out, fit=True)
    m_num = ((est - states) ** 2).sum(1)
    m_den = (states**2).sum(1)  # the query's own mouth is neutral, (0, 0)
    de, ds = est - est.mean(0, keepdims=True), states - states.mean(0, keepdims=True)
    box = [mouth_crop(x).astype(np.float64) for x in (*out, *truth)]
    o, g = np.stack(box[:len(out)]), np.stack(box[len(out):])
    do, dg = o - o.mean(0, keepdims=True), g - g.mean(0, keepdims=True)
    return {"mse": [mse(a, b) for a, b in zip(truth, out, strict=True)],
            "ssim": thread_map(lambda ab: ssim(*ab), list(zip(truth, out, strict=True))),
            "mse_mouth": [mse(mouth_crop(a), mouth_crop(b)) for a, b in
                          zip(truth, out, strict=True)],
            "motion_num": list(m_num), "motion_den": list(m_den),
            "dev_num": list(((de - ds) ** 2).sum(1)), "dev_den": list((ds**2).sum(1)),
            "open_num": list((de[:, 0] - ds[:, 0]) ** 2), "open_den": list(ds[:, 0] ** 2),
            "mpx_num": list(((do - dg) ** 2).sum((1, 2, 3))),
            "mpx_den": list((dg**2).sum((1, 2, 3))), "fit_sq": list(fit**2)}


def _summary(vals: dict[str, list[float]]) -> dict[str, float]:
    """PSNR of the mean MSE (whole image and mouth box), the mean SSIM and the pooled motion
    errors of some frames."""
    return {"motion_dev": ratio(sum(vals["dev_num"]), sum(vals["dev_den"])),
            "motion_open": ratio(sum(vals["open_num"]), sum(vals["open_den"])),
            "motion": ratio(sum(vals["motion_num"]), sum(vals["motion_den"])),
            "motion_px": ratio(sum(vals["mpx_num"]), sum(vals["mpx_den"])),
            "psnr": psnr_from_mse(mean_finite(vals["mse"])), "ssim": mean_finite(vals["ssim"]),
            "psnr_mouth": psnr_from_mse(mean_finite(vals["mse_mouth"])),
            "motion_fit": float(np.sqrt(mean_finite(vals["fit_sq"])))}
