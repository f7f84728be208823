#!/usr/bin/env python
"""``train.py --amp`` on a CPU with fast bf16: the training step against the reference, and the
quality over seeds, in one command.

  python bench/amp_quality.py --peer GLOW_CHECKOUT              # speed, then quality (3 seeds)
  python bench/amp_quality.py --peer GLOW_CHECKOUT --part speed --configs small
  python bench/amp_quality.py --part quality --seeds 0 1 2 --out bench_amp
  python bench/amp_quality.py --part quality --tiny --seeds 0 --force   # smoke run anywhere

The first line says whether this CPU has fast bf16 (torch's oneDNN with AVX-512 BF16 or AMX,
``training.precision.cpu_has_fast_bf16``). Where it has not, the line says "not measurable on
this CPU" and the script exits 0 at once (bf16 runs many times slower than float32 there, so the
targets would take hours and mean nothing); ``--force`` runs anyway (the smoke test: numbers
meaningless, ``--amp`` allowed through).

speed: per config (``thesis`` = 64 px, K=32, L=4, additive, LU, hidden 512, batch 16;
``small`` = 32 px, K=8, L=3, batch 16), four fresh processes per repeat, alternating: ours in
float32 (what ``train.py`` runs), ours under ``--amp`` (bf16 autocast, the invertible path in
float32), the reference (``--peer DIR``, rosinality/glow-pytorch's ``model.py``, or
``FLOWDIS_REF_GLOW``) in float32 as it ships and under the same bf16 autocast. Each process: 3
warm-up steps, then ``--steps`` steps (median), timing forward, backward and the Adam step
apart. Reported: step time, ours/reference ratios against the reference's float32 and its bf16
step, and per pass type (forward, backward, and ours's inference encode and reverse with bf16
conditioners, ``test.py --precision bf16``) the fraction of the bf16 product peak measured here
(the better of a 2048^2 ``torch.mm`` and the same product as a 1x1 convolution, in bf16), FLOPs
counted analytically (``bench/glow_step.py``'s ``conv_macs``).

quality: for each seed the demo's plan (``demo.py``: a 32 px Glow, AD-flow on it, MI-flow) is
trained twice, float32 and ``--amp``, in ``--out/float32/seedN`` and ``--out/amp/seedN``
(reused when done); each model is scored by ``evaluate.py`` on the held-out identities
(bits/dim and the talking-face scores, float32 inference), the ``--amp`` models also with
``--precision bf16`` inference. Checks: held-out bits/dim under ``--amp`` at most 0.02 above
float32's (mean over seeds), and each talking-face score's ``--amp`` mean inside float32's
min..max over the seeds.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

SCORES = ("bpd", "motion_dev", "motion", "psnr", "psnr_mouth", "dpsnr", "ssim")
MODELS = (("glow", "glow"), ("ad-flow", "ad-flow"), ("mi-flow", "mi-flow"))  # (--model, label)


# ------------------------------------------------------------------------------------- speed
def bf16_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Best bf16 product rate here: ``torch.mm`` and the same product as a 1x1 convolution."""
    import torch
    import torch.nn.functional as F

    a = torch.randn(n, n, dtype=torch.bfloat16)
    b = torch.randn(n, n, dtype=torch.bfloat16)
    side = int(n ** 0.5)
    x = torch.randn(1, n, side, side, dtype=torch.bfloat16).contiguous(
        memory_format=torch.channels_last)
    w = torch.randn(n, n, 1, 1, dtype=torch.bfloat16)
    best = 0.0
    with torch.no_grad():
        for f in (lambda: a @ b, lambda: F.conv2d(x, w)):
            f()
            for _ in range(repeats):
                t = time.perf_counter()
                f()
                best = max(best, 2 * n ** 3 / (time.perf_counter() - t) / 1e9)
    return best


