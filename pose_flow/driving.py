"""Test time of the pose flow, the model's side: driving a still face with a source sequence
(``test.py --model pose-flow --source NAME QUERY``, the shared talking-face job) and the
landmarks of any face image (also for the pose-transfer grid, ``talking.pose_grid``, and the
evaluation, ``evaluation.pose``).

Driving: the query's ``w`` (encoded once, with the query's landmarks), every source frame's
landmarks as the condition, split latents at their prior means (``--temp 0``). ``--retarget``
moves the query's own landmarks by the source's motion relative to its first frame (scaled by
the ratio of inter-ocular distances), so a wide face keeps its outline under a narrow driver.
``--mirror`` averages each frame with the mirrored query's rendering at the mirrored landmarks,
flipped back.

Landmarks come from ``FRAME.npy`` beside each image (``preprocess.py --landmarks``, or the
synthetic sets), else from dlib; an image with neither is a one-line error naming it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from cliargs import nonnegative
from faces.io import read_image
from faces.landmarks import LandmarkDetector
from training.registry import load_model

from .data import REASONS, PoseDataError, landmark_path, read_landmarks
from .preprocess import normalised_landmarks


def add_test_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("pose-flow")
    g.add_argument("--retarget", action="store_true",
                   help="move the query's landmarks by the source's motion relative to its "
                        "first frame instead of using the source's landmarks as they are")
    g.add_argument("--temp", type=nonnegative, default=0.0,
                   help="temperature of the split latents (0: their prior means; default 0)")
    add_mirror_arg(g)


def add_mirror_arg(parser) -> None:
    """``--mirror``: test.py, evaluate.py and the pose grid alike."""
    parser.add_argument("--mirror", action="store_true",
                        help="average every output with the rendering of the mirrored face "
                             "at the mirrored landmarks, flipped back (twice the rendering "
                             "time; +0.04 dB on held-out transfers, +0.09 dB driving; "
                             "docs/pose_flow.md)")


def landmarks_for(path: Path, what: str) -> np.ndarray:
    """``float32 [68, 2]`` in [0, 1] for the image at ``path``: its ``.npy``, else dlib."""
    lm, reason = read_landmarks(landmark_path(path))
    if lm is not None:
        return lm
    try:
        image = read_image(path)
    except (OSError, ValueError) as exc:
        raise PoseDataError(f"cannot read {what} {path} ({exc})") from None
    detector = _detector()
    found = normalised_landmarks(image, detector)
    if found is None:
        # The narrowest fix: this one image (never its folder, which may be real data). A
        # larger detection width can find a small face in a large image; else nothing can.
        fix = "give an aligned face crop (python preprocess.py PHOTO writes one)"
        width = image.shape[1]
        if width > detector.detect_width:
            fix = (f"try `python preprocess.py --landmarks {path} --detect_width {width}` "
                   f"(writes {landmark_path(path).name} beside it, nothing else), or " + fix)
        raise PoseDataError(f"{what} {path}: {REASONS[reason]} and dlib finds no face at "
                           f"--detect_width {detector.detect_width}; {fix}")
    return found


_DET: list = []


def _detector():
    if not _DET:
        _DET.append(LandmarkDetector())
    return _DET[0]


def inter_ocular(lm: np.ndarray) -> float:
    return float(np.linalg.norm(lm[36:42].mean(0) - lm[42:48].mean(0)))


def retarget(query: np.ndarray, source: np.ndarray) -> np.ndarray:
    """Query landmarks [68, 2] moved by the source's motion: ``q + (s_t - s_0) * iod_q / iod_0``
    for source landmarks [T, 68, 2] -> [T, 68, 2]."""
    scale = inter_ocular(query) / max(inter_ocular(source[0]), 1e-6)
    return query[None] + (source - source[:1]) * scale


def load_for_test(args, device):
    """The model, plus the landmarks of the query and the source frames (the files the job
    found: ``args.query_path``, ``args.frames``) kept on ``args``."""
    model = load_model(args.checkpoint, device, expect="pose-flow")
    q_lm = landmarks_for(args.query_path, "query")
    src = np.stack([landmarks_for(p, "source frame") for p in args.frames])
    targets = retarget(q_lm, src) if getattr(args, "retarget", False) else src
    args.pose_state = {"query_lm": q_lm, "targets": targets.astype(np.float32), "cursor": 0,
                       "appearance": None}
    return model


@torch.no_grad()
def generate(model, query: Tensor, mix: Tensor | None, source: Tensor, args) -> Tensor:
    """query [1, 3, S, S] and a chunk of source frames [T, 3, S, S] (in order) -> [T, 3, S, S]:
    the query's appearance (its ``w``, or with a reference the query itself) under each frame's
    (or the retargeted) landmarks."""
    m = model.module if hasattr(model, "module") else model
    st = args.pose_state
    dev = query.device
    if st["appearance"] is None:
        q_lm = torch.from_numpy(st["query_lm"])[None].to(dev)
        st["appearance"] = m.appearance(query, q_lm, bool(getattr(args, "mirror", False)))
    t = source.shape[0]
    lms = torch.from_numpy(st["targets"][st["cursor"]:st["cursor"] + t]).to(dev)
    if lms.shape[0] != t:
        raise ValueError(f"{t} frames but only {lms.shape[0]} landmark sets left")
    st["cursor"] += t
    app = m.select_appearance(st["appearance"], 0, t)
    return m.render(app, lms, float(getattr(args, "temp", 0.0)))
