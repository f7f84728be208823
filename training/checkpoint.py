"""Self-describing checkpoints, written atomically, read with ``weights_only=True``.

Layout (one file)::

    {"format": "flowdisentangle-checkpoint", "version": 1, "model": NAME,
     "config": {"model": {...}, "train": {...}}, "weights": state_dict,
     "optimizer": state_dict | None, "step": int, "rng": {...}, "extra": {...},
     "scaler": GradScaler state (empty without fp16 loss scaling)}
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from faces.io import umask_mode
from glow.io import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, CheckpointError, is_ours, safe_load

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "rng_state",
           "set_rng_state", "atomic_save"]


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temp file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask_mode(fd)
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def rng_state() -> dict:
    """Every RNG the loop touches, in weights_only-loadable types."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "python": list(_flatten_py(random.getstate())),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _flatten_py(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, *, model_name: str, model_config: dict,
                    train_config: dict | None, weights: dict, optimizer: dict | None = None,
                    step: int = 0, extra: dict | None = None, with_rng: bool = True,
                    scaler: dict | None = None) -> Path:
    """Write a self-describing checkpoint atomically (``scaler``: the GradScaler's state)."""
    obj = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model": model_name,
        "config": {"model": model_config, "train": train_config or {}},
        "weights": weights,
        "optimizer": optimizer,
        "step": int(step),
        "rng": rng_state() if with_rng else None,
        "extra": extra or {},
        "scaler": scaler or {},
        "torch_version": str(torch.__version__),
    }
    return atomic_save(obj, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu",
                    expect_model: str | None = None) -> dict:
    """Read one of our checkpoints; foreign, truncated or code-carrying files are one-line errors."""
    obj = safe_load(path, map_location)
    if not is_ours(obj):
        raise CheckpointError(f"{path}: not a checkpoint of this project (no format tag); "
                              "pass a file written by train.py")
    if obj.get("version", 0) > CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {obj['version']} is newer than this "
                              f"code understands ({CHECKPOINT_VERSION}); update the code")
    if expect_model is not None and obj.get("model") != expect_model:
        raise CheckpointError(f"{path}: a '{obj.get('model')}' checkpoint, expected "
                              f"'{expect_model}' (use --model {obj.get('model')})")
    return obj
