"""Head pose and expression for the shared renderer, with exact landmarks.

A posed face is the frontal face of :func:`synthface.face.render` pushed through one known,
invertible map of the plane, so its landmarks are exactly the frontal landmarks
(:mod:`synthface.landmarks`) pushed through the same map:

1. **yaw**: a horizontal warp that turns the head about a vertical axis. A column at offset
   ``u = x - 0.5`` inside the head (``|u| < A``, ``A`` = face half width plus the ears) sits at
   angle ``theta = asin(u / A)`` on a cylinder; it moves to ``0.5 + A sin(theta + yaw cos theta)``.
   The head's outline stays put and its inside slides towards one side (nose and mouth move
   most), monotone for ``|yaw| < 1``; columns outside the head do not move. The background
   depends on ``y`` only, so the warp leaves it unchanged.
2. **roll, scale, translation**: a similarity about the image centre,
   ``p -> R(roll) * scale * (p - c) + c + (tx, ty)``.

Expression is the :class:`~synthface.face.MouthState` (opening and width), drawn by ``render``.
Coordinates are in units of the image size, ``(x, y)``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from .face import Identity, MouthState, render
from .landmarks import face_landmarks

__all__ = ["FRONTAL", "HeadPose", "pose_map", "pose_unmap", "render_posed", "sample_pose"]

_CENTER = 0.5
_LUT = 2049  # samples of the yaw map used to invert it (monotone, so np.interp inverts it)


@dataclass(frozen=True)
class HeadPose:
    """``yaw`` and ``roll`` in radians (|yaw| < 1), ``scale`` (1 = the aligned crop),
    ``tx``/``ty`` in units of the image size."""

    yaw: float = 0.0
    roll: float = 0.0
    scale: float = 1.0
    tx: float = 0.0
    ty: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> HeadPose:
        return cls(**{k: float(d[k]) for k in ("yaw", "roll", "scale", "tx", "ty")})


FRONTAL = HeadPose()


def sample_pose(rng: np.random.Generator, strength: float = 1.0) -> HeadPose:
    """A random pose (rounded to 4 decimals so a manifest reproduces it exactly)."""
    u = rng.uniform
    return HeadPose(yaw=round(u(-0.55, 0.55) * strength, 4), roll=round(u(-0.2, 0.2) * strength, 4),
                    scale=round(1.0 + u(-0.1, 0.08) * strength, 4),
                    tx=round(u(-0.05, 0.05) * strength, 4), ty=round(u(-0.04, 0.04) * strength, 4))


def _head_half_width(ident: Identity) -> float:
    return ident.face_ax + 0.025  # the ears reach face_ax + 0.022


def _yaw_forward(x: np.ndarray, half: float, yaw: float) -> np.ndarray:
    u = np.asarray(x, dtype=np.float64) - _CENTER
    inside = np.abs(u) < half
    theta = np.arcsin(np.clip(u / half, -1.0, 1.0))
    moved = _CENTER + half * np.sin(theta + yaw * np.cos(theta))
    return np.where(inside, moved, x)


def _similarity(pose: HeadPose) -> np.ndarray:
    """2x3 matrix of the roll/scale/translation step (normalised coordinates)."""
    c, s = math.cos(pose.roll) * pose.scale, math.sin(pose.roll) * pose.scale
    m = np.array([[c, -s, 0.0], [s, c, 0.0]])
    m[:, 2] = np.array([_CENTER, _CENTER]) - m[:, :2] @ np.array([_CENTER, _CENTER]) \
        + np.array([pose.tx, pose.ty])
    return m


def pose_map(points: np.ndarray, ident: Identity, pose: HeadPose) -> np.ndarray:
    """Frontal points ``[N, 2]`` (x, y in 0..1) -> where they are in the posed image."""
    p = np.asarray(points, dtype=np.float64).copy()
    p[:, 0] = _yaw_forward(p[:, 0], _head_half_width(ident), pose.yaw)
    m = _similarity(pose)
    return p @ m[:, :2].T + m[:, 2]


def pose_unmap(points: np.ndarray, ident: Identity, pose: HeadPose) -> np.ndarray:
    """Inverse of :func:`pose_map`: posed points ``[..., 2]`` -> frontal points."""
    q = np.asarray(points, dtype=np.float64)
    m = _similarity(pose)
    d = (q - m[:, 2]) @ np.linalg.inv(m[:, :2]).T
    half = _head_half_width(ident)
    grid = np.linspace(_CENTER - half, _CENTER + half, _LUT)
    fwd = _yaw_forward(grid, half, pose.yaw)
    x = d[..., 0]
    d[..., 0] = np.where(np.abs(x - _CENTER) < half, np.interp(x, fwd, grid), x)
    return d


def _inverse_grid(ident: Identity, pose: HeadPose, size: int) -> tuple[np.ndarray, np.ndarray]:
    """For every output pixel centre, the frontal pixel coordinates (centres at integers)."""
    centres = (np.arange(size) + 0.5) / size
    qx, qy = np.meshgrid(centres, centres)
    src = pose_unmap(np.stack([qx, qy], -1), ident, pose)
    return (src[..., 0] * size - 0.5).astype(np.float32), \
        (src[..., 1] * size - 0.5).astype(np.float32)


def render_posed(ident: Identity, mouth: MouthState | None, pose: HeadPose,
                 size: int) -> tuple[np.ndarray, np.ndarray]:
    """(image uint8 ``[size, size, 3]``, landmarks ``float64 [68, 2]`` in 0..1) of ``ident``
    with ``mouth`` at ``pose``. The frontal pose returns ``render``'s pixels unchanged."""
    frontal = render(ident, mouth, size)
    points = pose_map(face_landmarks(ident, mouth), ident, pose)
    if pose == FRONTAL:
        return frontal, points
    # Render at twice the size and sample that, so the bilinear resampling blurs less.
    big = render(ident, mouth, 2 * size)
    map_x, map_y = _inverse_grid(ident, pose, size)
    out = cv2.remap(big, (map_x + 0.5) * 2 - 0.5, (map_y + 0.5) * 2 - 0.5, cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_REPLICATE)
    return out, points
