"""Per-frame metrics of generated talking faces.

Images are RGB ``uint8`` arrays ``[H, W, 3]`` (as everywhere in this project).

* Pixel fidelity against an exact ground truth (the synthetic set): :func:`mse`,
  :func:`psnr_from_mse` (a set of frames is scored by the PSNR of its mean MSE), :func:`psnr`
  (one frame), :func:`ssim` (scikit-image's definition; the window is :data:`SSIM_WINDOW` = 7 x 7, uniform,
  computed per colour channel and averaged, ``data_range`` 255) and :func:`mouth_crop` /
  :func:`mouth_psnr` (the mouth box of ``faces.blend.mouth_box``). Identical images have an
  infinite PSNR; it is capped at :data:`PSNR_CAP` dB.
* Lip sync, identity and smoothness on real faces (dlib; see :mod:`faces.metrics`):
  :func:`mouth_distance` (mouth points 48-67, centred, divided by the inter-ocular distance),
  :func:`identity_distance` (face-descriptor distance, same person below
  :data:`SAME_PERSON_THRESHOLD` = 0.6), :func:`temporal_jitter` (mean absolute change between
  consecutive frames). A face dlib cannot find gives ``None``/``NaN``, never an exception.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import cv2
import numpy as np
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio

from faces.blend import mouth_box
from faces.metrics import (
    SAME_PERSON_THRESHOLD,
    face_descriptor,
    face_landmarks,
    mouth_landmark_distance,
    temporal_jitter,
    upscale,  # bicubic, to FACE_SIZE by default (re-exported)
)

__all__ = [
    "PSNR_CAP",
    "SAME_PERSON_THRESHOLD",
    "SSIM_WINDOW",
    "Landmarker",
    "identity_distance",
    "mean_finite",
    "mouth_distance",
    "mouth_crop",
    "mouth_psnr",
    "mse",
    "psnr",
    "psnr_from_mse",
    "ssim",
    "temporal_jitter",
    "upscale",
]

PSNR_CAP = 100.0
"""PSNR (dB) reported for identical images (whose PSNR is infinite)."""

SSIM_WINDOW = 7
"""Side of SSIM's uniform sliding window in pixels (scikit-image's default)."""

FACE_SIZE = 256
"""Generated crops are upscaled to this size before dlib looks at them (its predictor and
descriptor were trained on faces of about this size, not on 32-64 px crops)."""


def _check(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    if a.dtype != np.uint8 or b.dtype != np.uint8:
        raise ValueError(f"expected uint8 images, got {a.dtype} and {b.dtype}")
    return a, b


def psnr(reference: np.ndarray, image: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB (``data_range`` 255), capped at :data:`PSNR_CAP`."""
    reference, image = _check(reference, image)
    with np.errstate(divide="ignore"):
        value = float(peak_signal_noise_ratio(reference, image, data_range=255))
    return min(value, PSNR_CAP) if not math.isnan(value) else value


def ssim(reference: np.ndarray, image: np.ndarray) -> float:
    """Structural similarity (1 for identical images).

    scikit-image's ``structural_similarity`` with ``win_size=7`` (uniform window),
    ``channel_axis=-1`` (per colour channel, then averaged), ``data_range=255`` and its default
    constants ``K1 = 0.01``, ``K2 = 0.03`` (sample covariances; the mean over the pixels at
    least 3 from the border), computed here with OpenCV's box filter over all channels at once:
    the same value to rounding (tested), several times faster. Images must be at least 7 x 7.
    """
    reference, image = _check(reference, image)
    x, y = reference.astype(np.float64), image.astype(np.float64)
    if x.ndim == 2:
        x, y = x[..., None], y[..., None]
    if min(x.shape[:2]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW} x {SSIM_WINDOW} px, got "
                         f"{x.shape[0]} x {x.shape[1]}")
    n = SSIM_WINDOW * SSIM_WINDOW
    cov_norm = n / (n - 1)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    pad = (SSIM_WINDOW - 1) // 2

    def mean7(t: np.ndarray) -> np.ndarray:  # the local means (OpenCV drops a lone channel)
        m = cv2.boxFilter(t, cv2.CV_64F, (SSIM_WINDOW, SSIM_WINDOW), normalize=True,
                          borderType=cv2.BORDER_REFLECT)
        return m.reshape(t.shape)

    ux, uy, uxx, uyy, uxy = (mean7(t) for t in (x, y, x * x, y * y, x * y))
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    h, w = s.shape[:2]
    return float(np.mean(s[pad:h - pad, pad:w - pad].mean(axis=(0, 1))))


