"""train.py --tensorboard: the event files hold what log.jsonl and diagnostics.jsonl hold, the
sample grids as images; without the flag nothing is written and tensorboard is not imported."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from conftest import noise_images as _data
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

pytest.importorskip("tensorboard")


def _argv(tmp: Path, *extra: str) -> list[str]:
    return ["--model", "glow", "-n", "r", str(tmp / "data"), "--n_flow", "1", "--n_block", "2",
            "--hidden", "4", "--img_size", "8", "--n_sample", "2", "--batch", "4", "--iter", "4",
            "--device", "cpu", "--workers", "0", "--sample_every", "2", "--save_every", "0",
            "--log_every", "1", "--no_progress", "--checkpoint_dir", str(tmp / "ck"),
            "--result_dir", str(tmp / "res"), *extra]


def _events(run_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_event_files_read_back_equal_the_jsonl_logs(tmp_path: Path) -> None:
    from plain_glow.recipe import RECIPE as glow_recipe
    from training.config import TrainConfig
    from training.loop import train

    _data(tmp_path / "data")
    # the Glow's recipe with a held-out diagnostic, as AD-flow has one
    recipe = types.SimpleNamespace(**{k: getattr(glow_recipe, k) for k in dir(glow_recipe)
                                      if not k.startswith("__")})
    recipe.diagnostics = lambda model, ctx: {"probe": 0.25 + ctx.step,
                                             "weight_sum": float(sum(
                                                 p.sum() for p in model.parameters()))}
    mcfg = glow_recipe.Config(n_flow=1, n_block=2, hidden=4, img_size=8, n_sample=2)
    cfg = TrainConfig(name="r", batch=4, iter=4, device="cpu", workers=0, sample_every=2,
                      save_every=0, log_every=1, progress=False, tensorboard=True,
                      checkpoint_dir=str(tmp_path / "ck"), result_dir=str(tmp_path / "res"))
    train(recipe, mcfg, cfg, tmp_path / "data", say=lambda *_: None)
    run = tmp_path / "res" / "sample_r"
    acc = _events(run)
    tags = acc.Tags()

    log = _records(run / "log.jsonl")
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    keys = [k for k in log[0] if k != "step"]
    assert {"loss", "bpd", "lr", "skipped", "time"} <= set(keys)
    assert sorted(tags["scalars"]) == sorted(
        [f"train/{k}" for k in keys] + ["diagnostics/probe", "diagnostics/weight_sum"])
    for k in keys:
        got = [(e.step, e.value) for e in acc.Scalars(f"train/{k}")]
        want = [(r["step"], float(np.float32(r[k]))) for r in log]
        assert got == want, k

    diag = _records(run / "diagnostics.jsonl")
    assert [r["step"] for r in diag] == [0, 2, 4]
    for k in ("probe", "weight_sum"):
        got = [(e.step, e.value) for e in acc.Scalars(f"diagnostics/{k}")]
        assert got == [(r["step"], float(np.float32(r[k]))) for r in diag], k

    images = acc.Images("samples")
    assert [e.step for e in images] == [2, 4]
    import io

    for e in images:
        with Image.open(io.BytesIO(e.encoded_image_string)) as im:
            got = np.asarray(im.convert("RGB"))
        with Image.open(run / f"{e.step:06d}.png") as im:
            assert np.array_equal(got, np.asarray(im.convert("RGB")))


def test_resume_drops_the_interrupted_runs_later_events(tmp_path: Path) -> None:
    import train as train_cli

    _data(tmp_path / "data")
    assert train_cli.main(_argv(tmp_path, "--tensorboard", "--iter", "4")) == 0
    # a second run from the checkpoint at 4 to 6: steps 1-6 once each
    assert train_cli.main(_argv(tmp_path, "--resume", "--iter", "6")) == 0
    run = tmp_path / "res" / "sample_r"
    acc = _events(run)
    steps = [e.step for e in acc.Scalars("train/loss")]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert [e.value for e in acc.Scalars("train/loss")] == \
        [float(np.float32(r["loss"])) for r in _records(run / "log.jsonl")]
    # --force starts over: the old events go with the old log
    assert train_cli.main(_argv(tmp_path, "--force", "--iter", "2")) == 0
    assert not list(run.glob("events.out.tfevents.*"))


def test_without_the_flag_nothing_is_written_and_tensorboard_is_not_imported(
        tmp_path: Path) -> None:
    _data(tmp_path / "data")
    code = ("import sys, json; sys.path.insert(0, sys.argv[1]); import train; "
            "rc = train.main(json.loads(sys.argv[2])); "
            "print(json.dumps([rc, sorted(m for m in sys.modules if 'tensorboard' in m)]))")
    out = subprocess.run([sys.executable, "-c", code, str(ROOT), json.dumps(_argv(tmp_path))],
                         cwd=tmp_path, capture_output=True, text=True, check=True)
    rc, mods = json.loads(out.stdout.strip().splitlines()[-1])
    assert rc == 0 and mods == []
    run = tmp_path / "res" / "sample_r"
    assert (run / "log.jsonl").is_file() and not list(run.glob("events.out.tfevents.*"))


def test_help_says_how_to_open_it(capsys) -> None:
    import train as train_cli

    with pytest.raises(SystemExit):
        train_cli.main(["--model", "glow", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--tensorboard" in text and "tensorboard --logdir" in text
