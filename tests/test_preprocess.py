"""preprocess.py: photos, driving sequences (frame folders and videos), LRW conversion."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from faces.align import alignment_params
from faces.io import read_image, sorted_frames
from preprocess import main


def _write_video(path: Path, frames: list[np.ndarray], fps: float) -> None:
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    assert writer.isOpened()
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()


def test_photos_batch_reports_failures(tmp_path, shared_faces, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(shared_faces / "ref_img" / "obama_256.jpg", photos / "obama_256.jpg")
    shutil.copy(shared_faces / "ref_img" / "leo_256.jpg", photos / "leo.jpg")
    Image.new("RGB", (200, 160), (128, 128, 128)).save(photos / "grey.png")
    image_dir = tmp_path / "image"

    rc = main([str(photos), "--image_dir", str(image_dir), "--no-progress"])
    out, err = capsys.readouterr()

    assert rc == 1
    assert "grey.png" in err and "no face" in err
    assert len(err.strip().splitlines()) == 1  # one line, no traceback
    written = sorted(p.name for p in (image_dir / "ref_img").iterdir())
    # each crop with its alignment record (test.py --full_frame)
    assert written == ["leo_256.jpg", "leo_256.json", "obama_256.jpg", "obama_256.json"]
    written = written[::2]
    for name in written:
        image = read_image(image_dir / "ref_img" / name)
        assert image.shape == (256, 256, 3)
    assert out.count("ok: ") == 2


def test_photos_all_good_and_size(tmp_path, shared_faces, capsys):
    image_dir = tmp_path / "image"
    rc = main([str(shared_faces / "ref_img" / "wu_256.jpg"), "--image_dir", str(image_dir),
               "--size", "128"])
    assert rc == 0
    image = read_image(image_dir / "ref_img" / "wu_256_128.jpg")
    assert image.shape == (128, 128, 3)


def test_user_errors_are_one_line(tmp_path, capsys):
    assert main([str(tmp_path / "missing.jpg"), "--image_dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "missing.jpg" in err and "Traceback" not in err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty), "--image_dir", str(tmp_path)]) == 1
    assert "no images found" in capsys.readouterr().err
    photo = tmp_path / "p.png"
    Image.new("RGB", (64, 64)).save(photo)
    assert main([str(photo), "--landmarks", str(tmp_path / "nope.dat")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope.dat" in err
    assert main(["--source", "x"]) == 2  # argparse usage error
    assert main(["--source", "x", str(tmp_path / "nothing"), "--image_dir", str(tmp_path)]) == 1
    assert "nothing" in capsys.readouterr().err


def test_help_has_examples(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert "examples:" in text and "--source" in text and "--lrw" in text


@pytest.mark.slow
def test_source_folder_330_frames(tmp_path, shared_faces, capsys):
    ellen = shared_faces / "source_img" / "ellen"
    image_dir = tmp_path / "image"
    rc = main(["--source", "ellen", str(ellen), "--image_dir", str(image_dir), "--no-progress"])
    assert rc == 0
    out_dir = image_dir / "source_img" / "ellen"
    frames = sorted_frames(out_dir)
    assert [p.name for p in frames] == [f"{i:03d}.jpg" for i in range(330)]
    assert (out_dir / "fps.txt").read_text().strip() == "25"
    assert "330 frames" in capsys.readouterr().out
    # Order kept: output frame 100 is the crop of input frame 100, not of 010 or 001.
    from faces.metrics import default_detector

    det = default_detector()
    src = det.detect(read_image(ellen / "100.jpg.jpg"))
    crop = det.detect(read_image(frames[100]))
    assert src is not None and crop is not None
    mouth_open = [np.ptp(d.landmarks[60:68, 1]) / np.ptp(d.landmarks[48:68, 0])
                  for d in (src, crop)]
    assert mouth_open[0] == pytest.approx(mouth_open[1], abs=0.08)
    cx, cy, width, _ = alignment_params(crop.landmarks)
    assert abs(cx - 128) < 4 and abs(cy - 160) < 4 and abs(width - 43) < 4


def test_source_video_one_frame_per_frame(tmp_path, shared_faces, capsys):
    ellen = sorted_frames(shared_faces / "source_img" / "ellen")[:9]
    frames = [cv2.resize(read_image(p), (224, 224)) for p in ellen]
    frames.insert(4, np.full_like(frames[0], 100))  # one frame without a face
    video = tmp_path / "clip.mp4"
    _write_video(video, frames, fps=30)
    image_dir = tmp_path / "image"
    # A leftover longer sequence must not survive a rebuild.
    stale = image_dir / "source_img" / "clip"
    stale.mkdir(parents=True)
    (stale / "099.jpg").write_bytes(b"old")

    rc = main(["--source", "clip", str(video), "--image_dir", str(image_dir), "--size", "128"])
    assert rc == 0
    out = capsys.readouterr().out
    written = sorted_frames(stale)
    assert [p.name for p in written] == [f"{i:03d}.jpg" for i in range(10)]
    assert read_image(written[0]).shape == (128, 128, 3)
    assert float((stale / "fps.txt").read_text()) == pytest.approx(30)
    assert "1 without a face" in out


def test_source_without_any_face(tmp_path, capsys):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (120, 120), (90, 90, 90)).save(folder / f"frame_{i}.png")
    rc = main(["--source", "blank", str(folder), "--image_dir", str(tmp_path / "image")])
    assert rc == 1
    err = capsys.readouterr().err
    assert "no face" in err and "Traceback" not in err


def test_lrw_conversion(tmp_path, shared_faces, capsys):
    pytest.importorskip("lrw.convert")
    root = tmp_path / "lrw"
    frames = [read_image(p) for p in sorted_frames(shared_faces / "source_img" / "ellen")[:4]]
    for word in ("ABOUT", "HOUSE"):
        clip_dir = root / word / "train"
        clip_dir.mkdir(parents=True)
        _write_video(clip_dir / f"{word}_00001.mp4", [cv2.resize(f, (64, 64)) for f in frames],
                     fps=25)
    out = tmp_path / "data"
    rc = main(["--lrw", str(root), "--out", str(out), "--no-progress"])
    assert rc == 0
    assert "2 of 2 clips" in capsys.readouterr().out
    assert len(list((out / "train" / "ABOUT").glob("*.jpg"))) == 4

    assert main(["--lrw", str(tmp_path / "nowhere"), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1

    broken = tmp_path / "broken"
    (broken / "WORD" / "train").mkdir(parents=True)
    (broken / "WORD" / "train" / "WORD_00001.mp4").write_bytes(b"not a video")
    assert main(["--lrw", str(broken), "--out", str(tmp_path / "d2"), "--no-progress"]) == 1
