"""Shared training infrastructure: checkpoints, resume, DDP, NaN guard, Ctrl-C, train.py CLI."""

from __future__ import annotations

import copy
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import run_device
from PIL import Image

from glow.io import CheckpointError
from plain_glow.recipe import RECIPE as glow_recipe
from training.checkpoint import load_checkpoint, save_checkpoint
from training.config import TrainConfig
from training.loop import TrainingStopped, train
from training.recipe import DataInfo, Recipe

DEVICE = str(run_device())  # the tests that train or run test.py (pytest --device)

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
import train as train_cli  # noqa: E402


def _png_folder(root: Path, n: int = 16, size: int = 20, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        sub = root / f"w{i % 2}"
        sub.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
            sub / f"img_{i:03d}.png")
    return root


def _tiny_cfgs(tmp: Path, name: str, iters: int, **kw) -> tuple[glow_recipe.Config, TrainConfig]:
    mcfg = glow_recipe.Config(n_flow=2, n_block=2, hidden=8, img_size=8, n_sample=4)
    tcfg = TrainConfig(name=name, batch=4, iter=iters, lr=1e-3, seed=3, device=DEVICE, workers=0,
                       sample_every=0, save_every=0, log_every=1, progress=False,
                       checkpoint_dir=str(tmp / "ckpt"), result_dir=str(tmp / "res"), **kw)
    return mcfg, tcfg


def test_checkpoint_round_trip_and_refusals(tmp_path: Path) -> None:
    m = glow_recipe.build(glow_recipe.Config(n_flow=1, n_block=2, hidden=4, img_size=8))
    opt = torch.optim.Adam(m.parameters())
    p = save_checkpoint(tmp_path / "a" / "last.pt", model_name="glow",
                        model_config={"n_flow": 1}, train_config={}, weights=m.state_dict(),
                        optimizer=opt.state_dict(), step=7)
    assert not list(p.parent.glob("*.tmp")), "no temp file left behind"
    ck = load_checkpoint(p, expect_model="glow")
    assert ck["step"] == 7 and ck["config"]["model"] == {"n_flow": 1}
    for k, v in m.state_dict().items():
        assert torch.equal(ck["weights"][k], v)
    with pytest.raises(CheckpointError, match="expected 'ad-flow'"):
        load_checkpoint(p, expect_model="ad-flow")

    # Truncated: a one-line error.
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(trunc)
    assert "\n" not in str(err.value) and "trunc.pt" in str(err.value)

    # A checkpoint that carries code is refused and never run.
    marker = tmp_path / "ran.txt"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    evil = tmp_path / "evil.pt"
    torch.save({"format": "flowdisentangle-checkpoint", "payload": Evil()}, evil)
    with pytest.raises(CheckpointError, match="carries code"):
        load_checkpoint(evil)
    assert not marker.exists()

    # A plain state dict is not one of ours.
    torch.save({"x": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a checkpoint of this project"):
        load_checkpoint(tmp_path / "foreign.pt")


def test_resume_is_bit_for_bit(tmp_path: Path) -> None:
    data = _png_folder(tmp_path / "data", n=12)
    mcfg, tcfg = _tiny_cfgs(tmp_path / "straight", "r", 6)
    train(glow_recipe, mcfg, tcfg, data, say=lambda *a: None)
    straight = load_checkpoint(tmp_path / "straight/ckpt/r/last.pt")

    mcfg, tcfg = _tiny_cfgs(tmp_path / "split", "r", 4)  # crosses an epoch boundary (3/epoch)
    train(glow_recipe, mcfg, tcfg, data, say=lambda *a: None)
    mcfg, tcfg = _tiny_cfgs(tmp_path / "split", "r", 6, resume=True)
    summary = train(glow_recipe, mcfg, tcfg, data, say=lambda *a: None)
    resumed = load_checkpoint(tmp_path / "split/ckpt/r/last.pt")
    assert summary["step"] == resumed["step"] == straight["step"] == 6
    for k, v in straight["weights"].items():
        assert torch.equal(v, resumed["weights"][k]), k
    log = (tmp_path / "split/res/sample_r/log.jsonl").read_text().splitlines()
    assert len(log) == 6, "a resumed run continues the log without duplicates"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, tmp: str, data: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world),
                      RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    mcfg, tcfg = _tiny_cfgs(Path(tmp), "ddp", 3, adam_eps=1.0)
    train(glow_recipe, mcfg, tcfg, data, say=lambda *a: None)


@pytest.mark.slow
def test_ddp_two_processes_match_one_process(tmp_path: Path) -> None:
    data = _png_folder(tmp_path / "data", n=16)
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path / "two"), str(data)), nprocs=2,
             join=True)
    # Adam with a large epsilon makes each update linear in the gradient, so the comparison
    # checks DDP's gradient averaging itself rather than Adam's sign-like steps on tiny gradients.
    mcfg, tcfg = _tiny_cfgs(tmp_path / "one", "ddp", 3, adam_eps=1.0)
    train(glow_recipe, mcfg, tcfg, data, say=lambda *a: None)
    one = load_checkpoint(tmp_path / "one/ckpt/ddp/last.pt")["weights"]
    two = load_checkpoint(tmp_path / "two/ckpt/ddp/last.pt")["weights"]
    init = glow_recipe.build(mcfg).state_dict()
    moved = False
    for k, v in one.items():
        torch.testing.assert_close(two[k].float(), v.float(), atol=1e-6, rtol=1e-4)
        moved |= not torch.equal(v, init[k]) and v.is_floating_point()
    assert moved


