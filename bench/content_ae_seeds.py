#!/usr/bin/env python
"""The content-AE (``train.py --model content-ae``, the demo's recipe) over seeds, thread counts
and attributes, on held-out synthetic identities, against copying the target and pasting the
donor's attribute region.

For each attribute A, seed S and thread count T: writes the synthetic set
``synthface.attributes.write_attribute_set(OUT/data/A_seedS, A, 32, 400, 400, 8, 8, seed=3 + S)``
(seed 0 with glasses is the demo's set; one set per attribute and seed, shared by the thread
counts), trains the demo's recipe on it (``content_ae.demo.MODEL`` and ``FULL``: ``--iter 800
--batch 16 --lr 1e-3 --disc_lr 1e-3 --workers 0 --seed S``, run ``cae_A_seedS_tT``), chooses
the test-time mask power P on TRAINING identities (``evaluate.py --split train --max_pairs 200
--mask_power P`` for each of ``--powers``; the best whole-image transfer PSNR wins; run on a copy
of the manifest without the donors those pairs never reach, see :func:`selection_set`), and scores
the held-out split at the chosen P and at the default 1.5 (transfer, region and removal PSNR,
the outside cost; both baselines from the same evaluation). Every step is a subprocess of the
project's scripts run in the repository root with ``OMP_NUM_THREADS=MKL_NUM_THREADS=T`` (set
before torch starts); its output goes to ``OUT/logs/STEP.log``. A finished checkpoint
(``last.pt`` at the full iteration count) and a held-out or training-split evaluation newer
than its checkpoint are reused, so an interrupted run resumes. A failed step is reported,
counted and skips the rest of its run; the script exits 1 when any step failed.

  python bench/content_ae_seeds.py --out ../cae_seeds                 # 2 x 3 x 2 runs
  python bench/content_ae_seeds.py --attributes beard --seeds 0 --threads 1
  python bench/content_ae_seeds.py --tiny --out ../cae_tiny           # seconds: a smoke run

Longer runs and another choice of P: ``--iter N`` trains N iterations (runs named ``..._iN``),
saves a checkpoint every 800 and scores each on the held-out pairs at P = 1.5 (the table's
"Against training budget" section and ``content_ae_curve.png``); ``--choose criterion`` picks
the best training-split transfer PSNR among the powers whose outside cost is below pasting's
there; ``--train_donors D`` chooses on D training donors x ceil(TRAIN_PAIRS / D) targets
instead of the first donor's pairs; ``--donor_mask`` evaluates every transfer gated by the
donor's own mask (``evaluate.py --donor_mask``), as evaluations of their own:

  python bench/content_ae_seeds.py --attributes beard --iter 2400 --choose criterion
      --train_donors 8 --powers 1.5 2 3 4 6 --out ../cae_beard_2400     # (one command)

Outputs under ``--out`` (default ``bench_quality/content_ae_seeds``): ``content_ae_seeds.json``
(every run: the chosen P, the training-split transfer PSNR per P, the held-out figures of the
model at the chosen P and at 1.5 and of both baselines, A's mask mean at the end of training,
timings) and ``content_ae_seeds.md`` (per attribute: mean ± std over the runs, baselines over
seeds; the runs meeting the issue's criterion, transfer PSNR above both baselines and outside
cost below the paste baseline's; the thread-count spread; one row per run), both rewritten after
every run.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "bench"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import torch  # noqa: E402
from budget_curve import cpu_info, logged, step_of  # noqa: E402
from steps import Failed, Steps, fmt, stats  # noqa: E402

from content_ae.demo import FULL, MODEL, TINY  # noqa: E402
from synthface.attributes import write_attribute_set  # noqa: E402

SIZE = 32
DEFAULT_P = 1.5  # content_ae.model.MASK_POWER, the scripts' default
# (key in the run's record, label, digits, better direction: +1 higher, -1 lower)
FIGS = [("transfer", "transfer PSNR dB", 2, 1), ("region", "region PSNR dB", 2, 1),
        ("outside_cost", "outside cost dB", 3, -1), ("removal", "removal PSNR dB", 2, 1)]


def say(msg: str) -> None:
    print(f"[content_ae_seeds {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def ptag(p: float) -> str:
    return f"{p:g}"


def figures(metrics_json: Path) -> dict:
    """``{"model"|"copy"|"paste": {transfer, ssim, region, outside_cost, removal}}`` of an
    ``evaluate.py --model content-ae`` metrics.json (removal absent for paste)."""
    m = json.loads(metrics_json.read_text())
    out = {}
    for key, system in (("model", "model"), ("copy", "copy target"), ("paste", "paste region")):
        t, r = m[system]["transfer"], m[system].get("removal", {})
        out[key] = {"transfer": t["psnr"], "ssim": t["ssim"], "region": t["region_psnr"],
                    "outside_cost": t["outside_cost_db"], "removal": r.get("psnr")}
    out["info"] = m.get("_info", {})
    return out


def selection_set(data: Path, max_pairs: int, spread: int = 0) -> Path:
    """The set ``evaluate.py --split train --max_pairs N`` chooses P on: ``data`` itself, or,
    when the first N pairs need only the first few donors, a copy of its manifest
    (``DATA_selectN``) holding only those trainA donors and every trainB face. ``spread`` D > 0
    (``--train_donors``): the first D donors with the first ceil(N / D) trainB faces each
    (``DATA_selectN_dD``), a selection shaped like the held-out donors x targets instead of one
    donor's.

    evaluate.py takes pairs in donor order (A_0 with every B, then A_1, ...); past
    ``--max_pairs`` it makes no more transfers but still scores every donor's removal, whose
    exact answers it renders. With the donors it never transfers left out, the scored transfers
    are the same batches (each donor with every trainB face) and their figures the same; only
    the removal figures, unused here, change."""
    if not max_pairs:
        return data
    manifest = json.loads((data / "manifest.json").read_text())
    sets = manifest["sets"]
    if spread:
        manifest["sets"] = {**sets, "trainA": sets["trainA"][:spread],
                            "trainB": sets["trainB"][:-(-max_pairs // spread)]}
    else:
        donors = -(-max_pairs // len(sets["trainB"]))
        if donors >= len(sets["trainA"]):
            return data
        manifest["sets"] = {**sets, "trainA": sets["trainA"][:donors]}
    manifest["selection_of"] = {"root": str(data), "max_pairs": max_pairs,
                                **({"donors": spread} if spread else {})}
    sel = data.with_name(f"{data.name}_select{max_pairs}" + (f"_d{spread}" if spread else ""))
    text = json.dumps(manifest)
    if not (sel / "manifest.json").is_file() or (sel / "manifest.json").read_text() != text:
        sel.mkdir(parents=True, exist_ok=True)
        tmp = sel / "manifest.json.tmp"
        tmp.write_text(text)
        tmp.replace(sel / "manifest.json")
    return sel


def reusable(metrics_json: Path, ck_mtime: float, max_pairs: int) -> bool:
    """An earlier evaluation newer than the checkpoint, of the same number of pairs."""
    if not metrics_json.is_file() or metrics_json.stat().st_mtime < ck_mtime:
        return False
    try:
        info = json.loads(metrics_json.read_text())["_info"]
    except (ValueError, KeyError):
        return False
    every = info["a"] * info["b"]
    return info["pairs"] == (min(max_pairs, every) if max_pairs else every)


def last_log(path: Path) -> dict:
    """The last record of a train.py log.jsonl (empty when there is none)."""
    if not path.is_file():
        return {}
    recs = [ln for ln in path.read_text().splitlines() if ln.strip()]
    return json.loads(recs[-1]) if recs else {}


def one_run(st: Steps, out: Path, attr: str, seed: int, threads: int, powers: list[float],
            train_pairs: int, plan: dict, record: dict) -> None:
    """Train, choose P and score one (attribute, seed, threads); fills ``record`` as it goes."""
    data = out / "data" / f"{attr}_seed{seed}"
    ckdir, resdir = out / "checkpoint", out / "result"
    name = f"cae_{attr}_seed{seed}_t{threads}{iter_tag(plan)}"
    record.update(name=name, data=str(data), iter=plan["iter"],
                  choose=plan.get("choose", "transfer"))
    common = ["--model", "content-ae", "--checkpoint_dir", str(ckdir), "--result_dir",
              str(resdir)]
    last = ckdir / name / "last.pt"
    if step_of(last) >= plan["iter"]:
        say(f"{name}: reusing the finished checkpoint {last}")
        record["train"] = {"reused": True, **(logged(st.logs / f"{name}_train.log") or {})}
    else:
        say(f"{name}: training ({plan['iter']} iterations, {threads} thread(s))")
        argv = ["train.py", "-n", name, str(data), *common, *MODEL, "--iter", str(plan["iter"]),
                "--batch", str(plan["batch"]), "--lr", plan["lr"], "--disc_lr", plan["lr"],
                "--seed", str(seed), "--sample_every", str(max(plan["iter"] // 2, 1)),
                "--log_every", "50", "--workers", "0", "--no_progress", "--force"]
        if plan["iter"] > plan["demo_iter"]:  # the budget curve: a checkpoint every demo budget
            argv += ["--save_every", str(plan["demo_iter"])]
        record["train"] = st.run(f"{name}_train", argv, threads)
    end = last_log(resdir / f"sample_{name}" / "log.jsonl")
    record["end_of_training"] = {k: end.get(k) for k in ("step", "time", "mask_l1", "mask_b",
                                                         "disc_acc", "rec_a", "rec_b")}
    ck_mtime = last.stat().st_mtime

    spread = int(plan.get("train_donors", 0))
    select = selection_set(data, train_pairs, spread)

    def evaluate(split: str, p: float, ck: Path | None = None) -> dict:
        """One evaluation of the run's last checkpoint (or of ``ck``, a saved step)."""
        ename = f"{name}_{split}_p{ptag(p)}" if ck is None else \
            f"{name}_step{ck_step(ck)}_{split}_p{ptag(p)}"
        if split == "train" and spread:
            ename += f"_d{spread}"
        if plan.get("donor_mask"):  # another output: its own evaluation, never the plain one's
            ename += "_dm"
        mj = resdir / "eval" / ename / "metrics.json"
        if reusable(mj, ck_mtime if ck is None else ck.stat().st_mtime,
                    train_pairs if split == "train" else 0):
            say(f"{ename}: reusing {mj}")
        else:
            argv = ["evaluate.py", str(select if split == "train" else data), *common,
                    "--checkpoint", name if ck is None else str(ck), "--name", ename,
                    "--mask_power", ptag(p), "--overwrite", "--no_progress"]
            if split == "train":
                argv += ["--split", "train", "--max_pairs", str(train_pairs)]
            if plan.get("donor_mask"):
                argv.append("--donor_mask")
            st.run(ename, argv, threads)
        return figures(mj)

    record["train_split"] = {}
    for p in powers:
        f = evaluate("train", p)
        record["train_split"][ptag(p)] = {"transfer": f["model"]["transfer"],
                                          "outside_cost": f["model"]["outside_cost"],
                                          "paste_outside_cost": f["paste"]["outside_cost"],
                                          "pairs": f["info"].get("pairs")}
    best = choose_power(record["train_split"], powers, plan.get("choose", "transfer"))
    record["P"] = best
    say(f"{name}: chosen P = {ptag(best)} (training-split transfer PSNR " + ", ".join(
        f"P {k}: {v['transfer']:.2f}" for k, v in record["train_split"].items()) + ")")
    held: dict[float, dict] = {}
    for label, p in (("chosen", best), ("default", DEFAULT_P)):
        f = held[p] = held[p] if p in held else evaluate("test", p)
        record[label] = f["model"]
        record["copy"], record["paste"] = f["copy"], f["paste"]
        record["held_out_pairs"] = f["info"].get("pairs")
    record["criterion"] = criterion(record, "chosen")
    record["criterion_default"] = criterion(record, "default")
    # the budget curve (--iter above the demo's): every saved checkpoint on the held-out pairs
    # at the default P (no choice on training identities per point: one fixed rule)
    steps = sorted(ckdir.joinpath(name).glob("step_*.pt"), key=ck_step)
    if plan["iter"] > plan["demo_iter"] and steps:
        record["curve"] = {}
        for ck in steps:
            f = evaluate("test", DEFAULT_P, ck)
            record["curve"][str(ck_step(ck))] = {**f["model"], "criterion": criterion(f, "model")}
    say(f"{name}: held out at P {ptag(best)}: transfer {record['chosen']['transfer']:.2f} "
        f"(copy {record['copy']['transfer']:.2f}, paste {record['paste']['transfer']:.2f}), "
        f"region {record['chosen']['region']:.2f}, outside cost "
        f"{record['chosen']['outside_cost']:.3f} (paste {record['paste']['outside_cost']:.3f}), "
        f"removal {record['chosen']['removal']:.2f} (copy {record['copy']['removal']:.2f}); "
        f"criterion {'met' if record['criterion'] else 'not met'}")


