"""Face metrics for evaluating generated frames.

* ``mouth_landmark_distance``: how far apart two mouth shapes are (position- and
  size-independent).
* ``identity_distance``: distance between dlib ResNet face descriptors; below
  ``SAME_PERSON_THRESHOLD = 0.6`` dlib considers two faces the same person.
* ``temporal_jitter`` (pixels) and ``landmark_jitter`` (mouth landmarks): frame-to-frame
  change of a sequence.

Extraction that fails (no face, unusable image) gives ``None`` / ``NaN`` instead of raising,
so a batch evaluation keeps going; aggregate with ``np.nanmean``. The dlib models are loaded
once per process on first use.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from PIL import Image

from faces.landmarks import (
    Box,
    LandmarkDetector,
    ModelFileError,
    _import_dlib,
    as_rgb,
    model_path,
    shared_detector,
)

__all__ = [
    "aligned_descriptor",
    "aligned_landmarks",
    "ALIGNED_FACE_BOX_256",
    "SAME_PERSON_THRESHOLD",
    "face_descriptor",
    "face_landmarks",
    "identity_distance",
    "inter_ocular_distance",
    "landmark_jitter",
    "mouth_landmark_distance",
    "mouth_reading",
    "recognizer",
    "temporal_jitter",
    "upscale",
]

SAME_PERSON_THRESHOLD = 0.6
"""dlib's decision threshold on descriptor distance (same person below it)."""

ALIGNED_FACE_BOX_256 = (65.0, 65.0, 190.0, 190.0)
"""Where dlib's detector puts the face box ``(left, top, right, bottom)`` in a 256 px crop of
``faces.align``; used with ``aligned=True`` so small generated crops need no detection."""

RECOGNITION_MODEL = "dlib_face_recognition_resnet_model_v1.dat"


def default_detector() -> LandmarkDetector:
    """One shared ``LandmarkDetector`` with the default model (loaded on first call)."""
    return shared_detector()


@lru_cache(maxsize=1)
def recognizer():
    """dlib's face-recognition ResNet (128-d descriptors), loaded once per process."""
    dlib = _import_dlib()
    return dlib.face_recognition_model_v1(str(model_path(RECOGNITION_MODEL)))


def _aligned_box(image: np.ndarray) -> Box:
    h, w = image.shape[:2]
    left, top, right, bottom = ALIGNED_FACE_BOX_256
    return (left * w / 256, top * h / 256, right * w / 256, bottom * h / 256)


def _face_box(image: np.ndarray, detector: LandmarkDetector, aligned: bool) -> Box | None:
    if aligned:
        return _aligned_box(image)
    boxes = detector.detect_boxes(image)
    return boxes[0] if boxes else None


def face_landmarks(image: np.ndarray, detector: LandmarkDetector | None = None,
                   aligned: bool = False) -> np.ndarray | None:
    """Landmarks ``[68, 2]`` of the largest face in ``image`` (RGB ``uint8 [H, W, 3]``), or
    ``None`` when there is none or the image is unusable.

    ``aligned=True`` skips detection and assumes the crop geometry of ``faces.align`` (works
    on small generated crops, e.g. 64 px, where the HOG detector finds nothing).
    """
    try:
        detector = detector or default_detector()
        image = as_rgb(image)
        box = _face_box(image, detector, aligned)
        return None if box is None else detector.landmarks_in_box(image, box)
    except ModelFileError:
        raise
    except (ValueError, RuntimeError):
        return None


def face_descriptor(image: np.ndarray, detector: LandmarkDetector | None = None,
                    aligned: bool = False) -> np.ndarray | None:
    """The 128-D dlib ResNet descriptor (``float64 [128]``) of the largest face, or ``None``.

    ``aligned`` as in ``face_landmarks``.
    """
    try:
        detector = detector or default_detector()
        image = as_rgb(image)
        box = _face_box(image, detector, aligned)
        if box is None:
            return None
        shape = detector.dlib_shape(image, box)
        return np.array(recognizer().compute_face_descriptor(image, shape), dtype=np.float64)
    except ModelFileError:
        raise
    except (ValueError, RuntimeError):
        return None


def upscale(image: np.ndarray, size: int = 256) -> np.ndarray:
    """Bicubic resize of a square crop to ``size`` (unchanged when it already has that size)."""
    image = np.asarray(image)
    if image.shape[0] == size and image.shape[1] == size:
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC))


def aligned_landmarks(image: np.ndarray, size: int = 256) -> np.ndarray | None:
    """:func:`face_landmarks` of an aligned crop enlarged to ``size`` (:func:`upscale`)."""
    return face_landmarks(upscale(image, size), aligned=True)


