"""Operator profile of one Glow pass (``torch.profiler``, shapes recorded), CPU.

Times a training step (forward, backward, the fused Adam step ``train.py`` uses) or an
inference pass (eval-mode encode then exact reverse under ``inference_mode``) after warm-up
passes, and prints the operators
grouped by name and input shapes: total milliseconds, share of the pass, and for convolutions
and matrix products the achieved GFLOP/s and its fraction of the float32 GEMM peak measured in
the same process (4096^3 ``torch.mm``, best of 5). Use it to see where a pass spends its time
before changing anything. It runs under the allocator ``train.py`` runs under (``--allocator
system`` for plain glibc) and prints which.

Examples::

    python bench/glow_profile.py --config small --pass train
    python bench/glow_profile.py --config thesis --pass infer --top 25
    python bench/glow_profile.py --config thesis --pass train --amp   # as train.py --amp

``--amp``: the training pass's forward under CPU bf16 autocast (what ``train.py --amp`` runs;
the invertible path stays float32), the inference pass with the coupling networks cast to bf16
(``test.py --precision bf16``); rates are then against the bf16 product peak (2048^2).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from glow_step import CONFIGS, HIDDEN, matmul_peak_gflops  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="small", choices=sorted(CONFIGS),
                   help="thesis (64 px, K=32, L=4), small (32 px, K=8, L=3) or quick")
    p.add_argument("--pass", dest="kind", default="train", choices=["train", "infer"],
                   help="train: forward+backward+Adam; infer: eval encode + reverse")
    p.add_argument("--batch", type=int, default=0, help="batch size (default: the config's)")
    p.add_argument("--affine", action="store_true", help="affine coupling (default additive)")
    p.add_argument("--warmup", type=int, default=2, help="unprofiled passes first (default 2)")
    p.add_argument("--top", type=int, default=20, help="rows to print (default 20)")
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (default torch's)")
    p.add_argument("--allocator", default="train", choices=["train", "system"],
                   help="train: the allocator train.py runs under (jemalloc with decay off "
                        "where installed, else glibc keeping freed pages); system: plain glibc "
                        "malloc (default train)")
    p.add_argument("--amp", action="store_true",
                   help="bf16: autocast in training, bf16 conditioners in inference")
    args = p.parse_args(argv)

    # Profile what train.py runs: the allocator decides whether fresh activation buffers fault
    # their pages in again on every pass (jemalloc preloaded without decay off gave the
    # few-channel products 30 % of the GEMM peak instead of 68 %, small config).
    from training.allocator import active_allocator, maybe_use_jemalloc

    if args.allocator == "train" and argv is None:
        maybe_use_jemalloc()  # as train.py: re-executed once with jemalloc, else glibc kept

    import torch
    from torch.profiler import ProfilerActivity, profile

    from glow import Glow
    from training.optim import training_adam

    if args.threads:
        torch.set_num_threads(args.threads)
    size, n_flow, n_block, batch = CONFIGS[args.config]
    batch = args.batch or batch
    torch.manual_seed(0)
    model = Glow(3, n_flow, n_block, affine=args.affine, conv_lu=True, hidden=HIDDEN,
                 img_size=size)
    x = torch.rand(batch, 3, size, size) - 0.5
    model.initialize(x)
    with torch.no_grad():  # non-zero zero-convs, so every coupling does real work
        for name, q in model.named_parameters():
            if "coupling.net.4" in name or "prior" in name:
                q.normal_(0, 0.01)
    opt = training_adam([{"params": list(model.parameters())}], lr=1e-5, eps=1e-8)

    def one() -> None:
        if args.kind == "train":
            model.train()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.amp):
                log_p, logdet, _ = model(x)
            loss = -(log_p.float() + logdet.float()).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        else:  # eval() once outside: it drops the eval-mode caches, as test.py never does
            with torch.inference_mode():
                model.reverse(model.encode(x), reconstruct=True)

    if args.kind == "infer":
        model.eval()
        if args.amp:
            from glow.precision import cast_conditioners

            cast_conditioners(model, torch.bfloat16)
    for _ in range(args.warmup):
        one()
    peak, _, threads = matmul_peak_gflops()
    if args.amp:
        from amp_quality import bf16_peak_gflops

        peak = bf16_peak_gflops()
    t = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True, with_flops=True) as prof:
        one()
    wall = time.perf_counter() - t
    events = prof.key_averages(group_by_input_shape=True)
    total_us = sum(e.self_cpu_time_total for e in events)
    rows = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[: args.top]
    print(f"{args.config} {args.kind} batch {batch}: {wall:.2f} s wall under the profiler, "
          f"{threads} threads; {'bf16' if args.amp else 'fp32'} GEMM peak {peak:.1f} GFLOP/s; "
          f"allocator "
          f"{active_allocator()} (MALLOC_CONF {os.environ.get('MALLOC_CONF', 'unset')})")
    print(f"{'self ms':>9} {'share':>6} {'calls':>6} {'GFLOP/s':>8} {'%peak':>6}  op  shapes")
    for e in rows:
        ms = e.self_cpu_time_total / 1e3
        # FLOPs are attributed to the aten op (e.g. aten::convolution) while the time sits in
        # its kernel child; show the rate on the row that carries the FLOPs, using total time.
        rate = e.flops / (e.cpu_time_total * 1e3) if e.flops and e.cpu_time_total else 0.0
        shapes = str(e.input_shapes)[:90]
        print(f"{ms:9.1f} {100 * e.self_cpu_time_total / total_us:5.1f}% {e.count:6d} "
              f"{rate:8.1f} {100 * rate / peak if rate else 0:5.0f}%  {e.key}  {shapes}")
    flop_rows = [e for e in events if e.flops]
    flops = sum(e.flops for e in flop_rows)
    print(f"\ncounted {flops / 1e9:.1f} GFLOP (convolutions and matmuls) in {wall:.2f} s: "
          f"{flops / wall / 1e9:.1f} GFLOP/s = {100 * flops / wall / 1e9 / peak:.0f}% of peak "
          "(profiler overhead included)")
    print("\nby convolution/matmul shape (total time incl. children, rate):")
    for e in sorted(flop_rows, key=lambda e: e.cpu_time_total, reverse=True)[: args.top]:
        ms = e.cpu_time_total / 1e3
        rate = e.flops / (e.cpu_time_total * 1e3)
        print(f"{ms:9.1f} ms {e.count:5d}x {rate:7.1f} GFLOP/s {100 * rate / peak:4.0f}%  "
              f"{e.key}  {str(e.input_shapes)[:100]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
