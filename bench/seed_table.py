#!/usr/bin/env python
"""The talking-face models against both baselines over seeds and thread counts, on the frontal
and the hard set, at the model's size and pasted back at 256 px (what ``test.py`` writes).

Reads the checkpoints ``bench/budget_curve.py`` trained (the demo's plan per seed and thread
count: ``OUT/checkpoint/{model}_frontal_seed{S}_t{T}_run/iter{N}.pt``, trained on the frontal set
of seed S with OMP_NUM_THREADS=T), writes the hard set of every seed beside the frontal one
(``python -m lrw.synthetic --hard``, the same sizes), and scores every checkpoint on both sets'
held-out pairs with ``evaluate.py`` (every frame of the 16 pairs, ``--paste_back region``, run
with the checkpoint's thread count; ``--max_frames 8`` only thins the bits/dim frames). The models are never trained on the hard set. Baselines do not
train: their figures are per seed.

  python bench/budget_curve.py --seed S --threads T --budgets 1    # for each S, T (and mi-flow)
  python bench/seed_table.py                                        # this table

Beside an AD-flow checkpoint, the fits ``bench/oracle_ad_flow.py`` writes (``matched_ad_flow.pt``:
the matched-pairs fit; ``oracle_ad_flow.pt``: the oracle, an upper bound) are scored as rows
of their own.

Outputs under ``--out`` (default ``bench_quality/budget_curve``): ``seed_table.json`` (every
run's rows) and ``seed_table.md`` (mean ± std over the runs found, the count of runs where the
model beats the blend on each of motion err, mouth PSNR and dPSNR, and on all three).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from budget_curve import KEYS, MODELS, SET, Runner, cpu_info  # noqa: E402

from evaluation.report import read_csv  # noqa: E402

RES = ("32 px", "256 px")
VARIANTS = {  # checkpoints bench/oracle_ad_flow.py writes beside an AD-flow one: (file, label)
    "ad-flow": [("matched_ad_flow.pt", "ad-flow, matched-pairs fit"),
                ("oracle_ad_flow.pt", "ad-flow, oracle fit (upper bound)")],
}
BETTER = {"motion_dev": -1, "psnr_mouth": 1, "dpsnr": 1}  # the three criteria


def pick(csv: Path, prefix: str, label: str | None = None) -> dict:
    """``{(system kind, resolution): row}`` of a metrics.csv: kind ``model:LABEL``, ``copy``,
    ``blend``; resolution ``32 px`` (the model's size) or ``256 px``. ``label`` renames the
    model's rows (a variant checkpoint scored under the model's name)."""
    out = {}
    for r in read_csv(csv):
        s = r["system"]
        res = RES[1] if s.endswith("@256 px") else RES[0]
        low = s.lower()
        kind = "copy" if "copy" in low else "blend" if "blend" in low else \
            f"model:{label or s.removesuffix(' @256 px')}" if low.startswith(prefix) else None
        if kind:
            out[(kind, res)] = {k: float(r.get(k, math.nan)) for k in KEYS}
    return out


def mean_std(vals: list[float]) -> str:
    vals = [v for v in vals if not math.isnan(v)]
    if not vals:
        return "–"
    if len(vals) == 1:
        return f"{vals[0]:.3f}"
    return f"{statistics.mean(vals):.3f} ± {statistics.stdev(vals):.3f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench_quality/budget_curve",
                   help="budget_curve.py's output folder (default: bench_quality/budget_curve)")
    p.add_argument("--models", nargs="+", default=sorted(MODELS), choices=sorted(MODELS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--budget", type=float, default=1,
                   help="multiple of the demo's iterations to score (default: 1, the demo's)")
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    runs = []
    for seed in args.seeds:
        frontal = out / f"frontal_seed{seed}"
        hard = out / f"hard_seed{seed}"
        for model in args.models:
            unit = MODELS[model][0]
            iters = int(round(args.budget * unit))
            for threads in args.threads:
                ck = (out / "checkpoint" / f"{model}_frontal_seed{seed}_t{threads}_run" /
                      f"iter{iters:06d}.pt")
                if not ck.is_file():
                    print(f"skip: {ck} (train it with bench/budget_curve.py --model {model} "
                          f"--seed {seed} --threads {threads})", flush=True)
                    continue
                r = Runner(argparse.Namespace(out=str(out), threads=threads))
                if not (hard / "manifest.json").is_file():
                    r.run(f"set_hard_{seed}", ["-m", "lrw.synthetic", str(hard), *SET, "--seed",
                                               str(seed), "--workers", "2", "--hard"])
                cks = [(ck, None, "")]
                cks += [(ck.with_name(f), lab, "_" + f.removesuffix(".pt"))
                        for f, lab in VARIANTS.get(model, []) if ck.with_name(f).is_file()]
                for kind, data in (("frontal", frontal), ("hard", hard)):
                    rows = {}
                    for path, label, suffix in cks:
                        name = (f"table_{model}_{kind}_seed{seed}_t{threads}_iter{iters:06d}"
                                f"{suffix}")
                        csv = out / "result" / "eval" / name / "metrics.csv"
                        if not csv.is_file() or csv.stat().st_mtime < path.stat().st_mtime:
                            r.run(name, ["evaluate.py", "--model", model, "--checkpoint",
                                         str(path), str(data), "--result_dir",
                                         str(out / "result"), "--name", name, "--max_frames",
                                         "8", "--no_field_metrics", "--paste_back", "region",
                                         "--overwrite", "--no_progress"])
                        rows.update(pick(csv, model.split("-")[0], label))
                    runs.append({"model": model, "set": kind, "seed": seed, "threads": threads,
                                 "iterations": iters, "csv": str(csv),
                                 "rows": {f"{k}|{res}": v for (k, res), v in rows.items()}})
    if not runs:
        sys.exit("bench/seed_table.py: no checkpoint found; train them with "
                 "bench/budget_curve.py first")
    (out / "seed_table.json").write_text(json.dumps({"runs": runs, "cpu": cpu_info()},
                                                    indent=1))
    lines = [f"CPU: {cpu_info()['model']}; {len(runs)} scored runs; mean ± std over the runs "
             "found (a baseline: over seeds). Wins: runs where the model beats the blend at the "
             "same resolution on that metric (motion err lower, mouth PSNR and dPSNR higher).",
             "", "| system | set | res | runs (seed/threads) | motion err ↓ | mouth PSNR dB ↑ | "
             "dPSNR vs copy dB ↑ | state err ↓ | wins motion / mouth / dPSNR / all |",
             "|---|---|---|---|---:|---:|---:|---:|---|"]
    for kind in ("frontal", "hard"):
        for res in RES:
            labels = sorted({k.split("|")[0] for rr in runs if rr["set"] == kind
                             for k in rr["rows"] if k.endswith(res) and k.startswith("model:")})
            for lab in labels:
                sel = [rr for rr in runs if rr["set"] == kind and f"{lab}|{res}" in rr["rows"]]
                vals = {k: [rr["rows"][f"{lab}|{res}"][k] for rr in sel] for k in KEYS}
                wins = {k: sum(
                    (rr["rows"][f"{lab}|{res}"][k] - rr["rows"][f"blend|{res}"][k]) * s > 0
                    for rr in sel) for k, s in BETTER.items()}
                every = sum(all((rr["rows"][f"{lab}|{res}"][k] - rr["rows"][f"blend|{res}"][k])
                                * s > 0 for k, s in BETTER.items()) for rr in sel)
                who = ", ".join(f"{rr['seed']}/{rr['threads']}" for rr in sel)
                lines.append(
                    f"| {lab.split(':', 1)[1]} | {kind} | {res} | {len(sel)} ({who}) | "
                    f"{mean_std(vals['motion_dev'])} | {mean_std(vals['psnr_mouth'])} | "
                    f"{mean_std(vals['dpsnr'])} | {mean_std(vals['motion'])} | "
                    f"{wins['motion_dev']} / {wins['psnr_mouth']} / {wins['dpsnr']} / {every} "
                    f"of {len(sel)} |")
            for base in ("blend", "copy"):
                seen = {}
                for rr in runs:  # one value per seed: baselines do not train
                    if rr["set"] == kind and f"{base}|{res}" in rr["rows"]:
                        seen.setdefault(rr["seed"], rr["rows"][f"{base}|{res}"])
                if seen:
                    v = {k: [row[k] for row in seen.values()] for k in KEYS}
                    name = "mouth blend (baseline)" if base == "blend" else \
                        "copy the query (baseline)"
                    lines.append(
                        f"| {name} | {kind} | {res} | {len(seen)} seeds | "
                        f"{mean_std(v['motion_dev'])} | {mean_std(v['psnr_mouth'])} | "
                        f"{mean_std(v['dpsnr'])} | {mean_std(v['motion'])} | |")
    lines += ["", "Command: python bench/seed_table.py " + " ".join(argv or sys.argv[1:])]
    (out / "seed_table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
