"""The mouth-motion metric: a static mouth fails it, the truth passes it, a wrong face with the
right motion is caught by the identity columns, and the mouth reader reads geometry, not colour."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation.models import System, like_model_input
from evaluation.motion import (
    motion_error,
    mouth_reader,
    pixel_motion_error,
    ratio,
    state_array,
)
from evaluation.synthetic import evaluate_synthetic
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
    est = mouth_reader(ident, size).read(imgs)
    assert np.abs(est - state_array(states)).max() < 0.06
    assert np.abs(est[0]).max() < 1e-9  # the neutral mouth reads back exactly


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


def test_table_orders_copy_blend_and_wrong_face(synth):
    """Pooled over every pair: copying the query has no motion (1), the mouth blend carries some
    (between 0 and 1), and the source frames themselves (the right motion on the wrong face)
    are far below copying the query in the identity columns, whatever their motion reads."""
    wrong_face = System("source frames", lambda q, mix, src: src)
    rows, details = evaluate_synthetic(synth.root, [wrong_face], 32, progress=False)
    copy, blend, wrong = (rows["baseline: copy query"], rows["baseline: mouth blend"],
                          rows["source frames"])
    assert copy["motion"] == pytest.approx(1.0)
    assert copy["motion_px"] == pytest.approx(1.0)
    assert copy["dpsnr"] == 0.0
    assert 0.0 < blend["motion"] < 1.0 and 0.0 < blend["motion_px"] < 1.0
    assert wrong["dpsnr"] < -8.0 and wrong["ssim"] < copy["ssim"] - 0.2
    assert len(details) == 3 * len(synth.query_names) * len(synth.source_names)
    assert all("motion" in d and "dpsnr" in d for d in details)


def test_generator_output_runs_through_the_scorer(synth):
    """A system that returns the query unchanged scores exactly as the copy baseline."""
    same = System("query again", lambda q, mix, src: q.expand_as(mix).clone())
    rows, _ = evaluate_synthetic(synth.root, [same], 32, progress=False, pairs=1)
    for k in ("motion", "motion_px", "psnr", "ssim"):
        assert rows["query again"][k] == pytest.approx(rows["baseline: copy query"][k])
