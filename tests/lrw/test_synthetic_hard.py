"""The hard talking-face set (``python -m lrw.synthetic OUT --hard``): exact ground truth through
pose, light and the real alignment, query and source that differ as specified, and the same
scorer as the frontal set, on which the mouth blend does measurably worse."""

from __future__ import annotations

import json

import numpy as np
import pytest

import evaluation.synthetic as es
from bench.reader_check import width_in_crops
from evaluation.models import like_model_input
from evaluation.motion import motion_deviation_error, motion_error, mouth_reader, ratio, state_array
from faces.align import (
    MOUTH_CENTER_256,
    align_face,
    alignment_params,
    apply_transform,
    similarity_matrix,
)
from faces.io import read_image
from lrw.synthetic import HARD_POSES, SyntheticConfig, SyntheticSet, generate, main
from synthface.face import Identity, MouthState, render, sample_identity
from synthface.pose import FRONTAL, HeadPose, render_posed
from synthface.scene import LIP_ROLES, Lighting, Shot, landmarks_px, render_shot

SMALL = dict(words=2, speakers=2, clips=1, frames=7, size=32, queries=1, sources=2, seed=1)


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("hard")
    quiet = {"log": lambda *_: None}
    generate(SyntheticConfig(out=str(root / "hard"), hard=True, **SMALL), **quiet)
    generate(SyntheticConfig(out=str(root / "frontal"), **SMALL), **quiet)
    return SyntheticSet.load(root / "hard"), SyntheticSet.load(root / "frontal")


def test_truth_reads_back_through_pose_light_and_crop(sets):
    hard, _ = sets
    assert hard.hard
    for q in hard.query_names:
        reader = mouth_reader(hard.identity(q), 32, hard.query_shot(q))
        for s in hard.source_names:
            states = state_array(hard.source_states(s))
            truth = np.stack([like_model_input(hard.ground_truth(q, s, t), 32)
                              for t in range(len(states))])
            est, fit = reader.read(truth, fit=True)
            assert fit.max() < 1.0, (q, s, fit)  # the reader explains the truth's mouth box
            assert ratio(*motion_deviation_error(est, states)) < 0.02, (q, s)
            assert ratio(*motion_error(est, states, np.zeros(2))) < 0.02, (q, s)


def test_ground_truth_is_the_query_with_the_source_mouth(sets):
    """Frame t of the truth is the query image itself where the source's mouth is closed, and
    differs from it only around the mouth otherwise."""
    hard, _ = sets
    q, s = hard.query_names[0], hard.source_names[0]
    query = read_image(hard.query_path(q))
    states = hard.source_states(s)
    for t, st in enumerate(states):
        gt = hard.ground_truth(q, s, t)
        diff = np.abs(gt.astype(int) - query.astype(int)).max(-1)
        if st == MouthState(0.0, 0.0):
            assert diff.max() == 0
        rows, cols = np.nonzero(diff > 2)
        if len(rows):  # the change stays near the aligned mouth (centre (128, 160) at 256 px)
            assert rows.min() > 110 and rows.max() < 215 and cols.min() > 60 and cols.max() < 196


def test_query_and_source_differ_as_specified(sets):
    hard, _ = sets
    m = hard.manifest
    for q in hard.query_names:
        qs = hard.query_shot(q)
        qi = hard.identity(q)
        for s in hard.source_names:
            si = hard.identity(m["sources"][s]["speaker"])
            # lips: width, thickness and colour from disjoint ranges and palettes
            assert qi.lip_w - si.lip_w >= 0.2
            assert si.lip_upper - qi.lip_upper >= 0.007 and si.lip_lower - qi.lip_lower >= 0.009
            assert np.linalg.norm(np.subtract(qi.lip, si.lip)) >= 0.4
            for shot in hard.source_shots(s):
                p, pq = shot.pose, qs.pose
                assert pq.yaw > 0 > p.yaw and pq.yaw - p.yaw >= 0.32
                assert pq.roll > 0 > p.roll
                assert pq.scale > 1.0 > p.scale
                assert qs.light.gx >= 0.25 and shot.light.gx <= -0.25  # lit from the other side
    # sources move their heads while they speak
    poses = [sh.pose for sh in hard.source_shots(hard.source_names[0])]
    assert np.ptp([p.yaw for p in poses]) > 0.02 and np.ptp([p.roll for p in poses]) > 0.01
    for role in ("query", "source"):
        assert HARD_POSES[role]["side"] and LIP_ROLES[role]["palette"]
    # training speakers are posed and carry lips of both kinds, never the held-out identities
    assert all("shots" in c for c in m["clips"])
    assert not {c["speaker"] for c in m["clips"]} & set(m["query_speakers"] + m["source_speakers"])


