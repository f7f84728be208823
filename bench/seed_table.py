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

AD-flow runs trained with ``--encoder full --init matched`` (``budget_curve.py --init matched
--train_flags '--encoder full --lr 1e-4' --tag ad-flow_frontal_seedS_tT_matched_full``: the
demo's recipe) are scored beside the thesis's linear encoder with ``--init matched`` and with
``--init lstsq``, and MI-flow runs trained with the
matched-pairs term (``budget_curve.py --model mi-flow --train_flags '--matched_weight 1000'
--tag mi-flow_frontal_seedS_tT_m1000``) beside the thesis's objective. Beside an AD-flow checkpoint, the fits ``bench/oracle_ad_flow.py`` writes (``matched_ad_flow.pt``:
the matched-pairs fit; ``oracle_ad_flow.pt``: the oracle, an upper bound) are scored as rows
of their own.

Outputs under ``--out`` (default ``bench_quality/budget_curve``): ``seed_table.json`` (every
run's rows) and ``seed_table.md`` (one table per resolution, as README.md and
docs/quality_curve.md give them: mean ± std over the runs found, the count of runs where the
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
    "ad-flow": [("matched_ad_flow.pt", "{system}, matched-pairs fit"),
                ("oracle_ad_flow.pt", "{system}, oracle fit (upper bound)")],
}
BETTER = {"motion_dev": -1, "psnr_mouth": 1, "dpsnr": 1}  # the three criteria


def pick(csv: Path, prefix: str, label: str | None = None) -> dict:
    """``{(system kind, resolution): row}`` of a metrics.csv: kind ``model:LABEL``, ``copy``,
    ``blend``; resolution ``32 px`` (the model's size) or ``256 px``. ``label`` renames the
    model's rows (a variant checkpoint scored under the model's name); ``{system}`` in it
    stands for the row's own name (MI-flow's two modes keep theirs)."""
    out = {}
    for r in read_csv(csv):
        s = r["system"]
        res = RES[1] if s.endswith("@256 px") else RES[0]
        low = s.lower()
        name = s.removesuffix(" @256 px")
        kind = "copy" if "copy" in low else "blend" if "blend" in low else \
            f"model:{label.format(system=name) if label else name}" \
            if low.startswith(prefix) else None
        if kind:
            out[(kind, res)] = {k: float(r.get(k, math.nan)) for k in KEYS}
    return out


def mean_std(vals: list[float], digits: int) -> str:
    vals = [v for v in vals if not math.isnan(v)]
    if not vals:
        return "–"
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{statistics.mean(vals):.{digits}f} ± {statistics.stdev(vals):.{digits}f}"


INITS = {  # runs trained with other flags: (tag suffix, label, budget or None for --budget,
    # the budget_curve.py flags that train it; {tag} is the run's tag)
    "ad-flow": [("", None, None, ""),
                ("_matched", "{system}, --init matched", None, " --init matched"),
                ("_matched_full", "{system}, --encoder full --init matched", None,
                 " --init matched --train_flags '--encoder full --lr 1e-4' --tag {tag}")],
    # scored at 200 iterations (the demo's recipe)
    "mi-flow": [("", None, None, ""),
                ("_m1000", "{system}, --matched_weight 1000, 200 iterations", 0.5,
                 " --budgets 0.5 --train_flags '--matched_weight 1000' --tag {tag}")],
}
LABELS = {"ad-flow, --encoder full --init matched":
              "AD-flow, `--encoder full --init matched` (the demo's recipe)",
          "ad-flow (relative), --encoder full --init matched":
              "AD-flow, `--encoder full --init matched`, `--motion relative`",
          "ad-flow, --init matched": "AD-flow, `--init matched` (the thesis's linear encoder)",
          "ad-flow (relative), --init matched":
              "AD-flow, `--init matched`, `--motion relative`",
          "ad-flow": "AD-flow, `--init lstsq`",
          "ad-flow (relative)": "AD-flow, `--init lstsq`, `--motion relative`",
          "ad-flow, matched-pairs fit": "AD-flow, matched-pairs fit "
                                        "(`bench/oracle_ad_flow.py --matched_pairs`)",
          "ad-flow (relative), matched-pairs fit": "AD-flow, matched-pairs fit, "
                                                   "`--motion relative`",
          "ad-flow, oracle fit (upper bound)": "AD-flow, oracle fit (upper bound, not trainable)",
          "ad-flow (relative), oracle fit (upper bound)":
              "AD-flow, oracle fit (upper bound), `--motion relative`",
          "mi-flow (thesis), --matched_weight 1000, 200 iterations":
              "MI-flow (thesis mode), `--matched_weight 1000`, 200 it (the demo's recipe)",
          "mi-flow (thesis)": "MI-flow (thesis mode), the thesis's objective",
          "mi-flow (cond)": "MI-flow (cond mode), the thesis's objective",
          "mi-flow (cond), --matched_weight 1000, 200 iterations":
              "MI-flow (cond mode), `--matched_weight 1000`, 200 it"}


