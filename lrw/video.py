"""Video <-> frames: streaming reads with OpenCV, H.264 (with the source's sound) through the
ffmpeg binary that imageio-ffmpeg bundles.

Frames are RGB ``uint8`` arrays of shape ``[H, W, 3]`` everywhere in this project; OpenCV's BGR
order stays inside this module.

* Reading streams: :class:`VideoReader` decodes one frame at a time, so a long video never sits
  in memory whole (:func:`read_video` collects a short one into a list). After the last frame
  the count decoded is compared with the count the container states: a truncated file raises
  :class:`TruncatedVideoError` instead of passing for a short clip.
* Writing streams too: :class:`VideoWriter` sends frames to the encoder as they come, under a
  temporary name in the target's folder, and moves the finished file into place, so an
  interrupted job or a full disk never leaves a half-written video. Written videos are H.264 in
  yuv420p with even frame sizes (what browsers and QuickTime play); without the bundled ffmpeg,
  OpenCV's mp4v (MPEG-4 Part 2) is the fallback, with a one-line warning. With
  ``audio_from=VIDEO`` the source's first audio track is muxed in (AAC), padded or trimmed to
  the video's length, so sound and picture stay in sync.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

__all__ = ["TruncatedVideoError", "VideoReader", "VideoWriter", "audio_duration",
           "ffmpeg_exe", "has_audio", "media_durations", "read_video", "video_codec",
           "with_tone", "write_tone", "write_video"]

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".flv",
                    ".wmv", ".3gp", ".ts")
# Containers whose stated frame count is an index (exact); others state a duration x rate.
_EXACT_COUNT = (".mp4", ".mov", ".m4v", ".3gp")


class TruncatedVideoError(ValueError):
    """Fewer frames decoded than the container states (a cut-off or damaged file)."""


def ffmpeg_exe() -> str:
    """The ffmpeg binary that the imageio-ffmpeg package ships (``ImportError`` without it)."""
    import imageio_ffmpeg  # deferred: an optional package; only ffmpeg's callers need it

    return imageio_ffmpeg.get_ffmpeg_exe()


def _ffmpeg_info(path: str | Path) -> str:
    """What ``ffmpeg -i PATH`` says about the file's streams (its stderr)."""
    return subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", str(path)],
                          capture_output=True, text=True).stderr


def has_audio(path: str | Path) -> bool:
    """Whether the file has an audio stream (read by the bundled ffmpeg)."""
    return bool(re.search(r"Stream #\S+.*: Audio:", _ffmpeg_info(path)))


def media_durations(path: str | Path) -> dict[str, float]:
    """Seconds of each stream kind in a file, decoded to the end by the bundled ffmpeg:
    ``{"video": ..., "audio": ...}`` (a kind the file lacks is absent)."""
    out: dict[str, float] = {}
    for kind, flag in (("video", "-an"), ("audio", "-vn")):
        err = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostats", "-i", str(path), flag,
                              "-f", "null", "-"], capture_output=True, text=True).stderr
        if flag == "-an" and not re.search(r"Stream #\S+.*: Video:", err):
            continue
        if flag == "-vn" and not re.search(r"Stream #\S+.*: Audio:", err):
            continue
        times = re.findall(r"time=(\d+):(\d+):(\d+(?:\.\d+)?)", err)
        if times:
            h, m, s = times[-1]
            out[kind] = int(h) * 3600 + int(m) * 60 + float(s)
    return out


def audio_duration(path: str | Path) -> float | None:
    """Seconds of the file's audio track, or ``None`` without one."""
    return media_durations(path).get("audio")


def video_codec(path: str | Path) -> tuple[str, str]:
    """(codec, pixel format) of the first video stream, e.g. ``("h264", "yuv420p")``, read by
    the bundled ffmpeg (ffprobe's answer); ``ValueError`` when it cannot tell."""
    m = re.search(r"Video: (\w+)[^,]*, (\w+)", _ffmpeg_info(path))
    if not m:
        raise ValueError(f"{path}: no video stream found")
    return m.group(1), m.group(2)


# -- reading ---------------------------------------------------------------------------------


