"""Aligned crops for a frame sequence (a driving video), stable over time.

Per frame: detect the face (at reduced resolution, every ``detect_every`` frames; in between
the predictor follows the face from the previous frame's landmarks), take the crop parameters
``(cx, cy, mouth_width, angle)`` of ``faces.align.alignment_params``, fill frames without a
face by linear interpolation between their neighbours (the ends copy the nearest frame), and
smooth the parameters with a centred moving average of ``smooth`` frames. Smoothing the
transform, not the pixels, keeps the mouth motion and removes the crop's frame-to-frame shake.

**Anchored to the head, not the mouth** (``anchor="head"``, the default). A single image is
cropped around its mouth: centred on the mouth box, scaled to the mouth's width. Done per frame
of a talking sequence, that crop follows the mouth's own motion: a mouth that spreads is scaled
back to the fixed width, one that opens moves the crop down by half the opening, and smoothing
over a few frames only delays it. So each frame's centre and scale are taken from the eyes
instead (their midpoint and distance, which speech does not move), placed where the sequence's
mouth sits in its median frame: the mouth-box centre's offset from the eyes' midpoint and the
mouth's width, both in eye distances (eye-levelled frame), are the medians over the frames
with a face. The median frame is framed as a mouth-anchored crop frames every one, and the
mouth's opening and width motion stay in the crops. ``anchor="mouth"`` is the per-frame mouth
crop of before (``preprocess.py --anchor mouth``; the hard synthetic set, ``lrw.synthetic
--hard``, is cut that way unless ``--anchor head``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from faces.align import UPSCALE_WARN, alignment_params, crop_with_params
from faces.landmarks import LandmarkDetector, as_rgb, box_from_landmarks, box_relation

__all__ = ["ANCHORS", "SequencePlan", "SequenceReport", "SequenceResult", "align_sequence",
           "crops_of", "head_anchored", "plan_sequence", "sequence_params", "smooth_params",
           "track_landmarks"]

ANCHORS = ("head", "mouth")
"""What a sequence's crops follow (module docstring)."""


@dataclass
class SequenceReport:
    """What happened to a sequence.

    ``frames``: input frames (= output crops); ``detected``: frames with landmarks (by
    detection or tracking); ``missing``: frames without a face, which took their neighbours'
    geometry (``missing_frames`` lists their indices); ``several_faces``: frames where more
    than one face was found (the largest was used); ``max_scale``: largest enlargement.
    """

    frames: int
    detected: int
    missing: int
    missing_frames: list[int] = field(default_factory=list)
    several_faces: int = 0
    max_scale: float = 0.0

    @property
    def upscaled(self) -> bool:
        return self.max_scale > UPSCALE_WARN

    def summary(self) -> str:
        """One line, e.g. ``330 frames, 2 without a face (took neighbours' geometry)``."""
        text = f"{self.frames} frames"
        if self.missing:
            text += f", {self.missing} without a face (took neighbours' geometry)"
        if self.several_faces:
            text += f", {self.several_faces} with several faces (took the largest)"
        if self.upscaled:
            text += f", upscaled up to x{self.max_scale:.1f}"
        return text


@dataclass
class SequenceResult:
    """``crops``: RGB ``uint8 [out_size, out_size, 3]`` per input frame; ``landmarks``: the
    raw per-frame ``[68, 2]`` landmarks or ``None``; ``params``: smoothed ``[N, 4]`` crop
    parameters; ``matrices``: ``[N, 2, 3]`` image -> crop maps."""

    crops: list[np.ndarray]
    landmarks: list[np.ndarray | None]
    params: np.ndarray
    matrices: np.ndarray
    report: SequenceReport


