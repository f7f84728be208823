#!/usr/bin/env python
"""Talking-face quality against training budget: does a model's gap to the mouth blend close
with more iterations, and where would it cross?

Writes the demo's synthetic set (``python -m lrw.synthetic``, seed ``--seed``; ``--hard`` for the
hard set), trains the demo's Glow on it (``train.py``, demo.py's plan) and then the talking-face
model (AD-flow on that Glow, or MI-flow) to increasing budgets, each a multiple of the demo's
iterations (AD-flow 200; MI-flow 400, the demo's plan under the thesis's objective: ``make demo``
now trains MI-flow 200 iterations with ``--matched_weight 1000``, which is ``--budgets 0.5
--train_flags '--matched_weight 1000'``), every budget resumed from the previous one's checkpoint
(``train.py --resume``: a seeded run resumes bit for bit). Each budget's checkpoint is scored by
``evaluate.py`` on the set's held-out query x source pairs against the exact ground truth, with
copying the query and the gain-matched mouth blend beside it (flat lines: they do not train).

Every step runs the project's scripts as subprocesses with ``OMP_NUM_THREADS=--threads``; values
depend on the seed and the thread count, not on how busy the machine is, so the time axis is
not wall time: it is iterations converted to quiet-machine minutes with a per-iteration cost
measured on an idle machine (``--quiet_s_per_iter``, default docs/demo.md's figures), plus the
Glow's quiet minutes for AD-flow. Wall and CPU seconds and the load average of every segment
are recorded beside them.

  python bench/budget_curve.py                          # AD-flow, frontal, seed 0, x1..x16
  python bench/budget_curve.py --model mi-flow --budgets 1 2 4 8
  python bench/budget_curve.py --hard --seed 1 --threads 1
  python bench/budget_curve.py --model mi-flow --budgets 0.5 1 --train_flags \
      '--matched_weight 1000' --tag mi-flow_frontal_seed0_t2_m1000   # bench/seed_table.py's name
  python bench/budget_curve.py --plot A.json B.json --png curve.png   # only draw finished runs

Outputs (under ``--out``, default ``bench_quality/budget_curve``): ``TAG.json`` (one row per
budget: iterations, quiet-equivalent minutes, motion err, state err, PSNR, dPSNR vs copy,
mouth-box PSNR; the baselines; the timings) and ``TAG.png`` (the curve beside the flat lines).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import matplotlib  # noqa: E402

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import torch  # noqa: E402

from evaluation.report import read_csv  # noqa: E402

# demo.py's FULL plan (the sizes of `make demo`), repeated as command-line flags
SET = ["--words", "8", "--speakers", "48", "--clips", "1", "--frames", "15", "--size", "256",
       "--queries", "4", "--sources", "4"]
COMMON = ["--save_every", "0", "--log_every", "5", "--workers", "0", "--no_progress"]
GLOW = ["--batch", "16", "--lr", "0.0005", "--sample_every", "200", "--n_flow", "8",
        "--n_block", "3", "--hidden", "128", "--img_size", "32"]
MODELS = {  # per model: iterations of the demo's plan, its flags
    "ad-flow": (200, ["--batch", "2", "--lr", "0.001", "--sample_every", "100", "--img_size",
                      "32", "--n_frames", "15", "--cls_hidden", "128", "--cls_lr", "0.001"]),
    "mi-flow": (400, ["--batch", "16", "--lr", "0.0005", "--sample_every", "200", "--n_flow",
                      "6", "--n_block", "3", "--hidden", "96", "--img_size", "32"]),
}
# Quiet-machine seconds per iteration, docs/demo.md (AMD EPYC, AVX2, 2 cores, default threads):
# Glow 102 s for 400 iterations, AD-flow 43 s for 200, MI-flow 109 s for 400 (each whole
# train.py run: start-up, AD-flow's least-squares init and held-out diagnostics included).
QUIET = {"glow": 102 / 400, "ad-flow": 43 / 200, "mi-flow": 109 / 400}
KEYS = {"motion_dev": "motion err", "motion": "state err", "psnr": "PSNR dB",
        "dpsnr": "dPSNR vs copy dB", "psnr_mouth": "mouth PSNR dB"}


def cpu_info() -> dict:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    name = next((ln.split(":", 1)[1].strip() for ln in out.splitlines()
                 if ln.startswith("Model name")), "unknown")
    flags = next((ln.split(":", 1)[1].split() for ln in out.splitlines()
                  if ln.startswith("Flags")), [])
    return {"model": name, "avx2": "avx2" in flags,
            "avx512": sorted(f for f in flags if f.startswith("avx512")),
            "amx": sorted(f for f in flags if f.startswith("amx")), "cores": os.cpu_count()}


class Runner:
    def __init__(self, args) -> None:
        self.args = args
        self.out = Path(args.out)
        self.env = dict(os.environ, OMP_NUM_THREADS=str(args.threads),
                        MKL_NUM_THREADS=str(args.threads))
        self.logs = self.out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)

    def run(self, name: str, argv: list[str]) -> dict:
        """Run ``python argv`` in the repository root; its output goes to logs/NAME.log.
        Returns its wall and CPU seconds and the load averages around it."""
        cmd = [sys.executable, *argv]
        print("$ python " + " ".join(argv), flush=True)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        load0, t0 = os.getloadavg()[0], time.perf_counter()
        with open(self.logs / f"{name}.log", "a") as fh:
            rc = subprocess.run(cmd, cwd=ROOT, env=self.env, stdout=fh, stderr=subprocess.STDOUT,
                                check=False).returncode
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if rc != 0:
            sys.exit(f"bench/budget_curve.py: {argv[0]} exited with {rc}; see "
                     f"{self.logs / (name + '.log')}")
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        return {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
                "load1": [round(load0, 2), round(os.getloadavg()[0], 2)]}


def step_of(path: Path) -> int:
    if not path.is_file():
        return -1
    return int(torch.load(path, map_location="cpu", weights_only=False)["step"])


def logged(path: Path) -> dict | None:
    """train.py's own wall time ('done: N iterations in S s') from a segment's log, for runs
    whose JSON was not written (an interrupted bench run)."""
    if not path.is_file():
        return None
    m = re.findall(r"done: (\d+) iterations in ([\d.]+) s", path.read_text())
    return {"train_py_wall_s": float(m[-1][1]), "from_log": path.name} if m else None


def scores(csv: Path, system_prefix: str) -> tuple[dict, dict, dict]:
    """(model row, copy row, blend row) of an evaluate.py metrics.csv at the model's size."""
    rows = [r for r in read_csv(csv) if "@256" not in r["system"]]
    pick = {"model": None, "copy": None, "blend": None}
    for r in rows:
        s = r["system"].lower()
        key = "copy" if "copy" in s else "blend" if "blend" in s else \
            "model" if s.startswith(system_prefix) else None
        if key and pick[key] is None:
            pick[key] = {"system": r["system"], **{k: r.get(k, math.nan) for k in KEYS}}
    if any(v is None for v in pick.values()):
        sys.exit(f"bench/budget_curve.py: {csv} lacks a model, copy or blend row "
                 f"(systems: {[r['system'] for r in rows]})")
    return pick["model"], pick["copy"], pick["blend"]


