"""The procedural face renderer shared by every system's synthetic set (exact ground truth).

Faces are drawn analytically (signed distances with one-pixel soft edges, vectorised numpy), so
rendering is deterministic and needs no supersampling. The geometry matches the thesis's aligned
crops: at image size S the mouth centre is at ``(x, y) = (S*128/256, S*160/256)``, the closed
mouth is ``S*43/256`` wide, and the mouth at any state stays inside the mouth box (rows
``S*140/256 : S*188/256``, cols ``S*90/256 : S*166/256``). Everything outside that box depends on
the identity only, so "identity A with mouth state m" is well defined: :func:`render` draws the
identity layer and then changes only the box.

Identities: face shape (ellipse axes, centre, chin taper), skin tone, eye height/spacing/size,
iris colour, brows, nose, lip colour and (optionally) lip geometry (mouth width, lip
thicknesses; the defaults are the same for everyone), hair colour and style (short, long,
fringe, bald), neck, shirt and background colour. A :class:`MouthState` is ``(open, width)``.

Users: ``lrw.synthetic`` (talking faces); the attribute and pose sets build on the same layers.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from functools import lru_cache

import numpy as np

__all__ = [
    "CLOSED_MOUTH_WIDTH_256",
    "DEFAULT_LIPS",
    "MOUTH_BOX_256",
    "MOUTH_CENTER_256",
    "MOUTH_LAYERS",
    "NEUTRAL",
    "Identity",
    "MouthState",
    "mouth_box",
    "mouth_colours",
    "mouth_layers",
    "render",
    "sample_identity",
]

MOUTH_CENTER_256 = (128, 160)  # (x, y) at 256 px
MOUTH_BOX_256 = (140, 188, 90, 166)  # rows r0:r1, cols c0:c1 at 256 px
CLOSED_MOUTH_WIDTH_256 = 43

# --------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MouthState:
    """``open`` in [0, 1] (0 = closed lips); ``width`` in [-1, 1] (-1 rounded, 0 neutral, 1 spread)."""

    open: float = 0.0
    width: float = 0.0


NEUTRAL = MouthState(0.0, 0.0)

RGB = tuple[float, float, float]


@dataclass(frozen=True)
class Identity:
    """Every appearance factor of one speaker, in units of the image size (0..1), colours RGB 0..1."""

    face_cy: float
    face_ax: float
    face_ay: float
    chin: float
    skin: RGB
    eye_y: float
    eye_dx: float
    eye_w: float
    eye_h: float
    iris: RGB
    brow_gap: float
    brow_th: float
    brow_tilt: float
    nose_y: float
    nose_w: float
    lip: RGB
    hair: RGB
    hair_style: str
    hairline: float
    neck_w: float
    shirt: RGB
    background: RGB
    # lip geometry: closed-mouth width factor and lip thicknesses (units of the image size); the
    # defaults are every frontal set's mouth, the hard set draws them per identity
    lip_w: float = 1.0
    lip_upper: float = 0.017
    lip_lower: float = 0.021

    def to_dict(self) -> dict:
        """Plain values; the lip geometry only where it differs from the default (so sets
        written before it existed keep their manifests)."""
        d = asdict(self)
        for f in fields(self):
            if f.name in _LIP_FIELDS and d[f.name] == f.default:
                del d[f.name]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Identity:
        values = {}
        for f in fields(cls):
            if f.name not in d and f.name in _LIP_FIELDS:
                continue  # the default
            v = d[f.name]
            values[f.name] = tuple(float(x) for x in v) if isinstance(v, list) else v
        return cls(**values)

    @property
    def lips(self) -> tuple[float, float, float]:
        """``(lip_w, lip_upper, lip_lower)``, as :func:`mouth_layers` takes them."""
        return (self.lip_w, self.lip_upper, self.lip_lower)


_LIP_FIELDS = ("lip_w", "lip_upper", "lip_lower")
DEFAULT_LIPS = (1.0, 0.017, 0.021)
"""``(lip_w, lip_upper, lip_lower)`` of every identity that does not set its own."""


_SKIN = np.array([(0.98, 0.86, 0.76), (0.94, 0.76, 0.63), (0.82, 0.61, 0.46),
                  (0.62, 0.43, 0.31), (0.42, 0.28, 0.20)])
_IRIS = np.array([(0.35, 0.22, 0.12), (0.25, 0.45, 0.70), (0.30, 0.50, 0.30),
                  (0.45, 0.48, 0.50), (0.15, 0.10, 0.08)])
_HAIR = np.array([(0.08, 0.07, 0.07), (0.25, 0.16, 0.10), (0.45, 0.30, 0.18),
                  (0.85, 0.72, 0.45), (0.62, 0.28, 0.12), (0.65, 0.65, 0.65)])
_STYLES = ("short", "long", "fringe", "bald")


def round4(x) -> float:
    """``x`` as a float rounded to 4 decimals: what the sets record (short, exact manifests)."""
    return round(float(x), 4)


def _rgb(c) -> RGB:
    c = np.clip(np.asarray(c, dtype=float), 0.0, 1.0)
    return (round4(c[0]), round4(c[1]), round4(c[2]))


def sample_identity(rng: np.random.Generator) -> Identity:
    """Draw one identity (values rounded to 4 decimals, so a manifest reproduces them exactly)."""
    u = rng.uniform
    t = u(0, len(_SKIN) - 1)
    k = min(int(t), len(_SKIN) - 2)
    skin = _SKIN[k] * (1 - (t - k)) + _SKIN[k + 1] * (t - k) + rng.normal(0, 0.015, 3)
    lip = np.asarray(skin) * np.array([0.86, 0.55, 0.56]) + np.array([0.10, 0.02, 0.04])
    lip = lip + rng.normal(0, 0.02, 3)
    style = _STYLES[int(rng.integers(len(_STYLES)))]
    hairline = u(0.26, 0.29) if style == "fringe" else u(0.17, 0.24)
    return Identity(
        face_cy=round4(u(0.47, 0.49)), face_ax=round4(u(0.29, 0.34)), face_ay=round4(u(0.40, 0.435)),
        chin=round4(u(0.15, 0.45)), skin=_rgb(skin),
        eye_y=round4(u(0.385, 0.41)), eye_dx=round4(u(0.115, 0.14)), eye_w=round4(u(0.040, 0.052)),
        eye_h=round4(u(0.018, 0.025)),
        iris=_rgb(_IRIS[int(rng.integers(len(_IRIS)))] + rng.normal(0, 0.03, 3)),
        brow_gap=round4(u(0.055, 0.07)), brow_th=round4(u(0.008, 0.013)),
        brow_tilt=round4(u(-0.12, 0.2)), nose_y=round4(u(0.515, 0.53)), nose_w=round4(u(0.018, 0.026)),
        lip=_rgb(lip),
        hair=_rgb(_HAIR[int(rng.integers(len(_HAIR)))] + rng.normal(0, 0.03, 3)),
        hair_style=style, hairline=round4(hairline), neck_w=round4(u(0.10, 0.13)),
        shirt=_rgb(rng.uniform(0.1, 0.9, 3)), background=_rgb(rng.uniform(0.25, 0.95, 3)),
    )


# --------------------------------------------------------------------------------------------
# Drawing primitives: approximate signed distances (normalised units, < 0 inside)
# --------------------------------------------------------------------------------------------

def _grid(size: int, r0: int = 0, r1: int | None = None, c0: int = 0, c1: int | None = None):
    """Pixel-centre coordinates ``Y [h, 1]``, ``X [1, w]`` in units of the image size."""
    r1 = size if r1 is None else r1
    c1 = size if c1 is None else c1
    y = ((np.arange(r0, r1) + 0.5) / size)[:, None]
    x = ((np.arange(c0, c1) + 0.5) / size)[None, :]
    return y, x


def _ellipse(y, x, cy, cx, a, b, angle: float = 0.0) -> np.ndarray:
    """Signed distance (first-order) to the ellipse with semi-axes ``a`` (x) and ``b`` (y)."""
    dx, dy = x - cx, y - cy
    if angle:
        c, s = math.cos(angle), math.sin(angle)
        dx, dy = c * dx + s * dy, -s * dx + c * dy
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    r = np.sqrt((dx / a) ** 2 + (dy / b) ** 2)
    g = np.sqrt((dx / a**2) ** 2 + (dy / b**2) ** 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        d = (r - 1.0) * r / g
    d = np.where(g > 0, d, -np.minimum(a, b))  # at the centre the limit is -min semi-axis
    # The first-order estimate is poor far along the major axis of thin ellipses; the distance to
    # the bounding box is a bound on both sides of the edge, so it only improves the estimate.
    return np.maximum(d, np.maximum(np.abs(dx) - a, np.abs(dy) - b))


def _cover(d: np.ndarray, size: int) -> np.ndarray:
    """Pixel coverage of ``d < 0`` with a one-pixel linear ramp (anti-aliasing)."""
    return np.clip(0.5 - d * size, 0.0, 1.0)


def _over(img: np.ndarray, colour, alpha: np.ndarray) -> None:
    """Composite ``colour`` ([3] or [h, w, 3]) over ``img`` [h, w, 3] in place."""
    a = alpha[..., None]
    img *= 1.0 - a
    img += a * np.asarray(colour, dtype=float)


def _smooth(d: np.ndarray, width: float) -> np.ndarray:
    return np.clip(0.5 - d / width, 0.0, 1.0)


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------

def mouth_box(size: int) -> tuple[int, int, int, int]:
    """Pixel rows/cols ``(r0, r1, c0, c1)`` of the mouth box at ``size`` (exact at 256)."""
    r0, r1, c0, c1 = MOUTH_BOX_256
    return (math.floor(size * r0 / 256), math.ceil(size * r1 / 256),
            math.floor(size * c0 / 256), math.ceil(size * c1 / 256))


@lru_cache(maxsize=64)
def _identity_layer(ident: Identity, size: int) -> np.ndarray:
    """Float image [S, S, 3] of everything but the mouth (read-only, cached)."""
    S = size
    y, x = _grid(S)
    img = np.empty((S, S, 3))
    bg = np.asarray(ident.background)
    img[:] = bg * (1.06 - 0.12 * y)[..., None]
    skin = np.asarray(ident.skin)
    hair = np.asarray(ident.hair)
    cy, ax, ay = ident.face_cy, ident.face_ax, ident.face_ay
    hair_tex = hair * (0.94 + 0.06 * np.sin(x * 70.0 + 2.5 * np.sin(y * 25.0)))[..., None]

    # hair behind the head
    if ident.hair_style == "long":
        d = np.maximum(_ellipse(y, x, cy - 0.02, 0.5, ax + 0.07, ay + 0.03), y - 0.80)
        _over(img, hair_tex * 0.85, _cover(d, S))
    # neck and shirt
    d = np.maximum(np.abs(x - 0.5) - ident.neck_w, 0.62 - y)
    _over(img, skin * 0.82, _cover(d, S))
    _over(img, np.asarray(ident.shirt), _cover(_ellipse(y, x, 1.13, 0.5, 0.46, 0.24), S))
    # ears
    for side in (-1.0, 1.0):
        d = _ellipse(y, x, ident.eye_y + 0.035, 0.5 + side * (ax - 0.012), 0.034, 0.066)
        _over(img, skin * 0.9, _cover(d, S))
    # face: an ellipse whose lower half tapers towards the chin
    t = np.clip((y - cy) / ay, 0.0, 1.0)
    ax_eff = ax * (1.0 - ident.chin * t**2)
    d_face = _ellipse(y, x, cy, 0.5, ax_eff, ay)
    rr = np.sqrt(((x - 0.5) / ax) ** 2 + ((y - cy) / ay) ** 2)
    shade = (1.02 - 0.14 * np.clip(rr, 0, 1.2) ** 3)[..., None]
    blush = sum(np.exp(-(((x - 0.5 - s * 0.17) / 0.045) ** 2 + ((y - 0.56) / 0.035) ** 2))
                for s in (-1.0, 1.0))[..., None]
    face_col = skin * shade * (1 - 0.06 * blush) + np.array([0.9, 0.35, 0.35]) * 0.06 * blush
    _over(img, face_col, _cover(d_face, S))
    # nose: a soft ridge shadow, a lighter tip, two nostrils
    ridge = np.exp(-(((x - 0.5 - 0.022) / 0.008) ** 2)) * _smooth(
        np.maximum(0.43 - y, y - ident.nose_y + 0.02), 0.03)
    _over(img, skin * 0.78, 0.35 * ridge)
    _over(img, np.minimum(skin * 1.06, 1.0),
          0.6 * _cover(_ellipse(y, x, ident.nose_y - 0.012, 0.5, ident.nose_w + 0.012, 0.02), S))
    for side in (-1.0, 1.0):
        d = _ellipse(y, x, ident.nose_y, 0.5 + side * ident.nose_w, 0.011, 0.0065)
        _over(img, skin * 0.5, _cover(d, S))
    # eyes and brows
    for side in (-1.0, 1.0):
        ex = 0.5 + side * ident.eye_dx
        d_eye = _ellipse(y, x, ident.eye_y, ex, ident.eye_w, ident.eye_h)
        _over(img, skin * 0.45, _cover(d_eye - 0.004, S))  # lid line
        _over(img, (0.96, 0.95, 0.93), _cover(d_eye, S))
        r_iris = ident.eye_h * 1.0
        d_iris = np.maximum(_ellipse(y, x, ident.eye_y, ex, r_iris, r_iris), d_eye)
        _over(img, np.asarray(ident.iris), _cover(d_iris, S))
        d_pupil = _ellipse(y, x, ident.eye_y, ex, 0.42 * r_iris, 0.42 * r_iris)
        _over(img, (0.03, 0.03, 0.03), _cover(d_pupil, S))
        d_glint = _ellipse(y, x, ident.eye_y - 0.35 * r_iris, ex + 0.3 * r_iris,
                           0.2 * r_iris, 0.2 * r_iris)
        _over(img, (1.0, 1.0, 1.0), 0.8 * _cover(d_glint, S))
        d_brow = _ellipse(y, x, ident.eye_y - ident.brow_gap, ex + side * 0.006,
                          ident.eye_w * 1.2, ident.brow_th, angle=-side * ident.brow_tilt)
        _over(img, hair * 0.8, _cover(d_brow, S))
    # hair in front
    head = _ellipse(y, x, cy - 0.005, 0.5, ax + 0.018, ay + 0.022)
    if ident.hair_style == "bald":
        d = np.maximum(np.maximum(head, ax * 0.78 - np.abs(x - 0.5)),
                       np.maximum(0.28 - y, y - ident.eye_y - 0.03))
    else:
        hl = ident.hairline
        line = hl + (ident.eye_y + 0.02 - hl) * np.clip(np.abs(x - 0.5) / ax, 0, 1) ** 4
        if ident.hair_style == "fringe":
            line = line + 0.012 * np.sin((x - 0.5) * 2 * np.pi / 0.06)
        d = np.maximum(head, y - line)
    _over(img, hair_tex, _cover(d, S))
    img.setflags(write=False)
    return img


@lru_cache(maxsize=64)
def _identity_uint8(ident: Identity, size: int) -> np.ndarray:
    out = _to_uint8(_identity_layer(ident, size))
    out.setflags(write=False)
    return out


MOUTH_LAYERS = ("upper_lip", "lower_lip", "lip_shine", "inner", "teeth_upper", "tongue",
                "teeth_lower")
"""Names of the mouth's colour layers, in the order of :func:`mouth_layers`' weights 1..K."""


def mouth_layers(mouth: MouthState, size: int, r0: int, r1: int, c0: int, c1: int,
                 lips: tuple[float, float, float] = DEFAULT_LIPS) -> np.ndarray:
    """Compositing weights of the mouth over the crop rows ``r0:r1``, cols ``c0:c1``.

    Returns ``w`` [1 + K, h, w] (K = ``len(MOUTH_LAYERS)``): the crop drawn with the mouth is
    ``w[0] * background + sum_k w[k] * colour_k``. The weights depend on the mouth state only
    and the identity's lip geometry ``lips`` (``Identity.lips``); the colours on the identity
    (:func:`mouth_colours`). The mouth reader of ``evaluation.motion`` fits the colours per
    frame, so it reads geometry, not lip colour.
    """
    y, x = _grid(size, r0, r1, c0, c1)
    op = float(np.clip(mouth.open, 0.0, 1.0))
    wd = float(np.clip(mouth.width, -1.0, 1.0))
    cx, cy = MOUTH_CENTER_256[0] / 256, MOUTH_CENTER_256[1] / 256
    lip_w, upper, lower = lips  # width factor, lip thicknesses
    hw = CLOSED_MOUTH_WIDTH_256 / 512 * lip_w * (1.0 + 0.3 * wd) * (1.0 - 0.08 * op)  # half width
    a = 0.042 * op  # half height of the opening
    shape = np.broadcast_shapes(y.shape, x.shape)

    b_outer = np.where(y < cy, a + upper, a + lower)
    a_lips = _cover(_ellipse(y, x, cy, cx, hw, b_outer), size)
    is_upper = np.broadcast_to(y < cy, shape).astype(float)
    shine = np.exp(-(((x - cx) / (0.5 * hw)) ** 2 + ((y - cy - a - 0.55 * lower) / 0.008) ** 2))
    b_inner = max(a, 0.0035)
    d_inner = _ellipse(y, x, cy, cx, 0.86 * hw, b_inner)
    alphas = [_cover(d_inner, size)]  # inner, then (when open) teeth, tongue, teeth
    if a > 0.004:
        teeth_h = min(0.7 * a, 0.016)
        alphas.append(_cover(np.maximum(d_inner, y - (cy - a + teeth_h)), size))
        d_tongue = np.maximum(_ellipse(y, x, cy + 0.8 * a, cx, 0.55 * hw, 0.5 * a), d_inner)
        alphas.append(_cover(d_tongue, size))
        alphas.append(_cover(np.maximum(d_inner, (cy + a - 0.45 * teeth_h) - y), size))
    else:
        alphas += [np.zeros(shape)] * 3
    # "over" compositing: a layer's weight is its alpha times the transparency of every later one
    later = np.ones(shape)
    weights = []
    for al in reversed(alphas):
        weights.append(al * later)
        later = later * (1.0 - al)
    inner_w, teeth_up_w, tongue_w, teeth_low_w = reversed(weights)
    lips_w = a_lips * later
    return np.stack([(1.0 - a_lips) * later, lips_w * is_upper, lips_w * (1.0 - is_upper),
                     lips_w * shine, inner_w, teeth_up_w, tongue_w, teeth_low_w])


def mouth_colours(ident: Identity) -> np.ndarray:
    """The identity's colour of each layer of :data:`MOUTH_LAYERS`: [K, 3] RGB in 0..1."""
    lip = np.asarray(ident.lip, dtype=float)
    return np.stack([lip * 0.88, lip, 0.18 * (1.0 - lip), np.array([0.24, 0.06, 0.08]),
                     np.array([0.93, 0.91, 0.85]), np.array([0.72, 0.33, 0.36]),
                     np.array([0.90, 0.88, 0.82])])


def _mouth_layer(img: np.ndarray, identity: Identity, mouth: MouthState, size: int,
                 r0: int, c0: int) -> None:
    """Draw the mouth onto ``img``, the float crop of the mouth box starting at ``(r0, c0)``."""
    h, w = img.shape[:2]
    weights = mouth_layers(mouth, size, r0, r0 + h, c0, c0 + w, identity.lips)
    img *= weights[0][..., None]
    img += np.einsum("khw,kc->hwc", weights[1:], mouth_colours(identity))


def render(identity: Identity, mouth: MouthState | None, size: int) -> np.ndarray:
    """Render one face: uint8 ``[size, size, 3]`` RGB.

    ``mouth=None`` draws the identity layer alone (no lips). Only pixels inside
    :func:`mouth_box` depend on ``mouth``. Deterministic for given arguments.
    """
    base = _identity_layer(identity, int(size))
    out = _identity_uint8(identity, int(size)).copy()
    if mouth is not None:
        r0, r1, c0, c1 = mouth_box(size)
        crop = base[r0:r1, c0:c1].copy()
        _mouth_layer(crop, identity, mouth, size, r0, c0)
        out[r0:r1, c0:c1] = _to_uint8(crop)
    return out


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)
