"""Where a Glow training process's memory goes, phase by phase (CPU, resident set size).

Builds the Glow, initialises ActNorm, runs ``--steps`` training steps (forward, backward, Adam
step) and writes a checkpoint through ``training.checkpoint``, printing for each phase the RSS
at its end and the highest RSS seen during it (a sampling thread reads ``/proc/self/statm``
every 2 ms), next to what the phase must hold: parameters, gradients and Adam's two moments
(4 bytes each per parameter).

Examples::

    python bench/glow_memory.py --low_memory --affine          # thesis config, batch 16
    python bench/glow_memory.py --config small --batch 1
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

MIB = 2**20


def rss() -> float:
    """Resident set size in MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MIB


class Sampler:
    """Highest RSS since the last :meth:`phase` call, sampled in a background thread."""

    def __init__(self) -> None:
        self.peak = rss()
        self._stop = False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop:
            self.peak = max(self.peak, rss())
            time.sleep(0.002)

    def phase(self, name: str, rows: list) -> None:
        now = rss()
        rows.append((name, now, max(self.peak, now)))
        self.peak = now

    def stop(self) -> None:
        self._stop = True
        self._t.join()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="thesis", choices=["thesis", "small", "quick"])
    p.add_argument("--batch", type=int, default=0, help="batch (default: the config's, 16)")
    p.add_argument("--affine", action="store_true", help="affine coupling (default additive)")
    p.add_argument("--low_memory", action="store_true", help="recompute activations in backward")
    p.add_argument("--steps", type=int, default=2, help="training steps (default 2)")
    p.add_argument("--foreach", choices=["auto", "on", "off", "fused"], default="auto",
                   help="Adam's multi-tensor path: on, off (one parameter at a time), fused "
                        "(torch's fused kernel), or auto: what train.py uses (fused)")
    p.add_argument("--keep_grads", choices=["auto", "on", "off"], default="auto",
                   help="zero the gradients in place between steps (on) or free them (off); "
                        "auto: what train.py does (in place with --low_memory)")
    p.add_argument("--step_in_backward", choices=["auto", "on", "off"], default="auto",
                   help="step Adam on each flow's parameters inside the recomputing backward "
                        "and free their gradients there (on), or once after backward (off); "
                        "auto: what train.py does (on with --low_memory, without clipping)")
    p.add_argument("--optimizer", choices=["ours", "torch"], default="ours",
                   help="ours: training.optim.Adam, as train.py uses (no torch._dynamo import); "
                        "torch: torch.optim.Adam (imports torch._dynamo and triton)")
    args = p.parse_args(argv)

    rows: list = []
    sampler = Sampler()
    import torch
    from glow_step import CONFIGS, HIDDEN

    from glow import Glow
    from glow.memory import enable_low_memory, on_grads_ready
    from training.checkpoint import save_checkpoint
    from training.loop import hide_triton_without_gpu
    from training.optim import Adam as LeanAdam
    from training.optim import StepInBackward

    if args.optimizer == "ours":
        hide_triton_without_gpu()  # as train.py does
    adam = LeanAdam if args.optimizer == "ours" else torch.optim.Adam

    sampler.phase("import torch + glow", rows)
    size, n_flow, n_block, batch = CONFIGS[args.config]
    batch = args.batch or batch
    torch.manual_seed(0)
    model = Glow(3, n_flow, n_block, affine=args.affine, conv_lu=True, hidden=HIDDEN,
                 img_size=size)
    if args.low_memory:
        enable_low_memory(model)
    n_params = sum(q.numel() for q in model.parameters())
    sampler.phase("build the model", rows)
    x = torch.rand(batch, 3, size, size) - 0.5
    model.initialize(x)
    sampler.phase("ActNorm initialisation", rows)
    foreach = {"on": True, "off": False, "fused": "fused", "auto": "fused"}[args.foreach]
    keep = {"on": True, "off": False, "auto": args.low_memory}[args.keep_grads]
    in_backward = {"on": True, "off": False, "auto": args.low_memory}[args.step_in_backward]
    if in_backward and not args.low_memory:
        p.error("--step_in_backward on needs --low_memory (the recomputing backward)")
    opt = (adam(model.parameters(), lr=1e-5, fused=True) if foreach == "fused"
           else adam(model.parameters(), lr=1e-5, foreach=foreach))
    for i in range(args.steps):
        opt.zero_grad(set_to_none=not keep)  # before the forward, as the training loop does
        log_p, logdet, _ = model(x)
        loss = -(log_p + logdet).mean()
        sampler.phase(f"step {i + 1}: forward", rows)
        if in_backward:
            with on_grads_ready(StepInBackward(opt)):
                loss.backward()
        else:
            loss.backward()
        del log_p, logdet, loss
        sampler.phase(f"step {i + 1}: backward", rows)
        opt.step()
        sampler.phase(f"step {i + 1}: Adam step" + (" (the rest)" if in_backward else ""), rows)
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(Path(tmp) / "last.pt", model_name="glow", model_config=model.config(),
                        train_config={}, weights=model.state_dict(),
                        optimizer=opt.state_dict(), with_rng=False)
        sampler.phase("checkpoint written", rows)
    sampler.stop()

    mb = n_params * 4 / MIB
    print(f"{args.config} config, batch {batch}, {'affine' if args.affine else 'additive'}, "
          f"low memory {'on' if args.low_memory else 'off'}, Adam "
          f"{'fused' if foreach == 'fused' else 'foreach on' if foreach else 'foreach off'}, "
          f"gradients {'zeroed in place' if keep else 'freed'} "
          f"between steps, Adam {'inside' if in_backward else 'after'} backward, "
          f"{n_params / 1e6:.1f}M parameters: "
          f"weights {mb:.0f} MiB, + gradients {mb:.0f}"
          f"{' (one flow at a time)' if in_backward else ''}, + Adam moments {2 * mb:.0f} "
          f"= {(3 if in_backward else 4) * mb:.0f} MiB must be held; allocator "
          f"{'jemalloc' if 'jemalloc' in os.environ.get('LD_PRELOAD', '') else 'glibc'}; "
          f"{args.optimizer} Adam, torch._dynamo {'im' if 'torch._dynamo' in sys.modules else 'not im'}"
          f"ported, triton {'loaded' if sys.modules.get('triton') else 'not loaded'}")
    print(f"{'phase':28s} {'RSS after':>10s} {'peak during':>12s}  (MiB)")
    for name, now, peak in rows:
        print(f"{name:28s} {now:10.0f} {peak:12.0f}")
    print(f"whole-process peak {max(r[2] for r in rows):.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
