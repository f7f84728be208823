"""Matched pairs: the test's own task made from training data and mouth readings only.

At test time a talking-face model gets the query with another person's mouth blended in (the
mouth mix) and must show the query's own mouth in that state. Training data can say what the
answer is without any rendering: for a query frame of speaker A and a source frame ``B_t`` of
another speaker, it is **A's own training frame whose mouth reads nearest ``B_t``'s**.
:class:`MatchedPairs` draws (query clip, source clip) pairs of different speakers and yields,
per pair, the query (A's most closed mouth), the mixes made as ``test.py`` makes them (the
gain-matched seamless mouth clone at 256 px, brought to the frames' size) and the answers.
AD-flow's ``--init matched`` fits its encoders to them in closed form; MI-flow's
``--matched_weight`` trains on them.

Mouth readings (:func:`faces.metrics.mouth_reading`: inner-lip opening and width in inter-ocular
distances, the width relative to the speaker's median so that wide lips do not read as a wide
mouth) come from landmarks: ``FRAME.npy`` beside each frame (``preprocess.py --landmarks DATA``)
or, for a synthetic set, the exact landmarks of the recorded mouth states. Speakers: a
synthetic set records them; elsewhere each clip is its own speaker (answers come from the query's
own clip; LRW records no speakers).
"""

from __future__ import annotations

import functools
import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from faces.blend import mouth_box, mouth_mix
from faces.io import read_image
from faces.metrics import mouth_reading
from faces.parallel import thread_imap

from .datasets import ClipDataset
from .synthetic import SyntheticSet, train_frame

__all__ = ["MIX_SIZE", "MatchedPairs", "clip_readings", "model_tensor", "stored_mix"]

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


def model_tensor(images: list[np.ndarray], size: int) -> Tensor:
    """uint8 images -> [N, 3, size, size] in [-0.5, 0.5], resized as test.py resizes."""
    out = np.stack([train_frame(im, size) for im in images])
    return torch.from_numpy(out).permute(0, 3, 1, 2).float().div_(255).sub_(0.5)


def stored_mix(q: np.ndarray, src: np.ndarray) -> np.ndarray:
    """The mouth mix made at ``MIX_SIZE`` and brought back to ``q``'s size. Frames stored
    smaller than that are resampled twice on the way; every pixel outside the (one pixel
    wider) mouth box is then ``q``'s own again, so the resampling leaves nothing outside the
    mouth that a model could take for the mouth's change."""
    s = q.shape[0]
    mix = train_frame(mouth_mix(train_frame(q, MIX_SIZE), train_frame(src, MIX_SIZE)), s)
    if s == MIX_SIZE:
        return mix
    top, bottom, left, right = mouth_box(s)
    out = q.copy()
    r0, r1, c0, c1 = max(top - 1, 0), min(bottom + 1, s), max(left - 1, 0), min(right + 1, s)
    out[r0:r1, c0:c1] = mix[r0:r1, c0:c1]
    return out