def aligned_descriptor(image: np.ndarray, size: int = 256) -> np.ndarray | None:
    """:func:`face_descriptor` of an aligned crop enlarged to ``size`` (:func:`upscale`)."""
    return face_descriptor(upscale(image, size), aligned=True)


def identity_distance(img_a: np.ndarray, img_b: np.ndarray,
                      detector: LandmarkDetector | None = None, aligned: bool = False) -> float:
    """Euclidean distance between the face descriptors of two images (``NaN`` when a face is
    not found). Below ``SAME_PERSON_THRESHOLD`` (0.6) means the same person to dlib; on the
    shared test faces different people are about 0.7-0.9 apart."""
    a = face_descriptor(img_a, detector, aligned)
    if a is None:
        return float("nan")
    b = face_descriptor(img_b, detector, aligned)
    if b is None:
        return float("nan")
    return float(np.linalg.norm(a - b))


def inter_ocular_distance(landmarks: np.ndarray) -> float:
    """Distance between the eye centres (means of points 36-41 and 42-47), in pixels."""
    lm = np.asarray(landmarks, dtype=np.float64)
    return float(np.linalg.norm(lm[36:42].mean(axis=0) - lm[42:48].mean(axis=0)))


def _normalised_mouth(landmarks: np.ndarray) -> np.ndarray:
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape != (68, 2):
        raise ValueError(f"expected landmarks [68, 2], got shape {lm.shape}")
    mouth = lm[48:68]
    return (mouth - mouth.mean(axis=0)) / max(inter_ocular_distance(lm), 1e-6)


def mouth_reading(landmarks: np.ndarray) -> np.ndarray:
    """The mouth's state read from 68 landmarks ``[..., 68, 2]``: ``[..., 2]`` = (opening, width)
    of the inner lips (points 62-66 and 60-64) in inter-ocular distances.

    Position, scale and in-plane rotation of the face drop out; a closed mouth opens about 0.
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape[-2:] != (68, 2):
        raise ValueError(f"expected landmarks [..., 68, 2], got shape {lm.shape}")
    iod = np.linalg.norm(lm[..., 36:42, :].mean(-2) - lm[..., 42:48, :].mean(-2), axis=-1)
    iod = np.maximum(iod, 1e-6)
    opening = np.linalg.norm(lm[..., 66, :] - lm[..., 62, :], axis=-1)
    width = np.linalg.norm(lm[..., 64, :] - lm[..., 60, :], axis=-1)
    return np.stack([opening / iod, width / iod], axis=-1)


def mouth_landmark_distance(lm_a: np.ndarray | None, lm_b: np.ndarray | None) -> float:
    """Mean Euclidean distance between the mouth points (48-67) of two faces.

    Each face's mouth points are centred on their own centroid and divided by that face's
    inter-ocular distance, so the value ignores where the face is and how large, but not
    its rotation. Unit: inter-ocular distances (0 for identical mouths; an open against a
    closed mouth is about 0.1). ``NaN`` when either side is ``None``.
    """
    if lm_a is None or lm_b is None:
        return float("nan")
    diff = _normalised_mouth(lm_a) - _normalised_mouth(lm_b)
    return float(np.linalg.norm(diff, axis=1).mean())


def temporal_jitter(frames: Sequence[np.ndarray] | np.ndarray) -> float:
    """Mean absolute pixel difference between consecutive frames, in ``[0, 1]`` units.

    ``frames``: ``[N, H, W, C]`` (or a sequence of same-size images); ``uint8`` is divided
    by 255, floats are taken as already in ``[0, 1]``. 0 for a constant sequence, ``NaN``
    for fewer than two frames. It measures all change, wanted motion included: compare
    sequences showing the same motion.
    """
    arr = np.asarray(frames)
    if arr.shape[0] < 2:
        return float("nan")
    scale = 255.0 if arr.dtype == np.uint8 else 1.0
    arr = arr.astype(np.float32) / scale
    return float(np.abs(np.diff(arr, axis=0)).mean())


def landmark_jitter(landmarks: Sequence[np.ndarray | None]) -> float:
    """Mean displacement of the mouth points (48-67) between consecutive frames, in
    inter-ocular distances (absolute positions, not centred). Pairs with a ``None`` are
    skipped; ``NaN`` when no pair is left."""
    steps = []
    for a, b in zip(landmarks[:-1], landmarks[1:], strict=True):
        if a is None or b is None:
            continue
        a = np.asarray(a, dtype=np.float64)
        b = np.asarray(b, dtype=np.float64)
        iod = max((inter_ocular_distance(a) + inter_ocular_distance(b)) / 2, 1e-6)
        steps.append(np.linalg.norm(a[48:68] - b[48:68], axis=1).mean() / iod)
    return float(np.mean(steps)) if steps else float("nan")
