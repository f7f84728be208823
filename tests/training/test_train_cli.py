"""train.py and the loop's refusals: abbreviations, existing runs, changed resumes, --config,
--dry-run validation, progress on a pipe, per-rank CUDA devices."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import noise_images as _data

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
import train as train_cli  # noqa: E402
from training.checkpoint import load_checkpoint  # noqa: E402
from training.distributed import resolve_device  # noqa: E402
from training.progress import PlainProgress, progress  # noqa: E402


def _argv(tmp: Path, name: str = "r", *extra: str) -> list[str]:
    return ["--model", "glow", "-n", name, str(tmp / "data"), "--n_flow", "1", "--n_block", "2",
            "--hidden", "4", "--img_size", "8", "--n_sample", "2", "--batch", "4", "--iter", "2",
            "--device", "cpu", "--workers", "0", "--sample_every", "0", "--save_every", "0",
            "--log_every", "1", "--no_progress", "--checkpoint_dir", str(tmp / "ck"),
            "--result_dir", str(tmp / "res"), *extra]


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    _data(tmp_path / "data")
    return tmp_path


def test_abbreviated_flags_are_refused_everywhere(tmp: Path, capsys) -> None:
    # --mod used to be taken as --model by the main parser (a Glow trained instead of AD-flow).
    with pytest.raises(SystemExit) as ex:
        train_cli.main(["--mod", "ad-flow", "-n", "x", str(tmp / "data"), "--dry-run"])
    assert ex.value.code == 2 and "--mod" in capsys.readouterr().err
    import demo
    import evaluate
    import preprocess
    from lrw import synthetic
    from talking.cli import build_parser as test_parser
    parsers = [train_cli.build_parser("glow"), test_parser("ad-flow"),
               evaluate.build_parser("ad-flow"), preprocess.build_parser()]
    assert all(p.allow_abbrev is False for p in parsers)
    for mod in (demo, synthetic):
        with pytest.raises(SystemExit):
            mod.main(["--tin"] if mod is demo else ["x", "--word", "2"])


def test_rerun_of_an_existing_name_is_refused_unless_force(tmp: Path, capsys) -> None:
    assert train_cli.main(_argv(tmp)) == 0
    log = tmp / "res" / "sample_r" / "log.jsonl"
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines()]
    assert steps == [1, 2]
    capsys.readouterr()
    assert train_cli.main(_argv(tmp)) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--resume" in err and "--force" in err
    assert err.count("\n") == 1
    assert [json.loads(x)["step"] for x in log.read_text().splitlines()] == [1, 2]
    assert train_cli.main(_argv(tmp, "r", "--force")) == 0
    assert [json.loads(x)["step"] for x in log.read_text().splitlines()] == [1, 2]


def test_resume_refuses_changed_flags_fills_missing_ones_and_saves_the_scaler(
        tmp: Path, capsys) -> None:
    assert train_cli.main(_argv(tmp, "r", "--lr", "0.002", "--seed", "5")) == 0
    ck = load_checkpoint(tmp / "ck" / "r" / "last.pt")
    assert "scaler" in ck and ck["config"]["train"]["data"]["items"] == 8
    capsys.readouterr()
    # A changed learning rate or architecture breaks the bit-for-bit promise: refused.
    for change in (["--lr", "0.01"], ["--n_flow", "2"], ["--batch", "8"]):
        assert train_cli.main(_argv(tmp, "r", "--resume", "--iter", "3", *change)) == 1
        err = capsys.readouterr().err
        assert "--allow_changes" in err and change[0] in err
    # Flags not given come from the checkpoint (lr 0.002, seed 5 were not repeated here).
    argv = [a for a in _argv(tmp, "r", "--resume", "--iter", "3")]
    assert train_cli.main(argv) == 0
    ck = load_checkpoint(tmp / "ck" / "r" / "last.pt")
    assert ck["step"] == 3 and ck["config"]["train"]["lr"] == 0.002
    assert ck["config"]["train"]["seed"] == 5
    # Accepted explicitly: a warning names the change.
    assert train_cli.main(_argv(tmp, "r", "--resume", "--iter", "4", "--lr", "0.001",
                                "--allow_changes")) == 0
    assert "--lr 0.002 -> 0.001" in capsys.readouterr().out
    # Data that changed under the run is a change too.
    _data(tmp / "data", n=12)
    assert train_cli.main(_argv(tmp, "r", "--resume", "--iter", "5")) == 1
    assert "items 8 -> 12" in capsys.readouterr().err


def test_dry_run_validates_first(tmp: Path, capsys) -> None:
    assert train_cli.main(_argv(tmp, "d", "--img_size", "10", "--dry-run")) == 1
    assert "not divisible" in capsys.readouterr().err
    assert train_cli.main(_argv(tmp, "d", "--batch", "0", "--dry-run")) == 1
    assert "--batch" in capsys.readouterr().err
    assert train_cli.main(_argv(tmp, "d", "--dry-run")) == 0
    assert json.loads(capsys.readouterr().out)["model_config"]["img_size"] == 8


def test_config_file_yaml_json_and_a_runs_own_config(tmp: Path, capsys) -> None:
    yml = tmp / "c.yaml"
    yml.write_text("model: glow\nn_flow: 3\nlr: 0.005\naffine: true\n")
    argv = [a for a in _argv(tmp, "c", "--dry-run", "--config", str(yml))]
    argv.remove("--n_flow")
    argv.remove("1")
    assert train_cli.main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model_config"]["n_flow"] == 3 and out["model_config"]["affine"] is True
    assert out["train"]["lr"] == 0.005
    # The command line overrides the file.
    assert train_cli.main(argv + ["--lr", "0.0007"]) == 0
    assert json.loads(capsys.readouterr().out)["train"]["lr"] == 0.0007
    # A run's resolved config.json reproduces the run (model flags, data, batch).
    assert train_cli.main(_argv(tmp, "orig", "--n_flow", "2", "--lr", "0.003")) == 0
    capsys.readouterr()
    cfg = tmp / "res" / "sample_orig" / "config.json"
    assert train_cli.main(["-n", "again", "--config", str(cfg), "--dry-run"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model_config"]["n_flow"] == 2 and out["train"]["lr"] == 0.003
    assert out["data_dir"] == str(tmp / "data") and out["train"]["name"] == "again"
    bad = tmp / "bad.json"
    bad.write_text('{"n_flo": 3}')
    assert train_cli.main(["--config", str(bad), str(tmp / "data"), "--dry-run"]) == 1
    err = capsys.readouterr().err
    assert "bad.json" in err and "n_flo" in err
    bad.write_text('{"n_flow": "three"}')
    assert train_cli.main(["--config", str(bad), str(tmp / "data"), "--dry-run"]) == 1
    assert "n_flow" in capsys.readouterr().err


def test_progress_on_a_pipe_prints_a_few_plain_lines() -> None:
    out = io.StringIO()
    bar = progress(1000, "glow:x", file=out)
    assert isinstance(bar, PlainProgress)
    for _ in range(1000):
        bar.update(1)
        bar.set_postfix({"loss": "1.0"})
    bar.close()
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 20 and lines[-1].startswith("glow:x: 1000/1000 it (100%)")
    assert progress(10, "x", enabled=False) is None


def test_cuda_index_is_mapped_per_local_rank(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert resolve_device("cuda:1", local_rank=0, local_world=2) == torch.device("cuda:1")
    assert resolve_device("cuda:1", local_rank=1, local_world=2) == torch.device("cuda:2")
    assert resolve_device("cuda:2", local_rank=0, local_world=1) == torch.device("cuda:2")
    with pytest.raises(ValueError, match="need GPUs 3..4"):
        resolve_device("cuda:3", local_rank=0, local_world=2)
