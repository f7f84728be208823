"""Safe checkpoint reading and Glow loading (ours and the reference/thesis state dicts).

Checkpoints are only ever read with ``torch.load(weights_only=True)``: a file that needs
arbitrary pickled objects (i.e. carries code) is refused without being run.
"""

from __future__ import annotations

import hashlib
import pickle
import threading
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .fast import no_random_init
from .model import Glow

CHECKPOINT_FORMAT = "flowdisentangle-checkpoint"
CHECKPOINT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message is one line naming the file and the fix."""


def safe_load(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file (train one with train.py, or "
                              "pass the right path)")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file, not a checkpoint (re-save or re-download it)")
    what = _sniff(path)
    if what:
        raise CheckpointError(f"{path}: {what}, not a PyTorch checkpoint; pass the .pt file "
                              "train.py wrote")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise CheckpointError(
                f"{path}: refused, the file carries code (pickled objects beyond tensors and "
                "plain containers); it was not run. Re-save only its state dict if you trust "
                "its origin") from None
        raise CheckpointError(f"{path}: unreadable checkpoint ({exc}); it may be truncated or "
                              "not a PyTorch file") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError,
            IndexError, TypeError, AttributeError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path}: truncated or not a PyTorch checkpoint ({msg}); "
                              "re-save or re-download it") from None
    if is_ours(obj):
        _check_complete(obj, path)
    return obj


# What torch.save writes first: a zip archive (the default since torch 1.6) or, in the legacy
# format, a pickle (protocol 2+ opcode).
_TORCH_MAGIC = (b"PK\x03\x04", b"\x80")


def _sniff(path: Path) -> str:
    """"" for a file that starts as torch.save's output does, else what it looks like."""
    with open(path, "rb") as fh:
        head = fh.read(512)
    if head.startswith(_TORCH_MAGIC):
        return ""
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # not just a character cut at the 512-byte mark
            return "a binary file of unknown content"
    return "a text file"


def _check_complete(obj: Mapping, path: str | Path) -> None:
    """A project checkpoint must hold its weights and its model config (one-line error)."""
    config = obj.get("config")
    problems = []
    if not isinstance(obj.get("model"), str):
        problems.append("'model' (the model name)")
    if not isinstance(config, Mapping) or (obj.get("model") != "glow"
                                           and not isinstance(config.get("model"), Mapping)):
        problems.append("'config' (the model configuration)")
    if not isinstance(obj.get("weights"), Mapping):
        problems.append("'weights' (the state dict)")
    if "step" in obj and not isinstance(obj["step"], int):
        problems.append("a whole-number 'step'")
    if problems:
        raise CheckpointError(f"{path}: a project checkpoint without {' or '.join(problems)}; "
                              "it is damaged or was written by other code: pass a checkpoint "
                              "train.py wrote")


def is_ours(obj: Any) -> bool:
    """True for a self-describing checkpoint written by this project."""
    return isinstance(obj, Mapping) and obj.get("format") == CHECKPOINT_FORMAT


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB chunks): identifies the exact checkpoint a
    model was trained on, whatever its path."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_sha256_soon(path: str | Path) -> Callable[[], str]:
    """Start :func:`file_sha256` of ``path`` in a background thread; returns a function that
    waits for the digest (re-raising an error of the read). hashlib releases the GIL on large
    chunks, so the hash runs beside e.g. the load of the same file (~0.2-0.4 s at the thesis
    Glow's 245 MB)."""
    result: dict[str, object] = {}

    def work() -> None:
        try:
            result["digest"] = file_sha256(path)
        except OSError as exc:
            result["error"] = exc

    thread = threading.Thread(target=work, name="sha256", daemon=True)
    thread.start()

    def wait() -> str:
        thread.join()
        if "error" in result:
            raise result["error"]  # type: ignore[misc]
        return result["digest"]  # type: ignore[return-value]

    return wait


def recorded_n_bits(path: str | Path | None, default: int = 5) -> int:
    """``n_bits`` recorded in one of our checkpoints (its model config); ``default`` (5, the
    thesis's value) for a reference/thesis state dict, a missing file or an unreadable one."""
    if path is None or not Path(path).is_file():
        return default
    try:
        obj = safe_load(path)
    except CheckpointError:
        return default
    if is_ours(obj):
        return int(obj.get("config", {}).get("model", {}).get("n_bits") or default)
    return default


def strip_prefix(state: Mapping[str, Tensor], prefix: str = "module.") -> dict[str, Tensor]:
    """Drop DataParallel/DDP's ``module.`` prefix when every key has it."""
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return dict(state)


