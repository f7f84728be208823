"""Video <-> frame lists with OpenCV.

Frames are RGB ``uint8`` arrays of shape ``[H, W, 3]`` everywhere in this project; OpenCV's BGR
order stays inside this module.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import cv2
import numpy as np

__all__ = ["read_video", "write_video"]


def read_video(path: str | Path) -> tuple[list[np.ndarray], float | None]:
    """Decode every frame of a video file.

    Returns ``(frames, fps)``: ``frames`` is a list of RGB ``uint8`` arrays ``[H, W, 3]`` and
    ``fps`` the container's frame rate, or ``None`` when it is unknown (missing or 0).

    Raises ``ValueError`` (one line, naming the file) when the file cannot be opened or yields
    no frame.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"cannot read video {path}: no such file")
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise ValueError(f"cannot read video {path}: OpenCV could not open it")
        fps = cap.get(cv2.CAP_PROP_FPS)
        frames: list[np.ndarray] = []
        while True:
            ok, bgr = cap.read()
            if not ok or bgr is None:
                break
            if bgr.ndim == 2:
                frames.append(cv2.cvtColor(bgr, cv2.COLOR_GRAY2RGB))
            else:
                frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    finally:
        cap.release()
    if not frames:
        raise ValueError(f"cannot read video {path}: no frame could be decoded")
    fps_out = float(fps) if fps and np.isfinite(fps) and fps > 0 else None
    return frames, fps_out


def write_video(path: str | Path, frames: Sequence[np.ndarray] | Iterable[np.ndarray],
                fps: float = 25.0) -> Path:
    """Write RGB ``uint8`` frames ``[H, W, 3]`` (all the same size) to an mp4 (codec mp4v).

    Grey frames ``[H, W]`` are accepted. The parent folder is created. Returns the path.
    Raises ``ValueError`` when there is no frame, frames differ in size, or OpenCV cannot open
    a writer for ``path``.
    """
    path = Path(path)
    frames = list(frames)
    if not frames:
        raise ValueError(f"cannot write video {path}: no frames given")
    first = np.asarray(frames[0])
    h, w = first.shape[:2]
    if not fps or fps <= 0:
        fps = 25.0
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (w, h))
    if not writer.isOpened():
        raise ValueError(f"cannot write video {path}: OpenCV could not open an mp4v writer")
    try:
        for i, frame in enumerate(frames):
            frame = np.asarray(frame)
            if frame.shape[:2] != (h, w):
                raise ValueError(
                    f"cannot write video {path}: frame {i} is {frame.shape[1]}x{frame.shape[0]},"
                    f" expected {w}x{h}")
            if frame.dtype != np.uint8:
                frame = np.clip(frame, 0, 255).astype(np.uint8)
            if frame.ndim == 2:
                bgr = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
            else:
                bgr = cv2.cvtColor(np.ascontiguousarray(frame[..., :3]), cv2.COLOR_RGB2BGR)
            writer.write(bgr)
    finally:
        writer.release()
    return path
