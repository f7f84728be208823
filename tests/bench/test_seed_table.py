"""bench/seed_table.py: how an evaluate.py table's rows become the seed table's labels."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
import seed_table  # noqa: E402


def write_metrics(path: Path, systems: list[str]) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["system", *seed_table.KEYS])
        w.writeheader()
        for i, s in enumerate(systems):
            w.writerow({"system": s, **{k: float(i) for k in seed_table.KEYS}})
    return path


def test_both_ad_flow_motions_keep_their_own_rows_under_a_run_label(tmp_path) -> None:
    systems = ["ad-flow", "ad-flow (relative)", "baseline: copy query",
               "baseline: mouth blend"]
    path = write_metrics(tmp_path / "metrics.csv",
                         systems + [f"{s} @256 px" for s in systems])
    label = next(e[1] for e in seed_table.INITS["ad-flow"] if e[0] == "_matched")
    rows = seed_table.pick(path, "ad", label)
    assert set(rows) == {(kind, res) for res in seed_table.RES for kind in (
        "model:ad-flow, --init matched", "model:ad-flow (relative), --init matched",
        "copy", "blend")}
    # the relative row is its own, not overwritten by (or overwriting) the absolute one
    key = next(iter(seed_table.KEYS))
    assert rows[("model:ad-flow, --init matched", "32 px")][key] == 0.0
    assert rows[("model:ad-flow (relative), --init matched", "32 px")][key] == 1.0
    assert rows[("model:ad-flow (relative), --init matched", "256 px")][key] == 5.0
    # every AD-flow label it can make has a row title
    inits = [e[1] for e in seed_table.INITS["ad-flow"] if e[1]]
    assert len(inits) == 2
    for lab in ("ad-flow", "ad-flow (relative)"):
        for init in (None, *inits, *(v for _, v in seed_table.VARIANTS["ad-flow"])):
            name = init.format(system=lab) if init else lab
            assert name in seed_table.LABELS, name
