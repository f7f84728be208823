"""faces/: alignment geometry, mouth blending, detection, metrics, sequences."""

from __future__ import annotations

import copy
import math
import warnings

import cv2
import numpy as np
import pytest

from faces.align import (
    MOUTH_CENTER_256,
    MOUTH_WIDTH_256,
    align_face,
    alignment_params,
    apply_transform,
    similarity_matrix,
)
from faces.blend import MOUTH_BOX_256, mouth_box, mouth_mix, mouth_mix_many
from faces.io import frame_sort_key, read_image
from faces.landmarks import (
    FaceWarning,
    LandmarkDetector,
    ModelFileError,
    model_path,
    shared_detector,
)
from faces.metrics import (
    SAME_PERSON_THRESHOLD,
    face_descriptor,
    face_landmarks,
    identity_distance,
    landmark_jitter,
    mouth_landmark_distance,
    temporal_jitter,
)
from faces.sequence import align_sequence, smooth_params


@pytest.fixture(scope="module")
def detector() -> LandmarkDetector:
    return shared_detector()


def _ref(shared_faces, name: str) -> np.ndarray:
    return read_image(shared_faces / "ref_img" / f"{name}_256.jpg")


def _synthetic_landmarks(cx=100.0, cy=120.0, width=30.0, angle=0.0) -> np.ndarray:
    """68 points with a known mouth centre, mouth width and eye-line angle."""
    rng = np.random.default_rng(0)
    lm = rng.uniform(-20, 20, size=(68, 2))
    lm[48] = (-width / 2, 0)
    lm[54] = (width / 2, 0)
    lm[50] = (-5, -6)
    lm[57] = (0, 6)
    lm[36:42] = (-25, -50)
    lm[42:48] = (25, -50)
    c, s = math.cos(angle), math.sin(angle)
    lm = lm @ np.array([[c, s], [-s, c]])  # rotate by +angle (y down)
    return lm + (cx, cy)


# -- geometry -----------------------------------------------------------------------------------
@pytest.mark.parametrize("out_size", [256, 128, 64])
def test_similarity_maps_mouth_to_target(out_size):
    lm = _synthetic_landmarks(angle=0.3)
    params = alignment_params(lm)
    assert params[3] == pytest.approx(0.3)
    mapped = apply_transform(lm, similarity_matrix(params, out_size))
    k = out_size / 256
    centre = ((mapped[48, 0] + mapped[54, 0]) / 2, (mapped[50, 1] + mapped[57, 1]) / 2)
    assert centre == pytest.approx((MOUTH_CENTER_256[0] * k, MOUTH_CENTER_256[1] * k), abs=1e-6)
    assert np.linalg.norm(mapped[54] - mapped[48]) == pytest.approx(MOUTH_WIDTH_256 * k)
    eyes = mapped[42:48].mean(0) - mapped[36:42].mean(0)
    assert eyes[1] == pytest.approx(0, abs=1e-9)


def test_align_pads_outside_and_warns_on_upscale():
    image = np.full((60, 60, 3), 90, np.uint8)
    lm = _synthetic_landmarks(cx=5, cy=5, width=8)  # tiny face at the corner
    with pytest.warns(FaceWarning, match="upscaled"):
        aligned = align_face(image, lm)
    assert aligned.image.shape == (256, 256, 3)
    assert aligned.upscaled and aligned.scale == pytest.approx(43 / 8)
    assert (aligned.image == 90).all()  # padded by reflection, no black corners


def test_realign_aligned_face_keeps_geometry(shared_faces, detector):
    for name in ("obama", "leo"):
        image = _ref(shared_faces, name)
        detection = detector.detect(image)
        aligned = align_face(image, detection.landmarks)
        again = detector.detect(aligned.image)
        assert again is not None
        cx, cy, width, angle = alignment_params(again.landmarks)
        assert abs(cx - 128) <= 2 and abs(cy - 160) <= 2, (name, cx, cy)
        assert abs(width - 43) <= 2.5, (name, width)
        assert abs(math.degrees(angle)) < 2.0, (name, math.degrees(angle))