def track_landmarks(frames: Iterable[np.ndarray], detector: LandmarkDetector,
                    detect_every: int = 1,
                    progress: Callable[[int], None] | None = None,
                    ) -> tuple[list[np.ndarray | None], int]:
    """Landmarks ``[68, 2]`` (or ``None``) for every frame, and the count of frames with
    several faces.

    The detector runs on every ``detect_every``-th frame and whenever the previous frame has
    no face; other frames reuse a box placed from the previous frame's landmarks (the box
    offset and size relative to the landmarks are measured at the last detection).
    ``progress`` is called with 1 after each frame.
    """
    if detect_every < 1:
        raise ValueError(f"detect_every must be >= 1, got {detect_every}")
    out: list[np.ndarray | None] = []
    several = 0
    relation: tuple[np.ndarray, float] | None = None
    prev: np.ndarray | None = None
    since_detect = 0
    for frame in frames:
        frame = as_rgb(frame)
        lm = None
        if prev is not None and relation is not None and since_detect < detect_every - 1:
            box = box_from_landmarks(prev, *relation)
            lm = detector.landmarks_in_box(frame, box)
            since_detect += 1
        else:
            boxes = detector.detect_boxes(frame)
            if boxes:
                several += len(boxes) > 1
                lm = detector.landmarks_in_box(frame, boxes[0])
                relation = box_relation(lm, boxes[0])
            since_detect = 0
        out.append(lm)
        prev = lm
        if progress is not None:
            progress(1)
    return out, several


def smooth_params(params: np.ndarray, valid: np.ndarray, window: int = 5) -> np.ndarray:
    """Fill and smooth per-frame crop parameters.

    Args:
        params: ``[N, 4]`` ``(cx, cy, mouth_width, angle)``; rows where ``valid`` is false
            are ignored.
        valid: ``bool [N]``, at least one true.
        window: moving-average length in frames (``<= 1``: no smoothing). The mouth width is
            averaged in log space, so scale changes are treated symmetrically.

    Returns ``[N, 4]``: missing rows linearly interpolated from the nearest valid ones
    (copied at the ends), then smoothed.
    """
    params = np.asarray(params, dtype=np.float64)
    valid = np.asarray(valid, dtype=bool)
    if not valid.any():
        raise ValueError("no frame has a face")
    work = params.copy()
    work[:, 2] = np.log(np.maximum(work[:, 2], 1e-6))
    work[valid, 3] = np.unwrap(work[valid, 3])
    idx = np.arange(len(work))
    for j in range(work.shape[1]):
        work[:, j] = np.interp(idx, idx[valid], work[valid, j])
    if window > 1 and len(work) > 1:
        # deferred: scipy.ndimage costs ~0.35 s at start-up (python -X importtime), and
        # `import faces` (test.py's mouth mix) does not need it
        from scipy.ndimage import uniform_filter1d

        work = uniform_filter1d(work, size=int(window), axis=0, mode="nearest")
    work[:, 2] = np.exp(work[:, 2])
    return work


def _eyes(lm: np.ndarray) -> tuple[np.ndarray, float]:
    """The eyes' midpoint and distance (landmarks 36-41 and 42-47)."""
    left, right = lm[36:42].mean(axis=0), lm[42:48].mean(axis=0)
    return (left + right) / 2, float(np.hypot(*(right - left)))


def head_anchored(raw: np.ndarray, landmarks: Sequence[np.ndarray | None]) -> np.ndarray:
    """``raw`` per-frame ``(cx, cy, mouth_width, angle)`` re-anchored to the eyes (module
    docstring): the angle kept, the centre and width from each frame's eyes and the medians,
    over the frames with landmarks, of the centre's offset and the width in eye distances.
    Rows without landmarks are returned as given."""
    raw = np.asarray(raw, dtype=np.float64)
    out = raw.copy()
    rows = [i for i, lm in enumerate(landmarks) if lm is not None]
    if not rows:
        return out
    offsets, widths, eyes = [], [], {}
    for i in rows:
        mid, dist = _eyes(np.asarray(landmarks[i], dtype=np.float64))
        dist = max(dist, 1e-6)
        cos, sin = np.cos(raw[i, 3]), np.sin(raw[i, 3])
        rot = np.array([[cos, sin], [-sin, cos]])  # to the eye-levelled frame (faces.align)
        offsets.append(((raw[i, :2] - mid) @ rot.T) / dist)
        widths.append(raw[i, 2] / dist)
        eyes[i] = (mid, dist, rot)
    offset, width = np.median(offsets, axis=0), float(np.median(widths))
    for i in rows:
        mid, dist, rot = eyes[i]
        out[i, :2] = mid + (offset * dist) @ rot
        out[i, 2] = width * dist
    return out