@dataclass
class _Cfg:
    bad_from: int = 2


def _fake_recipe(fail_from: int, interrupt_at: int | None = None) -> Recipe:
    """A minimal recipe whose loss turns NaN (or whose step is interrupted) at a given step."""

    def losses(model, batch, ctx):
        if interrupt_at is not None and ctx.step == interrupt_at:
            raise KeyboardInterrupt
        loss = (model(batch[0]) ** 2).mean()
        return {"mse": loss * (float("nan") if ctx.step >= fail_from else 1.0)}

    r = Recipe()
    vars(r).update(
        NAME="fake", Config=_Cfg, validate=lambda c: None,
        build=lambda c, data=None: torch.nn.Conv2d(3, 3, 1),
        dataset=lambda c, d: ([(torch.rand(3, 4, 4), 0) for _ in range(8)], DataInfo(d)),
        losses=losses, loss_weights=lambda c: {"mse": 1.0},
        sample=lambda m, b, ctx: (b[0], 2),
    )
    return r


def test_nan_losses_skip_then_stop_with_good_checkpoint(tmp_path: Path) -> None:
    tcfg = TrainConfig(name="nan", batch=2, iter=50, device="cpu", workers=0, sample_every=2,
                       save_every=0, max_bad_steps=3, progress=False,
                       checkpoint_dir=str(tmp_path / "c"), result_dir=str(tmp_path / "r"))
    with pytest.raises(TrainingStopped, match="3 non-finite losses in a row"):
        train(_fake_recipe(fail_from=2), _Cfg(), tcfg, tmp_path, say=lambda *a: None)
    ck = load_checkpoint(tmp_path / "c/nan/last.pt")
    assert ck["step"] == 2
    assert all(torch.isfinite(v).all() for v in ck["weights"].values())


