"""Bad inputs, as a careless user would give them, fed to every script.

One table (``CASES``) of rows; each row runs one script on one bad input and the same checks
apply to every row:

- no traceback (in-process: no exception other than argparse's ``SystemExit``; subprocess: no
  ``Traceback`` in the output);
- the exit status the row expects (default: non-zero, the job failed);
- one ``error: ...`` line on stderr (argparse's ``PROG: error: ...`` counts) that names the flag
  or the file given in ``Case.names``;
- no file of an earlier run changed: the files of a run made before the table (a trained Glow,
  its samples and log, an evaluation) hash the same before and after every row.

Adding a row
------------
``Case(id, script, args, names, make={...}, code=None, subprocess=False)``

- ``script``: a key of ``SCRIPTS`` (``train``, ``test``, ``evaluate``, ``preprocess``, ``demo``,
  ``lrw.synthetic``, ``synthface.attributes``, ``pose_flow.synthetic``).
- ``args``: the command line after the script name, split with ``shlex``; ``{name}``
  placeholders are filled from ``World`` (built lazily, so a row pays only for what it names):
  ``{w}`` the world folder (also the working directory of every row), ``{data}`` a folder of
  eight good 8x8 PNGs, ``{glow}`` a tiny trained Glow's ``last.pt`` (run ``g`` under ``{w}``),
  ``{syn}`` a tiny ``lrw.synthetic`` set, ``{source}`` its first driving sequence, ``{ad}`` a
  tiny AD-flow's ``last.pt`` (run ``ad``);
  and every key of ``make``.
- ``make``: ``{placeholder: kind}``: a fresh bad input of that kind (a key of ``MAKERS``) made
  under the row's own folder and named by the placeholder in ``args`` (a maker gets the path
  ``ROW_FOLDER/placeholder`` and may return another, e.g. with a suffix).
- ``names``: a string the error line must contain (the flag, or the file's name).
- ``code``: the exact exit status expected; ``None`` means any non-zero status. ``code=0``
  rows are jobs that succeed with a warning: ``names`` must then appear on stderr or stdout.
- ``subprocess=True`` runs ``python SCRIPT.py`` / ``python -m MODULE`` in a child process (for
  what only a fresh interpreter shows).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SIZE = 8  # the tiny Glow's image size

# script key -> (module whose main(argv) runs it, how a child process runs it)
SCRIPTS: dict[str, tuple[str, list[str]]] = {
    "train": ("train", ["train.py"]),
    "test": ("talking.cli", ["test.py"]),
    "evaluate": ("evaluate", ["evaluate.py"]),
    "preprocess": ("preprocess", ["preprocess.py"]),
    "demo": ("demo", ["demo.py"]),
    "lrw.synthetic": ("lrw.synthetic", ["-m", "lrw.synthetic"]),
    "synthface.attributes": ("synthface.attributes", ["-m", "synthface.attributes"]),
    "pose_flow.synthetic": ("pose_flow.synthetic", ["-m", "pose_flow.synthetic"]),
}


# --------------------------------------------------------------------------------------------
# Generated bad inputs: kind -> maker(path) (the path is free; a maker may create a file or a
# folder there)


def _png(path: Path, size: int = SIZE, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)


def _good_pngs(path: Path, n: int = 8) -> None:
    path.mkdir(parents=True)
    for i in range(n):
        _png(path / f"img_{i:02d}.png", seed=i)


def _unreadable_images(path: Path) -> None:
    """A folder of .png/.jpg files that are not images (text, empty, cut short)."""
    path.mkdir(parents=True)
    (path / "a.png").write_text("not an image\n")
    (path / "b.jpg").write_bytes(b"")
    buf = io.BytesIO()
    Image.fromarray(np.zeros((SIZE, SIZE, 3), np.uint8)).save(buf, format="PNG")
    (path / "c.png").write_bytes(buf.getvalue()[:20])


def _write_png(path: Path, wh: tuple[int, int]) -> Path:
    Image.fromarray(np.full((wh[1], wh[0], 3), 128, np.uint8)).save(path)
    return path


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _oversized_png(path: Path, side: int = 14000) -> None:
    """A real 14000 x 14000 1-bit PNG (196 M pixels, over twice PIL's 89.5 M-pixel limit: a
    DecompressionBombError on open) of 24 KB, written row by row without the pixels in memory."""
    import struct
    import zlib

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I",
                                                                       zlib.crc32(tag + data))
    row = b"\0" * (1 + (side + 7) // 8)
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n"
                     + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def _oversized_images(path: Path) -> None:
    """A folder holding only oversized images."""
    path.mkdir(parents=True)
    _oversized_png(path / "big.png")
    (path / "big2.png").write_bytes((path / "big.png").read_bytes())


def _real_files(path: Path) -> None:
    """A folder of someone's own files (photos and notes), which no generator may touch."""
    _good_pngs(path / "train", n=2)
    (path / "notes.txt").write_text("my photos\n")


