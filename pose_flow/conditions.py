"""The pose condition of every level: Gaussian landmark heatmaps and an edge map, computed from
the landmarks at that level's own resolution (plus the landmark coordinates where maps are too
coarse to locate anything).

Landmarks are ``[B, 68, 2]`` ``(x, y)`` in units of the image size (0..1). At resolution ``r``
pixel ``(i, j)`` has its centre at ``((j + 0.5) / r, (i + 0.5) / r)``:

* heatmap ``k``: ``exp(-|centre - l_k|^2 / (2 sigma^2))`` with ``sigma`` a fraction of the image
  (default 0.1), the same blob at every resolution, evaluated at pixel centres. The anchor
  evaluates it on ``linspace(0, 1, r)``, which at ``r = 1`` is the corner ``(0, 0)``: its 2x2 and
  1x1 maps are ~1e-11 and the blocks that make ``w`` see no pose.
* edge map: ``clip(1 - d * r, 0, 1)`` with ``d`` the distance from the pixel centre to the
  nearest landmark polyline (jaw, brows, nose bridge and base, eyes and lips, the eye and lip
  loops closed): a one-pixel line at every resolution, so below 64 px it is neither clipped nor
  empty (the anchor always draws at 64 px scale).
* coordinates: at levels below ``coord_below`` px, the 136 numbers ``2 l - 1`` as constant
  channels, because a 1x1 or 2x2 map cannot say where a point is.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

# (first, last, closed) of each polyline, dlib's 68-point order.
POLYLINES: tuple[tuple[int, int, bool], ...] = (
    (0, 16, False),   # jaw
    (17, 21, False),  # brow (image left)
    (22, 26, False),  # brow (image right)
    (27, 30, False),  # nose bridge
    (31, 35, False),  # nose base
    (36, 41, True),   # eye (image left)
    (42, 47, True),   # eye (image right)
    (48, 59, True),   # outer lips
    (60, 67, True),   # inner lips
)
N_LANDMARKS = 68


def segments() -> tuple[list[int], list[int]]:
    """Start and end landmark indices of every polyline segment (63 segments)."""
    start, end = [], []
    for a, b, closed in POLYLINES:
        idx = list(range(a, b + 1))
        pairs = list(zip(idx[:-1], idx[1:], strict=True))
        if closed:
            pairs.append((b, a))
        for s, e in pairs:
            start.append(s)
            end.append(e)
    return start, end


_START, _END = segments()


def pixel_centres(size: int, like: Tensor) -> Tensor:
    """``[size * size, 2]`` (x, y) pixel centres in units of the image, row-major."""
    c = (torch.arange(size, dtype=like.dtype, device=like.device) + 0.5) / size
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)


def heatmaps(landmarks: Tensor, size: int, sigma: float = 0.1) -> Tensor:
    """Gaussian heatmaps ``[B, 68, size, size]`` of landmarks ``[B, 68, 2]``."""
    g = pixel_centres(size, landmarks)  # [N, 2]
    d2 = ((landmarks[:, :, None, :] - g[None, None]) ** 2).sum(-1)  # [B, 68, N]
    return torch.exp(-d2 / (2 * sigma**2)).view(landmarks.shape[0], -1, size, size)


def edge_map(landmarks: Tensor, size: int) -> Tensor:
    """One-pixel polyline map ``[B, 1, size, size]`` in [0, 1] (1 on a line)."""
    a = landmarks[:, _START]  # [B, K, 2]
    b = landmarks[:, _END]
    g = pixel_centres(size, landmarks)[None, None]  # [1, 1, N, 2]
    ab = (b - a)[:, :, None]  # [B, K, 1, 2]
    ag = g - a[:, :, None]  # [B, K, N, 2]
    den = (ab**2).sum(-1).clamp_min(1e-12)
    t = ((ag * ab).sum(-1) / den).clamp(0, 1)
    d = torch.linalg.vector_norm(ag - t[..., None] * ab, dim=-1)  # [B, K, N]
    value = (1 - d.min(1).values * size).clamp(0, 1)
    return value.view(landmarks.shape[0], 1, size, size)


def coordinate_maps(landmarks: Tensor, size: int) -> Tensor:
    """The landmark coordinates as constant channels ``[B, 136, size, size]`` in [-1, 1]."""
    flat = landmarks.reshape(landmarks.shape[0], -1) * 2 - 1
    return flat[:, :, None, None].expand(-1, -1, size, size)


def cond_channels(size: int, coord_below: int) -> int:
    """Channels of the condition at ``size`` px."""
    return N_LANDMARKS + 1 + (2 * N_LANDMARKS if size < coord_below else 0)


def condition(landmarks: Tensor, size: int, sigma: float = 0.1, coord_below: int = 8) -> Tensor:
    """The condition of a level at ``size`` px: ``[B, cond_channels(size), size, size]``."""
    parts = [heatmaps(landmarks, size, sigma), edge_map(landmarks, size)]
    if size < coord_below:
        parts.append(coordinate_maps(landmarks, size))
    return torch.cat(parts, 1)


# Where each of dlib's 68 points goes when the face is mirrored left-right (iBUG 300-W order:
# jaw 0-16, brows 17-21 / 22-26, nose bridge 27-30, nose base 31-35, eyes 36-41 / 42-47, outer
# lips 48-59, inner lips 60-67): MIRROR[i] is the index of the point that lands on point i.
MIRROR = np.array([*range(16, -1, -1),                       # jaw
                   *range(26, 21, -1), *range(21, 16, -1),   # brows
                   27, 28, 29, 30,                           # nose bridge
                   35, 34, 33, 32, 31,                       # nose base
                   45, 44, 43, 42, 47, 46,                   # one eye ...
                   39, 38, 37, 36, 41, 40,                   # ... and the other
                   54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55,  # outer lips
                   64, 63, 62, 61, 60, 67, 66, 65])          # inner lips


def mirror_landmarks(landmarks: Tensor) -> Tensor:
    """Landmarks ``[..., 68, 2]`` (x in 0..1) of the face mirrored left-right: at ``1 - x`` and
    renumbered so each point keeps its meaning (the mirrored face's left eye is its left eye
    again)."""
    lm = landmarks[..., torch.from_numpy(MIRROR).to(landmarks.device), :].clone()
    lm[..., 0] = 1 - lm[..., 0]
    return lm


def mirror(images: Tensor, landmarks: Tensor) -> tuple[Tensor, Tensor]:
    """Faces mirrored left-right: images ``[..., 3, S, S]`` flipped along the width, landmarks
    by :func:`mirror_landmarks`."""
    return images.flip(-1), mirror_landmarks(landmarks)
