#!/usr/bin/env python
"""Where pose transfer loses PSNR: the squared error against the exact answers of a synthetic
pose set, split by region of the answer's face, for the flow's own landmark warp (its starting
point) and, given checkpoints, for pose-flow.

Regions (from the answer's exact landmarks, rasterised at 8x and read at the model's size):
``mouth inside`` (the inner-lip loop, points 60-67), ``lips`` (the outer loop 48-59 less the
inside), ``face`` (the hull of the jaw 0-16 and the brows 17-26, less the mouth) and ``outside``
(everything else: forehead, hair, ears, neck, background). Per region: its share of the pixels,
its share of the pooled squared error, the PSNR the whole image would have if that region's error
were zero (how much any fix of that region could buy), and for each checkpoint the change of the
region's squared error against the warp's. PSNR here pools the squared error over all pairs
(evaluate.py averages the per-pair PSNR, so its figures are about 1 dB higher on the same pairs).

  python bench/pose_error_regions.py POSE_SET
  python bench/pose_error_regions.py POSE_SET --checkpoint RUN/last.pt OTHER/last.pt
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from faces.io import read_image  # noqa: E402
from pose_flow.data import read_landmarks  # noqa: E402
from pose_flow.warp import piecewise_affine  # noqa: E402
from talking.job import to_uint8  # noqa: E402

REGIONS = ("mouth inside", "lips", "face", "outside")
HULL = list(range(0, 17)) + list(range(26, 16, -1))  # the jaw, then the brows back across


def _polygon(lm: np.ndarray, idx: list[int], size: int) -> np.ndarray:
    big = Image.new("L", (size * 8, size * 8))
    ImageDraw.Draw(big).polygon([tuple(p * size * 8) for p in lm[idx]], fill=255)
    return np.asarray(big.resize((size, size), Image.BILINEAR)) >= 128


def region_masks(lm: np.ndarray, size: int) -> dict[str, np.ndarray]:
    """Boolean ``[size, size]`` masks of :data:`REGIONS` from 68 landmarks in [0, 1]; they
    partition the image."""
    inner = _polygon(lm, list(range(60, 68)), size)
    mouth = _polygon(lm, list(range(48, 60)), size) | inner
    hull = _polygon(lm, HULL, size) | mouth
    return {"mouth inside": inner, "lips": mouth & ~inner, "face": hull & ~mouth,
            "outside": ~hull}


def _img(path: Path, size: int) -> np.ndarray:
    im = read_image(path)
    if im.shape[0] != size:  # as evaluate.py reads them
        im = np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR))
    return np.array(im)


def _tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255 - 0.5


def measure(root: Path, models: dict, size: int) -> dict:
    """Per system (``own warp`` and each model): summed squared error per region, and pixel
    counts, over every source x target pair of the pose set at ``root``."""
    man = json.loads((root / "manifest.json").read_text())
    systems = ["own warp", *models]
    sq = {s: dict.fromkeys(REGIONS, 0.0) for s in systems}
    pixels = dict.fromkeys(REGIONS, 0)
    pairs = 0
    for s in man["sources"]:
        for t in man["targets"]:
            src_path = root / "eval" / "sources" / f"{s}.png"
            truth_path = root / "eval" / "truth" / s / f"{t}.png"
            src, truth = _img(src_path, size), _img(truth_path, size).astype(np.float64)
            lm_s, _ = read_landmarks(src_path.with_suffix(".npy"))
            lm_t, _ = read_landmarks(truth_path.with_suffix(".npy"))
            x = _tensor(src)
            ls, lt = torch.from_numpy(lm_s)[None].float(), torch.from_numpy(lm_t)[None].float()
            outs = {"own warp": to_uint8(piecewise_affine(x, ls, lt))[0]}
            with torch.no_grad():
                for name, model in models.items():
                    outs[name] = to_uint8(model.transfer(x, ls, lt))[0]
            masks = region_masks(lm_t, size)
            for name, out in outs.items():
                err = ((out.astype(np.float64) - truth) ** 2).mean(-1) / 255 ** 2
                for r, m in masks.items():
                    sq[name][r] += float(err[m].sum())
            for r, m in masks.items():
                pixels[r] += int(m.sum())
            pairs += 1
    return {"sq": sq, "pixels": pixels, "pairs": pairs}


def table(res: dict) -> str:
    sq, pixels = res["sq"], res["pixels"]
    n = sum(pixels.values())
    warp = sq["own warp"]
    total = sum(warp.values())
    models = [s for s in sq if s != "own warp"]
    head = ("| region | pixels | share of the warp's squared error | PSNR if the warp's error "
            "there were zero |" + "".join(f" {m}: squared error against the warp's |"
                                          for m in models))
    lines = [head, "|---|---:|---:|---:|" + "---:|" * len(models)]
    psnr = lambda s: 10 * math.log10(n / s) if s > 0 else math.inf  # noqa: E731
    for r in REGIONS:
        gain = psnr(total - warp[r]) - psnr(total)
        cells = [f"{pixels[r] / n:.1%}", f"{warp[r] / total:.1%}",
                 f"{psnr(total - warp[r]):.2f} dB (+{gain:.2f})"]
        cells += [f"{(sq[m][r] / warp[r] - 1):+.1%}" if warp[r] else "–" for m in models]
        lines.append(f"| {r} | " + " | ".join(cells) + " |")
    whole = [psnr(sum(sq[m].values())) for m in models]
    lines.append("| whole image | 100% | 100% | " + f"{psnr(total):.2f} dB (the warp) |"
                 + "".join(f" {w:.2f} dB ({w - psnr(total):+.2f}) |" for w in whole))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("data", metavar="POSE_SET", help="a synthetic pose set "
                   "(python -m pose_flow.synthetic OUT)")
    p.add_argument("--checkpoint", nargs="*", default=[], help="pose-flow checkpoints to split "
                   "the same way (their image size is used)")
    p.add_argument("--size", type=int, default=32, help="image size without a checkpoint "
                   "(default: 32)")
    p.add_argument("--no_progress", action="store_true", help="accepted; prints no progress bar")
    a = p.parse_args(argv)
    root = Path(a.data)
    if not (root / "manifest.json").is_file():
        print(f"error: {root}: not a pose set (no manifest.json); make one with "
              "`python -m pose_flow.synthetic OUT`", file=sys.stderr)
        return 1
    from training import registry

    models = {}
    for ck in a.checkpoint:
        model = registry.load_model(Path(ck), torch.device("cpu"), expect="pose-flow")
        models[ck] = model.eval()
    sizes = {m.img_size for m in models.values()} or {a.size}
    if len(sizes) > 1:
        print(f"error: --checkpoint: the checkpoints have image sizes {sorted(sizes)}; give "
              "checkpoints of one size", file=sys.stderr)
        return 1
    res = measure(root, models, sizes.pop())
    print(f"{res['pairs']} transfers of {root}\n")
    print(table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
