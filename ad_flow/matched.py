"""``--init matched``: AD-flow's linear encoders fitted in closed form to the test's own task,
on training data and mouth readings only.

At test time AD-flow outputs, per Glow level, ``z = z_q - E(z_q) + E(z_mix) = z_q + W (z_mix - z_q)``
(the bias cancels): the query's latents moved by a linear map of what the mouth mix changed.
The thesis's terms (and ``--init lstsq``) only ever see a clip with its own lips, so ``W`` never
learns what another person's lips in the query's face should become. Training data can say it
without any rendering: for a query frame of speaker A and a source frame ``B_t`` of another
speaker, the answer is **A's own training frame whose mouth reads nearest ``B_t``'s**. The
fit is the ridge regression, over (pair, frame, channel) position vectors, of
``z_answer - z_q`` on ``z_mix - z_q`` (uncentred; ``lambda = ridge x tr(S_xx) / P``), with the
mix made as ``test.py`` makes it (the gain-matched seamless mouth clone at 256 px, brought to
the model's size).

Mouth readings (:func:`faces.metrics.mouth_reading`: inner-lip opening and width in inter-ocular
distances, the width relative to the speaker's median so that wide lips do not read as a wide
mouth) come from landmarks: ``FRAME.npy`` beside each frame (``preprocess.py --landmarks DATA``)
or, for a synthetic set, the exact landmarks of the recorded mouth states. Speakers: a
synthetic set records them; elsewhere each clip is its own speaker (answers come from the query's
own clip; LRW records no speakers).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from faces.blend import mouth_box, mouth_mix
from faces.io import read_image
from faces.metrics import mouth_reading
from lrw.datasets import ClipDataset
from lrw.synthetic import SyntheticSet, train_frame

from .init import PairStats, install_fit
from .model import ADFlow, LinearEncoder

__all__ = ["MIX_SIZE", "clip_readings", "fit_matched_encoders"]

MIX_SIZE = 256
"""The mouth mix is made at this size, as ``test.py`` makes it from 256 px crops."""


def _synthetic_set(root: Path) -> SyntheticSet | None:
    """The synthetic set ``root`` (or its parent, for ``train/``) belongs to, if any."""
    for cand in (root, root.parent):
        try:
            return SyntheticSet.load(cand)
        except ValueError:
            continue
    return None


def clip_readings(ds: ClipDataset, root: str | Path,
                  positions: list[list[int]] | None = None
                  ) -> tuple[list[np.ndarray | None], list[str], str]:
    """Per clip of ``ds``: mouth readings ``[T, 2]`` of the frames at ``positions[i]``
    (default ``ds.positions``: the frames ``ds[i]`` returns; ``None`` where a frame has no
    landmarks), its speaker, and where the readings came from."""
    root = Path(root)
    if positions is None:
        positions = [ds.positions(clip.n_frames) for clip in ds.clips]
    syn = _synthetic_set(root)
    readings: list[np.ndarray | None] = []
    speakers: list[str] = []
    if syn is not None:
        exact = syn.training_landmarks()
        source = f"the exact landmarks of {syn.root}/manifest.json's mouth states"
    else:
        exact = {}
        source = "FRAME.npy landmark files beside the frames (preprocess.py --landmarks)"
    for clip, pos in zip(ds.clips, positions, strict=True):
        if clip.name in exact:
            speaker, lms = exact[clip.name]
            readings.append(mouth_reading(lms[pos]))
            speakers.append(speaker)
            continue
        speakers.append(clip.name)
        frames = clip.frames
        try:
            lms = np.stack([np.load(frames[j].with_suffix(".npy")) for j in pos])
            readings.append(mouth_reading(lms))
        except (OSError, ValueError):
            readings.append(None)
    # width relative to the speaker's median: lips differ between people, the state is the change
    for spk in set(speakers):
        idx = [i for i, s in enumerate(speakers) if s == spk and readings[i] is not None]
        if idx:
            med = float(np.median(np.concatenate([readings[i][:, 1] for i in idx])))
            for i in idx:
                readings[i] = readings[i] - np.array([0.0, med])
    return readings, speakers, source


def _model_tensor(images: list[np.ndarray], size: int) -> Tensor:
    """uint8 images -> [N, 3, size, size] in [-0.5, 0.5], resized as test.py resizes."""
    out = np.stack([train_frame(im, size) for im in images])
    return torch.from_numpy(out).permute(0, 3, 1, 2).float().div_(255).sub_(0.5)


def _mix(q: np.ndarray, src: np.ndarray) -> np.ndarray:
    """The mouth mix made at ``MIX_SIZE`` and brought back to ``q``'s size. Frames stored
    smaller than that are resampled twice on the way; every pixel outside the (one pixel
    wider) mouth box is then ``q``'s own again, so the resampling leaves nothing outside the
    mouth that the fit could take for the mouth's change."""
    s = q.shape[0]
    mix = train_frame(mouth_mix(train_frame(q, MIX_SIZE), train_frame(src, MIX_SIZE)), s)
    if s == MIX_SIZE:
        return mix
    top, bottom, left, right = mouth_box(s)
    out = q.copy()
    r0, r1, c0, c1 = max(top - 1, 0), min(bottom + 1, s), max(left - 1, 0), min(right + 1, s)
    out[r0:r1, c0:c1] = mix[r0:r1, c0:c1]
    return out


