"""A batched piecewise-affine warp by landmark motion, in torch (the pose flow's reference path).

``piecewise_affine(images, src_lm, dst_lm)`` moves each image so its landmarks ``src_lm`` land
on ``dst_lm``: the 68 points plus eight fixed border points (corners and edge midpoints) are
triangulated (Delaunay, on the destination points, per image), every output pixel centre finds
its destination triangle, its barycentric coordinates map it into the source triangle, and the
image is sampled there bilinearly (edge pixels repeated outside). Coordinates are in units of
the image, pixel ``(i, j)`` centred at ``((j + 0.5) / S, (i + 0.5) / S)`` like the landmark maps
(:mod:`pose_flow.conditions`).

The evaluation's *warp source* baseline (scikit-image's ``PiecewiseAffineTransform``, the same
construction) takes ~150-200 ms per image; this takes about a millisecond per image at 64 px,
so it can run inside every training step. With ``src_lm == dst_lm`` it returns the image
unchanged (every pixel samples its own centre).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .conditions import pixel_centres

BORDER = np.array([[0, 0], [0.5, 0], [1, 0], [1, 0.5], [1, 1], [0.5, 1], [0, 1], [0, 0.5]],
                  np.float64)


def triangles(points: np.ndarray) -> np.ndarray:
    """Delaunay triangles ``[M, 3]`` (vertex indices) of ``points [K, 2]``; repeated points
    (a closed mouth's inner lips) are left out by the triangulation."""
    # deferred: scipy.spatial costs 0.6 s (python -X importtime), paid by every
    # train.py/test.py --model pose-flow (even --help) through the model
    from scipy.spatial import Delaunay

    return Delaunay(points).simplices.astype(np.int64)


def _source_coords(src: Tensor, dst: Tensor, tri: Tensor, size: int) -> Tensor:
    """For one image: ``src, dst [K, 2]``, ``tri [M, 3]`` -> source coordinates ``[S, S, 2]``
    of every output pixel centre (units of the image)."""
    g = pixel_centres(size, dst)  # [N, 2]
    a, b, c = dst[tri[:, 0]], dst[tri[:, 1]], dst[tri[:, 2]]  # [M, 2]
    v0, v1 = b - a, c - a
    det = v0[:, 0] * v1[:, 1] - v0[:, 1] * v1[:, 0]  # [M]
    ok = det.abs() > 1e-12
    inv_det = torch.where(ok, 1 / torch.where(ok, det, torch.ones_like(det)),
                          torch.zeros_like(det))
    dx = g[:, 0, None] - a[None, :, 0]  # [N, M]
    dy = g[:, 1, None] - a[None, :, 1]
    u = (dx * v1[:, 1] - dy * v1[:, 0]) * inv_det
    v = (v0[:, 0] * dy - v0[:, 1] * dx) * inv_det
    w0 = 1 - u - v  # the barycentric coordinates are (w0, u, v)
    # the containing triangle has all coordinates >= 0: pick the largest minimum (a point on
    # an edge or, by rounding, just outside every triangle still gets its nearest one)
    score = torch.where(ok, torch.minimum(torch.minimum(w0, u), v), float("-inf"))
    best = score.argmax(1)  # [N]
    n = torch.arange(g.shape[0], device=g.device)
    w = torch.stack([w0[n, best], u[n, best], v[n, best]], -1)  # [N, 3]
    corners = src[tri[best]]  # [N, 3, 2]
    return (w[..., None] * corners).sum(1).view(size, size, 2)


def piecewise_affine(images: Tensor, src_lm: Tensor, dst_lm: Tensor) -> Tensor:
    """Warp ``images [B, C, S, S]`` so landmarks ``src_lm [B, 68, 2]`` move to ``dst_lm``."""
    b, _, s, s2 = images.shape
    if s != s2:
        raise ValueError(f"piecewise_affine needs square images, got {s}x{s2}")
    border = torch.as_tensor(BORDER, dtype=images.dtype, device=images.device)
    grids = []
    for i in range(b):
        src = torch.cat([src_lm[i].to(images.dtype), border])
        dst = torch.cat([dst_lm[i].to(images.dtype), border])
        tri = torch.from_numpy(triangles(dst.detach().cpu().double().numpy())).to(images.device)
        grids.append(_source_coords(src, dst, tri, s))
    grid = torch.stack(grids) * 2 - 1  # grid_sample's [-1, 1], align_corners=False
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border",
                         align_corners=False)
