#!/usr/bin/env python
"""Content-AE training step: ours (``--arch original``) against the original implementation.

The reference is the original repository's own model classes (``models.py`` of
oripress/ContentDisentanglement, imported at run time from a checkout you give with
``--anchor DIR`` or ``CONTENT_AE_ANCHOR``; nothing of it is in this project) driven the way its
``train.py`` drives them: an auto-encoder step (two reconstructions + the adversarial term,
clip 5, Adam), then a discriminator step that encodes both batches again. Ours is one step of
the ``content-ae`` recipe as the training loop runs it (one E1 pass per batch shared by both
players, the discriminator on the detached codes, B decoded without the zero half, two fused
Adam groups clipped on their own). Same sizes (128 px, sep 25, batch 32), same data, runs alternated.

  python bench/content_ae_step.py --anchor /path/to/ContentDisentanglement [--reps 5]

Peak memory: each side runs once more in a child process (``--only``) that imports both
sides' code (equal library baselines), reporting its peak RSS (CPU, ``VmHWM``) or
``torch.cuda.max_memory_allocated`` (CUDA), and that peak minus the memory held once the
models, optimisers and data exist (the step's own working memory).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def reference_step(anchor, size: int, batch: int, sep: int, device):
    """A closure running one iteration of the original's training loop on fixed batches."""
    g = size // 64
    e1, e2 = anchor.E1(sep, g).to(device), anchor.E2(sep, g).to(device)
    dec, disc = anchor.Decoder(g).to(device), anchor.Disc(sep, g).to(device)
    ae_params = [*e1.parameters(), *e2.parameters(), *dec.parameters()]
    disc_params = list(disc.parameters())  # a list: the original passes a spent generator
    ae_opt = torch.optim.Adam(ae_params, lr=2e-4, betas=(0.5, 0.999))
    d_opt = torch.optim.Adam(disc_params, lr=2e-4, betas=(0.5, 0.999))
    mse, bce = nn.MSELoss(), nn.BCELoss()
    ones = torch.ones(batch, device=device)
    zeros = torch.zeros(batch, device=device)
    b_sep = torch.zeros(batch, sep * g * g, device=device)

    def step(a, b):
        ae_opt.zero_grad()
        a_common, a_sep = e1(a), e2(a)
        b_common = e1(b)
        loss = mse(dec(torch.cat([a_common, a_sep], 1)), a) + \
            mse(dec(torch.cat([b_common, b_sep], 1)), b)
        loss = loss + 1e-3 * (bce(disc(a_common), zeros) + bce(disc(b_common), zeros))
        loss.backward()
        nn.utils.clip_grad_norm_(ae_params, 5)
        ae_opt.step()
        d_opt.zero_grad()
        d_loss = bce(disc(e1(a)), ones) + bce(disc(e1(b)), zeros)
        d_loss.backward()
        nn.utils.clip_grad_norm_(disc_params, 5)
        d_opt.step()
        return float(loss.detach()) + float(d_loss.detach())

    return step, sum(p.numel() for p in [*ae_params, *disc_params])


def our_step(size: int, batch: int, sep: int, device):
    from content_ae.recipe import RECIPE as recipe
    from training.config import TrainConfig
    from training.loop import StepContext, clip_group_gradients, lean_optimizer, step_generator

    cfg = recipe.Config(img_size=size, sep=sep, flip=False)
    tcfg = TrainConfig(lr=2e-4)
    model = recipe.build(cfg).to(device).train()
    lean = lean_optimizer(cfg)  # as the training loop decides
    opt = torch.optim.Adam(recipe.param_groups(model, cfg, tcfg), lr=tcfg.lr,
                           foreach=False if lean else None)
    weights = recipe.loss_weights(cfg)

    def step(a, b):
        ctx = StepContext(step=0, rank=0, world=1, device=device, model_cfg=cfg, train_cfg=tcfg,
                          generator=step_generator(0, 0))
        opt.zero_grad(set_to_none=not lean)  # before the forward, as the training loop does
        terms = recipe.losses(model, (a / 2, b / 2), ctx)  # the recipe takes [-0.5, 0.5]
        total = sum(w * terms[k] for k, w in weights.items() if w)
        total.backward()
        clip_group_gradients(opt)
        opt.step()
        return float(total.detach())

    return step, sum(p.numel() for p in model.parameters())


