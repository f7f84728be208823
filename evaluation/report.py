"""Writing and merging evaluation results: ``table.md``, ``metrics.csv``, ``metrics.png``.

A result is a list of rows, one per system (the model, a mode of it, a baseline), each a dict
``{"system": label, metric: value, ...}``; metrics that do not apply are left out (empty cells).
``--compare`` prefixes each row with its run's name.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["METRICS", "Metric", "compare_runs", "format_table", "read_csv", "write_report"]


@dataclass(frozen=True)
class Metric:
    key: str
    header: str
    better: str  # "higher", "lower" or "" (a count, or no preferred direction)
    digits: int
    meaning: str


METRICS: tuple[Metric, ...] = (
    Metric("motion_dev", "motion err", "lower", 3,
           "mouth-motion error: the mouth states read back from the output, as deviations from "
           "their temporal mean, vs the truth's (1 = any static mouth, whatever state it holds; "
           "0 = the true motion)"),
    Metric("motion_open", "open err", "lower", 3,
           "the motion error of the mouth's opening alone (its width left out): 1 = any static "
           "mouth, 0 = the true opening's motion"),
    Metric("motion", "state err", "lower", 3,
           "mouth-state error: the read-back states vs the true ones, normalised by the query's "
           "neutral state (1 = copying the query; a mouth held still half open scores below 1)"),
    Metric("motion_fit", "reader fit", "lower", 2,
           "how well the mouth reader explains the output's mouth box as some state of the "
           "query's mouth, RMS grey levels (the truth about 0.3; far above a few levels the "
           "mouth shown is not the query's and both motion errors are guesses)"),
    Metric("psnr", "PSNR dB", "higher", 2,
           "PSNR of the mean squared error against the synthetic ground truth (identity)"),
    Metric("dpsnr", "dPSNR vs copy", "higher", 2,
           "PSNR minus copying the query's (below 0: the face is damaged)"),
    Metric("motion_px", "motion err px", "lower", 3,
           "pixel mouth-motion error: mouth-box deviation from its temporal mean vs the "
           "truth's (1 = any static sequence)"),
    Metric("bpd", "bits/dim", "lower", 3, "bits per dimension of held-out frames"),
    Metric("ssim", "SSIM", "higher", 4, "SSIM (7x7 window) against the synthetic ground truth"),
    Metric("psnr_mouth", "mouth PSNR dB", "higher", 2, "the same PSNR inside the mouth box"),
    Metric("mouth_dist", "mouth dist", "lower", 4,
           "mouth-landmark distance to the source frame (inter-ocular units)"),
    Metric("id_dist", "identity dist", "lower", 3, "face-descriptor distance to the query"),
    Metric("id_same", "same person", "higher", 3, "fraction of outputs under 0.6 from the query"),
    Metric("jitter", "jitter", "", 4, "mean absolute change between consecutive outputs"),
    Metric("no_face", "no face", "", 0, "frames where dlib found no face"),
    # the field's metrics (evaluation.field_metrics)
    Metric("lpips", "LPIPS", "lower", 4, "LPIPS against the ground truth (--lpips FILE)"),
    Metric("ms_ssim", "MS-SSIM", "higher", 4,
           "multi-scale SSIM against the ground truth, both enlarged to 256 px"),
    Metric("lmd", "LMD px", "lower", 2,
           "mouth-landmark distance (dlib points 48-67) to the ground truth's, px at 256"),
    Metric("akd", "AKD px", "lower", 2,
           "average keypoint distance (all 68 dlib points) to the ground truth's, px at 256"),
    Metric("csim_dlib", "dlib-CSIM", "higher", 4,
           "cosine of dlib face descriptors of output and query (identity only: copying the "
           "query scores 1)"),
    Metric("csim_arcface", "ArcFace CSIM", "higher", 4,
           "cosine of ArcFace embeddings of output and query (--arcface FILE)"),
    Metric("sharp", "sharpness", "higher", 1,
           "variance of the Laplacian of the grey mouth box at the model's size (blur only)"),
    Metric("jitter_err", "jitter err", "lower", 5,
           "mean absolute difference of frame-to-frame changes from the truth's ([0, 1])"),
    Metric("lse_c", "LSE-C", "higher", 3, "SyncNet lip-sync confidence (--syncnet FILE)"),
    Metric("lse_d", "LSE-D", "lower", 3, "SyncNet lip-sync distance (--syncnet FILE)"),
)
COUNTS = ("frames", "real_frames", "bpd_frames")
_BY_KEY = {m.key: m for m in METRICS}


def _present(rows: Sequence[dict], keys: Sequence[str]) -> list[str]:
    return [k for k in keys if any(_finite(r.get(k)) for r in rows)]


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v))


def _fmt(v, digits: int) -> str:
    if v is None or v == "" or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, str):
        return v
    return f"{int(v)}" if digits == 0 else f"{v:.{digits}f}"


def format_table(rows: Sequence[dict], label_keys: Sequence[str] = ("system",)) -> str:
    """A Markdown table of ``rows`` with the metrics any row has; arrows mark the better side."""
    keys = _present(rows, [m.key for m in METRICS]) + _present(rows, COUNTS)
    head = [k.replace("_", " ") for k in label_keys]
    for k in keys:
        m = _BY_KEY.get(k)
        arrow = {"higher": " ↑", "lower": " ↓"}.get(m.better, "") if m else ""
        head.append((m.header if m else k.replace("_", " ")) + arrow)
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join(["---"] * len(label_keys) + ["---:"] * len(keys)) + "|"]
    for r in rows:
        cells = [str(r.get(k, "")) for k in label_keys]
        cells += [_fmt(r.get(k), _BY_KEY[k].digits if k in _BY_KEY else 0) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_csv(path: Path, rows: Sequence[dict], label_keys: Sequence[str]) -> None:
    keys = [m.key for m in METRICS] + list(COUNTS)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([*label_keys, *keys])
        for r in rows:
            w.writerow([r.get(k, "") for k in label_keys]
                       + ["" if not _finite(r.get(k)) else repr(float(r[k])) if
                          isinstance(r[k], float) else r[k] for k in keys])


def read_csv(path: str | Path) -> list[dict]:
    """Rows of a ``metrics.csv`` (numbers as floats, empty cells left out)."""
    rows = []
    with open(path, newline="") as fh:
        for rec in csv.DictReader(fh):
            row: dict = {}
            for k, v in rec.items():
                if v is None or v == "":
                    continue
                if k in ("run", "system"):
                    row[k] = v
                else:
                    try:
                        row[k] = float(v)
                    except ValueError:
                        row[k] = v
            rows.append(row)
    return rows


def plot(path: Path, rows: Sequence[dict], label_keys: Sequence[str], title: str) -> None:
    """One horizontal bar chart per metric (metrics have different scales); baselines grey."""
    # deferred: matplotlib.pyplot costs ~0.8 s at start-up (python -X importtime); only the
    # charts need it, not the tables (evaluate.py --compare, the demo's summary)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: after use("Agg"), as said above

    keys = _present(rows, [m.key for m in METRICS if m.key != "no_face"])
    labels = [" / ".join(str(r.get(k, "")) for k in label_keys) for r in rows]
    n = max(len(keys), 1)
    cols = min(n, 3)
    nrows = math.ceil(n / cols)
    fig, axes = plt.subplots(nrows, cols, squeeze=False,
                             figsize=(4.6 * cols, 0.5 + nrows * (0.9 + 0.32 * len(rows))))
    colours = ["#9e9e9e" if "baseline" in lab else f"C{i % 10}" for i, lab in enumerate(labels)]
    for ax, key in zip(axes.flat, keys, strict=False):
        m = _BY_KEY[key]
        vals = [float(r[key]) if _finite(r.get(key)) else 0.0 for r in rows]
        y = list(range(len(rows)))[::-1]
        ax.barh(y, vals, color=colours)
        ax.set_yticks(y, labels, fontsize=8)
        arrow = {"higher": " (higher is better)", "lower": " (lower is better)"}.get(m.better, "")
        ax.set_title(m.header + arrow, fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
        for yi, v, r in zip(y, vals, rows, strict=True):
            if _finite(r.get(key)):
                ax.text(v, yi, f" {_fmt(v, m.digits)}", va="center", fontsize=7)
        lo, hi = min(vals + [0.0]), max(vals + [0.0])
        ax.set_xlim(lo, hi + 0.25 * (hi - lo or 1.0))
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    if not keys:
        axes.flat[0].text(0.5, 0.5, "no metric", ha="center", va="center")
    fig.suptitle(title, fontsize=10)
    # the suptitle's own band (0.4 inch) kept free: tight_layout alone lays the first row's
    # titles over it
    fig.tight_layout(rect=(0.0, 0.0, 1.0, 1.0 - 0.4 / fig.get_figheight()))
    tmp = Path(path).with_name(f".{Path(path).stem}.part.png")
    try:
        fig.savefig(tmp, dpi=100)
        tmp.replace(path)  # never a partial chart under its name
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)


def write_report(out_dir: str | Path, rows: Sequence[dict], title: str,
                 header_lines: Sequence[str] = (), details: Sequence[dict] = (),
                 label_keys: Sequence[str] = ("system",)) -> dict[str, Path]:
    """Write ``table.md``, ``metrics.csv``, ``metrics.png`` (and ``details.csv`` when
    ``details`` is given) into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"table": out / "table.md", "csv": out / "metrics.csv", "chart": out / "metrics.png"}
    body = [f"# {title}", ""]
    body += [f"- {line}" for line in header_lines]
    if header_lines:
        body.append("")
    body.append(format_table(rows, label_keys))
    used = _present(rows, [m.key for m in METRICS])
    if used:
        body.append("")
        body += [f"- {_BY_KEY[k].header}: {_BY_KEY[k].meaning}" for k in used]
    paths["table"].write_text("\n".join(body).rstrip() + "\n")
    write_csv(paths["csv"], rows, label_keys)
    plot(paths["chart"], rows, label_keys, title)
    if details:
        paths["details"] = out / "details.csv"
        keys = list(dict.fromkeys(k for d in details for k in d))
        with open(paths["details"], "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=keys)
            w.writeheader()
            w.writerows(details)
    return paths


def compare_runs(eval_root: str | Path, runs: Sequence[str], out_dir: str | Path
                 ) -> tuple[list[dict], dict[str, Path]]:
    """Merge ``eval_root/RUN/metrics.csv`` of several runs into one report in ``out_dir``.

    Raises ``ValueError`` (one line) when a run has no ``metrics.csv``.
    """
    merged: list[dict] = []
    for run in runs:
        path = Path(eval_root) / run / "metrics.csv"
        if not path.is_file():
            known = sorted(p.parent.name for p in Path(eval_root).glob("*/metrics.csv"))
            raise ValueError(f"--compare {run}: no {path} (evaluated runs: "
                             f"{', '.join(known) or 'none'})")
        for row in read_csv(path):
            label = row.pop("run", None)
            merged.append({"run": f"{run}/{label}" if label else run, **row})
    merged = _merge_baselines(merged)
    paths = write_report(out_dir, merged, f"Comparison: {', '.join(runs)}",
                         [f"runs: {', '.join(runs)} (from {Path(eval_root)}/RUN/metrics.csv)"],
                         label_keys=("run", "system"))
    return merged, paths


def _merge_baselines(rows: list[dict]) -> list[dict]:
    """Baseline rows that are identical in every run (same data, same size) appear once, with
    run ``all``; baselines that differ stay per run."""
    out: list[dict] = []
    groups: dict[str, list[dict]] = {}
    for r in rows:
        if str(r.get("system", "")).startswith("baseline"):
            groups.setdefault(r["system"], []).append(r)
    for r in rows:
        same = groups.get(str(r.get("system", "")))
        if not same or len(same) == 1:
            out.append(r)
            continue
        strip = [{k: v for k, v in g.items() if k != "run"} for g in same]
        if all(x == strip[0] for x in strip):
            if r is same[0]:
                out.append({"run": "all", **strip[0]})
        else:
            out.append(r)
    merged = [r for r in out if r.get("run") != "all"]
    return merged + [r for r in out if r.get("run") == "all"]
