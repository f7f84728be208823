"""Runs that cannot hurt each other or the user's files: the run-folder lock, advice that is
run as given, checkpoints that keep the umask and say what a bad file is, one-line errors
where tracebacks were, and generators that never write into other files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import noise_images as _data
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
import train as train_cli  # noqa: E402
from training.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402


def _argv(tmp: Path, name: str = "r", *extra: str, model: str = "glow") -> list[str]:
    return ["--model", model, "-n", name, str(tmp / "data"), "--n_flow", "1", "--n_block", "2",
            "--hidden", "4", "--img_size", "8", "--n_sample", "2", "--batch", "4", "--iter", "2",
            "--device", "cpu", "--workers", "0", "--sample_every", "0", "--save_every", "0",
            "--log_every", "1", "--no_progress", "--checkpoint_dir", str(tmp / "ck"),
            "--result_dir", str(tmp / "res"), *extra]


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    _data(tmp_path / "data")
    return tmp_path


def _snapshot(*folders: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for f in folders if f.is_dir()
            for p in sorted(f.rglob("*")) if p.is_file()}


def _one_error_line(err: str) -> str:
    err = err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


# --------------------------------------------------------------------------------------------
# Class 1: the run-folder lock


HOLDER = """
import sys, time
sys.path.insert(0, sys.argv[1])
from training.run import RunLock
lock = RunLock(sys.argv[2], "r").acquire()
print("locked", flush=True)
time.sleep(60)
"""


def _hold_lock(folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(ROOT), str(folder)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


@pytest.mark.parametrize("second", [[], ["--force"], ["--resume", "--iter", "3"]])
def test_a_second_run_of_the_same_name_is_refused_while_the_first_lives(
        tmp: Path, capsys, second: list[str]) -> None:
    assert train_cli.main(_argv(tmp)) == 0  # an earlier run's files
    before = _snapshot(tmp / "ck", tmp / "res")
    holder = _hold_lock(tmp / "ck" / "r")  # a live training process of run r
    try:
        capsys.readouterr()
        assert train_cli.main(_argv(tmp, "r", *second)) == 1
        err = _one_error_line(capsys.readouterr().err)
        assert f"process {holder.pid}" in err and "another -n NAME" in err
        assert {k: v for k, v in _snapshot(tmp / "ck", tmp / "res").items()
                if not k.endswith(".lock")} == before  # --force deleted nothing
        # any other model under that name is refused as well
        assert train_cli.main(_argv(tmp, "r", model="mi-flow")) == 1
    finally:
        holder.kill()
        holder.wait()


def test_two_train_py_processes_with_one_name(tmp: Path, capsys) -> None:
    """A real train.py run of -n r in a child process; a second one is refused while it lives
    (naming its pid), and after the first is killed (-9) the lock is stale and the same command
    trains."""
    first = subprocess.Popen([sys.executable, str(ROOT / "train.py"),
                              *_argv(tmp, "r", "--iter", "1000000")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    lock = tmp / "ck" / "r" / ".lock"
    try:
        deadline = time.monotonic() + 120  # (a wait for the child to start, not a timing)
        while not (lock.is_file() and f"pid={first.pid}" in lock.read_text()):
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        assert train_cli.main(_argv(tmp)) == 1
        err = _one_error_line(capsys.readouterr().err)
        assert f"process {first.pid}" in err
    finally:
        first.kill()
        first.wait()
    assert train_cli.main(_argv(tmp, "r", "--force")) == 0
    assert f"process {first.pid} is gone" in capsys.readouterr().out
    assert load_checkpoint(tmp / "ck" / "r" / "last.pt")["step"] == 2


def test_a_crashed_runs_lock_is_stale_and_taken_over(tmp: Path, capsys) -> None:
    holder = _hold_lock(tmp / "ck" / "r")
    holder.kill()  # SIGKILL: no clean-up, the lock file stays
    holder.wait()
    lock = tmp / "ck" / "r" / ".lock"
    assert f"pid={holder.pid}" in lock.read_text()
    assert train_cli.main(_argv(tmp)) == 0
    out = capsys.readouterr().out
    assert f"stale lock {lock}: process {holder.pid} is gone" in out
    assert not lock.exists()  # released on exit
    assert load_checkpoint(tmp / "ck" / "r" / "last.pt")["step"] == 2


def test_the_lock_is_released_when_a_run_fails(tmp: Path, capsys) -> None:
    assert train_cli.main(_argv(tmp, "r", "--batch", "64")) == 1  # too few items
    assert not (tmp / "ck" / "r").exists()  # lock released, no empty folder left
    assert train_cli.main(_argv(tmp)) == 0


def test_lock_in_process(tmp_path: Path) -> None:
    from training.run import RunLock

    with RunLock(tmp_path, "x") as lock:
        assert lock.stale == "" and f"pid={os.getpid()}" in lock.path.read_text()
        with pytest.raises(ValueError, match=f"process {os.getpid()}"):
            RunLock(tmp_path, "x").acquire()  # another open file description: refused
    assert not (tmp_path / ".lock").exists()


# --------------------------------------------------------------------------------------------
# Class 8: advice that is run as given


def test_missing_last_pt_with_step_files_resumes_from_the_newest(tmp: Path, capsys) -> None:
    assert train_cli.main(_argv(tmp, "r", "--save_every", "1", "--iter", "3")) == 0
    ck = tmp / "ck" / "r"
    steps = sorted(p.name for p in ck.glob("step_*.pt"))
    assert steps == ["step_0000001.pt", "step_0000002.pt", "step_0000003.pt"]
    (ck / "last.pt").unlink()
    capsys.readouterr()
    # a fresh start is refused, and the refusal's first advice is --resume
    assert train_cli.main(_argv(tmp, "r", "--save_every", "1", "--iter", "4")) == 1
    err = _one_error_line(capsys.readouterr().err)
    assert "--resume (from step_0000003.pt" in err
    # the advice, run as given: continues from step 3, every step file kept
    assert train_cli.main(_argv(tmp, "r", "--save_every", "1", "--iter", "4", "--resume")) == 0
    assert "resuming from" in capsys.readouterr().out
    assert load_checkpoint(ck / "last.pt")["step"] == 4
    assert sorted(p.name for p in ck.glob("step_*.pt")) == steps + ["step_0000004.pt"]


def test_max_bad_steps_before_any_checkpoint_names_none_and_the_advice_works(
        tmp: Path, capsys, monkeypatch) -> None:
    from plain_glow.recipe import RECIPE as glow_recipe

    real = glow_recipe.losses
    monkeypatch.setattr(glow_recipe, "losses", lambda model, batch, ctx: {
        k: v * float("nan") for k, v in real(model, batch, ctx).items()})
    assert train_cli.main(_argv(tmp, "r", "--max_bad_steps", "2", "--iter", "5")) == 1
    err = _one_error_line(capsys.readouterr().err)
    assert "no checkpoint was written" in err and "last.pt" not in err
    assert not (tmp / "ck" / "r" / "last.pt").exists()
    monkeypatch.setattr(glow_recipe, "losses", real)
    # "try a lower --lr": run as given (same name, no --force) it trains
    assert train_cli.main(_argv(tmp, "r", "--lr", "1e-5")) == 0
    assert load_checkpoint(tmp / "ck" / "r" / "last.pt")["step"] == 2


def test_resume_with_iter_at_or_below_the_step_is_refused(tmp: Path, capsys) -> None:
    assert train_cli.main(_argv(tmp, "r", "--iter", "3")) == 0
    capsys.readouterr()
    for it in ("2", "3"):
        assert train_cli.main(_argv(tmp, "r", "--resume", "--iter", it)) == 1
        err = _one_error_line(capsys.readouterr().err)
        assert "already at iteration 3" in err and "--iter" in err
    assert train_cli.main(_argv(tmp, "r", "--resume", "--iter", "4")) == 0  # as advised


# --------------------------------------------------------------------------------------------
# Checkpoints


def _tiny_checkpoint(path: Path) -> Path:
    obj = dict(model_name="glow", model_config={"n_flow": 1}, train_config={},
               weights={"w": torch.zeros(1)}, step=1)
    save_checkpoint(path, **obj)
    return path


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_checkpoints_respect_the_umask(tmp_path: Path, mask: int) -> None:
    old = os.umask(mask)
    try:
        path = _tiny_checkpoint(tmp_path / "c.pt")
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777 == 0o666 & ~mask


def test_a_text_file_is_called_a_text_file(tmp_path: Path) -> None:
    from glow.io import CheckpointError

    path = tmp_path / "notes.pt"
    path.write_text("these are my notes, not weights\n")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert "a text file" in str(err.value) and "code" not in str(err.value)


@pytest.mark.parametrize("key", ["weights", "config", "model"])
def test_a_project_checkpoint_without_a_key_is_one_line(tmp: Path, capsys, key: str) -> None:
    assert train_cli.main(_argv(tmp)) == 0
    path = tmp / "ck" / "r" / "last.pt"
    obj = torch.load(path, weights_only=True)
    del obj[key]
    torch.save(obj, path)
    capsys.readouterr()
    assert train_cli.main(_argv(tmp, "r", "--resume", "--iter", "3")) == 1
    err = _one_error_line(capsys.readouterr().err)
    assert f"'{key}'" in err and str(path) in err
    from talking.cli import main as test_main  # test.py loads through the same check

    (tmp / "image" / "source_img" / "s").mkdir(parents=True)
    _data(tmp / "image" / "source_img" / "s", n=2)
    rc = test_main(["--model", "ad-flow", "--glow", str(path), "--checkpoint", str(path),
                    "--source", "s", str(tmp / "data" / "img_00.png"), "--image_dir",
                    str(tmp / "image"), "--result_dir", str(tmp / "out")])
    assert rc == 1
    err = _one_error_line(capsys.readouterr().err)
    assert f"'{key}'" in err


# --------------------------------------------------------------------------------------------
# Tracebacks where a line belongs


def test_folder_flags_under_a_regular_file_are_one_line(tmp: Path, capsys) -> None:
    blocker = tmp / "file"
    blocker.write_text("x")
    import evaluate
    import preprocess
    from talking.cli import main as test_main

    runs = [
        (train_cli.main, _argv(tmp, "r", "--checkpoint_dir", str(blocker / "ck")),
         "--checkpoint_dir"),
        (train_cli.main, _argv(tmp, "r", "--result_dir", str(blocker / "res")), "--result_dir"),
        (test_main, ["--model", "ad-flow", "--source", "s", "q", "--image_dir", str(blocker)],
         "--image_dir"),
        (test_main, ["--model", "ad-flow", "--source", "s", "q", "--result_dir",
                     str(blocker / "r")], "--result_dir"),
        (evaluate.main, ["--model", "ad-flow", "--source", "s", "--query", "q",
                         "--image_dir", str(blocker)], "--image_dir"),
        (evaluate.main, ["--model", "glow", str(tmp / "data"), "--result_dir", str(blocker)],
         "--result_dir"),
        (preprocess.main, ["--source", "s", str(tmp / "data"), "--image_dir", str(blocker)],
         "--image_dir"),
    ]
    for main, argv, flag in runs:
        capsys.readouterr()
        assert main(argv) == 1, argv
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("error: ") and flag in err and str(blocker) in err, (argv, err)
        assert "is a file, not a folder" in err


def test_a_full_disk_is_one_line_and_the_retry_is_not_blocked(tmp: Path, capsys,
                                                             monkeypatch) -> None:
    import errno

    import training.checkpoint as ck

    def full(obj, fh):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp / "ck"))

    monkeypatch.setattr(ck.torch, "save", full)
    assert train_cli.main(_argv(tmp)) == 1
    err = _one_error_line(capsys.readouterr().err)
    assert "no space left" in err
    assert not (tmp / "ck" / "r").exists()  # no temp file, no lock, no empty run folder
    monkeypatch.undo()
    assert train_cli.main(_argv(tmp)) == 0  # the same command once there is space


def test_a_folder_with_no_readable_image_and_a_small_batch_is_one_line(tmp_path: Path,
                                                                      capsys) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for i in range(6):
        (data / f"{i}.png").write_bytes(b"not a png")
    assert train_cli.main(_argv(tmp_path, "r", "--batch", "2")) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert all(x.startswith("warning: ") for x in lines[:-1]), lines  # one, on the first
    err = _one_error_line(lines[-1])
    assert "none of the 6 training images can be read" in err and str(data) in err
    assert train_cli.main(_argv(tmp_path, "r", "--batch", "2")) == 1  # the retry: same line
    assert capsys.readouterr().err.strip().splitlines()[-1] == err


@pytest.mark.parametrize("model,flag", [("glow", "--hidden"), ("glow", "--img_size"),
                                        ("mi-flow", "--mi_hidden"), ("content-ae", "--code"),
                                        ("pose-flow", "--img_size"), ("ad-flow", "--img_size")])
def test_non_positive_model_sizes_are_refused(tmp_path: Path, capsys, model: str,
                                              flag: str) -> None:
    for value in ("0", "-8"):
        rc = train_cli.main(["--model", model, "-n", "x", str(tmp_path), flag, value,
                             "--dry-run"])
        assert rc == 1
        err = _one_error_line(capsys.readouterr().err)
        assert err.startswith(f"error: {flag}") and value in err


def test_unreadable_frames_warn_in_one_line_and_are_counted_over_workers(tmp: Path,
                                                                        capsys) -> None:
    (tmp / "data" / "bad_a.png").write_bytes(b"junk")
    (tmp / "data" / "bad_b.jpg").write_bytes(b"")
    argv = _argv(tmp, "r", "--workers", "2", "--iter", "4")
    assert train_cli.main(argv) == 0
    cap = capsys.readouterr()
    text = cap.out + cap.err
    assert "UnreadableFrameWarning" not in text and "warnings.warn" not in text
    assert "data = [self.dataset" not in text  # no library source line
    warned = [x for x in text.splitlines() if x.startswith("warning: skipped an unreadable")]
    assert len(warned) == 1
    assert "2 of the 10 training files could not be read" in text
    listed = (tmp / "res" / "sample_r" / "unreadable.txt").read_text().split()
    assert sorted(set(listed)) == [str(tmp / "data" / "bad_a.png"),
                                   str(tmp / "data" / "bad_b.jpg")]


# --------------------------------------------------------------------------------------------
# Class 7: generators never write into other files; their own earlier set is replaced whole


def _real_folder(path: Path) -> dict[str, bytes]:
    (path / "train").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path / "train" / "real_face.png")
    (path / "notes.txt").write_text("mine")
    return _snapshot(path)


def test_generators_refuse_a_folder_of_other_files(tmp_path: Path, capsys) -> None:
    import preprocess
    from lrw import synthetic as lrw_synthetic
    from pose_flow import synthetic as pose_synthetic
    from synthface import attributes

    runs = {
        "lrw": lambda out: lrw_synthetic.main([str(out), "--words", "2", "--speakers", "2",
                                               "--clips", "1", "--frames", "2", "--size", "16"]),
        "pose": lambda out: pose_synthetic.main([str(out), "--identities", "2", "--clips", "1",
                                                 "--frames", "2", "--size", "16"]),
        "attr": lambda out: attributes.main([str(out), "--size", "16", "--train_a", "2",
                                             "--train_b", "2", "--test_a", "1", "--test_b",
                                             "1"]),
        "csv": lambda out: preprocess.main(["--attr_from", str(tmp_path / "x.csv"),
                                            str(tmp_path), "--out", str(out)]),
    }
    (tmp_path / "x.csv").write_text("a.jpg,1\n")
    for name, run in runs.items():
        out = tmp_path / name
        before = _real_folder(out)
        capsys.readouterr()
        assert run(out) == 1, name
        err = _one_error_line(capsys.readouterr().err)
        assert str(out) in err and "not empty" in err, (name, err)
        assert _snapshot(out) == before, name
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_a_smaller_rerun_replaces_the_earlier_set_whole(tmp_path: Path) -> None:
    from pose_flow import synthetic as pose_synthetic
    from synthface import attributes

    out = tmp_path / "attr"
    common = ["--size", "16", "--test_a", "1", "--test_b", "1"]
    assert attributes.main([str(out), "--train_a", "5", "--train_b", "5", *common]) == 0
    assert attributes.main([str(out), "--train_a", "2", "--train_b", "3", *common]) == 0
    man = json.loads((out / "manifest.json").read_text())
    for split in ("trainA", "trainB"):
        listed = sorted(Path(i["file"]).name for i in man["sets"][split])
        assert sorted(p.name for p in (out / split).iterdir()) == listed
    assert len(man["sets"]["trainA"]) == 2

    pose = tmp_path / "pose"
    base = [str(pose), "--clips", "1", "--frames", "2", "--size", "16", "--drive_frames", "2"]
    assert pose_synthetic.main([*base, "--identities", "4"]) == 0
    assert pose_synthetic.main([*base, "--identities", "2"]) == 0
    man = json.loads((pose / "manifest.json").read_text())
    assert len(list((pose / "train").iterdir())) == len({c["folder"].split("/")[1]
                                                         for c in man["train"]})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["attr", "pose"]  # no temp left


def test_a_failed_regeneration_keeps_the_earlier_set(tmp_path: Path, monkeypatch) -> None:
    from synthface import attributes

    out = tmp_path / "attr"
    common = ["--size", "16", "--test_a", "1", "--test_b", "1", "--train_b", "2"]
    assert attributes.main([str(out), "--train_a", "2", *common]) == 0
    before = _snapshot(out)

    real, calls = attributes.render_with, []

    def fails_third(*a, **k):  # the disk fills up after two new images
        calls.append(1)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(*a, **k)

    monkeypatch.setattr(attributes, "render_with", fails_third)
    assert attributes.main([str(out), "--train_a", "3", "--seed", "1", *common]) == 1
    assert _snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["attr"]
