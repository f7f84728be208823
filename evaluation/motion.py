"""How much of the true mouth motion a generated sequence carries (synthetic set, exact truth).

PSNR, even inside the mouth box, is dominated by lip and skin colour: an output that keeps the
query's closed mouth in every frame scores *better* than one whose mouth moves correctly in a
slightly wrong colour. The metrics here look at the motion itself.

* **Motion error** (:func:`motion_deviation_error`, the headline). For every output frame the
  mouth state ``(open, width)`` is read back by analysis-by-synthesis (:class:`MouthReader`: the
  query's identity is rendered (:mod:`synthface.face`) at a grid of mouth states, brought to the
  model's size exactly like the ground truth, and the state whose mouth box is nearest, least
  squares with a parabolic refinement between grid points, is the estimate). The read-back
  states' deviations from their own temporal mean are compared with the truth's::

      motion error = sum_t |(est_t - mean est) - (s_t - mean s)|^2 / sum_t |s_t - mean s|^2

  Any static sequence reads back one state in every frame, so its deviations are 0 and it scores
  exactly 1 *whatever state it holds* (closed, half open at the truth's mean, fully open);
  copying the query is one. The ground truth reads back ``s_t``: error 0. Above 1 means motion
  worse than none (e.g. motion at the wrong times).
* **State error** (:func:`motion_error`, beside it): the read-back states against the truth's,
  normalised by the query's own (neutral) state ``q``::

      state error = sum_t |est_t - s_t|^2 / sum_t |q - s_t|^2

  Copying the query reads back ``q`` in every frame: error 1; the truth 0. It also sees an
  offset (a mouth that moves right but is always a little too open), which the motion error
  does not; but it rewards a mouth held still near the truth's mean state (it scores well
  below 1 there), which is why it is not the headline.
* **Pixel motion error** (:func:`pixel_motion_error`): the motion error's normalisation on the
  mouth box's pixels, ``sum_t |(o_t - mean o) - (g_t - mean g)|^2 / sum_t |g_t - mean g|^2``:
  any static sequence scores exactly 1, the truth 0. It needs no renderer but mixes colour
  into the motion.
* **Reader fit** (``MouthReader.read(..., fit=True)``): how well the best grid state explains
  a frame's mouth box, the root mean square over its values of the fit's error (residual plus
  the colours' ridge term) in grey levels (0-255). The truth reads at about 0.3 (two roundings
  to 8 bits); an output whose mouth is some state of the query's mouth, in other colours or
  a little blurred, at a few levels. Far above that the mouth box shows no state of the query's
  mouth (another person's lips, a halo), the nearest state is a guess and so are the motion
  and state errors read from it: on the hard talking set the mouth blend's dark, thick pasted
  lips read as a mouth held wide open in every frame, closed or not.

None of them rewards identity: a different face with the right mouth motion scores well here, which is
why every table also reports whole-frame PSNR/SSIM against the ground truth and the PSNR
difference to copying the query (the identity columns).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from faces.blend import mouth_box
from faces.parallel import thread_map
from synthface.face import MOUTH_BOX_256, MouthState, mouth_colours, mouth_layers, render
from synthface.scene import shot_maps

__all__ = ["MouthReader", "motion_deviation_error", "motion_error", "mouth_reader",
           "pixel_motion_error", "state_array"]

OPEN_GRID = np.round(np.linspace(0.0, 1.0, 25), 4)  # step 1/24
WIDTH_GRID = np.round(np.linspace(-1.0, 1.0, 25), 4)  # step 1/12


def state_array(states: Sequence) -> np.ndarray:
    """Mouth states (objects with ``open``/``width``, or pairs) -> float array [T, 2]."""
    out = []
    for s in states:
        out.append((float(s.open), float(s.width)) if hasattr(s, "open") else
                   (float(s[0]), float(s[1])))
    return np.asarray(out, dtype=np.float64).reshape(-1, 2)


def _box_crop(image: np.ndarray) -> np.ndarray:
    r0, r1, c0, c1 = mouth_box(image.shape[0])
    return image[r0:r1, c0:c1].astype(np.float32)


@dataclass
class MouthReader:
    """Reads mouth states back from images of one identity at one size (see module docstring).

    For every grid state the mouth box at ``size`` is ``base + weights @ colours``: ``base``
    [N, P, 3] is the identity's skin around the mouth, ``weights`` [N, P, K] the mouth's colour
    layers (:func:`synthface.face.mouth_layers`), both rendered at 256 px and resized exactly like
    the ground truth. Per frame the K layer colours are fitted by ridge regression towards the
    identity's own colours, so a mouth in another lip colour still reads as its geometry.
    """

    size: int
    base: np.ndarray
    weights: np.ndarray
    colours: np.ndarray  # [K, 3] the identity's layer colours, 0..255
    ridge: float = 0.5  # pull of the colours towards the identity's, in pixels' worth
    # residual per value (8-bit units squared) below which a frame is taken to be a render of
    # the grid state itself: two roundings to uint8 leave about 1/6, a generated frame far more
    exact: float = 0.25

    def __post_init__(self) -> None:
        self.base = np.asarray(self.base, dtype=np.float64)
        self.weights = np.asarray(self.weights, dtype=np.float64)
        n, p, k = self.weights.shape
        w = self.weights
        gram = np.einsum("npk,npl->nkl", w, w)  # [N, K, K]
        self._gram = gram
        self._inv = np.linalg.inv(gram + self.ridge * np.eye(k))  # [N, K, K]
        # read() works with products of these and the frame, all BLAS matrix products: the
        # residual of every grid state follows from W^T y, |y|^2 and the fitted colours, so
        # the [N, P] residual images are never formed
        self._wt = np.ascontiguousarray(w.transpose(0, 2, 1).reshape(n * k, p))  # [N*K, P]
        self._wt_base = np.einsum("npk,npc->nkc", w, self.base)  # [N, K, 3]
        self._base_flat = np.ascontiguousarray(self.base.reshape(n, -1))  # [N, P*3]
        self._base_sq = (self.base**2).sum((1, 2))  # [N]

    def _errors(self, crop: np.ndarray) -> np.ndarray:
        """The fit's error at every grid state [N] for one mouth box ``crop`` [P, 3] (float64):
        ``|y - W c|^2 + ridge |c - colours|^2`` with ``y = crop - base`` and ``c`` the ridge
        fit of the layer colours."""
        n, _, k = self.weights.shape
        wty = (self._wt @ crop).reshape(n, k, 3) - self._wt_base  # W^T y [N, K, 3]
        col = self._inv @ (wty + self.ridge * self.colours)  # [N, K, 3]
        y_sq = float((crop**2).sum()) - 2.0 * (self._base_flat @ crop.ravel()) + self._base_sq
        res_sq = y_sq - 2.0 * (col * wty).sum((1, 2)) + (col * (self._gram @ col)).sum((1, 2))
        return res_sq + self.ridge * ((col - self.colours) ** 2).sum((1, 2))

    def read(self, images: np.ndarray, fit: bool = False
             ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """uint8 images [T, S, S, 3] -> estimated states [T, 2] (open, width); with ``fit``
        also each frame's fit error [T] (the module docstring's reader fit)."""
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[None]
        if images.shape[1] != self.size:
            raise ValueError(f"images are {images.shape[1]} px, the reader was built for "
                             f"{self.size} px")
        n_o, n_w = len(OPEN_GRID), len(WIDTH_GRID)
        out = np.empty((len(images), 2))
        fits = np.empty(len(images))
        for i, img in enumerate(images):
            crop = _box_crop(img).reshape(-1, 3).astype(np.float64)
            err = self._errors(crop).reshape(n_o, n_w)
            io, iw = np.unravel_index(int(np.argmin(err)), err.shape)
            fits[i] = np.sqrt(max(float(err[io, iw]), 0.0) / crop.size)
            if err[io, iw] <= self.exact * crop.size:  # a render of this very grid state
                out[i] = OPEN_GRID[io], WIDTH_GRID[iw]
                continue
            out[i, 0] = _refine(OPEN_GRID, err[:, iw], io)
            out[i, 1] = _refine(WIDTH_GRID, err[io, :], iw)
        return (out, fits) if fit else out


def _refine(grid: np.ndarray, err: np.ndarray, i: int) -> float:
    """Minimum of the parabola through the errors at ``i - 1, i, i + 1`` (grid is uniform)."""
    if i == 0 or i == len(grid) - 1:
        return float(grid[i])
    e0, e1, e2 = float(err[i - 1]), float(err[i]), float(err[i + 1])
    denom = e0 - 2.0 * e1 + e2
    if denom <= 0:
        return float(grid[i])
    step = float(grid[1] - grid[0])
    offset = 0.5 * (e0 - e2) / denom
    return float(grid[i] + np.clip(offset, -0.5, 0.5) * step)


def _margin_box(size: int) -> tuple[int, int, int, int]:
    """The mouth box at ``size`` with a 2-pixel margin, clipped to the image."""
    r0, r1, c0, c1 = mouth_box(size)
    m = 2
    return max(r0 - m, 0), min(r1 + m, size), max(c0 - m, 0), min(c1 + m, size)


def _resize_box(maps: np.ndarray, size: int, region: bool = False) -> np.ndarray:
    """Float maps [M, 256, 256] -> their mouth box at ``size`` [M, h, w], resized as the model's
    inputs are (PIL bilinear); only a margin around the box is resized (identical result: the
    filter's support is one output pixel). ``region=True``: the maps are that margin region at
    256 px already (rows ``R0 * f : R1 * f`` of :func:`_margin_box`, ``f = 256 // size``)."""
    f = 256 // size
    r0, r1, c0, c1 = mouth_box(size)
    R0, R1, C0, C1 = _margin_box(size)
    out = []
    for mp in maps:
        part = mp if region else mp[R0 * f:R1 * f, C0 * f:C1 * f]
        crop = Image.fromarray(np.ascontiguousarray(part, dtype=np.float32), mode="F")
        small = np.asarray(crop.resize((C1 - C0, R1 - R0), Image.BILINEAR))
        out.append(small[r0 - R0:r1 - R0, c0 - C0:c1 - C0])
    return np.stack(out)


@lru_cache(maxsize=16)
def mouth_reader(identity, size: int, shot=None) -> MouthReader:
    """The :class:`MouthReader` of ``identity`` (a :class:`synthface.face.Identity`) at ``size``.

    Built from the mouth layers at 25 x 25 states at 256 px, resized like the ground truth
    (seconds; cached per identity, size and shot). ``size`` must divide 256. ``shot``: a
    :class:`synthface.scene.Shot` when the frames are posed, lit, aligned crops (the hard set):
    the layers then go through the same pose, lighting and crop (``synthface.scene.shot_maps``).
    """
    if 256 % size:
        raise ValueError(f"the mouth reader works at sizes dividing 256, not {size}")
    if shot is not None:
        return _shot_reader(identity, size, shot)
    bare = render(identity, None, 256).astype(np.float64)  # the identity without a mouth
    R0, R1, C0, C1 = MOUTH_BOX_256
    ramps = _ramps(size)

    def state(ow: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
        lay = mouth_layers(MouthState(*ow), 256, R0, R1, C0, C1, identity.lips)
        full = np.zeros((3 + lay.shape[0] - 1, 256, 256))
        for c in range(3):  # background channels: bare outside the box, w0 * bare inside
            full[c] = bare[..., c]
            full[c, R0:R1, C0:C1] *= lay[0]
        full[3:, R0:R1, C0:C1] = lay[1:]
        small = _resize_box(full, size)  # [3 + K, h, w]
        lay_small = small[3:].reshape(small.shape[0] - 3, -1)
        w0 = _resize_box(np.pad(lay[:1], ((0, 0), (R0, 256 - R1), (C0, 256 - C1)),
                                constant_values=1.0), size).reshape(1, -1)
        return small[:3].reshape(3, -1).T, np.concatenate([lay_small, w0 * ramps], 0).T

    # the 25 x 25 states in threads (faces.parallel), each computed as alone
    parts = thread_map(state, [(float(o), float(w)) for o in OPEN_GRID for w in WIDTH_GRID])
    bases, weights = [b for b, _ in parts], [w for _, w in parts]
    colours = np.concatenate([mouth_colours(identity) * 255.0, np.zeros((3, 3))])
    return MouthReader(size, np.asarray(bases), np.asarray(weights), colours)


def _ramps(size: int) -> np.ndarray:
    """[3, P] a constant and two ramps over the mouth box at ``size``: the skin around the mouth
    may be shifted smoothly (a seamless clone does that), so the reader lets it, weighted by the
    skin's own compositing weight."""
    r0, r1, c0, c1 = mouth_box(size)
    yy, xx = np.meshgrid(np.linspace(-1, 1, r1 - r0), np.linspace(-1, 1, c1 - c0), indexing="ij")
    return np.stack([np.ones_like(yy), yy, xx]).reshape(3, -1)


def _shot_reader(identity, size: int, shot) -> MouthReader:
    """:func:`mouth_reader` for posed, lit, aligned crops (``synthface.scene``)."""
    f = 256 // size
    R0, R1, C0, C1 = _margin_box(size)
    states = [MouthState(float(o), float(w)) for o in OPEN_GRID for w in WIDTH_GRID]
    ramps = _ramps(size)
    bases, weights = [], []
    for maps in shot_maps(identity, shot, 256, (R0 * f, R1 * f), (C0 * f, C1 * f), states):
        small = _resize_box(maps, size, region=True)  # [3 + 1 + K, h, w]
        bases.append(small[:3].reshape(3, -1).T)
        w0 = small[3].reshape(1, -1)
        weights.append(np.concatenate([small[4:].reshape(small.shape[0] - 4, -1),
                                       w0 * ramps], 0).T)
    tint = np.asarray(shot.light.tint)
    colours = np.concatenate([mouth_colours(identity) * 255.0 * tint, np.zeros((3, 3))])
    return MouthReader(size, np.asarray(bases), np.asarray(weights), colours)


def motion_error(estimated: np.ndarray, truth: np.ndarray, rest: np.ndarray
                 ) -> tuple[float, float]:
    """``(numerator, denominator)`` of the state error of one sequence.

    ``estimated``, ``truth`` [T, 2] mouth states; ``rest`` [2] the query's own state. The error
    is ``numerator / denominator``; pool several sequences by summing both.
    """
    estimated, truth = np.asarray(estimated, float), np.asarray(truth, float)
    num = float(((estimated - truth) ** 2).sum())
    den = float(((np.asarray(rest, float)[None] - truth) ** 2).sum())
    return num, den


def motion_deviation_error(estimated: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """``(numerator, denominator)`` of the motion error of one sequence (module docstring).

    ``estimated``, ``truth`` [T, 2] mouth states of the same frames. Each is taken relative to
    its own temporal mean, so every static ``estimated`` gives ``numerator == denominator``
    (error exactly 1). Pool several sequences by summing both (each with its own means).
    """
    estimated, truth = np.asarray(estimated, float), np.asarray(truth, float)
    de = estimated - estimated.mean(0, keepdims=True)
    dt = truth - truth.mean(0, keepdims=True)
    return float(((de - dt) ** 2).sum()), float((dt**2).sum())


def pixel_motion_error(outputs: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """``(numerator, denominator)`` of the pixel motion error in the mouth box.

    ``outputs``, ``truth``: uint8 [T, S, S, 3]. Deviation of each frame's mouth box from the
    sequence's temporal mean, compared between output and truth.
    """
    o = np.stack([_box_crop(x) for x in outputs]).astype(np.float64)
    g = np.stack([_box_crop(x) for x in truth]).astype(np.float64)
    do, dg = o - o.mean(0, keepdims=True), g - g.mean(0, keepdims=True)
    return float(((do - dg) ** 2).sum()), float((dg**2).sum())


def ratio(num: float, den: float) -> float:
    """``num / den``; NaN when the truth has no motion at all (``den`` = 0)."""
    return num / den if den > 0 else float("nan")