class MatchedPairs:
    """``pairs`` (query clip, source clip) pairs of different speakers of ``ds``, drawn with
    ``seed`` (module docstring). ``ValueError`` (one line naming ``flag`` and ``fallback``)
    when the data has no mouth readings or fewer than two speakers with them.

    Iterating yields ``(k, q, mixes, answers)`` per pair ``k`` (uint8 ``[H, W, 3]`` images, at
    most ``MIX_SIZE``); a pair with an unreadable frame is skipped and counted in ``skipped``.
    ``within="clip"`` takes the answers from the query's own clip only (one head pose and light,
    where a speaker's clips differ in them, as in the hard synthetic set) instead of from every
    clip of the speaker.
    """

    def __init__(self, ds: ClipDataset, root: str | Path, pairs: int, seed: int = 0,
                 flag: str = "--init matched", fallback: str = "use --init lstsq",
                 within: str = "speaker"):
        if within not in ("speaker", "clip"):
            raise ValueError(f"within must be 'speaker' or 'clip', not {within!r}")
        self.within = within  # where the answers come from: any clip of A's, or the query's
        self.ds = ds
        self.pairs = int(pairs)
        # one window per clip (a ClipDataset with window="random" draws a new one per call)
        self.positions = [ds.positions(clip.n_frames) for clip in ds.clips]
        self.readings, self.speakers, self.source = clip_readings(ds, root, self.positions)
        usable = [i for i, r in enumerate(self.readings) if r is not None]
        if len({self.speakers[i] for i in usable}) < 2:
            raise ValueError(f"{flag}: {root} has mouth readings for "
                             f"{len(usable)} of {len(self.readings)} clips (from {self.source}); "
                             f"write them with `python preprocess.py --landmarks {root}` or "
                             f"{fallback}")
        self.by_speaker: dict[str, list[int]] = {}
        for i in usable:
            self.by_speaker.setdefault(self.speakers[i], []).append(i)
        rng = np.random.default_rng(seed)
        self.drawn: list[tuple[int, int]] = []
        while len(self.drawn) < self.pairs:
            a, b = (usable[int(k)] for k in rng.integers(len(usable), size=2))
            if self.speakers[a] != self.speakers[b]:
                self.drawn.append((a, b))
        self.skipped = 0
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def _frame(self, i: int, j: int) -> np.ndarray:
        """Frame j of clip i's item as stored (at most the mix's size), ``uint8 [H, W, 3]``;
        the last few hundred are kept. ``ValueError`` when it cannot be read. Safe to call
        from several threads."""
        key = (i, j)
        with self._lock:
            img = self._cache.get(key)
        if img is None:
            img = read_image(self.ds.clips[i].frames[self.positions[i][j]])
            img = train_frame(img, MIX_SIZE) if img.shape[0] > MIX_SIZE else img
            with self._lock:
                self._cache[key] = img
                if len(self._cache) > 256:
                    self._cache.popitem(last=False)
        return img

    def _pair(self, k: int) -> tuple[int, np.ndarray, list[np.ndarray], list[np.ndarray]] | None:
        """Pair ``k`` as ``(k, q, mixes, answers)``; None when a frame cannot be read."""
        readings, speakers = self.readings, self.speakers
        a, b = self.drawn[k]
        clips = self.by_speaker[speakers[a]] if self.within == "speaker" else [a]
        own = [(i, j) for i in clips for j in range(len(readings[i]))]
        pool_r = np.concatenate([readings[i] for i in clips])
        near = [own[int(np.argmin(((pool_r - r) ** 2).sum(1)))] for r in readings[b]]
        try:  # only the frames the pair uses are read
            q = self._frame(a, int(np.argmin(readings[a][:, 0])))  # A's most closed mouth
            mixes = [stored_mix(q, self._frame(b, j)) for j in range(len(readings[b]))]
            answers = [self._frame(i, j) for i, j in near]
        except ValueError:
            return None
        return k, q, mixes, answers

    def _pair_at(self, size: int, k: int):
        """:meth:`_pair` with every image brought to ``size`` as :func:`model_tensor` does."""
        item = self._pair(k)
        if item is None:
            return None
        k, q, mixes, answers = item
        return (k, train_frame(q, size), [train_frame(m, size) for m in mixes],
                [train_frame(a, size) for a in answers])

    def _memo_key(self, size: int, rank: int, world: int) -> str:
        """What the pairs at ``size`` depend on: the drawn pairs, and for every clip they read
        from (the source clips, and the query speakers' clips that answer) its speaker,
        readings, window and frame files (path, size, modification time)."""
        used: set[int] = set()
        for a, b in self.drawn:
            used.add(b)
            used.update(self.by_speaker[self.speakers[a]] if self.within == "speaker" else [a])
        h = hashlib.sha1(repr((size, rank, world, self.within, self.drawn)).encode())
        for i in sorted(used):
            h.update(f"{i}|{self.speakers[i]}|{self.positions[i]}".encode())
            h.update(np.ascontiguousarray(self.readings[i]).tobytes())
            for j in self.positions[i]:
                f = self.ds.clips[i].frames[j]
                try:
                    st = os.stat(f)
                    h.update(f"{f}|{st.st_size}|{st.st_mtime_ns}".encode())
                except OSError:
                    h.update(f"{f}|missing".encode())
        return h.hexdigest()

    def iterate(self, rank: int = 0, world: int = 1, size: int | None = None
                ) -> Iterator[tuple[int, np.ndarray, list[np.ndarray], list[np.ndarray]]]:
        """The pairs ``k`` with ``k % world == rank``, as ``(k, q, mixes, answers)``; the next
        pairs are read and mixed in threads while the caller works on this one. With ``size``
        the images come at that size (as :func:`model_tensor` resizes them), and the last such
        walk of at most ``MEMO_BYTES`` is kept for the process: AD-flow's ``--init matched`` and
        MI-flow's pool of one ``make demo`` read the same pairs once."""
        mine = [k for k in range(len(self.drawn)) if k % world == rank]
        key = self._memo_key(size, rank, world) if size is not None else None
        if key is not None and _MEMO.get("key") == key:
            self.skipped += _MEMO["skipped"]
            yield from _MEMO["items"]
            return
        fn = self._pair if size is None else functools.partial(self._pair_at, size)
        items, skipped, nbytes = [], 0, 0
        for item in thread_imap(fn, mine):
            if item is None:
                self.skipped += 1
                skipped += 1
                continue
            if key is not None:  # kept while within MEMO_BYTES; beyond it, not kept at all
                nbytes += sum(im.nbytes for im in (item[1], *item[2], *item[3]))
                items.append(item)
                if nbytes > MEMO_BYTES:
                    key, items = None, []
            yield item
        if key is not None:
            _MEMO.clear()
            _MEMO.update(key=key, items=items, skipped=skipped)

    def __iter__(self):
        return self.iterate()


MEMO_BYTES = 128 * 2**20
"""The most bytes of model-size pairs :meth:`MatchedPairs.iterate` keeps for the process."""

_MEMO: dict = {}