def worker(args: argparse.Namespace) -> None:
    """One (config, implementation, precision) in this process; prints one JSON line."""
    import torch
    from glow_step import CONFIGS, _build

    from training.optim import training_adam

    torch.manual_seed(0)
    size, n_flow, n_block, batch = CONFIGS[args.config]
    impl = "peer" if args.impl == "reference" else "ours"
    model = _build(impl, args.peer if impl == "peer" else str(ROOT), size, n_flow, n_block)
    x = torch.rand(batch, 3, size, size) - 0.5
    with torch.no_grad():
        if impl == "peer":
            model(x)  # the reference initialises ActNorm in its first forward
        else:
            model.initialize(x)
    model.train()
    if impl == "peer":
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)  # as its train.py
    else:
        opt = training_adam([{"params": list(model.parameters())}], lr=1e-4, eps=1e-8)
    bf16 = args.precision == "bf16"
    n_dims = x[0].numel()

    def step() -> tuple[float, float, float]:
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            log_p, logdet, _ = model(x)
        loss = -(log_p.float() + logdet.float()).mean() / n_dims
        t1 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        return t1 - t0, t2 - t1, time.perf_counter() - t2

    for _ in range(3):
        step()
    parts = [step() for _ in range(args.steps)]
    out = {"config": args.config, "impl": args.impl, "precision": args.precision,
           "step": statistics.median(sum(p) for p in parts),
           "forward": statistics.median(p[0] for p in parts),
           "backward": statistics.median(p[1] for p in parts),
           "adam": statistics.median(p[2] for p in parts)}
    if impl == "ours":  # inference as test.py runs it at this precision
        from glow.precision import cast_conditioners

        model.eval()
        cast_conditioners(model, torch.bfloat16 if bf16 else None)
        with torch.inference_mode():
            z = model.encode(x)
            model.reverse(z)
            enc, rev = [], []
            for _ in range(args.steps):
                t = time.perf_counter()
                z = model.encode(x)
                enc.append(time.perf_counter() - t)
                t = time.perf_counter()
                model.reverse(z)
                rev.append(time.perf_counter() - t)
        out["encode"], out["reverse"] = statistics.median(enc), statistics.median(rev)
    print(json.dumps(out), flush=True)


def run_speed(args: argparse.Namespace) -> list[dict]:
    from glow_step import CONFIGS, conv_macs

    impls = [("ours", "float32"), ("ours", "bf16")]
    if args.peer:
        impls += [("reference", "float32"), ("reference", "bf16")]
    else:
        print("no reference (--peer DIR or FLOWDIS_REF_GLOW): ours only")
    n = 2048 if args.fast else 256  # --force on the slow fallback: minutes otherwise
    peak = bf16_peak_gflops(n)
    print(f"bf16 product peak here: {peak:.1f} GFLOP/s ({n}^2)")
    rows = []
    for config in args.configs:
        runs: dict[tuple[str, str], list[dict]] = {k: [] for k in impls}
        for _ in range(args.repeats):
            for impl, prec in impls:  # alternating, each in a fresh process
                cmd = [sys.executable, __file__, "--worker", "--config", config, "--impl", impl,
                       "--precision", prec, "--steps", str(args.steps)]
                if args.peer:
                    cmd += ["--peer", args.peer]
                proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
                if proc.returncode:
                    raise SystemExit(f"error: {impl} {prec} {config}: {proc.stderr.strip()[-400:]}")
                runs[(impl, prec)].append(json.loads(proc.stdout.strip().splitlines()[-1]))
        fwd_flop = 2 * conv_macs(*CONFIGS[config])
        flops = {"forward": fwd_flop, "backward": 2 * fwd_flop, "encode": fwd_flop,
                 "reverse": fwd_flop}
        med = {k: {f: statistics.median(r[f] for r in v) for f in v[0] if f not in
                   ("config", "impl", "precision")} for k, v in runs.items()}
        for (impl, prec), m in med.items():
            row = {"config": config, "impl": impl, "precision": prec, **m}
            for ref_prec in ("float32", "bf16"):
                ref = med.get(("reference", ref_prec))
                if ref:
                    row[f"x_ref_{ref_prec}"] = ref["step"] / m["step"]
            for part, f in flops.items():
                if part in m:
                    row[f"peak_{part}"] = f / m[part] / 1e9 / peak
            rows.append(row)
    print("\n| config | implementation | precision | step s | fwd s | bwd s | Adam s | "
          "x ref float32 | x ref bf16 | % bf16 peak fwd / bwd / encode / reverse |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        pk = " / ".join(f"{100 * r[k]:.0f}" if f"{k}" in r else "-" for k in
                        ("peak_forward", "peak_backward", "peak_encode", "peak_reverse"))
        print(f"| {r['config']} | {r['impl']} | {r['precision']} | {r['step']:.3f} | "
              f"{r['forward']:.3f} | {r['backward']:.3f} | {r['adam']:.3f} | "
              f"{r.get('x_ref_float32', math.nan):.2f} | {r.get('x_ref_bf16', math.nan):.2f} | "
              f"{pk} |")
    print(f"({args.repeats} alternating repeats, each a fresh process: 3 warm-up steps, median "
          f"of {args.steps}; x ref = the reference's step / this step)")
    return rows


