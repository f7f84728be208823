"""Face detection (dlib HOG) and the 68-point landmark predictor.

Images are RGB ``uint8`` arrays ``[H, W, 3]`` (grey ``[H, W]`` and RGBA are accepted).
Landmarks are ``float64`` arrays ``[68, 2]`` of ``(x, y)`` pixel coordinates in the iBUG 300-W
order dlib uses: jaw 0-16, brows 17-26, nose 27-35, eyes 36-41 / 42-47, mouth 48-67.

Detection is the slow part (tens of milliseconds per frame), so it runs on a copy reduced to
``detect_width`` pixels wide; the found box is scaled back and the predictor runs on the full
resolution image, which keeps the landmark geometry exact.
"""

from __future__ import annotations

import importlib.util
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

__all__ = [
    "Box",
    "Detection",
    "FaceWarning",
    "LandmarkDetector",
    "ModelFileError",
    "as_rgb",
    "model_path",
    "shared_detector",
]

Box = tuple[float, float, float, float]
"""A face box ``(left, top, right, bottom)`` in pixels of the full resolution image."""

LANDMARKS_68 = "shape_predictor_68_face_landmarks.dat"


class ModelFileError(FileNotFoundError):
    """A dlib model file (or the package that ships them) is missing; the message is one line."""


class FaceWarning(UserWarning):
    """Something worth telling the user happened, but the result is usable (several faces,
    strong upscaling)."""


def _import_dlib():
    try:
        # deferred: dlib only for detection and descriptors; alignment and blending work
        # without it installed (and `import faces` skips its ~0.05 s)
        import dlib
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ModelFileError(
            "dlib is not installed: pip install dlib-bin (prebuilt dlib)") from err
    return dlib


def model_path(name: str) -> Path:
    """Path of a dlib model file shipped by the ``face_recognition_models`` package.

    ``name`` is a file name such as ``shape_predictor_68_face_landmarks.dat``. The package is
    located with ``importlib.util.find_spec`` (importing it needs ``pkg_resources``, which new
    setuptools no longer has). Raises ``ModelFileError`` with a one-line message when the package
    or the file is missing.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ModelFileError(
            "face_recognition_models is not installed: pip install face_recognition_models "
            "(it ships the dlib model files), or pass --landmarks PATH to a .dat file")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / name
    if not path.is_file():
        raise ModelFileError(
            f"{name} is missing from face_recognition_models ({path.parent}): "
            "reinstall it with pip install --force-reinstall face_recognition_models")
    return path


def as_rgb(image: np.ndarray) -> np.ndarray:
    """Return ``image`` as a C-contiguous RGB ``uint8`` array ``[H, W, 3]``.

    Grey ``[H, W]`` / ``[H, W, 1]`` is repeated, an alpha channel is dropped. Raises
    ``ValueError`` for other shapes or dtypes.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got dtype {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"expected an image [H, W, 3], got shape {image.shape}")
    return np.ascontiguousarray(image[..., :3])


@dataclass
class Detection:
    """One face: its 68 landmarks, its detector box and how many faces the image held.

    ``landmarks``: ``float64 [68, 2]`` ``(x, y)``. ``box``: ``(left, top, right, bottom)``.
    ``n_faces > 1`` means several faces were found and the largest one was taken.
    """

    landmarks: np.ndarray
    box: Box
    n_faces: int = 1

    @property
    def several_faces(self) -> bool:
        return self.n_faces > 1


