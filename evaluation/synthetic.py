"""PSNR/SSIM of generated frames against the synthetic set's exact ground truth.

For a query ``q`` and a source ``s`` the ground truth of frame ``t`` is ``q``'s identity drawn
with the mouth of ``s``'s frame ``t`` (``SyntheticSet.ground_truth`` at 256 px), brought to the
model's size with the same resize as the model's inputs. So the copy-query baseline is exact
everywhere but in the mouth box, and every system is judged at the resolution it works at.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Sequence
from pathlib import Path

from .metrics import mean_finite, mouth_crop, mse, psnr_from_mse, ssim
from .models import BASELINE_BLEND, BASELINE_COPY, System, like_model_input, run_sequence

__all__ = ["evaluate_synthetic", "is_synthetic"]


def is_synthetic(path: str | Path) -> bool:
    """True when ``path`` is the root of a set written by ``lrw.synthetic``."""
    return (Path(path) / "manifest.json").is_file()


def evaluate_synthetic(root: str | Path, systems: Sequence[System], size: int,
                       device="cpu", batch: int = 16, pairs: int | None = None,
                       seq_frames: int | None = None, progress: bool = True
                       ) -> tuple[dict[str, dict[str, float]], list[dict]]:
    """Score every system and both baselines on query x source pairs of the set at ``root``.

    ``pairs``: the first N pairs in (query, source) order (default all); ``seq_frames``: the
    first N frames of each source (default all). Returns ``(rows, details)``: ``rows[label]``
    holds ``psnr`` and ``psnr_mouth`` (PSNR of the MSE averaged over every scored frame, in the
    whole image and in the mouth box), ``ssim`` (mean over frames) and ``frames``; ``details``
    one dict per (pair, system) with the same figures over that pair's frames.
    """
    from lrw.synthetic import SyntheticSet
    from talking.inputs import read_rgb, resolve_source

    syn = SyntheticSet.load(root)
    todo = list(itertools.product(syn.query_names, syn.source_names))
    if pairs:
        todo = todo[:pairs]
    if not todo:
        raise ValueError(f"{root}: the synthetic set has no query x source pair")
    labels = [BASELINE_COPY, BASELINE_BLEND, *(s.label for s in systems)]
    per_frame: dict[str, dict[str, list[float]]] = {
        lab: {"mse": [], "ssim": [], "mse_mouth": []} for lab in labels}
    details: list[dict] = []

    total = sum(min(syn.n_source_frames(s), seq_frames or 10**9) for _, s in todo)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc=f"synthetic {Path(root).name}", unit="frame",
                   dynamic_ncols=True, file=sys.stderr)
    try:
        for q, s in todo:
            source = resolve_source(str(syn.source_folder(s)), syn.root / "image")
            paths = source.frames[:seq_frames] if seq_frames else source.frames
            frames = [read_rgb(p) for p in paths]
            query = read_rgb(syn.query_path(q))
            outs = run_sequence(query, frames, size, systems, device, batch)
            truth = [like_model_input(syn.ground_truth(q, s, t, 256), size)
                     for t in range(len(frames))]
            for lab in labels:
                vals = {"mse": [mse(g, o) for g, o in zip(truth, outs[lab], strict=True)],
                        "ssim": [ssim(g, o) for g, o in zip(truth, outs[lab], strict=True)],
                        "mse_mouth": [mse(mouth_crop(g), mouth_crop(o))
                                      for g, o in zip(truth, outs[lab], strict=True)]}
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
    return rows, details


def _summary(vals: dict[str, list[float]]) -> dict[str, float]:
    """PSNR of the mean MSE (whole image and mouth box) and the mean SSIM of some frames."""
    return {"psnr": psnr_from_mse(mean_finite(vals["mse"])), "ssim": mean_finite(vals["ssim"]),
            "psnr_mouth": psnr_from_mse(mean_finite(vals["mse_mouth"]))}

