"""Faces without models: dlib detection and 68 landmarks, the aligned crop geometry, mouth
blending, face metrics.

Images are RGB ``uint8`` arrays ``[H, W, 3]``; landmarks are ``float64 [68, 2]`` ``(x, y)``.
dlib is imported only when a detector or descriptor is first built, so alignment and
blending work without it. Nothing here imports model code.
"""

from __future__ import annotations

from faces.align import (
    MOUTH_CENTER_256,
    MOUTH_WIDTH_256,
    AlignedFace,
    align_face,
    alignment_params,
    crop_with_params,
)
from faces.blend import MOUTH_BOX_256, mouth_box, mouth_mix, mouth_mix_many
from faces.landmarks import (
    Detection,
    FaceWarning,
    LandmarkDetector,
    ModelFileError,
    model_path,
)
from faces.metrics import (
    SAME_PERSON_THRESHOLD,
    identity_distance,
    mouth_landmark_distance,
    temporal_jitter,
)
from faces.sequence import SequenceReport, SequenceResult, align_sequence

__all__ = [
    "MOUTH_BOX_256",
    "MOUTH_CENTER_256",
    "MOUTH_WIDTH_256",
    "SAME_PERSON_THRESHOLD",
    "AlignedFace",
    "Detection",
    "FaceWarning",
    "LandmarkDetector",
    "ModelFileError",
    "SequenceReport",
    "SequenceResult",
    "align_face",
    "align_sequence",
    "alignment_params",
    "crop_with_params",
    "identity_distance",
    "model_path",
    "mouth_box",
    "mouth_landmark_distance",
    "mouth_mix",
    "mouth_mix_many",
    "temporal_jitter",
]