def _checkpoint_without_weights(path: Path) -> Path:
    """A project-format checkpoint whose 'weights' entry is gone."""
    import torch

    from glow.io import CHECKPOINT_FORMAT

    path = path.with_suffix(".pt")
    torch.save({"format": CHECKPOINT_FORMAT, "version": 1, "model": "glow", "step": 2,
                "config": {"model": {"n_flow": 1, "n_block": 2, "hidden": 4, "img_size": SIZE},
                           "train": {}}}, path)
    return path


def _faceless_real(root: Path, query_wh: tuple[int, int] = (64, 64)) -> None:
    """IMAGE_DIR-style ref_img/ and source_img/ of plain grey images: no face anywhere."""
    (root / "ref_img").mkdir(parents=True)
    (root / "source_img" / "s").mkdir(parents=True)
    Image.new("RGB", query_wh, (128, 128, 128)).save(root / "ref_img" / "q_256.png")
    for i in range(2):
        Image.new("RGB", (64, 64), (120 + i, 128, 128)).save(root / "source_img" / "s" /
                                                              f"{i:03d}.png")


def _lrw_without_clips(root: Path) -> None:
    """An LRW-shaped lipread_mp4/WORD/train/ holding a clip's .txt and two stray files."""
    d = root / "lipread_mp4" / "ABOUT" / "train"
    d.mkdir(parents=True)
    (d / "ABOUT_00001.txt").write_text("Word: ABOUT\n")
    (d / "ABOUT_00001.avi").write_bytes(b"not mp4")
    (d / "notes.doc").write_text("stray\n")


def _small_celeba(root: Path, n: int = 8) -> None:
    """A CelebA-shaped tree of ``n`` faces (half with Eyeglasses), no partition file."""
    (root / "img_align_celeba").mkdir(parents=True)
    rows = []
    for k in range(n):
        _png(root / "img_align_celeba" / f"{k + 1:06d}.jpg", size=32, seed=k)
        rows.append(f"{k + 1:06d}.jpg {1 if k % 2 else -1:2d}  1")
    (root / "list_attr_celeba.txt").write_text(f"{n}\nEyeglasses Male\n" + "\n".join(rows))


def _lrw_with_strays(root: Path) -> None:
    """An LRW-style train/WORD/WORD_ID_FF.png tree (2 words x 2 clips x 4 frames) with two
    stray files (a text file and a misnamed frame)."""
    for word in ("ABOUT", "WORLD"):
        d = root / "train" / word
        d.mkdir(parents=True)
        for clip in (1, 2):
            for f in range(1, 5):
                _png(d / f"{word}_{clip:05d}_{f:02d}.png", seed=clip * 10 + f)
    (root / "train" / "ABOUT" / "notes.txt").write_text("stray\n")
    _png(root / "train" / "WORLD" / "ABOUT_00003_01.png")


MAKERS: dict[str, Callable[[Path], Path | None]] = {
    "missing": lambda p: None,
    "empty_dir": lambda p: p.mkdir(parents=True),
    "text_file": lambda p: p.write_text("hello\n"),
    "empty_file": lambda p: p.write_bytes(b""),
    "good_pngs": _good_pngs,
    "unreadable_images": _unreadable_images,
    "bad_json": lambda p: p.write_text("{not json"),
    "small_celeba": _small_celeba,
    "lrw_without_clips": _lrw_without_clips,
    "faceless_real": _faceless_real,
    "faceless_real_wide": lambda p: _faceless_real(p, (64, 48)),
    "non_square_png": lambda p: _write_png(p.with_suffix(".png"), (24, 16)),
    "lrw_with_strays": _lrw_with_strays,
    "config_fractional": lambda p: p.write_text('{"n_flow": 2.5}\n'),
    "config_nan": lambda p: _write(p.with_suffix(".yaml"), "lr: .nan\n"),
    "oversized_png": lambda p: _oversized_png(p.with_suffix(".png")) or p.with_suffix(".png"),
    "oversized_images": _oversized_images,
    "real_files": _real_files,
    "checkpoint_without_weights": _checkpoint_without_weights,
    "csv_one_photo": lambda p: _write(p.with_suffix(".csv"), "img_00.png,1\n"),
}


# --------------------------------------------------------------------------------------------
# The world: an earlier run, and what rows may name


