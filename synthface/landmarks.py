"""Exact 68-point landmarks of the faces :func:`synthface.face.render` draws.

The points are computed from the same geometry the renderer draws (an :class:`Identity` and a
:class:`MouthState`), in the iBUG 300-W order dlib uses: jaw 0-16, brows 17-21 / 22-26, nose
bridge 27-30, nose base 31-35, eyes 36-41 / 42-47, outer lips 48-59, inner lips 60-67. Image
left comes first (dlib's point 0 is on the image's left). Coordinates are ``(x, y)`` in units of
the image size (0..1), so ``points * size`` are pixel coordinates at any resolution (pixel
``(i, j)`` covers ``[j, j+1) x [i, i+1)``).

Exactness: the jaw, eye and lip points lie on the zero level set of the signed distances the
renderer draws (``face._ellipse``), the brow points on the brows' major axes, the nose points on
the drawn ridge, tip and nostrils. They follow the mouth exactly: ``mouth_landmarks`` uses the
half width, opening and lip thicknesses of ``face.mouth_layers`` (the identity's lip geometry).
"""

from __future__ import annotations

import math

import numpy as np

from .face import CLOSED_MOUTH_WIDTH_256, DEFAULT_LIPS, MOUTH_CENTER_256, Identity, MouthState

__all__ = ["JAW", "LEFT_EYE", "MOUTH_INNER", "MOUTH_OUTER", "N_LANDMARKS", "RIGHT_EYE",
           "face_landmarks", "mouth_geometry", "mouth_landmarks"]

N_LANDMARKS = 68
JAW = range(0, 17)
LEFT_EYE = range(36, 42)   # image left
RIGHT_EYE = range(42, 48)
MOUTH_OUTER = range(48, 60)
MOUTH_INNER = range(60, 68)


def mouth_geometry(mouth: MouthState, lips: tuple[float, float, float] = DEFAULT_LIPS
                   ) -> dict[str, float]:
    """The mouth's drawn geometry (units of the image size), as ``face.mouth_layers`` uses it
    with the identity's ``lips`` (``Identity.lips``): centre ``cx, cy``, half width ``hw``, half
    opening ``a``, lip thicknesses ``upper, lower``, inner half height ``b_inner`` and inner half
    width ``hw_inner``."""
    op = float(np.clip(mouth.open, 0.0, 1.0))
    wd = float(np.clip(mouth.width, -1.0, 1.0))
    lip_w, upper, lower = lips
    hw = CLOSED_MOUTH_WIDTH_256 / 512 * lip_w * (1.0 + 0.3 * wd) * (1.0 - 0.08 * op)
    a = 0.042 * op
    return {"cx": MOUTH_CENTER_256[0] / 256, "cy": MOUTH_CENTER_256[1] / 256, "hw": hw, "a": a,
            "upper": upper, "lower": lower, "b_inner": max(a, 0.0035), "hw_inner": 0.86 * hw}


def mouth_landmarks(mouth: MouthState, lips: tuple[float, float, float] = DEFAULT_LIPS
                    ) -> np.ndarray:
    """Points 48-67 ``[20, 2]`` for a mouth state and lip geometry (like the drawing).

    Outer lips: 12 points at 30-degree steps on the lip ellipse (upper half ``a + upper``, lower
    half ``a + lower`` tall), from the left corner clockwise in the image. Inner lips: 8 points at
    45-degree steps on the inner ellipse, from its left corner.
    """
    g = mouth_geometry(mouth, lips)
    pts = []
    for k in range(12):
        t = math.radians(180 - 30 * k)
        s = math.sin(t)
        b = g["a"] + (g["upper"] if s > 0 else g["lower"])
        pts.append((g["cx"] + g["hw"] * math.cos(t), g["cy"] - b * s))
    for k in range(8):
        t = math.radians(180 - 45 * k)
        pts.append((g["cx"] + g["hw_inner"] * math.cos(t),
                    g["cy"] - g["b_inner"] * math.sin(t)))
    return np.asarray(pts, dtype=np.float64)


def _jaw(ident: Identity) -> np.ndarray:
    """17 points on the face outline from eye level (image left) round the chin to image right.

    The outline is the zero set of ``((x-0.5)/ax_eff(y))^2 + ((y-cy)/ay)^2 = 1`` with the chin
    taper ``ax_eff(y) = ax (1 - chin t^2)``, ``t = clip((y - cy) / ay, 0, 1)``: a point is placed
    at height ``y`` and then at the exact half width of the drawn outline there.
    """
    cy, ax, ay = ident.face_cy, ident.face_ax, ident.face_ay
    start = math.asin(np.clip((ident.eye_y + 0.01 - cy) / ay, -0.99, 0.99))
    pts = []
    for k in range(17):
        # angle from the left side (start) down to the chin (pi/2) and up again
        phi = start + (math.pi - 2 * start) * k / 16
        y = cy + ay * math.sin(phi)
        t = min(max((y - cy) / ay, 0.0), 1.0)
        half = ax * (1.0 - ident.chin * t * t) * math.sqrt(max(0.0, 1 - ((y - cy) / ay) ** 2))
        pts.append((0.5 - half if k < 8 else (0.5 if k == 8 else 0.5 + half), y))
    return np.asarray(pts)


def _brow(ident: Identity, side: float) -> np.ndarray:
    """5 points along one brow's major axis, outer to inner end for the left brow (image left
    to right for both, as dlib orders them)."""
    ex = 0.5 + side * ident.eye_dx + side * 0.006
    ey = ident.eye_y - ident.brow_gap
    angle = -side * ident.brow_tilt
    c, s = math.cos(angle), math.sin(angle)
    a = ident.eye_w * 1.2
    return np.asarray([(ex + c * u * a, ey + s * u * a) for u in np.linspace(-0.85, 0.85, 5)])


def _eye(ident: Identity, side: float) -> np.ndarray:
    """6 points on the eye ellipse: left corner, two upper, right corner, two lower."""
    ex = 0.5 + side * ident.eye_dx
    return np.asarray([(ex + ident.eye_w * math.cos(math.radians(t)),
                        ident.eye_y - ident.eye_h * math.sin(math.radians(t)))
                       for t in (180, 120, 60, 0, -60, -120)])


def _nose(ident: Identity) -> np.ndarray:
    """Bridge 27-30 down the ridge to the tip; base 31-35 through the nostrils and the tip's
    lower edge."""
    top, tip = ident.eye_y, ident.nose_y - 0.012
    bridge = [(0.5, top + (tip - top) * k / 3) for k in range(4)]
    w, ny = ident.nose_w, ident.nose_y
    bottom = ny - 0.012 + 0.02  # lower edge of the tip ellipse
    base = [(0.5 - w, ny), (0.5 - w / 2, (ny + bottom) / 2), (0.5, bottom),
            (0.5 + w / 2, (ny + bottom) / 2), (0.5 + w, ny)]
    return np.asarray(bridge + base)


def face_landmarks(ident: Identity, mouth: MouthState | None = None) -> np.ndarray:
    """The 68 landmarks ``float64 [68, 2]`` (x, y in 0..1) of ``render(ident, mouth, size)``.

    ``mouth=None`` (the renderer draws no lips) places the mouth points at the neutral state.
    """
    mouth = mouth if mouth is not None else MouthState()
    return np.concatenate([
        _jaw(ident), _brow(ident, -1.0), _brow(ident, 1.0), _nose(ident),
        _eye(ident, -1.0), _eye(ident, 1.0), mouth_landmarks(mouth, ident.lips)])
