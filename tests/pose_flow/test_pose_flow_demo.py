"""pose_flow.demo.run in tiny mode: every step through the real CLIs, then reuse."""

from __future__ import annotations

import pytest

from pose_flow import demo


@pytest.mark.slow
def test_tiny_pose_demo_runs_and_reuses(tmp_path):
    said: list[str] = []
    r = demo.run(tmp_path / "out", tmp_path / "result", tiny=True, say=said.append)
    assert r["grid"].is_file() and r["video"] is not None and r["video"].is_file()
    for system in ("pose-flow", "copy source", "warp source"):
        assert f"| {system} |" in r["table"]
    assert r["seconds"] > 0 and not r["reused"]
    again = demo.run(tmp_path / "out", tmp_path / "result", tiny=True, say=said.append)
    assert again["reused"] and any("reused" in s for s in said)


def test_full_plan_fits_the_flow():
    p = demo.FULL
    assert p.size % 2 ** (p.model["n_block"] + p.model["n_header"]) == 0
    assert demo.TINY.train["iter"] <= 3 and demo.TINY.size <= 16
