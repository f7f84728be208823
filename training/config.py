"""Dataclass configs and their argparse front.

Each dataclass field becomes a flag ``--name`` with its default visible in ``--help``. Field
metadata may set ``flag`` (another flag name, or a tuple of spellings), ``help``, ``choices``,
``check`` (a :mod:`cliargs` type that validates the value); booleans become ``store_true`` flags
(default False) or ``--no_...``-style ``store_false`` flags (default True, ``flag`` names them).
Never ``type=bool``.

Every number is validated: as it is parsed (from the command line or a config file) an ``int``
field must be a whole number (``2.5`` is refused, never truncated) and a ``float`` field a
finite one (no NaN or infinity); :func:`check_fields` then applies each field's ``check`` (an
``int`` field is >= 0 unless its ``check`` says otherwise: ``-1`` is never used as a slice) and
raises one ``ValueError`` naming the flag, which ``train.py`` prints as one ``error:`` line.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any, get_type_hints

from cliargs import (
    BadValue,
    finite,
    nonnegative,
    nonnegative_int,
    positive,
    positive_int,
    seed,
    whole,
)


def opt(default: Any, help: str, flag: str | tuple[str, ...] | None = None,
        choices: list | None = None, check: Any = None) -> Any:
    """A dataclass field with CLI metadata (``check``: a :mod:`cliargs` type function; the
    default for an ``int`` is ``nonnegative_int``, for a ``float`` ``finite``)."""
    meta: dict[str, Any] = {"help": help}
    if flag:
        meta["flag"] = flag
    if choices:
        meta["choices"] = choices
    if check is not None:
        meta["check"] = check
    return field(default=default, metadata=meta)


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, title: str,
                       defaults: dict | None = None, skip: tuple[str, ...] = ()) -> None:
    """Add one flag per field of ``cls`` to a new argument group."""
    group = parser.add_argument_group(title)
    hints = get_type_hints(cls)
    defaults = defaults or {}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = defaults.get(f.name, f.default)
        meta = f.metadata
        flag = meta.get("flag", "--" + f.name)
        flags = (flag,) if isinstance(flag, str) else tuple(flag)
        help_ = meta.get("help", "")
        typ = hints[f.name]
        if typ is bool:
            action = "store_false" if default else "store_true"
            group.add_argument(*flags, dest=f.name, action=action, default=default,
                               help=f"{help_}")
            continue
        base = typ
        if getattr(typ, "__args__", None) and type(None) in typ.__args__:
            base = next(a for a in typ.__args__ if a is not type(None))
        # parsing checks the kind of number; check_fields its range (one error: line)
        kind = {int: whole(None, name="whole number"), float: finite}.get(base, base)
        group.add_argument(*flags, dest=f.name, type=kind, default=default,
                           choices=meta.get("choices"),
                           help=f"{help_} (default: {default})")


def check_fields(cfg: Any) -> None:
    """Apply every field's ``check`` (default: ``nonnegative_int`` for an ``int``, ``finite``
    for a ``float``); raises ``ValueError`` naming the flag, e.g. ``--batch: must be a whole
    number >= 1, not 0``."""
    hints = get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if value is None or isinstance(value, bool):
            continue
        typ = hints[f.name]
        base = next((a for a in getattr(typ, "__args__", ()) if a is not type(None)), typ)
        check = f.metadata.get("check") or {int: nonnegative_int, float: finite}.get(base)
        if check is None:
            continue
        try:
            check(value)
        except BadValue as exc:
            flag = f.metadata.get("flag", "--" + f.name)
            flag = flag if isinstance(flag, str) else flag[0]
            raise ValueError(f"{flag}: {exc}") from None


def from_args(cls: type, ns: argparse.Namespace, **override: Any):
    """Build ``cls`` from parsed arguments (fields missing from ``ns`` keep defaults)."""
    kwargs = {f.name: getattr(ns, f.name) for f in dataclasses.fields(cls) if hasattr(ns, f.name)}
    kwargs.update(override)
    return cls(**kwargs)


def from_dict(cls: type, data: dict):
    """Build ``cls`` from a dict, ignoring unknown keys (old checkpoints, newer fields)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class TrainConfig:
    """Options shared by every model's training (``train.py``)."""

    name: str = opt("run", "run name: checkpoints in CHECKPOINT_DIR/NAME, samples in "
                    "RESULT_DIR/sample_NAME; one process trains a name at a time (a second "
                    "is refused while the first lives)", flag="-n")
    batch: int = opt(16, "global batch size (split across processes under torchrun)",
                     check=positive_int)
    iter: int = opt(200000, "number of training iterations (optimizer steps)")
    lr: float = opt(1e-4, "Adam learning rate", check=positive)
    adam_eps: float = opt(1e-8, "Adam epsilon", check=positive)
    seed: int = opt(0, "random seed (a seeded run resumes bit for bit)", check=seed)
    device: str = opt("auto", "auto (CUDA when available), cpu, cuda, cuda:N")
    amp: bool = opt(False, "mixed precision: only the networks inside the flows run in low "
                    "precision; log-dets, priors and the invertible path stay float32. "
                    "Measured: a small Glow's step 1.98x float32's speed on a 2-core Xeon with "
                    "AMX; 1.59x (thesis config 1.81x) on a 2-core AMD EPYC with AVX-512 BF16, "
                    "where the demo's Glow reached a held-out bits/dim 0.012 above float32's "
                    "(3 seeds); refused on CPUs without oneDNN bf16 (17x slower there); GPUs: "
                    "not measured yet (bench/gpu_check.sh)")
    amp_dtype: str = opt("auto", "low-precision type of --amp: auto (bf16 on CPUs with AVX-512 or "
                         "AMX and on GPUs that support it, else fp16 with loss scaling), bf16, "
                         "fp16 (CUDA only); an AVX2-only CPU refuses --amp (bf16 runs 17x "
                         "slower there)",
                         choices=["auto", "bf16", "fp16"])
    tf32: bool = opt(True, "CUDA: keep float32 products in full float32 (by default TF32 tensor "
                     "cores run them, ~10 mantissa bits, several times faster on Ampere and "
                     "later)", flag="--no_tf32")
    workers: int = opt(2, "data-loading worker processes (0: load in the main process)")
    grad_clip: float = opt(0.0, "clip the gradient norm to this value (0: off)",
                           check=nonnegative)
    sample_every: int = opt(100, "write a sample grid every N iterations (0: never)")
    save_every: int = opt(10000, "write a numbered checkpoint every N iterations "
                          "(last.pt is refreshed at every sample and at the end; 0: never)")
    log_every: int = opt(10, "append a JSONL log record every N iterations",
                         check=positive_int)
    max_bad_steps: int = opt(20, "stop after this many non-finite losses in a row",
                             check=positive_int)
    resume: bool = opt(False, "continue from CHECKPOINT_DIR/NAME/last.pt, or its newest "
                       "step_*.pt when last.pt is missing (flags not given are taken from it; "
                       "a given flag that changes the run is refused; --iter must be above "
                       "its step)")
    allow_changes: bool = opt(False, "with --resume: accept changed batch/lr/seed/data/model "
                              "flags (a warning lists them; the run is no longer bit for bit)")
    force: bool = opt(False, "start NAME over, deleting its old checkpoints and log")
    checkpoint_dir: str = opt("checkpoint", "root of checkpoints")
    result_dir: str = opt("result", "root of samples and logs")
    image_dir: str = opt("image", "root of query/source images")
    progress: bool = opt(True, "hide the progress bar", flag=("--no_progress", "--no-progress"))
    tensorboard: bool = opt(False, "also write every logged term, the sample grids and the "
                            "diagnostics as TensorBoard events into RESULT_DIR/sample_NAME "
                            "(needs the tensorboard package; view with: tensorboard --logdir "
                            "RESULT_DIR)")
