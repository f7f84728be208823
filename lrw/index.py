"""Index of an LRW-style frame folder, with an on-disk cache.

Layout (the word-folder root)::

    ROOT/ABOUT/ABOUT_00001_01.jpg      WORD/WORD_ID_FF.EXT
    ROOT/ABOUT/ABOUT_00001_02.jpg      FF: frame number (1-based in LRW, any number of digits)
    ...
    ROOT/ZERO/ZERO_00042_29.jpg

Frames are grouped into clips by ``(WORD, ID)`` and ordered by the numeric value of ``FF``
(so ``_2`` comes before ``_10``). Class ids come from the *sorted* word names, so they are the
same on every machine and for every split holding the same words.

Anything else is a stray and is ignored (but counted in :class:`IndexStats`): files at the root,
files that are not images, names not of the form ``WORD_ID_FF.EXT`` with ``WORD`` equal to the
folder name. Hidden entries (names starting with ``.``) are ignored silently.

The cache (``ROOT/.lrw_index.json``, or ``~/.cache/flowdisentangle/`` when ROOT is read-only)
stores each word folder's listing keyed on the folder's name and modification time, so a restart
only lists the word folders that changed since (adding or removing a file updates the folder's
mtime). As in git's "racy" rule, a folder modified less than 2 seconds before it was listed is
listed again on the next open, because coarse file-system clocks could hide a later change. The root's own mtime is not part of the key, because writing the cache into the root
changes it; the root is listed on every open instead (one entry per word, cheap).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from faces.io import umask_mode

__all__ = [
    "IMAGE_EXTENSIONS",
    "CACHE_NAME",
    "Clip",
    "IndexStats",
    "LRWIndex",
    "open_index",
    "scan_word_folder",
    "user_cache_path",
]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
CACHE_NAME = ".lrw_index.json"
CACHE_FORMAT = "lrw-index/1"
_RACY_NS = 2_000_000_000  # listings of folders changed less than 2 s ago are not trusted later
_EXPECTED = "WORD/WORD_NNNNN_FF.jpg"
_NAME_RE = re.compile(r"^(?P<word>.+)_(?P<id>\d+)_(?P<ff>\d+)(?P<ext>\.[A-Za-z]+)$")


# --------------------------------------------------------------------------------------------
# Clips and frame names, stored compactly (LRW has ~500k clips and ~14.5M frames)
# --------------------------------------------------------------------------------------------

def _frame_names(word: str, clip_id: str, spec: list) -> list[str]:
    """Expand a clip's frame spec into file names.

    ``spec`` is ``[ext, width, first, last]`` for frames ``first..last`` written with ``width``
    digits (the common case), else ``[ext, [ff, ff, ...]]`` with the literal ``FF`` strings.
    """
    ext = spec[0]
    if len(spec) == 4:
        width, first, last = spec[1], spec[2], spec[3]
        return [f"{word}_{clip_id}_{n:0{width}d}{ext}" for n in range(first, last + 1)]
    return [f"{word}_{clip_id}_{ff}{ext}" for ff in spec[1]]


def _make_spec(items: list[tuple[int, str, str]]) -> list:
    """Compact spec from ``(number, ff_string, ext)`` triples sorted by number."""
    exts = {ext for _, _, ext in items}
    numbers = [n for n, _, _ in items]
    if len(exts) == 1:
        ext = next(iter(exts))
        width = len(items[0][1])
        contiguous = numbers == list(range(numbers[0], numbers[0] + len(numbers)))
        if contiguous and all(ff == f"{n:0{width}d}" for n, ff, _ in items):
            return [ext, width, numbers[0], numbers[-1]]
        return [ext, [ff for _, ff, _ in items]]
    # mixed extensions inside one clip: keep full suffixes per frame
    return ["", [ff + ext for _, ff, ext in items]]


@dataclass(frozen=True)
class Clip:
    """One clip: the frames of ``WORD_ID`` in numeric order.

    ``frames`` is computed on access (a list of paths); the index itself only keeps a compact
    spec per clip so that full LRW fits in little memory.
    """

    word: str
    label: int
    clip_id: str
    folder: Path
    spec: list = field(repr=False, compare=False)

    @property
    def frames(self) -> list[Path]:
        return [self.folder / name for name in _frame_names(self.word, self.clip_id, self.spec)]

    @property
    def n_frames(self) -> int:
        return self.spec[3] - self.spec[2] + 1 if len(self.spec) == 4 else len(self.spec[1])

    @property
    def name(self) -> str:
        """``WORD_ID``, as in the LRW release."""
        return f"{self.word}_{self.clip_id}"

    def __len__(self) -> int:
        return self.n_frames


@dataclass
class IndexStats:
    """Counts gathered while indexing (strays are ignored files)."""

    n_words: int = 0
    n_clips: int = 0
    n_frames: int = 0
    n_stray: int = 0  # non-images, malformed names, files at the root
    n_empty_words: int = 0  # word folders without any frame (not classes)
    n_scanned_words: int = 0  # word folders listed this time (the rest came from the cache)
    from_cache: bool = False  # True when no word folder had to be listed
    cache_path: str | None = None


class _FrameList(Sequence):
    """Flat read-only view ``[(path, label), ...]`` over the clips, built on demand."""

    def __init__(self, clips: list[Clip]):
        self._clips = clips
        self._starts: list[int] = []
        total = 0
        for clip in clips:
            self._starts.append(total)
            total += clip.n_frames
        self._len = total

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self._len))]
        if i < 0:
            i += self._len
        if not 0 <= i < self._len:
            raise IndexError(i)
        c = bisect.bisect_right(self._starts, i) - 1
        clip = self._clips[c]
        k = i - self._starts[c]
        spec = clip.spec
        if len(spec) == 4:  # contiguous frames: build the one name needed
            name = f"{clip.word}_{clip.clip_id}_{spec[2] + k:0{spec[1]}d}{spec[0]}"
        else:
            name = f"{clip.word}_{clip.clip_id}_{spec[1][k]}{spec[0]}"
        return clip.folder / name, clip.label

    def __iter__(self) -> Iterator[tuple[Path, int]]:
        for clip in self._clips:
            for path in clip.frames:
                yield path, clip.label


class LRWIndex:
    """Clips and frames of an LRW-style word-folder root (see the module docstring).

    Attributes: ``root`` (the word-folder root), ``words`` (sorted; ``label == words.index(word)``),
    ``clips`` (list of :class:`Clip`, sorted by word then numeric id), ``frames`` (flat sequence of
    ``(path, label)``), ``n_frames``, ``stats`` (:class:`IndexStats`).
    """

    def __init__(self, root: Path, listing: dict[str, dict], stats: IndexStats):
        self.root = root
        self.words: list[str] = sorted(w for w, entry in listing.items() if entry["clips"])
        self.word_to_label = {w: i for i, w in enumerate(self.words)}
        self.clips: list[Clip] = []
        for word in self.words:
            folder = root / word
            label = self.word_to_label[word]
            for clip_id, spec in listing[word]["clips"]:
                self.clips.append(Clip(word, label, clip_id, folder, spec))
        self.frames = _FrameList(self.clips)
        self.n_frames = len(self.frames)
        stats.n_words = len(self.words)
        stats.n_clips = len(self.clips)
        stats.n_frames = self.n_frames
        stats.n_empty_words = sum(1 for entry in listing.values() if not entry["clips"])
        self.stats = stats

    @property
    def n_classes(self) -> int:
        return len(self.words)

    def __len__(self) -> int:
        return len(self.clips)

    def ignored_note(self) -> str | None:
        """One line counting what indexing ignored (``None`` when nothing was): stray files
        (non-images, names that are not ``WORD_ID_FF`` of their word folder, files at the root)
        and word folders without a frame."""
        s = self.stats
        parts = [f"{s.n_stray} stray file{'s' * (s.n_stray != 1)} (not WORD/WORD_ID_FF.jpg)"
                 if s.n_stray else "",
                 f"{s.n_empty_words} word folder{'s' * (s.n_empty_words != 1)} without frames"
                 if s.n_empty_words else ""]
        parts = [p for p in parts if p]
        return f"note: {self.root}: ignored {' and '.join(parts)}" if parts else None

    def __repr__(self) -> str:
        s = self.stats
        return (f"LRWIndex({str(self.root)!r}: {s.n_words} words, {s.n_clips} clips, "
                f"{s.n_frames} frames, {s.n_stray} stray files)")


# --------------------------------------------------------------------------------------------
# Listing
# --------------------------------------------------------------------------------------------

def scan_word_folder(folder: Path) -> dict:
    """List one word folder: ``{"clips": [[clip_id, spec], ...], "stray": n}``.

    Clips are sorted by numeric id, frames by numeric frame number.
    """
    word = folder.name
    groups: dict[str, list[tuple[int, str, str]]] = {}
    stray = 0
    with os.scandir(folder) as it:
        for entry in it:
            name = entry.name
            if name.startswith("."):
                continue
            m = _NAME_RE.match(name)
            if (m is None or m["word"] != word or m["ext"].lower() not in IMAGE_EXTENSIONS
                    or not entry.is_file()):
                stray += 1
                continue
            groups.setdefault(m["id"], []).append((int(m["ff"]), m["ff"], m["ext"]))
    clips = []
    for clip_id in sorted(groups, key=lambda s: (int(s), s)):
        items = sorted(groups[clip_id])
        clips.append([clip_id, _make_spec(items)])
    return {"clips": clips, "stray": stray}


def _list_root(root: Path) -> tuple[list[tuple[str, int]], int]:
    """Word folders ``[(name, mtime_ns), ...]`` sorted by name, and the number of root strays."""
    folders: list[tuple[str, int]] = []
    stray = 0
    with os.scandir(root) as it:
        for entry in it:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                folders.append((entry.name, entry.stat().st_mtime_ns))
            else:
                stray += 1
    folders.sort()
    return folders, stray


# --------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------

def user_cache_path(root: Path) -> Path:
    """Fallback cache file for a read-only ``root``: ``~/.cache/flowdisentangle/lrw-HASH.json``."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "flowdisentangle"
    digest = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:16]
    return base / f"lrw-index-{digest}.json"


