"""Frames, grids and videos are written under a temporary name and moved into place: a full
disk (ENOSPC part-way through a file) never leaves a partial or zero-byte file under a
frame's name, and an interrupted job leaves no video."""

from __future__ import annotations

import errno
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import faces.io

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from talking import cli as test_cli  # noqa: E402
from training.recipe import Recipe  # noqa: E402


class _FullDisk:
    """``open`` whose files take ``room`` bytes in all, then fail with ENOSPC (as a full disk
    does: part of the data lands first)."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.real = open

    def __call__(self, path, mode="r", *a, **kw):
        fh = self.real(path, mode, *a, **kw)
        if "w" not in mode:
            return fh
        disk = self

        class Limited:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                fh.close()

            def write(self, data):
                n = min(len(data), disk.room)
                fh.write(data[:n])
                disk.room -= n
                if n < len(data):
                    fh.flush()
                    raise OSError(errno.ENOSPC, "No space left on device")
                return n

        return Limited()


def test_image_writers_leave_no_partial_file(tmp_path, monkeypatch) -> None:
    from lrw.imageio import save_image

    img = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    old = faces.io.write_image(tmp_path / "old.png", img[::-1])  # an earlier, whole file
    before = old.read_bytes()
    monkeypatch.setattr(faces.io, "open", _FullDisk(100), raising=False)
    writers = [lambda p: faces.io.write_image(p, img),
               lambda p: faces.io.save_pil(Image.fromarray(img), p),
               lambda p: save_image(torch.rand(4, 3, 16, 16), p)]
    for k, write in enumerate(writers):
        with pytest.raises(OSError) as err:
            write(tmp_path / f"new{k}.png")
        assert err.value.errno == errno.ENOSPC
        assert not (tmp_path / f"new{k}.png").exists()
        with pytest.raises(OSError):
            write(old)
        assert old.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.png"]  # no temporary left


def _recipe() -> Recipe:
    r = Recipe()
    r.GENERATES = True
    r.DEFAULT_CHECKPOINT = "fake.pt"
    r.NEEDS_MIX = True
    r.load_for_test = lambda args, device: torch.nn.Identity()
    r.model_size = lambda model: 32
    r.generate = lambda model, query, mix, source, args: mix.clone()
    return r


def test_test_py_on_a_full_disk_leaves_whole_frames_and_no_video(tmp_path, monkeypatch) -> None:
    from talking import run

    image_dir = tmp_path / "image"
    (image_dir / "ref_img").mkdir(parents=True)
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(
        image_dir / "ref_img" / "anna_256.png")
    (image_dir / "source_img" / "talk").mkdir(parents=True)
    for i in range(6):
        Image.fromarray(np.full((256, 256, 3), 20 * i, np.uint8)).save(
            image_dir / "source_img" / "talk" / f"{i:03d}.png")
    args = test_cli.build_parser("ad-flow").parse_args(
        ["--source", "talk", "anna", "--image_dir", str(image_dir), "--result_dir",
         str(tmp_path / "res"), "--no_progress", "--batch", "2"])
    frame_bytes = len(faces.io.cv2.imencode(".png", np.zeros((256, 256, 3), np.uint8))[1])
    monkeypatch.setattr(faces.io, "open", _FullDisk(int(2.5 * 180_000)), raising=False)
    with pytest.raises(OSError):
        run(args, _recipe())
    out = tmp_path / "res" / "target_img" / "talk" / "anna"
    names = sorted(p.name for p in out.iterdir())
    assert "video.mp4" not in names and "grid.png" not in names
    assert not [n for n in names if n.startswith(".")]  # no temporary file left behind
    assert names and all(n.endswith(".png") for n in names) and len(names) < 6
    for name in names:  # every frame there is whole
        assert (out / name).stat().st_size > frame_bytes
        assert np.asarray(Image.open(out / name)).shape == (256, 256, 3)