def test_crops_use_the_alignment_real_faces_get():
    """The crop of a posed, lit face equals, up to resampling, what ``faces.align.align_face``
    cuts from the posed photo with the exact landmarks; the mouth lands where it puts it."""
    rng = np.random.default_rng(4)
    ident = sample_identity(rng)
    for pose_kw in ({"yaw": 0.4, "roll": 0.12, "scale": 0.92, "tx": 0.03},
                    {"yaw": -0.3, "roll": -0.1, "scale": 1.06, "ty": -0.02}):
        pose = HeadPose(**pose_kw)
        mouth = MouthState(0.5, 0.3)
        lm = landmarks_px(ident, mouth, pose)
        params = alignment_params(lm)
        shot = Shot(pose, Lighting(), tuple(map(tuple, similarity_matrix(params, 256))))
        ours = render_shot(ident, mouth, shot)
        photo, _ = render_posed(ident, mouth, pose, 256)
        theirs = align_face(photo, lm, 256, border="replicate", warn=False).image
        inner = (slice(30, 226), slice(30, 226))
        err = np.mean((ours[inner].astype(float) - theirs[inner].astype(float)) ** 2)
        assert 10 * np.log10(255**2 / err) > 28.0
        in_crop = apply_transform(lm, np.asarray(shot.matrix))
        assert np.allclose((in_crop[48] + in_crop[54]) / 2, MOUTH_CENTER_256, atol=1.5)


def test_lighting_changes_the_pixels_the_reader_still_reads():
    ident = sample_identity(np.random.default_rng(2))
    m = tuple(map(tuple, similarity_matrix(alignment_params(landmarks_px(ident, None,
                                                                         FRONTAL)), 256)))
    dark = Shot(FRONTAL, Lighting(0.75, 0.5, -0.2, (1.08, 0.95, 0.92), 0.02), m)
    plain = Shot(FRONTAL, Lighting(), m)
    states = [MouthState(0.0, 0.0), MouthState(0.6, 0.4), MouthState(0.25, -0.7)]
    imgs = np.stack([like_model_input(render_shot(ident, st, dark), 32) for st in states])
    base = render_shot(ident, states[0], plain).astype(float)
    assert np.abs(render_shot(ident, states[0], dark).astype(float) - base).mean() > 10
    est = mouth_reader(ident, 32, dark).read(imgs)
    assert np.abs(est - state_array(states)).max() < 0.06