def _read_cache(path: Path) -> dict[str, dict]:
    """Cached ``{word: {"mtime_ns", "clips", "stray"}}``; empty when absent or corrupt."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if data.get("format") != CACHE_FORMAT or not isinstance(data.get("words"), dict):
            return {}
        words = data["words"]
        for entry in words.values():  # shallow shape check; anything odd means rebuild
            if not (isinstance(entry, dict) and isinstance(entry.get("mtime_ns"), int)
                    and isinstance(entry.get("clips"), list)):
                return {}
        return words
    except (OSError, ValueError, TypeError, AttributeError):
        return {}


def _write_cache(path: Path, words: dict[str, dict]) -> bool:
    """Write atomically (temp file + rename); False when the location is not writable."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".lrw_index.", suffix=".tmp", dir=path.parent)
        try:
            umask_mode(fd)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"format": CACHE_FORMAT, "words": words}, f, separators=(",", ":"))
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        return True
    except OSError:
        return False


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------

def resolve_root(path: str | Path, split: str | None = "train") -> Path:
    """The word-folder root: ``path/split`` when that is a directory, else ``path`` itself."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(
            f"LRW folder {path} does not exist or is not a directory "
            f"(expected {path}/{_EXPECTED} or {path}/{split or 'train'}/{_EXPECTED})")
    if split and (path / split).is_dir():
        return path / split
    return path


def open_index(path: str | Path, split: str | None = "train", cache: bool = True) -> LRWIndex:
    """Index an LRW-style folder.

    ``path`` is either the word-folder root or its parent holding ``split/`` (so ``DATA`` and
    ``DATA/train`` both work). With ``cache=True`` the listing is read from and written to the
    cache (see the module docstring); a corrupt cache is rebuilt silently.

    Raises ``ValueError`` (one line, naming the folder) when the folder is missing, holds no word
    folder, or no frame named ``WORD_ID_FF.jpg``.
    """
    root = resolve_root(path, split)
    folders, root_stray = _list_root(root)
    if not folders:
        raise ValueError(
            f"no word folders in {root} (expected {root}/{_EXPECTED}; "
            f"found {root_stray} files and no sub-folder)")

    cache_file: Path | None = None
    cached: dict[str, dict] = {}
    if cache:
        # prefer the candidate that is most up to date (the root one may be stale and read-only)
        best = -1
        for candidate in (root / CACHE_NAME, user_cache_path(root)):
            words = _read_cache(candidate)
            fresh = sum(1 for n, t in folders if n in words and words[n]["mtime_ns"] == t)
            if words and fresh > best:
                cached, cache_file, best = words, candidate, fresh

    listing: dict[str, dict] = {}
    scanned = 0
    now_ns = time.time_ns()
    for name, mtime_ns in folders:
        entry = cached.get(name)
        if entry is not None and entry["mtime_ns"] == mtime_ns:
            listing[name] = entry
            continue
        result = scan_word_folder(root / name)
        # The mtime was taken before listing, so a change during the listing re-lists next time.
        # A folder modified within the last seconds may change again without its mtime moving
        # (coarse file-system clocks), so such a listing is stored as never valid.
        racy = now_ns - mtime_ns < _RACY_NS
        result["mtime_ns"] = -1 if racy else mtime_ns
        listing[name] = result
        scanned += 1

    stats = IndexStats(n_stray=root_stray + sum(int(e.get("stray", 0)) for e in listing.values()),
                       n_scanned_words=scanned, from_cache=cache_file is not None and scanned == 0)

    if cache and (scanned or set(cached) != set(listing)):
        for candidate in (root / CACHE_NAME, user_cache_path(root)):
            if _write_cache(candidate, listing):
                cache_file = candidate
                break
    stats.cache_path = str(cache_file) if cache_file is not None else None

    if not any(entry["clips"] for entry in listing.values()):
        raise ValueError(
            f"no frames in {root}: expected files named {_EXPECTED} inside the "
            f"{len(folders)} word folders (found {stats.n_stray} other files)")
    return LRWIndex(root, listing, stats)
