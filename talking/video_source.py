"""Driving sequences from a video file or a folder of frames, streamed in two passes.

Pass one decodes the frames one at a time and finds the face in each (``faces.sequence``:
detection on a reduced copy, tracking in between, the crop's geometry smoothed over time);
pass two decodes them again and writes the aligned crops. Only the per-frame landmarks and crop
parameters are kept between the passes, so memory does not grow with the video's length. A
video whose decoded frame count falls short of what its container states fails in pass one,
before anything is written (``lrw.video.TruncatedVideoError``).

The crops are written into a temporary folder beside the target and moved into place at the
end, so an interrupted run or a full disk leaves the earlier sequence (or nothing), never half
of one. ``preprocess.py --source NAME VIDEO_OR_FOLDER`` and ``test.py --source VIDEO`` both
come here (``talking.inputs`` keeps ``test.py``'s crops under ``IMAGE_DIR/source_img/.video/``).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from faces.align import apply_transform
from faces.io import read_image, sorted_frames, write_bytes_atomic, write_image
from faces.sequence import crops_of, plan_sequence
from lrw.video import VideoReader

__all__ = ["FrameSource", "open_frames", "write_sequence"]

RECORD = "source.json"


@dataclass
class FrameSource:
    """Frames to align: ``passes()`` starts a new pass over them (RGB ``uint8 [H, W, 3]``);
    ``fps`` is the video's rate (``None``: a frame folder, or a video stating none)."""

    path: Path
    fps: float | None
    passes: Callable[[], Iterable[np.ndarray]]
    count: int  # frames a folder holds, or the frames the container states (0: unknown)
    video: bool


def open_frames(path: str | Path) -> FrameSource:
    """A video file (any container the decoder reads) or a folder of frames (ordered by the
    number in each name). ``ValueError`` (one line, naming the path) when it is neither."""
    path = Path(path)
    if path.is_dir():
        files = sorted_frames(path)
        if not files:
            raise ValueError(f"{path}: no image files in this folder (expected frames such as "
                             "000.jpg, 001.jpg, ...)")
        return FrameSource(path, None, lambda: (read_image(f) for f in files), len(files),
                           False)
    if not path.exists():
        raise ValueError(f"{path}: no such file or folder (give a video file or a folder of "
                         "frames)")
    reader = VideoReader(path)
    return FrameSource(path, reader.fps, lambda: iter(reader), reader.declared, True)


def _progress(total: int, desc: str, enabled: bool):
    return tqdm(total=total or None, desc=desc, unit="frame", file=sys.stderr,
                disable=not enabled or (0 < total < 10))


def write_sequence(src: FrameSource, out_dir: str | Path, size: int = 256, smooth: int = 5,
                   detect_every: int = 2, border: str = "reflect", detector=None,
                   progress: bool = False, landmarks: bool = False, extra: dict | None = None,
                   anchor: str = "head"):
    """Align ``src`` into ``out_dir/000.jpg ...`` plus ``fps.txt`` (and, with ``landmarks``,
    ``000.npy ...``: the frame's 68 landmarks in the crop, in [0, 1], for the pose flow; and
    ``extra`` as ``source.json``); ``anchor``: what the crops follow
    (``faces.sequence``). Returns the ``faces.sequence.SequencePlan`` (its
    ``report`` says what was found). ``ValueError`` when no frame has a face or the video is
    truncated; ``out_dir`` is then left as it was."""
    out_dir = Path(out_dir)
    with _progress(src.count, "landmarks", progress) as bar:
        plan = plan_sequence(src.passes(), detector, smooth, detect_every, bar.update, anchor)
    n = plan.report.frames
    digits = max(3, len(str(n - 1)))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.part{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        written = 0
        with _progress(n, "crops", progress) as bar:
            for i, (crop, matrix) in enumerate(crops_of(src.passes(), plan, size, border)):
                write_image(tmp / f"{i:0{digits}d}.jpg", crop)
                lm = plan.landmarks[i]
                if landmarks and lm is not None:
                    buf = io.BytesIO()
                    pts = apply_transform(np.asarray(lm), matrix) / size
                    np.save(buf, pts.astype(np.float32))
                    write_bytes_atomic(tmp / f"{i:0{digits}d}.npy", buf.getvalue())
                written += 1
                bar.update(1)
        if written != n:
            raise ValueError(f"{src.path}: {written} frames decoded in the second pass, {n} in "
                             "the first (the file changed while it was read?)")
        fps = src.fps
        (tmp / "fps.txt").write_text(f"{fps:g}\n" if fps else "")
        if extra is not None:
            (tmp / RECORD).write_text(json.dumps(extra, indent=1) + "\n")
        old = out_dir.parent / f".{out_dir.name}.old{os.getpid()}"
        if out_dir.exists():
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return plan

