"""Video <-> frame lists: reading with OpenCV, writing H.264 through imageio-ffmpeg.

Frames are RGB ``uint8`` arrays of shape ``[H, W, 3]`` everywhere in this project; OpenCV's BGR
order stays inside this module. Written videos are H.264 in yuv420p with even frame sizes (what
browsers and QuickTime play), encoded by the ffmpeg binary the imageio-ffmpeg package bundles;
without it OpenCV's mp4v (MPEG-4 Part 2) is the fallback, with a one-line warning.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import cv2
import numpy as np

__all__ = ["read_video", "video_codec", "write_video"]


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


def _rgb(frame: np.ndarray) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.dtype != np.uint8:
        frame = np.clip(frame, 0, 255).astype(np.uint8)
    if frame.ndim == 2:
        return np.repeat(frame[..., None], 3, axis=2)
    return frame[..., :3]


def video_codec(path: str | Path) -> tuple[str, str]:
    """(codec, pixel format) of the first video stream, e.g. ``("h264", "yuv420p")``, read by
    the bundled ffmpeg (ffprobe's answer); ``ValueError`` when it cannot tell."""
    import imageio_ffmpeg

    out = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)],
                         capture_output=True, text=True).stderr
    m = re.search(r"Video: (\w+)[^,]*, (\w+)", out)
    if not m:
        raise ValueError(f"{path}: no video stream found")
    return m.group(1), m.group(2)


def _write_h264(path: Path, frames: list[np.ndarray], fps: float, w: int, h: int) -> None:
    import imageio_ffmpeg

    # yuv420p halves the chroma resolution, so H.264 needs even sizes: pad by one replicated
    # row/column rather than rescale (frames keep their pixels).
    ew, eh = w + w % 2, h + h % 2
    writer = imageio_ffmpeg.write_frames(
        str(path), (ew, eh), fps=float(fps), codec="libx264", pix_fmt_out="yuv420p",
        macro_block_size=2, quality=8, ffmpeg_log_level="error",
        output_params=["-movflags", "+faststart"])
    writer.send(None)
    try:
        for frame in frames:
            rgb = _rgb(frame)
            if (ew, eh) != (w, h):
                rgb = np.pad(rgb, ((0, eh - h), (0, ew - w), (0, 0)), mode="edge")
            writer.send(np.ascontiguousarray(rgb))
    finally:
        writer.close()


def write_video(path: str | Path, frames: Sequence[np.ndarray] | Iterable[np.ndarray],
                fps: float = 25.0) -> Path:
    """Write RGB ``uint8`` frames ``[H, W, 3]`` (all the same size) to an H.264 mp4.

    yuv420p, odd sizes padded to even by one replicated row/column. Grey frames ``[H, W]`` are
    accepted. The parent folder is created. Returns the path. Without a working H.264 encoder
    (imageio-ffmpeg missing or failing) it writes mp4v with a one-line warning on stderr.
    Raises ``ValueError`` when there is no frame, frames differ in size, or no writer opens.
    """
    path = Path(path)
    frames = list(frames)
    if not frames:
        raise ValueError(f"cannot write video {path}: no frames given")
    first = np.asarray(frames[0])
    h, w = first.shape[:2]
    for i, frame in enumerate(frames):
        if np.asarray(frame).shape[:2] != (h, w):
            raise ValueError(f"cannot write video {path}: frame {i} is "
                             f"{np.asarray(frame).shape[1]}x{np.asarray(frame).shape[0]}, "
                             f"expected {w}x{h}")
    if not fps or fps <= 0:
        fps = 25.0
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        _write_h264(path, frames, fps, w, h)
        return path
    except (ImportError, OSError, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"warning: no H.264 encoder ({reason}); wrote {path} as mp4v, which browsers "
              "do not play (pip install imageio-ffmpeg)", file=sys.stderr)
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