class World:
    """What rows name by placeholder, built on first use, all under one folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._cache: dict[str, str] = {"w": str(root)}

    def __getitem__(self, key: str) -> str:
        if key not in self._cache:
            self._cache[key] = str(getattr(self, "_make_" + key)())
        return self._cache[key]

    def _dirs(self) -> list[str]:
        return ["--checkpoint_dir", str(self.root / "checkpoint"),
                "--result_dir", str(self.root / "result")]

    def _make_data(self) -> Path:
        _good_pngs(self.root / "data")
        return self.root / "data"

    def _make_glow(self) -> Path:
        import train

        args = ["--model", "glow", "-n", "g", self["data"], "--img_size", str(SIZE),
                "--n_flow", "1", "--n_block", "2", "--hidden", "4", "--n_sample", "2",
                "--batch", "4", "--iter", "2", "--device", "cpu", "--workers", "0",
                "--sample_every", "1", "--save_every", "1", "--log_every", "1",
                "--no_progress", *self._dirs()]
        with _quiet():
            assert train.main(args) == 0
        return self.root / "checkpoint" / "g" / "last.pt"

    def _make_syn(self) -> Path:
        from lrw.synthetic import SyntheticConfig, generate

        root = self.root / "syn"
        generate(SyntheticConfig(out=str(root), words=2, speakers=2, clips=2, frames=6,
                                 size=SIZE, queries=1, sources=1, workers=1),
                 log=lambda *a: None)
        return root

    def _make_source(self) -> Path:
        return next(p for p in sorted((Path(self["syn"]) / "image" / "source_img").iterdir())
                    if p.is_dir())

    def _make_ad(self) -> Path:
        import train

        args = ["--model", "ad-flow", "-n", "ad", self["syn"], "--glow", self["glow"],
                "--img_size", str(SIZE), "--n_frames", "4", "--cls_hidden", "8", "--iter", "2",
                "--batch", "2", "--device", "cpu", "--workers", "0", "--sample_every", "0",
                "--save_every", "0", "--no_progress", *self._dirs()]
        with _quiet():
            assert train.main(args) == 0
        return self.root / "checkpoint" / "ad" / "last.pt"


@contextlib.contextmanager
def _quiet():
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """The earlier run every row must leave alone: a trained Glow (checkpoints, samples, log)
    and an evaluation of it, under the folder every row runs in."""
    import evaluate

    root = tmp_path_factory.mktemp("world")
    w = World(root)
    with _chdir(root):
        w["glow"]
        with _quiet():
            assert evaluate.main(["--model", "glow", "--checkpoint", w["glow"], w["data"],
                                  "--device", "cpu", "--no_progress"]) == 0
    files = _hashes(root)
    for part in ("checkpoint/g/last.pt", "result/sample_g/log.jsonl", "result/eval/g/table.md"):
        assert part in files, sorted(files)
    return w


@contextlib.contextmanager
def _chdir(path: Path):
    import os

    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def _hashes(root: Path) -> dict[str, str]:
    """sha256 of every file of the earlier run (checkpoints and results)."""
    out = {}
    for top in ("checkpoint", "result"):
        for p in sorted((root / top).rglob("*")):
            if p.is_file():
                out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


# --------------------------------------------------------------------------------------------
# The table


@dataclass(frozen=True)
class Case:
    id: str
    script: str
    args: str
    names: str
    make: dict[str, str] = field(default_factory=dict)
    code: int | None = None
    subprocess: bool = False


CASES: list[Case] = [
    # -- missing or wrong inputs (files and folders)
    Case("train-data-missing", "train", "--model glow -n x {bad} --device cpu --workers 0",
         "{bad}", make={"bad": "missing"}),
    Case("train-config-bad-json", "train", "--config {cfg} {data} --dry-run", "--config",
         make={"cfg": "bad_json"}),
    Case("train-config-text", "train", "--config {cfg} {data} --dry-run", "--config",
         make={"cfg": "text_file"}),
    Case("evaluate-checkpoint-missing", "evaluate",
         "--model glow --checkpoint {bad} {data} --device cpu --no_progress", "{bad}",
         make={"bad": "missing"}),
    Case("evaluate-compare-missing", "evaluate", "--compare g nothere", "nothere"),
    # -- argparse: abbreviations and junk values
    Case("train-abbreviated-flag", "train", "--mod glow -n x {data} --dry-run", "--mod"),
    Case("lrw.synthetic-abbreviated-flag", "lrw.synthetic", "{w}/s --word 2", "--word"),
    Case("train-batch-not-a-number", "train", "-n x {data} --batch two --dry-run", "--batch"),
    # -- class 4: counts validated (negative refused naming the flag; 0 what --help says)
    Case("test-max_frames-negative", "test", "q --source s --max_frames -2", "--max_frames"),
    Case("test-batch-zero", "test", "q --source s --batch 0", "--batch"),
    Case("test-first_batch-negative", "test", "q --source s --first_batch -1", "--first_batch"),
    Case("train-n_sample-negative", "train", "-n x {data} --n_sample -1 --dry-run",
         "--n_sample", code=1),
    Case("train-hidden-zero", "train", "-n x {data} --hidden 0 --dry-run", "--hidden", code=1),
    Case("train-ad-n_sample_clips-negative", "train",
         "--model ad-flow -n x {data} --n_sample_clips -1 --dry-run", "--n_sample_clips",
         code=1),
    Case("train-pose-n_sample-negative", "train",
         "--model pose-flow -n x {data} --n_sample -4 --dry-run", "--n_sample", code=1),
    Case("train-content-ae-n_display-negative", "train",
         "--model content-ae -n x {data} --n_display -1 --dry-run", "--n_display", code=1),
    Case("train-mi-mi_hidden-zero", "train", "--model mi-flow -n x {data} --mi_hidden 0 --dry-run",
         "--mi_hidden", code=1),
    Case("evaluate-max_frames-negative", "evaluate",
         "--model glow --checkpoint {glow} {data} --max_frames -3 --device cpu", "--max_frames"),
    Case("evaluate-batch-zero", "evaluate",
         "--model glow --checkpoint {glow} {data} --batch 0 --device cpu", "--batch"),
    Case("evaluate-pairs-negative", "evaluate",
         "--model glow --checkpoint {glow} {data} --pairs -1 --device cpu", "--pairs"),
    Case("evaluate-content-ae-max_pairs-negative", "evaluate",
         "--model content-ae --checkpoint c {data} --max_pairs -1", "--max_pairs"),
    Case("preprocess-detect_width-negative", "preprocess", "{data} --detect_width -5",
         "--detect_width"),
    Case("preprocess-celeba-n_test-negative", "preprocess",
         "--celeba {data} --attr Eyeglasses --out {w}/ab --n_test -1", "--n_test"),
    Case("preprocess-celeba-limit-negative", "preprocess",
         "--celeba {data} --attr Eyeglasses --out {w}/ab --limit -1", "--limit"),
    Case("preprocess-landmarks-workers-zero", "preprocess", "--landmarks {data} --workers 0",
         "--workers"),
    Case("lrw.synthetic-queries-negative", "lrw.synthetic", "{w}/s --queries -1", "--queries"),
    Case("lrw.synthetic-workers-zero", "lrw.synthetic", "{w}/s --workers 0", "--workers"),
    Case("synthface.attributes-test_a-negative", "synthface.attributes", "{w}/s --test_a -2",
         "--test_a"),
    Case("pose_flow.synthetic-drive-negative", "pose_flow.synthetic", "{w}/s --drive -1",
         "--drive"),
    Case("test-content-ae-interpolate-negative", "test",
         "--model content-ae --checkpoint c {data} --interpolate -3", "--interpolate"),
    Case("test-pose-flow-grid-out_size-zero", "test",
         "--model pose-flow --transfer_grid {data} {data} --out_size 0", "--out_size"),
    # -- non-finite and non-integral numbers (flags and config files)
    Case("test-fps-nan", "test", "q --source s --fps nan", "--fps"),
    Case("train-temp-nan", "train", "-n x {data} --temp nan --dry-run", "--temp"),
    Case("train-grad_clip-inf", "train", "-n x {data} --grad_clip inf --dry-run", "--grad_clip"),
    Case("train-config-fractional-int", "train", "--config {cfg} {data} --dry-run", "n_flow",
         make={"cfg": "config_fractional"}),
    Case("train-config-nan", "train", "--config {cfg} {data} --dry-run", "lr",
         make={"cfg": "config_nan"}),
    Case("test-content-ae-mask_power-inf", "test",
         "--model content-ae --checkpoint c {data} --mask_power inf", "--mask_power"),
    # -- class 5: sizes that cannot fit are refused before anything is allocated
    Case("test-out_size-huge", "test", "q --source s --out_size 100000", "--out_size"),
    Case("train-img_size-huge", "train", "-n x {data} --img_size 65536 --n_block 2 --dry-run",
         "--img_size", code=1),
    Case("test-pose-flow-grid-out_size-huge", "test",
         "--model pose-flow --transfer_grid {data} {data} --out_size 100000", "--out_size"),
    Case("lrw.synthetic-query-size-huge", "lrw.synthetic", "{w}/s --query-size 100000",
         "--query-size"),
    Case("preprocess-size-huge", "preprocess", "{data} --size 100000", "--size"),
    Case("synthface.attributes-size-huge", "synthface.attributes", "{w}/s --size 100000",
         "--size"),
    Case("train-n_sample-huge", "train", "-n x {data} --n_sample 1000000 --dry-run",
         "--n_sample", code=1),
    Case("test-content-ae-interpolate-huge", "test",
         "--model content-ae --checkpoint c {data} --interpolate 1000000", "--interpolate"),
    Case("preprocess-celeba-n_test-holds-out-every-face", "preprocess",
         "--celeba {celeba} --attr Eyeglasses --out {w}/ab --size 16", "--n_test 64",
         make={"celeba": "small_celeba"}, code=1),
    # -- what is left out is counted, not dropped silently
    Case("train-ad-flow-lrw-stray-files-counted", "train",
         "--model ad-flow -n strays {lrw} --glow {glow} --img_size 8 --n_frames 4 "
         "--cls_hidden 8 --iter 1 --batch 2 --device cpu --workers 0 --sample_every 0 "
         "--save_every 0 --no_progress --checkpoint_dir {w}/ck_strays --result_dir {w}/res_strays",
         "ignored 2 stray files", make={"lrw": "lrw_with_strays"}, code=0),
    Case("preprocess-lrw-strays-counted", "preprocess", "--lrw {lrw} --out {w}/lrw_out",
         "ignored 2 other files", make={"lrw": "lrw_without_clips"}, code=1),
    # -- said once, not done silently
    Case("test-non-square-query-noted", "test",
         "--model ad-flow --checkpoint {ad} --glow {glow} {q} --source {source} --device cpu "
         "--no_progress --result_dir {w}/res_ns", "24x16, not square",
         make={"q": "non_square_png"}, code=0),
    # -- class 6: a job that produced nothing has failed
    Case("evaluate-glow-no-readable-image", "evaluate",
         "--model glow --checkpoint {glow} {bad} --device cpu --no_progress --name unread",
         "{bad}", make={"bad": "unreadable_images"}, code=1),
    # -- class 2 and the traceback list: oversized images (PIL's DecompressionBombError) are a
    #    counted skip or one line, never an aborted batch; none readable is one line
    Case("train-only-oversized-images", "train",
         "--model glow -n x {bad} --img_size 8 --n_block 2 --batch 2 --device cpu --workers 0 "
         "--no_progress --checkpoint_dir {out}/ck --result_dir {out}/res", "{bad}",
         make={"bad": "oversized_images", "out": "missing"}, code=1),
    Case("train-no-readable-image-small-batch", "train",
         "--model glow -n x {bad} --img_size 8 --n_block 2 --batch 2 --device cpu --workers 0 "
         "--no_progress --checkpoint_dir {out}/ck --result_dir {out}/res", "{bad}",
         make={"bad": "unreadable_images", "out": "missing"}, code=1),
    Case("evaluate-glow-oversized-images", "evaluate",
         "--model glow --checkpoint {glow} {bad} --device cpu --no_progress --result_dir {out}",
         "{bad}", make={"bad": "oversized_images", "out": "missing"}, code=1),
    Case("preprocess-oversized-photo", "preprocess", "{big} --image_dir {out}", "big.png",
         make={"big": "oversized_png", "out": "missing"}, code=1),
    # -- a folder flag naming a path under a regular file (NotADirectoryError before)
    Case("train-checkpoint_dir-under-a-file", "train",
         "--model glow -n x {data} --img_size 8 --n_block 2 --batch 2 --device cpu --workers 0 "
         "--checkpoint_dir {f}/ck --result_dir {w}/res_x", "--checkpoint_dir",
         make={"f": "text_file"}, code=1),
    Case("train-result_dir-under-a-file", "train",
         "--model glow -n x {data} --img_size 8 --n_block 2 --batch 2 --device cpu --workers 0 "
         "--checkpoint_dir {w}/ck_x --result_dir {f}/res", "--result_dir",
         make={"f": "text_file"}, code=1),
    Case("test-image_dir-a-file", "test", "q --source s --image_dir {f}", "--image_dir",
         make={"f": "text_file"}, code=1),
    Case("test-result_dir-under-a-file", "test",
         "--model ad-flow --checkpoint c q --source s --result_dir {f}/r",
         "--result_dir", make={"f": "text_file"}, code=1),
    Case("evaluate-result_dir-a-file", "evaluate",
         "--model glow --checkpoint {glow} {data} --device cpu --result_dir {f}", "--result_dir",
         make={"f": "text_file"}, code=1),
    Case("evaluate-image_dir-a-file", "evaluate",
         "--model ad-flow --checkpoint c --source s --query q --image_dir {f}", "--image_dir",
         make={"f": "text_file"}, code=1),
    Case("preprocess-image_dir-a-file", "preprocess", "--source s {data} --image_dir {f}",
         "--image_dir", make={"f": "text_file"}, code=1),
    # -- checkpoints: a text file is named as one; a project checkpoint missing a key
    Case("evaluate-checkpoint-text-file", "evaluate",
         "--model glow --checkpoint {t} {data} --device cpu", "a text file",
         make={"t": "text_file"}, code=1),
    Case("evaluate-checkpoint-without-weights", "evaluate",
         "--model glow --checkpoint {c} {data} --device cpu", "'weights'",
         make={"c": "checkpoint_without_weights"}, code=1),
    Case("test-checkpoint-without-weights", "test",
         "--model ad-flow --checkpoint {c} --glow {c} {data}/img_00.png --source {data}",
         "'weights'",
         make={"c": "checkpoint_without_weights"}, code=1),
    Case("train-resume-iter-below-step", "train",
         "--model glow -n g {data} --resume --iter 1 --device cpu --workers 0 --no_progress "
         "--checkpoint_dir {w}/checkpoint --result_dir {w}/result", "--iter", code=1),
    # -- class 7: generators never write into a folder of other files
    Case("lrw.synthetic-into-real-files", "lrw.synthetic", "{d} --words 2", "{d}",
         make={"d": "real_files"}, code=1),
    Case("synthface.attributes-into-real-files", "synthface.attributes", "{d} --size 16", "{d}",
         make={"d": "real_files"}, code=1),
    Case("pose_flow.synthetic-into-real-files", "pose_flow.synthetic", "{d} --size 16", "{d}",
         make={"d": "real_files"}, code=1),
    Case("preprocess-attr_from-into-real-files", "preprocess",
         "--attr_from {csv} {data} --out {d}", "{d}",
         make={"d": "real_files", "csv": "csv_one_photo"}, code=1),
    Case("evaluate-real-no-face-anywhere", "evaluate",
         "--model ad-flow --checkpoint {ad} --glow {glow} --real {real} --device cpu "
         "--no_progress --name faceless", "no face found", make={"real": "faceless_real"},
         code=1),
    # -- a second job never silently replaces the first's output
    Case("evaluate-second-evaluation-of-other-data-refused", "evaluate",
         "--model glow --checkpoint {glow} {other} --device cpu --no_progress", "--name",
         make={"other": "good_pngs"}, code=1),
]


def _run(case: Case, world: World, tmp: Path) -> tuple[int, str, str]:
    values = dict(world._cache)
    for key, kind in case.make.items():
        path = tmp / key
        made = MAKERS[kind](path)
        values[key] = str(made if isinstance(made, Path) else path)  # or another name

    class Lazy(dict):
        def __missing__(self, key: str) -> str:
            return world[key]

    argv = shlex.split(case.args.format_map(Lazy(values)))
    names = case.names.format_map(Lazy(values))
    module, command = SCRIPTS[case.script]
    if case.subprocess:
        cmd = [sys.executable, *[str(ROOT / c) if c.endswith(".py") else c for c in command]]
        env = {**__import__("os").environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        out = subprocess.run([*cmd, *argv], cwd=world.root, capture_output=True, text=True,
                             env=env, timeout=300)
        return out.returncode, out.stdout, out.stderr + "\0" + names
    main = importlib.import_module(module).main
    stdout, stderr = io.StringIO(), io.StringIO()
    with _chdir(world.root), contextlib.redirect_stdout(stdout), \
            contextlib.redirect_stderr(stderr):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse
            code = exc.code if isinstance(exc.code, int) else 1
    return int(code or 0), stdout.getvalue(), stderr.getvalue() + "\0" + names


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, world: World, tmp_path: Path) -> None:
    before = _hashes(world.root)
    code, out, err = _run(case, world, tmp_path)
    err, names = err.rsplit("\0", 1)
    assert "Traceback" not in out + err, out + err
    if case.code is None:
        assert code != 0, f"exit 0 on a failed job\n{out}{err}"
    else:
        assert code == case.code, out + err
    if case.code == 0:
        assert names in out + err, out + err
    else:
        errors = [line for line in err.splitlines() if line.startswith("error:")
                  or (": error: " in line and not line.startswith(" "))]
        assert len(errors) == 1, err
        assert names in errors[0], err
    after = _hashes(world.root)  # (new files are allowed: a row may build what it names)
    changed = sorted(k for k, v in before.items() if after.get(k) != v)
    assert not changed, f"files of an earlier run changed or went: {changed}"


def test_the_table_covers_every_script() -> None:
    assert {c.script for c in CASES} >= {"train", "evaluate", "lrw.synthetic"}
    assert len({c.id for c in CASES}) == len(CASES)


# --------------------------------------------------------------------------------------------
# What a table row cannot show: the shared validators, both spellings of --no_progress, the
# memory check of test.py --out_size, and fix-hints run as given


def test_validators_refuse_what_cannot_work() -> None:
    import argparse

    from cliargs import BadValue, finite, image_size, nonnegative_int, positive_int, whole

    assert positive_int("3") == 3 and positive_int(3.0) == 3 and nonnegative_int("0") == 0
    for bad in ("-2", "2.5", 2.5, "nan", "inf", "two", True):
        with pytest.raises(BadValue):
            positive_int(bad)
    with pytest.raises(BadValue, match="at least|>= 1"):
        positive_int(0)
    with pytest.raises(BadValue, match="at most 8192"):
        image_size("100000")
    assert whole(2, 5)("5") == 5
    for bad in ("nan", "inf", "-inf", float("nan")):
        with pytest.raises(BadValue, match="finite"):
            finite(bad)
    p = argparse.ArgumentParser(prog="x")
    p.add_argument("--n", type=positive_int)
    with pytest.raises(SystemExit):
        p.parse_args(["--n", "-2"])


_NO_PROGRESS_CALLS = [  # (script, argv that parses fully and then fails or exits quickly)
    ("train", ["-n", "x", "nodata", "--dry-run"]),
    ("test", ["q", "--source", "s"]),
    ("test", ["--model", "content-ae", "--checkpoint", "c", "d"]),
    ("test", ["--model", "pose-flow", "--transfer_grid", "a", "b"]),
    ("evaluate", ["--model", "glow", "--checkpoint", "c", "d"]),
    ("evaluate", ["--model", "content-ae", "--checkpoint", "c", "d"]),
    ("evaluate", ["--model", "pose-flow", "--checkpoint", "c", "d"]),
    ("preprocess", ["nothere.jpg"]),
    ("preprocess", ["--celeba", "nothere", "--attr", "Eyeglasses", "--out", "o"]),
    ("preprocess", ["--landmarks", "nothere_folder"]),
    ("lrw.synthetic", ["o", "--words", "100000"]),
    ("synthface.attributes", ["o", "--size", "8"]),
    ("pose_flow.synthetic", ["o", "--identities", "1"]),
]


@pytest.mark.parametrize("flag", ["--no_progress", "--no-progress"])
def test_every_script_and_mode_accepts_both_no_progress_spellings(flag: str, tmp_path: Path,
                                                                  monkeypatch) -> None:
    import demo

    ran = []
    monkeypatch.setattr(demo.Demo, "run", lambda self: ran.append(self.progress))
    with _chdir(tmp_path):
        assert demo.main([flag]) == 0 and ran == [False]  # passed on to the jobs it runs
    for script, argv in _NO_PROGRESS_CALLS:
        main = importlib.import_module(SCRIPTS[script][0]).main
        err = io.StringIO()
        with _chdir(tmp_path), contextlib.redirect_stderr(err), _quiet_stdout():
            try:
                main([*argv, flag])
            except SystemExit:
                pass
        assert "unrecognized" not in err.getvalue(), (script, argv, err.getvalue())
        assert flag not in err.getvalue(), (script, argv, err.getvalue())


@contextlib.contextmanager
def _quiet_stdout():
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def test_out_size_that_cannot_fit_in_memory_is_refused_before_any_frame(
        world: World, tmp_path: Path, monkeypatch) -> None:
    """A frame and the 24-tile grid at --out_size beyond the memory available is refused (one
    line naming --out_size) before the output folder exists."""
    import cliargs
    from talking.cli import main

    syn = Path(world["syn"])
    source = next((syn / "image" / "source_img").iterdir())
    query = next((syn / "image" / "ref_img").glob("*.png"))
    args = ["--model", "ad-flow", "--checkpoint", world["ad"], "--glow", world["glow"],
            str(query), "--source", str(source), "--device", "cpu", "--no_progress",
            "--result_dir", str(tmp_path / "res"), "--out_size", "4096"]
    monkeypatch.setattr(cliargs, "available_memory", lambda: 200 * 2**20)  # 200 MiB
    err = io.StringIO()
    with contextlib.redirect_stderr(err), _quiet_stdout():
        assert main(args) == 1
    lines = err.getvalue().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --out_size 4096"), lines
    assert "GiB" in lines[0] and "lower --out_size" in lines[0]
    assert not (tmp_path / "res").exists()
    monkeypatch.setattr(cliargs, "available_memory", lambda: 64 * 2**30)
    args[-1] = "16"
    with contextlib.redirect_stderr(io.StringIO()), _quiet_stdout():
        assert main(args) == 0
    assert len(list((tmp_path / "res").rglob("*.png"))) > 1


def _hint_command(message: str) -> list[str]:
    """The command a message advises: between backticks, or after ``: `` up to the end."""
    import re

    found = re.search(r"`python ([^`]+)`", message) or re.search(r": python (.+)$", message)
    assert found, message
    return shlex.split(found.group(1))


def _run_hint(argv: list[str], cwd: Path) -> tuple[int, str]:
    """Run ``python SCRIPT.py ...`` or ``python -m MODULE ...`` in a child process."""
    cmd = [sys.executable, *([str(ROOT / argv[0])] if argv[0].endswith(".py") else argv[:2])]
    rest = argv[1:] if argv[0].endswith(".py") else argv[2:]
    env = {**__import__("os").environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([*cmd, *rest], cwd=cwd, capture_output=True, text=True, env=env,
                         timeout=300)
    return out.returncode, out.stdout + out.stderr


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_content_ae_evaluate_on_real_faces_advises_a_new_folder_and_the_advice_works(
        tmp_path: Path) -> None:
    """A real A/B folder has no exact answers: the message says so and advises writing a
    synthetic set into a NEW folder; running that advice works and leaves the real one alone."""
    import evaluate

    real = tmp_path / "celeba_glasses"
    for split in ("trainA", "trainB", "testA", "testB"):
        _good_pngs(real / split, n=2)
    before = _tree(real)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), _quiet_stdout():
        code = evaluate.main(["--model", "content-ae", "--checkpoint", str(tmp_path / "c.pt"),
                              str(real), "--result_dir", str(tmp_path / "res")])
    line = err.getvalue().strip()
    assert code == 1 and line.count("\n") == 0 and str(real) in line, line
    assert "not a synthetic set" in line
    hint = _hint_command(line)
    assert hint[:2] == ["-m", "synthface.attributes"] and Path(hint[2]) != real
    hint += ["--train_a", "2", "--train_b", "2", "--test_a", "1", "--test_b", "1",
             "--size", "16"]  # the advice as given, at a test's size
    code, out = _run_hint(hint, tmp_path)
    assert code == 0, out
    assert (Path(hint[2]) / "manifest.json").is_file()
    assert _tree(real) == before  # the real faces: nothing written, nothing replaced


def test_pose_flow_query_without_landmarks_advises_that_one_image_and_the_advice_works(
        shared_faces: Path, tmp_path: Path) -> None:
    """A small face in a large query image: dlib misses it at the default detection width;
    the advice names that image (never its folder) and a width that finds it, and running it
    writes that image's landmark file and nothing else."""
    from pose_flow.data import PoseDataError
    from pose_flow.driving import landmarks_for

    folder = tmp_path / "photos"
    folder.mkdir()
    face = Image.open(shared_faces / "ref_img" / "obama_256.jpg").convert("RGB")
    canvas = Image.new("RGB", (1400, 1000), (128, 128, 128))
    canvas.paste(face.resize((100, 100)), (600, 400))
    canvas.save(folder / "query.png")
    _png(folder / "other.png", size=64)  # a neighbour the advice must not touch
    before = _tree(folder)
    with pytest.raises(PoseDataError) as exc:
        landmarks_for(folder / "query.png", "query")
    message = str(exc.value)
    assert "--landmarks " + str(folder) + " " not in message + " "
    hint = _hint_command(message)
    assert hint[:3] == ["preprocess.py", "--landmarks", str(folder / "query.png")]
    code, out = _run_hint(hint, tmp_path)
    assert code == 0, out
    after = _tree(folder)
    assert set(after) == set(before) | {"query.npy"}
    assert all(after[k] == v for k, v in before.items())
    lm = np.load(folder / "query.npy")
    assert lm.shape == (68, 2) and 0.4 < lm[:, 0].mean() < 0.55  # the face near x = 650/1400