def curve(args) -> dict:
    r = Runner(args)
    kind = "hard" if args.hard else "frontal"
    data = r.out / f"{kind}_seed{args.seed}"
    ckdir, resdir = r.out / "checkpoint", r.out / "result"
    init = f"_{args.init}" if args.init else ""
    tag = args.tag or f"{args.model}_{kind}_seed{args.seed}_t{args.threads}{init}"
    if not (data / "manifest.json").is_file():
        r.run(f"set_{kind}_{args.seed}", ["-m", "lrw.synthetic", str(data), *SET, "--seed",
                                          str(args.seed), "--workers", "2",
                                          *(["--hard"] if args.hard else [])])
    base = [str(data / "train"), "--checkpoint_dir", str(ckdir), "--result_dir", str(resdir),
            "--seed", str(args.seed), *COMMON]
    timings = {}
    glow = None
    if args.model == "ad-flow":
        gname = f"glow_{kind}_seed{args.seed}_t{args.threads}_i{args.glow_iter}"
        glow = ckdir / gname / "last.pt"
        if step_of(glow) < args.glow_iter:
            timings["glow"] = r.run(gname, ["train.py", "--model", "glow", "-n", gname, *base,
                                            *GLOW, "--iter", str(args.glow_iter)])
    unit, flags = MODELS[args.model]
    name = f"{tag}_run"
    last = ckdir / name / "last.pt"
    rows = []
    prev = 0
    earlier = r.out / f"{tag}.json"  # a rerun reuses what is done and keeps its timings
    old = {row["iterations"]: row for row in json.loads(earlier.read_text())["rows"]} \
        if earlier.is_file() else {}
    for mult in args.budgets:
        iters = int(round(mult * unit))
        keep = ckdir / name / f"iter{iters:06d}.pt"
        seg = None
        if not keep.is_file():
            done = step_of(last)
            if done > iters:
                sys.exit(f"bench/budget_curve.py: {last} is at step {done}, past {iters}; "
                         "give the budgets in increasing order or a new --tag")
            if done < iters:
                argv = ["train.py", "--model", args.model, "-n", name, *base, *flags,
                        "--iter", str(iters)]
                if glow is not None:
                    argv += ["--glow", str(glow)]
                if args.init:
                    argv += ["--init", args.init]
                argv += shlex.split(args.train_flags)
                argv += ["--resume"] if done > 0 else ["--force"]
                seg = r.run(f"{name}_{iters}", argv)
            shutil.copy2(last, keep)  # same folder: the recorded Glow path still resolves
        ename = f"{tag}_iter{iters:06d}"
        csv = resdir / "eval" / ename / "metrics.csv"
        ev = None
        if not csv.is_file() or csv.stat().st_mtime < keep.stat().st_mtime:
            ev = r.run(ename, ["evaluate.py", "--model", args.model, "--checkpoint", str(keep),
                               str(data), "--result_dir", str(resdir), "--name", ename,
                               "--max_frames", "8", "--no_field_metrics", "--paste_back",
                               "none", "--overwrite", "--no_progress"])
        model, copy, blend = scores(csv, args.model.split("-")[0])
        quiet_s = iters * args.quiet_s_per_iter
        if glow is not None:
            quiet_s += args.glow_iter * QUIET["glow"]
        rows.append({"multiple": mult, "iterations": iters, "new_iterations": iters - prev,
                     "quiet_min": round(quiet_s / 60, 2), **model,
                     "train": seg or old.get(iters, {}).get("train")
                     or logged(r.logs / f"{name}_{iters}.log"),
                     "eval": ev or old.get(iters, {}).get("eval")})
        prev = iters
        print(f"{args.model} {iters:6d} it ~{quiet_s / 60:5.1f} quiet min: " + ", ".join(
            f"{KEYS[k]} {model[k]:.3f}" for k in KEYS) + f" | blend motion err "
            f"{blend['motion_dev']:.3f}, mouth PSNR {blend['psnr_mouth']:.2f}", flush=True)
        diag = []
        dpath = resdir / f"sample_{name}" / "diagnostics.jsonl"
        if dpath.is_file():  # held-out motion on the first --diag_pairs pairs per sample step
            diag = [json.loads(ln) for ln in dpath.read_text().splitlines() if ln.strip()]
        result = {"tag": tag, "model": args.model, "system": model["system"], "set": kind,
                  "seed": args.seed,
                  "threads": args.threads, "glow_iter": args.glow_iter if glow else None,
                  "quiet_s_per_iter": args.quiet_s_per_iter,
                  "quiet_glow_s": args.glow_iter * QUIET["glow"] if glow else 0.0,
                  "rows": rows, "copy": copy, "blend": blend,
                  "glow_timing": timings.get("glow") or logged(r.logs / f"{gname}.log")
                  if glow else None, "diagnostics": diag, "cpu": cpu_info(),
                  "torch": torch.__version__,
                  "command": "python bench/budget_curve.py " + " ".join(sys.argv[1:])}
        # after every budget: an interrupted run keeps the points it has
        (r.out / f"{tag}.json").write_text(json.dumps(result, indent=1))
    return result


