"""bench/pose_error_regions.py: the regions partition the image, and a flow that adds nothing
to its warp (an untrained warp-residual model) has exactly the warp's error in every region."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from conftest import POSE_TINY

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))


def test_regions_partition_the_image_and_mouth_inside_the_inner_lips(pose_set):
    import pose_error_regions as per

    from pose_flow.data import read_landmarks

    lm, _ = read_landmarks(next((pose_set / "eval" / "sources").glob("*.npy")))
    masks = per.region_masks(lm, 64)
    stack = np.stack([masks[r] for r in per.REGIONS]).astype(int)
    assert (stack.sum(0) == 1).all()  # every pixel in exactly one region
    assert masks["face"].sum() > masks["lips"].sum() > 0
    # the mouth's centre (mean of the inner-lip points) is in the mouth, never in the face
    cx, cy = (lm[60:68].mean(0) * 64).astype(int)
    assert masks["mouth inside"][cy, cx] or masks["lips"][cy, cx]


def test_untrained_warp_residual_flow_has_the_warps_error(pose_set):
    import pose_error_regions as per

    from pose_flow.recipe import RECIPE

    torch.manual_seed(0)
    model = RECIPE.build(RECIPE.Config(**POSE_TINY, reference="warp", affine=False)).eval()
    res = per.measure(pose_set, {"untrained": model}, POSE_TINY["img_size"])
    assert res["pairs"] == 4
    for r in per.REGIONS:
        assert res["sq"]["untrained"][r] == res["sq"]["own warp"][r], r
    assert sum(res["sq"]["own warp"].values()) > 0
    text = per.table(res)
    assert "| whole image |" in text and "+0.0%" in text