def test_a_photo_with_the_same_stem_never_replaces_another_query(shared_faces: Path,
                                                                  tmp_path: Path) -> None:
    """preprocess.py PHOTO: a query aligned from another photo (or put there by hand) keeps
    its name; the new one gets the next free name and the output says so. Aligning the same
    photo again replaces its own earlier crop."""
    import shutil

    import preprocess

    for folder, face in (("a", "obama"), ("b", "leo")):
        (tmp_path / folder).mkdir()
        shutil.copy(shared_faces / "ref_img" / f"{face}_256.jpg", tmp_path / folder / "me.jpg")
    image_dir = tmp_path / "image"
    argv = ["--image_dir", str(image_dir), "--no-progress"]

    def run(photo: Path) -> str:
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            assert preprocess.main([str(photo), *argv]) == 0
        return out.getvalue()

    run(tmp_path / "a" / "me.jpg")
    ref = image_dir / "ref_img"
    first = _tree(ref)
    out = run(tmp_path / "b" / "me.jpg")
    assert "me_256.jpg holds another face, wrote me-2" in out
    assert {k: v for k, v in _tree(ref).items() if k in first} == first  # untouched
    assert (ref / "me-2_256.jpg").is_file()
    out = run(tmp_path / "a" / "me.jpg")  # the same photo again: its own crop is replaced
    assert "replaced its earlier alignment" in out and not (ref / "me-3_256.jpg").exists()
    (ref / "me_256.json").unlink()  # a query without a record (by hand): never replaced
    out = run(tmp_path / "a" / "me.jpg")
    assert "wrote me-3" in out


