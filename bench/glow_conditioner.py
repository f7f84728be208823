"""The Glow conditioner as matrix products against the plain modules, one shape, one process.

``glow.fast.ConditionerNet`` trains as BLAS products (``_ConditionerFn``) from
``PRODUCTS_MIN_HIDDEN`` hidden channels (inference always runs the modules); this times both
paths on the same net and input, alternating, forward + backward, and prints the medians and
their ratio. It chose that threshold.

Examples::

    python bench/glow_conditioner.py                                # thesis level 1
    python bench/glow_conditioner.py --channels 12 --size 16 --hidden 128
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--channels", type=int, default=6, help="conditioner input channels (6)")
    p.add_argument("--out", type=int, default=0, help="output channels (default: --channels)")
    p.add_argument("--size", type=int, default=32, help="height = width (32)")
    p.add_argument("--hidden", type=int, default=512, help="hidden channels (512)")
    p.add_argument("--batch", type=int, default=16, help="batch (16)")
    p.add_argument("--repeats", type=int, default=12, help="timed passes per path (12)")
    args = p.parse_args(argv)

    import torch

    from glow import fast, layers

    net = fast.install(layers.coupling_net(args.channels, args.out or args.channels, args.hidden))
    with torch.no_grad():  # ZeroConv2d starts at zero; realistic values for both paths
        for prm in net.parameters():
            prm.add_(0.05 * torch.randn_like(prm))
    x = torch.randn(args.batch, args.channels, args.size, args.size) \
        .contiguous(memory_format=torch.channels_last).requires_grad_()

    def run(products: bool) -> float:
        fast.PRODUCTS_MIN_HIDDEN = 0 if products else 1 << 30
        t = time.perf_counter()
        y = net(x)
        y.backward(torch.ones_like(y))
        return time.perf_counter() - t

    print(f"conditioner {args.channels} -> {args.hidden} -> {args.out or args.channels} channels "
          f"at {args.size}x{args.size}, batch {args.batch}, {torch.get_num_threads()} threads")
    times: dict[bool, list[float]] = {True: [], False: []}
    for i in range(args.repeats + 2):
        for products in (True, False):
            t = run(products)
            if i >= 2:  # two warm-up rounds
                times[products].append(t)
    mod, prod = statistics.median(times[False]), statistics.median(times[True])
    print(f"  forward + backward: modules {mod * 1e3:.1f} ms, products {prod * 1e3:.1f} ms, "
          f"modules / products {mod / prod:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
