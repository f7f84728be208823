"""lrw: folder index and its cache, datasets, the LRW converter, video I/O."""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from lrw import index as lrw_index
from lrw.convert import ConvertReport, convert_lrw
from lrw.datasets import (
    ClipDataset,
    FrameDataset,
    ImageFolderDataset,
    UnreadableFrameWarning,
    load_image,
)
from lrw.index import CACHE_NAME, open_index
from lrw.video import read_video, write_video


def _jpg(path: Path, value: int = 128, size: int = 12) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.full((size, size + 4, 3), value, np.uint8)
    img[: size // 2, :, 0] = 255 - value
    assert cv2.imwrite(str(path), img)
    return path


def _backdate(root: Path, seconds: float = 60.0) -> None:
    """Move every folder's mtime into the past, out of the index's 'racy' window."""
    t = time.time() - seconds
    for d in [root, *[p for p in root.iterdir() if p.is_dir()]]:
        os.utime(d, (t, t))


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """DATA/train with words ZERO, ABOUT, MONEY; clip ids and frame numbers out of order."""
    root = tmp_path / "DATA" / "train"
    for word, clips in {"ZERO": {"00002": 3, "00010": 2}, "ABOUT": {"00001": 12},
                        "MONEY": {"00007": 2}}.items():
        for cid, n in clips.items():
            for ff in range(1, n + 1):
                _jpg(root / word / f"{word}_{cid}_{ff}.jpg", value=10 * ff)
    # strays: a text file, a badly named jpg, another word's frame, a file at the root
    (root / "ABOUT" / "notes.txt").write_text("x")
    _jpg(root / "ABOUT" / "ABOUT_x_01.jpg")
    _jpg(root / "ABOUT" / "MONEY_00001_01.jpg")
    (root / "README").write_text("x")
    (root / "EMPTY").mkdir()
    return root


def test_index_groups_sorts_and_labels(tree: Path):
    for path in (tree.parent, tree):  # DATA and DATA/train both work
        idx = open_index(path, cache=False)
        assert idx.root == tree
        assert idx.words == ["ABOUT", "MONEY", "ZERO"]
        assert [(c.word, c.label, c.clip_id) for c in idx.clips] == [
            ("ABOUT", 0, "00001"), ("MONEY", 1, "00007"), ("ZERO", 2, "00002"),
            ("ZERO", 2, "00010")]
        about = idx.clips[0]
        assert [p.name for p in about.frames][:3] == [
            "ABOUT_00001_1.jpg", "ABOUT_00001_2.jpg", "ABOUT_00001_3.jpg"]
        assert about.frames[9].name == "ABOUT_00001_10.jpg"  # _2 before _10
        assert idx.n_frames == 12 + 2 + 3 + 2 == len(idx.frames)
        assert idx.frames[12] == (tree / "MONEY" / "MONEY_00007_1.jpg", 1)
        assert list(idx.frames)[-1] == (tree / "ZERO" / "ZERO_00010_2.jpg", 2)
        assert idx.stats.n_stray == 4 and idx.stats.n_empty_words == 1


def test_index_irregular_frame_names(tmp_path: Path):
    root = tmp_path / "d"
    for name in ("W_1_001.jpg", "W_1_003.png", "W_1_020.jpg"):
        _jpg(root / "W" / name)
    clip = open_index(root, cache=False).clips[0]
    assert [p.name for p in clip.frames] == ["W_1_001.jpg", "W_1_003.png", "W_1_020.jpg"]


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "does not exist"),
    (lambda p: p.mkdir(), "no word folders"),
    (lambda p: (p / "ABOUT").mkdir(parents=True), "no frames"),
    (lambda p: (p / "ABOUT").mkdir(parents=True) or (p / "ABOUT" / "a.jpg").write_text(""),
     "no frames"),
])
def test_index_bad_layouts(tmp_path: Path, make, message):
    root = tmp_path / "lrw"
    make(root)
    with pytest.raises(ValueError, match=message) as err:
        open_index(root, cache=False)
    assert str(root) in str(err.value) and "\n" not in str(err.value)