def load_anchor(path: str | None):
    if not path:
        sys.exit("error: give --anchor DIR (a checkout of oripress/ContentDisentanglement) or "
                 "set CONTENT_AE_ANCHOR")
    if not (Path(path) / "models.py").is_file():
        sys.exit(f"error: {path}/models.py not found; --anchor must be that repository's folder")
    sys.path.insert(0, str(Path(path)))
    import models  # the anchor's models.py

    return models


def _rss_mib() -> float:
    """Current RSS of this process in MiB (``VmRSS``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _hwm_mib() -> float:
    """Peak RSS of this process in MiB: VmHWM belongs to the process image, so unlike
    ``ru_maxrss`` it does not inherit the parent's peak across fork + exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak(args, which: str) -> dict:
    env = dict(os.environ)
    cmd = [sys.executable, __file__, "--only", which, "--anchor", args.anchor or "",
           "--size", str(args.size), "--batch", str(args.batch), "--device", args.device]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--anchor", default=os.environ.get("CONTENT_AE_ANCHOR"))
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--sep", type=int, default=25)
    p.add_argument("--reps", type=int, default=5, help="timed steps per side (alternated)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--only", choices=("ours", "ref"), help=argparse.SUPPRESS)
    args = p.parse_args()
    device = torch.device(args.device)
    anchor = load_anchor(args.anchor)
    torch.manual_seed(0)
    a = torch.rand(args.batch, 3, args.size, args.size, device=device) * 2 - 1
    b = torch.rand(args.batch, 3, args.size, args.size, device=device) * 2 - 1
    if args.only:
        # Both children import both sides' code, so their baselines hold the same libraries;
        # the figure is the peak over three steps minus the RSS once the models, optimisers
        # and data exist (what the step itself needs).
        from content_ae import recipe  # noqa: F401
        from training import loop  # noqa: F401

        fn = (our_step(args.size, args.batch, args.sep, device) if args.only == "ours"
              else reference_step(anchor, args.size, args.batch, args.sep, device))[0]
        _sync(device)
        base = (torch.cuda.memory_allocated() / 2**20 if device.type == "cuda" else _rss_mib())
        for _ in range(3):
            fn(a, b)
        _sync(device)
        mem = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
               else _hwm_mib())
        print(json.dumps({"peak_mib": mem, "step_mib": mem - base}))
        return 0
    ref, n_ref = reference_step(anchor, args.size, args.batch, args.sep, device)
    ours, n_ours = our_step(args.size, args.batch, args.sep, device)
    assert n_ref == n_ours, (n_ref, n_ours)  # the same network
    times = {"ref": [], "ours": []}
    for k in range(args.warmup + args.reps):
        for name, fn in (("ref", ref), ("ours", ours)) if k % 2 == 0 else \
                (("ours", ours), ("ref", ref)):
            _sync(device)
            t0 = time.perf_counter()
            fn(a, b)
            _sync(device)
            if k >= args.warmup:
                times[name].append(time.perf_counter() - t0)
    ratios = [r / o for r, o in zip(times["ref"], times["ours"], strict=True)]
    mem = {w: peak(args, w) for w in ("ref", "ours")}
    cpu = "?"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in
                   subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
                   if line.startswith("Model name"))
    except (OSError, StopIteration):
        pass
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu
    print(f"content-ae training step, --arch original, {args.size} px, batch {args.batch}, "
          f"{n_ours:,} parameters; {dev}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print("| side | median step s | peak memory MiB | of which the step MiB |")
    print("|---|---:|---:|---:|")
    for key, label in (("ref", "original (its models.py, its loop)"),
                       ("ours", "ours (content-ae recipe)")):
        print(f"| {label} | {statistics.median(times[key]):.3f} | "
              f"{mem[key]['peak_mib']:.0f} | {mem[key]['step_mib']:.0f} |")
    print(f"speed-up (paired, median of {len(ratios)}): {statistics.median(ratios):.2f}x "
          f"(range {min(ratios):.2f}-{max(ratios):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