def sequence_params(landmarks: Sequence[np.ndarray | None], smooth: int = 5,
                    anchor: str = "head") -> tuple[np.ndarray, np.ndarray]:
    """``(params [N, 4], valid [N])``: the smoothed crop parameters of a sequence's landmarks
    (``None`` where a frame has no face), anchored as ``anchor`` says (module docstring).
    ``ValueError`` when no frame has landmarks or the anchor is unknown."""
    if anchor not in ANCHORS:
        raise ValueError(f"anchor must be one of {', '.join(ANCHORS)}, not {anchor!r}")
    valid = np.array([lm is not None for lm in landmarks], dtype=bool)
    if not valid.any():
        raise ValueError(f"no face found in any of the {len(landmarks)} frames")
    raw = np.zeros((len(landmarks), 4))
    for i, lm in enumerate(landmarks):
        if lm is not None:
            raw[i] = alignment_params(lm)
    if anchor == "head":
        raw = head_anchored(raw, landmarks)
    return smooth_params(raw, valid, smooth), valid


@dataclass
class SequencePlan:
    """Pass one of a streamed sequence (:func:`plan_sequence`): the smoothed crop parameters of
    every frame and what was found. Pass two crops with :func:`crops_of`."""

    params: np.ndarray  # [N, 4]
    landmarks: list[np.ndarray | None]
    report: SequenceReport


def plan_sequence(frames: Iterable[np.ndarray], detector: LandmarkDetector | None = None,
                  smooth: int = 5, detect_every: int = 1,
                  progress: Callable[[int], None] | None = None,
                  anchor: str = "head") -> SequencePlan:
    """Landmarks and smoothed crop parameters for a stream of frames, holding one frame at a
    time (a long video never sits in memory whole); ``anchor``: module docstring.
    ``ValueError`` when there is no frame or no frame has a face."""
    if detector is None:
        detector = LandmarkDetector()
    landmarks, several = track_landmarks(frames, detector, detect_every, progress)
    if not landmarks:
        raise ValueError("the sequence has no frames")
    params, valid = sequence_params(landmarks, smooth, anchor)
    missing = [int(i) for i in np.flatnonzero(~valid)]
    report = SequenceReport(frames=len(landmarks), detected=int(valid.sum()),
                            missing=len(missing), missing_frames=missing,
                            several_faces=several)
    return SequencePlan(params, landmarks, report)


def crops_of(frames: Iterable[np.ndarray], plan: SequencePlan, out_size: int = 256,
             border: str = "reflect") -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Pass two: ``(crop, matrix)`` for each frame of the same stream, in order; updates
    ``plan.report.max_scale``. ``ValueError`` when the stream yields more frames than pass
    one saw."""
    for i, frame in enumerate(frames):
        if i >= len(plan.params):
            raise ValueError(f"the sequence changed between passes ({i + 1} frames or more, "
                             f"{len(plan.params)} before)")
        crop, matrix = crop_with_params(frame, plan.params[i], out_size, border)
        plan.report.max_scale = max(plan.report.max_scale,
                                    float(np.hypot(matrix[0, 0], matrix[0, 1])))
        yield crop, matrix


def align_sequence(frames: Sequence[np.ndarray], detector: LandmarkDetector | None = None,
                   out_size: int = 256, smooth: int = 5, detect_every: int = 1,
                   border: str = "reflect",
                   progress: Callable[[int], None] | None = None,
                   anchor: str = "head") -> SequenceResult:
    """Aligned, temporally smoothed crops for ``frames`` (RGB ``uint8 [H, W, 3]`` each).

    Exactly one crop per input frame. Frames without a face take the interpolated geometry of
    their neighbours and are counted in ``result.report``. Raises ``ValueError`` when no frame
    has a face. ``progress`` is called with 1 per frame for the landmark pass; ``anchor``:
    module docstring.
    """
    if detector is None:
        detector = LandmarkDetector()
    frames = list(frames)
    if not frames:
        raise ValueError("the sequence has no frames")
    landmarks, several = track_landmarks(frames, detector, detect_every, progress)
    params, valid = sequence_params(landmarks, smooth, anchor)
    crops = []
    matrices = np.zeros((len(frames), 2, 3))
    for i, frame in enumerate(frames):
        crop, matrices[i] = crop_with_params(frame, params[i], out_size, border)
        crops.append(crop)
    scales = np.hypot(matrices[:, 0, 0], matrices[:, 0, 1])
    missing = [int(i) for i in np.flatnonzero(~valid)]
    report = SequenceReport(frames=len(frames), detected=int(valid.sum()), missing=len(missing),
                            missing_frames=missing, several_faces=several,
                            max_scale=float(scales.max()))
    return SequenceResult(crops, landmarks, params, matrices, report)

