"""N torchrun processes = 1 process, per registered recipe (gloo, 2 CPU processes).

Every recipe in ``training.registry.names()`` is trained for a few steps by two processes with
global batch B and by one process with batch B; the weights must agree. A recipe that cannot be
exact declares ``DDP_EXACT = False`` with a ``DDP_NOTE``; for it the check is that torchrun is
refused with a one-line error naming the model and the reason, on every rank, before any step.

Adam with a large epsilon makes each update linear in the gradient, so the comparison checks the
gradients themselves (DDP's averaging, the global draws, the global partners and negatives)
rather than Adam's sign-like first steps, where a tiny gradient difference looks like a large one.
"""

from __future__ import annotations

import copy
import gc
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn.parallel import DistributedDataParallel

from training import registry
from training.checkpoint import load_checkpoint, save_checkpoint
from training.config import TrainConfig
from training.loop import train

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _png_folder(root: Path, n: int = 16, size: int = 8) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        sub = root / "train" / f"w{i % 2}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
            sub / f"w{i % 2}_{i:05d}_01.png")
    return root / "train"


def _faces(root: Path, n: int = 16, size: int = 16) -> Path:
    """Rendered faces with varied mouths: MI-flow's condition is the mouth window."""
    from lrw.synthetic import MouthState, render, sample_identity

    rng = np.random.default_rng(0)
    ids = [sample_identity(rng) for _ in range(4)]
    folder = root / "train" / "WORD"
    folder.mkdir(parents=True)
    for i in range(n):
        img = render(ids[i % 4], MouthState(float(rng.uniform(0, 1)), float(rng.uniform(-1, 1))),
                     size)
        Image.fromarray(img).save(folder / f"WORD_{i:05d}_01.png")
    return root / "train"


def _tiny_glow_file(path: Path, size: int = 16) -> Path:
    from glow import Glow

    torch.manual_seed(0)
    g = Glow(3, n_flow=2, n_block=2, hidden=16, img_size=size)
    g.initialize(torch.rand(8, 3, size, size) - 0.5)
    with torch.no_grad():  # non-trivial couplings and priors
        for p in g.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return save_checkpoint(path, model_name="glow", model_config=g.config(), train_config={},
                           weights=g.state_dict())


def _setup(name: str, tmp: Path, variant: str = "") -> tuple[object, Path, dict]:
    """(model config, DATA_DIR, TrainConfig overrides) of a tiny run of recipe ``name``
    (``variant``: a second configuration of the same recipe, e.g. pose-flow's ``warp``).

    A recipe registered without a case here fails the test: new recipes must be covered."""
    recipe = registry.get(name)
    if name == "glow":
        # low_memory: under DDP the recomputed gradients must go through autograd, where
        # DDP's hooks see them (glow.memory writes them into .grad only without a group)
        return (recipe.Config(n_flow=2, n_block=2, hidden=8, img_size=8, n_sample=2,
                              low_memory=variant == "low_memory"),
                _png_folder(tmp / "data"), {})
    if name == "ad-flow":
        from lrw.synthetic import SyntheticConfig, generate

        generate(SyntheticConfig(out=str(tmp / "data"), words=3, speakers=2, clips=2, frames=4,
                                 size=16, queries=1, sources=1), log=lambda *_: None)
        glow = _tiny_glow_file(tmp / "glow.pt")
        # --init lstsq (the default): each rank encodes every other clip and the sums are
        # all-reduced; diagnostics off (sample grids are off too). A large ridge starts the
        # encoders away from the structural optimum (at the default the init is so close to it
        # that three steps barely move them), and the classifier learns at --lr's pace.
        return (recipe.Config(glow=str(glow), n_frames=4, cls_hidden="8", init="lstsq",
                              init_ridge=1.0, cls_lr=1e-2, diag_pairs=0, n_sample_clips=1),
                tmp / "data" / "train", {})
    if name == "mi-flow":
        # the CLUB penalty on, so its negatives (all pairs of the global batch) count
        return (recipe.Config(n_flow=1, n_block=2, hidden=8, img_size=16, n_sample=2,
                              mi_weight=1.0, mi_hidden=8, mi_cond_pool=2),
                _faces(tmp / "data"), {"grad_clip": 0.0})
    if name == "pose-flow":
        from pose_flow.synthetic import PoseSetConfig, generate

        generate(PoseSetConfig(str(tmp / "data"), identities=4, clips=1, frames=3, size=16,
                               eval_identities=2, targets=2, drive_frames=3), log=lambda *_: None)
        # warp: each frame's partner warped to it, per rank, inside its own quadruplets
        return (recipe.Config(img_size=16, n_flow=1, n_block=2, n_header=2, hidden=8,
                              reference=variant or "none", affine=variant != "warp"),
                tmp / "data", {})
    raise AssertionError(f"no DDP case for the registered recipe '{name}': add one to {__file__}")


def _tcfg(tmp: Path, iters: int, extra: dict) -> TrainConfig:
    kw = dict(name="ddp", batch=4, iter=iters, lr=1e-2, seed=3, device="cpu", workers=0,
              sample_every=0, save_every=0, log_every=1, progress=False, adam_eps=1.0,
              checkpoint_dir=str(tmp / "ckpt"), result_dir=str(tmp / "res"))
    kw.update(extra)
    return TrainConfig(**kw)


def _worker(rank: int, world: int, port: int, name: str, mcfg, data: str, tmp: str,
            extra: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world),
                      RANK=str(rank), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    out = Path(tmp)
    gc.disable()  # only train() itself may free the DDP wrapper below
    try:
        train(registry.get(name), mcfg, _tcfg(out, 3, extra), data, say=lambda *a: None)
    except ValueError as exc:  # a refusal: recorded for the parent to check
        (out / f"error_{rank}.txt").write_text(str(exc))
    # no DDP wrapper (in a reference cycle, holding the process group) outlives the group
    alive = [o for o in gc.get_objects() if isinstance(o, DistributedDataParallel)]
    if alive:
        (out / f"error_{rank}.txt").write_text(f"{len(alive)} DDP wrapper(s) alive after train()")


