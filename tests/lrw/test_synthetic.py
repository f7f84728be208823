"""lrw.synthetic: determinism, exact ground truth, mouth geometry."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from lrw.index import open_index
from lrw.synthetic import (
    NEUTRAL,
    TRAIN_FRAMES,
    MouthState,
    SyntheticConfig,
    SyntheticSet,
    generate,
    main,
    mouth_box,
    render,
    sample_identity,
    train_frame,
    word_trajectory,
)

SMALL = dict(words=3, speakers=2, clips=1, frames=4, size=32, queries=2, sources=1)


def _make(out: Path, **kw) -> dict:
    return generate(SyntheticConfig(out=str(out), **{**SMALL, **kw}), log=lambda *a: None)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def _rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "set"
    _make(out)
    return out


def _identities(n: int = 6):
    return [sample_identity(np.random.default_rng([7, i])) for i in range(n)]


def test_layout_and_manifest(synth: Path):
    m = json.loads((synth / "manifest.json").read_text())
    idx = open_index(synth, cache=False)
    assert idx.words == m["words"] and len(idx.words) == 3
    assert len(idx.clips) == 3 * 2 * 1 and all(c.n_frames == 4 for c in idx.clips)
    assert idx.clips[0].frames[0].name == f"{idx.words[0]}_00001_01.jpg"
    # query and source identities never appear in train/
    used = {c["speaker"] for c in m["clips"]}
    assert used == set(m["train_speakers"])
    assert not used & (set(m["query_speakers"]) | set(m["source_speakers"]))
    assert sorted(p.name for p in (synth / "image" / "ref_img").iterdir()) == [
        "query00_256.png", "query01_256.png"]
    (src,) = m["sources"]
    folder = synth / "image" / "source_img" / src
    assert sorted(p.name for p in folder.iterdir()) == [
        "000.png", "001.png", "002.png", "003.png", "fps.txt"]
    assert (folder / "fps.txt").read_text().strip() == "25"


def test_deterministic(synth: Path, tmp_path: Path):
    _make(tmp_path / "again")
    assert _files(tmp_path / "again") == _files(synth)
    _make(tmp_path / "other", seed=1)
    other = _files(tmp_path / "other")
    assert other.keys() == _files(synth).keys() and other != _files(synth)


def test_ground_truth_reproduces_files(synth: Path):
    s = SyntheticSet.load(synth)
    assert s.query_names == ["query00", "query01"] and len(s.source_names) == 1
    src = s.source_names[0]
    for q in s.query_names:  # query image = neutral mouth, pixel-exact
        assert np.array_equal(_rgb(s.query_path(q)), render(s.identity(q), NEUTRAL, 256))
    for t in range(s.n_source_frames(src)):
        frame = _rgb(s.source_folder(src) / f"{t:03d}.png")
        speaker = s.manifest["sources"][src]["speaker"]
        assert np.array_equal(frame, render(s.identity(speaker), s.source_states(src)[t], 256))
    gt = s.ground_truth("query01_256", src, 2, 256)
    expected = render(s.identity("query01"), s.source_states(src)[2], 256)
    assert gt.shape == (256, 256, 3) and gt.dtype == np.uint8 and np.array_equal(gt, expected)
    # train JPEGs are the 256 px render brought to 32 px as test.py brings a query (JPEG q95),
    # not a render drawn at 32 px (sharper and aliased: not what the model is tested on)
    clip = s.manifest["clips"][-1]
    ident = s.identity(clip["speaker"])
    assert s.manifest["config"]["train_frames"] == TRAIN_FRAMES
    for t, (o, w) in enumerate(clip["mouth"], start=1):
        jpg = _rgb(synth / "train" / clip["word"] / f"{clip['word']}_{clip['clip_id']}_{t:02d}.jpg")
        diff = np.abs(jpg.astype(int) - train_frame(render(ident, MouthState(o, w), 256), 32))
        direct = np.abs(jpg.astype(int) - render(ident, MouthState(o, w), 32).astype(int))
        assert diff.mean() < 3.0 and direct.mean() > diff.mean() + 0.5  # JPEG q95 at 32 px


def test_only_mouth_box_changes():
    states = [MouthState(0, 0), MouthState(1, 1), MouthState(1, -1), MouthState(0.4, 0.5)]
    for size in (32, 64, 256):
        r0, r1, c0, c1 = mouth_box(size)
        outside = np.ones((size, size), bool)
        outside[r0:r1, c0:c1] = False
        ring = np.zeros((size, size), bool)  # the box's own border pixels
        ring[r0:r1, c0:c1] = True
        ring[r0 + 1:r1 - 1, c0 + 1:c1 - 1] = False
        for ident in _identities(3):
            bare = render(ident, None, size)
            for m in states:
                img = render(ident, m, size)
                assert np.array_equal(img[outside], bare[outside])
                # the mouth stays strictly inside the box, so the box's edges stay untouched
                assert np.abs(img[ring].astype(int) - bare[ring].astype(int)).max() <= 1


def _mouth_mask(ident, m: MouthState, size: int) -> np.ndarray:
    diff = np.abs(render(ident, m, size).astype(int) - render(ident, None, size).astype(int))
    return diff.max(axis=2) > 12


def test_mouth_geometry():
    for ident in _identities():
        ys, xs = np.nonzero(_mouth_mask(ident, NEUTRAL, 256))
        assert xs.max() - xs.min() + 1 == pytest.approx(43, abs=2)  # closed width
        assert (xs.min() + xs.max() + 1) / 2 == pytest.approx(128, abs=1)
        assert (ys.min() + ys.max() + 1) / 2 == pytest.approx(160, abs=1.5)
        ys, xs = np.nonzero(_mouth_mask(ident, MouthState(1.0, 0.0), 256))
        assert (ys.min() + ys.max() + 1) / 2 == pytest.approx(160, abs=1.5)
        assert ys.max() - ys.min() > 25  # it really opens
        assert ident.eye_y * 256 < 160 - 40 and abs(ident.eye_dx) > 0.1
        # mostly inside the 64-px model window rows 31:47, cols 21:42
        for m in (MouthState(1, 1), MouthState(1, -1), NEUTRAL):
            mask = _mouth_mask(ident, m, 64)
            assert mask[31:47, 21:42].sum() >= 0.95 * mask.sum() > 0


def test_word_trajectories_distinct(synth: Path):
    s = SyntheticSet.load(synth)
    curves = {w: np.array(word_trajectory(s.manifest["syllables"][w], 29)) for w in s.words}
    means = {w: np.array([[m.open, m.width] for m in c]) for w, c in curves.items()}
    words = list(means)
    for i, a in enumerate(words):
        assert means[a][:, 0].max() > 0.3 and means[a][0, 0] < 0.05  # silent start, then speech
        for b in words[i + 1:]:
            assert np.abs(means[a] - means[b]).mean() > 0.03, (a, b)


def test_cli_up_to_date_and_refusal(tmp_path: Path, capsys):
    args = [str(tmp_path / "s"), "--words", "1", "--speakers", "1", "--clips", "1",
            "--frames", "2", "--size", "16", "--queries", "1", "--sources", "1",
            "--query-size", "32"]
    assert main(args) == 0
    assert main(args) == 0
    assert "up to date" in capsys.readouterr().out
    assert main([*args[:-1], "48"]) == 0  # other options: the old set is replaced
    assert sorted(p.name for p in (tmp_path / "s" / "image" / "ref_img").iterdir()) == [
        "query00_48.png"]
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    assert main([str(tmp_path / "busy")]) == 1
    assert "not empty" in capsys.readouterr().err


def test_direct_train_render_makes_the_sets_of_before(tmp_path: Path):
    """--train_render direct draws training frames at --size, as sets made before did, and
    their manifests are the ones those sets have (so an old set counts as up to date)."""
    m = _make(tmp_path / "direct", train_render="direct")
    assert "train_frames" not in m["config"] and "train_render" not in m["config"]
    s = SyntheticSet.load(tmp_path / "direct")
    clip = s.manifest["clips"][0]
    ident = s.identity(clip["speaker"])
    for t, (o, w) in enumerate(clip["mouth"], start=1):
        jpg = _rgb(tmp_path / "direct" / "train" / clip["word"] /
                   f"{clip['word']}_{clip['clip_id']}_{t:02d}.jpg")
        direct = np.abs(jpg.astype(int) - render(ident, MouthState(o, w), 32).astype(int))
        down = np.abs(jpg.astype(int) - train_frame(render(ident, MouthState(o, w), 256), 32))
        assert direct.mean() < 3.5 and down.mean() > direct.mean() + 0.5