def test_copy_is_one_and_the_blend_does_worse_than_on_the_frontal_set(sets, monkeypatch):
    """One scorer for both sets (the per-frame scoring counts both), copying the query scores
    exactly 1 on the motion error, and the mouth blend is measurably worse on the hard set."""
    hard, frontal = sets
    calls = []
    real = es._frame_values

    def counted(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(es, "_frame_values", counted)
    rows_h, _ = es.evaluate_synthetic(hard.root, [], 32, progress=False)
    n_hard = len(calls)
    rows_f, _ = es.evaluate_synthetic(frontal.root, [], 32, progress=False)
    assert n_hard > 0 and len(calls) == 2 * n_hard
    copy_h, blend_h = rows_h["baseline: copy query"], rows_h["baseline: mouth blend"]
    blend_f = rows_f["baseline: mouth blend"]
    assert copy_h["motion_dev"] == 1.0 and copy_h["dpsnr"] == 0.0
    assert blend_h["motion_dev"] > blend_f["motion_dev"] + 0.1, (blend_h, blend_f)
    assert blend_h["psnr_mouth"] < blend_f["psnr_mouth"] - 1.0, (blend_h, blend_f)
    # the reader's fit says why: on the frontal set the blend's mouth is some state of the
    # query's mouth in other colours (a grey level or two); on the hard set the source's dark,
    # thick lips are no state of it, and the states read from them are guesses
    assert copy_h["motion_fit"] < 1.0 and rows_f["baseline: copy query"]["motion_fit"] < 1.0
    assert blend_f["motion_fit"] < 3.0 and blend_h["motion_fit"] > 4 * blend_f["motion_fit"], (
        blend_h["motion_fit"], blend_f["motion_fit"])


def test_frontal_sets_are_unchanged_by_the_lip_geometry(tmp_path):
    """Identities without their own lips keep today's pixels and manifests."""
    ident = sample_identity(np.random.default_rng(9))
    assert "lip_w" not in ident.to_dict()
    assert Identity.from_dict(ident.to_dict()) == ident
    d = json.loads(json.dumps(ident.to_dict()))
    assert render(Identity.from_dict(d), MouthState(0.4, 0.2), 64).tobytes() == \
        render(ident, MouthState(0.4, 0.2), 64).tobytes()
    out = tmp_path / "f"
    generate(SyntheticConfig(out=str(out), words=1, speakers=1, clips=1, frames=2, size=16,
                             queries=1, sources=1), log=lambda *_: None)
    m = json.loads((out / "manifest.json").read_text())
    assert "hard" not in m["config"] and "shots" not in m["clips"][0]


def test_cli_writes_the_hard_set(tmp_path, capsys):
    out = tmp_path / "h"
    assert main([str(out), "--hard", "--words", "1", "--speakers", "1", "--clips", "1",
                 "--frames", "3", "--size", "16", "--queries", "1", "--sources", "1"]) == 0
    syn = SyntheticSet.load(out)
    assert syn.hard and syn.query_shot(syn.query_names[0]) is not None
    assert len(list((out / "train").rglob("*.jpg"))) == 3


def test_head_anchored_sources_keep_the_width_motion(sets, tmp_path, capsys):
    """``--anchor head`` cuts the hard set's sequences as preprocess.py now cuts a real video:
    the crops follow the head, so the mouth's width varies in them as on the face; the default
    (each frame cropped around its mouth, the sets of before) damps it, and keeps the manifest
    of before. The truth reads back either way."""
    hard, _ = sets
    assert "anchor" not in json.loads((hard.root / "manifest.json").read_text())["config"]
    out = tmp_path / "head"
    generate(SyntheticConfig(out=str(out), hard=True, anchor="head", **SMALL),
             log=lambda *_: None)
    head = SyntheticSet.load(out)
    assert json.loads((out / "manifest.json").read_text())["config"]["anchor"] == "head"
    kept_head, kept_mouth = width_in_crops(head), width_in_crops(hard)
    # (7 frames: the 5-frame smoothing damps the mouth crop's width less than on longer clips)
    assert kept_head["std_ratio"] > 0.95, kept_head
    assert kept_mouth["std_ratio"] < kept_head["std_ratio"] - 0.1, (kept_head, kept_mouth)
    assert kept_head["corr_crop"] > kept_mouth["corr_crop"]
    q = head.query_names[0]
    reader = mouth_reader(head.identity(q), 32, head.query_shot(q))
    for s in head.source_names:
        states = state_array(head.source_states(s))
        truth = np.stack([like_model_input(head.ground_truth(q, s, t), 32)
                          for t in range(len(states))])
        assert ratio(*motion_deviation_error(reader.read(truth), states)) < 0.02
    assert main([str(tmp_path / "f"), "--anchor", "head", "--words", "1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--anchor head needs --hard" in err[0]
