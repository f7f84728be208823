"""bench/reader_check.py: the mouth reader reads the truth of both kinds of synthetic set, and
the mouth blend on the frontal set, but not the blend's pasted lips on the hard set."""

from __future__ import annotations

import json

import pytest

from bench import reader_check
from lrw.synthetic import SyntheticConfig, generate

SMALL = dict(words=2, speakers=2, clips=1, frames=9, size=32, queries=1, sources=2, seed=1)


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("reader_check")
    for name, hard in (("hard", True), ("frontal", False)):
        generate(SyntheticConfig(out=str(root / name), hard=hard, **SMALL), log=lambda *_: None)
    return root


def test_truth_reads_and_the_hard_blend_does_not(sets, capsys):
    out = sets / "check.json"
    assert reader_check.main([str(sets / "frontal"), str(sets / "hard"), "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    front, hard = res[str(sets / "frontal")], res[str(sets / "hard")]
    for r in (front, hard):
        assert r["truth"]["frames"] == 18 and r["truth"]["closed_read_open"] == 0.0
        assert r["truth"]["open_corr"] > 0.99 and r["truth"]["motion_dev"] < 0.02
        assert r["truth"]["reader_fit"] < 1.0
    assert front["blend"]["open_corr"] > 0.5 and front["blend"]["closed_read_open"] == 0.0
    assert hard["blend"]["reader_fit"] > 4 * front["blend"]["reader_fit"]
    assert hard["blend"]["closed_read_open"] > 0.3
    # the read opening does not follow the truth's (NaN: it reads one opening in every frame)
    assert not hard["blend"]["open_corr"] > front["blend"]["open_corr"] - 0.3
    assert hard["truth"]["motion_open"] < 0.02 and hard["blend"]["motion_open"] > 0.9
    # the sources' crops are scaled to the mouth's width: its motion comes through damped
    assert "width" not in front and hard["width"]["sequences"] == 2
    assert hard["width"]["std_ratio"] < 0.8, hard["width"]
    assert hard["width"]["corr_crop"] < hard["width"]["corr_face"], hard["width"]
    printed = capsys.readouterr().out
    assert "closed frames read fully open" in printed and "reader fit" in printed
    assert "aligned crops keep" in printed


def test_a_missing_set_is_one_line_and_exit_1(tmp_path, capsys):
    assert reader_check.main([str(tmp_path / "nothing")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "nothing" in err[0]
