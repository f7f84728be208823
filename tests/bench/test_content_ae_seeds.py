"""bench/content_ae_seeds.py: the content-AE over seeds and thread counts, at --tiny sizes."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

POWERS = [1.0, 2.0]  # two of the default four: each power is an evaluate.py process


@pytest.mark.slow
def test_tiny_run_writes_one_scored_run(tmp_path):
    import content_ae_seeds

    out = tmp_path / "out"
    assert content_ae_seeds.main(["--tiny", "--out", str(out), "--attributes", "glasses",
                                  "--seeds", "0", "--threads", "1", "--powers",
                                  *(f"{p:g}" for p in POWERS)]) == 0
    md, js = out / "content_ae_seeds.md", out / "content_ae_seeds.json"
    assert md.is_file() and js.is_file()
    data = json.loads(js.read_text())
    assert data["failures"] == [] and data["tiny"] is True
    assert len(data["runs"]) == 1
    run = data["runs"][0]
    assert (run["attribute"], run["seed"], run["threads"]) == ("glasses", 0, 1)
    assert run["P"] in POWERS
    assert set(run["train_split"]) == {f"{p:g}" for p in POWERS}
    # the chosen P is the best on the training split
    assert run["train_split"][f"{run['P']:g}"]["transfer"] == max(
        v["transfer"] for v in run["train_split"].values())
    for which in ("chosen", "default", "copy"):
        for key in ("transfer", "region", "outside_cost", "removal"):
            assert math.isfinite(run[which][key]), (which, key)
    for key in ("transfer", "region", "outside_cost"):
        assert math.isfinite(run["paste"][key]), key
    assert run["copy"]["outside_cost"] == 0.0
    assert isinstance(run["criterion"], bool)
    summ = data["summaries"]["glasses"]
    assert summ["runs"] == 1 and sum(summ["P_chosen"].values()) == 1
    assert math.isfinite(summ["chosen"]["transfer"]["mean"])
    text = md.read_text()
    assert "### glasses" in text and "copy target (baseline)" in text
    assert "--tiny" in text and "CPU:" in text
    # --donor_mask: the same checkpoint, evaluations of its own (never the plain ones reused)
    ck = out / "checkpoint/cae_glasses_seed0_t1/last.pt"
    mtime = ck.stat().st_mtime
    assert content_ae_seeds.main(["--tiny", "--out", str(out), "--attributes", "glasses",
                                  "--seeds", "0", "--threads", "1", "--powers",
                                  *(f"{p:g}" for p in POWERS), "--donor_mask"]) == 0
    assert ck.stat().st_mtime == mtime
    gated = {p.name for p in (out / "result/eval").iterdir() if p.name.endswith("_dm")}
    chosen = json.loads(js.read_text())["runs"][0]["P"]
    assert gated == {f"cae_glasses_seed0_t1_{split}_p{p:g}_dm"  # training split per P, held out
                     for split, ps in (("train", POWERS), ("test", [chosen, 1.5])) for p in ps}
    for name in gated:
        info = json.loads((out / "result/eval" / name / "metrics.json").read_text())["_info"]
        assert info["donor_mask"] is True, name
    assert "gated by the donor's own mask" in md.read_text()
    assert json.loads(js.read_text())["plan"]["donor_mask"] is True


@pytest.mark.slow
def test_iter_above_the_demo_scores_every_saved_checkpoint_as_a_budget_curve(tmp_path):
    import content_ae_seeds

    out = tmp_path / "out"
    assert content_ae_seeds.main(["--tiny", "--out", str(out), "--attributes", "beard",
                                  "--seeds", "0", "--threads", "1", "--powers", "1.5",
                                  "--iter", "8"]) == 0
    data = json.loads((out / "content_ae_seeds.json").read_text())
    assert data["failures"] == []
    run = data["runs"][0]
    # a run of its own name, a checkpoint every demo budget (TINY: 4 iterations), each scored
    assert run["name"] == "cae_beard_seed0_t1_i8" and run["iter"] == 8
    assert sorted(run["curve"], key=int) == ["4", "8"]
    for step, m in run["curve"].items():
        for key in ("transfer", "region", "outside_cost"):
            assert math.isfinite(m[key]), (step, key)
        assert m["criterion"] == bool(m["transfer"] > run["copy"]["transfer"]
                                      and m["transfer"] > run["paste"]["transfer"]
                                      and m["outside_cost"] < run["paste"]["outside_cost"])
    # the curve's last point is the run's last checkpoint at P = 1.5: the default row
    assert run["curve"]["8"]["transfer"] == pytest.approx(run["default"]["transfer"])
    text = (out / "content_ae_seeds.md").read_text()
    assert "Against training budget" in text and "| beard | 0 | 1 | 4 |" in text
    assert (out / "content_ae_curve.png").stat().st_size > 1000


def test_choose_power_by_transfer_or_by_both_parts_of_the_criterion():
    from content_ae_seeds import choose_power

    split = {"1": {"transfer": 26.9, "outside_cost": 1.8, "paste_outside_cost": 0.8},
             "3": {"transfer": 26.8, "outside_cost": 0.7, "paste_outside_cost": 0.8},
             "6": {"transfer": 25.9, "outside_cost": 0.2, "paste_outside_cost": 0.8}}
    assert choose_power(split, [1.0, 3.0, 6.0]) == 1.0
    # only 3 and 6 keep the outside below pasting's; of those, 3 transfers better
    assert choose_power(split, [1.0, 3.0, 6.0], "criterion") == 3.0
    # none below pasting's: the lowest outside cost
    worse = {k: {**v, "paste_outside_cost": 0.1} for k, v in split.items()}
    assert choose_power(worse, [1.0, 3.0, 6.0], "criterion") == 6.0
    with pytest.raises(ValueError, match="unknown rule"):
        choose_power(split, [1.0], "psnr")


def test_selection_spread_over_donors_keeps_the_first_donors_and_targets(tmp_path):
    from content_ae_seeds import selection_set

    data = tmp_path / "beard_seed0"
    data.mkdir()
    sets = {"trainA": [f"a{i}" for i in range(20)], "trainB": [f"b{i}" for i in range(300)],
            "testA": ["x"], "testB": ["y"]}
    (data / "manifest.json").write_text(json.dumps({"sets": sets, "kind": "beard"}))
    # default: the first pairs in donor order need one donor (300 targets >= 200 pairs)
    one = json.loads((selection_set(data, 200) / "manifest.json").read_text())
    assert one["sets"]["trainA"] == ["a0"] and len(one["sets"]["trainB"]) == 300
    # spread over 8 donors: 8 x ceil(200 / 8) = 8 x 25, the rest of the manifest kept
    sel = selection_set(data, 200, 8)
    assert sel.name == "beard_seed0_select200_d8"
    spread = json.loads((sel / "manifest.json").read_text())
    assert spread["sets"]["trainA"] == sets["trainA"][:8]
    assert spread["sets"]["trainB"] == sets["trainB"][:25]
    assert spread["sets"]["testA"] == ["x"] and spread["kind"] == "beard"
    assert spread["selection_of"] == {"root": str(data), "max_pairs": 200, "donors": 8}