class VideoReader:
    """Frames of a video file, decoded one at a time (iterate it; it can be iterated again).

    ``fps``: the container's frame rate or ``None`` (missing or 0); ``declared``: the frame
    count the container states (0 when it states none); ``decoded``: frames the last complete
    pass yielded. Opening raises ``ValueError`` (one line, naming the file) for a missing or
    unreadable file; a pass that ends early raises :class:`TruncatedVideoError` after its last
    frame (``check=False``: it does not, and ``short`` tells).
    """

    def __init__(self, path: str | Path, check: bool = True) -> None:
        self.path = Path(path)
        self.check = check
        # the decoder's own log lines (e.g. "partial file") would interleave with our one-line
        # messages; a damaged file is reported by the checks here instead
        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
        if not self.path.is_file():
            raise ValueError(f"cannot read video {self.path}: no such file")
        cap = cv2.VideoCapture(str(self.path))
        try:
            if not cap.isOpened():
                raise ValueError(f"cannot read video {self.path}: OpenCV could not open it "
                                 "(not a video, or damaged)")
            fps = cap.get(cv2.CAP_PROP_FPS)
            self.fps = float(fps) if fps and np.isfinite(fps) and fps > 0 else None
            count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
            self.declared = int(count) if count and np.isfinite(count) and count > 0 else 0
            self.width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
            self.height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        finally:
            cap.release()
        self.decoded = 0

    @property
    def slack(self) -> int:
        """Frames the decoded count may fall short of ``declared`` without being called
        truncated: 0 where the container indexes its frames, else 1 % (at least 1)."""
        if self.path.suffix.lower() in _EXACT_COUNT:
            return 0
        return max(1, self.declared // 100)

    @property
    def short(self) -> bool:
        """Whether the last pass decoded fewer frames than the container states."""
        return self.declared > 0 and self.decoded < self.declared - self.slack

    def truncation_message(self) -> str:
        return (f"{self.path}: truncated or damaged: decoded {self.decoded} of the "
                f"{self.declared} frames its container states (re-encode or re-download it)")

    def __iter__(self) -> Iterator[np.ndarray]:
        cap = cv2.VideoCapture(str(self.path))
        n = 0
        try:
            if not cap.isOpened():
                raise ValueError(f"cannot read video {self.path}: OpenCV could not open it")
            while True:
                ok, bgr = cap.read()
                if not ok or bgr is None:
                    break
                n += 1
                if bgr.ndim == 2:
                    yield cv2.cvtColor(bgr, cv2.COLOR_GRAY2RGB)
                else:
                    yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        finally:
            cap.release()
        self.decoded = n
        if n == 0 and self.declared > 0:
            raise TruncatedVideoError(self.truncation_message())
        if n == 0:
            raise ValueError(f"cannot read video {self.path}: no frame could be decoded")
        if self.check and self.short:
            raise TruncatedVideoError(self.truncation_message())


def read_video(path: str | Path) -> tuple[list[np.ndarray], float | None]:
    """Decode every frame of a (short) video file; long ones: iterate a :class:`VideoReader`.

    Returns ``(frames, fps)``: ``frames`` is a list of RGB ``uint8`` arrays ``[H, W, 3]`` and
    ``fps`` the container's frame rate, or ``None`` when it is unknown (missing or 0).

    Raises ``ValueError`` (one line, naming the file) when the file cannot be opened or yields
    no frame, :class:`TruncatedVideoError` when fewer frames decode than the container states.
    """
    reader = VideoReader(path)
    return list(reader), reader.fps


# -- writing ---------------------------------------------------------------------------------


def _rgb(frame: np.ndarray) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.dtype != np.uint8:
        frame = np.clip(frame, 0, 255).astype(np.uint8)
    if frame.ndim == 2:
        return np.repeat(frame[..., None], 3, axis=2)
    return frame[..., :3]


def temporary_name(path: Path, tag: str = "part") -> Path:
    """A hidden name beside ``path`` for writing it before it is moved into place (keeps the
    suffix, which encoders read the format from)."""
    return path.with_name(f".{path.stem}.{tag}{os.getpid()}{path.suffix}")


@dataclass
class _Encoder:
    kind: str  # "h264" or "mp4v"
    handle: object
    size: tuple[int, int]  # (w, h) of the frames given
    even: tuple[int, int]  # (w, h) sent to the encoder


class VideoWriter:
    """Streams RGB ``uint8 [H, W, 3]`` frames (all one size) into an mp4 at ``path``.

    Frames go to the encoder as :meth:`write` gets them; the file is written under a temporary
    name in ``path``'s folder and moved into place by :meth:`close` (as a context manager: on a
    clean exit; an exception removes the temporary file and leaves ``path`` as it was).
    ``audio_from``: a file whose first audio track is added (AAC), padded or trimmed to the
    video's length; a file without one gives a silent video (``has_audio`` tells first).
    ``quality``: imageio-ffmpeg's 0-10 (8: x264 CRF 10, near lossless; 5: CRF 25) and
    ``preset`` x264's speed preset (``None``: its default), for large sources made in benches.
    """

    def __init__(self, path: str | Path, fps: float = 25.0,
                 audio_from: str | Path | None = None, quality: float = 8,
                 preset: str | None = None) -> None:
        self.path = Path(path)
        self.quality, self.preset = quality, preset
        self.fps = float(fps) if fps and fps > 0 else 25.0
        self.audio_from = Path(audio_from) if audio_from is not None else None
        self.frames = 0
        self._tmp = temporary_name(self.path)
        self._enc: _Encoder | None = None

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _open(self, w: int, h: int) -> _Encoder:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # deferred: an optional package; without it the writer falls back to mp4v
            import imageio_ffmpeg

            # yuv420p halves the chroma resolution, so H.264 needs even sizes: pad by one
            # replicated row/column rather than rescale (frames keep their pixels).
            ew, eh = w + w % 2, h + h % 2
            writer = imageio_ffmpeg.write_frames(
                str(self._tmp), (ew, eh), fps=self.fps, codec="libx264", pix_fmt_out="yuv420p",
                macro_block_size=2, quality=self.quality, ffmpeg_log_level="error",
                output_params=["-movflags", "+faststart",
                               *(["-preset", self.preset] if self.preset else [])])
            writer.send(None)
            return _Encoder("h264", writer, (w, h), (ew, eh))
        except (ImportError, OSError, RuntimeError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            print(f"warning: no H.264 encoder ({reason}); writing {self.path} as mp4v, which "
                  "browsers do not play (pip install imageio-ffmpeg)", file=sys.stderr)
        writer = cv2.VideoWriter(str(self._tmp), cv2.VideoWriter_fourcc(*"mp4v"), self.fps,
                                 (w, h))
        if not writer.isOpened():
            raise ValueError(f"cannot write video {self.path}: OpenCV could not open an mp4v "
                             "writer")
        return _Encoder("mp4v", writer, (w, h), (w, h))

    def write(self, frame: np.ndarray) -> None:
        rgb = _rgb(frame)
        h, w = rgb.shape[:2]
        if self._enc is None:
            self._enc = self._open(w, h)
        if (w, h) != self._enc.size:
            ew, eh = self._enc.size
            raise ValueError(f"cannot write video {self.path}: frame {self.frames} is {w}x{h}, "
                             f"expected {ew}x{eh}")
        if self._enc.kind == "h264":
            ew, eh = self._enc.even
            if (ew, eh) != (w, h):
                rgb = np.pad(rgb, ((0, eh - h), (0, ew - w), (0, 0)), mode="edge")
            self._enc.handle.send(np.ascontiguousarray(rgb))
        else:
            self._enc.handle.write(cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
        self.frames += 1

    def _finish_encoder(self) -> None:
        enc, self._enc = self._enc, None
        if enc is None:
            return
        if enc.kind == "h264":
            enc.handle.close()
        else:
            enc.handle.release()

    def close(self) -> Path:
        """Finish the file and move it into place; returns ``path``."""
        if self.frames == 0:
            self.abort()
            raise ValueError(f"cannot write video {self.path}: no frames given")
        try:
            self._finish_encoder()
            if self.audio_from is not None:
                muxed = temporary_name(self.path, "mux")
                try:
                    mux_audio(self._tmp, self.audio_from, muxed, self.frames / self.fps)
                    os.replace(muxed, self._tmp)
                finally:
                    muxed.unlink(missing_ok=True)
            os.replace(self._tmp, self.path)
        except BaseException:
            self._tmp.unlink(missing_ok=True)
            raise
        return self.path

    def abort(self) -> None:
        """Stop and remove the temporary file; ``path`` is left as it was."""
        try:
            self._finish_encoder()
        except Exception:  # the encoder may already be gone (a full disk, a killed ffmpeg)
            pass
        self._tmp.unlink(missing_ok=True)


def mux_audio(video: str | Path, audio_from: str | Path, out: str | Path,
              duration: float) -> None:
    """``out`` = ``video``'s picture (copied, not re-encoded) with ``audio_from``'s first audio
    track as AAC, padded with silence or trimmed to ``duration`` seconds. ``ValueError`` when
    ffmpeg fails (its last line in the message)."""
    cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-i", str(video),
           "-i", str(audio_from), "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy",
           "-c:a", "aac", "-b:a", "128k", "-af", "apad", "-t", f"{duration:.6f}",
           "-movflags", "+faststart", str(out)]
    _run_ffmpeg(cmd, f"cannot add the sound of {audio_from} to {out}")


def _run_ffmpeg(cmd: list[str], failure: str) -> None:
    """Run ffmpeg; ``ValueError(failure + ": " + its last error line)`` when it fails."""
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["ffmpeg failed"])[-1]
        raise ValueError(f"{failure}: {last}")


def _ffmpeg_into(path: Path, args: list[str], failure: str) -> Path:
    """Run ffmpeg with ``args`` writing a temporary name beside ``path``, then move it into
    place; nothing is left behind when it fails."""
    tmp = temporary_name(path)
    try:
        _run_ffmpeg([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *args,
                     str(tmp)], failure)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    return path


def with_tone(video: str | Path, out: str | Path, frequency: float = 440.0) -> Path:
    """``out`` = ``video`` with a generated sine tone as its sound, as long as the picture (for
    tests, benchmarks and the synthetic demo, whose sources have no sound of their own).
    Written under a temporary name and moved into place."""
    seconds = media_durations(video)["video"]
    return _ffmpeg_into(Path(out), [
        "-i", str(video), "-f", "lavfi", "-i", f"sine=frequency={frequency:g}:sample_rate=44100",
        "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy", "-c:a", "aac", "-t", f"{seconds:.6f}",
        "-movflags", "+faststart"], f"cannot add a tone to {video}")


def write_tone(path: str | Path, seconds: float, frequency: float = 440.0) -> Path:
    """An audio file (AAC in .m4a) holding a sine tone of ``seconds``: sound for sources that
    have none (the synthetic demo). Written under a temporary name and moved into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return _ffmpeg_into(path, [
        "-f", "lavfi", "-i",
        f"sine=frequency={frequency:g}:sample_rate=44100:duration={seconds:.6f}",
        "-c:a", "aac"], f"cannot write a tone to {path}")


def write_video(path: str | Path, frames: Sequence[np.ndarray] | Iterable[np.ndarray],
                fps: float = 25.0, audio_from: str | Path | None = None) -> Path:
    """Write RGB ``uint8`` frames ``[H, W, 3]`` (all the same size) to an H.264 mp4.

    yuv420p, odd sizes padded to even by one replicated row/column. Grey frames ``[H, W]`` are
    accepted. The parent folder is created; the file is written under a temporary name and
    moved into place. ``audio_from``: see :class:`VideoWriter`. Returns the path. Without a
    working H.264 encoder (imageio-ffmpeg missing or failing) it writes mp4v with a one-line
    warning on stderr. Raises ``ValueError`` when there is no frame, frames differ in size, or
    no writer opens.
    """
    path = Path(path)
    if not fps or fps <= 0:
        fps = 25.0
    with VideoWriter(path, fps, audio_from) as writer:
        for frame in frames:
            writer.write(frame)
    return path
