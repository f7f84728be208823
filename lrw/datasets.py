"""Torch datasets over LRW-style frames and plain image folders.

Every image goes through the thesis transform: ``Resize(img_size)`` (shorter side, bilinear with
antialiasing), ``CenterCrop(img_size)``, ``ToTensor`` (``[0, 1]``), then ``- 0.5``, so tensors are
float32 ``[3, H, W]`` in ``[-0.5, 0.5]``.

Unreadable frames (corrupt, truncated, empty, not an image) are skipped: :class:`FrameDataset`
returns the next readable item instead, :class:`ClipDataset` the nearest readable neighbour in
the clip. Each dataset counts distinct unreadable files in ``dataset.n_skipped`` and warns once
(:class:`UnreadableFrameWarning`) on the first one; ``dataset.skipped_summary()`` gives the line
``"skipped N unreadable frames (first: PATH)"`` for a log. The counter lives in the process that
read the frame: with ``DataLoader(num_workers > 0)`` each worker counts (and warns) on its own
copy and the main process's counter stays 0.
"""

from __future__ import annotations

import os
import random
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from lrw.imageio import thesis_transform
from lrw.index import IMAGE_EXTENSIONS, Clip, LRWIndex

__all__ = [
    "ClipDataset",
    "FrameDataset",
    "ImageFolderDataset",
    "UnreadableFrameWarning",
    "list_images",
    "load_image",
]


class UnreadableFrameWarning(UserWarning):
    """A frame could not be decoded and was replaced (see the module docstring)."""


def load_image(path: str | Path, img_size: int) -> torch.Tensor:
    """Read an image as float32 ``[3, img_size, img_size]`` in ``[-0.5, 0.5]`` (thesis transform).

    Raises ``ValueError`` (one line, naming the file) when it cannot be decoded.
    """
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")  # forces a full decode: truncated files fail here
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise ValueError(f"unreadable image {path}: {e}") from None
    return thesis_transform(im, img_size) - 0.5


def list_images(root: str | Path) -> list[Path]:
    """Every image file under ``root`` (recursively, hidden entries skipped), sorted by path."""
    root = Path(root)
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                found.append(Path(dirpath) / name)
    found.sort()
    return found


class _SkipCounter:
    """Distinct unreadable paths, with one warning per dataset and process."""

    def __init__(self) -> None:
        self.bad: set[str] = set()
        self.first: str | None = None
        self._warned = False

    def add(self, path: Path | str, kind: str) -> None:
        key = str(path)
        if key in self.bad:
            return
        self.bad.add(key)
        if self.first is None:
            self.first = key
        if not self._warned:
            self._warned = True
            warnings.warn(
                f"skipped unreadable {kind} {key}; further ones are counted in n_skipped",
                UnreadableFrameWarning, stacklevel=3)


class _SkippingDataset(Dataset):
    _skips: _SkipCounter

    @property
    def n_skipped(self) -> int:
        """Distinct unreadable files met so far by this process."""
        return len(self._skips.bad)

    def skipped_summary(self) -> str:
        """``"skipped N unreadable frames (first: PATH)"``, or ``""`` when none was skipped."""
        n = self.n_skipped
        if n == 0:
            return ""
        return f"skipped {n} unreadable frame{'s' if n != 1 else ''} (first: {self._skips.first})"


class FrameDataset(_SkippingDataset):
    """Single frames: items ``(image [3, H, W] float32 in [-0.5, 0.5], label int)``.

    ``index_or_paths`` is an :class:`LRWIndex` (labels are word ids), a sequence of paths
    (label 0), or a sequence of ``(path, label)`` pairs. An unreadable frame is replaced by the
    next readable item (wrapping around); ``RuntimeError`` when no item at all can be read.
    """

    def __init__(self, index_or_paths: LRWIndex | Sequence, img_size: int):
        if isinstance(index_or_paths, LRWIndex):
            self.items: Sequence = index_or_paths.frames
        else:
            items = list(index_or_paths)
            if items and isinstance(items[0], (tuple, list)):
                self.items = [(Path(p), int(label)) for p, label in items]
            else:
                self.items = [(Path(p), 0) for p in items]
        if len(self.items) == 0:
            raise ValueError("FrameDataset: no frames given")
        self.img_size = int(img_size)
        self._skips = _SkipCounter()

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        n = len(self.items)
        for k in range(n):
            path, label = self.items[(i + k) % n]
            if str(path) in self._skips.bad:
                continue
            try:
                return load_image(path, self.img_size), int(label)
            except ValueError:
                self._skips.add(path, "frame")
        raise RuntimeError(f"FrameDataset: none of its {n} frames can be read "
                           f"(first: {self._skips.first})")