CHOICES = ("transfer", "criterion")


def choose_power(split: dict, powers: list[float], rule: str = "transfer") -> float:
    """The mask power from the training-split figures ``{ptag(P): {transfer, outside_cost,
    paste_outside_cost}}``. ``transfer``: the best transfer PSNR. ``criterion`` (the issue's two
    parts, on training identities): the best transfer PSNR among the powers whose outside cost
    is below pasting's there; when none is, the lowest outside cost."""
    if rule not in CHOICES:
        raise ValueError(f"unknown rule {rule!r}; choose one of {', '.join(CHOICES)}")
    if rule == "criterion":
        ok = [p for p in powers
              if split[ptag(p)]["outside_cost"] < split[ptag(p)]["paste_outside_cost"]]
        if not ok:
            return min(powers, key=lambda p: split[ptag(p)]["outside_cost"])
        powers = ok
    return max(powers, key=lambda p: split[ptag(p)]["transfer"])


def ck_step(path: Path) -> int:
    """The iteration of a saved ``step_0000800.pt``, from its name."""
    return int(path.stem.split("_")[1])


def iter_tag(plan: dict) -> str:
    """What ``--iter`` adds to a run's name: ``_i6400``; nothing at the demo's budget."""
    return "" if plan["iter"] == plan["demo_iter"] else f"_i{plan['iter']}"


