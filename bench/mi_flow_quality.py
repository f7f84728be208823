#!/usr/bin/env python
"""MI-flow quality on the synthetic talking-face set, after a fixed CPU-time budget.

Trains MI-flow at 32x32 from scratch twice with the same seed and budget, with the MI penalty
off (thesis objective; the estimator only monitors) and on (``--mi_weight``), then reports:

* bits/dim on held-out faces (the query and source frames, unseen identities);
* PSNR of ``generate`` against the exact ground truth (the query identity with the source
  frame's mouth, rendered by ``lrw.synthetic``) in ``thesis`` and ``cond`` modes, next to
  copying the query and to the Poisson mouth mix itself; over the whole image and over the
  mouth box, where the answer differs from the query;
* I(top latent; mouth crop) by a fresh CLUB estimator fitted after training on training
  frames and evaluated on held-out ones (the same probe for both runs).

    python bench/mi_flow_quality.py --minutes 8 --mi_weight 0.05
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from faces.blend import mouth_box, mouth_mix  # noqa: E402
from faces.io import read_image  # noqa: E402
from glow import quantize  # noqa: E402
from lrw.synthetic import SyntheticConfig, SyntheticSet, generate  # noqa: E402
from mi_flow import CLUB  # noqa: E402
from mi_flow.model import MIFlow  # noqa: E402
from mi_flow.recipe import RECIPE as R  # noqa: E402
from training.config import TrainConfig  # noqa: E402
from training.loop import StepContext, seed_everything, step_generator  # noqa: E402


def to_tensor(rgb: np.ndarray, size: int) -> torch.Tensor:
    """uint8 [H, W, 3] -> [3, size, size] in [-0.5, 0.5], resized like the datasets do."""
    im = TF.resize(Image.fromarray(rgb), size, interpolation=TF.InterpolationMode.BILINEAR,
                   antialias=True)
    return TF.to_tensor(im) - 0.5


def sq_err(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image mean squared error [N] (images in [-0.5, 0.5], clamped like saved frames)."""
    return ((a.clamp(-0.5, 0.5) - b) ** 2).flatten(1).mean(1)


def psnr(mse: list[torch.Tensor]) -> float:
    """PSNR (dB, peak 1) of the MSE pooled over every frame: frames whose truth equals the
    query (closed mouth) would otherwise score an unbounded PSNR for copying the query."""
    return float(10 * torch.log10(1.0 / torch.cat(mse).mean()))


def train_for(cfg: R.Config, images: torch.Tensor, minutes: float, seed: int,
              say=print) -> tuple[MIFlow, dict]:
    """The shared loop's step (Adam, clip 5, seeded per-step noise) for a wall-clock budget."""
    d = R.TRAIN_DEFAULTS  # the thesis's batch 10, lr 1e-4, clip 5
    tcfg = TrainConfig(batch=d["batch"], lr=d["lr"], grad_clip=d["grad_clip"], seed=seed,
                       device="cpu")
    seed_everything(seed)
    model = R.build(cfg)

    def ctx(step):
        return StepContext(step=step, rank=0, world=1, device=torch.device("cpu"),
                           model_cfg=cfg, train_cfg=tcfg, generator=step_generator(seed, step))

    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(images), generator=g)
    R.initialize(model, (images[perm[: tcfg.batch]],), ctx(0))
    opt = torch.optim.Adam(R.param_groups(model, cfg, tcfg), lr=tcfg.lr)
    weights = R.loss_weights(cfg)
    model.train()
    t0, step, hist = time.time(), 0, []
    while time.time() - t0 < minutes * 60:
        start = (step * tcfg.batch) % (len(images) - tcfg.batch)
        if start < tcfg.batch:
            perm = torch.randperm(len(images), generator=g)
        batch = (images[perm[start:start + tcfg.batch]],)
        terms = R.losses(model, batch, ctx(step))
        total = sum(w * terms[k] for k, w in weights.items() if w)
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
        opt.step()
        step += 1
        hist.append({k: float(v.detach()) for k, v in terms.items()})
        if step % 100 == 0:
            last = {k: round(float(np.mean([h[k] for h in hist[-100:]])), 4) for k in hist[-1]}
            say(f"  step {step} ({time.time() - t0:.0f} s): {last}")
    tail = {k: float(np.mean([h[k] for h in hist[-100:]])) for k in hist[-1]}
    return model.eval(), {"steps": step, "seconds": round(time.time() - t0, 1),
                          "train_last100": tail}


@torch.no_grad()
def bits_per_dim(model: MIFlow, x: torch.Tensor, n_bits: int) -> float:
    """Held-out bits/dim with the bin-centre dequantisation (deterministic)."""
    xq = quantize(x, n_bits) + 0.5 / 2**n_bits
    log_p, logdet, log_c, _, _ = model(xq)
    d = x[0].numel()
    return float((-(log_p + log_c + logdet - d * math.log(2**n_bits)) / (d * math.log(2))).mean())