def test_index_cache_used_and_invalidated(tree: Path, monkeypatch):
    _backdate(tree)
    first = open_index(tree)
    assert (tree / CACHE_NAME).is_file() and not first.stats.from_cache

    def fail(folder):
        raise AssertionError(f"listed {folder} although the cache is fresh")

    real_scan = lrw_index.scan_word_folder
    monkeypatch.setattr(lrw_index, "scan_word_folder", fail)
    second = open_index(tree.parent)
    assert second.stats.from_cache
    assert [c.frames for c in second.clips] == [c.frames for c in first.clips]
    assert second.words == first.words

    # a new frame changes the MONEY folder's mtime: only that folder is listed again
    scanned = []
    monkeypatch.setattr(lrw_index, "scan_word_folder",
                        lambda folder: scanned.append(folder.name) or real_scan(folder))
    _jpg(tree / "MONEY" / "MONEY_00007_3.jpg")
    third = open_index(tree)
    assert scanned == ["MONEY"]
    assert third.n_frames == first.n_frames + 1

    # a corrupt cache is rebuilt silently
    (tree / CACHE_NAME).write_text("{not json")
    assert open_index(tree).n_frames == third.n_frames


def test_index_cache_falls_back_to_user_dir(tree: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    # the root location is unwritable (its parent "README" is a file; chmod means nothing to root)
    monkeypatch.setattr(lrw_index, "CACHE_NAME", "README/.lrw_index.json")
    _backdate(tree)
    open_index(tree)
    fallback = lrw_index.user_cache_path(tree)
    assert fallback.is_file() and fallback.is_relative_to(tmp_path / "cache")
    assert open_index(tree).stats.from_cache


# ---------------------------------------------------------------------------------------------
# datasets
# ---------------------------------------------------------------------------------------------

def test_load_image_transform(tmp_path: Path):
    x = load_image(_jpg(tmp_path / "a.jpg", size=20), 8)
    assert x.shape == (3, 8, 8) and x.dtype == torch.float32
    assert -0.5 <= x.min() and x.max() <= 0.5


def test_load_image_keeps_decoded_frames(tmp_path: Path, monkeypatch):
    """A frame read again comes from the kept 8-bit copy, bit for bit the same and the caller's
    own tensor; a rewritten file is decoded again; the copies stay within their budget."""
    import lrw.datasets as ds_mod

    path = _jpg(tmp_path / "a.jpg", value=40, size=20)
    first = load_image(path, 8)
    kept = first.clone()
    calls = []
    real = ds_mod.open_rgb
    monkeypatch.setattr(ds_mod, "open_rgb", lambda p: calls.append(p) or real(p))
    first.add_(1)  # the caller's to change
    second = load_image(path, 8)
    assert calls == [] and torch.equal(second, kept)
    _jpg(path, value=200, size=24)  # rewritten: another size on disk
    third = load_image(path, 8)
    assert calls == [path] and not torch.equal(third, second)
    monkeypatch.setattr(ds_mod, "DECODED_CACHE_BYTES", 3 * 8 * 8 * 3)
    for i in range(6):
        load_image(_jpg(tmp_path / f"b{i}.jpg", value=20 * i), 8)
    assert ds_mod._decoded_bytes <= 3 * 8 * 8 * 3


def test_frame_dataset_skips_unreadable(tree: Path):
    good = tree / "ABOUT" / "ABOUT_00001_3.jpg"
    data = good.read_bytes()
    (tree / "ABOUT" / "ABOUT_00001_2.jpg").write_bytes(data[: len(data) // 2])  # truncated
    (tree / "ABOUT" / "ABOUT_00001_4.jpg").write_bytes(b"")  # empty
    ds = FrameDataset(open_index(tree, cache=False), img_size=8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        items = [ds[i] for i in range(len(ds))]
        items += [ds[1], ds[3]]  # met again: not counted twice, no new warning
    assert ds.n_skipped == 2
    assert len([w for w in caught if issubclass(w.category, UnreadableFrameWarning)]) == 1
    assert ds.skipped_summary().startswith("skipped 2 unreadable frames (first: ")
    for x, label in items:
        assert x.shape == (3, 8, 8) and -0.5 <= x.min() and x.max() <= 0.5
        assert isinstance(label, int)
    # the bad frame is replaced by the next readable one
    assert torch.equal(items[1][0], items[2][0])


def test_frame_dataset_from_paths_and_pairs(tmp_path: Path):
    paths = [_jpg(tmp_path / f"{i}.jpg") for i in range(3)]
    assert FrameDataset(paths, 8)[2][1] == 0
    assert FrameDataset([(p, 5) for p in paths], 8)[0][1] == 5


def test_image_folder_dataset(tmp_path: Path):
    _jpg(tmp_path / "faces" / "a" / "x.jpg")
    _jpg(tmp_path / "faces" / "b" / "c" / "y.png")
    (tmp_path / "faces" / "notes.txt").write_text("x")
    ds = ImageFolderDataset(tmp_path / "faces", 16)
    assert len(ds) == 2 and ds[1][0].shape == (3, 16, 16) and ds[1][1] == 0
    with pytest.raises(ValueError, match="does not exist"):
        ImageFolderDataset(tmp_path / "missing", 16)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image"):
        ImageFolderDataset(tmp_path / "empty", 16)


def test_clip_dataset_shapes_and_neighbours(tree: Path):
    (tree / "ABOUT" / "ABOUT_00001_1.jpg").write_bytes(b"not a jpeg")
    idx = open_index(tree, cache=False)
    full = ClipDataset(idx, 8)
    with pytest.warns(UnreadableFrameWarning, match="ABOUT_00001_1.jpg"):
        x, label = full[0]
    assert x.shape == (12, 3, 8, 8) and label == 0
    assert torch.equal(x[0], x[1])  # frame 1 replaced by its nearest readable neighbour
    assert full.n_skipped == 1

    padded = ClipDataset(idx, 8, n_frames=3)
    assert [padded[i][0].shape[0] for i in range(len(padded))] == [3, 3, 3, 3]
    money = padded[1][0]
    assert torch.equal(money[1], money[2])  # 2-frame clip padded with its last frame
    centre = padded[0][0]
    assert torch.equal(centre[0], load_image(tree / "ABOUT" / "ABOUT_00001_5.jpg", 8))

    dropped = ClipDataset(idx, 8, n_frames=3, short="drop")
    assert len(dropped) == 2 and [c.word for c in dropped.clips] == ["ABOUT", "ZERO"]
    batch = next(iter(torch.utils.data.DataLoader(padded, batch_size=2, shuffle=True)))
    assert batch[0].shape == (2, 3, 3, 8, 8)


# ---------------------------------------------------------------------------------------------
# video and converter
# ---------------------------------------------------------------------------------------------

def _frames(n: int, h: int = 32, w: int = 48) -> list[np.ndarray]:
    out = []
    for i in range(n):
        f = np.zeros((h, w, 3), np.uint8)
        f[:, :, 0] = 40 * i % 256
        f[: h // 2, : w // 2, 1] = 200
        out.append(f)
    return out


def test_video_round_trip(tmp_path: Path):
    path = write_video(tmp_path / "v" / "a.mp4", _frames(7), fps=25)
    frames, fps = read_video(path)
    assert len(frames) == 7 and frames[0].shape == (32, 48, 3) and frames[0].dtype == np.uint8
    assert fps == pytest.approx(25)
    assert abs(float(frames[3][20, 40, 0]) - 120) < 12  # RGB order kept
    (tmp_path / "bad.mp4").write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="bad.mp4"):
        read_video(tmp_path / "bad.mp4")
    with pytest.raises(ValueError, match="missing.mp4"):
        read_video(tmp_path / "missing.mp4")


def test_convert_lrw(tmp_path: Path):
    mp4 = tmp_path / "LRW" / "lipread_mp4"
    for word in ("ABOUT", "MONEY"):
        for cid in ("00001", "00002"):
            write_video(mp4 / word / "train" / f"{word}_{cid}.mp4", _frames(5), 25)
    write_video(mp4 / "ABOUT" / "val" / "ABOUT_00003.mp4", _frames(5), 25)
    (mp4 / "MONEY" / "train" / "MONEY_00003.mp4").write_bytes(b"corrupt" * 20)
    out = tmp_path / "frames"

    report = convert_lrw(tmp_path / "LRW", out, split="train", progress=False)
    assert isinstance(report, ConvertReport)
    assert (report.clips_total, report.clips_converted, report.clips_skipped) == (5, 4, 0)
    assert len(report.failures) == 1 and report.failures[0][0].endswith("MONEY_00003.mp4")
    names = sorted(p.name for p in (out / "train" / "ABOUT").iterdir())
    assert names == [f"ABOUT_0000{c}_{f:02d}.jpg" for c in (1, 2) for f in range(1, 6)]
    idx = open_index(out, cache=False)
    assert idx.words == ["ABOUT", "MONEY"] and len(idx.clips) == 4 and idx.n_frames == 20

    # an interrupted clip (frames but no marker) is redone; finished clips are skipped
    (out / "train" / ".done" / "MONEY" / "MONEY_00002").unlink()
    (out / "train" / "MONEY" / "MONEY_00002_05.jpg").unlink()
    again = convert_lrw(mp4, out, split="train", progress=False)
    assert (again.clips_converted, again.clips_skipped, len(again.failures)) == (1, 3, 1)
    assert (out / "train" / "MONEY" / "MONEY_00002_05.jpg").is_file()

    with pytest.raises(ValueError, match="no WORD/test/"):
        convert_lrw(mp4, out, split="test", progress=False)
    with pytest.raises(ValueError, match="does not exist"):
        convert_lrw(tmp_path / "nowhere", out, progress=False)


def test_convert_lrw_workers(tmp_path: Path):
    mp4 = tmp_path / "lipread_mp4"
    for cid in ("00001", "00002", "00003"):
        write_video(mp4 / "ABOUT" / "val" / f"ABOUT_{cid}.mp4", _frames(3), 25)
    report = convert_lrw(mp4, tmp_path / "out", split="val", workers=2, progress=False)
    assert (report.clips_converted, report.frames_written) == (3, 9)


def test_convert_lrw_never_marks_a_truncated_clip_done(tmp_path: Path):
    """A cut-off download decodes fewer frames than its container states: a counted failure,
    its frames removed, no marker (so the index never trains on the short clip and the next run
    converts it again once it is whole)."""
    mp4 = tmp_path / "lipread_mp4"
    whole = write_video(mp4 / "ABOUT" / "train" / "ABOUT_00001.mp4", _frames(12), 25)
    data = whole.read_bytes()
    cut = mp4 / "ABOUT" / "train" / "ABOUT_00002.mp4"
    cut.write_bytes(data[: len(data) * 2 // 3])
    out = tmp_path / "out"
    report = convert_lrw(mp4, out, split="train", progress=False)
    assert report.clips_converted == 1 and len(report.failures) == 1
    assert report.failures[0][0].endswith("ABOUT_00002.mp4")
    assert "truncated" in report.failures[0][1]
    assert not (out / "train" / ".done" / "ABOUT" / "ABOUT_00002").exists()
    assert not list((out / "train" / "ABOUT").glob("ABOUT_00002_*"))
    cut.write_bytes(data)  # the download completed: converted on the next run
    again = convert_lrw(mp4, out, split="train", progress=False)
    assert (again.clips_converted, again.clips_skipped, len(again.failures)) == (1, 1, 0)
