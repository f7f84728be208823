"""``--init matched``: mouth readings from landmarks, the uncentred ridge fit, the fit on a
synthetic set and on landmark files, and the one-line refusal without readings."""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import ad_flow.recipe as ad
from ad_flow.init import PairStats
from ad_flow.matched import fit_matched_encoders
from ad_flow.model import FullEncoder, LinearEncoder
from ad_flow.recipe import from_glow
from faces.metrics import mouth_reading
from lrw.datasets import ClipDataset
from lrw.index import open_index
from lrw.matched import clip_readings
from lrw.synthetic import MouthState, SyntheticSet, sample_identity
from synthface.landmarks import face_landmarks

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_ad_flow import SIZE, save_glow, synthetic_set, tiny_cfg, tiny_glow  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
import preprocess  # noqa: E402
import train as train_cli  # noqa: E402


def test_mouth_reading_follows_the_state_and_ignores_where_the_face_is():
    ident = sample_identity(np.random.default_rng(3))
    lm = [face_landmarks(ident, MouthState(o, 0.0)) for o in (0.0, 0.3, 0.6, 0.9)]
    opening = mouth_reading(np.stack(lm))[:, 0]
    assert opening[0] < 0.05 and np.all(np.diff(opening) > 0.02), opening
    wide = mouth_reading(face_landmarks(ident, MouthState(0.0, 0.8)))
    narrow = mouth_reading(face_landmarks(ident, MouthState(0.0, -0.8)))
    assert wide[1] > narrow[1] + 0.05
    a = math.radians(17)  # scaled, rotated, moved: the same reading
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    moved = 3.1 * lm[2] @ rot.T + np.array([40.0, -7.0])
    assert np.allclose(mouth_reading(moved), mouth_reading(lm[2]))
    with pytest.raises(ValueError, match="68, 2"):
        mouth_reading(np.zeros((67, 2)))


def test_pair_stats_recover_a_linear_map():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(5, 5, generator=g, dtype=torch.float64)
    st = PairStats(5)
    for _ in range(4):
        x = torch.randn(50, 5, generator=g, dtype=torch.float64)
        st.add(x, x @ w.T)
    fit, bias = st.solve(1e-9)
    assert torch.count_nonzero(bias) == 0
    assert torch.allclose(fit, w, atol=1e-5) and st.explained(fit) > 0.999999
    assert abs(st.explained(torch.zeros(5, 5, dtype=torch.float64))) < 1e-12


@pytest.fixture(scope="module")
def syn(tmp_path_factory) -> Path:
    return synthetic_set(tmp_path_factory.mktemp("matched") / "syn")


def _dataset(root: Path) -> ClipDataset:
    return ClipDataset(open_index(root, cache=False), SIZE, n_frames=6)


def test_readings_of_a_synthetic_set_are_its_recorded_states(syn: Path):
    ds = _dataset(syn / "train")
    readings, speakers, source = clip_readings(ds, syn / "train")
    s = SyntheticSet.load(syn)
    by_name = {f"{c['word']}_{c['clip_id']}": c for c in s.manifest["clips"]}
    assert "manifest.json" in source and all(r is not None for r in readings)
    for clip, r, spk in zip(ds.clips, readings, speakers, strict=True):
        rec = by_name[clip.name]
        assert spk == rec["speaker"] and r.shape == (6, 2)
        exact = [mouth_reading(face_landmarks(s.identity(spk), MouthState(o, w)))[0]
                 for o, w in rec["mouth"]]
        assert np.allclose(r[:, 0], exact)  # the opening as read; the width is relative
    picked = [[5, 0, 2]] * len(ds.clips)  # a window of one's own (window="random" draws)
    some, _, _ = clip_readings(ds, syn / "train", picked)
    assert all(np.allclose(a[:, 0], r[[5, 0, 2], 0]) for a, r in zip(some, readings,
                                                                    strict=True))
    for spk in set(speakers):  # ... to the speaker's median width
        widths = np.concatenate([r[:, 1] for r, s_ in zip(readings, speakers, strict=True)
                                 if s_ == spk])
        assert abs(np.median(widths)) < 1e-9


