"""bench/pose_flow_seeds.py: pose-flow over seeds and thread counts, at --tiny sizes."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))


@pytest.mark.slow
def test_tiny_run_writes_one_scored_run_and_rebuilds_its_table(tmp_path):
    import pose_flow_seeds

    out = tmp_path / "out"
    assert pose_flow_seeds.main(["--tiny", "--out", str(out), "--seeds", "0",
                                 "--threads", "1"]) == 0
    md, js = out / "pose_flow_seeds.md", out / "pose_flow_seeds.json"
    data = json.loads(js.read_text())
    assert data["failures"] == [] and len(data["runs"]) == 1
    run = data["runs"][0]
    assert (run["seed"], run["threads"], run["iter"]) == (0, 1, 2)
    # the result is the schedule's last checkpoint, never one picked on the test pairs
    assert list(run["curve"]) == ["2"] and run["final"] == run["curve"]["2"]
    for system in ("model", "own_warp", "warp", "copy"):
        for key in ("psnr", "ssim", "l1"):
            assert math.isfinite(run["final"][system][key]), (system, key)
    assert run["over_own_warp_db"] == pytest.approx(
        run["final"]["model"]["psnr"] - run["final"]["own_warp"]["psnr"])
    assert run["met"] == (run["over_own_warp_db"] >= 1.0)
    # copying the source is far from the answer; the warp is nearer
    assert run["final"]["own_warp"]["psnr"] > run["final"]["copy"]["psnr"]
    # driving with --retarget, scored on the drive set against the driven answers
    for system in ("model", "own_warp", "copy"):
        assert math.isfinite(run["driven"][system]["psnr"]), system
    assert run["driven"]["own_warp"]["psnr"] > run["driven"]["copy"]["psnr"]
    # every checkpoint is driven too (the driving curve); the table's figure is the last one's
    assert list(run["driven_curve"]) == list(run["curve"])
    assert run["driven"] == run["driven_curve"]["2"]
    assert run["driven_over_own_warp_db"] == pytest.approx(
        run["driven"]["model"]["psnr"] - run["driven"]["own_warp"]["psnr"])
    text = md.read_text()
    assert "its own warp (the flow's start)" in text and "copy source (baseline)" in text
    assert "--tiny" in text and "CPU:" in text and f"{run['over_own_warp_db']:+.2f}" in text
    assert "its own warp, driven (--retarget)" in text
    assert (out / "pose_flow_seeds.png").stat().st_size > 1000
    # a second invocation reuses the checkpoint and the evaluation; --table_only rebuilds
    md.unlink()
    assert pose_flow_seeds.main(["--tiny", "--out", str(out), "--table_only"]) == 0
    assert f"{run['over_own_warp_db']:+.2f}" in md.read_text()
    # --mirror: the same checkpoint (not trained again) scored mirror-averaged, beside the
    # plain figures, which stay as they were
    plain_md = md.read_text()
    assert pose_flow_seeds.main(["--tiny", "--out", str(out), "--seeds", "0", "--threads", "1",
                                 "--mirror"]) == 0
    assert md.read_text() == plain_md and json.loads(js.read_text())["runs"] == [run]
    mrun = json.loads((out / "runs" / f"{run['name']}_mirror.json").read_text())
    assert mrun["mirror"] is True and mrun["train"]["reused"] is True
    assert mrun["final"]["own_warp"] == run["final"]["own_warp"]
    assert mrun["driven"]["own_warp"] == run["driven"]["own_warp"]
    assert mrun["final"]["model"]["psnr"] != run["final"]["model"]["psnr"]
    mtext = (out / "pose_flow_seeds_mirror.md").read_text()
    assert "with `--mirror`" in mtext and f"{mrun['over_own_warp_db']:+.2f}" in mtext
    assert "pose-flow, driven (--retarget --mirror)" in mtext
    assert (out / "pose_flow_seeds_mirror.png").stat().st_size > 1000


def test_model_set_changes_a_copy_of_the_plan_and_names_the_runs():
    import argparse

    import pose_flow_seeds

    from pose_flow.demo import LONG

    args = argparse.Namespace(tiny=False, plan="long",
                              model_set=["n_flow=4", "reference=warp_motion", "sigma=0.05"])
    plan = pose_flow_seeds.plan_of(args)
    assert (plan.model["n_flow"], plan.model["reference"], plan.model["sigma"]) == \
        (4, "warp_motion", 0.05)
    assert plan.model["hidden"] == LONG.model["hidden"] and plan.train == LONG.train
    assert LONG.model["n_flow"] == 2 and "sigma" not in LONG.model  # the plan itself unchanged
    assert pose_flow_seeds.run_tag(args) == "_n_flow4_referencewarp_motion_sigma0.05"
    args.model_set = None
    assert pose_flow_seeds.plan_of(args) == LONG and pose_flow_seeds.run_tag(args) == ""
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        pose_flow_seeds.overrides(argparse.Namespace(model_set=["n_flow"]))
