"""Command-line helpers: :func:`report_errors` (every script's one-line user errors), and for
``train.py`` which flags were given, ``--config FILE``, and filling a resumed run's flags from
its checkpoint.

Precedence, lowest first: the dataclass defaults (with the recipe's TRAIN_DEFAULTS), then
``--config FILE``, then flags on the command line. With ``--resume`` every model and training
flag given neither in the file nor on the command line is taken from the checkpoint, so
``train.py --model M -n NAME --resume`` continues exactly the saved run.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from cliargs import (
    BadValue,
    error_exit,
)
from faces.io import write_bytes_atomic
from glow.io import CheckpointError

from .checkpoint import load_checkpoint


@contextlib.contextmanager
def plain_warnings() -> Iterator[None]:
    """Show the project's warnings to a user as one ``warning: ...`` line on stderr, instead of
    Python's ``FILE:LINE: Category: message`` and the source line of whichever library frame
    triggered it (e.g. a data-loader's fetch for an unreadable frame). Restored on exit.
    Deprecation-style warnings keep Python's format (they are for developers)."""
    dev = (DeprecationWarning, PendingDeprecationWarning, FutureWarning, SyntaxWarning)
    before = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, dev):
            return before(message, category, filename, lineno, file, line)
        text = str(message).strip().splitlines()
        print(f"warning: {text[0] if text else category.__name__}", file=file or sys.stderr)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = before


FOLDER_FLAGS = ("checkpoint_dir", "result_dir", "image_dir")


