#!/usr/bin/env python
"""pose-flow over seeds and thread counts, on held-out identities, against its own landmark warp
(the flow's starting point), the scikit-image warp and copying the source.

Sets (written once under ``OUT/data``, shared by every run): the training set
``python -m pose_flow.synthetic OUT/data/train_N --identities N --clips 2 --frames 6 --size 32
--eval_identities 3 --targets 3 --drive_frames 12`` and the held-out set
``OUT/data/eval --identities 2 --clips 1 --frames 2 --size 32 --eval_identities 6 --targets 6
--drive_frames 4 --seed 7``: 6 sources x 6 targets = 36 transfers with their exact answers, of
identities no training set here draws (the answers are the source identity rendered at the
target's pose and mouth).

For each seed S and thread count T: ``train.py --model pose-flow`` with the plan's flags
(``pose_flow.demo.LONG``, or ``FULL``: the demo's, with ``--plan demo``) and ``--seed S
--save_every ITER/4``, run with ``OMP_NUM_THREADS=MKL_NUM_THREADS=T`` set before torch starts,
then ``evaluate.py --model pose-flow`` on the held-out set for each saved checkpoint. The
result of a run is its LAST checkpoint (the schedule's end; no checkpoint is picked on the test
pairs); the quarters are its curve. Every step is a subprocess of the project's scripts in the
repository root, its output in ``OUT/logs/STEP.log``. A finished checkpoint and an evaluation
newer than its checkpoint are reused, so an interrupted run resumes, and several invocations may
share one ``--out`` (each run writes ``OUT/runs/NAME.json``; run ``--sets_only`` first so they
do not write the sets at once, and ``--table_only`` last). A failed step is reported, counted and
skips the rest of its run; the script exits 1 when any step failed.

  python bench/pose_flow_seeds.py --out ../pose_seeds                  # 3 seeds x 1, 2 threads
  python bench/pose_flow_seeds.py --out ../pose_seeds --sets_only      # then, on 2 cores:
  python bench/pose_flow_seeds.py --out ../pose_seeds --threads 1 --seeds 0 1 2 &
  python bench/pose_flow_seeds.py --out ../pose_seeds --threads 2 --seeds 0 1 2   # (later)
  python bench/pose_flow_seeds.py --out ../pose_seeds --table_only
  python bench/pose_flow_seeds.py --tiny --out ../pose_tiny            # seconds: a smoke run

Outputs: ``OUT/pose_flow_seeds.png`` (every run's curve against the target),
``OUT/pose_flow_seeds.md`` (mean ± std over the runs of every system at the schedule's
end, the runs whose PSNR is at least 1 dB above the flow's own warp, the thread-count spread,
one row per run with its curve) and ``OUT/pose_flow_seeds.json`` (every run's figures at every
checkpoint, timings), rewritten after every run. ``--mirror`` scores the model mirror-averaged
(``evaluate.py --mirror``) and writes ``pose_flow_seeds_mirror.*`` and ``runs/NAME_mirror.json``
beside the plain ones, reusing the finished checkpoints:

  python bench/pose_flow_seeds.py --out ../pose_seeds --model_set n_flow=4 --threads 1 --mirror
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "bench"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import torch  # noqa: E402
from budget_curve import cpu_info, step_of  # noqa: E402
from steps import Failed, Steps, fmt, stats  # noqa: E402

from pose_flow.demo import FULL, LONG, TINY, flags  # noqa: E402

# (column in evaluate.py's metrics.csv, label, digits, better direction: +1 higher, -1 lower)
FIGS = [("psnr", "PSNR dB", 2, 1), ("ssim", "SSIM", 4, 1), ("l1", "L1", 4, -1),
        ("lm_err", "landmark err", 4, -1)]
SYSTEMS = {"pose-flow": "model", "pose-flow (--mirror)": "model",
           "warp source (the flow's own warp)": "own_warp", "warp source": "warp",
           "copy source": "copy"}
DRIVEN = {"driven: pose-flow (--retarget)": "model",
          "driven: pose-flow (--retarget --mirror)": "model",
          "driven: its own warp (--retarget)": "own_warp", "driven: copy the query": "copy"}
LABELS = {"model": "pose-flow", "own_warp": "its own warp (the flow's start)",
          "warp": "warp source, scikit-image (baseline)", "copy": "copy source (baseline)"}
TARGET_DB = 1.0  # the issue's: at least 1 dB above its own warp


def plan_of(args):
    plan = TINY if args.tiny else FULL if args.plan == "demo" else LONG
    return replace(plan, model={**plan.model, **overrides(args)})


def overrides(args) -> dict:
    """``--model_set KEY=VALUE`` pairs as the plan's model options (numbers parsed)."""
    out: dict = {}
    for item in getattr(args, "model_set", None) or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--model_set {item}: write KEY=VALUE, e.g. --model_set n_flow=4")
        for kind in (int, float):
            try:
                out[key] = kind(value)
                break
            except ValueError:
                continue
        else:
            out[key] = value
    return out


