"""demo.py end to end in --tiny mode (every step, the real CLIs), then a second run that
reuses everything."""

from __future__ import annotations

import pytest

import demo


@pytest.mark.slow
def test_tiny_demo_runs_end_to_end_and_reuses_its_work(tmp_path, capsys):
    out = tmp_path / "demo"
    assert demo.main(["--tiny", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    result = out / "result"
    assert (out / "synthetic" / "manifest.json").is_file()
    for run in ("demo_glow", "demo_ad", "demo_mi"):
        assert (out / "checkpoint" / run / "last.pt").is_file(), run
    for model in ("ad-flow", "mi-flow"):
        folder = result / model / "target_img" / "src00_ABOUT" / "query00"
        assert (folder / "video.mp4").is_file() and (folder / "grid.png").is_file(), model
        assert (result / "eval" / f"demo_{model}" / "metrics.csv").is_file()
    for name in ("table.md", "metrics.csv", "metrics.png"):
        assert (result / "eval" / "demo" / name).is_file()
    table = (result / "eval" / "demo" / "table.md").read_text()
    for system in ("ad-flow", "mi-flow (thesis)", "mi-flow (cond)", "baseline: copy query",
                   "baseline: mouth blend"):
        assert f"| {system} |" in table, system
    assert "Demo finished" in text and "video.mp4" in text and "PSNR" in text

    stamp = (out / "checkpoint" / "demo_glow" / "last.pt").stat().st_mtime_ns
    assert demo.main(["--tiny", "--out", str(out)]) == 0
    again = capsys.readouterr().out
    assert "already up to date" in again
    assert again.count("reused") >= 5  # three checkpoints, two videos (and the evaluations)
    assert (out / "checkpoint" / "demo_glow" / "last.pt").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("plan", [demo.TINY, demo.FULL], ids=["tiny", "full"])
def test_plans_pass_the_recipes_checks(plan):
    """Each plan's model flags pass the checks train.py runs (a plan that cannot train fails
    here, not minutes into `make demo`), and its clips hold the frames AD-flow reads."""
    import dataclasses

    from training import registry

    for model, flags in (("glow", plan.glow), ("mi-flow", plan.mi_flow),
                         ("ad-flow", plan.ad_flow)):
        recipe = registry.get(model)
        names = {f.name for f in dataclasses.fields(recipe.Config)}
        cfg = recipe.Config(**{k: v for k, v in flags.items() if k in names})
        if "img_size" in names and model != "ad-flow":
            cfg.img_size = plan.size
        recipe.validate(cfg)
    assert plan.ad_flow["n_frames"] <= plan.frames
