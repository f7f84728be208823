"""MI-flow's ``--matched_weight`` term: the pairs it trains on (lrw.matched), the term is the
test-time thesis output's error, its gradient reaches the flow, train.py runs it, and data
without mouth readings is refused in one line."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lrw.datasets import ClipDataset
from lrw.index import open_index
from lrw.matched import MatchedPairs, model_tensor
from mi_flow.recipe import RECIPE as R
from mi_flow.recipe import matched_pool
from training.config import TrainConfig
from training.loop import StepContext, step_generator
from training.recipe import DataInfo

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "ad_flow"))
from test_ad_flow import synthetic_set  # noqa: E402

SIZE = 16


@pytest.fixture(scope="module")
def syn(tmp_path_factory) -> Path:
    return synthetic_set(tmp_path_factory.mktemp("mi_matched") / "syn", size=SIZE)


def _ctx(cfg, data: DataInfo, step: int = 0) -> StepContext:
    return StepContext(step=step, rank=0, world=1, device=torch.device("cpu"), model_cfg=cfg,
                       train_cfg=TrainConfig(), generator=step_generator(0, step), data=data)


def test_pool_holds_the_pairs_as_the_matched_pairs_yield_them(syn: Path):
    queries, owner, mixes, answers = matched_pool(syn / "train", SIZE, pairs=5, seed=2)
    ds = ClipDataset(open_index(syn / "train"), SIZE)
    pairs = list(MatchedPairs(ds, syn / "train", 5, seed=2))
    assert queries.shape == (5, 3, SIZE, SIZE) and len(owner) == len(mixes) == len(answers)
    assert len(owner) == sum(len(a) for _, _, _, a in pairs)
    k = 0
    for p, (_, q, mix, ans) in enumerate(pairs):
        assert torch.equal(queries[p], model_tensor([q], SIZE)[0])
        for m, a in zip(mix, ans, strict=True):
            assert owner[k] == p
            assert torch.equal(mixes[k], model_tensor([m], SIZE)[0])
            assert torch.equal(answers[k], model_tensor([a], SIZE)[0])
            k += 1
    # a mix differs from its query in the mouth only; the answers are other frames
    diff = (mixes - queries[owner]).abs().amax(1)
    rows = diff.amax(2).amax(0)
    assert rows[: SIZE // 3].max() == 0 and rows.max() > 0
    assert (answers - mixes).abs().amax() > 0


def test_the_term_is_the_thesis_outputs_error_and_moves_the_flow(syn: Path):
    cfg = R.Config(n_flow=2, n_block=2, hidden=16, img_size=SIZE, matched_weight=1.0,
                   matched_pairs=4, matched_batch=5)
    torch.manual_seed(0)
    m = R.build(cfg)
    batch = (torch.rand(4, 3, SIZE, SIZE) - 0.5, torch.zeros(4, dtype=torch.long))
    data = DataInfo(syn / "train")
    R.initialize(m, batch, _ctx(cfg, data))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ctx = _ctx(cfg, data, step=7)
    terms = R.losses(m, batch, ctx)
    assert R.loss_weights(cfg)["matched"] == 1.0 and "matched" in terms
    # the same frames through test.py's generate (thesis mode), one query at a time
    queries, owner, mixes, answers = data.cache["matched"]
    replay = _ctx(cfg, DataInfo(syn / "train"), step=7)  # the step's draws before the term:
    replay.global_rand((4, 3, SIZE, SIZE))  # the dequantisation noise, the recon term's eps
    for z in m.z_shapes(SIZE)[:-1]:
        replay.global_rand((4, *z), normal=True)
    pick = torch.randint(len(owner), (5,), generator=replay.generator)
    with torch.no_grad():
        outs = [R.generate(m, queries[owner[i]][None], mixes[i][None], mixes[i][None],
                           argparse.Namespace(mode="thesis")) for i in pick]
    want = torch.nn.functional.mse_loss(torch.cat(outs), answers[pick])
    assert torch.allclose(terms["matched"].detach(), want, rtol=1e-4, atol=1e-9)
    grads = torch.autograd.grad(terms["matched"], m.flow_parameters(), allow_unused=True)
    assert sum(float(gi.abs().sum()) for gi in grads if gi is not None) > 0
    # off by default: the thesis's three terms, no pool built
    off = DataInfo(syn / "train")
    cfg0 = R.Config(n_flow=2, n_block=2, hidden=16, img_size=SIZE)
    assert "matched" not in R.loss_weights(cfg0)
    assert "matched" not in R.losses(m, batch, _ctx(cfg0, off)) and not off.cache


@pytest.mark.slow
def test_train_py_matched_weight(syn: Path, tmp_path: Path, capsys):
    import train as train_cli

    args = ["--model", "mi-flow", "-n", "mm", str(syn / "train"), "--img_size", str(SIZE),
            "--n_flow", "2", "--n_block", "2", "--hidden", "16", "--iter", "3", "--batch", "4",
            "--workers", "0", "--no_progress", "--save_every", "0", "--sample_every", "0",
            "--checkpoint_dir", str(tmp_path / "ck"), "--result_dir", str(tmp_path / "res"),
            "--matched_weight", "100", "--matched_pairs", "3", "--diag_pairs", "0"]
    assert train_cli.main(args) == 0
    out = capsys.readouterr().out
    assert "matched pairs: 3 of 3 drawn from 2 speakers" in out
    log = [json.loads(ln) for ln in (tmp_path / "res" / "sample_mm" / "log.jsonl")
           .read_text().splitlines()]
    assert all(np.isfinite(r["matched"]) for r in log)
    # frames without mouth readings: one line naming the flag and both ways out
    plain = tmp_path / "plain"
    shutil.copytree(syn / "train", plain)
    for f in plain.rglob("*.json"):
        f.unlink()
    rc = train_cli.main([*args[:4], str(plain), *args[5:], "--force"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1, err
    assert "--matched_weight" in err[0] and "preprocess.py --landmarks" in err[0]


def test_answers_within_the_query_clip(syn: Path):
    """``within="clip"`` takes every answer from the query's own clip; by default a speaker's
    other clips answer too."""
    ds = ClipDataset(open_index(syn / "train"), SIZE)
    share = {}
    for within in ("speaker", "clip"):
        matched = MatchedPairs(ds, syn / "train", 6, seed=1, within=within)
        hits = []
        for k, _, _, answers in matched:
            a = matched.drawn[k][0]
            own = [matched._frame(a, j) for j in range(len(matched.readings[a]))]
            hits += [any(np.array_equal(ans, f) for f in own) for ans in answers]
        share[within] = np.mean(hits)
    assert share["clip"] == 1.0 and share["speaker"] < 1.0, share
    with pytest.raises(ValueError, match="within"):
        MatchedPairs(ds, syn / "train", 2, within="word")


def test_pairs_at_the_model_size_are_resized_once_and_kept_for_the_process(syn: Path, monkeypatch):
    """``iterate(size=S)`` yields the pairs brought to S exactly as ``model_tensor`` brings
    them; a second walk over the same pairs (MI-flow's pool after AD-flow's init in one demo)
    reads nothing, and a changed frame file is read again."""
    import lrw.matched as lm

    ds = ClipDataset(open_index(syn / "train"), SIZE)
    plain = list(MatchedPairs(ds, syn / "train", 5, seed=2))
    lm._MEMO.clear()
    small = SIZE // 2
    sized = list(MatchedPairs(ds, syn / "train", 5, seed=2).iterate(size=small))
    assert [k for k, *_ in sized] == [k for k, *_ in plain]
    for (_, q, mix, ans), (_, q2, mix2, ans2) in zip(plain, sized, strict=True):
        for a, b in zip([q, *mix, *ans], [q2, *mix2, *ans2], strict=True):
            assert b.shape == (small, small, 3)
            assert torch.equal(model_tensor([a], small), model_tensor([b], small))

    def no_read(self, k):
        raise AssertionError("read a pair again")

    monkeypatch.setattr(MatchedPairs, "_pair", no_read)
    again = list(MatchedPairs(ds, syn / "train", 5, seed=2).iterate(size=small))
    assert len(again) == len(sized)
    for x, y in zip(again, sized, strict=True):
        assert x[0] == y[0] and all(np.array_equal(a, b) for a, b in
                                     zip([x[1], *x[2], *x[3]], [y[1], *y[2], *y[3]], strict=True))
    frame = ds.clips[MatchedPairs(ds, syn / "train", 5, seed=2).drawn[0][1]].frames[0]  # a source's
    st = frame.stat()
    os.utime(frame, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(AssertionError, match="again"):
        list(MatchedPairs(ds, syn / "train", 5, seed=2).iterate(size=small))
