"""lrw.imageio does what torchvision did for the project, pixel for pixel, without importing it."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lrw.imageio import make_grid, save_image, thesis_transform

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("wh", [(64, 64), (100, 80), (80, 100), (37, 129), (333, 250), (16, 16),
                                (65, 64)])
@pytest.mark.parametrize("size", [16, 64])
def test_thesis_transform_matches_torchvision(wh, size):
    TF = pytest.importorskip("torchvision.transforms.functional")
    rng = np.random.default_rng(sum(wh) + size)
    im = Image.fromarray(rng.integers(0, 256, (wh[1], wh[0], 3), dtype=np.uint8))
    ref = TF.to_tensor(TF.center_crop(TF.resize(im, size, antialias=True,
                                                interpolation=TF.InterpolationMode.BILINEAR),
                                      [size, size]))
    got = thesis_transform(im, size)
    assert got.dtype == torch.float32 and got.shape == (3, size, size)
    assert torch.equal(got, ref)


@pytest.mark.parametrize("n,nrow,c", [(1, 8, 3), (5, 3, 3), (9, 4, 1), (8, 8, 3), (3, 8, 3)])
def test_grid_and_png_match_torchvision(tmp_path, n, nrow, c):
    tvu = pytest.importorskip("torchvision.utils")
    x = torch.rand(n, c, 7, 5)
    assert torch.equal(make_grid(x, nrow=nrow), tvu.make_grid(x, nrow=nrow))
    save_image(x, tmp_path / "ours.png", nrow=nrow)
    tvu.save_image(x, tmp_path / "theirs.png", nrow=nrow)
    ours = np.asarray(Image.open(tmp_path / "ours.png"))
    assert ours.dtype == np.uint8
    assert np.array_equal(ours, np.asarray(Image.open(tmp_path / "theirs.png")))


def test_training_and_content_ae_do_not_import_torchvision():
    code = ("import sys; import training.loop, talking.transfer, evaluation.attribute, "
            "lrw.datasets; bad = [m for m in ('torchvision', 'torch._dynamo') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
