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


def test_max_pairs_makes_no_transfers_past_it_and_still_scores_every_removal(tmp_path):
    import torch

    from evaluation.attribute import evaluate_set
    from synthface.attributes import write_attribute_set

    root = write_attribute_set(tmp_path / "g", "glasses", 32, 2, 2, 3, 3, seed=0).parent
    calls = []

    class Recipe:  # the identity model: transfers give B back, removals A
        def model_size(self, model):
            return 32

        def remove(self, model, a):
            return a

        def transfer(self, model, a, b):
            calls.append(len(b))
            return b

        def transfer_info(self, model):
            return {}

    full = evaluate_set(Recipe(), None, root, torch.device("cpu"))
    assert full["_info"]["pairs"] == 9 and len(calls) == 3
    calls.clear()
    part = evaluate_set(Recipe(), None, root, torch.device("cpu"), max_pairs=4)
    assert part["_info"]["pairs"] == 4
    assert len(calls) == 2  # donors 0 (3 pairs) and 1 (1 pair); none for donor 2
    assert part["model"]["removal"] == full["model"]["removal"]  # every donor's removal