def criterion(r: dict, which: str) -> bool:
    """The issue's: transfer PSNR above both baselines' and outside cost below paste's."""
    m = r[which]
    return bool(m["transfer"] > r["copy"]["transfer"] and m["transfer"] > r["paste"]["transfer"]
                and m["outside_cost"] < r["paste"]["outside_cost"])


def no_nan(x):
    """NaN -> None throughout (the JSON stays standard: no bare NaN)."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: no_nan(v) for k, v in x.items()}
    if isinstance(x, list):
        return [no_nan(v) for v in x]
    return x


def spread_fmt(v: float, digits: int) -> str:
    return "–" if math.isnan(v) else f"{v:.{digits}f}"


def summarise(runs: list[dict], attr: str) -> dict:
    done = [r for r in runs if r["attribute"] == attr and "chosen" in r]
    seeds: dict[int, dict] = {}
    for r in done:  # baselines do not train: one value per seed
        seeds.setdefault(r["seed"], {"copy": r["copy"], "paste": r["paste"]})
    summ = {"runs": len(done), "seeds": sorted(seeds)}
    for sysname in ("chosen", "default"):
        summ[sysname] = {k: stats([r[sysname][k] for r in done]) for k, *_ in FIGS}
    for base in ("copy", "paste"):
        summ[base] = {k: stats([s[base][k] for s in seeds.values()]) for k, *_ in FIGS}
    summ["criterion_met"] = sum(r["criterion"] for r in done)
    summ["criterion_met_default_P"] = sum(r["criterion_default"] for r in done)
    summ["P_chosen"] = {}
    for r in done:
        summ["P_chosen"][ptag(r["P"])] = summ["P_chosen"].get(ptag(r["P"]), 0) + 1
    # thread-count spread: per seed, |max - min| over thread counts, then the max over seeds
    spread = {}
    for which in ("chosen", "default"):
        spread[which] = {}
        for k, *_ in FIGS:
            per = []
            for s in seeds:
                v = [r[which][k] for r in done if r["seed"] == s]
                if len(v) > 1:
                    per.append(max(v) - min(v))
            spread[which][k] = max(per) if per else math.nan
    same_p = [len({r["P"] for r in done if r["seed"] == s}) == 1 for s in seeds
              if sum(r["seed"] == s for r in done) > 1]
    spread["same_P_seeds"] = [sum(same_p), len(same_p)]
    summ["thread_spread"] = spread
    return summ


def train_wall(tr: dict) -> str:
    if not tr.get("reused"):
        return f"{tr['wall_s']:.0f}" if "wall_s" in tr else "–"
    return f"{tr['train_py_wall_s']:.0f} (reused)" if "train_py_wall_s" in tr else "reused"


def markdown(runs: list[dict], summaries: dict, args, plan: dict, failures: list[dict],
             cmd: str, wall: float) -> str:
    cpu = cpu_info()
    lines = [
        "## content-AE over seeds and thread counts (`bench/content_ae_seeds.py`)", "",
        f"CPU: {cpu['model']} ({cpu['cores']} cores); torch {torch.__version__}. "
        f"Data `write_attribute_set(OUT/data/A_seedS, A, {SIZE}, {plan['train_a']}, "
        f"{plan['train_b']}, {plan['test']}, {plan['test']}, seed=3 + S)`; the demo's recipe"
        + ("" if not args.iter else f" at {args.iter} iterations")
        + f" (`content_ae.demo.MODEL`, `--iter {plan['iter']} --batch {plan['batch']} --lr "
        f"{plan['lr']} --disc_lr {plan['lr']} --workers 0 --seed S`) trained with "
        "OMP_NUM_THREADS=MKL_NUM_THREADS=T. P chosen per run on TRAINING identities "
        + (f"(`evaluate.py --split train --max_pairs {args.train_pairs}`: the first pairs in "
           "donor order) among " if not args.train_donors else
           f"(`evaluate.py --split train` on the first {args.train_donors} training donors x the "
           f"first {-(-args.train_pairs // args.train_donors)} training targets) among ")
        + ", ".join(ptag(p) for p in args.powers)
        + (" by whole-image transfer PSNR" if args.choose == "transfer" else
           " by `--choose criterion`: the best whole-image transfer PSNR among the powers whose "
           "outside cost is below pasting's on those pairs")
        + ("; every transfer gated by the donor's own mask (`--donor_mask`)"
           if plan.get("donor_mask") else "")
        + "; scored on the held-out "
        f"{plan['test']} x {plan['test']} pairs. Model rows: mean ± std over the runs (seeds x "
        "thread counts); baselines do not train: over seeds. Criterion (the issue's): transfer "
        "PSNR above both baselines' AND outside cost below the paste baseline's."
        + (" **--tiny: a smoke run, the figures mean nothing.**" if args.tiny else "")]
    for attr in args.attributes:
        s = summaries[attr]
        if not s["runs"]:
            lines += ["", f"### {attr}", "", "no finished run"]
            continue
        lines += ["", f"### {attr}", "",
                  "| system | runs | " + " | ".join(
                      f"{lab} {'↑' if d > 0 else '↓'}" for _, lab, _, d in FIGS)
                  + " | criterion met |",
                  "|---|---:|" + "---:|" * len(FIGS) + "---:|"]
        for which, label, n, crit in (
                ("chosen", "content-ae, P chosen on training identities", s["runs"],
                 f"{s['criterion_met']} of {s['runs']}"),
                ("default", f"content-ae, P = {ptag(DEFAULT_P)} (default)", s["runs"],
                 f"{s['criterion_met_default_P']} of {s['runs']}"),
                ("copy", "copy target (baseline)", f"{len(s['seeds'])} seeds", ""),
                ("paste", "paste region (baseline)", f"{len(s['seeds'])} seeds", "")):
            lines.append(f"| {label} | {n} | " + " | ".join(
                fmt(s[which][k], dg) for k, _, dg, _ in FIGS) + f" | {crit} |")
        pc = ", ".join(f"P = {p}: {c}" for p, c in sorted(s["P_chosen"].items(),
                                                           key=lambda kv: float(kv[0])))
        sp = s["thread_spread"]
        lines += ["", f"P chosen: {pc} (of {s['runs']} runs). Thread-count spread (per seed "
                  "|t1 − t2|, max over seeds), at the chosen P: " + ", ".join(
                      f"{lab} {spread_fmt(sp['chosen'][k], dg)}" for k, lab, dg, _ in FIGS)
                  + "; at P = 1.5: " + ", ".join(
                      f"{lab} {spread_fmt(sp['default'][k], dg)}" for k, lab, dg, _ in FIGS)
                  + f"; same P chosen at every thread count in {sp['same_P_seeds'][0]} of "
                  f"{sp['same_P_seeds'][1]} seeds."]
    lines += ["", "### Per run (held out; model at the chosen P / copy / paste)", "",
              "| attribute | seed | threads | P | train-split transfer PSNR at P = "
              + " / ".join(ptag(p) for p in args.powers)
              + " | transfer PSNR dB | region PSNR dB | outside cost dB (model / paste) | "
              "removal PSNR dB (model / copy) | criterion (chosen P / 1.5) | mask mean at the "
              "end | train wall s |", "|---|---:|---:|---:|---|---|---|---|---|---|---:|---:|"]
    for r in runs:
        if "chosen" not in r:
            lines.append(f"| {r['attribute']} | {r['seed']} | {r['threads']} | failed: "
                         f"{r.get('failed', '?')} | | | | | | | | |")
            continue
        m, c, p = r["chosen"], r["copy"], r["paste"]
        tr = r.get("train", {})
        mask = r["end_of_training"].get("mask_l1")
        lines.append(
            f"| {r['attribute']} | {r['seed']} | {r['threads']} | {ptag(r['P'])} | "
            + " / ".join(f"{r['train_split'][ptag(q)]['transfer']:.2f}" for q in args.powers)
            + f" | {m['transfer']:.2f} / {c['transfer']:.2f} / {p['transfer']:.2f} | "
            f"{m['region']:.2f} / {c['region']:.2f} / {p['region']:.2f} | "
            f"{m['outside_cost']:.3f} / {p['outside_cost']:.3f} | "
            f"{m['removal']:.2f} / {c['removal']:.2f} | "
            f"{'yes' if r['criterion'] else 'no'} / {'yes' if r['criterion_default'] else 'no'}"
            f" | {'–' if mask is None else f'{mask:.3f}'} | "
            f"{train_wall(tr)} |")
    curves = [r for r in runs if r.get("curve")]
    if curves:
        lines += ["", f"### Against training budget (held out, P = {ptag(DEFAULT_P)}; a "
                  f"checkpoint every {plan['demo_iter']} iterations of one "
                  "run, constant learning rate)", "",
                  "| attribute | seed | threads | iterations | transfer PSNR dB (copy / paste) "
                  "| region PSNR dB (paste) | outside cost dB (paste) | criterion |",
                  "|---|---:|---:|---:|---|---|---|---|"]
        for r in curves:
            c, pa = r["copy"], r["paste"]
            for step, m in sorted(r["curve"].items(), key=lambda kv: int(kv[0])):
                lines.append(
                    f"| {r['attribute']} | {r['seed']} | {r['threads']} | {step} | "
                    f"{m['transfer']:.2f} ({c['transfer']:.2f} / {pa['transfer']:.2f}) | "
                    f"{m['region']:.2f} ({pa['region']:.2f}) | {m['outside_cost']:.3f} "
                    f"({pa['outside_cost']:.3f}) | {'met' if m['criterion'] else 'no'} |")
    if failures:
        lines += ["", f"**{len(failures)} failed step(s):** " + "; ".join(
            f"{f['step']} (exit {f['rc']}, {f['log']})" for f in failures)]
    lines += ["", f"Command: `{cmd}` ({wall / 60:.1f} min wall this invocation)."]
    return "\n".join(lines) + "\n"


def plot_curves(runs: list[dict], path: Path) -> None:
    """``content_ae_curve.png``: transfer PSNR and outside cost of every curve run against
    iterations (a colour per attribute and seed; solid: one thread, dashed: more), with
    pasting as a flat dotted line per attribute and seed: it does not train (copying, far
    below, is in the table)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12.8, 6.0), dpi=120)
    keys = sorted({(r["attribute"], r["seed"]) for r in runs})
    for r in sorted(runs, key=lambda r: (r["attribute"], r["seed"], r["threads"])):
        colour = f"C{keys.index((r['attribute'], r['seed'])) % 10}"
        pts = sorted((int(k), v) for k, v in r["curve"].items())
        xs = [x for x, _ in pts]
        lab = f"{r['attribute']}, seed {r['seed']}"
        for ax, key in zip(axes, ("transfer", "outside_cost"), strict=True):
            ax.plot(xs, [v[key] for _, v in pts], marker="o", color=colour,
                    ls="-" if r["threads"] == 1 else "--",
                    label=f"content-ae, {lab}, {r['threads']} thread(s)")
    seen = set()
    for r in runs:
        k = (r["attribute"], r["seed"])
        if k in seen:
            continue
        seen.add(k)
        colour = f"C{keys.index(k) % 10}"
        for ax, key in zip(axes, ("transfer", "outside_cost"), strict=True):
            ax.axhline(r["paste"][key], color=colour, ls=":", lw=1.5,
                       label=f"paste region, {k[0]}, seed {k[1]}")
    axes[0].set_ylabel("held-out transfer PSNR dB (higher is better)")
    axes[1].set_ylabel("outside cost dB (lower is better)")
    for ax in axes:
        ax.set_xlabel("training iterations")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=7, frameon=False)
    fig.suptitle(f"content-ae against training budget, P = {ptag(DEFAULT_P)} (dotted: pasting "
                 "the donor's region, which does not train)", fontsize=10)
    fig.tight_layout(rect=(0, 0.06 + 0.03 * math.ceil(len(labels) / 3), 1, 1))
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/content_ae_seeds.py", allow_abbrev=False,
                                description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench_quality/content_ae_seeds",
                   help="output folder (default: bench_quality/content_ae_seeds)")
    p.add_argument("--attributes", nargs="+", default=["glasses", "beard"],
                   choices=["glasses", "bald", "beard"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                   help="training seeds; seed S writes its set with seed 3 + S (default: 0 1 2)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                   help="OMP_NUM_THREADS of every step (default: 1 2)")
    p.add_argument("--powers", type=float, nargs="+", default=[1.0, 1.5, 2.0, 3.0],
                   help="mask powers to choose among on training identities (default: 1 1.5 2 3)")
    p.add_argument("--train_pairs", type=int, default=200,
                   help="evaluate.py --max_pairs of the training-split evaluations that choose P "
                        "(default: 200; evaluate.py takes the first pairs in donor order, so 200 "
                        "of a 400 x 400 split are the first donor with 200 targets)")
    p.add_argument("--iter", type=int, default=0,
                   help="training iterations (default 0: the demo's 800); a longer run saves a "
                        "checkpoint every 800 and scores each on the held-out pairs at P = 1.5: "
                        "the quality-against-budget curve (runs named ..._iN)")
    p.add_argument("--train_donors", type=int, default=0,
                   help="choose P on the first D training donors x the first "
                        "ceil(TRAIN_PAIRS / D) training targets (default 0: the first pairs in "
                        "donor order, i.e. one donor with 200 targets)")
    p.add_argument("--choose", choices=CHOICES, default="transfer",
                   help="how P is chosen on training identities: transfer (default): the best "
                        "transfer PSNR; criterion: the best transfer PSNR among the powers whose "
                        "outside cost is below pasting's there (else the lowest outside cost); "
                        "the checkpoints and evaluations are shared, the table says the rule")
    p.add_argument("--donor_mask", action="store_true",
                   help="evaluate with evaluate.py --donor_mask (a transfer changes only where "
                        "the donor's own mask marks the attribute); the checkpoints are shared, "
                        "the evaluations are their own (names ending in _dm)")
    p.add_argument("--tiny", action="store_true",
                   help="content_ae.demo.TINY sizes: seconds, for a test (figures meaningless)")
    args = p.parse_args(argv)
    if any(not x > 0 for x in args.powers):
        p.error("--powers must be positive")
    if any(t < 1 for t in args.threads):
        p.error("--threads must be at least 1")
    if args.iter < 0:
        p.error("--iter must be positive (0: the demo's)")
    if args.train_donors < 0:
        p.error("--train_donors must be positive (0: the first pairs in donor order)")
    t_start = time.time()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    base = TINY if args.tiny else FULL
    plan = {**base, "demo_iter": base["iter"], "iter": args.iter or base["iter"],
            "choose": args.choose, "train_donors": args.train_donors,
            "donor_mask": args.donor_mask}
    cmd = "python bench/content_ae_seeds.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    st = Steps(out, "content_ae_seeds")
    runs: list[dict] = []
    total = len(args.attributes) * len(args.seeds) * len(args.threads)

    def write() -> str:
        summaries = {a: summarise(runs, a) for a in args.attributes}
        md = markdown(runs, summaries, args, plan, st.failures, cmd, time.time() - t_start)
        (out / "content_ae_seeds.md").write_text(md)
        curves = [r for r in runs if r.get("curve")]
        if curves:
            plot_curves(curves, out / "content_ae_curve.png")
        (out / "content_ae_seeds.json").write_text(json.dumps(no_nan(
            {"command": cmd, "cpu": cpu_info(), "torch": torch.__version__, "tiny": args.tiny,
             "plan": plan, "model_flags": MODEL, "powers": args.powers,
             "train_pairs": args.train_pairs,
             "summaries": summaries, "runs": runs, "failures": st.failures,
             "wall_s": round(time.time() - t_start, 1)}), indent=1))
        return md

    k = 0
    for attr in args.attributes:
        for seed in args.seeds:
            data = out / "data" / f"{attr}_seed{seed}"
            data_ok = True
            if not (data / "manifest.json").is_file():
                say(f"writing the {attr} set {data} (seed {3 + seed})")
                try:
                    write_attribute_set(data, attr, SIZE, plan["train_a"], plan["train_b"],
                                        plan["test"], plan["test"], seed=3 + seed)
                except Exception as e:  # counted like a failed step; the rest goes on
                    st.failures.append({"step": f"data_{attr}_seed{seed}", "rc": 1,
                                        "log": repr(e), "tail": []})
                    say(f"data {attr} seed {seed}: FAILED: {e!r}")
                    data_ok = False
            for threads in args.threads:
                k += 1
                say(f"run {k}/{total}: {attr}, seed {seed}, {threads} thread(s)")
                record = {"attribute": attr, "seed": seed, "threads": threads}
                runs.append(record)
                if not data_ok:
                    record["failed"] = "data"
                    continue
                t0 = time.time()
                try:
                    one_run(st, out, attr, seed, threads, args.powers, args.train_pairs, plan, record)
                except Failed as e:
                    record["failed"] = str(e)
                except Exception as e:  # an unreadable output: counted, the rest goes on
                    st.failures.append({"step": record.get("name", attr), "rc": 1,
                                        "log": repr(e), "tail": []})
                    record["failed"] = repr(e)
                    say(f"run {k}/{total}: FAILED: {e!r}")
                record["run_wall_s"] = round(time.time() - t0, 1)
                write()
    md = write()
    print(md)
    say(f"done in {(time.time() - t_start) / 60:.1f} min; {len(st.failures)} failed step(s); "
        f"{out / 'content_ae_seeds.md'}")
    return 1 if st.failures else 0


if __name__ == "__main__":
    sys.exit(main())