def test_talking_faces_of_two_checkpoints_never_share_a_folder_silently(world: World,
                                                                       tmp_path: Path) -> None:
    """test.py with another model or checkpoint on the same source and query is refused (one
    line: keep both with --result_dir, or --overwrite); the first output is untouched; a rerun
    of the same checkpoint replaces its own output."""
    import shutil

    from talking.cli import main

    other = tmp_path / "other_ad.pt"
    shutil.copy(world["ad"], other)
    query = next((Path(world["syn"]) / "image" / "ref_img").glob("*.png"))
    res = tmp_path / "res"

    def run(checkpoint: str, *extra: str) -> tuple[int, str]:
        err = io.StringIO()
        with contextlib.redirect_stderr(err), _quiet_stdout():
            code = main(["--model", "ad-flow", "--checkpoint", checkpoint, "--glow", world["glow"],
                         str(query), "--source", world["source"], "--device", "cpu",
                         "--no_progress", "--result_dir", str(res), *extra])
        return code, err.getvalue()

    assert run(world["ad"])[0] == 0
    first = _tree(res)
    code, err = run(str(other))
    assert code == 1 and err.count("\n") == 1 and err.startswith("error: "), err
    assert "--result_dir" in err and "--overwrite" in err and world["ad"] in err
    assert _tree(res) == first
    assert run(world["ad"])[0] == 0  # the same checkpoint again: its own output, replaced
    assert run(str(other), "--overwrite")[0] == 0