def test_landmark_files_stand_in_and_no_readings_is_one_line(syn: Path, tmp_path: Path):
    plain = tmp_path / "plain"  # the frames alone: an LRW-style folder without a manifest
    shutil.copytree(syn / "train", plain)
    glow = tiny_glow()
    model = from_glow(glow, tiny_cfg(tmp_path / "g.pt"))
    with pytest.raises(ValueError, match=r"preprocess\.py --landmarks .*plain"):
        fit_matched_encoders(model, _dataset(plain), plain, pairs=4, ridge=0.01)
    s = SyntheticSet.load(syn)  # landmark files as preprocess.py --landmarks writes them
    for c in s.manifest["clips"]:
        for t, (o, w) in enumerate(c["mouth"], start=1):
            lm = face_landmarks(s.identity(c["speaker"]), MouthState(o, w))
            np.save(plain / c["word"] / f"{c['word']}_{c['clip_id']}_{t:02d}.npy", lm)
    ds = _dataset(plain)
    readings, speakers, source = clip_readings(ds, plain)
    assert "npy" in source and speakers == [c.name for c in ds.clips]  # no speakers: clips
    facts = fit_matched_encoders(model, ds, plain, pairs=4, ridge=0.01)
    assert facts["pairs"] == 4 and facts["skipped"] == 0


def test_fit_sets_every_level_and_is_seeded(syn: Path, tmp_path: Path):
    ds = _dataset(syn / "train")
    glow = tiny_glow()
    fits = []
    for seed in (0, 0, 1):
        model = from_glow(glow, tiny_cfg(tmp_path / "g.pt"))
        before = [m.linear.weight.clone() for m in model.encoder.levels]
        logs = []
        facts = fit_matched_encoders(model, ds, syn / "train", pairs=6, ridge=0.01, seed=seed,
                                     log=logs.append)
        assert "matched init from 6 pairs" in logs[-1]
        for m, b in zip(model.encoder.levels, before, strict=True):
            assert not torch.equal(m.linear.weight, b) and torch.count_nonzero(m.linear.bias) == 0
        assert all(0 < facts[f"explained_l{i}"] <= 1 for i in range(len(before)))
        fits.append(torch.cat([m.linear.weight.flatten() for m in model.encoder.levels]))
    assert torch.equal(fits[0], fits[1]) and not torch.equal(fits[0], fits[2])


def test_train_py_init_matched(syn: Path, tmp_path: Path, capsys):
    glow_path = save_glow(tmp_path / "glow.pt", tiny_glow())
    args = ["--model", "ad-flow", "-n", "m", str(syn / "train"), "--glow", str(glow_path),
            "--img_size", str(SIZE), "--n_frames", "6", "--cls_hidden", "24", "--iter", "2",
            "--batch", "2", "--workers", "0", "--no_progress", "--init", "matched",
            "--init_pairs", "4", "--save_every", "0", "--sample_every", "0",
            "--checkpoint_dir", str(tmp_path / "ck"), "--result_dir", str(tmp_path / "res")]
    assert train_cli.main(args) == 0
    assert "matched init from 4 pairs" in capsys.readouterr().out
    ck = torch.load(tmp_path / "ck/m/last.pt", weights_only=True)
    assert ck["config"]["model"]["init"] == "matched"
    assert ck["config"]["model"]["init_pairs"] == 4
    assert train_cli.main([*args[:-4], "--encoder", "mlp", "--checkpoint_dir",
                           str(tmp_path / "ck2"), "--result_dir", str(tmp_path / "res2")]) != 0
    err = capsys.readouterr().err
    assert "--init matched" in err and "--init random" in err
    assert json.loads(json.dumps(ck["config"]["model"]))["init_ridge"] == 0.01


