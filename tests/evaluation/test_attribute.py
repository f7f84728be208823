"""evaluate.py's attribute job (``evaluation.attribute``): the pooled scores."""

from __future__ import annotations

import numpy as np

from evaluation.attribute import _Pool


def test_outside_cost_is_zero_for_an_untouched_outside():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 256, (8, 8, 3)).astype(np.uint8)
    region = np.zeros((8, 8), bool)
    region[2:5, 2:5] = True
    inside_only = truth.copy()
    inside_only[region] = 0
    p = _Pool()
    p.add(truth, inside_only, region)
    assert p.outside_cost() == 0.0
    both = inside_only.copy()
    both[~region] = np.clip(both[~region].astype(int) + 40, 0, 255).astype(np.uint8)
    q = _Pool()
    q.add(truth, both, region)
    cost = q.outside_cost()
    # the same inside error, plus outside error: the PSNR drop is exactly that share's
    expect = 10 * np.log10(q.sse["all"] / p.sse["all"])
    assert cost > 1.0 and abs(cost - expect) < 1e-9