def mouth_crop(image: np.ndarray) -> np.ndarray:
    """The mouth box (``faces.blend.mouth_box`` of the image size) of a square image."""
    top, bottom, left, right = mouth_box(image.shape[0])
    return np.ascontiguousarray(image[top:bottom, left:right])


def mouth_psnr(reference: np.ndarray, image: np.ndarray) -> float:
    """PSNR inside the mouth box, capped at :data:`PSNR_CAP`."""
    reference, image = _check(reference, image)
    return psnr(mouth_crop(reference), mouth_crop(image))


def mse(reference: np.ndarray, image: np.ndarray) -> float:
    """Mean squared error over pixels and channels, in 8-bit units (scikit-image)."""
    reference, image = _check(reference, image)
    return float(mean_squared_error(reference, image))


def psnr_from_mse(value: float) -> float:
    """``10 log10(255^2 / MSE)`` in dB, capped at :data:`PSNR_CAP` (``NaN`` stays ``NaN``).

    Applied to the MSE averaged over many frames this is the PSNR of the whole set taken as
    one image: frames that happen to be exact (infinite PSNR) cannot dominate the figure.
    """
    if math.isnan(value):
        return value
    if value <= 0:
        return PSNR_CAP
    return min(10.0 * math.log10(255.0**2 / value), PSNR_CAP)


class Landmarker:
    """dlib landmarks and descriptors with the face box chosen once.

    ``aligned=True`` skips detection and takes the face box of the project's aligned crop
    geometry (``faces.metrics.ALIGNED_FACE_BOX_256``): right for generated frames, which are
    aligned crops by construction and often too small or soft for the HOG detector.
    ``aligned=False`` runs the detector; a frame without a detected face gives ``None``.
    Every image is upscaled to :data:`FACE_SIZE` first.
    """

    def __init__(self, aligned: bool) -> None:
        self.aligned = aligned

    def landmarks(self, image: np.ndarray) -> np.ndarray | None:
        return face_landmarks(upscale(image), aligned=self.aligned)

    def descriptor(self, image: np.ndarray) -> np.ndarray | None:
        return face_descriptor(upscale(image), aligned=self.aligned)


def mouth_distance(lm_a: np.ndarray | None, lm_b: np.ndarray | None) -> float:
    """Mouth-shape distance of two landmark sets, in inter-ocular distances (``NaN`` when
    either is ``None``); see ``faces.metrics.mouth_landmark_distance``."""
    return mouth_landmark_distance(lm_a, lm_b)


def identity_distance(desc_a: np.ndarray | None, desc_b: np.ndarray | None) -> float:
    """Euclidean distance of two face descriptors (``NaN`` when either is ``None``)."""
    if desc_a is None or desc_b is None:
        return float("nan")
    return float(np.linalg.norm(np.asarray(desc_a) - np.asarray(desc_b)))


def mean_finite(values: Iterable[float]) -> float:
    """Mean of the non-NaN values (``NaN`` when there is none)."""
    arr = np.asarray([v for v in values if v is not None], dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    return float(arr.mean()) if arr.size else float("nan")


def fraction_below(values: Sequence[float], threshold: float) -> float:
    """Fraction of the non-NaN values below ``threshold`` (``NaN`` when there is none)."""
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    return float((arr < threshold).mean()) if arr.size else float("nan")