def mirror_tag(args) -> str:
    """What ``--mirror`` adds to evaluation, run-record and output names: ``_mirror``."""
    return "_mirror" if getattr(args, "mirror", False) else ""


def run_tag(args) -> str:
    """What ``--model_set`` adds to a run's name: ``_n_flow4`` for ``n_flow=4``."""
    return "".join(f"_{k}{v}" for k, v in overrides(args).items())


def sets(args, st: Steps) -> tuple[Path, Path]:
    """Write (or reuse: the generator keeps a set made with the same options) both sets."""
    plan, data = plan_of(args), Path(args.out) / "data"
    ids = args.identities or plan.identities
    train = data / f"train_{ids}"
    held = data / "eval"
    size = str(plan.size)
    st.run(f"set_train_{ids}", ["-m", "pose_flow.synthetic", str(train), "--identities",
                                str(ids), "--clips", "2", "--frames", str(plan.frames),
                                "--size", size, "--eval_identities", str(plan.eval_identities),
                                "--targets", str(plan.targets), "--drive_frames",
                                str(plan.drive_frames), "--no_progress"], 1)
    n_eval = 2 if args.tiny else 6
    st.run("set_eval", ["-m", "pose_flow.synthetic", str(held), "--identities", "2", "--clips",
                        "1", "--frames", "2", "--size", size, "--eval_identities", str(n_eval),
                        "--targets", str(n_eval), "--drive_frames", "4", "--seed", "7",
                        "--no_progress"], 1)
    st.run("set_drive", ["-m", "pose_flow.synthetic", str(data / "drive"), "--identities", "2",
                         "--clips", "1", "--frames", "2", "--size", size, "--eval_identities",
                         str(n_eval), "--targets", "1", "--drive", "2", "--drive_frames",
                         "4" if args.tiny else "12", "--seed", "8", "--no_progress"], 1)
    return train, held


def read_metrics(path: Path, systems: dict = SYSTEMS) -> dict:
    """``{"model"|"own_warp"|"warp"|"copy": {psnr, ssim, l1, lm_err}}`` of an evaluate.py
    metrics.csv (pose job); ``systems``: its row names to those keys."""
    out = {}
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            key = systems.get(row["system"])
            if key:
                out[key] = {k: float(row[k]) if row.get(k) not in (None, "") else math.nan
                            for k, *_ in FIGS}
    return out