class LandmarkDetector:
    """dlib's frontal HOG face detector plus a 68-point shape predictor.

    Args:
        landmarks_path: a dlib 68-point ``.dat`` file; default: the one shipped by
            ``face_recognition_models``.
        detect_width: images wider than this are reduced to this width for detection only
            (the predictor sees full resolution). ``None`` or ``0`` detects at full size.
        upsample_retry: when nothing is found, try once more on a 2x upsampled image
            (finds faces down to about 40 px wide, at four times the cost).

    The detector is not thread-safe to share across processes; create one per worker.
    """

    def __init__(self, landmarks_path: str | Path | None = None, detect_width: int | None = 640,
                 upsample_retry: bool = True) -> None:
        dlib = _import_dlib()
        if landmarks_path is None:
            path = model_path(LANDMARKS_68)
        else:
            path = Path(landmarks_path)
            if not path.is_file():
                raise ModelFileError(
                    f"landmarks file {path} not found: pass a dlib 68-point .dat file "
                    "(e.g. shape_predictor_68_face_landmarks.dat)")
        try:
            self._predictor = dlib.shape_predictor(str(path))
        except RuntimeError as err:
            raise ModelFileError(
                f"landmarks file {path} is not a dlib shape predictor: {err}".splitlines()[0]
            ) from err
        self._detector = dlib.get_frontal_face_detector()
        self._dlib = dlib
        self.landmarks_path = path
        self.detect_width = int(detect_width) if detect_width else 0
        self.upsample_retry = upsample_retry

    # -- detection ---------------------------------------------------------------------------
    def detect_boxes(self, image: np.ndarray) -> list[Box]:
        """All face boxes in full-resolution pixels, largest first (may be empty)."""
        image = as_rgb(image)
        h, w = image.shape[:2]
        scale = 1.0
        small = image
        if self.detect_width and w > self.detect_width:
            scale = self.detect_width / w
            small = cv2.resize(image, (self.detect_width, max(1, round(h * scale))),
                               interpolation=cv2.INTER_AREA)
        rects, _, _ = self._detector.run(small, 0)
        if not rects and self.upsample_retry:
            rects, _, _ = self._detector.run(small, 1)
        boxes = [(r.left() / scale, r.top() / scale, (r.right() + 1) / scale,
                  (r.bottom() + 1) / scale) for r in rects]
        boxes.sort(key=lambda b: (b[2] - b[0]) * (b[3] - b[1]), reverse=True)
        return boxes

    def dlib_shape(self, image: np.ndarray, box: Box):
        """The predictor's raw ``dlib.full_object_detection`` inside ``box`` (what dlib's
        face-recognition model takes)."""
        image = as_rgb(image)
        left, top, right, bottom = (int(round(v)) for v in box)
        rect = self._dlib.rectangle(left, top, max(left + 1, right - 1), max(top + 1, bottom - 1))
        return self._predictor(image, rect)

    def landmarks_in_box(self, image: np.ndarray, box: Box) -> np.ndarray:
        """Run the 68-point predictor inside ``box``; returns ``float64 [68, 2]`` ``(x, y)``."""
        shape = self.dlib_shape(image, box)
        return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)

    def detect(self, image: np.ndarray, warn: bool = True) -> Detection | None:
        """Landmarks of the largest face, or ``None`` when no face is found.

        Several faces: the largest box is taken, ``n_faces`` says how many there were and a
        ``FaceWarning`` is issued (unless ``warn=False``).
        """
        image = as_rgb(image)
        boxes = self.detect_boxes(image)
        if not boxes:
            return None
        if len(boxes) > 1 and warn:
            warnings.warn(f"{len(boxes)} faces found, took the largest", FaceWarning,
                          stacklevel=2)
        return Detection(self.landmarks_in_box(image, boxes[0]), boxes[0], len(boxes))

    __call__ = detect


def shared_detector(landmarks_path: str | Path | None = None,
                    detect_width: int | None = 640) -> LandmarkDetector:
    """A ``LandmarkDetector`` built once per process and argument set (loading the predictor
    takes 1-2 s). Do not change the attributes of the returned object; ``copy.copy`` it."""
    path = None if landmarks_path is None else str(Path(landmarks_path).resolve())
    return _cached_detector(path, int(detect_width) if detect_width else 0)


@lru_cache(maxsize=4)
def _cached_detector(landmarks_path: str | None, detect_width: int) -> LandmarkDetector:
    return LandmarkDetector(landmarks_path, detect_width=detect_width)


def box_from_landmarks(landmarks: np.ndarray, offset: np.ndarray, ratio: float) -> Box:
    """A detector-like box for ``landmarks`` (used to track a face between detections).

    ``offset`` (box centre minus landmark centroid, in units of the landmark size) and
    ``ratio`` (box side over landmark size) are measured on a frame where the detector ran.
    """
    centre, size = _landmark_frame(landmarks)
    cx, cy = centre + offset * size
    half = ratio * size / 2
    return (cx - half, cy - half, cx + half, cy + half)


def box_relation(landmarks: np.ndarray, box: Box) -> tuple[np.ndarray, float]:
    """The ``(offset, ratio)`` that ``box_from_landmarks`` needs, measured on a detection."""
    centre, size = _landmark_frame(landmarks)
    box_centre = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
    side = ((box[2] - box[0]) + (box[3] - box[1])) / 2
    return (box_centre - centre) / size, side / size


def _landmark_frame(landmarks: np.ndarray) -> tuple[np.ndarray, float]:
    lm = np.asarray(landmarks, dtype=np.float64)
    centre = lm.mean(axis=0)
    size = float(max(np.ptp(lm[:, 0]), np.ptp(lm[:, 1]), 1.0))
    return centre, size
