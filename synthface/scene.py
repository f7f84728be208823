"""Posed, lit faces cut to an aligned crop in one resampling, with exact ground truth.

The frontal face of :func:`synthface.face.render` is seen through three known maps:

1. the head pose of :mod:`synthface.pose` (yaw, roll, scale, translation), which places the face
   in a *photo* (coordinates ``(x, y)`` in units of the photo, 0..1);
2. the lighting (:class:`Lighting`) of that photo: a smooth brightness field times a colour
   tint, plus an offset, ``photo = clip(face * s(x, y) * tint + offset)`` with
   ``s = gain + gx (x - 0.5) + gy (y - 0.5)``;
3. the alignment crop: a ``[2, 3]`` matrix from photo pixels (``photo_size`` pixels, centres at
   integers as OpenCV counts them) to crop pixels. Callers compute it from the exact landmarks
   with the same alignment real faces get (``faces.align``); this module takes it as given.

The crop is sampled once, bilinearly, from the frontal face rendered at the crop's size
(:func:`render_shot`; the renderer anti-aliases its edges), so nothing is resampled twice. Every step is linear in the frontal
image's pixels but the final clip, which is why :func:`shot_maps` can push the mouth's colour
layers through the same maps and the mouth reader of ``evaluation.motion`` reads a posed, lit
mouth as exactly as a frontal one.

:func:`sample_hard_identity` draws identities whose lip width, thickness and colour differ
strongly between the query and source roles (the hard talking-face set of ``lrw.synthetic``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from functools import lru_cache

import cv2
import numpy as np

from .face import (
    Identity,
    MouthState,
    _rgb,
    mouth_box,
    mouth_layers,
    render,
    round4,
    sample_identity,
)
from .landmarks import face_landmarks
from .pose import HeadPose, pose_map, pose_unmap

__all__ = ["LIP_ROLES", "Lighting", "Shot", "landmarks_px", "render_shot",
           "sample_hard_identity", "sample_lighting", "shot_maps"]

@dataclass(frozen=True)
class Lighting:
    """Brightness field ``gain + gx (x - 0.5) + gy (y - 0.5)`` (photo units), colour ``tint``
    (RGB factors) and ``offset`` (0..1 units, added to every channel). The default changes
    nothing."""

    gain: float = 1.0
    gx: float = 0.0
    gy: float = 0.0
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)
    offset: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Lighting:
        return cls(float(d["gain"]), float(d["gx"]), float(d["gy"]),
                   tuple(float(v) for v in d["tint"]), float(d["offset"]))


def sample_lighting(rng: np.random.Generator, side: float = 0.0) -> Lighting:
    """A random lighting; ``side`` > 0 lights the photo's right, < 0 its left (``|gx|`` at
    least 0.25 then), 0 either. Values rounded to 4 decimals (manifests reproduce them)."""
    u = rng.uniform
    gx = u(0.25, 0.6) * np.sign(side) if side else u(-0.6, 0.6)
    return Lighting(gain=round(u(0.72, 1.0), 4), gx=round(float(gx), 4),
                    gy=round(u(-0.25, 0.25), 4),
                    tint=tuple(round(u(0.9, 1.1), 4) for _ in range(3)),
                    offset=round(u(-0.03, 0.03), 4))


@dataclass(frozen=True)
class Shot:
    """How one frame is seen: head ``pose``, ``light`` and the ``matrix`` ``((a, b, c), (d, e,
    f))`` from photo pixels (``photo_size`` of them) to crop pixels at 256 px. Hashable (the
    mouth reader caches per shot)."""

    pose: HeadPose
    light: Lighting
    matrix: tuple[tuple[float, float, float], tuple[float, float, float]]
    photo_size: int = 256

    def matrix_at(self, out_size: int) -> np.ndarray:
        """The photo-to-crop matrix for a crop of ``out_size`` pixels (the 256 px one scaled
        about the pixel grid, as ``faces.align.similarity_matrix`` scales its geometry)."""
        m = np.asarray(self.matrix, dtype=np.float64)
        return m * (out_size / 256.0)

    def to_dict(self) -> dict:
        return {"pose": self.pose.to_dict(), "light": self.light.to_dict(),
                "matrix": [list(r) for r in self.matrix], "photo_size": self.photo_size}

    @classmethod
    def from_dict(cls, d: dict) -> Shot:
        return cls(HeadPose.from_dict(d["pose"]), Lighting.from_dict(d["light"]),
                   tuple(tuple(float(v) for v in r) for r in d["matrix"]),
                   int(d.get("photo_size", 256)))


def landmarks_px(ident: Identity, mouth: MouthState | None, pose: HeadPose,
                 photo_size: int = 256) -> np.ndarray:
    """Exact 68 landmarks ``[68, 2]`` of ``ident`` at ``pose`` in photo pixels, centres at
    integers (OpenCV's convention, the one ``faces.align`` warps with)."""
    return pose_map(face_landmarks(ident, mouth), ident, pose) * photo_size - 0.5


@lru_cache(maxsize=32)
def _sampling(ident: Identity, shot: Shot, out_size: int, rows: tuple[int, int],
              cols: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For crop pixels ``rows x cols`` at ``out_size``: frontal pixel coordinates at
    ``out_size`` (``map_x``, ``map_y`` float32) and the brightness field ``s`` (float64)."""
    m = shot.matrix_at(out_size)
    inv = cv2.invertAffineTransform(m)
    cc, rr = np.meshgrid(np.arange(*cols, dtype=np.float64), np.arange(*rows, dtype=np.float64))
    px = inv[0, 0] * cc + inv[0, 1] * rr + inv[0, 2]
    py = inv[1, 0] * cc + inv[1, 1] * rr + inv[1, 2]
    photo = np.stack([(px + 0.5) / shot.photo_size, (py + 0.5) / shot.photo_size], -1)
    frontal = pose_unmap(photo, ident, shot.pose)
    map_x = (frontal[..., 0] * out_size - 0.5).astype(np.float32)
    map_y = (frontal[..., 1] * out_size - 0.5).astype(np.float32)
    li = shot.light
    s = li.gain + li.gx * (photo[..., 0] - 0.5) + li.gy * (photo[..., 1] - 0.5)
    for a in (map_x, map_y, s):
        a.setflags(write=False)
    return map_x, map_y, s


def _light(img: np.ndarray, s: np.ndarray, light: Lighting) -> np.ndarray:
    return img * s[..., None] * np.asarray(light.tint) + light.offset * 255.0


def render_shot(ident: Identity, mouth: MouthState | None, shot: Shot, out_size: int = 256
                ) -> np.ndarray:
    """The aligned crop ``uint8 [out_size, out_size, 3]`` of ``ident`` with ``mouth`` seen
    through ``shot`` (see the module docstring)."""
    big = render(ident, mouth, out_size)
    map_x, map_y, s = _sampling(ident, shot, out_size, (0, out_size), (0, out_size))
    crop = cv2.remap(big.astype(np.float32), map_x, map_y, cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE).astype(np.float64)
    return np.rint(np.clip(_light(crop, s, shot.light), 0.0, 255.0)).astype(np.uint8)


def shot_maps(ident: Identity, shot: Shot, out_size: int, rows: tuple[int, int],
              cols: tuple[int, int], states: list[MouthState]) -> list[np.ndarray]:
    """The mouth's compositing maps of :func:`render_shot`'s crop, linear in the colours.

    For each state: ``float64 [3 + 1 + K, h, w]`` over crop ``rows x cols`` at ``out_size``:
    channels 0-2 the lit crop without the mouth's colours (the skin weighted by the mouth's
    transparency), channel 3 that transparency (unlit), then the K colour layers' weights times
    the brightness field (:func:`synthface.face.mouth_layers`). ``render_shot``'s pixels are
    ``maps[:3] + sum_k maps[4 + k] * colour_k * tint`` (before rounding), up to the rounding of
    the frontal render.
    """
    map_x, map_y, s = _sampling(ident, shot, out_size, rows, cols)
    bare = render(ident, None, out_size).astype(np.float32)  # the identity without a mouth
    # only the frontal pixels the crop region samples (plus the filter's support) are needed
    y0 = max(int(np.floor(map_y.min())) - 2, 0)
    y1 = min(int(np.ceil(map_y.max())) + 3, out_size)
    x0 = max(int(np.floor(map_x.min())) - 2, 0)
    x1 = min(int(np.ceil(map_x.max())) + 3, out_size)
    sub = bare[y0:y1, x0:x1]
    sx, sy = map_x - x0, map_y - y0
    R0, R1, C0, C1 = mouth_box(out_size)
    bx, by = map_x - C0, map_y - R0  # coordinates inside the frontal mouth box
    # where the mouth box overlaps the sub-image, in both frames
    oy0, oy1, ox0, ox1 = max(R0, y0), min(R1, y1), max(C0, x0), min(C1, x1)
    tint = np.asarray(shot.light.tint)

    def warp(a: np.ndarray, x: np.ndarray, y: np.ndarray, border: float) -> np.ndarray:
        return cv2.remap(np.ascontiguousarray(a, dtype=np.float32), x, y, cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=border).astype(np.float64)

    out = []
    for st in states:
        lay = mouth_layers(st, out_size, R0, R1, C0, C1, ident.lips)  # [1 + K, hb, wb]
        skin = sub.copy()
        if oy1 > oy0 and ox1 > ox0:
            skin[oy0 - y0:oy1 - y0, ox0 - x0:ox1 - x0] *= \
                lay[0][oy0 - R0:oy1 - R0, ox0 - C0:ox1 - C0, None]
        base = cv2.remap(skin, sx, sy, cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REPLICATE).astype(np.float64)
        base = base * s[..., None] * tint + shot.light.offset * 255.0
        w0 = warp(lay[0], bx, by, 1.0)
        layers = [warp(w, bx, by, 0.0) * s for w in lay[1:]]
        out.append(np.concatenate([base.transpose(2, 0, 1), w0[None], np.stack(layers)]))
    return out


# --------------------------------------------------------------------------------------------
# Identities whose lips differ strongly between the query and source roles
# --------------------------------------------------------------------------------------------

LIP_ROLES = {
    # lip_w, lip_upper, lip_lower ranges and a lip-colour palette (RGB 0..1) per role
    "query": {"lip_w": (1.1, 1.22), "lip_upper": (0.011, 0.014), "lip_lower": (0.013, 0.016),
              "palette": ((0.86, 0.56, 0.56), (0.82, 0.52, 0.60), (0.92, 0.64, 0.58))},
    "source": {"lip_w": (0.78, 0.9), "lip_upper": (0.021, 0.025), "lip_lower": (0.025, 0.029),
               "palette": ((0.55, 0.08, 0.15), (0.45, 0.10, 0.30), (0.62, 0.14, 0.10))},
}
"""Lip geometry and colour of the hard set's held-out roles: queries have wide, thin, pale lips,
sources narrow, thick, dark ones (training identities draw from both)."""


def sample_hard_identity(rng: np.random.Generator, role: str) -> Identity:
    """An identity of :func:`synthface.face.sample_identity` with the lips of ``role``
    (``"query"``, ``"source"``, or ``"train"``: either role's ranges and palette, or between)."""
    base = sample_identity(rng)
    if role == "train":
        spec = {k: (min(LIP_ROLES["query"][k][0], LIP_ROLES["source"][k][0]),
                    max(LIP_ROLES["query"][k][1], LIP_ROLES["source"][k][1]))
                for k in ("lip_w", "lip_upper", "lip_lower")}
        palette = LIP_ROLES["query"]["palette"] + LIP_ROLES["source"]["palette"]
    elif role in LIP_ROLES:
        spec, palette = LIP_ROLES[role], LIP_ROLES[role]["palette"]
    else:
        raise ValueError(f"unknown role {role!r} (query, source or train)")
    lip = np.asarray(palette[int(rng.integers(len(palette)))]) + rng.normal(0, 0.02, 3)
    return dataclasses.replace(
        base, lip=_rgb(lip), **{k: round4(rng.uniform(*spec[k]))
                                for k in ("lip_w", "lip_upper", "lip_lower")})
