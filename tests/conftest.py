"""Shared pytest fixtures."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Real faces published with the thesis code, kept beside the checkout (never copied into it).
SHARED_FACES = ROOT.parent / "shared" / "data" / "faces"


@pytest.fixture
def shared_faces() -> Path:
    """Path of ../shared/data/faces; skips the test when it is absent."""
    if not (SHARED_FACES / "ref_img").is_dir():
        pytest.skip("../shared/data/faces is absent")
    return SHARED_FACES


# The device of the tests that take one (training runs, test.py runs, the precision checks):
# ``pytest --device cuda`` (or FLOWDIS_TEST_DEVICE=cuda); ``auto`` is CUDA where available.
# Default cpu. bench/gpu_check.sh runs the suite with --device auto.
DEVICE_ENV = "FLOWDIS_TEST_DEVICE"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--device", default=None,
                     help="device of the tests that take one: cpu (default), cuda, cuda:N, "
                          f"auto (CUDA where available); or set {DEVICE_ENV}")


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--device"):
        os.environ[DEVICE_ENV] = config.getoption("--device")


def run_device() -> torch.device:
    """The device chosen for the tests that take one (see ``--device``)."""
    name = os.environ.get(DEVICE_ENV, "cpu") or "cpu"
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise pytest.UsageError(f"--device {name}: no CUDA device here (use cpu or auto)")
    return torch.device(name)


@pytest.fixture
def device() -> torch.device:
    """:func:`run_device` as a fixture."""
    return run_device()


def noise_images(root: Path, n: int = 8, size: int = 8) -> Path:
    """``n`` seeded noise PNGs ``img_NN.png`` of ``size`` px in ``root`` (a tiny training folder)."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
            root / f"img_{i:02d}.png")
    return root


# pose-flow's tiny model, shared by its training tests (tests/pose_flow) and the jobs that run
# it (tests/talking/test_pose_grid.py, tests/evaluation/test_pose.py)
POSE_TINY = dict(img_size=16, n_flow=1, n_block=2, n_header=2, hidden=8)


@pytest.fixture(scope="session")
def pose_set(tmp_path_factory) -> Path:
    from pose_flow.synthetic import PoseSetConfig, generate

    out = tmp_path_factory.mktemp("pose") / "set"
    generate(PoseSetConfig(str(out), identities=4, clips=1, frames=3, size=16,
                           eval_identities=2, targets=2, drive_frames=5), log=lambda *_: None)
    return out


@pytest.fixture(scope="session", params=["none", "warp"])
def pose_trained(request, pose_set, tmp_path_factory) -> dict:
    """A tiny run of each pose flow: the anchor's (``--reference none``) and the warp-residual;
    ``ckpt``: its checkpoint."""
    from pose_flow.recipe import RECIPE
    from training.config import TrainConfig
    from training.loop import train

    root = tmp_path_factory.mktemp("run")
    cfg = TrainConfig(name="tiny", batch=2, iter=20, workers=0, progress=False,
                      sample_every=20, log_every=1, checkpoint_dir=str(root / "ck"),
                      result_dir=str(root / "res"), device=str(run_device()), lr=1e-3)
    summary = train(RECIPE, RECIPE.Config(**POSE_TINY, reference=request.param), cfg, pose_set,
                    say=lambda *_: None)
    return {"summary": summary, "root": root, "cfg": cfg, "reference": request.param,
            "ckpt": root / "ck" / "tiny" / "last.pt"}