def test_no_face_gives_no_landmarks(detector):
    grey = np.full((200, 240, 3), 127, np.uint8)
    assert detector.detect(grey) is None
    assert face_landmarks(grey, detector) is None


def test_detect_reduced_resolution_matches_full(shared_faces, detector):
    image = cv2.resize(_ref(shared_faces, "wu"), (1024, 1024), interpolation=cv2.INTER_CUBIC)
    reduced = detector.detect(image)  # detects at 640 px, landmarks at 1024 px
    full_res = copy.copy(detector)  # shares the loaded models
    full_res.detect_width = 0
    full = full_res.detect(image)
    assert np.abs(full.landmarks - reduced.landmarks).mean() < 4.0


def test_several_faces_take_largest(shared_faces, detector):
    canvas = np.full((300, 600, 3), 200, np.uint8)
    canvas[20:276, 10:266] = _ref(shared_faces, "obama")
    canvas[80:208, 400:528] = cv2.resize(_ref(shared_faces, "leo"), (128, 128))
    with pytest.warns(FaceWarning, match="2 faces"):
        detection = detector.detect(canvas)
    assert detection.n_faces == 2 and detection.several_faces
    assert detection.box[0] < 300  # the large face on the left


def test_model_path_and_missing_landmarks_file(tmp_path):
    assert model_path("shape_predictor_68_face_landmarks.dat").is_file()
    with pytest.raises(ModelFileError, match="not found"):
        LandmarkDetector(tmp_path / "missing.dat")


# -- blending -----------------------------------------------------------------------------------
def test_mouth_box_scales():
    assert mouth_box(256) == MOUTH_BOX_256
    assert mouth_box(64) == (35, 47, 22, 42)
    assert mouth_box(32) == (17, 24, 11, 21)


def _pair(size: int, shared_faces=None) -> tuple[np.ndarray, np.ndarray]:
    if shared_faces is not None:
        q, s = _ref(shared_faces, "obama"), _ref(shared_faces, "leo")
        return (cv2.resize(q, (size, size), interpolation=cv2.INTER_AREA),
                cv2.resize(s, (size, size), interpolation=cv2.INTER_AREA))
    rng = np.random.default_rng(size)
    yy, xx = np.mgrid[:size, :size]
    q = np.stack([xx, yy, xx + yy], -1) * (200 / (2 * size)) + 20
    s = rng.integers(0, 255, (size, size, 3))
    return q.astype(np.uint8), s.astype(np.uint8)


@pytest.mark.parametrize("size", [256, 64, 32])
def test_mouth_mix_changes_only_the_box(size):
    query, source = _pair(size)
    top, bottom, left, right = mouth_box(size)
    for poisson in (True, False):
        out = mouth_mix(query, source, poisson=poisson)
        assert out.shape == query.shape and out.dtype == np.uint8
        outside = np.ones((size, size), bool)
        outside[top:bottom, left:right] = False
        assert np.array_equal(out[outside], query[outside])
        inside = out[top:bottom, left:right].astype(int)
        assert np.abs(inside - query[top:bottom, left:right]).mean() > 5  # something moved in
        if not poisson:
            assert np.array_equal(out[top:bottom, left:right], source[top:bottom, left:right])


