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
