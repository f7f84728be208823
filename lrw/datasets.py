"""Torch datasets over LRW-style frames and plain image folders.

Every image goes through the thesis transform: ``Resize(img_size)`` (shorter side, bilinear with
antialiasing), ``CenterCrop(img_size)``, ``ToTensor`` (``[0, 1]``), then ``- 0.5``, so tensors are
float32 ``[3, H, W]`` in ``[-0.5, 0.5]``.

Images are decoded by the project's one reader, :func:`faces.io.open_rgb` (16-bit, grey,
palette, CMYK, transparency, EXIF orientation; oversized images refused). Unreadable frames
(corrupt, truncated, empty, not an image, too large) are skipped: :class:`FrameDataset`
returns the next readable item instead, :class:`ClipDataset` the nearest readable neighbour in
the clip; when not one can be read, :class:`NoReadableItemError` (one line). Each dataset counts
distinct unreadable files in ``dataset.n_skipped`` and warns once
(:class:`UnreadableFrameWarning`) on the first one; ``dataset.skipped_summary()`` gives the line
``"skipped N unreadable frames (first: PATH)"`` for a log. The counter lives in the process that
read the frame: with ``DataLoader(num_workers > 0)`` each worker counts on its own copy and the
main process's counter stays 0. :meth:`~FrameDataset.record_unreadable` adds a log file that
every process appends to (the training loop's ``unreadable.txt``): the run then warns once in
all and counts every unreadable file at its end.
"""

from __future__ import annotations

import os
import random
import threading
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

from faces.io import open_rgb
from lrw.imageio import array_tensor, thesis_array
from lrw.index import IMAGE_EXTENSIONS, Clip, LRWIndex

__all__ = [
    "ClipDataset",
    "FrameDataset",
    "ImageFolderDataset",
    "NoReadableItemError",
    "UnreadableFrameWarning",
    "list_images",
    "read_unreadable_log",
    "load_image",
]


class UnreadableFrameWarning(UserWarning):
    """A frame could not be decoded and was replaced (see the module docstring)."""


class NoReadableItemError(ValueError, RuntimeError):
    """Not one item of a dataset can be read; the message is one line naming the first file
    and why it failed. (A ``RuntimeError`` as it always was, and a ``ValueError``, the
    scripts' one-line user error.)"""


DECODED_CACHE_BYTES = 256 * 2**20
"""How many bytes of decoded, resized frames :func:`load_image` keeps per process."""

_decoded: OrderedDict[tuple, object] = OrderedDict()
_decoded_bytes = 0
_decoded_lock = threading.Lock()


def load_image(path: str | Path, img_size: int) -> torch.Tensor:
    """Read an image as float32 ``[3, img_size, img_size]`` in ``[-0.5, 0.5]`` (thesis transform).

    Every image mode is read through the project's one reader (:func:`faces.io.open_rgb`:
    16-bit, grey, palette, CMYK, transparency, EXIF orientation). Raises ``ValueError`` (one
    line, naming the file) when it cannot be decoded.

    The last ``DECODED_CACHE_BYTES`` of decoded and resized frames are kept (8-bit, keyed by
    path, size and the file's size, modification time and inode): a small set read epoch after epoch,
    or by several models in one process (``make demo``), is decoded once. The tensor is made
    from them afresh each time, so it is the same, bit for bit, and the caller's to change.
    """
    try:
        st = os.stat(path)
        key = (os.fspath(path), int(img_size), st.st_size, st.st_mtime_ns, st.st_ino)
    except OSError:
        key = None  # open_rgb says why in one line
    arr = None
    if key is not None:
        with _decoded_lock:
            arr = _decoded.get(key)
            if arr is not None:
                _decoded.move_to_end(key)
    if arr is None:
        arr = thesis_array(open_rgb(path), img_size)
        if key is not None:
            _remember(key, arr)
    return array_tensor(arr) - 0.5


def _remember(key: tuple, arr) -> None:
    global _decoded_bytes
    with _decoded_lock:
        if key in _decoded or arr.nbytes > DECODED_CACHE_BYTES:
            return
        _decoded[key] = arr
        _decoded_bytes += arr.nbytes
        while _decoded_bytes > DECODED_CACHE_BYTES:
            _decoded_bytes -= _decoded.popitem(last=False)[1].nbytes


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
        self.first_reason = ""
        self._warned = False
        self.log: Path | None = None

    def add(self, path: Path | str, kind: str, reason: str = "") -> None:
        key = str(path)
        if key in self.bad:
            return
        self.bad.add(key)
        if self.first is None:
            self.first = key
            self.first_reason = reason or f"cannot read {key}"
        # With a shared log only the process that writes its first line warns (once per run).
        first_in_log = self._append(key) if self.log is not None else True
        if not self._warned and first_in_log:
            self._warned = True
            warnings.warn(f"skipped an unreadable {kind} ({self.first_reason}); further ones "
                          "are skipped and counted", UnreadableFrameWarning, stacklevel=3)


    def _append(self, key: str) -> bool:
        """Append ``key`` to the shared log; True when it is the log's first line."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        line = (key.replace("\n", " ") + "\n").encode()
        fd = os.open(self.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
        try:
            os.write(fd, line)
            return os.lseek(fd, 0, os.SEEK_CUR) == len(line)
        finally:
            os.close(fd)


def read_unreadable_log(path: Path) -> list[str]:
    """The distinct paths a dataset's shared log (:meth:`record_unreadable`) holds, in order."""
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return []
    return list(dict.fromkeys(x for x in lines if x))


class _SkippingDataset(Dataset):
    _skips: _SkipCounter

    def record_unreadable(self, path: str | Path) -> None:
        """Also append every unreadable file to ``path`` (one per line), from whichever process
        reads it (data-loader workers, DDP ranks), so a run can count them all
        (:func:`read_unreadable_log`); the warning is then shown once for the whole log."""
        self._skips.log = Path(path)

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
            except ValueError as exc:
                self._skips.add(path, "frame", str(exc))
        raise NoReadableItemError(
            f"none of the {n} training images can be read (first: {self._skips.first_reason})"
            "; check the files, or give the folder of the right frames")


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

    def positions(self, length: int) -> list[int]:
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
                    except ValueError as exc:
                        self._skips.add(paths[j], "frame", str(exc))
                        loaded[j] = None
            return loaded[j]

        out = []
        for j in self.positions(len(paths)):
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
        raise NoReadableItemError(
            f"none of the {n} training clips has a readable frame (first: "
            f"{self._skips.first_reason}); check the files, or give the folder of the right "
            "clips")


def training_root(path: str | Path, split: str = "train") -> Path:
    """``path/split`` when that folder exists (LRW-style and synthetic sets), else ``path``.

    Frame-level models read every image under this folder, so a set's held-out material
    (e.g. the synthetic set's ``image/`` queries and sources) never leaks into training.
    """
    path = Path(path)
    return path / split if (path / split).is_dir() else path