class _InfGrad(torch.autograd.Function):
    """Identity forward; an infinite gradient backward (a finite loss overflowing in backward)."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("inf")


@pytest.mark.parametrize("grad_clip", [0.0, 5.0])
def test_infinite_gradients_skip_the_step_and_keep_the_weights_finite(tmp_path: Path,
                                                                     grad_clip) -> None:
    """A finite loss whose gradient overflows is skipped like a non-finite loss: no update
    (clipping an infinite norm would have written NaN into every weight), then a stop."""
    base = _fake_recipe(fail_from=99)

    def losses(model, batch, ctx):
        out = model(batch[0])
        if ctx.step >= 2:
            out = _InfGrad.apply(out)
        return {"mse": (out ** 2).mean()}

    rec = copy.copy(base)
    rec.losses = losses
    tcfg = TrainConfig(name="inf", batch=2, iter=50, device="cpu", workers=0, sample_every=2,
                       save_every=0, max_bad_steps=3, progress=False, grad_clip=grad_clip,
                       checkpoint_dir=str(tmp_path / "c"), result_dir=str(tmp_path / "r"))
    said = []
    with pytest.raises(TrainingStopped, match="3 non-finite gradients in a row"):
        train(rec, _Cfg(), tcfg, tmp_path, say=said.append)
    assert sum("non-finite gradient at iteration" in str(x) for x in said) == 2
    ck = load_checkpoint(tmp_path / "c/inf/last.pt")
    assert ck["step"] == 2
    assert all(torch.isfinite(v).all() for v in ck["weights"].values())


def test_low_memory_infinite_gradients_step_nothing(tmp_path: Path) -> None:
    """With Adam stepped inside a low-memory backward, an overflowing gradient still skips the
    whole step: the weights after the bad steps are the last good ones, bit for bit."""
    built = []

    def build(cfg, data=None):
        built.append(glow_recipe.build(cfg))
        return built[-1]

    def losses(model, batch, ctx):
        terms = glow_recipe.losses(model, batch, ctx)
        if ctx.step >= 2:
            terms["bpd"] = _InfGrad.apply(terms["bpd"])
        return terms

    rec = SimpleNamespace(**{k: getattr(glow_recipe, k) for k in dir(glow_recipe)
                             if not k.startswith("_")})
    rec.build, rec.losses = build, losses
    data = _png_folder(tmp_path / "data", n=8, size=8)
    mcfg, tcfg = _tiny_cfgs(tmp_path, "inf", 50, max_bad_steps=3)
    tcfg.save_every = 2
    mcfg.low_memory = True
    with pytest.raises(TrainingStopped, match="3 non-finite gradients in a row"):
        train(rec, mcfg, tcfg, data, say=lambda *a: None)
    good = load_checkpoint(tmp_path / "ckpt/inf/step_0000002.pt")["weights"]
    now = built[0].state_dict()
    for k, v in good.items():
        assert torch.equal(now[k], v), k
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in built[0].parameters())


def test_step_only_is_step_for_those_parameters() -> None:
    """training.optim.step_only: the chosen parameters get exactly what step() gives them (with
    their own group's lr), the others and their state stay untouched."""
    from training.optim import Adam, step_only

    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(3, 2)) for _ in range(4)]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    start = [p.detach().clone() for p in a]
    opt_a = Adam([{"params": a[:2]}, {"params": a[2:], "lr": 0.5}], lr=0.1, foreach=False)
    opt_b = Adam([{"params": b[:2]}, {"params": b[2:], "lr": 0.5}], lr=0.1, foreach=False)
    for _ in range(2):
        for ps in (a, b):
            for i, p in enumerate(ps):
                p.grad = torch.full_like(p, float(i + 1))
        opt_a.step()
        step_only(opt_b, [b[1], b[3]])
        step_only(opt_b, [b[0]])
    for i in (0, 1, 3):
        assert torch.equal(a[i], b[i]), i
    assert torch.equal(b[2], start[2]) and b[2] not in opt_b.state
    assert not torch.equal(a[2], start[2])
    assert len(opt_b.param_groups) == 2 and opt_b.param_groups[1]["lr"] == 0.5
    with pytest.raises(ValueError, match="not in the optimiser"):
        step_only(opt_b, [torch.nn.Parameter(torch.ones(1))])


def test_ctrl_c_writes_a_checkpoint(tmp_path: Path) -> None:
    tcfg = TrainConfig(name="int", batch=2, iter=50, device="cpu", workers=0, sample_every=0,
                       save_every=0, progress=False,
                       checkpoint_dir=str(tmp_path / "c"), result_dir=str(tmp_path / "r"))
    summary = train(_fake_recipe(fail_from=99, interrupt_at=3), _Cfg(), tcfg, tmp_path,
                    say=lambda *a: None)
    assert summary["interrupted"] and summary["step"] == 3
    assert load_checkpoint(tmp_path / "c/int/last.pt")["step"] == 3


