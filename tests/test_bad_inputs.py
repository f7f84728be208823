"""Bad inputs, as a careless user would give them, fed to every script.

One table (``CASES``) of rows; each row runs one script on one bad input and the same checks
apply to every row:

- no traceback (in-process: no exception other than argparse's ``SystemExit``; subprocess: no
  ``Traceback`` in the output);
- the exit status the row expects (default: non-zero, the job failed);
- one ``error: ...`` line on stderr (argparse's ``PROG: error: ...`` counts) that names the flag
  or the file given in ``Case.names``;
- no file of an earlier run changed: the files of a run made before the table (a trained Glow,
  its samples and log, an evaluation) hash the same before and after every row.

Adding a row
------------
``Case(id, script, args, names, make={...}, code=None, subprocess=False)``

- ``script``: a key of ``SCRIPTS`` (``train``, ``test``, ``evaluate``, ``preprocess``, ``demo``,
  ``lrw.synthetic``, ``synthface.attributes``, ``pose_flow.synthetic``, ``content_ae.transfer``,
  ``content_ae.evaluate``, ``pose_flow.driving``).
- ``args``: the command line after the script name, split with ``shlex``; ``{name}``
  placeholders are filled from ``World`` (built lazily, so a row pays only for what it names):
  ``{w}`` the world folder (also the working directory of every row), ``{data}`` a folder of
  eight good 8x8 PNGs, ``{glow}`` a tiny trained Glow's ``last.pt`` (run ``g`` under ``{w}``),
  ``{syn}`` a tiny ``lrw.synthetic`` set, ``{ad}`` a tiny AD-flow's ``last.pt`` (run ``ad``);
  and every key of ``make``.
- ``make``: ``{placeholder: kind}``: a fresh bad input of that kind (a key of ``MAKERS``) made
  under the row's own folder and named by the placeholder in ``args``.
- ``names``: a string the error line must contain (the flag, or the file's name).
- ``code``: the exact exit status expected; ``None`` means any non-zero status. ``code=0``
  rows are jobs that succeed with a warning: ``names`` must then appear on stderr or stdout.
- ``subprocess=True`` runs ``python SCRIPT.py`` / ``python -m MODULE`` in a child process (for
  what only a fresh interpreter shows).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SIZE = 8  # the tiny Glow's image size

# script key -> (module whose main(argv) runs it, how a child process runs it)
SCRIPTS: dict[str, tuple[str, list[str]]] = {
    "train": ("train", ["train.py"]),
    "test": ("talking.cli", ["test.py"]),
    "evaluate": ("evaluate", ["evaluate.py"]),
    "preprocess": ("preprocess", ["preprocess.py"]),
    "demo": ("demo", ["demo.py"]),
    "lrw.synthetic": ("lrw.synthetic", ["-m", "lrw.synthetic"]),
    "synthface.attributes": ("synthface.attributes", ["-m", "synthface.attributes"]),
    "pose_flow.synthetic": ("pose_flow.synthetic", ["-m", "pose_flow.synthetic"]),
}


# --------------------------------------------------------------------------------------------
# Generated bad inputs: kind -> maker(path) (the path is free; a maker may create a file or a
# folder there)


def _png(path: Path, size: int = SIZE, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)


def _good_pngs(path: Path, n: int = 8) -> None:
    path.mkdir(parents=True)
    for i in range(n):
        _png(path / f"img_{i:02d}.png", seed=i)


def _unreadable_images(path: Path) -> None:
    """A folder of .png/.jpg files that are not images (text, empty, cut short)."""
    path.mkdir(parents=True)
    (path / "a.png").write_text("not an image\n")
    (path / "b.jpg").write_bytes(b"")
    buf = io.BytesIO()
    Image.fromarray(np.zeros((SIZE, SIZE, 3), np.uint8)).save(buf, format="PNG")
    (path / "c.png").write_bytes(buf.getvalue()[:20])


MAKERS: dict[str, Callable[[Path], None]] = {
    "missing": lambda p: None,
    "empty_dir": lambda p: p.mkdir(parents=True),
    "text_file": lambda p: p.write_text("hello\n"),
    "empty_file": lambda p: p.write_bytes(b""),
    "good_pngs": _good_pngs,
    "unreadable_images": _unreadable_images,
    "bad_json": lambda p: p.write_text("{not json"),
}


# --------------------------------------------------------------------------------------------
# The world: an earlier run, and what rows may name


class World:
    """What rows name by placeholder, built on first use, all under one folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._cache: dict[str, str] = {"w": str(root)}

    def __getitem__(self, key: str) -> str:
        if key not in self._cache:
            self._cache[key] = str(getattr(self, "_make_" + key)())
        return self._cache[key]

    def _make_data(self) -> Path:
        _good_pngs(self.root / "data")
        return self.root / "data"

    def _make_glow(self) -> Path:
        import train

        args = ["--model", "glow", "-n", "g", self["data"], "--img_size", str(SIZE),
                "--n_flow", "1", "--n_block", "2", "--hidden", "4", "--n_sample", "2",
                "--batch", "4", "--iter", "2", "--device", "cpu", "--workers", "0",
                "--sample_every", "1", "--save_every", "1", "--log_every", "1",
                "--no_progress"]
        with _quiet():
            assert train.main(args) == 0
        return self.root / "checkpoint" / "g" / "last.pt"

    def _make_syn(self) -> Path:
        from lrw.synthetic import SyntheticConfig, generate

        root = self.root / "syn"
        generate(SyntheticConfig(out=str(root), words=2, speakers=2, clips=2, frames=6,
                                 size=SIZE, queries=1, sources=1, workers=1),
                 log=lambda *a: None)
        return root

    def _make_ad(self) -> Path:
        import train

        args = ["--model", "ad-flow", "-n", "ad", self["syn"], "--glow", self["glow"],
                "--img_size", str(SIZE), "--n_frames", "4", "--cls_hidden", "8", "--iter", "2",
                "--batch", "2", "--device", "cpu", "--workers", "0", "--sample_every", "0",
                "--save_every", "0", "--no_progress"]
        with _quiet():
            assert train.main(args) == 0
        return self.root / "checkpoint" / "ad" / "last.pt"


