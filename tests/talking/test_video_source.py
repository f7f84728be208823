"""test.py --source VIDEO: detection and crops cached, one output frame per source frame, the
source's sound in video.mp4 in sync; streaming reads; truncated and faceless videos."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lrw.video import (
    TruncatedVideoError,
    VideoReader,
    has_audio,
    media_durations,
    read_video,
    with_tone,
    write_video,
)

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from talking import cli as test_cli  # noqa: E402
from training.recipe import Recipe  # noqa: E402

N = 10
FPS = 25


def _recipe(size: int = 32) -> Recipe:
    """A stand-in model that returns its mix input (deterministic)."""
    r = Recipe()
    r.GENERATES = True
    r.DEFAULT_CHECKPOINT = "fake.pt"
    r.NEEDS_MIX = True
    r.load_for_test = lambda args, device: torch.nn.Identity()
    r.model_size = lambda model: size
    r.generate = lambda model, query, mix, source, args: mix.clone()
    return r


@pytest.fixture
def clips(tmp_path, shared_faces) -> dict:
    """ellen's first N frames as a silent mp4 and the same with a tone; an image dir with a
    real query."""
    frames = [np.asarray(Image.open(p).convert("RGB").resize((216, 216)))
              for p in sorted((shared_faces / "source_img" / "ellen").iterdir())[:N]]
    silent = write_video(tmp_path / "clips" / "silent.mp4", frames, FPS)
    loud = with_tone(silent, tmp_path / "clips" / "talk.mp4")
    image_dir = tmp_path / "image"
    (image_dir / "ref_img").mkdir(parents=True)
    Image.open(shared_faces / "ref_img" / "obama_256.jpg").save(
        image_dir / "ref_img" / "obama_256.jpg")
    return {"silent": silent, "loud": loud, "image": image_dir, "tmp": tmp_path}


def _run(clips: dict, source: str, res: str, say=None):
    from talking import run

    args = test_cli.build_parser("ad-flow").parse_args(
        ["--source", source, "obama", "--image_dir", str(clips["image"]), "--result_dir",
         str(clips["tmp"] / res), "--no_progress", "--batch", "4"])
    lines: list[str] = []
    summary = run(args, _recipe(), say=say or lines.append)
    return summary, lines


def test_video_source_with_sound_in_sync_and_cached(clips) -> None:
    summary, lines = _run(clips, str(clips["loud"]), "a")
    out = Path(summary["out_dir"])
    assert out.name == "obama" and out.parent.name == "talk"
    assert summary["frames"] == N and len(list(out.glob("0*.png"))) == N
    assert summary["fps"] == pytest.approx(FPS) and summary["audio"]
    assert any("finding the face" in line for line in lines)
    video = Path(summary["video"])
    assert has_audio(video)
    d = media_durations(video)
    assert d["video"] == pytest.approx(N / FPS, abs=0.5 / FPS)
    assert abs(d["audio"] - d["video"]) < 1 / FPS, d
    frames, fps = read_video(video)
    assert len(frames) == N and fps == pytest.approx(FPS)
    # a second run starts from the cached crops
    summary2, lines2 = _run(clips, str(clips["loud"]), "b")
    assert not any("finding the face" in line for line in lines2)
    for i in range(N):
        a = np.asarray(Image.open(out / f"{i:03d}.png"))
        b = np.asarray(Image.open(Path(summary2["out_dir"]) / f"{i:03d}.png"))
        assert np.array_equal(a, b)


def test_crops_cached_by_an_older_version_are_cut_again(clips) -> None:
    """A cache written before the crops followed the head (version 1) is not reused."""
    import json

    from talking.inputs import CACHE_VERSION, RECORD, cache_folder

    _run(clips, str(clips["silent"]), "a")
    record = cache_folder(Path(clips["silent"]), clips["image"]) / RECORD
    rec = json.loads(record.read_text())
    assert rec["version"] == CACHE_VERSION >= 2
    _, lines = _run(clips, str(clips["silent"]), "b")
    assert not any("finding the face" in line for line in lines)  # the current cache is used
    record.write_text(json.dumps(dict(rec, version=1)))
    _, lines = _run(clips, str(clips["silent"]), "c")
    assert any("finding the face" in line for line in lines)
    assert json.loads(record.read_text())["version"] == CACHE_VERSION


def test_video_source_equals_its_pre_extracted_frames(clips) -> None:
    from preprocess import main as preprocess

    summary, _ = _run(clips, str(clips["silent"]), "video")
    assert preprocess(["--source", "silent", str(clips["silent"]), "--image_dir",
                       str(clips["image"]), "--no-progress"]) == 0
    summary2, _ = _run(clips, "silent", "frames")
    assert summary2["frames"] == summary["frames"] == N
    for i in range(N):
        a = np.asarray(Image.open(Path(summary["out_dir"]) / f"{i:03d}.png"))
        b = np.asarray(Image.open(Path(summary2["out_dir"]) / f"{i:03d}.png"))
        assert np.array_equal(a, b), i


def test_a_silent_video_gives_a_silent_output_said_once(clips) -> None:
    summary, lines = _run(clips, str(clips["silent"]), "s")
    assert not summary["audio"] and not has_audio(summary["video"])
    assert sum("no sound" in line for line in lines) == 1


def test_streaming_reader_and_truncated_videos(clips, capsys) -> None:
    reader = VideoReader(clips["silent"])
    assert reader.declared == N and reader.fps == pytest.approx(FPS)
    it = iter(reader)
    first = next(it)  # one frame decoded, not the whole clip
    assert first.shape == (216, 216, 3) and reader.decoded == 0
    assert sum(1 for _ in it) == N - 1 and reader.decoded == N
    data = clips["silent"].read_bytes()
    cut = clips["tmp"] / "cut.mp4"
    cut.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(TruncatedVideoError, match="cut.mp4"):
        read_video(cut)
    rc = test_cli.main(["--source", str(cut), "obama", "--image_dir", str(clips["image"]),
                        "--result_dir", str(clips["tmp"] / "r"), "--no_progress",
                        "--checkpoint", str(clips["tmp"] / "none.pt")])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and "\n" not in err and "cut.mp4" in err and "truncated" in err
    cache = clips["image"] / "source_img" / ".video"
    assert not cache.exists() or not any(cache.iterdir())  # nothing half-written
    from preprocess import main as preprocess

    rc = preprocess(["--source", "cut", str(cut), "--image_dir", str(clips["image"]),
                     "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and "\n" not in err and "truncated" in err
    assert not (clips["image"] / "source_img" / "cut").exists()


def test_unreadable_and_faceless_videos_are_one_line_errors(clips, capsys) -> None:
    bad = clips["tmp"] / "bad.mp4"
    bad.write_bytes(b"\x00" * 100)
    grey = write_video(clips["tmp"] / "grey.mp4", [np.full((64, 64, 3), 128, np.uint8)] * 4)
    for video, expect in ((bad, "bad.mp4"), (grey, "no face")):
        rc = test_cli.main(["--source", str(video), "obama", "--image_dir",
                            str(clips["image"]), "--result_dir", str(clips["tmp"] / "r"),
                            "--no_progress", "--checkpoint", str(clips["tmp"] / "none.pt")])
        err = capsys.readouterr().err.strip()
        assert rc == 1 and "\n" not in err and expect in err, err


def test_audio_flag_gives_a_frame_folder_source_its_sound(clips, capsys) -> None:
    from lrw.video import write_tone
    from preprocess import main as preprocess
    from talking import run

    assert preprocess(["--source", "loud", str(clips["loud"]), "--image_dir",
                       str(clips["image"]), "--no-progress"]) == 0
    tone = write_tone(clips["tmp"] / "tone.m4a", 3.0)  # longer than the clip: trimmed
    args = test_cli.build_parser("ad-flow").parse_args(
        ["--source", "loud", "obama", "--image_dir", str(clips["image"]), "--result_dir",
         str(clips["tmp"] / "t"), "--no_progress", "--audio", str(tone), "--max_frames", "6"])
    summary = run(args, _recipe(), say=lambda *_: None)
    d = media_durations(summary["video"])
    assert d["video"] == pytest.approx(6 / FPS, abs=0.5 / FPS)
    assert abs(d["audio"] - d["video"]) < 1 / FPS, d
    rc = test_cli.main(["--source", "loud", "obama", "--image_dir", str(clips["image"]),
                        "--result_dir", str(clips["tmp"] / "t"), "--no_progress",
                        "--checkpoint", str(clips["tmp"] / "none.pt"), "--audio",
                        str(clips["silent"])])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and "\n" not in err and "no audio track" in err
