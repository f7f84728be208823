"""The pose flow's reference path: the torch piecewise-affine warp against scikit-image's (the
evaluation's warp baseline) and the identity, and the warp-residual model (``reference="warp"``):
exact inverse, log-det of the shift, the reference in every condition, transfers that start at
the warp."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evaluation.pose import piecewise_affine_warp
from glow import ZeroConv2d
from pose_flow.model import MOTION_SCALE, PoseFlow
from pose_flow.warp import piecewise_affine
from synthface.face import MouthState, render, sample_identity
from synthface.landmarks import face_landmarks


def _face(seed: int, size: int = 32, mouth: MouthState | None = None):
    ident = sample_identity(np.random.default_rng(seed))
    img = render(ident, mouth or MouthState(0.0, 0.5), size)
    return img, face_landmarks(ident, mouth or MouthState(0.0, 0.5)).astype(np.float32)


def _t(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255 - 0.5


def test_identity_warp_returns_the_image():
    img, lm = _face(0)
    x = _t(img)
    out = piecewise_affine(x, torch.from_numpy(lm)[None], torch.from_numpy(lm)[None])
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)


def test_warp_matches_scikit_image_on_a_face_that_moves():
    img, lm = _face(1, size=64)
    rng = np.random.default_rng(3)
    dst = (lm + rng.normal(0, 0.01, lm.shape) + [0.03, -0.02]).astype(np.float32)
    ref = piecewise_affine_warp(img, lm, dst)  # scikit-image, the baseline's implementation
    out = piecewise_affine(_t(img), torch.from_numpy(lm)[None], torch.from_numpy(dst)[None])
    ours = ((out[0].permute(1, 2, 0) + 0.5) * 255).round().clamp(0, 255).byte().numpy()
    err = np.abs(ours.astype(float) - ref.astype(float))
    moved = np.abs(ref.astype(float) - img.astype(float)).mean()
    # the two differ by their pixel-centre conventions only: far closer than to the unwarped
    assert err.mean() < 0.25 * moved, (err.mean(), moved)
    assert err.mean() < 2.0


def test_warp_is_batched_per_image():
    (a, la), (b, lb) = _face(2), _face(4)
    x = torch.cat([_t(a), _t(b)])
    src = torch.from_numpy(np.stack([la, lb]))
    dst = src.flip(0)
    both = piecewise_affine(x, src, dst)
    one = piecewise_affine(x[1:], src[1:], dst[1:])
    torch.testing.assert_close(both[1:], one)


def _model(**kw) -> PoseFlow:
    torch.manual_seed(0)
    return PoseFlow(img_size=16, n_flow=1, n_block=2, n_header=1, hidden=8,
                    **{"reference": "warp", **kw}).double()


def _batch():
    faces = [_face(i, 16, MouthState(0.3 * i, 0.5)) for i in range(3)]
    x = torch.cat([_t(f[0]) for f in faces]).double()
    lm = torch.from_numpy(np.stack([f[1] for f in faces])).double()
    return x, lm


def test_reference_model_is_exactly_invertible_and_the_shift_costs_no_log_det():
    m = _model()
    x, lm = _batch()
    ref = m.warp_reference(x.roll(1, 0), lm.roll(1, 0), lm)
    m.initialize(x, lm, ref)
    log_p, logdet, w, splits, conds = m(x, lm, ref=ref)
    back = m.reverse(w, conds, splits, ref=ref)
    torch.testing.assert_close(back, x, atol=1e-9, rtol=0)
    # the flow on x given ref is the flow on x - ref: same log-det, same latents
    plain = _model()
    plain.load_state_dict(m.state_dict())
    log_p2, logdet2, w2, _, _ = plain(x - ref, conds=conds, ref=torch.zeros_like(ref))
    torch.testing.assert_close(logdet, logdet2)
    torch.testing.assert_close(log_p, log_p2)
    torch.testing.assert_close(w, w2)


def test_every_condition_carries_the_reference():
    m = _model()
    x, lm = _batch()
    c1 = m.conditions(lm, x)
    c2 = m.conditions(lm, x.flip(0))
    assert len(c1) == len(m.blocks)
    for block, a, b in zip(m.blocks, c1, c2, strict=True):
        assert a.shape[1] == block.cond_channel
        assert not torch.equal(a, b), "the reference must reach every block"
    with pytest.raises(ValueError, match="reference"):
        m.conditions(lm)


def test_transfer_to_the_own_pose_of_an_untrained_model_returns_the_image():
    """Untrained (zero-initialised priors and couplings, ActNorm identity), the residual decodes
    to zero, so a transfer is the warp exactly; to the face's own landmarks, the face."""
    m = _model()
    x, lm = _batch()
    with torch.no_grad():
        out = m.transfer(x, lm, lm)
        torch.testing.assert_close(out, x, atol=1e-6, rtol=0)
        moved = lm.roll(1, 0)
        torch.testing.assert_close(m.transfer(x, lm, moved),
                                   m.warp_reference(x, lm, moved), atol=1e-6, rtol=0)


# -- --reference warp_motion: the warp's displacement in the condition -------------------------

def test_warp_motion_is_the_warps_displacement_and_zero_at_rest():
    m = _model(reference="warp_motion")
    x, lm = _batch()
    rest = m.reference_input(x, lm, lm)
    assert rest.shape == (3, 5, 16, 16)
    torch.testing.assert_close(rest[:, :3], x, atol=1e-6, rtol=0)
    torch.testing.assert_close(rest[:, 3:], torch.zeros_like(rest[:, 3:]), atol=1e-6, rtol=0)
    shift = torch.tensor([0.05, -0.03], dtype=lm.dtype)
    moved = m.reference_input(x, lm, lm + shift)
    torch.testing.assert_close(moved[:, :3], m.warp_reference(x, lm, lm + shift))
    # inside the face every triangle moves by the shift: each pixel came from shift away
    for b in range(3):
        cx, cy = ((lm[b, 30] + shift) * 16).floor().long().tolist()  # the nose tip's pixel
        torch.testing.assert_close(moved[b, 3:, cy, cx], -shift * MOTION_SCALE, atol=1e-6,
                                   rtol=0)


def test_warp_motion_flow_inverts_and_starts_as_its_warp():
    m = _model(reference="warp_motion")
    x, lm = _batch()
    ref = m.reference_input(x.roll(1, 0), lm.roll(1, 0), lm)
    conds = m.conditions(lm, ref)
    assert [c.shape[1] for c in conds] == [b.cond_channel for b in m.blocks]
    moved = lm.roll(1, 0)
    with torch.no_grad():  # untrained: the residual decodes to zero, a transfer is the warp
        torch.testing.assert_close(m.transfer(x, lm, moved), m.warp_reference(x, lm, moved),
                                   atol=1e-6, rtol=0)
    m.initialize(x, lm, ref)
    with torch.no_grad():  # as if trained: the zero-initialised outputs move
        for z in m.modules():
            if isinstance(z, ZeroConv2d):
                z.conv.weight.normal_(0, 0.05)
    log_p, logdet, w, splits, conds = m(x, lm, ref=ref)
    torch.testing.assert_close(m.reverse(w, conds, splits, ref=ref), x, atol=1e-9, rtol=0)
    # the motion reaches the flow: the same image warped with another motion scores otherwise
    other = torch.cat([ref[:, :3], ref[:, 3:].flip(0)], 1)
    assert not torch.allclose(m(x, lm, ref=other)[0], log_p)
