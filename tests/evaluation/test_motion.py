"""The mouth-motion metric: a static mouth fails it, the truth passes it, a wrong face with the
right motion is caught by the identity columns, and the mouth reader reads geometry, not colour."""

from __future__ import annotations

import numpy as np
import pytest

import evaluation.synthetic as es
from evaluation.models import System, like_model_input
from evaluation.motion import (
    OPEN_GRID,
    WIDTH_GRID,
    MouthReader,
    motion_deviation_error,
    motion_error,
    mouth_reader,
    pixel_motion_error,
    ratio,
    state_array,
)
from evaluation.synthetic import evaluate_synthetic
from faces.blend import mouth_box
from lrw.synthetic import SyntheticConfig, SyntheticSet, generate
from synthface.face import MouthState, render, sample_identity


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("motion") / "syn"
    generate(SyntheticConfig(out=str(out), words=2, speakers=2, clips=1, frames=15, size=32,
                             queries=2, sources=2, seed=3), log=lambda *_: None)
    return SyntheticSet.load(out)


@pytest.mark.parametrize("size", [32, 64])
def test_reader_recovers_rendered_states(size):
    ident = sample_identity(np.random.default_rng(11))
    states = [MouthState(0.0, 0.0), MouthState(0.3, 0.2), MouthState(0.8, -0.6),
              MouthState(0.55, 0.7), MouthState(0.12, -0.3)]
    imgs = np.stack([like_model_input(render(ident, s, 256), size) for s in states])
    est, fit = mouth_reader(ident, size).read(imgs, fit=True)
    assert np.abs(est - state_array(states)).max() < 0.06
    assert np.abs(est[0]).max() < 1e-9  # the neutral mouth reads back exactly
    # the fit error of renders of the reader's own identity: the 8-bit rounding, under a grey level
    assert fit.shape == (len(states),) and fit.max() < 1.0, fit
    np.testing.assert_array_equal(mouth_reader(ident, size).read(imgs), est)


def test_reader_fit_is_the_best_grid_states_error():
    """``fit`` is the root mean square, over the mouth box's values, of the error of the grid
    state the reading starts from; noise added to the box raises it by about its own RMS."""
    ident = sample_identity(np.random.default_rng(11))
    reader = mouth_reader(ident, 32)
    img = like_model_input(render(ident, MouthState(0.4, 0.3), 256), 32)
    noisy = img.astype(np.float64)
    r0, r1, c0, c1 = mouth_box(32)
    noisy[r0:r1, c0:c1] += np.random.default_rng(0).normal(0, 8, noisy[r0:r1, c0:c1].shape)
    noisy = np.clip(np.round(noisy), 0, 255).astype(np.uint8)
    _, fit = reader.read(np.stack([img, noisy]), fit=True)
    crop = noisy[r0:r1, c0:c1].reshape(-1, 3).astype(np.float64)
    assert fit[1] == pytest.approx(np.sqrt(reader._errors(crop).min() / crop.size))
    assert fit[0] < 1.0 and 6.0 < fit[1] < 9.0, fit


def test_reader_reads_geometry_in_another_lip_colour():
    """The same mouth states drawn on another identity (other lips, skin) read back the same:
    the reader fits each layer's colour per frame."""
    rng = np.random.default_rng(5)
    ident, other = sample_identity(rng), sample_identity(rng)
    states = [MouthState(0.0, 0.0), MouthState(0.45, 0.1), MouthState(0.9, -0.4),
              MouthState(0.25, 0.6)]
    imgs = np.stack([like_model_input(render(other, s, 256), 32) for s in states])
    est = mouth_reader(ident, 32).read(imgs)
    assert np.abs(est[:, 0] - state_array(states)[:, 0]).max() < 0.15


def test_truth_scores_zero_and_static_scores_one(synth):
    for q in synth.query_names:
        for s in synth.source_names:
            n = synth.n_source_frames(s)
            truth = np.stack([like_model_input(synth.ground_truth(q, s, t), 32)
                              for t in range(n)])
            states = state_array(synth.source_states(s))
            reader = mouth_reader(synth.identity(q), 32)
            assert ratio(*motion_error(reader.read(truth), states, np.zeros(2))) < 0.02
            assert ratio(*pixel_motion_error(truth, truth)) == 0.0
            static = np.repeat(like_model_input(render(synth.identity(q), MouthState(), 256),
                                                32)[None], n, 0)
            assert ratio(*motion_error(reader.read(static), states, np.zeros(2))) == \
                pytest.approx(1.0)
            assert ratio(*pixel_motion_error(static, truth)) == pytest.approx(1.0)


def test_every_static_sequence_fails_the_motion_error(synth):
    """Mouths held still at rest, at the truth's mean state and fully open all score at least
    0.95 on the motion error (exactly 1 up to the reader's rounding); the state error, by
    contrast, rewards the one held at the mean; the truth scores about 0."""
    for q in synth.query_names:
        ident, reader = synth.identity(q), mouth_reader(synth.identity(q), 32)
        for s in synth.source_names:
            n = synth.n_source_frames(s)
            states = state_array(synth.source_states(s))
            truth = np.stack([like_model_input(synth.ground_truth(q, s, t), 32)
                              for t in range(n)])
            assert ratio(*motion_deviation_error(reader.read(truth), states)) < 0.02
            mean = states.mean(0)
            held = {"rest": MouthState(), "mean": MouthState(*map(float, mean)),
                    "open": MouthState(1.0, 0.0), "open spread": MouthState(1.0, 1.0)}
            state_errs = {}
            for name, m in held.items():
                frame = like_model_input(render(ident, m, 256), 32)
                est = reader.read(np.repeat(frame[None], n, 0))
                assert ratio(*motion_deviation_error(est, states)) >= 0.95, (q, s, name)
                state_errs[name] = ratio(*motion_error(est, states, np.zeros(2)))
            assert state_errs["mean"] < 0.9, state_errs  # the flaw the motion error fixes


