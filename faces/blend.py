"""Mouth mixing: put the source's mouth box into the query face.

The thesis blended with a Poisson solve over the whole 256 x 256 image, built as a
65536 x 65536 sparse system in a Python loop. The solve only matters inside the mouth box, so
here OpenCV's ``seamlessClone`` (``NORMAL_CLONE``) runs on the box alone: about 3 ms at 256 px.

Two details make it work at every size:

* ``seamlessClone`` ignores the source gradients in a band of about 3 px inside the mask
  (it erodes the mask), which at 32 px would swallow the whole 7 x 10 box. Small boxes are
  therefore cloned at an integer upscale (nearest neighbour, so area-downscaling the result
  gives back the untouched pixels exactly) and brought back down.
* The mask must not touch the image border, so the work patch is the box plus a margin taken
  from reflect-padded copies of both images.

Only pixels inside the box change; the box's outermost ring keeps the query's values
(Dirichlet boundary).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

from faces.parallel import thread_map

__all__ = ["MOUTH_BOX_256", "gain_match", "mouth_box", "mouth_mix", "mouth_mix_many"]

MOUTH_BOX_256 = (140, 188, 90, 166)
"""Mouth box of a 256 px aligned face: ``(top, bottom, left, right)``, rows ``top:bottom`` and
columns ``left:right`` (end exclusive)."""

_MIN_WORK_SIDE = 40  # box side (px) at which seamlessClone's eroded band is small enough
_MARGIN = 2  # native px of context around the box, keeps the mask off the patch border


def mouth_box(size: int) -> tuple[int, int, int, int]:
    """``MOUTH_BOX_256`` scaled to a ``size`` x ``size`` image, rounded outwards.

    ``mouth_box(256) == (140, 188, 90, 166)``, ``mouth_box(64) == (35, 47, 22, 42)``,
    ``mouth_box(32) == (17, 24, 11, 21)``.
    """
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    k = size / 256.0
    top, bottom, left, right = MOUTH_BOX_256
    return (math.floor(top * k), min(size, math.ceil(bottom * k)),
            math.floor(left * k), min(size, math.ceil(right * k)))


def _check_pair(query: np.ndarray, source: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    query = np.asarray(query)
    source = np.asarray(source)
    for name, img in (("query", query), ("source", source)):
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"{name} must be a uint8 image [H, W, 3], got "
                             f"{img.dtype} {img.shape}")
    if query.shape != source.shape:
        raise ValueError(f"query {query.shape} and source {source.shape} differ in size")
    return query, source


def _check_box(box: Sequence[int], shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    top, bottom, left, right = (int(v) for v in box)
    h, w = shape[:2]
    if not (0 <= top < bottom <= h and 0 <= left < right <= w):
        raise ValueError(f"box {tuple(box)} (top, bottom, left, right) is empty or outside "
                         f"the {w}x{h} image")
    return top, bottom, left, right


def mouth_mix(query: np.ndarray, source: np.ndarray, poisson: bool = True,
              box: Sequence[int] | None = None, gain: bool = True) -> np.ndarray:
    """The query face with the source's mouth box blended in.

    Args:
        query, source: ``uint8 [H, W, 3]`` images of the same size (RGB or BGR alike, the
            channels are treated independently), both aligned to the crop geometry.
        poisson: gradient-domain (seamless) blending; ``False`` pastes the box as is.
        box: ``(top, bottom, left, right)`` in pixels; default ``mouth_box(H)`` (square
            images) or ``MOUTH_BOX_256`` scaled per axis.
        gain: before the seamless clone, scale the source per channel so that the skin around
            its box has the query's mean colour (see :func:`_gain_matched`; ours, on by
            default: without it a dark open mouth cloned onto a light face turns pale).

    Returns a new ``uint8 [H, W, 3]`` array; pixels outside the box equal the query's.
    """
    query, source = _check_pair(query, source)
    h, w = query.shape[:2]
    if box is None:
        if h == w:
            box = mouth_box(h)
        else:
            top, bottom, _, _ = mouth_box(h)
            _, _, left, right = mouth_box(w)
            box = (top, bottom, left, right)
    top, bottom, left, right = _check_box(box, query.shape)
    out = query.copy()
    if not poisson or bottom - top < 3 or right - left < 3:
        # A box without interior pixels has nothing to solve for: hard paste.
        out[top:bottom, left:right] = source[top:bottom, left:right]
        return out
    out[top:bottom, left:right] = _clone_box(query, source, (top, bottom, left, right), gain)
    return out


def _gain_matched(s: np.ndarray, q: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """``s`` scaled per channel so that its ring around ``box`` has ``q``'s mean colour.

    A seamless clone adds a smooth correction to the source: the difference of the two skins
    along the boundary. Between a dark and a light face that offset is large and turns a dark
    open mouth pale (the motion all but vanishes). Matching the skins by a gain first keeps
    the mouth's contrast to its skin, so the clone's remaining correction is small.
    """
    y0, y1, x0, x1 = box
    ring = np.zeros(s.shape[:2], bool)
    ring[max(y0 - 1, 0):y1 + 1, max(x0 - 1, 0):x1 + 1] = True
    ring[y0 + 1:y1 - 1, x0 + 1:x1 - 1] = False
    return gain_match(s, q, ring)


def gain_match(s: np.ndarray, q: np.ndarray, ring: np.ndarray) -> np.ndarray:
    """``s`` (``uint8 [H, W, 3]``) scaled per channel so that its pixels under the boolean
    ``ring [H, W]`` have ``q``'s mean colour there: the colour matching of the mouth blend and
    of the paste-back (:mod:`faces.paste`)."""
    sm = s[ring].astype(np.float64).mean(0) + 1.0
    qm = q[ring].astype(np.float64).mean(0) + 1.0
    return np.clip(s.astype(np.float64) * (qm / sm), 0, 255).round().astype(np.uint8)


def _clone_box(query: np.ndarray, source: np.ndarray,
               box: tuple[int, int, int, int], gain: bool = True) -> np.ndarray:
    """The blended box contents ``uint8 [bottom - top, right - left, 3]``."""
    top, bottom, left, right = box
    bh, bw = bottom - top, right - left
    m = _MARGIN
    # Patch = box + margin; reflect padding covers boxes that touch the image border.
    pad = dict(top=m, bottom=m, left=m, right=m, borderType=cv2.BORDER_REFLECT_101)
    q = cv2.copyMakeBorder(np.ascontiguousarray(query), **pad)[top:bottom + 2 * m,
                                                                 left:right + 2 * m]
    s = cv2.copyMakeBorder(np.ascontiguousarray(source), **pad)[top:bottom + 2 * m,
                                                                  left:right + 2 * m]
    f = max(1, math.ceil(_MIN_WORK_SIDE / min(bh, bw)))
    if f > 1:
        q = cv2.resize(q, None, fx=f, fy=f, interpolation=cv2.INTER_NEAREST)
        s = cv2.resize(s, None, fx=f, fy=f, interpolation=cv2.INTER_NEAREST)
    mask = np.zeros(q.shape[:2], np.uint8)
    y0, y1, x0, x1 = m * f, (m + bh) * f, m * f, (m + bw) * f
    mask[y0:y1, x0:x1] = 255
    if gain:
        s = _gain_matched(s, q, (y0, y1, x0, x1))
    # seamlessClone centres the mask's bounding box of the source on this point; with
    # end-exclusive bounds the integer midpoint puts it back where it came from.
    centre = ((x0 + x1) // 2, (y0 + y1) // 2)
    blended = cv2.seamlessClone(s, q, mask, centre, cv2.NORMAL_CLONE)
    if f > 1:
        blended = cv2.resize(blended, (bw + 2 * m, bh + 2 * m), interpolation=cv2.INTER_AREA)
    return blended[m:m + bh, m:m + bw]


def mouth_mix_many(query: np.ndarray, sources: Sequence[np.ndarray] | np.ndarray,
                   poisson: bool = True, box: Sequence[int] | None = None) -> np.ndarray:
    """``mouth_mix`` of one query with each source frame: ``uint8 [N, H, W, 3]``.

    ``sources``: a sequence of ``uint8 [H, W, 3]`` images or an array ``[N, H, W, 3]``.
    """
    query = np.asarray(query)
    results = thread_map(lambda src: mouth_mix(query, src, poisson=poisson, box=box), sources)
    if not results:
        return np.zeros((0, *query.shape), np.uint8)
    return np.stack(results)
