"""Glow training-step and reverse benchmark (CPU), optionally against a reference checkout.

Every measured configuration runs in a fresh subprocess, so its peak resident memory
(``ru_maxrss``) is its own and allocator state never leaks between runs. With ``--peer DIR``
the reference ``model.py`` found in DIR (rosinality/glow-pytorch layout) is timed too, and the
runs alternate ours / peer / ours / peer ... so slow drift of the machine hits both alike.

Measured per run: median wall time of a training step (forward, backward, Adam step) after one
warm-up step, peak RSS during training, and in eval mode under ``no_grad`` the time of
``reverse`` with ``reconstruct=True`` (invert given latents) and with ``reconstruct=False``
(sampling: noise mapped through the priors).

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
    "quick": (16, 2, 2, 4),
}
HIDDEN = 512


# --------------------------------------------------------------------------- analytic FLOPs
def conv_macs(img_size: int, n_flow: int, n_block: int, batch: int, hidden: int = HIDDEN,
              in_channel: int = 3, affine: bool = False) -> int:
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
        macs += prior_in * prior_out * 9 * hw
        c = c4 // 2 if split else c4
    return macs * batch


def matmul_peak_gflops(n: int = 4096, repeats: int = 5) -> tuple[float, float, int]:
    """Best float32 GEMM rate on torch's intra-op threads: (GFLOP/s wall, GFLOP per CPU-second,
    threads). The per-CPU-second figure is steadier when other jobs share the machine."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    c = torch.empty(n, n)
    torch.mm(a, b, out=c)
    best = best_cpu = 0.0
    for _ in range(repeats):
        t, u = time.perf_counter(), time.process_time()
        torch.mm(a, b, out=c)
        best = max(best, 2 * n**3 / (time.perf_counter() - t) / 1e9)
        best_cpu = max(best_cpu, 2 * n**3 / (time.process_time() - u) / 1e9)
    return best, best_cpu, torch.get_num_threads()


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


def _build(impl: str, root: str, size: int, n_flow: int, n_block: int):
    import torch

    if impl == "peer":
        if not hasattr(torch, "qr"):  # the reference calls torch.qr, removed from torch
            torch.qr = lambda a: torch.linalg.qr(a)
        sys.path.insert(0, root)
        import model as peer_model

        return peer_model.Glow(3, n_flow, n_block, affine=False, conv_lu=True)
    sys.path.insert(0, root)
    from glow import Glow

    model = Glow(3, n_flow, n_block, affine=False, conv_lu=True, hidden=HIDDEN, img_size=size)
    if impl == "ours_lowmem":
        from glow.memory import enable_low_memory

        enable_low_memory(model)
    return model