def test_motion_error_is_exactly_one_for_any_constant_states():
    truth = np.array([[0.0, 0.0], [0.4, 0.2], [0.9, -0.3], [0.2, 0.5], [0.0, 0.1]])
    for held in ([0.0, 0.0], [0.5, 0.1], [1.0, 1.0]):
        est = np.repeat(np.array([held]), len(truth), 0)
        assert ratio(*motion_deviation_error(est, truth)) == pytest.approx(1.0, abs=1e-12)
    assert ratio(*motion_deviation_error(truth, truth)) == 0.0
    # an offset the motion error ignores and the state error sees
    shifted = truth + np.array([0.2, 0.0])
    assert ratio(*motion_deviation_error(shifted, truth)) == pytest.approx(0.0, abs=1e-12)
    assert ratio(*motion_error(shifted, truth, np.zeros(2))) > 0.0
    # half the motion: a quarter of the error
    half = truth.mean(0) + 0.5 * (truth - truth.mean(0))
    assert ratio(*motion_deviation_error(half, truth)) == pytest.approx(0.25)


def test_table_orders_copy_blend_and_wrong_face(synth):
    """Pooled over every pair: copying the query has no motion (1), the mouth blend carries some
    (between 0 and 1), and the source frames themselves (the right motion on the wrong face)
    are far below copying the query in the identity columns, whatever their motion reads."""
    wrong_face = System("source frames", lambda q, mix, src: src)
    rows, details = evaluate_synthetic(synth.root, [wrong_face], 32, progress=False)
    copy, blend, wrong = (rows["baseline: copy query"], rows["baseline: mouth blend"],
                          rows["source frames"])
    assert copy["motion_dev"] == 1.0  # exactly: one read-back state in every frame
    assert copy["motion_open"] == 1.0 and 0.0 < blend["motion_open"] < 1.0
    assert copy["motion"] == pytest.approx(1.0)
    assert copy["motion_px"] == pytest.approx(1.0)
    assert copy["dpsnr"] == 0.0
    assert 0.0 < blend["motion"] < 1.0 and 0.0 < blend["motion_px"] < 1.0
    assert 0.0 < blend["motion_dev"] < 1.0
    assert wrong["dpsnr"] < -8.0 and wrong["ssim"] < copy["ssim"] - 0.2
    assert len(details) == 3 * len(synth.query_names) * len(synth.source_names)
    assert all("motion_dev" in d and "motion" in d and "dpsnr" in d for d in details)


def test_open_err_scores_the_opening_alone(synth):
    """A mouth that opens exactly as the truth's but holds its width scores about 0 on the open
    err and well above it on the motion err (which counts the width); a static one 1 on both."""
    q, s = synth.query_names[0], synth.source_names[0]
    ident, reader = synth.identity(q), mouth_reader(synth.identity(q), 32)
    states = state_array(synth.source_states(s))
    assert states[:, 1].std() > 0.05  # the truth's width moves
    truth = np.stack([like_model_input(synth.ground_truth(q, s, t), 32)
                      for t in range(len(states))])
    held_width = np.stack([like_model_input(render(ident, MouthState(float(o), 0.0), 256), 32)
                           for o in states[:, 0]])
    row = es._summary(es._frame_values(held_width, truth, states, reader))
    assert row["motion_open"] < 0.02 and row["motion_dev"] > 0.2, row
    static = np.repeat(held_width[:1], len(states), 0)
    row = es._summary(es._frame_values(static, truth, states, reader))
    assert row["motion_open"] == pytest.approx(1.0) and row["motion_dev"] == pytest.approx(1.0)


def test_generator_output_runs_through_the_scorer(synth):
    """A system that returns the query unchanged scores exactly as the copy baseline."""
    same = System("query again", lambda q, mix, src: q.expand_as(mix).clone())
    rows, _ = evaluate_synthetic(synth.root, [same], 32, progress=False, pairs=1)
    for k in ("motion_dev", "motion", "motion_px", "psnr", "ssim"):
        assert rows["query again"][k] == pytest.approx(rows["baseline: copy query"][k])


def test_reader_errors_equal_the_direct_ridge_fit():
    """The reader's matrix-product form gives every grid state the same error as forming the
    residual images and fitting each state's colours directly, and reads the same states."""
    rng = np.random.default_rng(0)
    n, p, k = len(OPEN_GRID) * len(WIDTH_GRID), 88, 7
    base = rng.uniform(0, 255, (n, p, 3)).astype(np.float32)  # float32, as the maps are
    weights = rng.uniform(0, 1, (n, p, k)).astype(np.float32)
    colours = rng.uniform(0, 255, (k, 3))
    reader = MouthReader(32, base, weights, colours)
    crop = rng.uniform(0, 255, (p, 3))
    w, b = weights.astype(np.float64), base.astype(np.float64)
    y = crop[None] - b
    gram = np.einsum("npk,npl->nkl", w, w) + reader.ridge * np.eye(k)
    col = np.linalg.solve(gram, np.einsum("npk,npc->nkc", w, y) + reader.ridge * colours)
    res = y - np.einsum("npk,nkc->npc", w, col)
    direct = (res**2).sum((1, 2)) + reader.ridge * ((col - colours) ** 2).sum((1, 2))
    np.testing.assert_allclose(reader._errors(crop), direct, rtol=1e-9, atol=1e-6)
