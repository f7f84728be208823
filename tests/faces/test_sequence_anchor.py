"""What a driving sequence's crops follow (``faces.sequence``, ``anchor``): the head by default,
so the mouth's own motion stays in the frames; the mouth (each frame cropped as a photo is) on
request, which scales a spreading mouth back to a fixed width."""

from __future__ import annotations

import numpy as np
import pytest

import preprocess
from bench.sequence_anchor import measure
from faces.align import MOUTH_WIDTH_256, alignment_params, apply_transform, similarity_matrix
from faces.io import read_image, sorted_frames
from faces.landmarks import shared_detector
from faces.sequence import head_anchored, sequence_params, track_landmarks
from synthface.face import MouthState, sample_identity
from synthface.pose import HeadPose
from synthface.scene import landmarks_px

# a mouth that opens, spreads and rounds while the head holds still
STATES = [MouthState(0.0, 0.0), MouthState(0.3, 0.5), MouthState(0.8, 1.0),
          MouthState(0.5, -0.6), MouthState(0.1, -1.0), MouthState(0.0, 0.2)]


def _in_crop(lm: np.ndarray, params: np.ndarray) -> np.ndarray:
    return apply_transform(lm, similarity_matrix(params, 256))


def _width(c: np.ndarray) -> float:
    return float(np.hypot(*(c[54] - c[48])))


def _eyes(c: np.ndarray) -> np.ndarray:
    return np.concatenate([c[36:42].mean(0), c[42:48].mean(0)])


def test_a_still_head_gets_one_crop_and_keeps_the_mouth_motion():
    ident = sample_identity(np.random.default_rng(3))
    pose = HeadPose(yaw=0.2, roll=0.1, scale=1.0, tx=0.01, ty=-0.02)
    lms = [landmarks_px(ident, m, pose) for m in STATES]
    head, valid = sequence_params(lms, smooth=1, anchor="head")
    mouth, _ = sequence_params(lms, smooth=1, anchor="mouth")
    assert valid.all()
    # the head does not move: every frame gets the same crop
    np.testing.assert_allclose(head, np.repeat(head[:1], len(STATES), 0), atol=1e-9)
    # so the mouth's width changes in the crops as it does on the face ...
    widths = np.array([_width(_in_crop(lm, p)) for lm, p in zip(lms, head, strict=True)])
    face = np.array([_width(lm) for lm in lms])
    np.testing.assert_allclose(widths / widths.mean(), face / face.mean(), rtol=1e-9)
    assert widths.std() / widths.mean() > 0.05
    # ... where cropping each frame around its mouth holds it at the fixed width
    held = np.array([_width(_in_crop(lm, p)) for lm, p in zip(lms, mouth, strict=True)])
    np.testing.assert_allclose(held, MOUTH_WIDTH_256, rtol=1e-6)
    # the median frame's mouth is as wide as a mouth-anchored crop makes every one
    assert np.median(widths) == pytest.approx(MOUTH_WIDTH_256, rel=1e-9)


def test_a_moving_head_keeps_its_eyes_in_place():
    """Scale, translation and roll of the head move the crop with the eyes, frame by frame."""
    ident = sample_identity(np.random.default_rng(4))
    poses = [HeadPose(yaw=0.0, roll=r, scale=s, tx=x, ty=0.0)
             for r, s, x in ((0.0, 1.0, 0.0), (0.08, 0.95, 0.02), (-0.05, 1.08, -0.03),
                             (0.02, 0.9, 0.01), (0.1, 1.05, 0.0), (0.0, 1.0, -0.02))]
    lms = [landmarks_px(ident, m, p) for m, p in zip(STATES, poses, strict=True)]
    head, _ = sequence_params(lms, smooth=1, anchor="head")
    eyes = np.stack([_eyes(_in_crop(lm, p)) for lm, p in zip(lms, head, strict=True)])
    np.testing.assert_allclose(eyes, np.repeat(eyes[:1], len(lms), 0), atol=1e-6)


def test_frames_without_landmarks_keep_their_rows_and_the_anchor_is_checked():
    ident = sample_identity(np.random.default_rng(5))
    lms = [landmarks_px(ident, m, HeadPose()) for m in STATES[:3]]
    raw = np.stack([alignment_params(lm) for lm in lms])
    raw_gap = np.vstack([raw[:1], np.full((1, 4), 7.0), raw[1:]])
    out = head_anchored(raw_gap, [lms[0], None, lms[1], lms[2]])
    np.testing.assert_array_equal(out[1], 7.0)
    params, valid = sequence_params([lms[0], None, lms[1], lms[2]], smooth=1)
    assert valid.tolist() == [True, False, True, True]
    np.testing.assert_allclose(params[1], params[0], atol=1e-9)  # filled from its neighbours
    with pytest.raises(ValueError, match="anchor"):
        sequence_params(lms, anchor="nose")
    with pytest.raises(ValueError, match="no face"):
        sequence_params([None, None])


def test_real_driving_video_keeps_the_width_motion(shared_faces):
    """The shared 330-frame talking sequence, first 90 frames: cropped around each frame's
    mouth, the mouth's width in the crops barely varies and the eyes' distance swings with it;
    anchored to the head, the eyes hold still and the width follows the mouth's own (its width
    over the eyes' distance, which no crop changes)."""
    files = sorted_frames(shared_faces / "source_img" / "ellen")[:90]
    lms, _ = track_landmarks([read_image(f) for f in files], shared_detector())
    assert all(lm is not None for lm in lms)
    figures = measure(lms)  # what bench/sequence_anchor.py prints
    stats = {a: (v["width_cv"], v["eye_cv"], v["width_corr"]) for a, v in figures.items()}
    (hw, he, hc), (mw, me, mc) = stats["head"], stats["mouth"]
    assert hw > 2 * mw and he < me / 2 and hc > 0.9 and hc > mc + 0.3, stats


def test_preprocess_takes_the_anchor():
    cfg, _ = preprocess.parse_config(["--source", "clip", "video.mp4"])
    assert cfg.anchor == "head"
    cfg, _ = preprocess.parse_config(["--source", "clip", "video.mp4", "--anchor", "mouth"])
    assert cfg.anchor == "mouth"
    with pytest.raises(SystemExit):
        preprocess.parse_config(["--source", "clip", "video.mp4", "--anchor", "nose"])
