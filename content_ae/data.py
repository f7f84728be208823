"""A/B image sets: ``DATA/trainA/ trainB/ [testA/ testB/]`` folders or the original's list files.

A holds the faces with the attribute, B the faces without it. A split is read from the folder
``DATA/{split}A`` when it exists, else from the list file ``DATA/{split}A.txt`` (one path per
line; relative paths are resolved against the list's folder, so a list never needs absolute
paths). Images go through the project's transform (:func:`lrw.datasets.load_image`): float32
``[3, S, S]`` in ``[-0.5, 0.5]``. Unreadable images are skipped and counted.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from lrw.datasets import FrameDataset, list_images
from lrw.index import IMAGE_EXTENSIONS

__all__ = ["PairDataset", "find_split", "read_list", "split_paths"]


def read_list(path: Path) -> list[Path]:
    """Paths named in a list file (blank lines and ``#`` comments ignored), relative ones
    resolved against the list's folder."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the list file ({exc})") from None
    out = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        p = Path(line)
        out.append(p if p.is_absolute() else path.parent / p)
    return out


def _side(root: Path, split: str, side: str) -> list[Path] | None:
    folder, listing = root / f"{split}{side}", root / f"{split}{side}.txt"
    if folder.is_dir():
        return list_images(folder)
    if listing.is_file():
        return read_list(listing)
    return None


def find_split(root: str | Path, preferred: str = "test") -> str:
    """``preferred`` when ``root`` has both of its sides, else ``"train"``."""
    root = Path(root)
    if _side(root, preferred, "A") and _side(root, preferred, "B"):
        return preferred
    return "train"


def split_paths(root: str | Path, split: str = "train") -> tuple[list[Path], list[Path]]:
    """``(A paths, B paths)`` of ``split``; one-line ``ValueError`` naming the fix otherwise."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: no such folder (give DATA with {split}A/ and {split}B/)")
    sides = {s: _side(root, split, s) for s in ("A", "B")}
    if sides["A"] is None and sides["B"] is None:
        exts = "/".join(sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS))
        if not list_images(root):
            raise ValueError(f"{root}: no images ({exts}) at all; make the set with "
                             "preprocess.py --celeba or python -m synthface.attributes")
        raise ValueError(f"{root}: no {split}A/ and {split}B/ folders (or {split}A.txt, "
                         f"{split}B.txt lists); put the faces with the attribute in "
                         f"{split}A/, the others in {split}B/")
    for s, paths in sides.items():
        what = "with" if s == "A" else "without"
        if paths is None:
            raise ValueError(f"{root}: {split}{s}/ is missing (the faces {what} the "
                             f"attribute); add {split}{s}/ or {split}{s}.txt")
        if not paths:
            raise ValueError(f"{root / (split + s)}: empty (no images of faces {what} the "
                             "attribute); add images to it")
    return sides["A"], sides["B"]


class PairDataset(Dataset):
    """Items ``(a [3, S, S], b [3, S, S])``, floats in ``[-0.5, 0.5]``.

    ``len`` is the larger side; item ``i`` pairs ``A[i % nA]`` with ``B[(i * 7919) % nB]``,
    so over an epoch every image of the larger side appears once and the pairing is not the
    identity permutation of two equally long lists.
    """

    def __init__(self, paths_a: list[Path], paths_b: list[Path], img_size: int):
        self.a = FrameDataset(paths_a, img_size)
        self.b = FrameDataset(paths_b, img_size)
        self.img_size = int(img_size)

    def __len__(self) -> int:
        return max(len(self.a), len(self.b))

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.a[i % len(self.a)][0], self.b[(i * 7919) % len(self.b)][0]

    @property
    def n_skipped(self) -> int:
        """Unreadable images met so far in this process (both sides)."""
        return self.a.n_skipped + self.b.n_skipped

    def skipped_summary(self) -> str:
        parts = [s for s in (self.a.skipped_summary(), self.b.skipped_summary()) if s]
        return "; ".join(parts)

    def record_unreadable(self, path) -> None:
        """Both sides' unreadable files go to ``path`` (``FrameDataset.record_unreadable``)."""
        self.a.record_unreadable(path)
        self.b.record_unreadable(path)