def check_folder(path: str | Path, flag: str) -> None:
    """One-line ``ValueError`` when ``path`` or a folder above it is a regular file (every
    later read or write under it would fail with ``NotADirectoryError``)."""
    path = Path(path)
    blocker = next((p for p in (path, *path.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise ValueError(f"{flag} {path}: {blocker} is a file, not a folder; give a folder")


def check_folder_flags(ns: argparse.Namespace | None) -> None:
    """:func:`check_folder` for each of ``--checkpoint_dir/--result_dir/--image_dir`` in
    ``ns``."""
    for name in FOLDER_FLAGS:
        value = getattr(ns, name, None)
        if isinstance(value, (str, Path)):
            check_folder(value, f"--{name}")


def report_errors(job: Callable[[], object], *extra: type[BaseException],
                  args: argparse.Namespace | None = None) -> int:
    """Run ``job()``; a user error (``ValueError``, ``CheckpointError``, an ``OSError`` such as
    a full disk or a file where a folder belongs, or one of ``extra``) becomes one
    ``error: ...`` line on stderr and exit status 1, else 0. ``args``: its folder flags are
    checked first (:func:`check_folder_flags`). Warnings meanwhile are one line each
    (:func:`plain_warnings`)."""
    try:
        check_folder_flags(args)
        with plain_warnings():
            job()
    except (ValueError, CheckpointError, *extra, OSError) as exc:
        return error_exit(exc)
    return 0


# Flags about this invocation, never read from a file or a checkpoint.
PER_INVOCATION = ("name", "resume", "force", "allow_changes", "dry_run", "config")
# Training flags a resumed run does not inherit (where it runs, how it reports).
NOT_INHERITED = PER_INVOCATION + ("device", "workers", "progress", "checkpoint_dir",
                                  "result_dir", "image_dir")


def given_dests(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The ``dest`` of every option present in ``argv`` (whatever its value)."""
    bare = copy.deepcopy(parser)
    for action in bare._actions:
        action.default = argparse.SUPPRESS
        action.required = False
    bare._defaults = {}
    ns, _ = bare.parse_known_args(argv)
    return set(vars(ns))


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML or JSON file -> ``{dest: value}`` (plus ``model`` and ``data_dir`` when present).

    Accepted layouts: a flat mapping of flag names (``lr: 0.001``, ``n_flow: 8``); a run's
    resolved ``config.json`` (``model``, ``data_dir``, ``model_config``, ``train_config``); the
    ``--dry-run`` output (``train`` instead of ``train_config``). Raises ValueError (one line).
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f"--config {path}: cannot read it ({exc.strerror})") from None
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # yaml.YAMLError / json.JSONDecodeError, both with a position
        msg = str(exc).splitlines()[0]
        raise ValueError(f"--config {path}: not valid {path.suffix.lstrip('.') or 'JSON'} "
                         f"({msg}); fix the file") from None
    if not isinstance(data, dict):
        raise ValueError(f"--config {path}: expected a mapping of flag names to values")
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key in ("model_config", "train_config", "train") and isinstance(value, dict):
            flat.update(value)
        elif key in ("world_size", "data"):
            continue  # facts about the old run, not flags
        else:
            flat[key.replace("-", "_")] = value
    return flat


def apply_config(parser: argparse.ArgumentParser, ns: argparse.Namespace, values: dict,
                 given: set[str], source: str) -> set[str]:
    """Set every ``dest`` of ``values`` not in ``given`` on ``ns``, type-checked against the
    parser's actions; unknown keys are a one-line error naming ``source``. Returns the dests
    that were set."""
    actions = {a.dest: a for a in parser._actions if a.dest != "help"}
    unknown = sorted(k for k in values if k not in actions and k not in PER_INVOCATION)
    if unknown:
        raise ValueError(f"{source}: unknown option(s) {', '.join(unknown)} for this model "
                         "(see train.py --model M --help)")
    done = set()
    for key, value in values.items():
        if key in PER_INVOCATION or key in given:
            continue
        action = actions[key]
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            if not isinstance(value, bool):
                raise ValueError(f"{source}: {key} must be true or false, not {value!r}")
        elif value is not None and action.type is not None:
            try:
                value = action.type(value)
            except BadValue as exc:  # the message says what is wanted (a whole number, ...)
                raise ValueError(f"{source}: {key} = {value!r}: {exc}") from None
            except (TypeError, ValueError):
                raise ValueError(f"{source}: {key} = {value!r} is not a valid "
                                 f"{getattr(action.type, '__name__', 'value')}") from None
        if action.choices is not None and value not in action.choices:
            raise ValueError(f"{source}: {key} = {value!r}; choose one of "
                             f"{', '.join(map(str, action.choices))}")
        setattr(ns, key, value)
        done.add(key)
    return done


def checkpoint_values(path: Path) -> dict[str, Any]:
    """The model and training flags a checkpoint was trained with (``{}`` if it is absent),
    plus ``data_dir`` (the absolute data path it recorded)."""
    if not path.is_file():
        return {}
    obj = load_checkpoint(path)
    config = obj.get("config", {})
    train = {k: v for k, v in config.get("train", {}).items()
             if k not in NOT_INHERITED and k != "data"}
    out = {**config.get("model", {}), **train}
    data_path = config.get("train", {}).get("data", {}).get("path")
    if data_path:
        out["data_dir"] = data_path
    return out


def claim_output(folder: str | Path, made_by: dict[str, Any], overwrite: bool, elsewhere: str,
                 say=print) -> None:
    """Make sure a job may write into ``folder``: it is empty or absent, or it holds the output
    of the same job (``made_by``: what made it, e.g. the model, the checkpoint and the data), or
    ``overwrite`` is set. Otherwise raise ``ValueError`` naming what the folder holds and the
    fix (``elsewhere``, e.g. "give --name NEW"), so a second job never silently replaces the
    first's output. The record is kept beside the folder (``.NAME.json`` in its parent), never
    inside it."""
    folder = Path(folder)
    record = folder.parent / f".{folder.name}.json"
    made_by = {k: (str(v) if isinstance(v, Path) else v) for k, v in made_by.items()}
    if folder.is_dir() and any(folder.iterdir()):
        try:
            old = json.loads(record.read_text())
        except (OSError, ValueError):
            old = None
        if old != made_by:
            if not overwrite:
                what = (", ".join(f"{k} {v}" for k, v in old.items())
                        if isinstance(old, dict) else "no record of what made it")
                raise ValueError(f"{folder} holds another job's output ({what}); {elsewhere}, "
                                 "or give --overwrite to replace it")
            say(f"note: --overwrite: replacing the output in {folder}")
    folder.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(record, (json.dumps(made_by, indent=1) + "\n").encode())