def test_train_cli_writes_samples_and_checkpoint(tmp_path: Path, monkeypatch, capsys) -> None:
    data = _png_folder(tmp_path / "data", n=8, size=24)
    (data / "w0" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (data / "notes.txt").write_text("stray file")
    monkeypatch.chdir(tmp_path)
    rc = train_cli.main(["-n", "cli", str(data), "--iter", "3", "--img_size", "16",
                         "--n_flow", "2", "--n_block", "2", "--hidden", "8", "--batch", "4",
                         "--sample_every", "2", "--workers", "0", "--n_sample", "4",
                         "--device", "cpu", "--no_progress"])
    assert rc == 0
    assert (tmp_path / "checkpoint/cli/last.pt").is_file()
    samples = sorted((tmp_path / "result/sample_cli").glob("0*.png"))
    assert [p.name for p in samples] == ["000002.png", "000003.png"]
    assert (tmp_path / "result/sample_cli/loss.png").is_file()
    assert (tmp_path / "result/sample_cli/config.json").is_file()
    ck = load_checkpoint(tmp_path / "checkpoint/cli/last.pt", expect_model="glow")
    assert ck["step"] == 3 and ck["config"]["model"]["img_size"] == 16
    from glow import load_glow

    g = load_glow(tmp_path / "checkpoint/cli/last.pt")
    assert g.z_shapes() == [(6, 8, 8), (24, 4, 4)]


@pytest.mark.parametrize("case", ["missing", "empty", "img_size", "resume"])
def test_train_cli_bad_input_is_one_line_error(tmp_path: Path, monkeypatch, capsys,
                                               case: str) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    data = _png_folder(tmp_path / "data", n=4)
    args = {"missing": [str(tmp_path / "nope")], "empty": [str(tmp_path / "empty")],
            "img_size": [str(data), "--img_size", "18", "--n_block", "2"],
            "resume": [str(data), "--resume"]}[case]
    rc = train_cli.main(["-n", "bad", "--device", "cpu", "--no_progress", *args])
    err = capsys.readouterr().err.strip()
    assert rc == 1
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    assert {"missing": "nope", "empty": "empty", "img_size": "divisible",
            "resume": "last.pt"}[case] in err


def test_amp_on_a_cpu_without_fast_bf16_is_refused_before_anything_is_touched(
        tmp_path: Path, monkeypatch, capsys) -> None:
    """Without oneDNN bf16 (an AVX2-only CPU) torch's bf16 runs a Glow step ~17x slower than
    float32: --amp is a one-line error, and an earlier run's files stay."""
    import training.loop as loop

    monkeypatch.chdir(tmp_path)
    data = _png_folder(tmp_path / "data", n=4)
    old = tmp_path / "checkpoint/amp/last.pt"  # what --force would delete
    old.parent.mkdir(parents=True)
    old.write_text("earlier run")
    monkeypatch.setattr(loop, "cpu_has_fast_bf16", lambda: False)
    rc = train_cli.main(["-n", "amp", "--device", "cpu", "--no_progress", "--force", "--amp",
                         str(data), "--img_size", "8", "--n_block", "2", "--n_flow", "1",
                         "--batch", "2"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and err.startswith("error: --amp") and "\n" not in err
    assert "drop --amp" in err and old.read_text() == "earlier run"
    cfg = TrainConfig(amp=True, device="cpu")
    monkeypatch.setattr(loop, "cpu_has_fast_bf16", lambda: True)
    assert loop.amp_dtype(cfg, torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ValueError, match="fp16 needs CUDA"):
        loop.amp_dtype(TrainConfig(amp=True, amp_dtype="fp16"), torch.device("cpu"))
    assert loop.amp_dtype(TrainConfig(amp=False), torch.device("cpu")) is None
    monkeypatch.setattr(loop, "cpu_has_fast_bf16", lambda: False)  # no advice to try bf16
    with pytest.raises(ValueError, match="drop --amp"):
        loop.amp_dtype(TrainConfig(amp=True, amp_dtype="fp16"), torch.device("cpu"))


def test_dry_run_prints_resolved_config(tmp_path: Path, capsys) -> None:
    assert train_cli.main(["-n", "x", str(tmp_path), "--dry-run", "--no_lu", "--affine"]) == 0
    out = capsys.readouterr().out
    assert '"conv_lu": false' in out and '"affine": true' in out and '"batch": 16' in out


@pytest.mark.parametrize("grad_clip", [0.0, 5.0])
def test_low_memory_training_matches_plain_training(tmp_path: Path, grad_clip,
                                                    monkeypatch) -> None:
    """--low_memory also zeroes gradients in place and (without clipping) steps Adam on each
    flow's parameters inside backward; none of it may change
    a number: three steps land on the same weights and Adam state as the plain run (Adam's
    eps 1 keeps the update linear in the gradient, so float32 rounding in the recomputed
    backward is not amplified where a gradient is ~0)."""
    import training.loop as loop

    handed: list[int] = []

    class Spy(loop.StepInBackward):
        def __call__(self, params):
            handed.append(len(params))
            super().__call__(params)

    monkeypatch.setattr(loop, "StepInBackward", Spy)
    data = _png_folder(tmp_path / "data", n=8, size=8)
    weights, states = {}, {}
    for low in (False, True):
        mcfg, tcfg = _tiny_cfgs(tmp_path / str(low), "lm", 3, adam_eps=1.0, grad_clip=grad_clip)
        tcfg.lr = 1e-2
        mcfg.low_memory = low
        train(glow_recipe, mcfg, tcfg, data, say=lambda *a: None)
        ck = load_checkpoint(tmp_path / str(low) / "ckpt/lm/last.pt")
        weights[low], states[low] = ck["weights"], ck["optimizer"]["state"]
    # in backward only with --low_memory and no clipping: 3 steps x 4 flows
    assert len(handed) == (12 if grad_clip == 0 else 0)
    assert weights[True].keys() == weights[False].keys()
    for k, v in weights[False].items():
        torch.testing.assert_close(weights[True][k], v, rtol=1e-5, atol=1e-6)
    assert states[True].keys() == states[False].keys()
    for i, st in states[False].items():  # every parameter stepped exactly 3 times
        assert float(states[True][i]["step"]) == float(st["step"]) == 3.0
        torch.testing.assert_close(states[True][i]["exp_avg"], st["exp_avg"], rtol=1e-4,
                                   atol=1e-7)
    moved = max(float((weights[False][k] - v).abs().max()) for k, v in
                glow_recipe.build(_tiny_cfgs(tmp_path, "x", 1)[0]).state_dict().items()
                if k in weights[False] and "initialized" not in k)
    assert moved > 1e-4, "the runs must have trained"


@pytest.mark.parametrize("kind", [dict(foreach=False), dict(foreach=True), dict(fused=True)])
def test_lean_adam_is_torch_adam(kind):
    """training.optim.Adam: the same weights, state and state dict as torch.optim.Adam, and
    its calls leave torch._dynamo unimported (checked in a fresh process below)."""
    from training.optim import Adam

    torch.manual_seed(0)
    ref = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 2))
    ours = copy.deepcopy(ref)
    args = dict(lr=1e-2, betas=(0.5, 0.999), eps=1e-6, **kind)
    opt_ref = torch.optim.Adam(ref.parameters(), **args)
    opt = Adam(ours.parameters(), **args)
    for i in range(4):
        x = torch.randn(8, 5)
        for net, o in ((ref, opt_ref), (ours, opt)):
            o.zero_grad(set_to_none=i % 2 == 0)
            net(x).square().mean().backward()
            o.step()
    for a, b in zip(ref.parameters(), ours.parameters(), strict=True):
        assert torch.equal(a, b)
    sd = opt.state_dict()
    assert str(sd["param_groups"]) == str(opt_ref.state_dict()["param_groups"])
    back = torch.optim.Adam(copy.deepcopy(ours).parameters(), **args)
    back.load_state_dict(sd)  # a checkpoint of ours loads into torch's, and the reverse
    opt.load_state_dict(opt_ref.state_dict())
    assert torch.equal(opt.state[next(ours.parameters())]["exp_avg"],
                       opt_ref.state[next(ref.parameters())]["exp_avg"])


def test_lean_adam_does_not_import_dynamo():
    code = ("import sys, torch; from training.optim import Adam; "
            "p = torch.nn.Parameter(torch.ones(3)); o = Adam([p]); p.sum().backward(); "
            "o.step(); o.load_state_dict(o.state_dict()); o.zero_grad(); "
            "sys.exit(1 if 'torch._dynamo' in sys.modules else 0)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("world,rank,first,last", [(1, 0, 0, 11), (1, 0, 5, 9), (2, 1, 3, 12)])
def test_run_sampler_gives_the_per_epoch_loaders_batches(world, rank, first, last) -> None:
    """One loader over RunSampler for a whole run reads exactly the batches, in the same order,
    that a fresh loader per epoch (the sampler's epoch permutation from the resume offset,
    drop_last) reads; the run's worker processes then start once."""
    from torch.utils.data import DataLoader

    from training.distributed import ResumableSampler, RunSampler

    data = list(range(23))  # 23 items: partial batches dropped, epochs of 5 (world 1) steps
    batch = 4 // world
    sampler = ResumableSampler(data, world, rank, seed=7)
    spe = sampler.num_samples // batch
    expected, step = [], first
    while step < last:
        epoch, offset = divmod(step, spe)
        sampler.set_epoch(epoch)
        sampler.start_index = offset * batch
        for b in DataLoader(data, batch_size=batch, sampler=sampler, drop_last=True):
            if step >= last:
                break
            expected.append(b.tolist())
            step += 1
    run = RunSampler(ResumableSampler(data, world, rank, seed=7), batch, first, last)
    got = [b.tolist() for b in DataLoader(data, batch_size=batch, sampler=run, drop_last=True)]
    assert got == expected and len(got) == last - first and len(run) == (last - first) * batch
    assert len({tuple(b) for b in got[:spe]}) == min(spe, len(got))
