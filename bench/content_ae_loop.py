#!/usr/bin/env python
"""Content-AE training as a user runs it: whole ``train.py`` processes, ours against the
original's own ``train.py``.

Seconds per step = (a ``--long``-iteration run - a ``--short``-iteration run) / (long - short),
so start-up (imports, model build, the first sample grid and checkpoint, which both write in
either run) cancels and what is left is the loop: data loading and its worker processes, the
step, per-step overheads. Runs alternate ours / original (long, then short) in every repeat,
each a fresh process; its peak RSS (the process and the workers it waited for, ``wait4``) is
recorded too.

The original (oripress/ContentDisentanglement, a checkout given with ``--anchor DIR`` or
``CONTENT_AE_ANCHOR``; nothing of it is in this project) runs unchanged except for one shim in
its process: ``torch.full((bs,), 1)`` made its labels int64 on recent torch, which ``BCELoss``
refuses, so an integer fill without a dtype gives float32 (the dtype that torch produced when the
code was written). It reads list files: they are written to a scratch folder for the same
images. Its loop only checks ``--iters`` between epochs, so each side's data is the first
``--items`` images of each domain: with the default 64 and batch 32 an epoch is 2 iterations,
and both runs stop exactly at their count (both implementations then start their data loader
afresh every 2 iterations, as on any small set).

  python bench/content_ae_loop.py --anchor ORIGINAL_CHECKOUT --data AB_SET [--repeats 2]
  python bench/content_ae_loop.py ... --workers 0 1 2    # ours with several --workers values
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

SHIM = """
import runpy, sys, torch
_full = torch.full
def full(size, fill_value, *args, **kwargs):
    if 'dtype' not in kwargs and type(fill_value) is int and not args:
        kwargs['dtype'] = torch.float32
    return _full(size, fill_value, *args, **kwargs)
torch.full = full
anchor, argv = sys.argv[1], sys.argv[2:]
sys.path.insert(0, anchor)
sys.argv = [anchor + '/train.py', *argv]
runpy.run_path(anchor + '/train.py', run_name='__main__')
"""


def timed(cmd: list[str], cwd: Path, env: dict | None = None) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of one process; raises with its stderr on failure."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    err = proc.stderr.read()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"error: {' '.join(cmd[:4])} ... failed: {err.strip()[-600:]}")
    return wall, usage.ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--anchor", default=os.environ.get("CONTENT_AE_ANCHOR"),
                   help="checkout of oripress/ContentDisentanglement (or CONTENT_AE_ANCHOR)")
    p.add_argument("--data", required=True, help="an A/B set (trainA/ trainB/ folders or lists)")
    p.add_argument("--items", type=int, default=64, help="images per domain (default 64)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--long", type=int, default=12)
    p.add_argument("--short", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--workers", type=int, nargs="+", default=[None],
                   help="ours's --workers values to time (default: train.py's default)")
    p.add_argument("--crop", type=int, default=None,
                   help="the original's --crop (default: the images' short side)")
    p.add_argument("--no_original", action="store_true", help="time ours only")
    p.add_argument("--ours", nargs="+", default=[str(ROOT)], metavar="DIR",
                   help="checkouts of this project to time, each a side (default: this one; "
                        "e.g. before and after a change)")
    a = p.parse_args(argv)
    if not a.no_original and not (a.anchor and (Path(a.anchor) / "train.py").is_file()):
        print("error: give the original's checkout with --anchor DIR or CONTENT_AE_ANCHOR "
              "(or --no_original)", file=sys.stderr)
        return 1

    from quality import cpu_name

    from content_ae.data import split_paths
    from faces.io import image_size

    paths_a, paths_b = split_paths(a.data, "train")
    paths_a, paths_b = paths_a[: a.items], paths_b[: a.items]
    scratch = Path(tempfile.mkdtemp(prefix="content_ae_loop_"))
    lists = scratch / "lists"
    lists.mkdir()
    for side, paths in (("A", paths_a), ("B", paths_b)):
        for split in ("train", "test"):  # the original's grid at iteration 0 reads test lists
            (lists / f"{split}{side}.txt").write_text(
                "".join(f"{Path(q).resolve()}\n" for q in paths))
    crop = a.crop or min(image_size(paths_a[0]))  # the project's one reader

    def ours_cmd(n: int, workers: int | None, root: str) -> list[str]:
        cmd = [sys.executable, str(Path(root) / "train.py"), "--model", "content-ae", "--arch",
               "original", str(lists), "-n", "loop", "--iter", str(n), "--batch", str(a.batch),
               "--force", "--no_progress", "--checkpoint_dir", str(scratch / "ours_ck"),
               "--result_dir", str(scratch / "ours_res")]
        return cmd + ([] if workers is None else ["--workers", str(workers)])

    def original_cmd(n: int) -> list[str]:
        out = scratch / f"orig_{n}"
        return [sys.executable, "-c", SHIM, str(Path(a.anchor).resolve()), "--root", str(lists),
                "--out", str(out), "--iters", str(n), "--bs", str(a.batch), "--crop", str(crop)]

    sides = [(f"ours{'' if len(a.ours) == 1 else ' ' + root} (--workers "
              f"{w if w is not None else 'default'})", (w, root))
             for root in a.ours for w in a.workers]
    if not a.no_original:
        sides.append(("original", "original"))
    runs: dict[str, dict[int, list[tuple[float, float]]]] = {
        name: {a.long: [], a.short: []} for name, _ in sides}
    for rep in range(a.repeats):
        for n in (a.long, a.short):
            for name, w in sides:
                cmd = original_cmd(n) if w == "original" else ours_cmd(n, *w)
                wall, rss = timed(cmd, scratch)
                runs[name][n].append((wall, rss))
                print(f"repeat {rep}: {name}, {n} iterations: {wall:.1f} s, peak {rss:.0f} MiB",
                      flush=True)
    print(f"\nCPU: {cpu_name()}, load average {os.getloadavg()[0]:.1f} at the end; "
          f"{a.items} images per domain, batch {a.batch}, 128 px, sep 25; "
          f"{a.repeats} repeats, sides alternating")
    print("| side | s/step per repeat | s/step (median) | peak RSS MiB (long runs) |")
    print("|---|---|---:|---:|")
    per_step = {}
    for name, _ in sides:
        steps = [(lo[0] - sh[0]) / (a.long - a.short)
                 for lo, sh in zip(runs[name][a.long], runs[name][a.short], strict=True)]
        per_step[name] = steps
        rss = max(r for _, r in runs[name][a.long])
        print(f"| {name} | {', '.join(f'{s:.2f}' for s in steps)} | "
              f"{statistics.median(steps):.2f} | {rss:.0f} |")
    if "original" in per_step:
        for name, steps in per_step.items():
            if name != "original":
                ratios = [o / s for o, s in zip(per_step["original"], steps, strict=True)]
                print(f"{name}: {statistics.median(ratios):.2f}x the original (per repeat: "
                      f"{', '.join(f'{r:.2f}' for r in ratios)}; > 1: ours is faster)")
    print(json.dumps({"per_step": per_step}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
