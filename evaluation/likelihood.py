"""Bits per dimension of held-out frames under a trained flow."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from glow import quantize
from lrw.datasets import list_images, load_image
from lrw.synthetic import SyntheticSet
from training.progress import progress as make_bar

__all__ = ["bits_per_dim_over", "heldout_frames"]

HELDOUT_SPLITS = ("test", "val")


def heldout_frames(data: str | Path, max_frames: int | None = None) -> tuple[list[Path], str]:
    """Frames to score and a description of where they came from.

    * a synthetic set (``manifest.json``): its query faces and source frames, whose identities
      never appear in ``train/``;
    * an LRW-style folder with ``test/`` or ``val/``: that split (the first found);
    * any other folder: every image under it (it should hold frames the model was not
      trained on).

    ``max_frames`` keeps that many, evenly spaced over the sorted list (deterministic).
    Raises ``ValueError`` (one line) when the folder is missing or holds no image.
    """
    data = Path(data)
    if not data.is_dir():
        raise ValueError(f"{data}: no such folder (give a folder of frames or a synthetic set)")
    if (data / "manifest.json").is_file():
        syn = SyntheticSet.load(data)
        paths = [syn.query_path(q) for q in syn.query_names]
        for s in syn.source_names:
            paths += list_images(syn.source_folder(s))
        where = f"{data} (synthetic: held-out query and source identities)"
    else:
        split = next((data / s for s in HELDOUT_SPLITS if (data / s).is_dir()), None)
        root = split or data
        paths = list_images(root)
        where = str(root)
    if not paths:
        raise ValueError(f"{data}: no image to score")
    if max_frames and len(paths) > max_frames:
        keep = np.unique(np.linspace(0, len(paths) - 1, max_frames).round().astype(int))
        paths = [paths[i] for i in keep]
    return paths, where


@torch.no_grad()
def bits_per_dim_over(score, paths: list[Path], size: int, n_bits: int, batch: int = 16,
                      seed: int = 0, device: torch.device | str = "cpu",
                      progress: bool = True) -> tuple[float, int]:
    """Mean bits/dim of ``paths`` (read with the training transform at ``size``, quantised to
    ``n_bits`` and dequantised with seeded uniform noise) under ``score(x) -> [B]``.

    Returns ``(mean bits/dim, frames scored)``; unreadable frames are skipped.
    """
    g = torch.Generator().manual_seed(seed)
    total, n = 0.0, 0
    bar = None
    if progress:
        bar = make_bar(len(paths), "bits/dim", unit="frame", file=sys.stderr)
    try:
        for start in range(0, len(paths), batch):
            images = []
            for p in paths[start:start + batch]:
                try:
                    images.append(load_image(p, size))
                except ValueError:
                    continue
            if images:
                x = quantize(torch.stack(images), n_bits)
                x = x + torch.rand(x.shape, generator=g) / 2**n_bits
                bpd = score(x.to(device)).double().cpu()
                total += float(bpd.sum())
                n += len(images)
            if bar is not None:
                bar.update(len(paths[start:start + batch]))
    finally:
        if bar is not None:
            bar.close()
    return (total / n if n else float("nan")), n