@pytest.mark.parametrize("size", [256, 64, 32])
def test_mouth_mix_carries_source_detail_in_place(size, shared_faces):
    """The blended box has the source's gradients where the source has them (no shift)."""
    query, source = _pair(size, shared_faces)
    top, bottom, left, right = mouth_box(size)
    out = mouth_mix(query, source, gain=False).astype(float)

    def grad_err(dy: int, dx: int) -> float:
        shifted = np.roll(source.astype(float), (dy, dx), axis=(0, 1))
        o = out[top + 1:bottom - 1, left + 1:right - 1]
        s = shifted[top + 1:bottom - 1, left + 1:right - 1]
        return float(np.abs(np.diff(o, axis=1) - np.diff(s, axis=1)).mean()
                     + np.abs(np.diff(o, axis=0) - np.diff(s, axis=0)).mean())

    errors = {(dy, dx): grad_err(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)}
    assert min(errors, key=errors.get) == (0, 0)
    # Closer to the source's detail than the query's own.
    q_err = float(np.abs(np.diff(out[top + 1:bottom - 1, left + 1:right - 1], axis=1)
                         - np.diff(query[top + 1:bottom - 1, left + 1:right - 1].astype(float),
                                   axis=1)).mean())
    assert errors[(0, 0)] < q_err


def test_gain_matched_mix_keeps_a_dark_mouth_dark_on_a_light_face():
    """A dark open mouth on dark skin, cloned onto a light face: the plain seamless clone adds
    the skin difference and the mouth turns pale; the gain-matched clone keeps its contrast."""
    from synthface.face import MouthState, render, sample_identity

    rng = np.random.default_rng(0)
    idents = [sample_identity(rng) for _ in range(40)]
    dark = min(idents, key=lambda i: sum(i.skin))
    light = max(idents, key=lambda i: sum(i.skin))
    source = render(dark, MouthState(0.9, 0.0), 256)
    query = render(light, MouthState(0.0, 0.0), 256)
    truth = render(light, MouthState(0.9, 0.0), 256)
    inner = (slice(150, 170), slice(118, 138))  # inside the open mouth at 256 px
    skin = query[120:135, 60:80].astype(float).mean()
    plain = mouth_mix(query, source, gain=False)[inner].astype(float).mean()
    matched = mouth_mix(query, source)[inner].astype(float).mean()
    dark_truth = truth[inner].astype(float).mean()
    assert abs(matched - dark_truth) < abs(plain - dark_truth)
    assert plain > skin > matched + 20  # the plain clone is paler than the skin, ours darker


def test_mouth_mix_identity_and_edge_box():
    query, _ = _pair(64)
    assert np.abs(mouth_mix(query, query).astype(int) - query).max() <= 1
    # A box touching the image border is fine too.
    query, source = _pair(32)
    out = mouth_mix(query, source, box=(20, 32, 0, 12))
    assert np.array_equal(out[:20], query[:20]) and np.array_equal(out[:, 12:], query[:, 12:])


def test_mouth_mix_many_and_checks():
    query, source = _pair(64)
    many = mouth_mix_many(query, np.stack([source, query]))
    assert many.shape == (2, 64, 64, 3)
    assert np.array_equal(many[0], mouth_mix(query, source))
    with pytest.raises(ValueError, match="differ in size"):
        mouth_mix(query, source[:32, :32])
    with pytest.raises(ValueError, match="uint8"):
        mouth_mix(query.astype(np.float32), source)


# -- metrics ------------------------------------------------------------------------------------
def test_mouth_landmark_distance():
    lm = _synthetic_landmarks()
    assert mouth_landmark_distance(lm, lm) == 0.0
    moved = lm * 1.7 + (40, -12)  # whole face moved and scaled: same mouth shape
    assert mouth_landmark_distance(lm, moved) == pytest.approx(0.0, abs=1e-12)
    wider = lm.copy()
    wider[48:68] = (wider[48:68] - wider[48:68].mean(0)) * 1.3 + wider[48:68].mean(0)
    assert mouth_landmark_distance(lm, wider) > 0.01
    shifted_mouth = lm.copy()
    shifted_mouth[57:60] += (0, 8)  # lower lip only
    assert mouth_landmark_distance(lm, shifted_mouth) > 0.01
    assert math.isnan(mouth_landmark_distance(lm, None))


