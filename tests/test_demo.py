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


def test_plans_fit_their_purpose():
    """The tiny plan stays tiny; the full one trains every model at 32 px."""
    assert demo.TINY.size <= 16 and max(demo.TINY.glow["iter"], demo.TINY.ad_flow["iter"],
                                        demo.TINY.mi_flow["iter"]) <= 5
    assert demo.FULL.size == 32
    assert demo.FULL.size % 2 ** demo.FULL.glow["n_block"] == 0
    assert demo.FULL.size % 2 ** demo.FULL.mi_flow["n_block"] == 0
    assert demo.FULL.ad_flow["n_frames"] <= demo.FULL.frames