def infer_glow_config(state: Mapping[str, Tensor]) -> dict:
    """Architecture of a Glow state dict (reference key layout) from its tensor shapes."""
    blocks = {int(k.split(".")[1]) for k in state if k.startswith("blocks.")}
    if not blocks:
        raise KeyError("no 'blocks.*' keys")
    n_block = max(blocks) + 1
    n_flow = len({int(k.split(".")[3]) for k in state if k.startswith("blocks.0.flows.")})
    c4 = state["blocks.0.flows.0.actnorm.loc"].shape[1]
    out = state["blocks.0.flows.0.coupling.net.4.conv.weight"].shape[0]
    hidden = state["blocks.0.flows.0.coupling.net.0.weight"].shape[0]
    return dict(
        in_channel=c4 // 4, n_flow=n_flow, n_block=n_block, affine=out == c4, hidden=hidden,
        conv_lu="blocks.0.flows.0.invconv.w_p" in state,
        conv_lu_last=f"blocks.{n_block - 1}.flows.0.invconv.w_p" in state,
    )


def _state_from(obj: Any) -> Mapping[str, Tensor] | None:
    if isinstance(obj, Mapping):
        if any(isinstance(k, str) and k.split(".", 2)[-1].startswith(("blocks.", "flows."))
               or str(k).startswith(("blocks.", "module.blocks.")) for k in obj):
            return obj
        for key in ("state_dict", "model", "glow", "weights"):
            if key in obj and isinstance(obj[key], Mapping):
                return _state_from(obj[key])
    return None


def skip_init():
    """A context in which :func:`load_glow` builds the Glow without random initialisation.

    At the thesis size the initialisation (~110M normal and uniform draws) is most of the
    second it takes to build a Glow, for weights the checkpoint overwrites at once; the load
    is strict, so every tensor comes from the file. Outside the context construction draws
    from the global RNG as before, so a seeded training run that loads a Glow keeps the
    random stream it always had. (:func:`glow.fast.no_random_init` is the mechanism.)
    """
    return no_random_init()


def load_glow(path: str | Path, n_flow: int | None = None, n_block: int | None = None,
              affine: bool | None = None, conv_lu: bool | None = None,
              hidden: int | None = None, img_size: int | None = None,
              map_location: str | torch.device = "cpu") -> Glow:
    """Load a Glow in eval mode from our checkpoint or a reference-layout state dict.

    Our self-describing checkpoints need no architecture arguments: they carry the architecture
    and the image size, and any argument given that differs (``img_size`` included: a 32-px Glow
    must not be fed 64-px frames) is a one-line error. A bare state dict (e.g. the thesis's
    ``glow_checkpoint.pt``, rosinality/glow-pytorch layout, with or without DataParallel's
    ``module.`` prefix) has its architecture inferred from the tensor shapes; the arguments given
    are checked against it, and ``img_size`` (which the weights do not fix) defaults to 64.
    """
    obj = safe_load(path, map_location)
    given = dict(n_flow=n_flow, n_block=n_block, affine=affine, conv_lu=conv_lu, hidden=hidden)
    if is_ours(obj):
        return glow_from_checkpoint(obj, path, **given, img_size=img_size)
    state = _state_from(obj)
    if state is None:
        raise CheckpointError(f"{path}: neither a project checkpoint nor a Glow state dict")
    state = strip_prefix(state)
    try:
        cfg = infer_glow_config(state)
    except (KeyError, IndexError) as exc:
        raise CheckpointError(f"{path}: not a Glow state dict (missing {exc})") from None
    bad = [f"{k}={v} (file has {cfg[k]})" for k, v in given.items()
           if v is not None and v != cfg[k]]
    if bad:
        raise CheckpointError(f"{path}: architecture mismatch: {', '.join(bad)}")
    return _with_weights(Glow(img_size=img_size or 64, **cfg), state, path)


def glow_from_checkpoint(obj: dict, path: str | Path = "checkpoint", **given) -> Glow:
    """The Glow of our checkpoint ``obj`` (read from ``path``) in eval mode; an architecture
    flag given (not None) that differs from the recorded one is a one-line error."""
    if obj.get("model") != "glow":
        raise CheckpointError(f"{path}: a '{obj.get('model')}' checkpoint, not a Glow one")
    cfg = dict(obj["config"]["model"]) if "model" in obj["config"] else dict(obj["config"])
    cfg = {k: cfg[k] for k in ("in_channel", "n_flow", "n_block", "affine", "conv_lu",
                               "hidden", "img_size") if k in cfg}
    bad = [f"--{k} {v} (the Glow has {cfg[k]})" for k, v in given.items()
           if v is not None and k in cfg and v != cfg[k]]
    if bad:
        raise CheckpointError(f"{path}: architecture mismatch: {', '.join(bad)}; drop the "
                              "flag(s), a project Glow checkpoint fixes them")
    return _with_weights(Glow(**cfg), obj["weights"], path)


def _with_weights(model: Glow, state: Mapping, path) -> Glow:
    try:
        # The model owns the loaded tensors (cast to its float32), nothing is copied.
        model.load_state_dict({k: v.float() if v.is_floating_point() else v
                               for k, v in state.items()}, assign=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit the Glow "
                              f"({str(exc).splitlines()[0]})") from None
    return model.eval()