def test_identity_distance(shared_faces, detector):
    obama = _ref(shared_faces, "obama")
    assert identity_distance(obama, obama, detector) == pytest.approx(0.0, abs=1e-6)
    ref = face_descriptor(obama, detector)

    def dist(image: np.ndarray, aligned: bool = False) -> float:
        return float(np.linalg.norm(face_descriptor(image, detector, aligned) - ref))

    moved = cv2.warpAffine(obama, np.float32([[1.05, 0, -5], [0, 1.05, -3]]), (256, 256),
                           borderMode=cv2.BORDER_REFLECT)
    assert dist(moved) < 0.3
    # Different people: 0.76-1.0 apart on these photos (cook and tim show the same man, 0.38).
    assert dist(_ref(shared_faces, "morgan")) > 0.7 > SAME_PERSON_THRESHOLD
    # Small aligned crops work without detection.
    small = cv2.resize(obama, (64, 64), interpolation=cv2.INTER_AREA)
    assert dist(small, aligned=True) < SAME_PERSON_THRESHOLD
    grey = np.full((128, 128, 3), 127, np.uint8)
    assert math.isnan(identity_distance(grey, obama, detector))
    assert face_descriptor(grey, detector) is None


def test_jitter():
    frame = np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    assert temporal_jitter(np.stack([frame] * 5)) == 0.0
    flicker = np.stack([np.zeros((4, 4, 3), np.uint8), np.full((4, 4, 3), 255, np.uint8)] * 2)
    assert temporal_jitter(flicker) == pytest.approx(1.0)
    assert math.isnan(temporal_jitter(frame[None]))
    lm = _synthetic_landmarks()
    assert landmark_jitter([lm, lm, None, lm]) == 0.0


# -- sequences ----------------------------------------------------------------------------------
def test_smooth_params_fills_gaps():
    params = np.array([[0, 0, 10, 0.0], [9, 9, 9, 9], [2, 4, 40, 0.2], [3, 6, 40, 0.3]])
    valid = np.array([True, False, True, True])
    out = smooth_params(params, valid, window=1)
    assert out[1] == pytest.approx([1, 2, 20, 0.1])  # linear, width geometric
    smoothed = smooth_params(params, valid, window=3)
    assert smoothed.shape == (4, 4) and np.isfinite(smoothed).all()
    with pytest.raises(ValueError):
        smooth_params(params, np.zeros(4, bool))


def test_align_sequence_counts_missing_frames(shared_faces, detector):
    frames = [_ref(shared_faces, "obama")] * 3
    frames.insert(1, np.full((256, 256, 3), 127, np.uint8))
    result = align_sequence(frames, detector, out_size=64, detect_every=1)
    assert len(result.crops) == 4 and result.crops[1].shape == (64, 64, 3)
    assert result.report.missing == 1 and result.report.missing_frames == [1]
    assert result.report.detected == 3
    assert np.allclose(result.params[1], result.params[0])
    with pytest.raises(ValueError, match="no face"):
        align_sequence([frames[1]] * 2, detector)


def test_tracking_matches_detection(shared_faces, detector):
    from faces.io import sorted_frames

    files = sorted_frames(shared_faces / "source_img" / "ellen")[:12]
    frames = [read_image(f) for f in files]
    every = align_sequence(frames, detector, detect_every=1, smooth=1)
    tracked = align_sequence(frames, detector, detect_every=4, smooth=1)
    diff = np.mean([np.abs(a - b).mean() for a, b in zip(every.landmarks, tracked.landmarks,
                                                          strict=True)])
    assert diff < 1.0


def test_frame_sort_key():
    names = ["frame_10.png", "frame_2.png", "001.jpg.jpg", "000.jpg.jpg", "cover.png"]
    assert sorted(names, key=frame_sort_key) == [
        "000.jpg.jpg", "001.jpg.jpg", "frame_2.png", "frame_10.png", "cover.png"]


def test_warnings_are_face_warnings():
    assert issubclass(FaceWarning, UserWarning)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        align_face(np.zeros((300, 300, 3), np.uint8), _synthetic_landmarks(cx=150, cy=150,
                                                                           width=40))
