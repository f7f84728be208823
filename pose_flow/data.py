"""Pose data: ``DATA/IDENTITY/CLIP/FRAME.{png,jpg}`` with ``FRAME.npy`` (68x2 landmarks in 0..1)
beside each frame, an index cached like the LRW index, and the quadruplet sampler.

VoxCeleb1's face-crop layout (``idNNNNN/VIDEO/NNNNN.jpg``) and VoxCeleb2's work as they are once
``preprocess.py --landmarks DATA`` has written the ``.npy`` files. A frame whose landmark file is
missing, of the wrong shape or not finite is skipped and counted (``PoseIndex.skipped``); the
cache remembers the verdict per clip folder, keyed on the folder's modification time.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from faces.io import umask_mode
from lrw.datasets import load_image

from .conditions import mirror

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
CACHE_NAME = ".pose_index.json"
CACHE_FORMAT = "flowdisentangle-pose-index/1"


class PoseDataError(ValueError):
    """The pose data cannot be used; the message is one line naming the file or folder and the
    fix."""


def landmark_path(frame: Path) -> Path:
    return frame.with_suffix(".npy")


# The last LANDMARK_CACHE_ENTRIES landmark arrays the training sampler read, keyed by path, size,
# modification time and inode: reading a 544-byte .npy file costs ~1 ms (header parsing and
# several small reads), which was 8 % of a 32 px pose-flow training step (4 frames per item).
LANDMARK_CACHE_ENTRIES = 200_000
_landmarks: OrderedDict[tuple, np.ndarray] = OrderedDict()


def cached_landmarks(path: str | Path) -> tuple[np.ndarray | None, str]:
    """:func:`read_landmarks`, with usable arrays kept (a copy is returned: the caller's to
    change); a file that changed on disk since is read again."""
    try:
        st = os.stat(path)
    except OSError:
        return None, "missing"
    key = (os.fspath(path), st.st_size, st.st_mtime_ns, st.st_ino)
    lm = _landmarks.get(key)
    if lm is not None:
        _landmarks.move_to_end(key)
        return lm.copy(), ""
    lm, reason = read_landmarks(path)
    if lm is not None:
        _landmarks[key] = lm.copy()
        while len(_landmarks) > LANDMARK_CACHE_ENTRIES:
            _landmarks.popitem(last=False)
    return lm, reason


def read_landmarks(path: str | Path) -> tuple[np.ndarray | None, str]:
    """``(landmarks float32 [68, 2], "")`` or ``(None, reason)`` with reason one of
    ``missing``, ``unreadable``, ``shape``, ``nan``, ``range`` (a value outside [0, 1]: pixel
    coordinates, or not landmarks at all)."""
    path = Path(path)
    if not path.is_file():
        return None, "missing"
    try:
        lm = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None, "unreadable"
    if lm.shape != (68, 2):
        return None, "shape"
    if not np.isfinite(lm).all():
        return None, "nan"
    if lm.min() < 0 or lm.max() > 1:
        return None, "range"
    return lm.astype(np.float32), ""


REASONS = {"missing": "no landmark file", "unreadable": "its landmark file is unreadable",
           "shape": "its landmark file is not 68 x 2", "nan": "its landmark file is not finite",
           "range": "its landmark file holds values outside [0, 1] (landmarks are x / width, "
                    "y / height)"}
"""What :func:`read_landmarks`' reasons mean, for messages."""


def _scan_clip(clip: Path) -> tuple[list[str], dict[str, int]]:
    frames, skipped = [], Counter()
    for p in sorted(clip.iterdir()):
        if p.name.startswith(".") or p.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        _, reason = read_landmarks(landmark_path(p))
        if reason:
            skipped[reason] += 1
        else:
            frames.append(p.name)
    return frames, dict(skipped)


def _cache_file(root: Path) -> Path:
    return root / CACHE_NAME


def _user_cache_file(root: Path) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "flowdisentangle"
    return base / f"pose-index-{hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:16]}.json"


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data["clips"] if data.get("format") == CACHE_FORMAT else {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _write_cache(path: Path, clips: dict) -> bool:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".pose_index.", suffix=".tmp", dir=path.parent)
        umask_mode(fd)
        with os.fdopen(fd, "w") as f:
            json.dump({"format": CACHE_FORMAT, "clips": clips}, f, separators=(",", ":"))
        os.replace(tmp, path)
        return True
    except OSError:
        return False


