"""A procedural talking-face set with exact ground truth.

``python -m lrw.synthetic OUT [--words 8 --speakers 16 --clips 4 --frames 29 --size 64 --seed 0]``
writes::

    OUT/train/WORD/WORD_NNNNN_FF.jpg        LRW-style training frames (JPEG quality 95, 4:4:4)
    OUT/image/ref_img/queryNN_256.png       query faces (held-out identities, neutral mouth)
    OUT/image/source_img/srcNN_WORD/000.png driving sequences (held-out identities) + fps.txt
    OUT/manifest.json                       seed, every identity, every clip's mouth states

Faces are drawn analytically (signed distances with one-pixel soft edges, vectorised numpy), so
rendering is deterministic and needs no supersampling. The geometry matches the thesis's aligned
crops: at image size S the mouth centre is at ``(x, y) = (S*128/256, S*160/256)``, the closed
mouth is ``S*43/256`` wide, and the mouth at any state stays inside the mouth box (rows
``S*140/256 : S*188/256``, cols ``S*90/256 : S*166/256``). Everything outside that box depends on
the identity only, so "identity A with mouth state m" is well defined: :func:`render` draws the
identity layer and then changes only the box.

Identities: face shape (ellipse axes, centre, chin taper), skin tone, eye height/spacing/size,
iris colour, brows, nose, hair colour and style (short, long, fringe, bald), neck, shirt and
background colour. Words: each word has a mouth trajectory ``(open(t), width(t))`` over the clip,
a sum of smooth syllable bumps whose count and vowel shapes follow the spelling, with timings drawn
per word; each clip jitters amplitude, phase and speed. Query and source identities never appear
in ``train/``, so evaluation is on unseen identities.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

__all__ = [
    "CLOSED_MOUTH_WIDTH_256",
    "MOUTH_BOX_256",
    "MOUTH_CENTER_256",
    "NEUTRAL",
    "WORDS",
    "Identity",
    "MouthState",
    "SyntheticConfig",
    "SyntheticSet",
    "generate",
    "main",
    "mouth_box",
    "render",
    "sample_identity",
    "word_trajectory",
]

FORMAT = "flowdisentangle-synthetic/1"
MOUTH_CENTER_256 = (128, 160)  # (x, y) at 256 px
MOUTH_BOX_256 = (140, 188, 90, 166)  # rows r0:r1, cols c0:c1 at 256 px
CLOSED_MOUTH_WIDTH_256 = 43
JPEG_QUALITY = 95
FPS = 25

# Real English words (LRW's vocabulary is of this kind); the first ones differ most in vowels.
WORDS = (
    "ABOUT", "PEOPLE", "MONEY", "SCHOOL", "FAMILY", "WATER", "BECAUSE", "YOUNG",
    "AGAIN", "BEFORE", "CHANGE", "DIFFERENT", "EVERY", "FOOTBALL", "GROWTH", "HAPPEN",
    "IMPORTANT", "JUSTICE", "KILLED", "LONDON", "MAJORITY", "NUMBER", "OFFICE", "POLICE",
    "QUESTION", "RIGHT", "SERIOUS", "TOMORROW", "UNDER", "VICTIMS", "WEATHER", "WORLD",
    "ACCESS", "BUDGET", "CAPITAL", "DECISION", "ECONOMY", "FUTURE", "GLOBAL", "HEALTH",
    "INQUIRY", "JUDGE", "LEADER", "MEMBERS", "NEVER", "OPPOSITION", "PARTY", "QUITE",
    "REALLY", "SECURITY", "THOUGHT", "UNION", "VIOLENCE", "WELCOME", "YESTERDAY", "ALWAYS",
    "BUSINESS", "CHILDREN", "DURING", "EUROPE", "FRIDAY", "GOVERNMENT", "HOUSING", "ISSUE",
)

_VOWEL_SHAPES = {  # (open amplitude, width target) of a syllable's vowel
    "A": (0.95, 0.15), "E": (0.60, 0.65), "I": (0.55, 0.75), "O": (0.70, -0.75),
    "U": (0.50, -0.90), "Y": (0.55, 0.50),
}


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

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Identity:
        values = {}
        for f in fields(cls):
            v = d[f.name]
            values[f.name] = tuple(float(x) for x in v) if isinstance(v, list) else v
        return cls(**values)


_SKIN = np.array([(0.98, 0.86, 0.76), (0.94, 0.76, 0.63), (0.82, 0.61, 0.46),
                  (0.62, 0.43, 0.31), (0.42, 0.28, 0.20)])
_IRIS = np.array([(0.35, 0.22, 0.12), (0.25, 0.45, 0.70), (0.30, 0.50, 0.30),
                  (0.45, 0.48, 0.50), (0.15, 0.10, 0.08)])
_HAIR = np.array([(0.08, 0.07, 0.07), (0.25, 0.16, 0.10), (0.45, 0.30, 0.18),
                  (0.85, 0.72, 0.45), (0.62, 0.28, 0.12), (0.65, 0.65, 0.65)])
_STYLES = ("short", "long", "fringe", "bald")


def _r4(x) -> float:
    return round(float(x), 4)


def _rgb(c) -> RGB:
    c = np.clip(np.asarray(c, dtype=float), 0.0, 1.0)
    return (_r4(c[0]), _r4(c[1]), _r4(c[2]))


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
        face_cy=_r4(u(0.47, 0.49)), face_ax=_r4(u(0.29, 0.34)), face_ay=_r4(u(0.40, 0.435)),
        chin=_r4(u(0.15, 0.45)), skin=_rgb(skin),
        eye_y=_r4(u(0.385, 0.41)), eye_dx=_r4(u(0.115, 0.14)), eye_w=_r4(u(0.040, 0.052)),
        eye_h=_r4(u(0.018, 0.025)),
        iris=_rgb(_IRIS[int(rng.integers(len(_IRIS)))] + rng.normal(0, 0.03, 3)),
        brow_gap=_r4(u(0.055, 0.07)), brow_th=_r4(u(0.008, 0.013)),
        brow_tilt=_r4(u(-0.12, 0.2)), nose_y=_r4(u(0.515, 0.53)), nose_w=_r4(u(0.018, 0.026)),
        lip=_rgb(lip),
        hair=_rgb(_HAIR[int(rng.integers(len(_HAIR)))] + rng.normal(0, 0.03, 3)),
        hair_style=style, hairline=_r4(hairline), neck_w=_r4(u(0.10, 0.13)),
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


def _mouth_layer(img: np.ndarray, ident: Identity, mouth: MouthState, size: int,
                 r0: int, c0: int) -> None:
    """Draw the mouth onto ``img``, the float crop of the mouth box starting at ``(r0, c0)``."""
    S = size
    h, w = img.shape[:2]
    y, x = _grid(S, r0, r0 + h, c0, c0 + w)
    op = float(np.clip(mouth.open, 0.0, 1.0))
    wd = float(np.clip(mouth.width, -1.0, 1.0))
    cx, cy = MOUTH_CENTER_256[0] / 256, MOUTH_CENTER_256[1] / 256
    hw = CLOSED_MOUTH_WIDTH_256 / 512 * (1.0 + 0.3 * wd) * (1.0 - 0.08 * op)  # half width
    a = 0.042 * op  # half height of the opening
    upper, lower = 0.017, 0.021  # lip thickness
    lip = np.asarray(ident.lip)

    b_outer = np.where(y < cy, a + upper, a + lower)
    d_lips = _ellipse(y, x, cy, cx, hw, b_outer)
    lip_col = np.where((y < cy)[..., None], lip * 0.88, lip)
    shine = np.exp(-(((x - cx) / (0.5 * hw)) ** 2 + ((y - cy - a - 0.55 * lower) / 0.008) ** 2))
    lip_col = lip_col + (0.18 * shine)[..., None] * (1.0 - lip)
    _over(img, lip_col, _cover(d_lips, S))

    b_inner = max(a, 0.0035)
    d_inner = _ellipse(y, x, cy, cx, 0.86 * hw, b_inner)
    inner = _cover(d_inner, S)
    _over(img, (0.24, 0.06, 0.08), inner)
    if a > 0.004:
        teeth_h = min(0.7 * a, 0.016)
        d_up = np.maximum(d_inner, y - (cy - a + teeth_h))
        _over(img, (0.93, 0.91, 0.85), _cover(d_up, S))
        d_tongue = np.maximum(_ellipse(y, x, cy + 0.8 * a, cx, 0.55 * hw, 0.5 * a), d_inner)
        _over(img, (0.72, 0.33, 0.36), _cover(d_tongue, S))
        d_low = np.maximum(d_inner, (cy + a - 0.45 * teeth_h) - y)
        _over(img, (0.90, 0.88, 0.82), _cover(d_low, S))


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


# --------------------------------------------------------------------------------------------
# Mouth trajectories
# --------------------------------------------------------------------------------------------

def _word_syllables(word: str, rng: np.random.Generator) -> list[tuple[float, float, float, float]]:
    """Syllables ``(centre, sigma, open, width)`` of a word: one per vowel group (max 4)."""
    groups = re.findall(r"[AEIOUY]+", word.upper()) or ["A"]
    groups = groups[:4]
    n = len(groups)
    span = min(0.22 + 0.1 * n, 0.62)  # longer words take longer, centred in the clip as in LRW
    start = 0.5 - span / 2 + rng.uniform(-0.04, 0.04)
    out = []
    for i, g in enumerate(groups):
        amp, width = _VOWEL_SHAPES[g[0]]
        centre = start + span * (i + 0.5) / n + rng.uniform(-0.02, 0.02)
        sigma = span / n * rng.uniform(0.28, 0.40)
        out.append((centre, sigma, float(np.clip(amp * rng.uniform(0.8, 1.1), 0.2, 1.0)),
                    float(np.clip(width + rng.uniform(-0.2, 0.2), -1.0, 1.0))))
    return out


def word_trajectory(syllables: Sequence[Sequence[float]], n_frames: int, amp: float = 1.0,
                    shift: float = 0.0, speed: float = 1.0) -> list[MouthState]:
    """Mouth states of one clip: syllable bumps sampled at ``n_frames`` times in [0, 1].

    ``amp`` scales both opening and width, ``shift`` moves the word in time, ``speed`` > 1 makes
    it shorter (time is scaled about the clip centre). States are rounded to 4 decimals.
    """
    tau = np.linspace(0.0, 1.0, n_frames) if n_frames > 1 else np.array([0.5])
    tau = 0.5 + (tau - 0.5 - shift) * speed
    op = np.zeros_like(tau)
    wnum = np.zeros_like(tau)
    for centre, sigma, a, w in syllables:
        g = np.exp(-0.5 * ((tau - centre) / sigma) ** 2)
        op += a * g
        wnum += w * np.exp(-0.5 * ((tau - centre) / (1.6 * sigma)) ** 2)
    op = np.clip(op * amp, 0.0, 1.0)
    wd = np.clip(wnum * amp, -1.0, 1.0)
    return [MouthState(_r4(o), _r4(w)) for o, w in zip(op, wd, strict=True)]


def _clip_jitter(rng: np.random.Generator) -> dict:
    return {"amp": _r4(rng.uniform(0.85, 1.12)), "shift": _r4(rng.uniform(-0.05, 0.05)),
            "speed": _r4(rng.uniform(0.9, 1.1))}


# --------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------

@dataclass
class SyntheticConfig:
    """Options of ``python -m lrw.synthetic`` (see ``--help``)."""

    out: str
    words: int = 8
    speakers: int = 16
    clips: int = 4
    frames: int = 29
    size: int = 64
    seed: int = 0
    queries: int = 2
    sources: int = 2
    query_size: int = 256
    workers: int = 1

    def generation_key(self) -> dict:
        """Everything that changes the output (not ``out`` or ``workers``)."""
        d = asdict(self)
        d.pop("out")
        d.pop("workers")
        return d


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, *stream])


def _build_manifest(cfg: SyntheticConfig) -> dict:
    if cfg.words > len(WORDS):
        raise ValueError(f"--words {cfg.words}: at most {len(WORDS)} words are available")
    for name in ("words", "speakers", "clips", "frames", "size", "query_size"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
    words = sorted(WORDS[: cfg.words])
    identities: dict[str, dict] = {}
    train = [f"spk{i:02d}" for i in range(cfg.speakers)]
    queries = [f"query{i:02d}" for i in range(cfg.queries)]
    source_spk = [f"src{i:02d}" for i in range(cfg.sources)]
    for stream, names in ((1, train), (2, queries), (3, source_spk)):
        for i, name in enumerate(names):
            identities[name] = sample_identity(_rng(cfg.seed, stream, i)).to_dict()
    syllables = {w: [list(map(_r4, s)) for s in _word_syllables(w, _rng(cfg.seed, 4, WORDS.index(w)))]
                 for w in words}
    clips = []
    for w in words:
        wi = WORDS.index(w)
        n = 0
        for si, spk in enumerate(train):
            for k in range(cfg.clips):
                n += 1
                jit = _clip_jitter(_rng(cfg.seed, 5, wi, si, k))
                states = word_trajectory(syllables[w], cfg.frames, **jit)
                clips.append({"word": w, "clip_id": f"{n:05d}", "speaker": spk, "jitter": jit,
                              "mouth": [[m.open, m.width] for m in states]})
    sources = {}
    for i, spk in enumerate(source_spk):
        w = words[i % len(words)]
        jit = _clip_jitter(_rng(cfg.seed, 6, i))
        states = word_trajectory(syllables[w], cfg.frames, **jit)
        name = f"{spk}_{w}"
        sources[name] = {"speaker": spk, "word": w, "folder": f"image/source_img/{name}",
                         "fps": FPS, "jitter": jit,
                         "mouth": [[m.open, m.width] for m in states]}
    manifest = {
        "format": FORMAT,
        "config": cfg.generation_key(),
        "geometry": {"mouth_center_256": list(MOUTH_CENTER_256),
                     "mouth_box_256": list(MOUTH_BOX_256),
                     "closed_mouth_width_256": CLOSED_MOUTH_WIDTH_256},
        "words": words,
        "train_speakers": train,
        "query_speakers": queries,
        "source_speakers": source_spk,
        "identities": identities,
        "syllables": syllables,
        "clips": clips,
        "queries": {q: {"speaker": q, "file": f"image/ref_img/{q}_{cfg.query_size}.png"}
                    for q in queries},
        "sources": sources,
    }
    return json.loads(json.dumps(manifest))  # plain JSON types, as read back from the file


def _write_image(path: Path, rgb: np.ndarray) -> None:
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    if path.suffix == ".jpg":
        # 4:4:4 chroma: at 32-64 px, 4:2:0 subsampling visibly smears the coloured edges
        ok, buf = cv2.imencode(".jpg", bgr, [
            cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY,
            cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444])
    else:
        ok, buf = cv2.imencode(path.suffix, bgr)
    if not ok:
        raise RuntimeError(f"encoding {path} failed")
    path.write_bytes(buf.tobytes())


def _write_word(args: tuple[str, dict, list[dict], int]) -> int:
    """Write every training frame of one word; returns the number of frames."""
    out_train, identities, clips, size = args
    n = 0
    cache: dict[str, Identity] = {}
    for clip in clips:
        spk = clip["speaker"]
        if spk not in cache:
            cache[spk] = Identity.from_dict(identities[spk])
        folder = Path(out_train) / clip["word"]
        folder.mkdir(parents=True, exist_ok=True)
        for t, (o, w) in enumerate(clip["mouth"], start=1):
            img = render(cache[spk], MouthState(o, w), size)
            _write_image(folder / f"{clip['word']}_{clip['clip_id']}_{t:02d}.jpg", img)
            n += 1
    return n


def _clean_previous(out: Path) -> None:
    """Remove what an earlier generation wrote into ``out`` (listed by its manifest)."""
    manifest = out / "manifest.json"
    try:
        old = json.loads(manifest.read_text())
    except (OSError, ValueError):
        old = None
    if old is None or old.get("format") != FORMAT:
        if any(out.iterdir()):
            raise ValueError(f"{out} is not empty and holds no synthetic set; choose another "
                             "folder")
        return
    manifest.unlink()
    shutil.rmtree(out / "train", ignore_errors=True)
    for q in old.get("queries", {}).values():
        (out / q["file"]).unlink(missing_ok=True)
    for s in old.get("sources", {}).values():
        shutil.rmtree(out / s["folder"], ignore_errors=True)


def generate(cfg: SyntheticConfig, force: bool = False, log=print) -> dict:
    """Write the set described by ``cfg`` (see the module docstring); returns the manifest.

    When ``cfg.out`` already holds a set made with the same options it is left as is (unless
    ``force``); a set made with other options is replaced; any other non-empty folder is an error.
    """
    out = Path(cfg.out)
    manifest = _build_manifest(cfg)
    mpath = out / "manifest.json"
    if out.is_dir():
        try:
            old = json.loads(mpath.read_text())
        except (OSError, ValueError):
            old = None
        if not force and old == manifest:
            log(f"{out}: synthetic set already up to date")
            return manifest
        _clean_previous(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    by_word: dict[str, list[dict]] = {}
    for clip in manifest["clips"]:
        by_word.setdefault(clip["word"], []).append(clip)
    jobs = [(str(out / "train"), manifest["identities"], clips, cfg.size)
            for clips in by_word.values()]
    if cfg.workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=cfg.workers) as pool:
            n_train = sum(pool.map(_write_word, jobs))
    else:
        n_train = sum(map(_write_word, jobs))

    for entry in manifest["queries"].values():
        path = out / entry["file"]
        path.parent.mkdir(parents=True, exist_ok=True)
        ident = Identity.from_dict(manifest["identities"][entry["speaker"]])
        _write_image(path, render(ident, NEUTRAL, cfg.query_size))
    for entry in manifest["sources"].values():
        folder = out / entry["folder"]
        folder.mkdir(parents=True, exist_ok=True)
        ident = Identity.from_dict(manifest["identities"][entry["speaker"]])
        for t, (o, w) in enumerate(entry["mouth"]):
            _write_image(folder / f"{t:03d}.png", render(ident, MouthState(o, w), cfg.query_size))
        (folder / "fps.txt").write_text(f"{entry['fps']}\n")

    tmp = mpath.with_name(".manifest.json.part")  # written last: a partial set is redone
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    os.replace(tmp, mpath)
    log(f"{out}: {len(manifest['words'])} words, {len(manifest['train_speakers'])} speakers, "
        f"{len(manifest['clips'])} clips, {n_train} training frames, "
        f"{len(manifest['queries'])} queries, {len(manifest['sources'])} sources "
        f"in {time.perf_counter() - t0:.1f} s")
    return manifest


# --------------------------------------------------------------------------------------------
# Evaluation API
# --------------------------------------------------------------------------------------------

class SyntheticSet:
    """A generated set, read back from its manifest, with exact ground truth."""

    def __init__(self, root: Path, manifest: dict):
        self.root = root
        self.manifest = manifest
        self.words: list[str] = manifest["words"]
        self.query_names: list[str] = list(manifest["queries"])
        self.source_names: list[str] = list(manifest["sources"])
        self._identities = {k: Identity.from_dict(v) for k, v in manifest["identities"].items()}

    @classmethod
    def load(cls, root: str | Path) -> SyntheticSet:
        """Read ``root/manifest.json``; ``ValueError`` (one line) when absent or not ours."""
        root = Path(root)
        try:
            manifest = json.loads((root / "manifest.json").read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"no synthetic set in {root}: cannot read manifest.json ({e})") from None
        if manifest.get("format") != FORMAT:
            raise ValueError(f"{root}/manifest.json is not a synthetic set ({FORMAT})")
        return cls(root, manifest)

    def _query(self, name: str) -> str:
        key = Path(str(name)).stem
        for cand in (key, re.sub(r"_\d+$", "", key)):
            if cand in self.manifest["queries"]:
                return cand
        raise KeyError(f"unknown query {name!r} (known: {', '.join(self.query_names)})")

    def _source(self, name: str) -> str:
        key = Path(str(name)).name
        if key not in self.manifest["sources"]:
            raise KeyError(f"unknown source {name!r} (known: {', '.join(self.source_names)})")
        return key

    def identity(self, speaker_or_query: str) -> Identity:
        """Identity of a speaker (``spk00``), query (``query00``/``query00_256``) or source speaker."""
        if speaker_or_query in self._identities:
            return self._identities[speaker_or_query]
        return self._identities[self.manifest["queries"][self._query(speaker_or_query)]["speaker"]]

    def source_states(self, source_name: str) -> list[MouthState]:
        """Per-frame mouth states of a source sequence."""
        return [MouthState(o, w) for o, w in self.manifest["sources"][self._source(source_name)]["mouth"]]

    def n_source_frames(self, source_name: str) -> int:
        return len(self.manifest["sources"][self._source(source_name)]["mouth"])

    def query_path(self, query_name: str) -> Path:
        return self.root / self.manifest["queries"][self._query(query_name)]["file"]

    def source_folder(self, source_name: str) -> Path:
        return self.root / self.manifest["sources"][self._source(source_name)]["folder"]

    def ground_truth(self, query_name: str, source_name: str, t: int, size: int = 256) -> np.ndarray:
        """The query's identity with the mouth of source frame ``t``: uint8 ``[size, size, 3]``."""
        states = self.source_states(source_name)
        return render(self.identity(query_name), states[t], size)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m lrw.synthetic",
        description="Write a procedural talking-face set with exact ground truth.")
    p.add_argument("out", help="output folder (created)")
    defaults = SyntheticConfig(out="")
    p.add_argument("--words", type=int, default=defaults.words, help="words (classes)")
    p.add_argument("--speakers", type=int, default=defaults.speakers, help="training speakers")
    p.add_argument("--clips", type=int, default=defaults.clips, help="clips per word and speaker")
    p.add_argument("--frames", type=int, default=defaults.frames, help="frames per clip")
    p.add_argument("--size", type=int, default=defaults.size, help="training frame size (px)")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--queries", type=int, default=defaults.queries,
                   help="held-out query identities")
    p.add_argument("--sources", type=int, default=defaults.sources,
                   help="held-out driving sequences (one identity each)")
    p.add_argument("--query-size", type=int, default=defaults.query_size,
                   help="size of query and source images (px)")
    p.add_argument("--workers", type=int, default=defaults.workers, help="processes")
    p.add_argument("--force", action="store_true", help="regenerate even when up to date")
    args = p.parse_args(argv)
    cfg = SyntheticConfig(out=args.out, words=args.words, speakers=args.speakers,
                          clips=args.clips, frames=args.frames, size=args.size, seed=args.seed,
                          queries=args.queries, sources=args.sources,
                          query_size=args.query_size, workers=args.workers)
    try:
        generate(cfg, force=args.force)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