class ImageFolderDataset(FrameDataset):
    """Every image under ``root``, recursively, with label 0 (Glow on any folder of faces).

    Raises ``ValueError`` (one line) when ``root`` is missing or holds no image.
    """

    def __init__(self, root: str | Path, img_size: int):
        root = Path(root)
        if not root.is_dir():
            raise ValueError(f"image folder {root} does not exist or is not a directory")
        paths = list_images(root)
        if not paths:
            exts = "/".join(sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS))
            raise ValueError(f"no image ({exts}) under {root}")
        self.root = root
        super().__init__(paths, img_size)


class ClipDataset(_SkippingDataset):
    """Whole clips for AD-flow: items ``(frames [T, 3, H, W] float32 in [-0.5, 0.5], label)``.

    ``n_frames=None`` keeps every frame of a clip (clips of different lengths then need batch
    size 1 or a custom collate). With ``n_frames=T`` longer clips are trimmed to a window of T
    frames chosen by ``window``: ``"center"`` (default; LRW centres the word in its clip),
    ``"start"`` or ``"random"``. Shorter clips are padded by repeating their last frame
    (``short="pad"``, default) or dropped at construction (``short="drop"``). Clip order is the
    index order; shuffle with the DataLoader.

    An unreadable frame is replaced by its nearest readable neighbour in the clip (earlier one on
    ties); a clip with no readable frame is replaced by the next clip.
    """

    def __init__(self, index: LRWIndex | Sequence[Clip], img_size: int,
                 n_frames: int | None = None, window: str = "center", short: str = "pad"):
        clips = list(index.clips if isinstance(index, LRWIndex) else index)
        if window not in ("center", "start", "random"):
            raise ValueError(f"window must be 'center', 'start' or 'random', not {window!r}")
        if short not in ("pad", "drop"):
            raise ValueError(f"short must be 'pad' or 'drop', not {short!r}")
        if n_frames is not None and n_frames < 1:
            raise ValueError(f"n_frames must be positive, not {n_frames}")
        if n_frames is not None and short == "drop":
            clips = [c for c in clips if c.n_frames >= n_frames]
        if not clips:
            raise ValueError("ClipDataset: no clips"
                             + (f" with at least {n_frames} frames" if n_frames else ""))
        self.clips = clips
        self.img_size = int(img_size)
        self.n_frames = n_frames
        self.window = window
        self.short = short
        self._skips = _SkipCounter()

    def __len__(self) -> int:
        return len(self.clips)

    def _positions(self, length: int) -> list[int]:
        """Frame positions of one item inside a clip of ``length`` frames."""
        t = self.n_frames
        if t is None:
            return list(range(length))
        if length <= t:
            return list(range(length)) + [length - 1] * (t - length)
        if self.window == "start":
            start = 0
        elif self.window == "center":
            start = (length - t) // 2
        else:
            start = random.randint(0, length - t)
        return list(range(start, start + t))

    def _load_clip(self, clip: Clip) -> torch.Tensor | None:
        paths = clip.frames
        loaded: dict[int, torch.Tensor | None] = {}

        def get(j: int) -> torch.Tensor | None:
            if j not in loaded:
                if str(paths[j]) in self._skips.bad:
                    loaded[j] = None
                else:
                    try:
                        loaded[j] = load_image(paths[j], self.img_size)
                    except ValueError:
                        self._skips.add(paths[j], "frame")
                        loaded[j] = None
            return loaded[j]

        out = []
        for j in self._positions(len(paths)):
            image = get(j)
            d = 1
            while image is None and d < len(paths):
                for k in (j - d, j + d):
                    if 0 <= k < len(paths) and (image := get(k)) is not None:
                        break
                d += 1
            if image is None:
                return None
            out.append(image)
        return torch.stack(out)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        n = len(self.clips)
        for k in range(n):
            clip = self.clips[(i + k) % n]
            frames = self._load_clip(clip)
            if frames is not None:
                return frames, clip.label
        raise RuntimeError(f"ClipDataset: none of its {n} clips has a readable frame "
                           f"(first unreadable: {self._skips.first})")


def training_root(path: str | Path, split: str = "train") -> Path:
    """``path/split`` when that folder exists (LRW-style and synthetic sets), else ``path``.

    Frame-level models read every image under this folder, so a set's held-out material
    (e.g. the synthetic set's ``image/`` queries and sources) never leaks into training.
    """
    path = Path(path)
    return path / split if (path / split).is_dir() else path
