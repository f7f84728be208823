"""Shared pytest fixtures."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

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
