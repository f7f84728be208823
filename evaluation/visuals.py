"""What a person looks at before trusting a number: each system side by side with its baselines.

``rows``: ``{label: uint8 [T, S, S, 3]}`` in display order (the reference first: the ground
truth, or the driving source; then the baselines; then the systems). Every tile is enlarged to
at least :data:`TILE` pixels by pixel repetition (nearest neighbour: a 32 px output is shown as
the 32 px image it is, not smoothed into a sharper-looking one).

* :func:`comparison_grid`: one row per label, columns = evenly spaced frames, a label strip at
  the left (PNG);
* :func:`comparison_video`: every label's frame ``t`` side by side under a caption strip (H.264
  mp4 through ``lrw.video.write_video``, written to a temporary name and renamed).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from lrw.synthetic import SyntheticSet
from lrw.video import write_video
from talking.inputs import read_rgb, resolve_query, resolve_source

from .models import like_model_input, pasted_label, run_sequence

__all__ = ["TILE", "comparison_grid", "comparison_video", "enlarge"]

TILE = 128
"""Smallest tile side in the pictures, in pixels."""

LABEL_W = 220
CAPTION_H = 28


def enlarge(image: np.ndarray, tile: int = TILE) -> np.ndarray:
    """``image`` [S, S, 3] repeated ``ceil(tile / S)`` times along both axes (unchanged when
    already at least ``tile``)."""
    k = max(1, math.ceil(tile / image.shape[0]))
    return image if k == 1 else np.repeat(np.repeat(image, k, axis=0), k, axis=1)


def _text(canvas: np.ndarray, xy: tuple[int, int], text: str, width: int) -> np.ndarray:
    im = Image.fromarray(canvas)
    draw = ImageDraw.Draw(im)
    try:
        font = ImageFont.load_default(size=14)
    except TypeError:  # Pillow < 10.1: one bitmap size
        font = ImageFont.load_default()
    words, lines, cur = text.split(), [], ""
    for w in words:  # wrap to the strip's width
        trial = f"{cur} {w}".strip()
        if cur and draw.textlength(trial, font=font) > width - 8:
            lines.append(cur)
            cur = w
        else:
            cur = trial
    lines.append(cur)
    draw.multiline_text(xy, "\n".join(lines), fill=(20, 20, 20), font=font, spacing=2)
    return np.array(im)


def _frames_shown(n: int, columns: int) -> list[int]:
    if n <= columns:
        return list(range(n))
    return sorted({round(i * (n - 1) / (columns - 1)) for i in range(columns)})


def comparison_grid(rows: Mapping[str, np.ndarray], path: str | Path, columns: int = 8,
                    tile: int = TILE) -> Path:
    """A PNG with one row per label of ``rows`` and up to ``columns`` evenly spaced frames;
    tiles at least ``tile`` px. Returns the path (written atomically)."""
    path = Path(path)
    labels = list(rows)
    n = min(len(rows[k]) for k in labels)
    if n == 0:
        raise ValueError(f"cannot draw {path}: no frames")
    idx = _frames_shown(n, columns)
    side = enlarge(rows[labels[0]][0], tile).shape[0]
    pad = 4
    height = CAPTION_H + len(labels) * (side + pad)
    width = LABEL_W + len(idx) * (side + pad)
    canvas = np.full((height, width, 3), 255, np.uint8)
    for c, t in enumerate(idx):
        canvas = _text(canvas, (LABEL_W + c * (side + pad) + 4, 6), f"frame {t}", side)
    for r, lab in enumerate(labels):
        top = CAPTION_H + r * (side + pad)
        canvas = _text(canvas, (6, top + side // 2 - 16), lab, LABEL_W)
        for c, t in enumerate(idx):
            left = LABEL_W + c * (side + pad)
            canvas[top:top + side, left:left + side] = enlarge(rows[lab][t], tile)
    return _save_png(canvas, path)


def comparison_video(rows: Mapping[str, np.ndarray], path: str | Path, fps: float = 25.0,
                     tile: int = TILE) -> Path:
    """An H.264 mp4: frame ``t`` shows every label's frame ``t`` side by side, captioned.
    Returns the path (written to a temporary name in the same folder, then renamed)."""
    path = Path(path)
    labels = list(rows)
    n = min(len(rows[k]) for k in labels)
    if n == 0:
        raise ValueError(f"cannot write {path}: no frames")
    side = enlarge(rows[labels[0]][0], tile).shape[0]
    pad = 4
    head = np.full((CAPTION_H * 2, len(labels) * (side + pad), 3), 255, np.uint8)
    for c, lab in enumerate(labels):
        head = _text(head, (c * (side + pad) + 4, 4), lab, side)
    frames = []
    for t in range(n):
        body = np.full((side, len(labels) * (side + pad), 3), 255, np.uint8)
        for c, lab in enumerate(labels):
            body[:, c * (side + pad):c * (side + pad) + side] = enlarge(rows[lab][t], tile)
        frames.append(np.concatenate([head, body]))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    write_video(tmp, frames, fps)
    tmp.replace(path)
    return path


def _save_png(canvas: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    Image.fromarray(canvas).save(tmp)
    tmp.replace(path)
    return path


TRUTH = "ground truth"


def synthetic_rows(root: str | Path, systems, size: int, device="cpu", batch: int = 16,
                   seq_frames: int | None = None, blend: str = "poisson",
                   paste: bool | str = False) -> tuple[dict[str, np.ndarray], str, float]:
    """The first query x source pair of a synthetic set: ``(rows, caption, fps)`` with the
    ground truth first, then both baselines and every system (as they were scored). With
    ``paste`` (``models.run_sequence``'s) also the 256 px rows, labelled by
    ``models.pasted_label``, the truth at 256 px first (:func:`split_256` separates them)."""
    syn = SyntheticSet.load(root)
    q, s = syn.query_names[0], syn.source_names[0]
    source = resolve_source(str(syn.source_folder(s)), syn.root / "image")
    paths = source.frames[:seq_frames] if seq_frames else source.frames
    frames = [read_rgb(p) for p in paths]
    outs = run_sequence(read_rgb(syn.query_path(q)), frames, size, systems, device, batch, blend,
                        paste)
    truth256 = [syn.ground_truth(q, s, t, 256) for t in range(len(frames))]
    truth = np.stack([like_model_input(t256, size) for t256 in truth256])
    rows = {TRUTH: truth}
    if paste:
        rows[pasted_label(TRUTH)] = np.stack(truth256)
    rows.update(outs)
    caption = f"query {q} speaking with the mouth of source {s} ({Path(root).name})"
    return rows, caption, source.fps


def split_256(rows: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``(at the model's size, at 256 px)``: the rows of :func:`synthetic_rows` apart."""
    big = {k: v for k, v in rows.items() if k.endswith(pasted_label(""))}
    return {k: v for k, v in rows.items() if k not in big}, big


def real_rows(image_dir: str | Path, source_name: str, query_name: str, systems, size: int,
              device="cpu", batch: int = 16, seq_frames: int | None = None
              ) -> tuple[dict[str, np.ndarray], str, float]:
    """One real query driven by one real source: ``(rows, caption, fps)`` with the source
    (brought to the model's size) first, then both baselines and every system."""
    source = resolve_source(source_name, image_dir)
    paths = source.frames[:seq_frames] if seq_frames else source.frames
    frames = [read_rgb(p) for p in paths]
    qpath, qname = resolve_query(query_name, image_dir)
    outs = run_sequence(read_rgb(qpath), frames, size, systems, device, batch)
    src = np.stack([like_model_input(f, size) for f in frames])
    caption = f"query {qname} driven by source {source.name}"
    return {"source": src, **outs}, caption, source.fps
