"""Posed synthetic faces: landmarks on the drawn geometry, an exactly invertible pose map."""

from __future__ import annotations

import numpy as np
import pytest

from synthface.face import MouthState, _ellipse, render, sample_identity
from synthface.landmarks import face_landmarks, mouth_geometry, mouth_landmarks
from synthface.pose import FRONTAL, HeadPose, pose_map, pose_unmap, render_posed


@pytest.fixture
def ident():
    return sample_identity(np.random.default_rng(3))


def _sd(points, *args):
    """The renderer's signed distance at each point (x, y) -> [N]."""
    y, x = points[:, 1], points[:, 0]
    return np.array([_ellipse(np.array([[yy]]), np.array([[xx]]), *args)[0, 0]
                     for xx, yy in zip(x, y, strict=True)])


def test_jaw_eye_and_lip_points_lie_on_the_drawn_outlines(ident):
    mouth = MouthState(0.6, 0.3)
    lm = face_landmarks(ident, mouth)
    assert lm.shape == (68, 2)
    jaw = lm[:17]
    t = np.clip((jaw[:, 1] - ident.face_cy) / ident.face_ay, 0, 1)
    ax_eff = ident.face_ax * (1 - ident.chin * t**2)
    r = ((jaw[:, 0] - 0.5) / ax_eff) ** 2 + ((jaw[:, 1] - ident.face_cy) / ident.face_ay) ** 2
    np.testing.assert_allclose(r, 1.0, atol=1e-9)
    for side, sl in ((-1, slice(36, 42)), (1, slice(42, 48))):
        d = _sd(lm[sl], ident.eye_y, 0.5 + side * ident.eye_dx, ident.eye_w, ident.eye_h)
        np.testing.assert_allclose(d, 0.0, atol=1e-9)
    g = mouth_geometry(mouth)
    outer = lm[48:60]
    b = np.where(outer[:, 1] < g["cy"], g["a"] + g["upper"], g["a"] + g["lower"])
    r = ((outer[:, 0] - g["cx"]) / g["hw"]) ** 2 + ((outer[:, 1] - g["cy"]) / b) ** 2
    np.testing.assert_allclose(r, 1.0, atol=1e-9)
    d = _sd(lm[60:68], g["cy"], g["cx"], g["hw_inner"], g["b_inner"])
    np.testing.assert_allclose(d, 0.0, atol=1e-9)


def test_mouth_points_follow_the_mouth_state():
    closed, wide_open = mouth_landmarks(MouthState(0, 0)), mouth_landmarks(MouthState(1, 0))
    # lip gap (points 62 and 66, the inner lips' middle) grows with the opening: 2 * 0.042
    gap = lambda m: m[66 - 48, 1] - m[62 - 48, 1]  # noqa: E731
    assert gap(wide_open) - gap(closed) == pytest.approx(2 * 0.042 - 2 * 0.0035)
    spread = mouth_landmarks(MouthState(0, 1))
    assert spread[54 - 48, 0] - spread[0, 0] > closed[54 - 48, 0] - closed[0, 0]


def test_the_drawn_pupil_sits_at_the_eye_landmarks_in_every_pose(ident):
    size = 128
    for pose in (FRONTAL, HeadPose(yaw=0.4, roll=0.15, scale=0.92, tx=0.03, ty=-0.02),
                 HeadPose(yaw=-0.5)):
        img, lm = render_posed(ident, MouthState(), pose, size)
        for sl in (slice(36, 42), slice(42, 48)):
            cx, cy = (lm[sl].mean(0) * size).astype(int)
            assert img[cy, cx].max() < 60, (pose, img[cy, cx])  # the pupil is near black


def test_pose_map_inverts_exactly_and_frontal_is_render(ident):
    pose = HeadPose(yaw=0.45, roll=-0.1, scale=1.05, tx=-0.02, ty=0.03)
    p = face_landmarks(ident)
    np.testing.assert_allclose(pose_unmap(pose_map(p, ident, pose), ident, pose), p, atol=1e-5)
    img, lm = render_posed(ident, MouthState(0.3, 0), FRONTAL, 64)
    np.testing.assert_array_equal(img, render(ident, MouthState(0.3, 0), 64))
    np.testing.assert_allclose(lm, face_landmarks(ident, MouthState(0.3, 0)))