def fit_matched_encoders(model: ADFlow, ds: ClipDataset, root: str | Path, pairs: int,
                         ridge: float, seed: int = 0, rank: int = 0, world: int = 1,
                         log: Callable[[str], None] | None = None) -> dict[str, float]:
    """Set every linear encoder of ``model`` to the matched-pairs fit (module docstring);
    returns facts for the log. ``ValueError`` (one line) when the data has no mouth readings
    or fewer than two speakers with them."""
    levels = model.encoder.levels
    if not all(isinstance(m, LinearEncoder) for m in levels):
        raise ValueError("--init matched needs --encoder linear (the closed form is for a "
                         "linear map); use --init random with mlp or conv encoders")
    # one window per clip (a ClipDataset with window="random" draws a new one per call)
    positions = [ds.positions(clip.n_frames) for clip in ds.clips]
    readings, speakers, source = clip_readings(ds, root, positions)
    usable = [i for i, r in enumerate(readings) if r is not None]
    if len({speakers[i] for i in usable}) < 2:
        raise ValueError(f"--init matched: {root} has mouth readings for "
                         f"{len(usable)} of {len(readings)} clips (from {source}); write "
                         f"them with `python preprocess.py --landmarks {root}` or use "
                         "--init lstsq")
    by_speaker: dict[str, list[int]] = {}
    for i in usable:
        by_speaker.setdefault(speakers[i], []).append(i)
    rng = np.random.default_rng(seed)
    drawn = []
    while len(drawn) < pairs:  # (query clip, source clip) of different speakers
        a, b = (usable[int(k)] for k in rng.integers(len(usable), size=2))
        if speakers[a] != speakers[b]:
            drawn.append((a, b))
    size = int(model.img_size)
    device = next(model.encoder.parameters()).device
    stats = [PairStats(m.size * m.size) for m in levels]
    cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()

    def frame(i: int, j: int) -> np.ndarray:
        """Frame j of clip i's item as stored (at most the mix's size), ``uint8 [H, W, 3]``;
        the last few hundred are kept. ``ValueError`` when it cannot be read."""
        if (i, j) not in cache:
            clip = ds.clips[i]
            img = read_image(clip.frames[positions[i][j]])
            cache[(i, j)] = train_frame(img, MIX_SIZE) if img.shape[0] > MIX_SIZE else img
            if len(cache) > 256:
                cache.popitem(last=False)
        return cache[(i, j)]

    t0 = last = time.time()
    n_frames = skipped = 0
    for k, (a, b) in enumerate(drawn):
        if k % world != rank:
            continue
        own = [(i, j) for i in by_speaker[speakers[a]] for j in range(len(readings[i]))]
        pool_r = np.concatenate([readings[i] for i in by_speaker[speakers[a]]])
        near = [own[int(np.argmin(((pool_r - r) ** 2).sum(1)))] for r in readings[b]]
        try:  # only the frames the pair uses are read
            q = frame(a, int(np.argmin(readings[a][:, 0])))  # the query: A's most closed mouth
            mixes = [_mix(q, frame(b, j)) for j in range(len(readings[b]))]  # at 256 px
            answers = [frame(i, j) for i, j in near]
        except ValueError:
            skipped += 1
            continue
        t = len(near)
        x = _model_tensor([q, *mixes, *answers], size).to(device)
        with torch.no_grad():
            zs = model.encode_frames(x)
        for st, z in zip(stats, zs, strict=True):
            z = z.double().flatten(2).cpu()  # [1 + 2T, C, P]
            st.add((z[1:1 + t] - z[:1]).reshape(-1, z.shape[-1]),
                   (z[1 + t:] - z[:1]).reshape(-1, z.shape[-1]))
        n_frames += t
        if log is not None and time.time() - last > 10:
            log(f"[ad-flow] matched init: {k + 1}/{pairs} pairs ({time.time() - t0:.0f} s)")
            last = time.time()
    explained = install_fit(stats, levels, ridge, world, device)
    facts = {"pairs": float(pairs), "skipped": float(skipped), "frames": float(n_frames * world),
             "seconds": round(time.time() - t0, 2)}
    facts.update({f"explained_l{i}": e for i, e in enumerate(explained)})
    if log is not None:
        log(f"[ad-flow] matched init from {pairs} pairs of {len(by_speaker)} speakers "
            f"(mouth readings: {source}; {skipped} skipped for an unreadable frame) in "
            f"{facts['seconds']} s; share of z_answer - z_q "
            "explained per level: " + ", ".join(f"{e:.3f}" for e in explained))
    return facts