def table(runs: list[dict], res: str) -> list[str]:
    """Markdown rows at resolution ``res``: every model label found, then both baselines, per
    set; mean ± std over runs and the runs that beat their seed's blend."""
    lines = ["| system | set | runs | motion err ↓ | mouth PSNR dB ↑ | dPSNR vs copy dB ↑ | "
             "beats the blend on motion / mouth / dPSNR / all three |",
             "|---|---|---:|---:|---:|---:|---|"]
    for kind in ("frontal", "hard"):
        found = {k.split("|")[0].split(":", 1)[1] for r in runs if r["set"] == kind
                 for k in r["rows"] if k.startswith("model:") and k.endswith(res)}
        for lab in [x for x in LABELS if x in found] + sorted(found - set(LABELS)):
            key = f"model:{lab}|{res}"
            sel = [r for r in runs if r["set"] == kind and key in r["rows"]]
            vals = {k: [r["rows"][key][k] for r in sel] for k in BETTER}
            beats = [[(r["rows"][key][k] - r["rows"][f"blend|{res}"][k]) * s > 0
                      for k, s in BETTER.items()] for r in sel]
            wins = " / ".join(str(sum(b[i] for b in beats)) for i in range(len(BETTER)))
            lines.append(f"| {LABELS.get(lab, lab)} | {kind} | {len(sel)} | "
                         f"{mean_std(vals['motion_dev'], 3)} | {mean_std(vals['psnr_mouth'], 2)} | "
                         f"{mean_std(vals['dpsnr'], 2)} | {wins} / {sum(map(all, beats))} of "
                         f"{len(sel)} |")
        for base, name in (("blend", "mouth blend (baseline)"),
                           ("copy", "copy the query (baseline)")):
            seen = {}
            for r in runs:  # one value per seed: baselines do not train
                if r["set"] == kind and f"{base}|{res}" in r["rows"]:
                    seen.setdefault(r["seed"], r["rows"][f"{base}|{res}"])
            if seen:
                v = {k: [row[k] for row in seen.values()] for k in BETTER}
                lines.append(f"| {name} | {kind} | {len(seen)} seeds | "
                             f"{mean_std(v['motion_dev'], 3)} | {mean_std(v['psnr_mouth'], 2)} | "
                             f"{mean_std(v['dpsnr'], 2)} | |")
    return lines


def per_run(runs: list[dict], res: str) -> list[str]:
    """Markdown rows: one per (set, seed, threads), one column per model label found and the
    blend's, each cell ``motion err / mouth PSNR / dPSNR``."""
    def cell(row: dict | None) -> str:
        if row is None:
            return "–"
        return f"{row['motion_dev']:.3f} / {row['psnr_mouth']:.2f} / {row['dpsnr']:+.2f}"

    found = {k.split("|")[0].split(":", 1)[1] for r in runs for k in r["rows"]
             if k.startswith("model:") and k.endswith(res)}
    labels = [x for x in LABELS if x in found] + sorted(found - set(LABELS))
    lines = ["| set, seed, threads | " + " | ".join(LABELS.get(x, x) for x in labels)
             + " | mouth blend |", "|---|" + "---|" * (len(labels) + 1)]
    keys = sorted({(r["set"], r["seed"], r["threads"]) for r in runs},
                  key=lambda k: (k[0] != "frontal", k[1], k[2]))
    for kind, seed, threads in keys:
        sel = [r for r in runs if (r["set"], r["seed"], r["threads"]) == (kind, seed, threads)]
        rows = {k: v for r in sel for k, v in r["rows"].items()}
        lines.append(f"| {kind}, {seed}, {threads} | "
                     + " | ".join(cell(rows.get(f"model:{x}|{res}")) for x in labels)
                     + f" | {cell(rows.get(f'blend|{res}'))} |")
    return lines


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
            for threads, (init, init_label, mult, flags) in (
                    (t, i) for t in args.threads
                    for i in INITS.get(model, [("", None, None, "")])):
                iters = int(round((mult or args.budget) * unit))
                ck = (out / "checkpoint" / f"{model}_frontal_seed{seed}_t{threads}{init}_run" /
                      f"iter{iters:06d}.pt")
                if not ck.is_file():
                    print(f"skip: {ck} (train it with bench/budget_curve.py --model {model} "
                          f"--seed {seed} --threads {threads}"
                          + flags.format(tag=ck.parent.name.removesuffix("_run")) + ")",
                          flush=True)
                    continue
                r = Runner(argparse.Namespace(out=str(out), threads=threads))
                if not (hard / "manifest.json").is_file():
                    r.run(f"set_hard_{seed}", ["-m", "lrw.synthetic", str(hard), *SET, "--seed",
                                               str(seed), "--workers", "2", "--hard"])
                cks = [(ck, init_label, init)]
                cks += [(ck.with_name(f), lab, init + "_" + f.removesuffix(".pt"))
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
                                         "--precision", "float32", "--overwrite",
                                         "--no_progress"])
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
             "found (a baseline does not train: over seeds). The last column counts the runs "
             "that beat the blend of their own seed (motion err lower, mouth PSNR and dPSNR "
             "higher)."]
    titles = {RES[1]: "Pasted back at 256 px, as test.py writes it",
              RES[0]: "At the models' size (32 px)"}
    for res in (RES[1], RES[0]):
        lines += ["", f"### {titles[res]}", "", *table(runs, res)]
    lines += ["", "### Per run at 256 px (motion err / mouth PSNR dB / dPSNR dB)", "",
              *per_run(runs, RES[1])]
    lines += ["", "Command: python bench/seed_table.py " + " ".join(argv or sys.argv[1:])]
    (out / "seed_table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
