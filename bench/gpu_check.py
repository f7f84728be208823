"""The GPU check's measurements (``bench/gpu_check.sh`` runs them; one section per call).

Sections (each adds its entry to the one JSON file ``--out``):

* ``throughput``: the thesis config's Glow training step (64 px, K=32, L=4, additive, LU,
  hidden 512, batch 16; forward, backward, Adam) in images/s, ours and (with ``--peer DIR``,
  the rosinality/glow-pytorch checkout holding ``model.py``) the reference, in float32 (TF32
  off), TF32 and bf16 autocast (the reference under the same autocast), cuDNN autotuning on
  for both. Implementations alternate per mode.
* ``test_py``: ``test.py --model ad-flow`` on 30 source frames at thesis size (the checkpoints
  of ``bench/talking_speed.py``), whole process, in float32 and with ``--precision auto``:
  frames/s.
* ``low_memory``: peak GPU memory (``torch.cuda.max_memory_allocated``) of 3 training
  iterations of the thesis config through ``training.loop.train``, default and
  ``--low_memory``.
* ``torchrun``: ``train.py`` under ``torchrun --nproc_per_node 1`` for 3 iterations.

Without CUDA every section runs its CPU fallback (tiny sizes, float32 only; what a CPU without
fast bf16 cannot measure is written as not measurable) so the script is known to work.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

# (img_size, K, L, batch, hidden): the thesis config, and the CPU fallback's tiny one
THESIS = (64, 32, 4, 16, 512)
TINY = (16, 2, 2, 4, 512)  # hidden 512: the reference's width is fixed at 512


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _record(out: Path, section: str, value: dict) -> None:
    data = json.loads(out.read_text()) if out.is_file() else {}
    data[section] = value
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(out)


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------ throughput
def _build(impl: str, peer: str | None, size: int, k: int, n_block: int, hidden: int):
    import torch

    if impl == "reference":
        if not hasattr(torch, "qr"):  # the reference calls torch.qr, removed from torch
            torch.qr = lambda a: torch.linalg.qr(a)
        sys.path.insert(0, peer)
        import model as peer_model

        return peer_model.Glow(3, k, n_block, affine=False, conv_lu=True)
    from glow import Glow

    return Glow(3, k, n_block, affine=False, conv_lu=True, hidden=hidden, img_size=size)


def _mode_switches(mode: str) -> None:
    import torch

    tf32 = mode != "float32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = True


def time_training(impl: str, mode: str, peer: str | None, cfg: tuple, device, steps: int,
                  warmup: int = 3) -> dict:
    """Median step time of one implementation in one mode; images/s from it."""
    import torch

    from training.optim import training_adam

    size, k, n_block, batch, hidden = cfg
    torch.manual_seed(0)
    if device.type == "cuda":
        _mode_switches(mode)
    model = _build(impl, peer, size, k, n_block, hidden).to(device)
    x = torch.rand(batch, 3, size, size, device=device) - 0.5
    with torch.no_grad():
        if impl == "reference":
            model(x)  # the reference initialises ActNorm in its first forward
        else:
            model.initialize(x)
    model.train()
    if impl == "reference":
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)  # as its train.py
    else:
        opt = training_adam([{"params": list(model.parameters())}], lr=1e-4, eps=1e-8)
    n_dims = x[0].numel()
    amp = mode == "bf16"

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            log_p, logdet, _ = model(x)
        loss = -(log_p.float() + logdet.float()).mean() / n_dims
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    _sync()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        _sync()
        times.append(time.perf_counter() - t)
    sec = statistics.median(times)
    return {"step_s": round(sec, 5), "images_per_s": round(batch / sec, 2), "steps": steps}


def section_throughput(args) -> dict:
    import torch

    from training.precision import has_fast_bf16

    device = torch.device("cuda" if _cuda() else "cpu")
    cfg = THESIS if device.type == "cuda" else TINY
    modes = ["float32", "tf32", "bf16"] if device.type == "cuda" else ["float32", "bf16"]
    impls = ["ours"] + (["reference"] if args.peer else [])
    res: dict = {"device": _device_name(device), "config": dict(zip(
        ("img_size", "K", "L", "batch", "hidden"), cfg, strict=True)),
        "reference": args.peer or "not given (--peer DIR or FLOWDIS_REF_GLOW)", "modes": {}}
    for mode in modes:
        if mode == "bf16" and not has_fast_bf16(device):
            res["modes"][mode] = "not measurable on this device (no fast bf16)"
            continue
        row = {}
        for impl in impls:
            row[impl] = time_training(impl, mode, args.peer, cfg, device, args.steps)
            if device.type == "cuda":
                torch.cuda.empty_cache()
        if "reference" in row:
            row["ours_vs_reference"] = round(row["ours"]["images_per_s"]
                                             / row["reference"]["images_per_s"], 3)
        res["modes"][mode] = row
    if "reference" in impls and isinstance(res["modes"].get("float32"), dict):
        ref32 = res["modes"]["float32"]["reference"]["images_per_s"]
        res["ours_vs_reference_float32"] = {
            m: round(r["ours"]["images_per_s"] / ref32, 3)
            for m, r in res["modes"].items() if isinstance(r, dict)}
    return res


def _device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


# -------------------------------------------------------------------------------- test.py
def section_test_py(args) -> dict:
    import talking_speed

    device = "cuda" if _cuda() else "cpu"
    n = 30 if device == "cuda" else 3
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    setup = talking_speed.prepare(work, n)
    res: dict = {"frames": setup["n"], "origin": setup["origin"], "device": device, "runs": {}}
    for prec in ("float32", "auto"):
        cmd = [sys.executable, str(ROOT / "test.py"), "--model", "ad-flow", "--source", "talk",
               "query", "--image_dir", setup["image"], "--checkpoint", setup["adflow"],
               "--glow", setup["glow"], "--result_dir", str(work / prec), "--device", device,
               "--no_progress", "--precision", prec]
        t = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t
        lines = (proc.stdout + proc.stderr).strip().splitlines()
        res["runs"][prec] = {"rc": proc.returncode, "wall_s": round(wall, 2),
                             "frames_per_s": round(setup["n"] / wall, 2),
                             "last_line": lines[-1] if lines else ""}
    return res


# ----------------------------------------------------------------------------- low memory
def _frames(folder: Path, n: int, size: int) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    (folder / "a").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
            folder / "a" / f"{i:03d}.png")
    return folder


def section_low_memory(args) -> dict:
    import torch

    from plain_glow.recipe import RECIPE as recipe
    from training.config import TrainConfig
    from training.loop import train

    device = "cuda" if _cuda() else "cpu"
    size, k, n_block, batch, hidden = THESIS if device == "cuda" else TINY
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    data = _frames(work / "data", 2 * batch, size)
    res: dict = {"device": device, "iterations": 3}
    for low in (False, True):
        cfg = recipe.Config(n_flow=k, n_block=n_block, hidden=hidden, img_size=size,
                            low_memory=low, n_sample=4)
        tcfg = TrainConfig(name=f"mem{int(low)}", batch=batch, iter=3, device=device,
                           workers=0, sample_every=0, save_every=0, progress=False,
                           checkpoint_dir=str(work / "ck"), result_dir=str(work / "res"))
        if device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        train(recipe, cfg, tcfg, data, say=lambda *_: None)
        key = "low_memory" if low else "default"
        res[key] = {"seconds": round(time.perf_counter() - t, 2)}
        if device == "cuda":
            res[key]["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        else:
            res[key]["peak_gpu_mib"] = "no GPU"
    return res


# ------------------------------------------------------------------------------- torchrun
def section_torchrun(args) -> dict:
    device = "cuda" if _cuda() else "cpu"
    size, k, n_block, batch, hidden = THESIS if device == "cuda" else TINY
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    data = _frames(work / "data", 2 * batch, size)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "1", str(ROOT / "train.py"), "--model", "glow", str(data), "-n", "torchrun",
           "--iter", "3", "--batch", str(batch), "--img_size", str(size), "--n_flow", str(k),
           "--n_block", str(n_block), "--hidden", str(hidden), "--device", device,
           "--workers", "1", "--sample_every", "0", "--save_every", "0", "--no_progress",
           "--checkpoint_dir", str(work / "ck"), "--result_dir", str(work / "res")]
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    return {"device": device, "rc": proc.returncode, "wall_s": round(time.perf_counter() - t, 2),
            "checkpoint_written": (work / "ck" / "torchrun" / "last.pt").is_file(),
            "last_lines": lines[-3:]}


SECTIONS = {"throughput": section_throughput, "test_py": section_test_py,
            "low_memory": section_low_memory, "torchrun": section_torchrun}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("section", choices=list(SECTIONS))
    p.add_argument("--out", required=True, help="the JSON file the results go into")
    p.add_argument("--peer", default=os.environ.get("FLOWDIS_REF_GLOW") or None,
                   help="rosinality/glow-pytorch checkout holding model.py (default: "
                        "FLOWDIS_REF_GLOW, as tests/test_reference.py)")
    p.add_argument("--steps", type=int, default=None,
                   help="timed training steps per mode (default: 10 on CUDA, 3 on a CPU)")
    args = p.parse_args(argv)
    if args.peer and not (Path(args.peer) / "model.py").is_file():
        p.error(f"--peer {args.peer}: no model.py there")
    if args.steps is None:
        args.steps = 10 if _cuda() else 3
    out = Path(args.out)
    t = time.perf_counter()
    try:
        value = SECTIONS[args.section](args)
    except Exception as exc:  # recorded, so one failing section does not hide the others
        value = {"error": f"{type(exc).__name__}: {exc}"}
    value["section_seconds"] = round(time.perf_counter() - t, 1)
    _record(out, args.section, value)
    print(f"{args.section}: {json.dumps(value)[:400]}")
    return 1 if "error" in value else 0


if __name__ == "__main__":
    sys.exit(main())
