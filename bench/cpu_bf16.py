"""Does bf16 pay on this CPU? A float32 product against a bf16 one, and a Glow training step
in float32 against the same step under bf16 autocast (what ``train.py --amp`` runs), alternating
in one process.

``train.py`` refuses ``--amp`` on a CPU whose oneDNN has no bf16 (an AVX2-only CPU:
``training.loop.cpu_has_fast_bf16``); this bench shows why, and measures a CPU that has it.

Examples::

    python bench/cpu_bf16.py                       # small config (32 px, K=8, L=3), batch 16
    python bench/cpu_bf16.py --config quick --steps 3
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


def _median_s(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="small", choices=["small", "quick"],
                   help="small (32 px, K=8, L=3, batch 16) or quick (16 px, K=2, L=2, batch 4)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per precision (default 3)")
    p.add_argument("--mm", type=int, default=1024, help="side of the square product (1024)")
    args = p.parse_args(argv)

    from training.allocator import active_allocator, maybe_use_jemalloc

    if argv is None:
        maybe_use_jemalloc()  # float32 timed under train.py's allocator
    import torch
    from glow_step import CONFIGS, HIDDEN
    from quality import cpu_name

    from glow import Glow
    from training.loop import cpu_has_fast_bf16
    from training.optim import training_adam

    print(f"CPU: {cpu_name()}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"ATen capability {torch.backends.cpu.get_cpu_capability()}, oneDNN bf16: "
          f"{'yes' if cpu_has_fast_bf16() else 'no'}; allocator {active_allocator()}")
    n = args.mm
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        s = _median_s(lambda a=a, b=b: a @ b, 3)
        print(f"  {n}^2 product {str(dtype).replace('torch.', ''):>9}: {s * 1e3:9.1f} ms  "
              f"{2 * n ** 3 / s / 1e9:7.1f} GFLOP/s")

    size, n_flow, n_block, batch = CONFIGS[args.config]
    torch.manual_seed(0)
    model = Glow(3, n_flow, n_block, affine=False, conv_lu=True, hidden=HIDDEN, img_size=size)
    x = torch.rand(batch, 3, size, size) - 0.5
    model.initialize(x)
    opt = training_adam([{"params": list(model.parameters())}], lr=1e-5, eps=1e-8)

    def step(bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            log_p, logdet, _ = model(x + torch.rand_like(x) / 32)
        (-(log_p + logdet).mean()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step(False)
    step(True)  # warm-up of both
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.steps):
        for bf16 in (False, True):
            t0 = time.perf_counter()
            step(bf16)
            times[bf16].append(time.perf_counter() - t0)
    f32, b16 = statistics.median(times[False]), statistics.median(times[True])
    print(f"  Glow {args.config} training step, batch {batch}: float32 {f32:.3f} s, "
          f"bf16 autocast {b16:.3f} s -> bf16 is {f32 / b16:.2f}x float32's speed "
          f"(median of {args.steps})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