def crossing(res: dict, key: str, lower_better: bool) -> str:
    """Where a straight line through the last three points in (log2 iterations, metric) meets
    the blend's flat line: an extrapolation, said as such, with the change per doubling."""
    rows, base = res["rows"], res["blend"][key]
    last = rows[-1][key]
    if (last <= base) if lower_better else (last >= base):
        return f"at or past the blend at {rows[-1]['iterations']} iterations"
    pts = [(math.log2(r["iterations"]), r[key]) for r in rows[-3:]]
    if len(pts) < 3:
        return "fewer than three points: no extrapolation"
    n = len(pts)
    mx, my = sum(p[0] for p in pts) / n, sum(p[1] for p in pts) / n
    slope = sum((p[0] - mx) * (p[1] - my) for p in pts) / sum((p[0] - mx) ** 2 for p in pts)
    trend = f"{slope:+.3f} per doubling over the last {n} points"
    if slope == 0 or (slope > 0) == lower_better:
        return f"not closing ({trend})"
    x = mx + (base - my) / slope
    if x > 40:
        return f"not within 2^40 iterations at this rate ({trend})"
    iters = 2 ** x
    minutes = (iters * res["quiet_s_per_iter"] + res["quiet_glow_s"]) / 60
    return (f"~{iters:,.0f} iterations, ~{minutes:,.0f} quiet minutes, if the trend held "
            f"({trend}; an extrapolation)")


