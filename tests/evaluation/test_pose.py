"""evaluate.py --model pose-flow (evaluation.pose): the model and both baselines scored against
the exact answers of a pose set."""

from __future__ import annotations

import pytest

import evaluate


@pytest.mark.slow
def test_evaluate_scores_the_model_and_both_baselines(pose_set, pose_trained, tmp_path, capsys):
    rc = evaluate.main(["--model", "pose-flow", str(pose_set), "--checkpoint",
                        str(pose_trained["ckpt"]), "--result_dir", str(tmp_path), "--name", "e",
                        "--pairs", "2"])
    assert rc == 0
    rows = (tmp_path / "eval" / "e" / "metrics.csv").read_text().splitlines()
    want = ["pose-flow", "copy source", "warp source"]
    if pose_trained["reference"] == "warp":  # the residual flow's own starting point beside it
        want.append("warp source (the flow's own warp)")
    assert [r.split(",")[0] for r in rows[1:]] == want
    table = (tmp_path / "eval" / "e" / "table.md").read_text()
    assert "landmark err" in table and "identity dist" in table
    rc = evaluate.main(["--model", "pose-flow", str(tmp_path), "--checkpoint", "x"])
    assert rc == 1 and "not a pose set" in capsys.readouterr().err