# ----------------------------------------------------------------------------------- quality
def _inference(prec: str) -> list[str]:
    """The inference precisions each trained model is scored at."""
    return ["float32"] + (["bf16"] if prec == "amp" else [])


def run_quality(args: argparse.Namespace) -> dict:
    import demo
    from evaluation.report import read_csv

    class PrecisionDemo(demo.Demo):
        amp = False

        def _run(self, cli: str, argv: list[str]) -> None:
            if cli == "train" and self.amp:
                argv = [*argv, "--amp"]
            super()._run(cli, argv)

    base = demo.TINY if args.tiny else demo.FULL
    for seed in [] if args.table_only else args.seeds:
        plan = dataclasses.replace(base, seed=seed, others=False)
        for prec in ("float32", "amp"):
            out = Path(args.out) / prec / f"seed{seed}"
            result = out / "result"
            d = PrecisionDemo(plan, out, result)
            d.amp = prec == "amp"
            t0 = time.perf_counter()
            with contextlib.redirect_stdout(sys.stderr):
                summary = d.run()
                checkpoints = {"glow": summary["glow"], **summary["models"]}
                for model, label in MODELS:
                    for inf in _inference(prec):
                        name = f"amp_{label}_{inf}"
                        d._run("evaluate", ["--model", model, "--checkpoint",
                                            str(checkpoints[model]), str(d.data),
                                            "--result_dir", str(result), "--name", name,
                                            "--max_frames", "8", "--precision", inf])
            print(f"seed {seed} {prec}: {time.perf_counter() - t0:.0f} s", flush=True)
    table: dict[str, dict[str, list[dict]]] = {}
    for seed in args.seeds:  # read back from the runs' metrics.csv files
        for prec in ("float32", "amp"):
            result = Path(args.out) / prec / f"seed{seed}" / "result"
            for _, label in MODELS:
                for inf in _inference(prec):
                    csv = result / "eval" / f"amp_{label}_{inf}" / "metrics.csv"
                    if not csv.is_file():
                        print(f"missing: {csv} (seed {seed} not run?)", file=sys.stderr)
                        continue
                    col = prec if inf == "float32" else "amp + bf16 inference"
                    for r in read_csv(csv):
                        if r["system"].startswith("baseline"):
                            continue
                        table.setdefault(r["system"], {}).setdefault(col, []).append(
                            {k: float(r.get(k) or math.nan) for k in SCORES})
    cols = ["float32", "amp", "amp + bf16 inference"]
    print("\n| system | score | " + " | ".join(cols) + " | check |")
    print("|---|---|" + "---:|" * len(cols) + "---|")
    verdict = {}
    for system, by_col in table.items():
        for k in SCORES:
            vals = {c: [r[k] for r in by_col.get(c, []) if not math.isnan(r[k])] for c in cols}
            if not vals["float32"] or not vals["amp"]:
                continue
            cells = []
            for c in cols:
                v = vals[c]
                cells.append(f"{statistics.fmean(v):.4f} ± "
                             f"{statistics.stdev(v) if len(v) > 1 else 0:.4f}" if v else "-")
            f32, amp = vals["float32"], statistics.fmean(vals["amp"])
            if k == "bpd":
                ok = amp <= statistics.fmean(f32) + 0.02
                check = f"{'met' if ok else 'MISSED'} (amp - float32 = {amp - statistics.fmean(f32):+.4f}, limit +0.02)"
            else:
                ok = min(f32) <= amp <= max(f32)
                check = f"{'met' if ok else 'MISSED'} (float32 seeds {min(f32):.4f}..{max(f32):.4f})"
            verdict[f"{system} {k}"] = ok
            print(f"| {system} | {k} | " + " | ".join(cells) + f" | {check} |")
    print(f"(seeds {' '.join(map(str, args.seeds))}; plan {'tiny' if args.tiny else 'demo'}; "
          "inference float32 unless the column says bf16)")
    return {"table": table, "verdict": verdict}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/amp_quality.py", allow_abbrev=False,
                                description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["all", "speed", "quality"], default="all")
    p.add_argument("--peer", default=os.environ.get("FLOWDIS_REF_GLOW") or None,
                   help="rosinality/glow-pytorch checkout holding model.py (default: "
                        "FLOWDIS_REF_GLOW)")
    p.add_argument("--configs", nargs="+", default=["thesis", "small"],
                   choices=["thesis", "small", "quick"])
    p.add_argument("--repeats", type=int, default=2, help="alternating repeats (default 2)")
    p.add_argument("--steps", type=int, default=2, help="timed steps per process (default 2)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", default="bench_amp", help="quality runs (reused when done)")
    p.add_argument("--tiny", action="store_true", help="quality: the demo's tiny plan")
    p.add_argument("--table_only", action="store_true",
                   help="quality: only the table, read from the runs already in --out")
    p.add_argument("--json", default=None, help="also write every figure here")
    p.add_argument("--force", action="store_true",
                   help="run even on a CPU without fast bf16 (a smoke test; numbers meaningless)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--config", default="small", help=argparse.SUPPRESS)
    p.add_argument("--impl", default="ours", help=argparse.SUPPRESS)
    p.add_argument("--precision", default="float32", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return 0

    import torch
    from quality import cpu_name

    import training.loop
    import training.precision
    from training.precision import cpu_has_fast_bf16

    fast = cpu_has_fast_bf16()
    head = (f"CPU: {cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"oneDNN bf16: {'yes' if fast else 'no'}")
    if not fast and not args.force:
        print(f"not measurable on this CPU: {head}; torch runs bf16 on a slow fallback here "
              "(bench/cpu_bf16.py), so --amp is refused and its targets need a CPU with "
              "AVX-512 BF16 or AMX (--force runs anyway, numbers meaningless)")
        return 0
    print(head + ("" if fast else "; --force: bf16 on the slow fallback, numbers meaningless"))
    if args.peer and not (Path(args.peer) / "model.py").is_file():
        print(f"error: --peer {args.peer}: no model.py there", file=sys.stderr)
        return 1
    if not fast:  # --force: let train.py's --amp through on this CPU, in this process
        training.loop.cpu_has_fast_bf16 = lambda: True
        training.precision.cpu_has_fast_bf16 = lambda: True
    args.fast = fast
    result = {"cpu": head}
    if args.part in ("all", "speed"):
        result["speed"] = run_speed(args)
    if args.part in ("all", "quality"):
        result["quality"] = run_quality(args)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