@contextlib.contextmanager
def _quiet():
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """The earlier run every row must leave alone: a trained Glow (checkpoints, samples, log)
    and an evaluation of it, under the folder every row runs in."""
    import evaluate

    root = tmp_path_factory.mktemp("world")
    w = World(root)
    with _chdir(root):
        w["glow"]
        with _quiet():
            assert evaluate.main(["--model", "glow", "--checkpoint", w["glow"], w["data"],
                                  "--device", "cpu", "--no_progress"]) == 0
    files = _hashes(root)
    for part in ("checkpoint/g/last.pt", "result/sample_g/log.jsonl", "result/eval/g/table.md"):
        assert part in files, sorted(files)
    return w


@contextlib.contextmanager
def _chdir(path: Path):
    import os

    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def _hashes(root: Path) -> dict[str, str]:
    """sha256 of every file of the earlier run (checkpoints and results)."""
    out = {}
    for top in ("checkpoint", "result"):
        for p in sorted((root / top).rglob("*")):
            if p.is_file():
                out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


# --------------------------------------------------------------------------------------------
# The table


@dataclass(frozen=True)
class Case:
    id: str
    script: str
    args: str
    names: str
    make: dict[str, str] = field(default_factory=dict)
    code: int | None = None
    subprocess: bool = False


CASES: list[Case] = [
    # -- missing or wrong inputs (files and folders)
    Case("train-data-missing", "train", "--model glow -n x {bad} --device cpu --workers 0",
         "{bad}", make={"bad": "missing"}),
    Case("train-config-bad-json", "train", "--config {cfg} {data} --dry-run", "--config",
         make={"cfg": "bad_json"}),
    Case("train-config-text", "train", "--config {cfg} {data} --dry-run", "--config",
         make={"cfg": "text_file"}),
    Case("evaluate-checkpoint-missing", "evaluate",
         "--model glow --checkpoint {bad} {data} --device cpu --no_progress", "{bad}",
         make={"bad": "missing"}),
    Case("evaluate-compare-missing", "evaluate", "--compare g nothere", "nothere"),
    # -- argparse: abbreviations and junk values
    Case("train-abbreviated-flag", "train", "--mod glow -n x {data} --dry-run", "--mod"),
    Case("lrw.synthetic-abbreviated-flag", "lrw.synthetic", "{w}/s --word 2", "--word"),
    Case("train-batch-not-a-number", "train", "-n x {data} --batch two --dry-run", "--batch"),
]


def _run(case: Case, world: World, tmp: Path) -> tuple[int, str, str]:
    values = dict(world._cache)
    for key, kind in case.make.items():
        path = tmp / key
        MAKERS[kind](path)
        values[key] = str(path)

    class Lazy(dict):
        def __missing__(self, key: str) -> str:
            return world[key]

    argv = shlex.split(case.args.format_map(Lazy(values)))
    names = case.names.format_map(Lazy(values))
    module, command = SCRIPTS[case.script]
    if case.subprocess:
        cmd = [sys.executable, *[str(ROOT / c) if c.endswith(".py") else c for c in command]]
        env = {**__import__("os").environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        out = subprocess.run([*cmd, *argv], cwd=world.root, capture_output=True, text=True,
                             env=env, timeout=300)
        return out.returncode, out.stdout, out.stderr + "\0" + names
    main = importlib.import_module(module).main
    stdout, stderr = io.StringIO(), io.StringIO()
    with _chdir(world.root), contextlib.redirect_stdout(stdout), \
            contextlib.redirect_stderr(stderr):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse
            code = exc.code if isinstance(exc.code, int) else 1
    return int(code or 0), stdout.getvalue(), stderr.getvalue() + "\0" + names


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, world: World, tmp_path: Path) -> None:
    before = _hashes(world.root)
    code, out, err = _run(case, world, tmp_path)
    err, names = err.rsplit("\0", 1)
    assert "Traceback" not in out + err, out + err
    if case.code is None:
        assert code != 0, f"exit 0 on a failed job\n{out}{err}"
    else:
        assert code == case.code, out + err
    if case.code == 0:
        assert names in out + err, out + err
    else:
        errors = [line for line in err.splitlines() if line.startswith("error:")
                  or (": error: " in line and not line.startswith(" "))]
        assert len(errors) == 1, err
        assert names in errors[0], err
    assert _hashes(world.root) == before, "a file of the earlier run changed"


def test_the_table_covers_every_script() -> None:
    assert {c.script for c in CASES} >= {"train", "evaluate", "lrw.synthetic"}
    assert len({c.id for c in CASES}) == len(CASES)
