"""The benches' step runner: one of the project's scripts as a subprocess in the repository
root, with a thread count set before torch starts, its output appended to ``OUT/logs/NAME.log``,
its wall and CPU time measured, a failure counted and raised as :class:`Failed`; and the
mean ± std helpers of their tables."""

from __future__ import annotations

import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class Failed(Exception):
    pass


class Steps:
    """Runs ``python ARGV`` in the repository root with a thread count; counts failures.
    ``tag`` prefixes every progress line (the bench's name)."""

    def __init__(self, out: Path, tag: str = "bench") -> None:
        self.logs = Path(out) / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.failures: list[dict] = []
        self.tag = tag

    def say(self, msg: str) -> None:
        print(f"[{self.tag} {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    def run(self, name: str, argv: list[str], threads: int) -> dict:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        log = self.logs / f"{name}.log"
        self.say(f"{name}: $ OMP_NUM_THREADS={threads} python {' '.join(argv)}  (log {log})")
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        load0, t0 = os.getloadavg()[0], time.perf_counter()
        with open(log, "a") as fh:
            fh.write(f"\n$ OMP_NUM_THREADS={threads} python {' '.join(argv)}\n")
            fh.flush()
            rc = subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, stdout=fh,
                                stderr=subprocess.STDOUT, check=False).returncode
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        timing = {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
                  "load1": [round(load0, 2), round(os.getloadavg()[0], 2)]}
        if rc != 0:
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
            self.failures.append({"step": name, "rc": rc, "log": str(log), "tail": tail})
            self.say(f"{name}: FAILED with exit code {rc}; last lines of {log}:\n  "
                     + "\n  ".join(tail))
            raise Failed(name)
        self.say(f"{name}: done in {wall:.0f} s wall, {cpu:.0f} s CPU")
        return timing


def stats(vals: list[float]) -> dict:
    """``{"n", "mean", "std"}`` of the finite values (None and NaN left out)."""
    vals = [v for v in vals if v is not None and not math.isnan(v)]
    if not vals:
        return {"n": 0, "mean": math.nan, "std": math.nan}
    return {"n": len(vals), "mean": statistics.mean(vals),
            "std": statistics.stdev(vals) if len(vals) > 1 else 0.0}


def fmt(s: dict, digits: int) -> str:
    """``mean ± std`` (the mean alone for one value, a dash for none)."""
    if not s["n"]:
        return "–"
    if s["n"] == 1:
        return f"{s['mean']:.{digits}f}"
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"
