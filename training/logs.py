"""JSONL step log and a loss-curve PNG."""

from __future__ import annotations

import json
import math
from pathlib import Path


class JsonlLog:
    """Append-only JSON-lines log (one record per logged step)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict) -> None:
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")

    def read(self) -> list[dict]:
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def truncate_after(self, step: int) -> None:
        """Drop records beyond ``step`` (a resumed run rewrites them)."""
        records = [r for r in self.read() if r.get("step", 0) <= step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in records))


def plot_curves(records: list[dict], path: str | Path, skip: tuple[str, ...] = ("step", "time",
                "lr", "skipped", "epoch")) -> None:
    """One panel per logged term, against the step."""
    if not records:
        return
    # deferred: matplotlib costs ~0.3 s at start-up (python -X importtime); only the loss
    # curves draw with it
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: as said above

    keys = [k for k in records[-1] if k not in skip and isinstance(records[-1][k], (int, float))]
    if not keys:
        return
    fig, axes = plt.subplots(len(keys), 1, figsize=(6, 2.2 * len(keys)), sharex=True,
                             squeeze=False)
    steps = [r["step"] for r in records]
    for ax, key in zip(axes[:, 0], keys, strict=True):
        vals = [r.get(key, math.nan) for r in records]
        ax.plot(steps, vals, lw=1)
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("iteration")
    fig.tight_layout()
    tmp = Path(path).with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    tmp.replace(path)
