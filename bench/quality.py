#!/usr/bin/env python
"""Talking-face quality at a fixed budget and seed: the synthetic PSNR/SSIM table of AD-flow,
MI-flow (both modes) and the baselines (copy query, mouth blend alone).

Trains exactly what ``make demo`` trains (demo.py's plan: a 32 px Glow, AD-flow on it, MI-flow;
seed 0), reusing the demo's checkpoints when they are there, scores every query x source pair
of the demo's synthetic set against its exact ground truth, and checks the bar we aim for:

  * both models beat copying the query (whole-image PSNR);
  * AD-flow beats the mouth blend alone (whole-image PSNR).

  python bench/quality.py                     # reuses demo_data/ (trains what is missing)
  python bench/quality.py --out DIR --json results.json
  python bench/quality.py --tiny              # seconds; numbers meaningless (a smoke test)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def verdicts(rows: list[dict]) -> list[tuple[str, bool | None]]:
    """The bar's checks on merged rows (``system`` -> metrics); ``None`` when a row is absent."""
    by = {r["system"]: r for r in rows}
    copy = by.get("baseline: copy query", {}).get("psnr")
    blend = by.get("baseline: mouth blend", {}).get("psnr")

    def beats(system: str, ref: float | None) -> bool | None:
        value = by.get(system, {}).get("psnr")
        return None if value is None or ref is None else value > ref

    return [
        ("AD-flow beats copying the query (PSNR)", beats("ad-flow", copy)),
        ("MI-flow (thesis) beats copying the query (PSNR)", beats("mi-flow (thesis)", copy)),
        ("MI-flow (cond) beats copying the query (PSNR)", beats("mi-flow (cond)", copy)),
        ("AD-flow beats the mouth blend alone (PSNR)", beats("ad-flow", blend)),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/quality.py",
                                     description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo_data",
                        help="the demo's folder: its synthetic set and checkpoints are reused "
                             "(default: demo_data)")
    parser.add_argument("--result_dir", default=None, help="default: OUT/result")
    parser.add_argument("--tiny", action="store_true", help="the demo's tiny plan")
    parser.add_argument("--json", default=None, help="also write the rows and checks here")
    args = parser.parse_args(argv)

    import demo
    from evaluation.report import format_table, read_csv

    plan = demo.TINY if args.tiny else demo.FULL
    out = Path(args.out)
    result = Path(args.result_dir) if args.result_dir else out / "result"
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # the scripts' own output: a log, not the table
        summary = demo.Demo(plan, out, result).run()
    seconds = time.perf_counter() - t0
    if summary["table_dir"] is None:
        print("error: no model could be trained (see demo.py)", file=sys.stderr)
        return 1
    rows = read_csv(summary["table_dir"] / "metrics.csv")
    for r in rows:
        r.pop("run", None)
    shown = [{k: v for k, v in r.items() if k not in ("bpd_frames",)} for r in rows]

    g, a, m = plan.glow, plan.ad_flow, plan.mi_flow
    print("Talking-face quality on the synthetic set (exact ground truth), seed 0")
    print(f"  data: {plan.words} words x {plan.speakers} speakers x {plan.clips} clips x "
          f"{plan.frames} frames at {plan.size} px; {plan.queries} held-out queries x "
          f"{plan.sources} held-out sources, every pair and frame scored")
    print(f"  Glow: K={g['n_flow']} L={g['n_block']} hidden {g['hidden']}, {g['iter']} it x "
          f"batch {g['batch']}, lr {g['lr']}")
    print(f"  AD-flow: linear encoders on that Glow, {a['iter']} it x {a['batch']} clips of "
          f"{a['n_frames']} frames, lr {a['lr']}")
    print(f"  MI-flow: K={m['n_flow']} L={m['n_block']} hidden {m['hidden']}, {m['iter']} it x "
          f"batch {m['batch']}, lr {m['lr']}")
    reused = ", ".join(summary["skipped"]) or "none"
    print(f"  wall time {seconds:.0f} s (checkpoints reused: {reused})")
    print(f"  command: python bench/quality.py --out {out}{' --tiny' if args.tiny else ''}\n")
    print(format_table(shown))
    checks = verdicts(rows)
    for text, ok in checks:
        print(f"  [{'yes' if ok else 'no ' if ok is not None else 'n/a'}] {text}")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"rows": rows, "checks": {t: ok for t, ok in checks}, "seconds": seconds,
             "plan": {"glow": g, "ad_flow": a, "mi_flow": m, "size": plan.size}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
