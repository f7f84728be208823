"""Alignment to the thesis crop geometry, as one similarity transform.

At 256 x 256 pixels the crop puts the mouth-box centre (``x`` = mean of landmarks 48 and 54,
the mouth corners; ``y`` = mean of landmarks 50 and 57, upper and lower lip) at
``MOUTH_CENTER_256 = (128, 160)`` and scales the mouth width (distance 48 to 54) to
``MOUTH_WIDTH_256 = 43`` pixels. Unlike the thesis crop it also levels the eyes: the image is
rotated about the mouth centre until the line between the eye centres (mean of points 36-41
and 42-47) is horizontal. Other output sizes scale the geometry by ``out_size / 256``.

Parts of the crop that fall outside the photo are filled from the border (reflected by
default), never an error. Faces needing more than ``UPSCALE_WARN``x enlargement are
upscaled with a ``FaceWarning``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import cv2
import numpy as np

from faces.landmarks import FaceWarning, as_rgb

__all__ = [
    "MOUTH_CENTER_256",
    "MOUTH_WIDTH_256",
    "UPSCALE_WARN",
    "AlignedFace",
    "align_face",
    "alignment_params",
    "apply_transform",
    "crop_with_params",
    "similarity_matrix",
]

MOUTH_CENTER_256 = (128, 160)
MOUTH_WIDTH_256 = 43
UPSCALE_WARN = 2.0

_BORDERS = {
    "reflect": cv2.BORDER_REFLECT_101,
    "replicate": cv2.BORDER_REPLICATE,
    "constant": cv2.BORDER_CONSTANT,
}


def alignment_params(landmarks: np.ndarray) -> np.ndarray:
    """The four numbers the crop depends on: ``float64 [4] = (cx, cy, mouth_width, angle)``.

    ``(cx, cy)``: mouth-box centre in image pixels, measured in the eye-levelled frame (for
    an upright face it is just ``((x48 + x54) / 2, (y50 + y57) / 2)``); ``mouth_width``: distance from point 48 to
    54 in pixels; ``angle``: slope of the eye line in radians (positive when the right-hand
    eye in the image is lower). Sequences smooth these over time before cropping.
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape != (68, 2):
        raise ValueError(f"expected landmarks [68, 2], got shape {lm.shape}")
    eye_l = lm[36:42].mean(axis=0)
    eye_r = lm[42:48].mean(axis=0)
    angle = math.atan2(eye_r[1] - eye_l[1], eye_r[0] - eye_l[0])
    # Measure the mouth-box centre with the eyes levelled (rotate by -angle about the mouth
    # corners' midpoint), so that re-measuring on the aligned crop gives the target exactly.
    pivot = (lm[48] + lm[54]) / 2
    cos, sin = math.cos(angle), math.sin(angle)
    rot = np.array([[cos, sin], [-sin, cos]])
    level = (lm - pivot) @ rot.T
    centre_level = np.array([(level[48, 0] + level[54, 0]) / 2, (level[50, 1] + level[57, 1]) / 2])
    cx, cy = centre_level @ rot + pivot
    width = float(np.hypot(*(lm[54] - lm[48])))
    return np.array([cx, cy, max(width, 1e-6), angle])


def similarity_matrix(params: np.ndarray, out_size: int = 256) -> np.ndarray:
    """The ``float64 [2, 3]`` matrix (for ``cv2.warpAffine``) mapping image to crop pixels.

    Rotates by ``-angle`` about the mouth centre, scales the mouth width to
    ``MOUTH_WIDTH_256 * out_size / 256`` and moves the centre to the scaled
    ``MOUTH_CENTER_256``.
    """
    cx, cy, width, angle = (float(v) for v in params)
    k = out_size / 256.0
    s = MOUTH_WIDTH_256 * k / width
    cos, sin = s * math.cos(angle), s * math.sin(angle)
    # Rotation by -angle: [[cos, sin], [-sin, cos]] (image y points down).
    tx = MOUTH_CENTER_256[0] * k - (cos * cx + sin * cy)
    ty = MOUTH_CENTER_256[1] * k - (-sin * cx + cos * cy)
    return np.array([[cos, sin, tx], [-sin, cos, ty]])