def one_run(st: Steps, args, train: Path, held: Path, seed: int, threads: int) -> dict:
    plan, out = plan_of(args), Path(args.out)
    it = args.iter or plan.train["iter"]
    name = (f"pose_{args.plan}{run_tag(args)}_n{train.name.split('_')[-1]}_seed{seed}"
            f"_t{threads}")
    ckdir, resdir = out / "checkpoint" / name, out / "result"
    rec: dict = {"name": name, "seed": seed, "threads": threads, "iter": it,
                 "mirror": bool(args.mirror)}
    mirror, tag = ["--mirror"] if args.mirror else [], mirror_tag(args)
    last = ckdir / "p" / "last.pt"
    if step_of(last) >= it:
        st.say(f"{name}: reusing the finished checkpoint {last}")
        before = out / "runs" / f"{name}.json"  # keep the training time an earlier run measured
        if not before.is_file():
            before = out / "runs" / f"{name}{tag}.json"
        earlier = json.loads(before.read_text()).get("train", {}) if before.is_file() else {}
        rec["train"] = {**earlier, "reused": True}
    else:
        train_flags = {**plan.train, "iter": it}
        quarter = it if args.tiny else max(it // 4, 1)  # --tiny: one checkpoint to score
        argv = ["train.py", "--model", "pose-flow", "-n", "p", str(train), "--img_size",
                str(plan.size), *flags(plan.model), *flags(train_flags), "--seed", str(seed),
                "--save_every", str(quarter), "--sample_every", str(quarter),
                "--workers", "0", "--checkpoint_dir", str(ckdir), "--result_dir",
                str(resdir / name), "--no_progress", "--force"]
        rec["train"] = st.run(f"{name}_train", argv, threads)
    log = resdir / name / "sample_p" / "log.jsonl"
    lines = [ln for ln in log.read_text().splitlines() if ln.strip()] if log.is_file() else []
    if lines:
        end = json.loads(lines[-1])
        rec["end_of_training"] = {k: end.get(k) for k in ("step", "time", "bpd", "recc",
                                                           "skipped")}
    rec["curve"] = {}
    for ck in sorted((ckdir / "p").glob("step_*.pt")):
        step = int(ck.stem.split("_")[1])
        ev = f"{name}_step{step}{tag}"
        metrics = resdir / "eval" / ev / "metrics.csv"
        if not (metrics.is_file() and metrics.stat().st_mtime >= ck.stat().st_mtime):
            st.run(f"{ev}_eval", ["evaluate.py", "--model", "pose-flow", "--checkpoint",
                                  str(ck), str(held), "--result_dir", str(resdir), "--name", ev,
                                  "--no_drive", "--overwrite", "--no_progress", *mirror],
                   threads)
        rec["curve"][step] = read_metrics(metrics)
    if it not in rec["curve"]:
        raise Failed(f"{name}: no checkpoint at iteration {it}")
    rec["final"] = rec["curve"][it]
    f = rec["final"]
    rec["over_own_warp_db"] = f["model"]["psnr"] - f["own_warp"]["psnr"]
    rec["met"] = bool(rec["over_own_warp_db"] >= TARGET_DB)
    # driving: every checkpoint drives the drive set's held-out faces with --retarget (the
    # final one's figures are the table's; the others give the driving curve)
    rec["driven_curve"] = {}
    for ck in sorted((ckdir / "p").glob("step_*.pt")):
        step = int(ck.stem.split("_")[1])
        ev = (f"{name}_drive" if step == it else f"{name}_step{step}_drive") + tag
        metrics = resdir / "eval" / ev / "metrics.csv"
        if not (metrics.is_file() and metrics.stat().st_mtime >= ck.stat().st_mtime):
            st.run(f"{ev}_eval", ["evaluate.py", "--model", "pose-flow", "--checkpoint",
                                  str(ck), str(held.parent / "drive"), "--pairs", "1",
                                  "--no_dlib", "--result_dir", str(resdir), "--name", ev,
                                  "--overwrite", "--no_progress", *mirror], threads)
        rec["driven_curve"][step] = read_metrics(metrics, DRIVEN)
    rec["driven"] = rec["driven_curve"][it]
    rec["driven_over_own_warp_db"] = (rec["driven"]["model"]["psnr"]
                                      - rec["driven"]["own_warp"]["psnr"])
    rec["driven_met"] = bool(rec["driven_over_own_warp_db"] >= TARGET_DB)
    return rec


def gains(curve: dict | None) -> list[tuple[int, float]]:
    """``(step, PSNR over its own warp)`` of a run's curve (``{step: scores}``), by step."""
    return sorted((int(k), c["model"]["psnr"] - c["own_warp"]["psnr"])
                  for k, c in (curve or {}).items())


def markdown(runs: list[dict], args, failures: list[dict]) -> str:
    plan, cpu = plan_of(args), cpu_info()
    model_flags = " ".join(flags(plan.model))
    lines = ["## pose-flow over seeds and thread counts (`bench/pose_flow_seeds.py`)", "",
             f"CPU: {cpu['model']} ({cpu['cores']} cores); torch {torch.__version__}. Plan "
             f"`{args.plan}`: `train.py --model pose-flow DATA --img_size {plan.size} "
             f"{model_flags} {' '.join(flags(plan.train))} --seed S` on "
             f"{args.identities or plan.identities} training identities, threads T "
             "(OMP_NUM_THREADS=MKL_NUM_THREADS); scored at the schedule's end on the "
             f"{'2 x 2' if args.tiny else '6 x 6'} held-out transfers (`--seed 7` set). Model "
             "rows: mean ± std over runs (seeds x thread counts); the warps and copying do not "
             "train. Target: PSNR at least 1 dB above the flow's own warp."
             + (" The model is scored **with `--mirror`** (each output averaged with the "
                "mirrored face's rendering, flipped back); the warps are not averaged."
                if args.mirror else "")
             + (" **--tiny: a smoke run, the figures mean nothing.**" if args.tiny else "")]
    if not runs:
        return "\n".join(lines + ["", "no finished run"]) + "\n"
    lines += ["", "| system | runs | " + " | ".join(f"{lab} {'↑' if d > 0 else '↓'}"
                                                   for _, lab, _, d in FIGS) + " |",
              "|---|---:|" + "---:|" * len(FIGS)]
    for key, label in LABELS.items():
        label += " (--mirror)" if key == "model" and args.mirror else ""
        n = len(runs) if key == "model" else 1
        lines.append(f"| {label} | {n} | " + " | ".join(
            fmt(stats([r["final"][key][k] for r in (runs if key == "model" else runs[:1])]),
                dg) for k, _, dg, _ in FIGS) + " |")
    over = stats([r["over_own_warp_db"] for r in runs])
    met = sum(r["met"] for r in runs)
    seeds = sorted({r["seed"] for r in runs})
    spread = [max(v) - min(v) for s in seeds
              if len(v := [r["over_own_warp_db"] for r in runs if r["seed"] == s]) > 1]
    lines += ["", f"Over its own warp: **{fmt(over, 2)} dB**; at least +{TARGET_DB:g} dB on "
              f"**{met} of {len(runs)}** runs."
              + (f" Thread-count spread (per seed |t1 − t2|, max over seeds): {max(spread):.2f} "
                 "dB." if spread else "")]
    driven = [r for r in runs if "driven" in r]
    if driven:
        lines += ["", "Driving, as `test.py --source DRIVE QUERY --retarget` drives a face: each "
                  "run's final checkpoint on the drive set (`--seed 8`: "
                  f"{'2' if args.tiny else '6'} held-out faces x 2 driving sequences, every frame "
                  "that moves), against `pose_flow.synthetic.driven_truth`:", "",
                  "| system | runs | PSNR dB ↑ | SSIM ↑ | L1 ↓ |", "|---|---:|---:|---:|---:|"]
        for key, label in (("model", f"pose-flow, driven (--retarget{' --mirror' * args.mirror})"),
                           ("own_warp", "its own warp, driven (--retarget)"),
                           ("copy", "copy the query (baseline)")):
            group = driven if key == "model" else driven[:1]
            lines.append(f"| {label} | {len(group)} | " + " | ".join(
                fmt(stats([r["driven"][key][k] for r in group]), dg)
                for k, dg in (("psnr", 2), ("ssim", 4), ("l1", 4))) + " |")
        d_over = stats([r["driven_over_own_warp_db"] for r in driven])
        lines += ["", f"Driven, over its own warp: **{fmt(d_over, 2)} dB**; at least "
                  f"+{TARGET_DB:g} dB on **{sum(r['driven_met'] for r in driven)} of "
                  f"{len(driven)}** runs."]
    lines += ["", "| run | seed | threads | train s | skipped steps | PSNR over its own warp "
              "at each quarter of the schedule, dB | at the end | driven, at each quarter | "
              "driven, at the end | L1 (own warp) |",
              "|---|---:|---:|---:|---:|---|---:|---|---:|---|"]
    for r in sorted(runs, key=lambda r: (r["seed"], r["threads"])):
        curve = " / ".join(f"{g:+.2f}" for _, g in gains(r["curve"]))
        dcurve = " / ".join(f"{g:+.2f}" for _, g in gains(r.get("driven_curve"))) or "–"
        tr = r["train"]
        wall = f"{tr['wall_s']:.0f}" if "wall_s" in tr else "reused"
        skipped = (r.get("end_of_training") or {}).get("skipped", "–")
        lines.append(f"| {r['name']} | {r['seed']} | {r['threads']} | {wall} | {skipped} | "
                     f"{curve} | {r['over_own_warp_db']:+.2f} | {dcurve} | "
                     + (f"{r['driven_over_own_warp_db']:+.2f}" if "driven" in r else "–")
                     + " | "
                     f"{r['final']['model']['l1']:.4f} ({r['final']['own_warp']['l1']:.4f}) |")
    if failures:
        lines += ["", f"**{len(failures)} failed step(s):** "
                  + "; ".join(f"{f['step']} (exit {f['rc']}, {f['log']})" for f in failures)]
    return "\n".join(lines) + "\n"


def plot(runs: list[dict], path: Path, mirror: bool = False) -> None:
    """``pose_flow_seeds.png``: each run's PSNR over its own warp along its schedule, on the
    held-out transfers (left) and driving with --retarget (right, where every checkpoint was
    driven), the 1 dB target and the warp itself (0) as lines."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    panels = [("curve", "held-out transfers")]
    if any(r.get("driven_curve") for r in runs):
        panels.append(("driven_curve", "driving held-out faces (--retarget)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 4.0), dpi=120,
                             sharey=True, squeeze=False)
    for ax, (key, title) in zip(axes[0], panels, strict=True):
        for r in sorted(runs, key=lambda r: (r["seed"], r["threads"])):
            pts = gains(r.get(key))
            if not pts:
                continue
            ax.plot(*zip(*pts, strict=True), marker="o",
                    ls="-" if r["threads"] == 1 else "--", color=f"C{r['seed'] % 10}",
                    label=f"seed {r['seed']}, {r['threads']} "
                          f"thread{'s' if r['threads'] > 1 else ''}")
        ax.axhline(TARGET_DB, color="crimson", lw=1, label=f"target: +{TARGET_DB:g} dB")
        ax.axhline(0, color="grey", lw=1, label="its own warp")
        ax.set_xlabel("training iterations")
        ax.set_title(f"pose-flow{' --mirror' * mirror}, {title}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    axes[0][0].set_ylabel("PSNR over its own warp, dB")
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def write_outputs(args, failures: list[dict]) -> Path:
    out = Path(args.out)
    runs = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))]
    runs = [r for r in runs if r.get("plan") == args.plan
            and bool(r.get("mirror", False)) == bool(args.mirror)]
    stem = "pose_flow_seeds" + mirror_tag(args)
    md = out / f"{stem}.md"
    for path, text in ((md, markdown(runs, args, failures)),
                       (out / f"{stem}.json",
                        json.dumps({"cpu": cpu_info(), "runs": runs, "failures": failures},
                                   indent=1))):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    if runs:
        plot(runs, out / f"{stem}.png", args.mirror)
    return md


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench_quality/pose_flow_seeds", help="output folder")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                   help="thread counts each seed is trained with")
    p.add_argument("--plan", choices=["long", "demo"], default="long",
                   help="long: pose_flow.demo.LONG (256 identities, 6000 iterations, about "
                        "18 min a run on 2 cores); demo: the demo's FULL (16 identities, 300)")
    p.add_argument("--identities", type=int, default=0,
                   help="training identities (0: the plan's)")
    p.add_argument("--iter", type=int, default=0, help="iterations (0: the plan's)")
    p.add_argument("--model_set", action="append", metavar="KEY=VALUE",
                   help="change one of the plan's model options (repeatable), e.g. "
                        "--model_set n_flow=4; the runs' names say it (use its own --out)")
    p.add_argument("--mirror", action="store_true",
                   help="score the model with evaluate.py --mirror (mirror-averaged rendering); "
                        "reuses finished checkpoints; writes OUT/pose_flow_seeds_mirror.* and "
                        "OUT/runs/NAME_mirror.json beside the plain ones")
    p.add_argument("--sets_only", action="store_true", help="write the sets and stop")
    p.add_argument("--table_only", action="store_true",
                   help="rewrite the table from OUT/runs/*.json and stop")
    p.add_argument("--tiny", action="store_true", help="seconds: a smoke run of the pipeline")
    p.add_argument("--no_progress", action="store_true", help="accepted; prints no progress bar")
    args = p.parse_args(argv)
    if args.tiny:
        args.plan = "demo"
    out = Path(args.out)
    st = Steps(out, "pose_flow_seeds")
    if args.table_only:
        print(write_outputs(args, []))
        return 0
    t0 = time.perf_counter()
    try:
        train, held = sets(args, st)
    except Failed:
        write_outputs(args, st.failures)
        return 1
    if args.sets_only:
        return 0
    (out / "runs").mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        for threads in args.threads:
            try:
                rec = one_run(st, args, train, held, seed, threads)
            except Failed as exc:
                if not st.failures or st.failures[-1]["step"] != str(exc):
                    st.failures.append({"step": str(exc), "rc": 1, "log": "-", "tail": []})
                continue
            rec["plan"] = args.plan
            path = out / "runs" / f"{rec['name']}{mirror_tag(args)}.json"
            tmp = path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(rec, indent=1))
            tmp.replace(path)
            md = write_outputs(args, st.failures)
            st.say(f"{rec['name']}: {rec['over_own_warp_db']:+.2f} dB over its own warp; "
                   f"table {md}")
    md = write_outputs(args, st.failures)
    st.say(f"done in {time.perf_counter() - t0:.0f} s; {md}")
    print(md.read_text())
    return 1 if st.failures else 0


if __name__ == "__main__":
    sys.exit(main())
