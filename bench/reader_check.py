#!/usr/bin/env python
"""Can the mouth reader read the mouth blend? Its readings against the truth's states, per set.

The motion errors of ``evaluate.py`` read each output frame's mouth state with the query's own
mouth (``evaluation.motion.MouthReader``). This script reads the gain-matched mouth blend and
the ground truth of every held-out pair of a synthetic set (at the model's size, as
``evaluate.py`` does) and reports, for each: how often a frame whose true mouth is closed
(open < 0.1) reads fully open (>= 0.95), the correlation of the read opening with the true one,
the motion error, the opening's alone, and the reader fit (RMS grey levels of the best state's
fit error). On a hard set it also measures what the sources' aligned crops carry of the mouth's
width: the crop is scaled to the mouth's width (``faces.align``, as real faces are; its
parameters smoothed over 5 frames), so the width's motion comes through damped and late. Per
source sequence, from the exact landmarks: the mouth corners' distance in the crop against the
same on the frontal face, as the ratio of their relative variations (std over mean) and their
correlations with the true width state.

  python bench/reader_check.py SET [SET ...] [--size 32] [--pairs N] [--out FILE.json]

On a frontal set the blend reads like the truth, a little noisier; on the hard set (``python -m
lrw.synthetic OUT --hard``) the source's dark, thick lips read as an open mouth, and the read
opening no longer follows the truth's (docs/evaluate.md).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from cliargs import error_exit, positive_int  # noqa: E402
from evaluation.models import BASELINE_BLEND, like_model_input, run_sequence  # noqa: E402
from evaluation.motion import (  # noqa: E402
    motion_deviation_error,
    mouth_reader,
    ratio,
    state_array,
)
from faces.align import alignment_params, apply_transform  # noqa: E402
from lrw.synthetic import SyntheticSet  # noqa: E402
from synthface.landmarks import face_landmarks  # noqa: E402
from synthface.scene import landmarks_px  # noqa: E402
from talking.inputs import read_rgb, resolve_source  # noqa: E402

CLOSED = 0.1  # a true opening below this is a closed mouth
OPEN = 0.95  # a read opening at or above this is a mouth held fully open


def width_in_crops(syn: SyntheticSet) -> dict[str, float] | None:
    """How much of the sources' mouth-width motion their aligned crops keep (module docstring):
    means over the source sequences; None for a frontal set."""
    if not syn.hard:
        return None
    ratios, corr_crop, corr_face = [], [], []
    for name in syn.source_names:
        ident = syn.identity(syn.manifest["sources"][name]["speaker"])
        states, shots = syn.source_states(name), syn.source_shots(name)
        crop_w, face_w = [], []
        for m, shot in zip(states, shots, strict=True):
            crop = apply_transform(landmarks_px(ident, m, shot.pose), np.asarray(shot.matrix))
            crop_w.append(alignment_params(crop)[2])  # the mouth width the alignment measures
            face_w.append(alignment_params(face_landmarks(ident, m))[2])
        crop_w, face_w = np.asarray(crop_w), np.asarray(face_w)
        width = state_array(states)[:, 1]
        if width.std() == 0 or face_w.std() == 0:
            continue
        # relative variation (std over mean): the crop's scale differs from the face's
        ratios.append((crop_w.std() / crop_w.mean()) / (face_w.std() / face_w.mean()))
        corr_crop.append(np.corrcoef(crop_w, width)[0, 1])
        corr_face.append(np.corrcoef(face_w, width)[0, 1])
    return {"std_ratio": float(np.mean(ratios)), "corr_crop": float(np.mean(corr_crop)),
            "corr_face": float(np.mean(corr_face)), "sequences": len(ratios)}


def check_set(root: str | Path, size: int = 32, pairs: int | None = None) -> dict[str, dict]:
    """``{"truth": {...}, "blend": {...}}`` for the set at ``root`` (module docstring), and
    ``"width"`` (:func:`width_in_crops`) for a hard set."""
    syn = SyntheticSet.load(root)
    todo = list(itertools.product(syn.query_names, syn.source_names))[:pairs or None]
    est: dict[str, list[np.ndarray]] = {"truth": [], "blend": []}
    fits: dict[str, list[np.ndarray]] = {"truth": [], "blend": []}
    dev = {"truth": [0.0, 0.0], "blend": [0.0, 0.0]}
    dev_open = {"truth": [0.0, 0.0], "blend": [0.0, 0.0]}
    true_states = []
    for q, s in todo:
        source = resolve_source(str(syn.source_folder(s)), syn.root / "image")
        frames = [read_rgb(p) for p in source.frames]
        outs = run_sequence(read_rgb(syn.query_path(q)), frames, size, [], "cpu", 16,
                            "poisson", False)
        truth = np.stack([like_model_input(syn.ground_truth(q, s, t, 256), size)
                          for t in range(len(frames))])
        states = state_array(syn.source_states(s))[:len(frames)]
        reader = mouth_reader(syn.identity(q), size, syn.query_shot(q))
        for name, imgs in (("truth", truth), ("blend", outs[BASELINE_BLEND])):
            e, f = reader.read(imgs, fit=True)
            est[name].append(e)
            fits[name].append(f)
            num, den = motion_deviation_error(e, states)
            dev[name][0] += num
            dev[name][1] += den
            num, den = motion_deviation_error(e[:, :1], states[:, :1])
            dev_open[name][0] += num
            dev_open[name][1] += den
        true_states.append(states)
    t = np.concatenate(true_states)
    closed = t[:, 0] < CLOSED
    out = {}
    for name in ("truth", "blend"):
        e, f = np.concatenate(est[name]), np.concatenate(fits[name])
        out[name] = {
            "frames": int(len(e)), "closed_frames": int(closed.sum()),
            "closed_read_open": float((e[closed, 0] >= OPEN).mean()) if closed.any() else
            float("nan"),
            "open_corr": float(np.corrcoef(e[:, 0], t[:, 0])[0, 1]) if e[:, 0].std() > 0 else
            float("nan"),
            "motion_dev": ratio(*dev[name]),
            "motion_open": ratio(*dev_open[name]),
            "reader_fit": float(np.sqrt(np.mean(f**2))),
        }
    width = width_in_crops(syn)
    if width is not None:
        out["width"] = width
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/reader_check.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sets", nargs="+", metavar="SET", help="synthetic talking sets (their roots)")
    p.add_argument("--size", type=positive_int, default=32,
                   help="read at this size, as evaluate.py reads a model of it (default 32)")
    p.add_argument("--pairs", type=positive_int, default=None,
                   help="the first N query x source pairs (default: all)")
    p.add_argument("--out", type=Path, default=None, help="also write the figures as JSON")
    args = p.parse_args(argv)
    results = {}
    for root in args.sets:
        t0 = time.time()
        try:
            results[root] = r = check_set(root, args.size, args.pairs)
        except (OSError, ValueError, KeyError) as exc:
            return error_exit(ValueError(f"{root}: {exc}"))
        print(f"{root} ({r['truth']['frames']} frames, {r['truth']['closed_frames']} closed in "
              f"the truth; {time.time() - t0:.0f} s)")
        for name in ("truth", "blend"):
            v = r[name]
            print(f"  {name:5s}  closed frames read fully open {v['closed_read_open']:6.1%}  "
                  f"corr(read open, true open) {v['open_corr']:+.2f}  "
                  f"motion err {v['motion_dev']:.3f}  open err {v['motion_open']:.3f}  "
                  f"reader fit {v['reader_fit']:.2f}")
        if "width" in r:
            w = r["width"]
            print(f"  the sources' aligned crops keep {w['std_ratio']:.0%} of the mouth width's "
                  f"variation; its correlation with the true width state {w['corr_crop']:+.2f} "
                  f"(frontal faces {w['corr_face']:+.2f}; {w['sequences']} sequences)")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
