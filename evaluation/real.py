"""Lip sync, identity and smoothness of generated talking faces on real driving sequences.

Per query x source pair and per system (the model, and the two baselines):

* ``mouth_dist``: mouth-landmark distance between each source frame and its output (dlib
  points 48-67, each set centred on its centroid and divided by its face's inter-ocular
  distance; mean point distance). Lower is better lip sync; 0 is a perfect copy of the shape.
* ``id_dist``: dlib face-descriptor distance between the query and each output; ``id_same``
  the fraction of outputs under the same-person threshold 0.6.
* ``jitter``: mean absolute change between consecutive outputs (``[0, 1]`` units, at the
  model's size). The mouth-blend baseline carries the source's own motion: compare with it.
* ``csim_dlib``, ``sharp`` (``field=True``): the field's dlib-CSIM (cosine of the query's and
  each output's descriptors) and sharpness (:mod:`evaluation.field_metrics`); no truth here,
  so no MS-SSIM, LMD or AKD (``mouth_dist`` is the landmark measure against the source).
* ``no_face``: frames where dlib found no face (in the source frame, the query, or with
  ``detect_outputs`` the output), so a metric could not be computed; such frames are left out
  of that metric's mean, never fatal.

Source frames and queries go through dlib's detector; outputs, which are aligned crops by
construction, use the aligned face box unless ``detect_outputs`` (see ``Landmarker``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from talking.inputs import read_rgb, resolve_query, resolve_source
from training.progress import progress as make_bar

from .field_metrics import cosine, laplacian_sharpness
from .metrics import (
    SAME_PERSON_THRESHOLD,
    Landmarker,
    fraction_below,
    identity_distance,
    mean_finite,
    mouth_distance,
    temporal_jitter,
)
from .models import BASELINE_BLEND, BASELINE_COPY, System, run_sequence

__all__ = ["evaluate_real"]


def evaluate_real(image_dir: str | Path, sources: Sequence[str], queries: Sequence[str],
                  systems: Sequence[System], size: int, device="cpu", batch: int = 16,
                  seq_frames: int | None = None, detect_outputs: bool = False,
                  progress: bool = True, field: bool = True
                  ) -> tuple[dict[str, dict[str, float]], list[dict]]:
    """Score each system and both baselines on every (query, source) pair under ``image_dir``
    (``ref_img/`` and ``source_img/``). Returns ``(rows, details)`` like
    :func:`evaluation.synthetic.evaluate_synthetic`, with the metrics of the module docstring.
    """
    image_dir = Path(image_dir)
    detector = Landmarker(aligned=False)
    out_marker = Landmarker(aligned=not detect_outputs)
    labels = [BASELINE_COPY, BASELINE_BLEND, *(s.label for s in systems)]
    acc: dict[str, dict[str, list[float]]] = {
        lab: {"mouth_dist": [], "id_dist": [], "jitter": [], "csim_dlib": [], "sharp": []}
        for lab in labels}
    no_face = dict.fromkeys(labels, 0)
    details: list[dict] = []

    resolved = [resolve_source(s, image_dir) for s in sources]
    query_paths = [resolve_query(q, image_dir) for q in queries]
    total = sum(len(r.frames[:seq_frames] if seq_frames else r.frames) for r in resolved)
    total *= len(query_paths)
    bar = None
    if progress:
        bar = make_bar(total, "real sequences", unit="frame", file=sys.stderr)
    try:
        for src in resolved:
            paths = src.frames[:seq_frames] if seq_frames else src.frames
            frames = [read_rgb(p) for p in paths]
            src_lm = [detector.landmarks(f) for f in frames]
            for qpath, qname in query_paths:
                query = read_rgb(qpath)
                q_desc = detector.descriptor(query)
                outs = run_sequence(query, frames, size, systems, device, batch)
                for lab in labels:
                    seq = outs[lab]
                    if lab == BASELINE_COPY:  # one image repeated: measure it once
                        lm, desc = out_marker.landmarks(seq[0]), out_marker.descriptor(seq[0])
                        out_lm, out_desc = [lm] * len(seq), [desc] * len(seq)
                    else:
                        out_lm = [out_marker.landmarks(o) for o in seq]
                        out_desc = [out_marker.descriptor(o) for o in seq]
                    md = [mouth_distance(a, b) for a, b in zip(src_lm, out_lm, strict=True)]
                    idd = [identity_distance(q_desc, d) for d in out_desc]
                    jit = temporal_jitter(seq)
                    missing = int(sum(np.isnan(a) or np.isnan(b)
                                      for a, b in zip(md, idd, strict=True)))
                    if field:  # the field's identity and blur measures (field_metrics)
                        acc[lab]["csim_dlib"].extend(cosine(q_desc, d) for d in out_desc)
                        acc[lab]["sharp"].extend(laplacian_sharpness(o) for o in seq)
                    acc[lab]["mouth_dist"].extend(md)
                    acc[lab]["id_dist"].extend(idd)
                    acc[lab]["jitter"].append(jit)
                    no_face[lab] += missing
                    details.append({"data": str(image_dir), "query": qname, "source": src.name,
                                    "system": lab, "frames": len(seq),
                                    "mouth_dist": mean_finite(md), "id_dist": mean_finite(idd),
                                    "id_same": fraction_below(idd, SAME_PERSON_THRESHOLD),
                                    "jitter": jit, "no_face": missing})
                if bar is not None:
                    bar.update(len(frames))
    finally:
        if bar is not None:
            bar.close()
    rows = {lab: {"mouth_dist": mean_finite(acc[lab]["mouth_dist"]),
                  "id_dist": mean_finite(acc[lab]["id_dist"]),
                  "id_same": fraction_below(acc[lab]["id_dist"], SAME_PERSON_THRESHOLD),
                  "jitter": mean_finite(acc[lab]["jitter"]),
                  "no_face": no_face[lab],
                  "real_frames": len(acc[lab]["mouth_dist"]),
                  **({"csim_dlib": mean_finite(acc[lab]["csim_dlib"]),
                      "sharp": mean_finite(acc[lab]["sharp"])} if field else {})}
            for lab in labels}
    return rows, details

