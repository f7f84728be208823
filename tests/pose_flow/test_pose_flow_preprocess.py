"""preprocess.py --landmarks DATA: dlib landmark files, resumable, faceless frames counted."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from pose_flow.preprocess import landmark_folder, wants

ROOT = Path(__file__).resolve().parents[2]


def _preprocess_main():
    spec = importlib.util.spec_from_file_location("_pose_pre", ROOT / "preprocess.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module.main


def test_dispatch_keeps_the_predictor_flag(tmp_path):
    dat = tmp_path / "model.dat"
    dat.write_bytes(b"x")
    assert wants(["--landmarks", str(tmp_path)]) and wants([f"--landmarks={tmp_path}"])
    assert wants(["--from_video", "v", "--out", "d"])
    assert not wants(["--landmarks", str(dat), "photo.jpg"])
    assert not wants(["--landmarks", "missing.dat", "photo.jpg"])


def test_landmarks_written_resumed_and_faceless_frames_counted(shared_faces, tmp_path, capsys):
    clip = tmp_path / "data" / "person" / "clip"
    clip.mkdir(parents=True)
    for name in ("obama_256.jpg", "leo_256.jpg"):
        Image.open(shared_faces / "ref_img" / name).save(clip / name.replace(".jpg", ".png"))
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(clip / "blank.png")
    rc = _preprocess_main()(["--landmarks", str(tmp_path / "data")])
    assert rc == 0
    for name in ("obama_256", "leo_256"):
        lm = np.load(clip / f"{name}.npy")
        assert lm.shape == (68, 2) and lm.dtype == np.float32
        assert 0.1 < lm.min() and lm.max() < 0.95  # normalised, on the face
    assert not (clip / "blank.npy").exists()
    assert "person/clip/blank.png" in (tmp_path / "data" / ".no_face.txt").read_text()
    counts = landmark_folder(tmp_path / "data", say=lambda *_: None)
    assert counts == {"frames": 3, "existing": 2, "written": 0, "no_face": 1, "unreadable": 0,
                      "retried_bad": 0}
    # a corrupt file is recomputed, not trusted
    np.save(clip / "leo_256.npy", np.full((68, 2), np.nan, np.float32))
    counts = landmark_folder(tmp_path / "data", say=lambda *_: None)
    assert counts["written"] == 1 and counts["retried_bad"] == 1
    assert np.isfinite(np.load(clip / "leo_256.npy")).all()
    assert _preprocess_main()(["--landmarks", str(tmp_path / "nowhere")]) == 1
    assert capsys.readouterr().err.startswith("error: ")


def test_from_video_writes_aligned_frames_with_landmarks(shared_faces, tmp_path):
    from faces.io import read_image, sorted_frames
    from lrw.video import write_video

    frames = [read_image(p) for p in sorted_frames(shared_faces / "source_img" / "ellen")[:6]]
    (tmp_path / "videos" / "ellen").mkdir(parents=True)
    write_video(tmp_path / "videos" / "ellen" / "talk.mp4", frames, 25)
    (tmp_path / "videos" / "ellen" / "notes.txt").write_text("not a video")
    rc = _preprocess_main()(["--from_video", str(tmp_path / "videos"), "--out",
                             str(tmp_path / "data"), "--size", "64"])
    assert rc == 0
    out = sorted((tmp_path / "data" / "ellen" / "talk").glob("*.png"))
    assert len(out) == 6
    lm = np.load(out[0].with_suffix(".npy"))
    assert lm.shape == (68, 2) and np.isfinite(lm).all()
    # aligned crop: the mouth centre lands near the crop's (0.5, 0.625)
    assert np.allclose(lm[48:68].mean(0), (0.5, 0.625), atol=0.06)
    assert np.asarray(Image.open(out[0])).shape == (64, 64, 3)
    # a finished video is skipped on the next run; one cut before the crops followed the head
    # (its marker says "ok") is cut again, so a set never mixes the two framings
    done = tmp_path / "data" / "ellen" / "talk" / ".done"
    first = done.stat().st_mtime_ns
    from pose_flow.preprocess import from_videos

    from_videos(tmp_path / "videos", tmp_path / "data", size=64, say=lambda *_: None)
    assert done.stat().st_mtime_ns == first
    done.write_text("ok\n")
    from_videos(tmp_path / "videos", tmp_path / "data", size=64, say=lambda *_: None)
    assert done.read_text() != "ok\n" and len(list(done.parent.glob("*.png"))) == 6


def test_from_video_counts_a_truncated_video_and_leaves_nothing(shared_faces, tmp_path):
    from faces.io import read_image, sorted_frames
    from lrw.video import write_video

    frames = [read_image(p) for p in sorted_frames(shared_faces / "source_img" / "ellen")[:6]]
    whole = write_video(tmp_path / "videos" / "ellen" / "talk.mp4", frames, 25)
    data = whole.read_bytes()
    (tmp_path / "videos" / "ellen" / "cut.mp4").write_bytes(data[: len(data) * 2 // 3])
    lines: list[str] = []
    from pose_flow.preprocess import from_videos

    counts = from_videos(tmp_path / "videos", tmp_path / "data", size=64, say=lines.append)
    assert counts["failed"] == 1 and counts["videos"] == 1
    assert any("cut.mp4" in line and "truncated" in line for line in lines)
    assert not (tmp_path / "data" / "ellen" / "cut").exists()
    assert [p.name for p in (tmp_path / "data" / "ellen").iterdir()] == ["talk"]