def worker(args: argparse.Namespace) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    size, n_flow, n_block, batch = CONFIGS[args.config]
    model = _build(args.impl, args.root, size, n_flow, n_block)
    x = torch.rand(batch, 3, size, size) - 0.5
    with torch.no_grad():
        if args.impl == "peer":
            model(x)  # the reference initialises ActNorm inside its first forward
        else:
            model.initialize(x)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    n_dims = x[0].numel()

    def step() -> float:
        log_p, logdet, _ = model(x)
        loss = -(log_p + logdet).mean() / n_dims
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss)

    rss_before = _rss_mib()
    load0 = os.getloadavg()[0]
    t = time.perf_counter()
    step()
    warm = time.perf_counter() - t
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
        model.reverse(z, reconstruct=True)  # warm-up (and caches in eval mode)
        rec, smp, rec_cpu = [], [], []
        for _ in range(max(1, args.steps)):
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
        "step": statistics.median(times) if times else warm, "warm": warm, "steps": times,
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
            threads: int = 0) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF")}
    env["FLOWDIS_ALLOCATOR"] = "system"  # never let anything re-exec behind the benchmark
    if alloc_env:
        env.update(alloc_env)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--impl", impl,
           "--root", root, "--config", config, "--steps", str(steps), "--threads", str(threads)]
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
    p.add_argument("--steps", type=int, default=2,
                   help="measured steps per process after one warm-up (default 2)")
    p.add_argument("--allocator", choices=["system", "jemalloc", "both"], default="system",
                   help="glibc malloc, jemalloc (if installed) or both (default system)")
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
        args.configs, args.repeats, args.steps = "quick", 1, 1
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    bad = [c for c in configs if c not in CONFIGS]
    if bad:
        p.error(f"unknown config(s) {bad}; choose from {sorted(CONFIGS)}")
    if args.peer and not (Path(args.peer) / "model.py").is_file():
        p.error(f"--peer {args.peer}: no model.py there")

    allocs: list[tuple[str, dict | None]] = []
    if args.allocator in ("system", "both"):
        allocs.append(("glibc", None))
    if args.allocator in ("jemalloc", "both"):
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
    print(f"fp32 matmul peak (4096^3 sgemm, {threads} threads): {peak:.1f} GFLOP/s wall, "
          f"{peak_cpu:.1f} GFLOP per CPU-second")
    print(f"repeats {args.repeats} fresh process(es) x {args.steps} measured step(s) each, "
          "after 1 warm-up step; impls alternate within each repeat\n")

    results: dict = {}
    for config in configs:
        for rep in range(args.repeats):
            for alloc_name, alloc_env in allocs:
                for impl, root in impls:
                    r = run_one(impl, root, config, args.steps, alloc_env, args.threads)
                    results.setdefault((config, alloc_name, impl), []).append(r)
                    print(f"  [{config} rep {rep + 1}/{args.repeats}] {impl:11s} {alloc_name:8s}"
                          f" step {r['step']:7.3f}s  peak {r['peak_mib']:7.0f} MiB  reconstruct "
                          f"{r['reconstruct']:6.3f}s (cpu {r['reconstruct_cpu']:.2f}s)  sample {r['sample']:6.3f}s  cpu/step "
                          f"{r['cpu']:.2f}s  load {r['load']:.1f}", flush=True)

    head = ["config", "impl", "alloc", "step s", "x peer", "cpu s", "x peer", "GFLOP/s", "%peak", "%cpupk", "peak MiB",
            "step+MiB", "recon s", "x peer", "sample s", "x peer", "sys s/step"]
    widths = [6, 11, 8, 7, 6, 6, 6, 7, 5, 6, 8, 8, 7, 6, 8, 6, 10]
    print("\n" + _fmt_row(head, widths))
    summary = []
    for config in configs:
        size, n_flow, n_block, batch = CONFIGS[config]
        flops = 3 * 2 * conv_macs(size, n_flow, n_block, batch)
        ref = {}
        rs = results.get((config, allocs[0][0], "peer"))  # glibc when measured: as it ships
        if rs:
            ref = {k: statistics.median(r[k] for r in rs)
                   for k in ("step", "cpu", "reconstruct", "sample")}
        for alloc_name, _ in allocs:
            for impl, _root in impls:
                rs = results[(config, alloc_name, impl)]
                med = {k: statistics.median(r[k] for r in rs)
                       for k in ("step", "cpu", "reconstruct", "sample", "peak_mib",
                                 "rss_before_mib")}
                n_steps = 1 + args.steps
                sys_per_step = statistics.median(r["sys_s"] for r in rs) / n_steps
                gf = flops / med["step"] / 1e9

                def ratio(k, med=med, ref=ref):
                    return f"{ref[k] / med[k]:.2f}" if ref else "-"

                row = [config, impl, alloc_name, f"{med['step']:.3f}", ratio("step"),
                       f"{med['cpu']:.2f}", ratio("cpu"),
                       f"{gf:.1f}", f"{100 * gf / peak:.0f}",
                       f"{100 * flops / med['cpu'] / 1e9 / peak_cpu:.0f}",
                       f"{med['peak_mib']:.0f}",
                       f"{med['peak_mib'] - med['rss_before_mib']:.0f}",
                       f"{med['reconstruct']:.3f}", ratio("reconstruct"),
                       f"{med['sample']:.3f}", ratio("sample"), f"{sys_per_step:.2f}"]
                print(_fmt_row(row, widths))
                summary.append(dict(zip(head, row, strict=True)))
    print("\n'x peer' = reference time (first allocator listed) / this time, >1 is faster "
          "than the reference. "
          "GFLOP/s counts convolutions analytically (forward 2*MACs, backward 2x forward); "
          "'%peak' = GFLOP/s over the wall-time GEMM peak, '%cpupk' = GFLOP per CPU-second "
          "over the GEMM's (steadier when the machine is shared); "
          "'cpu s' = process CPU time per step (all threads; steadier than wall time on a busy "
          "machine); 'step+MiB' = peak RSS minus RSS after building the model (activations, gradients, "
          "optimiser state); 'sys s/step' = kernel time per step (page faults).")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"matmul_peak_gflops": peak, "matmul_gflop_per_cpu_s": peak_cpu, "threads": threads,
             "summary": summary,
             "raw": {"/".join(k): v for k, v in results.items()}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
