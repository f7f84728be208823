"""test.py --model pose-flow --transfer_grid (talking.pose_grid): blank + targets on top, one
row per source, cells of at least 128 px."""

from __future__ import annotations

import numpy as np
from PIL import Image

from talking import cli


def test_grid_of_sources_by_targets(pose_set, pose_trained, tmp_path):
    rc = cli.main(["--model", "pose-flow", "--transfer_grid",
                   str(pose_set / "eval" / "sources"), str(pose_set / "eval" / "targets"),
                   "--checkpoint", str(pose_trained["ckpt"]), "--result_dir", str(tmp_path)])
    grid = np.asarray(Image.open(tmp_path / "transfer_grid" / "grid.png"))
    # 3 x 3 cells of a 16 px model, shown at 128 px (+ 2 px gutters)
    assert rc == 0 and grid.shape[:2] == (2 + 3 * 130, 2 + 3 * 130)


def test_grid_with_mirror_averages_every_transfer(pose_set, pose_trained, tmp_path):
    args = ["--model", "pose-flow", "--transfer_grid", str(pose_set / "eval" / "sources"),
            str(pose_set / "eval" / "targets"), "--checkpoint", str(pose_trained["ckpt"]),
            "--result_dir", str(tmp_path)]
    assert cli.main(args) == 0 and cli.main([*args, "--mirror", "--name", "m"]) == 0
    plain = np.asarray(Image.open(tmp_path / "transfer_grid" / "grid.png"))
    mirrored = np.asarray(Image.open(tmp_path / "transfer_grid" / "m.png"))
    assert plain.shape == mirrored.shape
    # the top row (blank + targets) and the sources are the same; the transfers are not
    top = 130
    assert np.array_equal(plain[:top], mirrored[:top])
    assert np.array_equal(plain[:, :top], mirrored[:, :top])
    assert not np.array_equal(plain[top:, top:], mirrored[top:, top:])