@torch.no_grad()
def probe_mi(model: MIFlow, train_x: torch.Tensor, test_x: torch.Tensor, steps: int = 1500,
             seed: int = 0) -> float:
    """CLUB estimate (nats) of I(top latent; mouth crop) from a freshly fitted q(c|z)."""
    def feats(x):
        z = torch.cat([model(quantize(b, 5) + 1 / 64)[3][-1].flatten(1) for b in x.split(200)])
        return z, model.mi_condition(x)

    zt, ct = feats(train_x)
    zv, cv = feats(test_x)
    torch.manual_seed(seed)
    est = CLUB(zt.shape[1], ct.shape[1], hidden=128)
    opt = torch.optim.Adam(est.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    with torch.enable_grad():
        for _ in range(steps):
            idx = torch.randint(0, len(zt), (100,), generator=g)
            loss = est.learning_loss(zt[idx], ct[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return float(np.mean([est.mi_upper(z, c).item() for z, c in
                          zip(zv.split(100), cv.split(100), strict=False) if len(z) > 1]))


def evaluate(model: MIFlow, ds: SyntheticSet, size: int) -> dict:
    box = mouth_box(size)
    res: dict[str, list[torch.Tensor]] = {}
    for q in ds.query_names:
        q256 = read_image(ds.query_path(q))
        query = to_tensor(q256, size)[None]
        for s in ds.source_names:
            folder = ds.source_folder(s)
            frames = [read_image(folder / f"{t:03d}.png")
                      for t in range(ds.n_source_frames(s))]
            source = torch.stack([to_tensor(f, size) for f in frames])
            mix = torch.stack([to_tensor(mouth_mix(q256, f), size) for f in frames])
            truth = torch.stack([to_tensor(ds.ground_truth(q, s, t, 256), size)
                                 for t in range(len(frames))])
            outs = {"copy query": query.expand_as(truth), "poisson mix": mix}
            with torch.no_grad():
                for mode in ("thesis", "cond"):
                    outs[mode] = R.generate(model, query, mix, source,
                                            argparse.Namespace(mode=mode))
            t, b, left, r = box
            for name, out in outs.items():
                res.setdefault(f"{name} psnr", []).append(sq_err(out, truth))
                res.setdefault(f"{name} mouth psnr", []).append(
                    sq_err(out[:, :, t:b, left:r], truth[:, :, t:b, left:r]))
    return {k: round(psnr(v), 2) for k, v in res.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=6.0, help="training budget per run")
    p.add_argument("--mi_weight", type=float, default=0.05, help="MI weight of the second run")
    p.add_argument("--data", default=None, help="synthetic set folder (default: a temp dir)")
    p.add_argument("--n_flow", type=int, default=4)
    p.add_argument("--n_block", type=int, default=3)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1 is fastest on a busy 2-core machine)")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    size = 32
    root = Path(args.data or tempfile.mkdtemp(prefix="mi_flow_bench_"))
    generate(SyntheticConfig(out=str(root), words=8, speakers=12, clips=2, frames=29,
                             size=size, queries=2, sources=2), log=lambda *_: None)
    ds = SyntheticSet.load(root)
    data, _ = R.dataset(R.Config(img_size=size), root / "train")
    images = torch.stack([data[i][0] for i in range(len(data))])
    held_out = torch.stack([to_tensor(read_image(f), size)
                            for s in ds.source_names
                            for f in sorted(ds.source_folder(s).glob("*.png"))]
                           + [to_tensor(read_image(ds.query_path(q)),
                                        size) for q in ds.query_names])
    print(f"synthetic set {root}: {len(images)} training frames at {size} px; "
          f"{len(held_out)} held-out frames")
    results = {}
    for label, mi_w in (("mi_weight 0 (thesis)", 0.0), (f"mi_weight {args.mi_weight}", args.mi_weight)):
        cfg = R.Config(n_flow=args.n_flow, n_block=args.n_block, hidden=args.hidden,
                       img_size=size, mi_weight=mi_w, mi_monitor=True)
        print(f"[{label}] training {args.minutes} min ...")
        model, info = train_for(cfg, images, args.minutes, args.seed)
        info["held-out bpd"] = round(bits_per_dim(model, held_out, cfg.n_bits), 4)
        info["probe MI (nats)"] = round(probe_mi(model, images[::3][:2400], held_out), 3)
        info.update(evaluate(model, ds, size))
        results[label] = info
        print(json.dumps({label: info}, indent=1))
    keys = [k for k in next(iter(results.values())) if k not in ("train_last100",)]
    print("\n| | " + " | ".join(results) + " |\n|---|" + "---|" * len(results))
    for k in keys:
        print(f"| {k} | " + " | ".join(str(r[k]) for r in results.values()) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
