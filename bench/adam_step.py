"""Adam's step on a Glow's parameters: the loop's choice (``training.optim.training_adam``,
torch's fused kernel) against ``torch.optim.Adam`` as built by default on the CPU (one tensor
at a time) and its multi-tensor path, alternating in one process.

Examples::

    python bench/adam_step.py                    # thesis config (74.5M parameters, affine)
    python bench/adam_step.py --config small --repeats 10
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="thesis", choices=["thesis", "small", "quick"])
    p.add_argument("--affine", action="store_true", help="affine coupling (default additive)")
    p.add_argument("--repeats", type=int, default=5, help="timed steps per variant (default 5)")
    args = p.parse_args(argv)

    import torch
    from glow_step import CONFIGS, HIDDEN

    from glow import Glow
    from training.optim import Adam, training_adam

    size, n_flow, n_block, _ = CONFIGS[args.config]
    torch.manual_seed(0)
    model = Glow(3, n_flow, n_block, affine=args.affine, conv_lu=True, hidden=HIDDEN,
                 img_size=size)
    params = list(model.parameters())
    for q in params:
        q.grad = torch.randn_like(q) * 1e-3
    variants = {
        "loop (fused)": training_adam([{"params": params}], lr=1e-5, eps=1e-8),
        "torch default (one tensor at a time)": Adam(params, lr=1e-5),
        "multi-tensor (foreach)": Adam(params, lr=1e-5, foreach=True),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    for opt in variants.values():
        opt.step()  # the state is allocated outside the timing
    for _ in range(args.repeats):
        for name, opt in variants.items():
            t = time.perf_counter()
            opt.step()
            times[name].append(time.perf_counter() - t)
    n = sum(q.numel() for q in params)
    print(f"{args.config} config, {n / 1e6:.1f}M parameters in {len(params)} tensors, "
          f"{torch.get_num_threads()} threads, median of {args.repeats} steps (alternating):")
    ref = statistics.median(times["torch default (one tensor at a time)"])
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:38s} {med * 1e3:8.1f} ms   {ref / med:5.2f}x the default")
    return 0


if __name__ == "__main__":
    sys.exit(main())
