"""Convert the LRW release (mp4 clips) into the frame folders the datasets read.

Input: ``lipread_mp4/WORD/{train,val,test}/WORD_NNNNN.mp4`` (``lrw_root`` may be ``lipread_mp4``
itself or its parent). Output: ``out_dir/SPLIT/WORD/WORD_NNNNN_FF.jpg`` with ``FF = 01..29``
(two digits, or more for clips longer than 99 frames; 1-based, one JPEG per video frame, quality
95).

Streaming: a clip is decoded one frame at a time. A clip that decodes fewer frames than its
container states (a truncated download) is a counted failure, its frames removed, never marked
done. Resumable: every frame is written under a hidden temporary name and renamed, and a clip's marker
``out_dir/SPLIT/.done/WORD/WORD_NNNNN`` (holding its frame count) is written last. A clip with a
marker is skipped; a clip without one (never started, interrupted, failed) is converted again,
overwriting whatever frames it had. The index ignores the hidden ``.done`` folder and ``.``-files.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
from tqdm import tqdm

from lrw.video import VideoReader

__all__ = ["ConvertReport", "convert_lrw", "find_lrw_root", "list_videos"]

JPEG_QUALITY = 95
DONE_DIR = ".done"


@dataclass
class ConvertReport:
    """Outcome of :func:`convert_lrw`. ``failures`` holds ``(video path, one-line reason)``."""

    clips_total: int
    clips_converted: int
    clips_skipped: int
    failures: list[tuple[str, str]] = field(default_factory=list)
    frames_written: int = 0
    strays: int = 0  # files in WORD/SPLIT/ that are neither .mp4 clips nor their .txt metadata

    def summary(self) -> str:
        return (f"{self.clips_total} clips: {self.clips_converted} converted "
                f"({self.frames_written} frames), {self.clips_skipped} already done, "
                f"{len(self.failures)} failed"
                + (f", {self.strays} stray files ignored" if self.strays else ""))


def find_lrw_root(lrw_root: str | Path, split: str = "train") -> Path:
    """The ``lipread_mp4`` folder: ``lrw_root`` itself or ``lrw_root/lipread_mp4``.

    Raises ``ValueError`` (one line) when neither holds ``WORD/SPLIT/`` folders.
    """
    root = Path(lrw_root)
    if not root.is_dir():
        raise ValueError(f"LRW root {root} does not exist or is not a directory "
                         f"(expected lipread_mp4/WORD/{split}/WORD_NNNNN.mp4)")
    for candidate in (root, root / "lipread_mp4"):
        if candidate.is_dir() and any(
                d.is_dir() and (d / split).is_dir() for d in candidate.iterdir()):
            return candidate
    raise ValueError(f"no WORD/{split}/ folders in {root} or {root / 'lipread_mp4'} "
                     f"(expected lipread_mp4/WORD/{split}/WORD_NNNNN.mp4)")


def list_videos(mp4_root: Path, split: str) -> list[Path]:
    """``WORD/SPLIT/*.mp4`` under the ``lipread_mp4`` folder, sorted."""
    videos: list[Path] = []
    for word_dir in sorted(p for p in mp4_root.iterdir() if p.is_dir()):
        split_dir = word_dir / split
        if split_dir.is_dir():
            videos.extend(sorted(p for p in split_dir.iterdir()
                                 if p.suffix.lower() == ".mp4" and not p.name.startswith(".")))
    return videos


def count_strays(mp4_root: Path, split: str) -> int:
    """Files under ``WORD/SPLIT/`` that are neither ``.mp4`` clips nor LRW's ``.txt`` metadata
    (hidden files aside): ignored by the conversion, and counted so that it says so."""
    n = 0
    for word_dir in (p for p in mp4_root.iterdir() if p.is_dir()):
        split_dir = word_dir / split
        if split_dir.is_dir():
            n += sum(1 for p in split_dir.iterdir() if not p.name.startswith(".")
                     and p.suffix.lower() not in (".mp4", ".txt"))
    return n


def _marker(out_split: Path, video: Path) -> Path:
    return out_split / DONE_DIR / video.parent.parent.name / video.stem


def _convert_one(video: Path, out_split: Path) -> tuple[str, int, str | None]:
    """Convert one clip, streaming (one decoded frame in memory at a time). Returns ``(video,
    frames written, error or None)``; never raises. A clip that decodes fewer frames than its
    container states (truncated) is a failure: its frames are removed and it is not marked
    done, so it is converted again once the file is whole."""
    written: list[Path] = []
    try:
        reader = VideoReader(video)
        word = video.parent.parent.name
        word_dir = out_split / word
        word_dir.mkdir(parents=True, exist_ok=True)
        # the name width needs the count before the end: the container's, else two digits
        width = max(2, len(str(reader.declared)))
        params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
        for i, rgb in enumerate(reader, start=1):
            ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
            if not ok:
                raise ValueError(f"JPEG encoding failed for frame {i}")
            final = word_dir / f"{video.stem}_{i:0{width}d}.jpg"
            tmp = word_dir / f".{final.name}.part"
            tmp.write_bytes(buf.tobytes())
            os.replace(tmp, final)
            written.append(final)
        marker = _marker(out_split, video)
        marker.parent.mkdir(parents=True, exist_ok=True)
        tmp = marker.with_name(f".{marker.name}.part")
        tmp.write_text(f"{len(written)}\n")
        os.replace(tmp, marker)
        return str(video), len(written), None
    except Exception as e:  # one bad clip must not stop a batch of 500k
        for f in written:  # a short read leaves no frames for the index to train on
            f.unlink(missing_ok=True)
        msg = " ".join(str(e).split()) or type(e).__name__
        return str(video), 0, msg


def _worker_init() -> None:
    cv2.setNumThreads(1)  # one process per core already


def convert_lrw(lrw_root: str | Path, out_dir: str | Path, split: str = "train",
                workers: int = 1, progress: bool = True) -> ConvertReport:
    """Convert ``lipread_mp4/WORD/SPLIT/*.mp4`` into ``out_dir/SPLIT/WORD/WORD_NNNNN_FF.jpg``.

    Clips already converted (marker present) are skipped. ``workers > 1`` decodes in a process
    pool. A video that cannot be decoded becomes a ``failures`` entry and the batch goes on.
    Raises ``ValueError`` (one line) for a root without ``WORD/SPLIT/`` folders.
    """
    mp4_root = find_lrw_root(lrw_root, split)
    out_split = Path(out_dir) / split
    videos = list_videos(mp4_root, split)
    todo = [v for v in videos if not _marker(out_split, v).is_file()]
    report = ConvertReport(clips_total=len(videos), clips_converted=0,
                           clips_skipped=len(videos) - len(todo),
                           strays=count_strays(mp4_root, split))
    if not todo:
        return report
    out_split.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(todo), desc=f"LRW {split} -> jpg", unit="clip", disable=not progress)

    def record(result: tuple[str, int, str | None]) -> None:
        video, n, error = result
        if error is None:
            report.clips_converted += 1
            report.frames_written += n
        else:
            report.failures.append((video, error))
        bar.update(1)

    try:
        if workers <= 1:
            for video in todo:
                record(_convert_one(video, out_split))
        else:
            # spawn: the parent may hold threads (torch, OpenCV) that fork would copy half-alive
            ctx = mp.get_context("spawn")
            with ProcessPoolExecutor(max_workers=workers, mp_context=ctx,
                                     initializer=_worker_init) as pool:
                chunk = max(1, min(64, len(todo) // (workers * 8)))
                for result in pool.map(_convert_one, todo, [out_split] * len(todo),
                                       chunksize=chunk):
                    record(result)
    finally:
        bar.close()
    return report
