"""Glow training-step and reverse benchmark (CPU), optionally against a reference checkout.

Every measured configuration runs in a fresh subprocess, so its peak resident memory
(``ru_maxrss``) is its own and allocator state never leaks between runs. With ``--peer DIR``
the reference ``model.py`` found in DIR (rosinality/glow-pytorch layout) is timed too, and the
runs alternate ours / peer / ours / peer ... so slow drift of the machine hits both alike.

Measured per run: median wall time of a training step (forward, backward, Adam step) after
warm-up steps that last until the step time settles (``--warmup``; the first steps of a process
are slow under glibc while malloc adapts, so timing the second step inflates the reference's
time), peak RSS during training, and in eval mode under ``no_grad`` the time of an encode
(forward) and of ``reverse`` with ``reconstruct=True`` (invert given latents) and with
``reconstruct=False`` (sampling: noise mapped through the priors).

Examples::

    python bench/glow_step.py --quick
    python bench/glow_step.py --peer ../glow-pytorch --allocator both --low_memory
    python bench/glow_step.py --configs small --repeats 3 --steps 3

Timings on a shared or busy machine are noisy: compare ratios from one alternating run.
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

ROOT = Path(__file__).resolve().parents[1]

# name -> (img_size, n_flow K, n_block L, batch)
CONFIGS = {
    "thesis": (64, 32, 4, 16),
    "small": (32, 8, 3, 16),
    "thesis_b1": (64, 32, 4, 1),  # batch 1: with "thesis", gives the activation memory
    "quick": (16, 2, 2, 4),
}
HIDDEN = 512


# --------------------------------------------------------------------------- analytic FLOPs
def conv_macs(img_size: int, n_flow: int, n_block: int, batch: int, hidden: int = HIDDEN,
              in_channel: int = 3, affine: bool = False, priors: bool = True) -> int:
    """Multiply-accumulates of one forward pass (convolutions only; the rest is < 1%)."""
    macs = 0
    c, size = in_channel, img_size
    for i in range(n_block):
        c4, size = c * 4, size // 2
        hw = size * size
        out = c4 if affine else c4 // 2
        per_flow = (c4 * c4                          # invertible 1x1 conv
                    + (c4 // 2) * hidden * 9          # conv3x3 in
                    + hidden * hidden                 # conv1x1
                    + hidden * out * 9)               # ZeroConv2d 3x3 out
        macs += n_flow * per_flow * hw
        split = i < n_block - 1
        prior_in, prior_out = (c4 // 2, c4) if split else (c4, c4 * 2)
        macs += prior_in * prior_out * 9 * hw if priors else 0
        c = c4 // 2 if split else c4
    return macs * batch


def matmul_peak_gflops(n: int = 4096, repeats: int = 5) -> tuple[float, float, int]:
    """Best float32 GEMM rate on torch's intra-op threads: (GFLOP/s wall, GFLOP per CPU-second,
    threads).

    Two GEMM libraries ship with torch and either can be the faster one on a given CPU (MKL's
    sgemm is slow on some AMD parts, oneDNN's on some Intel ones), so both are timed, an
    ``n^3`` ``torch.mm`` (MKL) and the same product as a 1x1 convolution (oneDNN), and the
    better one is the peak. The per-CPU-second figure is steadier when other jobs share the
    machine (wall time then also counts the time the scheduler gave to someone else).
    """
    import torch
    import torch.nn.functional as F

    a, b = torch.randn(n, n), torch.randn(n, n)
    c = torch.empty(n, n)
    side = int(n ** 0.5)
    x = torch.randn(1, n, side, side).contiguous(memory_format=torch.channels_last)
    w = torch.randn(n, n, 1, 1)
    gemms = [lambda: torch.mm(a, b, out=c), lambda: F.conv2d(x, w)]
    best = best_cpu = 0.0
    with torch.no_grad():
        for f in gemms:
            f()
        for _ in range(repeats):
            for f in gemms:
                t, u = time.perf_counter(), time.process_time()
                f()
                best = max(best, 2 * n**3 / (time.perf_counter() - t) / 1e9)
                best_cpu = max(best_cpu, 2 * n**3 / (time.process_time() - u) / 1e9)
    return best, best_cpu, torch.get_num_threads()


def step_products(img_size: int, n_flow: int, n_block: int, batch: int, hidden: int = HIDDEN,
                  in_channel: int = 3, affine: bool = False) -> list[tuple[int, int, int, int]]:
    """The matrix products of one forward pass, ``(M, K, N, count)``: every convolution as the
    BLAS product it amounts to ([pixels, taps x inputs] x [taps x inputs, outputs])."""
    out: list[tuple[int, int, int, int]] = []
    c, size = in_channel, img_size
    for i in range(n_block):
        c4, size = c * 4, size // 2
        m = batch * size * size
        cout = c4 if affine else c4 // 2
        out += [(m, c4, c4, n_flow), (m, 9 * (c4 // 2), hidden, n_flow),
                (m, hidden, hidden, n_flow), (m, hidden, 9 * cout, n_flow)]
        split = i < n_block - 1
        prior_in, prior_out = (c4 // 2, c4) if split else (c4, c4 * 2)
        out.append((m, 9 * prior_in, prior_out, 1))
        c = c4 // 2 if split else c4
    return out


def gemm_floor(config: str, affine: bool = False, repeats: int = 3) -> tuple[float, float]:
    """Seconds that the BLAS products alone take: (training step, encode + reverse).

    A training step is each product forward plus its two backward products (input and weight
    gradients: ``[M, N] x [N, K]`` and ``[K, M] x [M, N]``); encode + reverse is each forward
    product twice (the priors once). Timed with ``torch.mm`` into preallocated outputs, the
    best of ``repeats`` per shape: no implementation that computes these products in float32
    with this BLAS runs below it, so ``reference step / floor`` bounds the reachable speed-up.
    """
    import torch

    def best(a, b, o) -> float:
        torch.mm(a, b, out=o)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            torch.mm(a, b, out=o)
            times.append(time.perf_counter() - t)
        return min(times)

    train = infer = 0.0
    with torch.no_grad():
        for m, k, n, count in step_products(*CONFIGS[config], affine=affine):
            x, w, g = torch.randn(m, k), torch.randn(k, n), torch.randn(m, n)
            fwd = best(x, w, torch.empty(m, n))
            bwd = best(g, w.t(), torch.empty(m, k)) + best(x.t(), g, torch.empty(k, n))
            train += count * (fwd + bwd)
            infer += count * fwd * (1 if count == 1 else 2)
    return train, infer


# --------------------------------------------------------------------------- worker
def _rss_mib() -> float:
    """Current resident set size (MiB) from /proc, 0 where unavailable."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return 0.0


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _build(impl: str, root: str, size: int, n_flow: int, n_block: int, affine: bool = False):
    import torch

    if impl == "peer":
        if not hasattr(torch, "qr"):  # the reference calls torch.qr, removed from torch
            torch.qr = lambda a: torch.linalg.qr(a)
        sys.path.insert(0, root)
        import model as peer_model

        return peer_model.Glow(3, n_flow, n_block, affine=affine, conv_lu=True)
    sys.path.insert(0, root)
    from glow import Glow

    model = Glow(3, n_flow, n_block, affine=affine, conv_lu=True, hidden=HIDDEN, img_size=size)
    if impl == "ours_lowmem":
        from glow.memory import enable_low_memory

        enable_low_memory(model)
    return model


def worker(args: argparse.Namespace) -> None:
    import torch

    if os.environ.get("_BENCH_KEEP_PAGES"):
        sys.path.insert(0, str(ROOT))
        from training.allocator import keep_freed_pages

        assert keep_freed_pages(), "glibc's mallopt refused the settings"
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    size, n_flow, n_block, batch = CONFIGS[args.config]
    model = _build(args.impl, args.root, size, n_flow, n_block, args.affine)
    x = torch.rand(batch, 3, size, size) - 0.5
    with torch.no_grad():
        if args.impl == "peer":
            model(x)  # the reference initialises ActNorm inside its first forward
        else:
            model.initialize(x)
    model.train()
    # Each side with the optimiser its train.py builds (an --ours checkout from before the
    # fused Adam and the in-backward step gets torch's default and a plain backward).
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    in_backward = None
    if args.impl != "peer":
        try:
            from training.optim import StepInBackward, training_adam

            opt = training_adam([{"params": list(model.parameters())}], lr=1e-4, eps=1e-8)
            if args.impl == "ours_lowmem":  # what train.py --low_memory runs
                from glow.memory import on_grads_ready

                in_backward = lambda: on_grads_ready(StepInBackward(opt))  # noqa: E731
        except ImportError:
            pass
    n_dims = x[0].numel()

    def step() -> float:
        log_p, logdet, _ = model(x)
        loss = -(log_p + logdet).mean() / n_dims
        opt.zero_grad(set_to_none=in_backward is None)
        if in_backward is not None:  # each flow's parameters stepped inside backward
            with in_backward():
                loss.backward()
        else:
            loss.backward()
        opt.step()
        return float(loss)

    rss_before = _rss_mib()
    load0 = os.getloadavg()[0]
    # Warm-up until the step time settles: under glibc the first steps of a process are slow
    # while malloc's dynamic mmap threshold adapts (the reference's first steps were 21, 20, 18,
    # then 14 s at the thesis config). At least --warmup steps, then more while the latest one
    # is still more than 5 % faster than the one before, at most 2 * --warmup.
    warm_times: list[float] = []
    while True:
        t = time.perf_counter()
        step()
        warm_times.append(time.perf_counter() - t)
        n_warm = len(warm_times)
        if n_warm >= max(2 * args.warmup, 1):
            break
        if n_warm >= args.warmup and (n_warm < 2 or warm_times[-1] > 0.95 * warm_times[-2]):
            break
    times, cpu = [], []
    for _ in range(args.steps):
        t, c = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    peak = _maxrss_mib()
    ru = resource.getrusage(resource.RUSAGE_SELF)

    model.eval()
    with torch.no_grad():
        z = model(x)[2]
        g = torch.Generator().manual_seed(1)
        noise = [0.7 * torch.randn(t.shape, generator=g) for t in z]
        for _ in range(2):  # warm-up (and the eval-mode caches)
            model(x)
            model.reverse(z, reconstruct=True)
        enc, rec, smp, rec_cpu, enc_cpu = [], [], [], [], []
        for _ in range(max(2, args.steps)):
            t, c = time.perf_counter(), time.process_time()
            model(x)
            enc.append(time.perf_counter() - t)
            enc_cpu.append(time.process_time() - c)
            t, c = time.perf_counter(), time.process_time()
            out = model.reverse(z, reconstruct=True)
            rec.append(time.perf_counter() - t)
            rec_cpu.append(time.process_time() - c)
            t = time.perf_counter()
            model.reverse(noise, reconstruct=False)
            smp.append(time.perf_counter() - t)
        rec_err = float((out - x).abs().max())
    pre = os.environ.get("LD_PRELOAD", "")
    allocator = "jemalloc" if "jemalloc" in pre else "tcmalloc" if "tcmalloc" in pre else "glibc"
    print("RESULT " + json.dumps({
        "step": statistics.median(times) if times else warm_times[-1], "warm": warm_times,
        "steps": times, "n_warm": len(warm_times),
        "encode": statistics.median(enc), "encode_cpu": statistics.median(enc_cpu),
        "cpu": statistics.median(cpu) if cpu else 0.0,
        "load": max(load0, os.getloadavg()[0]),
        "peak_mib": peak, "rss_before_mib": rss_before, "reconstruct": statistics.median(rec),
        "reconstruct_cpu": statistics.median(rec_cpu),
        "sample": statistics.median(smp), "rec_err": rec_err, "allocator": allocator,
        "threads": torch.get_num_threads(), "user_s": ru.ru_utime, "sys_s": ru.ru_stime,
        "minflt": ru.ru_minflt,
    }), flush=True)


# --------------------------------------------------------------------------- driver
def _jemalloc_env() -> dict | None:
    sys.path.insert(0, str(ROOT))
    from training.allocator import JEMALLOC_CONF, find_allocator

    lib = find_allocator()
    if lib is None or "jemalloc" not in lib:
        return None
    return {"LD_PRELOAD": lib, "MALLOC_CONF": JEMALLOC_CONF}


def run_one(impl: str, root: str, config: str, steps: int, alloc_env: dict | None,
            threads: int = 0, warmup: int = 3, affine: bool = False) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF")}
    env["FLOWDIS_ALLOCATOR"] = "system"  # never let anything re-exec behind the benchmark
    if alloc_env:
        env.update(alloc_env)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--impl", impl,
           "--root", root, "--config", config, "--steps", str(steps), "--threads", str(threads),
           "--warmup", str(warmup)] + (["--affine"] if affine else [])
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{impl}/{config} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