def _spawn(name: str, mcfg, data: Path, tmp: Path, extra: dict) -> None:
    import torch.multiprocessing as mp

    tmp.mkdir(parents=True, exist_ok=True)
    mp.spawn(_worker, args=(2, _free_port(), name, mcfg, str(data), str(tmp), extra), nprocs=2,
             join=True)


@pytest.fixture
def one_thread():
    """The single-process runs use one thread, as each spawned rank does: with the default two,
    oneDNN sums in another order and float32 rounding alone drifts by ~2e-3 of the update in
    pose-flow's triangular solves."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("case", [*registry.names(), "pose-flow:warp", "glow:low_memory"])
def test_two_processes_train_what_one_process_trains(case: str, tmp_path: Path,
                                                     one_thread) -> None:
    name, _, variant = case.partition(":")
    recipe = registry.get(name)
    if not recipe.DDP_EXACT:
        note = recipe.DDP_NOTE
        assert len(note) > 20, f"{name}: DDP_EXACT = False needs a DDP_NOTE saying why"
        _spawn(name, recipe.Config(), tmp_path / "data", tmp_path / "two", {})
        for rank in range(2):
            msg = (tmp_path / "two" / f"error_{rank}.txt").read_text()
            assert "\n" not in msg and name in msg and note in msg and "one process" in msg
        assert not (tmp_path / "two" / "ckpt").exists(), "refused before any checkpoint"
        return

    mcfg, data, extra = _setup(name, tmp_path, variant)
    _spawn(name, copy.deepcopy(mcfg), data, tmp_path / "two", extra)
    assert not list((tmp_path / "two").glob("error_*.txt")), \
        (tmp_path / "two" / "error_0.txt").read_text()
    train(recipe, copy.deepcopy(mcfg), _tcfg(tmp_path / "one", 3, extra), data,
          say=lambda *a: None)
    # the same start (data-dependent init included), 0 steps: how far training moved
    train(recipe, copy.deepcopy(mcfg), _tcfg(tmp_path / "init", 0, extra), data,
          say=lambda *a: None)
    one = load_checkpoint(tmp_path / "one/ckpt/ddp/last.pt")["weights"]
    two = load_checkpoint(tmp_path / "two/ckpt/ddp/last.pt")["weights"]
    init = load_checkpoint(tmp_path / "init/ckpt/ddp/last.pt")["weights"]
    assert one.keys() == two.keys()
    floats = [k for k, v in one.items() if v.is_floating_point()]
    moved = max(float((one[k].double() - init[k].double()).abs().max()) for k in floats)
    off = {k: float((one[k].double() - two[k].double()).abs().max()) for k in floats}
    worst = max(off, key=off.get)
    assert moved > 1e-4, f"{name}: training did not move the weights ({moved:.3g})"
    # float32 sums in another order differ by ~1e-7 relative; a different draw, partner or
    # negative moves the weights by a sizeable share of the whole update
    assert off[worst] <= 1e-3 * moved, \
        f"{name}: {worst} differs by {off[worst]:.3g} (training moved weights {moved:.3g})"



def _glow_argv(data: Path, out: Path) -> list[str]:
    return ["train.py", "--model", "glow", "-n", "mn", str(data), "--n_flow", "2", "--n_block",
            "2", "--hidden", "8", "--img_size", "8", "--n_sample", "2", "--batch", "4", "--iter",
            "3", "--lr", "1e-2", "--adam_eps", "1.0", "--seed", "3", "--device", "cpu",
            "--workers", "0", "--sample_every", "0", "--save_every", "0", "--no_progress",
            "--checkpoint_dir", str(out / "ckpt"), "--result_dir", str(out / "res")]


def test_two_torchrun_nodes_train_what_one_process_trains(tmp_path: Path) -> None:
    """Two ``torchrun --nnodes 2`` launches of one process each, meeting through a c10d
    rendezvous on the loopback address (as two machines would through HOST:PORT), form one
    2-process job whose weights equal one process's with the same global batch of 4."""
    root = Path(__file__).resolve().parents[2]
    data = _png_folder(tmp_path / "data")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    endpoint = f"127.0.0.1:{_free_port()}"
    launches = []
    for node in range(2):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank",
               str(node), "--nproc_per_node", "1", "--rdzv_backend", "c10d", "--rdzv_endpoint",
               endpoint, "--rdzv_id", "flowdis-test", "--max_restarts", "0",
               *_glow_argv(data, tmp_path / "two")]
        launches.append(subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=300)[0] for p in launches]
    for p, out in zip(launches, outputs, strict=True):
        assert p.returncode == 0, out[-3000:]
    assert sum("2 process(es)" in out for out in outputs) == 1, "one job of 2, one main process"
    one = subprocess.run([sys.executable, *_glow_argv(data, tmp_path / "one")], cwd=root,
                         env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    w1 = load_checkpoint(tmp_path / "one/ckpt/mn/last.pt")["weights"]
    w2 = load_checkpoint(tmp_path / "two/ckpt/mn/last.pt")["weights"]
    assert load_checkpoint(tmp_path / "two/ckpt/mn/last.pt")["step"] == 3
    for k, v in w1.items():
        torch.testing.assert_close(w2[k].float(), v.float(), atol=1e-6, rtol=1e-4, msg=k)
    cfg = json.loads((tmp_path / "two/res/sample_mn/config.json").read_text())
    assert cfg["world_size"] == 2