def apply_transform(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Map ``[N, 2]`` ``(x, y)`` points with a ``[2, 3]`` affine matrix."""
    pts = np.asarray(points, dtype=np.float64)
    return pts @ matrix[:, :2].T + matrix[:, 2]


def crop_with_params(image: np.ndarray, params: np.ndarray, out_size: int = 256,
                     border: str = "reflect") -> tuple[np.ndarray, np.ndarray]:
    """Warp ``image`` to the ``out_size`` crop given by ``params``; returns ``(crop, matrix)``.

    ``crop``: RGB ``uint8 [out_size, out_size, 3]``; ``matrix``: the ``[2, 3]`` map from image
    to crop pixels. Strong reductions go through an area resize first, so a large photo does
    not alias.
    """
    image = as_rgb(image)
    if border not in _BORDERS:
        raise ValueError(f"border must be one of {sorted(_BORDERS)}, got {border!r}")
    matrix = similarity_matrix(params, out_size)
    scale = float(np.hypot(matrix[0, 0], matrix[0, 1]))
    src = image
    warp = matrix
    if scale < 0.5:
        # Bilinear sampling skips pixels when shrinking more than 2x: pre-shrink by area.
        r = scale * 1.5
        h, w = image.shape[:2]
        size = (max(1, round(w * r)), max(1, round(h * r)))
        src = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        sx, sy = size[0] / w, size[1] / h
        # crop = M @ image_pt, image_pt = diag(1/sx, 1/sy) @ small_pt
        warp = matrix.copy()
        warp[:, 0] /= sx
        warp[:, 1] /= sy
    interp = cv2.INTER_CUBIC if scale > 1.0 else cv2.INTER_LINEAR
    crop = cv2.warpAffine(src, warp, (out_size, out_size), flags=interp,
                          borderMode=_BORDERS[border])
    return crop, matrix


@dataclass
class AlignedFace:
    """An aligned crop and how it was made.

    ``image``: RGB ``uint8 [out_size, out_size, 3]``; ``matrix``: ``[2, 3]`` image -> crop map;
    ``scale``: crop pixels per image pixel (``> 1`` means the face was enlarged);
    ``landmarks``: the input landmarks mapped into the crop, ``[68, 2]``.
    """

    image: np.ndarray
    matrix: np.ndarray
    scale: float
    landmarks: np.ndarray

    @property
    def upscaled(self) -> bool:
        return self.scale > UPSCALE_WARN


def align_face(image: np.ndarray, landmarks: np.ndarray, out_size: int = 256,
               border: str = "reflect", warn: bool = True) -> AlignedFace:
    """Crop ``image`` (RGB ``uint8 [H, W, 3]``) to the aligned ``out_size`` square.

    ``landmarks``: ``[68, 2]`` ``(x, y)`` in ``image`` pixels. ``border``: ``"reflect"``,
    ``"replicate"`` or ``"constant"`` (black) for crop pixels outside the photo. Issues a
    ``FaceWarning`` when the face is enlarged more than ``UPSCALE_WARN`` times (unless
    ``warn=False``; ``AlignedFace.upscaled`` tells either way).
    """
    params = alignment_params(landmarks)
    crop, matrix = crop_with_params(image, params, out_size, border)
    scale = float(np.hypot(matrix[0, 0], matrix[0, 1]))
    if warn and scale > UPSCALE_WARN:
        warnings.warn(f"small face: upscaled x{scale:.1f}", FaceWarning, stacklevel=2)
    return AlignedFace(crop, matrix, scale, apply_transform(landmarks, matrix))
