"""Pose-flow training step against the anchor's flow (dajinstory/pose-guided-flow, PGFlowV3's
layout), at the same configuration, alternating in one process.

The anchor's modules are imported at run time from a checkout given by ``--anchor DIR`` or the
``POSE_FLOW_ANCHOR`` environment variable (its ``src/model/common/flow_module`` package is
loaded on its own, so none of its training dependencies are needed); nothing of it is part of
this project. Both flows get the same layout: a first block without squeeze (``K/2`` flows,
unconditioned), ``--n_block`` split blocks and ``--n_header`` headers of ``K`` flows, the anchor's
conditioner widths (64, 128, 128, 256, 256, 512, 512), affine couplings.

A step is: the conditions of the batch (ours computes heatmaps, edge maps and coordinates from
the landmarks inside the step; the anchor gets its 69-channel maps precomputed, as its data
loader makes them), forward, NLL in bits/dim, backward, Adam step. Reported: median step time
of each over ``--repeats`` alternating rounds of ``--steps`` steps after ``--warmup`` steps, and
the ratio anchor / ours (> 1: ours is faster).

Examples::

    python bench/pose_flow_step.py --anchor ../pose-guided-flow --quick
    POSE_FLOW_ANCHOR=../pose-guided-flow python bench/pose_flow_step.py --n_flow 4 --batch 8
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pose_flow.conditions import condition  # noqa: E402
from pose_flow.model import ANCHOR_HIDDEN, PoseFlow  # noqa: E402


def load_anchor(checkout: Path):
    """The anchor's ``flow_module`` package, loaded under a private name."""
    pkg = checkout / "src" / "model" / "common" / "flow_module"
    if not (pkg / "__init__.py").is_file():
        raise SystemExit(f"error: {checkout}: no src/model/common/flow_module/ (give a checkout "
                         "of dajinstory/pose-guided-flow with --anchor or POSE_FLOW_ANCHOR)")
    spec = importlib.util.spec_from_file_location("_anchor_flow_module", pkg / "__init__.py",
                                                  submodule_search_locations=[str(pkg)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def anchor_flow(fm, img_size: int, n_flow: int, n_block: int, n_header: int,
                widths: list[int]) -> nn.Module:
    """The anchor's PGFlowV3 stack built from its own Block class at this configuration."""

    def subnet(hidden: int, kernel: int):
        def make(ch_in: int, ch_out: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(ch_in, hidden, kernel, padding=kernel // 2), nn.ReLU(),
                                 nn.Conv2d(hidden, hidden, 1), nn.ReLU(),
                                 fm.ZeroConv2d(hidden, ch_out))
        return make

    blocks = [fm.Block(squeeze=False, flow_type="InvConvFlow", n_flows=max(1, n_flow // 2),
                       coupling_type="Affine", ch_in=3, ch_c=0, n_chunk=3,
                       subnet=subnet(widths[0], 3), clamp=1.0, clamp_activation="GLOW",
                       split=False)]
    c, size = 3, img_size
    for i in range(n_block + n_header):
        c, size = c * 4, size // 2
        blocks.append(fm.Block(squeeze=True, flow_type="InvConvFlow", n_flows=n_flow,
                               coupling_type="SingleAffine", ch_in=c, ch_c=69, n_chunk=2,
                               subnet=subnet(widths[i + 1], 1 if size == 1 else 3), clamp=1.0,
                               clamp_activation="GLOW", split=i < n_block))
        if i < n_block:
            c //= 2
    return nn.ModuleList(blocks)


def anchor_nll(blocks: nn.ModuleList, gaussian_log_p, x, conds) -> torch.Tensor:
    out, log_p, log_det = x, 0, 0
    for block, c in zip(blocks, conds, strict=True):
        out, det, split = block(out, c)
        log_det = log_det + det
        if split is not None:
            z = split.flatten(1)
            log_p = log_p + gaussian_log_p(z, torch.zeros_like(z), torch.zeros_like(z)).sum(1)
    z = out.flatten(1)
    log_p = log_p + gaussian_log_p(z, torch.zeros_like(z), torch.zeros_like(z)).sum(1)
    d = x[0].numel()
    return (-(log_p + log_det - d * math.log(256)) / (d * math.log(2))).mean()


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--anchor", default=os.environ.get("POSE_FLOW_ANCHOR"),
                   help="checkout of dajinstory/pose-guided-flow (or POSE_FLOW_ANCHOR)")
    p.add_argument("--img_size", type=int, default=64)
    p.add_argument("--n_flow", type=int, default=4, help="flows per block (anchor: 16)")
    p.add_argument("--n_block", type=int, default=4)
    p.add_argument("--n_header", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=3, help="timed steps per round")
    p.add_argument("--repeats", type=int, default=3, help="alternating rounds")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    p.add_argument("--coord_below", type=int, default=0,
                   help="ours: add the landmark coordinates below this many px (0: the "
                        "anchor's 69-channel condition at every level, the same "
                        "configuration; the model's default is 8)")
    p.add_argument("--quick", action="store_true", help="32 px, 2 flows, batch 4")
    p.add_argument("--keep_unused", action="store_true",
                   help="time only the anchor as built (default: also the same anchor without "
                        "the conditioners its SingleAffineCoupling builds but never calls, "
                        "whose parameter count equals ours)")
    a = p.parse_args(argv)
    if not a.anchor:
        print("error: give the anchor's checkout with --anchor DIR or POSE_FLOW_ANCHOR",
              file=sys.stderr)
        return 1
    if a.quick:
        a.img_size, a.n_flow, a.n_block, a.n_header, a.batch = 32, 2, 3, 2, 4
    if a.threads:
        torch.set_num_threads(a.threads)
    fm = load_anchor(Path(a.anchor))
    levels = 1 + a.n_block + a.n_header
    last = len(ANCHOR_HIDDEN) - 1
    widths = [ANCHOR_HIDDEN[round(i * last / max(levels - 1, 1))] for i in range(levels)]
    torch.manual_seed(0)
    ours = PoseFlow(img_size=a.img_size, n_flow=a.n_flow, n_block=a.n_block,
                    n_header=a.n_header, hidden=0, coord_below=a.coord_below)
    theirs = anchor_flow(fm, a.img_size, a.n_flow, a.n_block, a.n_header, widths)
    x = torch.rand(a.batch, 3, a.img_size, a.img_size) - 0.5
    lm = torch.rand(a.batch, 68, 2) * 0.6 + 0.2
    ours.initialize(x, lm)
    sizes = [a.img_size // 2 ** i for i in range(levels)]
    anchor_conds = [None] + [condition(lm, s, coord_below=0) for s in sizes[1:]]
    with torch.no_grad():  # the anchor initialises its ActNorms on the first forward
        anchor_nll(theirs, fm.gaussian_log_p, x, anchor_conds)
    opt_ours = torch.optim.Adam(ours.parameters(), lr=1e-5)
    opt_theirs = torch.optim.Adam(theirs.parameters(), lr=1e-5)

    def step_ours() -> None:
        log_p, logdet, *_ = ours(x, lm)
        d = x[0].numel()
        loss = (-(log_p + logdet - d * math.log(256)) / (d * math.log(2))).mean()
        opt_ours.zero_grad(set_to_none=True)
        loss.backward()
        opt_ours.step()

    def step_theirs() -> None:
        loss = anchor_nll(theirs, fm.gaussian_log_p, x, anchor_conds)
        opt_theirs.zero_grad(set_to_none=True)
        loss.backward()
        opt_theirs.step()

    # The anchor's parameters that a step never reaches: its SingleAffineCoupling builds one
    # conditioner per channel chunk (``for ch_chunk in self.ch_chunks: self.nets.append``) but
    # its forward and reverse loop over ``range(1)``, so ``nets[1]`` is never called. Those
    # parameters get no gradient and Adam skips them: they cost memory, not time.
    step_theirs()
    n_dead = sum(q.numel() for q in theirs.parameters() if q.grad is None) / 1e6
    n_dead_ours = sum(q.numel() for q in ours.parameters() if q.requires_grad) / 1e6
    step_ours()
    n_dead_ours -= sum(q.numel() for q in ours.parameters() if q.grad is not None) / 1e6
    pruned = None
    if not a.keep_unused:  # the same model without the dead nets: equal parameter counts
        pruned = anchor_flow(fm, a.img_size, a.n_flow, a.n_block, a.n_header, widths)
        pruned.load_state_dict(theirs.state_dict())
        for m in pruned.modules():
            if type(m).__name__.startswith("Single") and len(getattr(m, "nets", ())) > 1:
                m.nets = nn.ModuleList(m.nets[:1])
        opt_pruned = torch.optim.Adam(pruned.parameters(), lr=1e-5)

        def step_pruned() -> None:
            loss = anchor_nll(pruned, fm.gaussian_log_p, x, anchor_conds)
            opt_pruned.zero_grad(set_to_none=True)
            loss.backward()
            opt_pruned.step()

    def timed(fn, n: int) -> list[float]:
        out = []
        for _ in range(n):
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
        return out

    timed(step_ours, a.warmup)
    timed(step_theirs, a.warmup)
    if pruned is not None:
        timed(step_pruned, a.warmup)
    t_ours, t_theirs, t_pruned = [], [], []
    for _ in range(a.repeats):
        t_ours += timed(step_ours, a.steps)
        t_theirs += timed(step_theirs, a.steps)
        if pruned is not None:
            t_pruned += timed(step_pruned, a.steps)
    mo, mt = statistics.median(t_ours), statistics.median(t_theirs)
    n_par = sum(q.numel() for q in ours.parameters()) / 1e6
    n_par_t = sum(q.numel() for q in theirs.parameters()) / 1e6
    print(f"CPU: {cpu_name()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}")
    print(f"config: {a.img_size} px, K={a.n_flow}, {a.n_block} split blocks + {a.n_header} "
          f"headers, widths {widths}, batch {a.batch}, ours with coordinates below "
          f"{a.coord_below} px; {a.repeats} alternating rounds of "
          f"{a.steps} steps")
    print("| flow | params (M) | never reached (M) | step s (median) | min | max |")
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| anchor (PGFlowV3 layout, as built) | {n_par_t:.2f} | {n_dead:.2f} | {mt:.3f} | "
          f"{min(t_theirs):.3f} | {max(t_theirs):.3f} |")
    if pruned is not None:
        n_par_p = sum(q.numel() for q in pruned.parameters()) / 1e6
        mp = statistics.median(t_pruned)
        print(f"| anchor without its never-called nets | {n_par_p:.2f} | 0.00 | {mp:.3f} | "
              f"{min(t_pruned):.3f} | {max(t_pruned):.3f} |")
    print(f"| ours (pose_flow) | {n_par:.2f} | {n_dead_ours:.2f} | {mo:.3f} | {min(t_ours):.3f} | "
          f"{max(t_ours):.3f} |")
    print(f"speed-up (anchor / ours): {mt / mo:.2f}x")
    if pruned is not None:
        print(f"speed-up at equal parameter counts (anchor without its never-called nets / "
              f"ours): {mp / mo:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
