"""write_video: H.264 yuv420p that a browser-style decoder reads frame by frame."""

from __future__ import annotations

import builtins

import cv2
import numpy as np
import pytest

from lrw.video import video_codec, write_video


def _frames(n: int, h: int, w: int) -> list[np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w]
    # Smooth content (as faces are): yuv420p halves chroma, so per-pixel noise would not survive.
    base = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) * 127 // (w + h)], 2).astype(np.uint8)
    # Each frame differs (a moving bright bar) so a decoder that repeats frames is caught.
    out = []
    for i in range(n):
        f = base.copy()
        f[:, (i * 4) % (w - 4):(i * 4) % (w - 4) + 4] = 255
        out.append(f)
    return out


@pytest.mark.parametrize("size", [(32, 48), (33, 47)])
def test_video_is_h264_yuv420p_and_every_frame_decodes(tmp_path, size) -> None:
    import imageio_ffmpeg

    h, w = size
    frames = _frames(9, h, w)
    path = write_video(tmp_path / "v.mp4", frames, fps=25)
    assert video_codec(path) == ("h264", "yuv420p")
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    assert tuple(meta["size"]) == (w + w % 2, h + h % 2)
    decoded = [np.frombuffer(b, np.uint8).reshape(h + h % 2, w + w % 2, 3) for b in reader]
    assert len(decoded) == 9
    for a, b in zip(decoded, frames, strict=True):  # lossy, but the right frame in order
        assert np.abs(a[:h, :w].astype(int) - b).mean() < 6
    cap = cv2.VideoCapture(str(path))  # a second decoder (OpenCV's) reads them all too
    n = 0
    while cap.read()[0]:
        n += 1
    assert n == 9


def test_without_the_encoder_falls_back_to_mp4v_with_one_warning(tmp_path, monkeypatch,
                                                                 capsys) -> None:
    real = builtins.__import__

    def no_ffmpeg(name, *a, **kw):
        if name == "imageio_ffmpeg":
            raise ImportError("No module named 'imageio_ffmpeg'")
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_ffmpeg)
    path = write_video(tmp_path / "v.mp4", _frames(4, 16, 16), fps=10)
    monkeypatch.setattr(builtins, "__import__", real)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: no H.264 encoder")
    assert video_codec(path)[0] == "mpeg4"
