#!/usr/bin/env python
"""What a talking sequence's crops keep of the mouth's motion, cropped around each frame's
mouth (``--anchor mouth``) or following the head (``--anchor head``, the default).

  python bench/sequence_anchor.py FRAMES_OR_VIDEO [--frames N] [--smooth 5]

Finds the landmarks of every frame once, computes both anchors' crop parameters
(``faces.sequence.sequence_params``), carries each frame's landmarks into its crop and
prints per anchor: the mouth width's relative variation in the crops (std / mean), its
correlation with the mouth's own width (over the eyes' distance, which no crop changes), the
eyes' distance's relative variation (a face that grows and shrinks in the frame), and the
lips' extent against the mouth box the mouth mix replaces (docs/preprocess.md).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from cliargs import error_exit, positive_int  # noqa: E402
from faces.align import alignment_params, apply_transform, similarity_matrix  # noqa: E402
from faces.blend import MOUTH_BOX_256  # noqa: E402
from faces.landmarks import shared_detector  # noqa: E402
from faces.sequence import ANCHORS, sequence_params, track_landmarks  # noqa: E402
from talking.video_source import open_frames  # noqa: E402


def _eye_distance(lm: np.ndarray) -> float:
    return float(np.hypot(*(lm[42:48].mean(0) - lm[36:42].mean(0))))


def measure(landmarks: list, smooth: int = 5) -> dict[str, dict[str, float]]:
    """Per anchor, the figures of the module docstring over the frames with landmarks."""
    rows = [i for i, lm in enumerate(landmarks) if lm is not None]
    own = np.array([alignment_params(landmarks[i])[2] / _eye_distance(landmarks[i])
                    for i in rows])
    out = {}
    for anchor in ANCHORS:
        params, _ = sequence_params(landmarks, smooth, anchor)
        crops = [apply_transform(landmarks[i], similarity_matrix(params[i], 256)) for i in rows]
        width = np.array([alignment_params(c)[2] for c in crops])
        eyes = np.array([_eye_distance(c) for c in crops])
        lips = np.stack([c[48:68] for c in crops])
        out[anchor] = {
            "width_cv": float(width.std() / width.mean()),
            "width_corr": float(np.corrcoef(width, own)[0, 1]),
            "eye_cv": float(eyes.std() / eyes.mean()),
            "lips_top": float(lips[:, :, 1].min()), "lips_bottom": float(lips[:, :, 1].max()),
            "lips_left": float(lips[:, :, 0].min()), "lips_right": float(lips[:, :, 0].max()),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/sequence_anchor.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="a folder of frames or a video file")
    p.add_argument("--frames", type=positive_int, default=None,
                   help="the first N frames (default: all)")
    p.add_argument("--smooth", type=positive_int, default=5,
                   help="the crop parameters' moving-average window (default: %(default)s)")
    args = p.parse_args(argv)
    t0 = time.time()
    try:
        src = open_frames(args.source)
        frames = []
        for frame in src.passes():
            frames.append(frame)
            if args.frames and len(frames) >= args.frames:
                break
        landmarks, _ = track_landmarks(frames, shared_detector())
        if not any(lm is not None for lm in landmarks):
            raise ValueError(f"{args.source}: no face found in any frame")
        res = measure(landmarks, args.smooth)
    except (OSError, ValueError) as exc:
        return error_exit(exc)
    found = sum(lm is not None for lm in landmarks)
    r0, r1, c0, c1 = MOUTH_BOX_256
    print(f"{args.source}: {len(frames)} frames, {found} with a face ({time.time() - t0:.0f} s); "
          f"mouth box rows {r0}-{r1}, columns {c0}-{c1} at 256 px")
    print("| --anchor | mouth width std/mean | its corr. with the mouth's own width | "
          "eye distance std/mean | lips' rows | lips' columns |")
    print("|---|---:|---:|---:|---|---|")
    for anchor, v in res.items():
        print(f"| {anchor} | {v['width_cv']:.3f} | {v['width_corr']:+.2f} | {v['eye_cv']:.3f} | "
              f"{v['lips_top']:.1f}-{v['lips_bottom']:.1f} | "
              f"{v['lips_left']:.1f}-{v['lips_right']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