@dataclass
class PoseIndex:
    """Frames with usable landmarks, grouped by identity (sorted names: machine-independent)."""

    root: Path
    frames: list[Path]
    identity_of: list[int]
    identities: list[str]
    skipped: dict[str, int] = field(default_factory=dict)
    by_identity: list[list[int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        groups: list[list[int]] = [[] for _ in self.identities]
        for i, k in enumerate(self.identity_of):
            groups[k].append(i)
        self.by_identity = groups

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def skipped_summary(self) -> str:
        if not self.n_skipped:
            return ""
        parts = ", ".join(f"{n} {k}" for k, n in sorted(self.skipped.items()))
        return f"skipped {self.n_skipped} frames without usable landmarks ({parts})"


def open_index(root: str | Path, cache: bool = True) -> PoseIndex:
    """Index ``root/IDENTITY/CLIP/FRAME`` (frames directly in ``IDENTITY/`` count as one clip)."""
    root = Path(root)
    if not root.is_dir():
        raise PoseDataError(f"{root}: no such folder (expected DATA/IDENTITY/CLIP/FRAME.png "
                            "with FRAME.npy landmarks beside each frame)")
    cache_path = _cache_file(root)
    cached = _read_cache(cache_path) if cache else {}
    if cache and not cached:
        cached = _read_cache(_user_cache_file(root))
    clips: dict[str, dict] = {}
    changed = False
    identities = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    for ident in identities:
        folder = root / ident
        subdirs = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
        for clip in [folder, *subdirs]:
            key = str(clip.relative_to(root))
            mtime = clip.stat().st_mtime_ns
            entry = cached.get(key)
            if not (isinstance(entry, dict) and entry.get("mtime_ns") == mtime):
                frames, skipped = _scan_clip(clip)
                entry = {"mtime_ns": mtime, "frames": frames, "skipped": skipped}
                changed = True
            clips[key] = entry
    if cache and (changed or set(clips) != set(cached)):
        if not _write_cache(cache_path, clips):
            _write_cache(_user_cache_file(root), clips)
    frames, identity_of, names, skipped = [], [], [], Counter()
    for ident in identities:
        n_before = len(frames)
        for key, entry in clips.items():
            if Path(key).parts[0] != ident:
                continue
            skipped.update(entry["skipped"])
            frames += [root / key / f for f in entry["frames"]]
        if len(frames) > n_before:
            identity_of += [len(names)] * (len(frames) - n_before)
            names.append(ident)
    return PoseIndex(root, frames, identity_of, names, dict(skipped))


class QuadrupletDataset(Dataset):
    """Item ``i``: frame ``i`` (anchor), another frame of its identity (positive) and two frames
    of one other identity (negatives) -> ``(images [4, 3, S, S] in [-0.5, 0.5],
    landmarks [4, 68, 2])``.

    An identity with a single frame is its own positive (the pair then only teaches the
    reconstruction terms); counted in ``single_frame_identities``. Needs two identities.
    ``flip``: the probability that an item's four frames are mirrored left-right together
    (:func:`mirror`); the draw comes from the item's generator, after its partners.
    """

    def __init__(self, root: str | Path, img_size: int, cache: bool = True,
                 flip: float = 0.0) -> None:
        self.index = open_index(root, cache)
        self.img_size = img_size
        self.flip = float(flip)
        ix = self.index
        if not ix.frames:
            raise PoseDataError(f"{root}: no frame with usable landmarks "
                                f"({ix.skipped_summary() or 'no images found'}); run "
                                "`python preprocess.py --landmarks DATA` first")
        if len(ix.identities) < 2:
            raise PoseDataError(f"{root}: only one identity ({ix.identities[0]}); the "
                                "quadruplet loss needs at least two identity folders")
        self.single_frame_identities = sum(1 for g in ix.by_identity if len(g) == 1)
        self.draw_seed: tuple[int, int] | None = None  # (seed, epoch) once set_epoch is called

    def set_epoch(self, epoch: int, seed: int = 0) -> None:
        """Draw item ``i``'s partners from a generator seeded by ``(seed, epoch, i)`` (the
        training loop calls this every epoch): the same quadruplets whatever the number of
        processes, data-loader workers or a resume. Before it is called: the global RNG."""
        self.draw_seed = (int(seed), int(epoch))

    def __len__(self) -> int:
        return len(self.index.frames)

    def _other(self, group: list[int], i: int, g: torch.Generator | None) -> int:
        if len(group) == 1:
            return group[0]
        j = group[int(torch.randint(len(group) - 1, (1,), generator=g))]
        return j if j != i else group[-1]

    def indices(self, i: int, g: torch.Generator | None = None) -> tuple[int, int, int, int]:
        ix = self.index
        k = ix.identity_of[i]
        pos = self._other(ix.by_identity[k], i, g)
        other = int(torch.randint(len(ix.identities) - 1, (1,), generator=g))
        other += other >= k
        group = ix.by_identity[other]
        n1 = group[int(torch.randint(len(group), (1,), generator=g))]
        return i, pos, n1, self._other(group, n1, g)

    def load(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        path = self.index.frames[i]
        lm, reason = cached_landmarks(landmark_path(path))
        if lm is None:  # changed since it was indexed
            raise PoseDataError(f"{landmark_path(path)}: landmarks now {reason}; "
                                "re-run `python preprocess.py --landmarks DATA`")
        return load_image(path, self.img_size), torch.from_numpy(lm)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = None
        if self.draw_seed is not None:
            seed, epoch = self.draw_seed
            g = torch.Generator().manual_seed(
                (seed * 1_000_003 + epoch * 7919 + i * 104_729 + 1) % (2**63 - 1))
        items = [self.load(j) for j in self.indices(i, g)]
        images, lm = torch.stack([a for a, _ in items]), torch.stack([b for _, b in items])
        if self.flip > 0 and float(torch.rand((), generator=g)) < self.flip:
            images, lm = mirror(images, lm)
        return images, lm