def _fmt_row(cols, widths) -> str:
    return "  ".join(str(c).rjust(w) for c, w in zip(cols, widths, strict=True))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--peer", metavar="DIR", help="checkout holding the reference model.py")
    p.add_argument("--ours", metavar="DIR", default=str(ROOT),
                   help="checkout whose glow/ is timed as 'ours' (default: this one)")
    p.add_argument("--configs", default="thesis,small",
                   help=f"comma-separated, from {sorted(CONFIGS)} (default thesis,small)")
    p.add_argument("--repeats", type=int, default=3,
                   help="fresh processes per implementation and config (default 3)")
    p.add_argument("--steps", type=int, default=3,
                   help="measured steps per process after the warm-up (default 3)")
    p.add_argument("--warmup", type=int, default=3,
                   help="warm-up steps per process, at least; more (up to twice as many) while "
                   "the step time still falls by more than 5%% (default 3)")
    p.add_argument("--affine", action="store_true",
                   help="affine coupling in both implementations (default additive)")
    p.add_argument("--allocator", choices=["system", "keep", "jemalloc", "both", "all"],
                   default="system",
                   help="glibc malloc; keep: glibc with the entry points' settings when jemalloc "
                   "is missing (training.allocator.keep_freed_pages, both implementations); "
                   "jemalloc (if installed); both: system and jemalloc; all: the three "
                   "(default system)")
    p.add_argument("--low_memory", action="store_true", help="also time our low-memory mode")
    p.add_argument("--threads", type=int, default=0,
                   help="intra-op threads in the measured processes (default: torch's choice); "
                   "1 gives steadier comparisons on a machine shared with other jobs")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny config, 1 repeat")
    p.add_argument("--json", metavar="FILE", help="also write all raw results here")
    # internal: one measured run
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--impl", default="ours", help=argparse.SUPPRESS)
    p.add_argument("--root", default=str(ROOT), help=argparse.SUPPRESS)
    p.add_argument("--config", default="quick", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    if args.quick:
        args.configs, args.repeats, args.steps, args.warmup = "quick", 1, 1, 1
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    bad = [c for c in configs if c not in CONFIGS]
    if bad:
        p.error(f"unknown config(s) {bad}; choose from {sorted(CONFIGS)}")
    if args.peer and not (Path(args.peer) / "model.py").is_file():
        p.error(f"--peer {args.peer}: no model.py there")

    allocs: list[tuple[str, dict | None]] = []
    if args.allocator in ("system", "both", "all"):
        allocs.append(("glibc", None))
    if args.allocator in ("keep", "all"):
        allocs.append(("glibc+keep", {"_BENCH_KEEP_PAGES": "1"}))
    if args.allocator in ("jemalloc", "both", "all"):
        je = _jemalloc_env()
        if je is None:
            print("jemalloc is not installed; measuring glibc only")
            if not allocs:
                allocs.append(("glibc", None))
        else:
            allocs.append(("jemalloc", je))

    impls = [("ours", args.ours)]
    if args.low_memory:
        impls.append(("ours_lowmem", args.ours))
    if args.peer:
        impls.append(("peer", str(Path(args.peer).resolve())))

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    peak, peak_cpu, threads = matmul_peak_gflops()
    print(f"fp32 GEMM peak (4096^3, better of MKL mm and oneDNN 1x1 conv, {threads} threads): "
          f"{peak:.1f} GFLOP/s wall, "
          f"{peak_cpu:.1f} GFLOP per CPU-second")
    print(f"repeats {args.repeats} fresh process(es) x {args.steps} measured step(s) each, "
          f"after {args.warmup}-{2 * args.warmup} warm-up steps (until the step time settles); "
          f"impls alternate within each repeat; {'affine' if args.affine else 'additive'} "
          f"coupling; load average at start {os.getloadavg()[0]:.1f}\n")

    results: dict = {}
    for config in configs:
        for rep in range(args.repeats):
            for alloc_name, alloc_env in allocs:
                for impl, root in impls:
                    r = run_one(impl, root, config, args.steps, alloc_env, args.threads,
                                args.warmup, args.affine)
                    results.setdefault((config, alloc_name, impl), []).append(r)
                    print(f"  [{config} rep {rep + 1}/{args.repeats}] {impl:11s} {alloc_name:10s}"
                          f" step {r['step']:7.3f}s  peak {r['peak_mib']:7.0f} MiB  reconstruct "
                          f"{r['reconstruct']:6.3f}s (cpu {r['reconstruct_cpu']:.2f}s)  sample {r['sample']:6.3f}s  cpu/step "
                          f"{r['cpu']:.2f}s  load {r['load']:.1f}", flush=True)
                    print("      warm-up steps " + " ".join(f"{v:.2f}" for v in r["warm"])
                          + " s; measured " + " ".join(f"{v:.2f}" for v in r["steps"])
                          + f" s; encode {r['encode']:.3f}s", flush=True)

    head = ["config", "impl", "alloc", "warm", "step s", "x peer (min-max)", "cpu s", "x peer",
            "%peak", "%cpupk", "peak MiB", "step+MiB", "infer s", "x peer", "%cpupk",
            "recon s", "x peer", "sample s", "x peer", "sys s/step"]
    widths = [9, 11, 10, 4, 7, 16, 6, 6, 5, 6, 8, 8, 7, 6, 6, 7, 6, 8, 6, 10]
    print("\n" + _fmt_row(head, widths))
    summary = []
    for config in configs:
        size, n_flow, n_block, batch = CONFIGS[config]
        fwd = 2 * conv_macs(size, n_flow, n_block, batch, affine=args.affine)
        flops = 3 * fwd  # forward + backward (2x forward)
        # encode (forward with priors) + exact reverse (no priors); the priors are < 1 %.
        infer_flops = fwd + 2 * conv_macs(size, n_flow, n_block, batch, affine=args.affine,
                                          priors=False)
        peer_rs = results.get((config, allocs[0][0], "peer"))  # glibc when measured: as shipped
        for r in peer_rs or []:
            r["infer"] = r["encode"] + r["reconstruct"]
        for alloc_name, _ in allocs:
            for impl, _root in impls:
                rs = results[(config, alloc_name, impl)]
                for r in rs:
                    r["infer"] = r["encode"] + r["reconstruct"]
                    r["infer_cpu"] = r["encode_cpu"] + r["reconstruct_cpu"]
                med = {k: statistics.median(r[k] for r in rs)
                       for k in ("step", "cpu", "reconstruct", "sample", "peak_mib",
                                 "rss_before_mib", "infer", "infer_cpu", "n_warm")}
                sys_per_step = statistics.median(r["sys_s"] / (r["n_warm"] + len(r["steps"]))
                                                 for r in rs)

                def ratio(k, rs=rs, peer_rs=peer_rs, spread=False):
                    """Median of the per-repeat ratios peer/ours (each pair ran back to back)."""
                    if not peer_rs:
                        return "-"
                    pairs = [p[k] / r[k] for p, r in zip(peer_rs, rs, strict=False)]
                    text = f"{statistics.median(pairs):.2f}"
                    if spread and len(pairs) > 1:
                        text += f" ({min(pairs):.2f}-{max(pairs):.2f})"
                    return text

                row = [config, impl, alloc_name, f"{med['n_warm']:.0f}", f"{med['step']:.3f}",
                       ratio("step", spread=True), f"{med['cpu']:.2f}", ratio("cpu"),
                       f"{100 * flops / med['step'] / 1e9 / peak:.0f}",
                       f"{100 * flops / med['cpu'] / 1e9 / peak_cpu:.0f}",
                       f"{med['peak_mib']:.0f}",
                       f"{med['peak_mib'] - med['rss_before_mib']:.0f}",
                       f"{med['infer']:.3f}", ratio("infer"),
                       f"{100 * infer_flops / med['infer_cpu'] / 1e9 / peak_cpu:.0f}",
                       f"{med['reconstruct']:.3f}", ratio("reconstruct"),
                       f"{med['sample']:.3f}", ratio("sample"), f"{sys_per_step:.2f}"]
                print(_fmt_row(row, widths))
                summary.append(dict(zip(head, row, strict=True)))
    for config in configs:
        floor_step, floor_infer = gemm_floor(config, args.affine)
        line = (f"{config}: GEMM floor {floor_step:.3f} s per training step, {floor_infer:.3f} s "
                f"per encode + reverse (the products alone, torch.mm, best of 3 per shape)")
        peer_rs = results.get((config, allocs[0][0], "peer"))
        if peer_rs:
            ps = statistics.median(r["step"] for r in peer_rs)
            pi = statistics.median(r["encode"] + r["reconstruct"] for r in peer_rs)
            line += (f"; the reference's times over it, the most any fp32 implementation with this "
                     f"BLAS can gain: step {ps / floor_step:.2f}x, encode + reverse "
                     f"{pi / floor_infer:.2f}x")
        print(line)
    print("\n'warm' = warm-up steps before measuring (median over processes); 'x peer' = "
          "reference time / this time, the median over repeats of each back-to-back pair "
          "(reference under the first allocator listed), >1 is faster than the reference. "
          "FLOPs count convolutions analytically (forward 2*MACs, backward 2x forward); "
          "'%peak' = training GFLOP/s over the wall-time GEMM peak, '%cpupk' = GFLOP per "
          "CPU-second over the GEMM's (steadier when the machine is shared); 'infer' = "
          "eval-mode encode (forward) + exact reverse under no_grad; "
          "'cpu s' = process CPU time per step (all threads); 'step+MiB' = peak RSS minus RSS "
          "after building the model (activations, gradients, optimiser state); 'sys s/step' = "
          "kernel time per step (page faults).")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"matmul_peak_gflops": peak, "matmul_gflop_per_cpu_s": peak_cpu, "threads": threads,
             "summary": summary,
             "raw": {"/".join(k): v for k, v in results.items()}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