def test_landmark_files_outside_0_1_are_refused_and_counted(tmp_path: Path) -> None:
    """Pixel coordinates (or anything outside [0, 1]) in FRAME.npy are not landmarks: the
    reader refuses them with the reason 'range', the pose-flow index skips and counts them, and
    the message for a query says what is wrong with the file."""
    from pose_flow.data import REASONS, read_landmarks

    good = np.random.default_rng(0).uniform(0.2, 0.8, (68, 2)).astype(np.float32)
    np.save(tmp_path / "ok.npy", good)
    np.save(tmp_path / "pixels.npy", good * 64)
    assert read_landmarks(tmp_path / "ok.npy")[1] == ""
    assert read_landmarks(tmp_path / "pixels.npy") == (None, "range")
    assert "outside [0, 1]" in REASONS["range"]
    from pose_flow.data import _scan_clip

    clip = tmp_path / "id0" / "clip0"
    clip.mkdir(parents=True)
    for name, lm in (("000", good), ("001", good * 64)):
        _png(clip / f"{name}.png")
        np.save(clip / f"{name}.npy", lm)
    frames, skipped = _scan_clip(clip)
    assert frames == ["000.png"] and skipped == {"range": 1}


def test_evaluate_real_says_once_that_a_non_square_query_is_stretched(world: World,
                                                                     tmp_path: Path) -> None:
    import evaluate

    MAKERS["faceless_real_wide"](tmp_path / "real")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = evaluate.main(["--model", "ad-flow", "--checkpoint", world["ad"], "--glow",
                              world["glow"], "--real", str(tmp_path / "real"), "--device", "cpu",
                              "--no_progress", "--result_dir", str(tmp_path / "res")])
    assert code == 1 and "no face found" in err.getvalue()  # grey images: nothing scored
    assert out.getvalue().count("64x48, not square") == 1, out.getvalue()