def plot(results: list[dict], png: Path) -> None:
    panels = [("motion_dev", True), ("psnr_mouth", False), ("dpsnr", False), ("motion", True)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6))
    for ax, (key, lower) in zip(axes, panels, strict=True):
        drawn = set()  # the baselines once per set and seed (they do not train)
        vals = [r[key] for res in results for r in res["rows"]] + \
            [res["blend"][key] for res in results]
        pad = 0.15 * (max(vals) - min(vals) or 1.0)
        ax.set_ylim(min(vals) - pad, max(vals) + pad)  # copying the query may fall outside
        off = sorted({f"{res['copy'][key]:.2f}" for res in results
                      if not min(vals) - pad <= res["copy"][key] <= max(vals) + pad})
        for i, res in enumerate(results):
            xs = [r["quiet_min"] for r in res["rows"]]
            ax.plot(xs, [r[key] for r in res["rows"]], "o-", color=f"C{i}",
                    label=f"{res.get('system', res['model'])} {res['set']} s{res['seed']} "
                          f"t{res['threads']}")
            if (res["set"], res["seed"]) not in drawn:
                drawn.add((res["set"], res["seed"]))
                ax.axhline(res["blend"][key], color="k", ls="--", lw=1,
                           label=f"mouth blend ({res['set']} s{res['seed']})")
                ax.axhline(res["copy"][key], color="k", ls=":", lw=1,
                           label=f"copy the query ({res['set']} s{res['seed']})")
        ax.axvline(30, color="grey", lw=0.8)
        ax.text(30, ax.get_ylim()[1], " 30 min", va="top", fontsize=7, color="grey")
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel("quiet-equivalent CPU minutes (2 cores)")
        ax.set_title(f"{KEYS[key]} {'↓' if lower else '↑'}"
                     + (f"\n(copy the query: {', '.join(off)}, off the chart)" if off else ""),
                     fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    print(f"wrote {png}")


def table(res: dict) -> str:
    head = ["iterations", "quiet min", *KEYS.values()]
    lines = [f"{res['model']}, {res['set']} set, seed {res['seed']}, threads {res['threads']} "
             f"(row: {res.get('system', res['model'])})",
             "", "| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for r in res["rows"]:
        lines.append(f"| {r['iterations']} | {r['quiet_min']:.1f} | " + " | ".join(
            f"{r[k]:.3f}" if k.startswith("motion") else f"{r[k]:+.2f}" if k == "dpsnr"
            else f"{r[k]:.2f}" for k in KEYS) + " |")
    for name in ("blend", "copy"):
        b = res[name]
        lines.append(f"| {name} (flat) | | " + " | ".join(
            f"{b[k]:.3f}" if k.startswith("motion") else f"{b[k]:+.2f}" if k == "dpsnr"
            else f"{b[k]:.2f}" for k in KEYS) + " |")
    for key, lower in (("motion_dev", True), ("psnr_mouth", False), ("dpsnr", False)):
        lines.append(f"\n{KEYS[key]} reaches the blend's: "
                     f"{crossing(res, key, lower)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/budget_curve.py", allow_abbrev=False,
                                description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(MODELS), default="ad-flow")
    p.add_argument("--budgets", type=float, nargs="+", default=[1, 2, 4, 8, 16],
                   help="multiples of the demo's iterations, increasing (default: 1 2 4 8 16)")
    p.add_argument("--seed", type=int, default=0, help="synthetic set and training seed")
    p.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of every job")
    p.add_argument("--hard", action="store_true", help="the hard set instead of the frontal")
    p.add_argument("--glow_iter", type=int, default=400,
                   help="AD-flow: iterations of the Glow under it (default: the demo's 400)")
    p.add_argument("--quiet_s_per_iter", type=float, default=None,
                   help="quiet-machine seconds per iteration of the model (default: "
                        "docs/demo.md's: AD-flow 0.215, MI-flow 0.2725 under the thesis's "
                        "objective; give it for --train_flags that cost more per step)")
    p.add_argument("--init", default=None, choices=["lstsq", "matched", "random"],
                   help="AD-flow's --init (default: train.py's); the tag ends in _INIT")
    p.add_argument("--train_flags", default="",
                   help="more train.py flags for the model, one string (e.g. MI-flow's "
                        "'--matched_weight 1000'); needs --tag")
    p.add_argument("--tag", default=None, help="name of the run and its files")
    p.add_argument("--out", default="bench_quality/budget_curve")
    p.add_argument("--plot", nargs="+", default=None, metavar="JSON",
                   help="train nothing: draw and tabulate these finished runs")
    p.add_argument("--png", default=None, help="the curve's file (default: OUT/TAG.png)")
    args = p.parse_args(argv)
    if args.train_flags and not args.tag:
        p.error("--train_flags needs --tag (a run with other flags is another run)")
    if args.quiet_s_per_iter is None:
        args.quiet_s_per_iter = QUIET[args.model]
    results = [json.loads(Path(f).read_text()) for f in args.plot] if args.plot \
        else [curve(args)]
    for res in results:
        print("\n" + table(res))
    plot(results, Path(args.png or Path(args.out) / f"{results[0]['tag']}.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
