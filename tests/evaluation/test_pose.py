"""evaluate.py --model pose-flow (evaluation.pose): the model and both baselines scored against
the exact answers of a pose set."""

from __future__ import annotations

import numpy as np
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
    # then the driving rows: every held-out source driven with --retarget
    want += ["driven: pose-flow (--retarget)", "driven: copy the query"]
    if pose_trained["reference"] == "warp":
        want.append("driven: its own warp (--retarget)")
    assert [r.split(",")[0] for r in rows[1:]] == want
    table = (tmp_path / "eval" / "e" / "table.md").read_text()
    assert "landmark err" in table and "identity dist" in table
    rc = evaluate.main(["--model", "pose-flow", str(tmp_path), "--checkpoint", "x"])
    assert rc == 1 and "not a pose set" in capsys.readouterr().err


@pytest.mark.slow
def test_evaluate_mirror_names_the_model_rows_and_keeps_the_baselines(pose_set, pose_trained,
                                                                      tmp_path):
    import csv

    def rows(name, *extra):
        assert evaluate.main(["--model", "pose-flow", str(pose_set), "--checkpoint",
                              str(pose_trained["ckpt"]), "--result_dir", str(tmp_path),
                              "--name", name, "--pairs", "2", "--no_dlib", *extra]) == 0
        with open(tmp_path / "eval" / name / "metrics.csv", newline="") as fh:
            return {r["system"]: float(r["psnr"]) for r in csv.DictReader(fh)}

    plain, mirrored = rows("plain"), rows("mirror", "--mirror")
    assert "pose-flow (--mirror)" in mirrored and "pose-flow" not in mirrored
    assert "driven: pose-flow (--retarget --mirror)" in mirrored
    # the baselines are not averaged: the same rows, the same scores
    for name in ("copy source", "warp source", "driven: copy the query"):
        assert mirrored[name] == plain[name]
    assert mirrored["pose-flow (--mirror)"] != plain["pose-flow"]


def test_driven_truth_starts_at_the_source_and_fits_the_retargeted_landmarks(pose_set):
    import json

    import numpy as np

    from faces.io import read_image
    from pose_flow.data import read_landmarks
    from pose_flow.driving import retarget
    from pose_flow.synthetic import driven_truth
    from synthface.pose import render_posed

    man = json.loads((pose_set / "manifest.json").read_text())
    s, drive = next(iter(man["sources"])), next(iter(man["drives"]))
    size = man["config"]["size"]
    src = read_image(pose_set / "eval" / "sources" / f"{s}.png")
    # no motion yet: the answer is the source itself
    first = render_posed(*driven_truth(man, s, drive, 0), size)[0]
    assert np.abs(first.astype(int) - src.astype(int)).mean() < 0.5
    # a moving frame: the answer's exact landmarks lie on the retargeted ones (the pose fitted)
    lm_q, _ = read_landmarks(pose_set / "eval" / "sources" / f"{s}.npy")
    folder = pose_set / "image" / "source_img" / drive
    lms = np.stack([read_landmarks(folder / f"{k:03d}.npy")[0]
                    for k in range(len(man["drives"][drive]))])
    target = retarget(lm_q, lms)[1]
    unfitted = render_posed(*driven_truth(man, s, drive, 1), size)[1]
    fitted = render_posed(*driven_truth(man, s, drive, 1, target), size)[1]
    assert np.abs(fitted - target).max() * size < 1.0
    assert np.abs(fitted - target).mean() <= np.abs(unfitted - target).mean()


def test_untrained_warp_flow_drives_exactly_like_its_own_warp(pose_set):
    import torch
    from conftest import POSE_TINY

    from evaluation.pose import DRIVEN, evaluate_driving
    from pose_flow.recipe import RECIPE

    torch.manual_seed(0)
    model = RECIPE.build(RECIPE.Config(**POSE_TINY, reference="warp", affine=False)).eval()
    details = evaluate_driving(model, pose_set, torch.device("cpu"))
    by = {}
    for d in details:
        by.setdefault(d["system"], []).append(d["psnr"])
    assert by[DRIVEN["model"]] == by[DRIVEN["own_warp"]]
    # 2 sources x 1 drive x the 3 of 4 later frames that move (the last returns to the first)
    assert len(by[DRIVEN["copy"]]) == 6
    assert np.mean(by[DRIVEN["own_warp"]]) > np.mean(by[DRIVEN["copy"]])