def test_real_frames_with_their_landmark_files(shared_faces: Path, tmp_path: Path):
    """Real frames: preprocess.py --landmarks writes the readings, the fit runs on them."""
    frames = sorted((shared_faces / "source_img" / "ellen").iterdir(),
                    key=lambda p: int(p.name.split(".")[0]))
    root = tmp_path / "real"
    (root / "TALK").mkdir(parents=True)
    for k, start in enumerate((0, 100, 200), start=1):  # three clips, each its own speaker
        for t in range(8):
            shutil.copy(frames[start + 4 * t], root / "TALK" / f"TALK_{k:05d}_{t + 1:02d}.jpg")
    assert preprocess.main(["--landmarks", str(root)]) == 0
    ds = ClipDataset(open_index(root, cache=False), SIZE, n_frames=8)
    readings, speakers, source = clip_readings(ds, root)
    assert "npy" in source and len(set(speakers)) == 3
    opening = np.concatenate([r[:, 0] for r in readings])
    assert opening.min() >= 0 and np.ptp(opening) > 0.03, opening  # she talks
    model = from_glow(tiny_glow(), tiny_cfg(tmp_path / "g.pt", n_frames=8))
    facts = fit_matched_encoders(model, ds, root, pairs=4, ridge=0.01)
    assert facts["skipped"] == 0 and all(0 < facts[f"explained_l{i}"] <= 1 for i in range(2))


def test_full_map_learns_what_a_map_shared_by_the_channels_cannot():
    """``--encoder full``: one map over a level's channels and positions. A target that
    mixes channels (here: channel 0 takes channel 1's latent) is out of reach of the
    thesis's map, which treats every channel alike; the full map recovers it."""
    c, h = 3, 4
    full, shared = FullEncoder(c, h), LinearEncoder(h)
    assert full.features == c * h * h and shared.features == h * h
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, c, h, h, generator=g, dtype=torch.float64)
    y = x.clone()
    y[:, 0] = x[:, 1]
    fits = {}
    for name, enc in (("full", full), ("shared", shared)):
        st = PairStats(enc.features)
        xv, yv = enc.vectors(x), enc.vectors(y)
        st.add(xv.reshape(-1, enc.features), yv.reshape(-1, enc.features))
        fits[name] = st.explained(st.solve(1e-9)[0])
    assert fits["full"] > 0.999999 and fits["shared"] < 0.9, fits
    # the thesis's map is the full map's special case: the same weights per channel
    with torch.no_grad():
        shared.linear.weight.normal_(generator=g)
        shared.linear.bias.normal_(generator=g)
        full.linear.weight.copy_(torch.block_diag(*[shared.linear.weight] * c))
        full.linear.bias.copy_(shared.linear.bias.repeat(c))
    z = torch.randn(2, c, h, h, generator=g)
    assert torch.allclose(full(z), shared(z), atol=1e-5)


@pytest.mark.parametrize("init", ["matched", "lstsq"])
def test_train_py_encoder_full(syn: Path, tmp_path: Path, capsys, init: str):
    """train.py fits the full map in closed form; test.py's loader rebuilds it from the
    checkpoint with the same weights."""
    glow_path = save_glow(tmp_path / "glow.pt", tiny_glow())
    args = ["--model", "ad-flow", "-n", "f", str(syn / "train"), "--glow", str(glow_path),
            "--img_size", str(SIZE), "--n_frames", "6", "--cls_hidden", "24", "--iter", "0",
            "--batch", "2", "--workers", "0", "--no_progress", "--init", init,
            "--init_pairs", "4", "--encoder", "full", "--save_every", "0", "--sample_every",
            "0", "--checkpoint_dir", str(tmp_path / "ck"), "--result_dir", str(tmp_path / "res")]
    assert train_cli.main(args) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if "explained per level" in x)
    assert ("matched init from 4 pairs" if init == "matched" else "least-squares init") in line
    explained = [float(v) for v in line.rsplit(":", 1)[1].split(",")]
    assert len(explained) == 2 and all(0.5 < e <= 1 for e in explained), line
    ck = torch.load(tmp_path / "ck/f/last.pt", weights_only=True)
    assert ck["config"]["model"]["encoder"] == "full"
    model = ad.ADFlowRecipe().from_checkpoint(ck, tmp_path / "ck/f/last.pt")
    shapes = model.glow.z_shapes()
    for i, (ch, h, w) in enumerate(shapes):
        weight = ck["weights"][f"encoder.levels.{i}.linear.weight"]
        assert weight.shape == (ch * h * w, ch * h * w)
        assert isinstance(model.encoder.levels[i], FullEncoder)
        assert torch.equal(model.encoder.levels[i].linear.weight, weight)
        if init == "matched":  # the uncentred fit has no bias (nn.Linear starts with one)
            assert torch.count_nonzero(ck["weights"][f"encoder.levels.{i}.linear.bias"]) == 0
