"""Pose flow: condition maps against hand-computed values, bijectivity and exact log-det of the
conditioned layers, ActNorm/ZeroConv state, the anchor's initialisation bugs not repeated."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from glow import ActNorm, Flow, ZeroConv2d
from pose_flow.conditions import POLYLINES, cond_channels, condition, edge_map, heatmaps
from pose_flow.model import PoseBlock, PoseCoupling, PoseFlow
from synthface.face import sample_identity
from synthface.landmarks import face_landmarks


def _face_lm(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.stack([face_landmarks(sample_identity(np.random.default_rng(
        seed + i))) for i in range(n)])).float()


# -- conditions -------------------------------------------------------------------------------

def test_heatmaps_match_hand_computed_values_at_every_resolution():
    lm = torch.full((1, 68, 2), 0.5)
    lm[0, 1] = torch.tensor([0.25, 0.75])
    for size in (64, 32, 8, 4, 2, 1):
        h = heatmaps(lm, size, sigma=0.1)
        assert h.shape == (1, 68, size, size)
        c = (np.arange(size) + 0.5) / size
        yy, xx = np.meshgrid(c, c, indexing="ij")
        for k, (px, py) in ((0, (0.5, 0.5)), (1, (0.25, 0.75))):
            want = np.exp(-((xx - px) ** 2 + (yy - py) ** 2) / (2 * 0.1**2))
            np.testing.assert_allclose(h[0, k].numpy(), want, rtol=1e-5, atol=1e-7)
    # the two coarsest levels still see the pose (the anchor's are ~1e-11)
    assert heatmaps(lm, 1)[0, 0, 0, 0] == pytest.approx(1.0)
    assert heatmaps(lm, 2)[0, 0, 0, 0] == pytest.approx(math.exp(-6.25), rel=1e-5)


def test_edge_map_is_a_one_pixel_line_at_every_resolution():
    # every polyline spans the same straight line, so together they draw y = 0.3, x in [0.2, 0.8]
    lm = torch.zeros(1, 68, 2)
    for a, b, _ in POLYLINES:
        lm[0, a:b + 1, 0] = torch.linspace(0.2, 0.8, b - a + 1)
    lm[0, :, 1] = 0.3
    for size in (32, 8, 4, 2, 1):
        e = edge_map(lm, size)[0, 0].numpy()
        c = (np.arange(size) + 0.5) / size
        yy, xx = np.meshgrid(c, c, indexing="ij")
        dx = np.maximum(np.maximum(0.2 - xx, xx - 0.8), 0.0)
        d = np.sqrt(dx**2 + (yy - 0.3) ** 2)
        np.testing.assert_allclose(e, np.clip(1 - d * size, 0, 1), atol=1e-5)
    faces = _face_lm(1)
    for size in (64, 32, 16, 8, 4, 2, 1):
        e = edge_map(faces, size)
        assert (e > 0.5).sum() >= min(size * size, max(1, size)), size  # lines at every level
    # closed loops: the segment from point 41 back to 36 is drawn
    lm = torch.full((1, 68, 2), 0.9)
    lm[0, 36], lm[0, 41] = torch.tensor([0.1, 0.1]), torch.tensor([0.1, 0.5])  # 37-40 far away
    e = edge_map(lm, 8)[0, 0]
    assert e[1:4, 0].min() > 0.4  # pixels along x = 0.0625..., y in (0.1, 0.5)


def test_condition_adds_coordinates_below_the_threshold():
    lm = _face_lm(2)
    assert condition(lm, 8, coord_below=8).shape == (2, 69, 8, 8)
    c4 = condition(lm, 4, coord_below=8)
    assert c4.shape == (2, cond_channels(4, 8), 4, 4) == (2, 205, 4, 4)
    np.testing.assert_allclose(c4[:, 69:, 2, 3].numpy(), (lm.reshape(2, -1) * 2 - 1).numpy(),
                               atol=1e-6)


# -- bijectivity and log-det ------------------------------------------------------------------

def _perturb(module: torch.nn.Module, x: torch.Tensor, init) -> None:
    init(x)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, ZeroConv2d):
                for p in m.parameters():
                    p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))


def _check_bijective(fwd, rev, x: torch.Tensor) -> None:
    y, logdet = fwd(x)
    np.testing.assert_allclose(rev(y).detach().numpy(), x.numpy(), atol=1e-9)
    b, d = x.shape[0], x[0].numel()
    jac = torch.autograd.functional.jacobian(lambda v: fwd(v)[0], x).reshape(b, d, b, d)
    for i in range(b):
        want = torch.linalg.slogdet(jac[i, :, i, :])[1]
        assert logdet[i].item() == pytest.approx(want.item(), abs=1e-7)
        assert abs(want.item()) > 1e-3  # non-trivial


@pytest.mark.parametrize("channels", [3, 4, 12])
def test_pose_coupling_and_flow_bijective_with_exact_logdet(channels):
    torch.manual_seed(0)
    size = 4
    cond = condition(_face_lm(2).double(), size, coord_below=8)
    cc = cond.shape[1]
    coupling = PoseCoupling(channels, cc, hidden=8).double()
    flow = Flow(channels, coupling=PoseCoupling(channels, cc, hidden=8)).double()
    x = torch.randn(2, channels, size, size, dtype=torch.float64)
    for layer in (coupling, flow):
        init = (lambda v, f=layer: f.actnorm.initialize(v)) if layer is flow else (lambda v: None)
        _perturb(layer, x, init)
        _check_bijective(lambda v, f=layer: f(v, cond), lambda y, f=layer: f.reverse(y, cond), x)
    # the condition matters: another pose changes the output
    other = condition(_face_lm(2, seed=5).double(), size, coord_below=8)
    assert not torch.allclose(coupling(x, cond)[0], coupling(x, other)[0])


def test_whole_flow_bijective_with_exact_logdet_under_a_condition():
    torch.manual_seed(1)
    m = PoseFlow(img_size=4, n_flow=2, n_block=1, n_header=1, hidden=8).double()
    lm = _face_lm(2).double()
    x = torch.rand(2, 3, 4, 4, dtype=torch.float64) - 0.5
    _perturb(m, x, lambda v: m.initialize(v, lm))
    conds = m.conditions(lm)

    def fwd(v):
        _, logdet, w, splits, _ = m(v, conds=conds)
        return torch.cat([w.flatten(1), *[s.flatten(1) for s in splits]], 1), logdet

    def rev(y):
        w_dim = math.prod(m.w_shape)
        w = y[:, :w_dim].reshape(-1, *m.w_shape)
        s = y[:, w_dim:].reshape(-1, *m.split_shapes()[0])
        return m.reverse(w, conds, [s])

    _check_bijective(fwd, rev, x)


def test_split_block_prior_depends_on_the_condition():
    torch.manual_seed(0)
    block = PoseBlock(3, 1, 8, cond_channels(4, 8), squeeze=True, split=True,
                      prior="learned", size=4)
    with torch.no_grad():
        block.prior.conv.weight.normal_(0, 0.1)
    kept = torch.randn(2, 6, 4, 4)
    a = block.prior_params(kept, condition(_face_lm(2), 4))[0]
    b = block.prior_params(kept, condition(_face_lm(2, seed=7), 4))[0]
    assert not torch.allclose(a, b)


def test_non_linear_split_prior_starts_at_zero_and_stays_invertible():
    """--prior_hidden N: each split prior is a conditioner network; at construction it gives
    N(0, 1) like the linear one, after training it is a non-linear function of the condition,
    and the flow still inverts exactly."""
    torch.manual_seed(0)
    m = PoseFlow(img_size=8, n_flow=1, n_block=2, n_header=1, hidden=8, prior_hidden=6).double()
    priors = [b.prior for b in m.blocks if b.prior is not None]
    assert len(priors) == 2 and all(isinstance(p, torch.nn.Sequential) for p in priors)
    assert all(p[0].out_channels == 6 for p in priors)
    lm = _face_lm(2).double()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64) - 0.5
    conds = m.conditions(lm)
    out = x
    for b, c in zip(m.blocks, conds, strict=True):
        out, _, z = b(out, c)
        if b.split:
            mean, log_sd = b.prior_params(out, c)
            assert float(mean.abs().max()) == 0 and float(log_sd.abs().max()) == 0
    _perturb(m, x, lambda v: m.initialize(v, lm))
    with torch.no_grad():
        for p in priors:
            p[4].conv.weight.normal_(0, 0.1)
    _, _, w, splits, _ = m(x, conds=conds)
    assert torch.allclose(m.reverse(w, conds, splits), x, atol=1e-10)
    # the prior mean is not linear in the condition: f(a) + f(b) != f(a + b) - f(0)
    b1 = m.blocks[1]
    kept = torch.randn(2, 6, 4, 4, dtype=torch.float64)  # 12 channels at 4 px, half kept
    ca, cb = conds[1], torch.randn_like(conds[1])
    f = lambda c: b1.prior_params(kept, c)[0]  # noqa: E731
    assert not torch.allclose(f(ca) + f(cb), f(ca + cb) + f(torch.zeros_like(ca)))
    with pytest.raises(ValueError, match="prior_hidden"):
        PoseFlow(img_size=8, n_flow=1, n_block=1, n_header=1, hidden=8, prior="standard",
                 prior_hidden=4)


# -- state: explicit init, buffers, zero convs ------------------------------------------------

def test_initialized_state_survives_save_and_load(tmp_path):
    from training.checkpoint import load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    m = PoseFlow(img_size=8, n_flow=1, n_block=1, n_header=1, hidden=8)
    assert not m.initialized
    x, lm = torch.rand(4, 3, 8, 8) - 0.5, _face_lm(4)
    m.initialize(x, lm)
    assert m.initialized
    save_checkpoint(tmp_path / "c.pt", model_name="pose-flow", model_config=m.config(),
                    train_config=None, weights=m.state_dict())
    fresh = PoseFlow(**load_checkpoint(tmp_path / "c.pt")["config"]["model"])
    fresh.load_state_dict(load_checkpoint(tmp_path / "c.pt")["weights"])
    assert fresh.initialized
    # nothing re-initialises on a forward pass after loading (the anchor's flags were not
    # buffers, so a loaded model re-ran its data init on the first batch)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    fresh(torch.rand(4, 3, 8, 8) * 2, lm)
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert torch.allclose(fresh(x, lm)[0], m(x, lm)[0])


def test_construction_keeps_zero_convs_zero_and_actnorm_identity():
    m = PoseFlow(img_size=8, n_flow=2, n_block=1, n_header=1, hidden=8)
    zcs = [z for z in m.modules() if isinstance(z, ZeroConv2d)]
    assert zcs and all(float(z.conv.weight.detach().abs().max()) == 0 for z in zcs)
    assert all(torch.equal(a.scale, torch.ones_like(a.scale))
               for a in m.modules() if isinstance(a, ActNorm))
    # so a fresh flow's couplings are identities: reverse(w, other pose) == x exactly is not
    # required, but the split priors start at N(0, 1)
    assert float(m.w_log_sd.detach().abs().max()) == 0


# -- the fast paths compute what glow's layers compute ---------------------------------------

@pytest.mark.parametrize("size", [1, 2, 3])
def test_small_map_zero_conv_matches_glow_values_and_gradients(size):
    from pose_flow.model import SmallMapZeroConv

    torch.manual_seed(0)
    ref, fast = ZeroConv2d(5, 4).double(), SmallMapZeroConv(5, 4).double()
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.3)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(3, 5, size, size, dtype=torch.float64, requires_grad=True)
    g = torch.randn(3, 4, size, size, dtype=torch.float64)
    grads = []
    for layer in (ref, fast):
        out = layer(x)
        grads.append(torch.autograd.grad((out * g).sum(), [x, *layer.parameters()]))
        grads[-1] = (out.detach(), *grads[-1])
    for a, b in zip(*grads, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-10)


@pytest.mark.parametrize("shape", [(2, 12, 1, 1), (3, 12, 4, 4), (2, 40, 2, 2)])
def test_factor_lu_conv_matches_glow_values_gradients_and_inverse(shape):
    from glow import InvConv2dLU
    from pose_flow.model import FactorInvConvLU

    torch.manual_seed(1)
    c = shape[1]
    ref, fast = InvConv2dLU(c).double(), FactorInvConvLU(c).double()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.1 * torch.randn_like(p))
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(*shape, dtype=torch.float64)
    g = torch.randn(*shape, dtype=torch.float64)
    res = []
    for layer in (ref, fast):
        y, logdet = layer(x)
        res.append((y.detach(), logdet.detach(),
                    *torch.autograd.grad((y * g).sum() + logdet.sum(), list(layer.parameters()))))
    for a, b in zip(*res, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-10)
    np.testing.assert_allclose(fast.reverse(res[1][0]).detach().numpy(), x.numpy(), atol=1e-10)


# -- mirror-averaged rendering (--mirror) ------------------------------------------------------

@pytest.mark.parametrize("reference", ["none", "warp"])
def test_mirror_averaged_transfer_is_exactly_mirror_equivariant(reference):
    from pose_flow.conditions import mirror, mirror_landmarks

    torch.manual_seed(0)
    m = PoseFlow(img_size=16, n_flow=1, n_block=2, n_header=1, hidden=8,
                 reference=reference).double().eval()
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64) - 0.5
    ls, lt = _face_lm(2, 0).double(), _face_lm(2, 5).double()
    with torch.no_grad():
        # ActNorm's data-dependent start, then weights that no symmetry keeps
        m.encode(x, ls, ref=None if reference == "none" else m.reference_input(x, ls, ls))
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
        xm, lsm = mirror(x, ls)
        ltm = mirror_landmarks(lt)
        plain, plain_m = m.transfer(x, ls, lt), m.transfer(xm, lsm, ltm)
        avg, avg_m = m.transfer(x, ls, lt, mirror=True), m.transfer(xm, lsm, ltm, mirror=True)
    # the flow alone is not equivariant: mirroring the input does not mirror its output ...
    assert (plain_m - plain.flip(-1)).abs().max() > 1e-3
    # ... the average of both renderings is, to rounding, and it is their mean
    torch.testing.assert_close(avg_m, avg.flip(-1), rtol=0, atol=1e-12)
    torch.testing.assert_close(avg, (plain + plain_m.flip(-1)) / 2, rtol=0, atol=1e-12)
    with torch.no_grad():
        # off: the rendering as before, bit for bit
        assert torch.equal(m.transfer(x, ls, lt, mirror=False), plain)
        # the driving path (one appearance, rows picked and repeated) renders the same frames
        app = m.appearance(x, ls, mirror=True)
        rows = m.render(m.select_appearance(app, 1, 2), lt)
    torch.testing.assert_close(rows[1], avg[1], rtol=0, atol=1e-12)


def test_mirror_landmarks_is_an_involution_that_keeps_meanings():
    from pose_flow.conditions import mirror_landmarks

    lm = _face_lm(3)
    back = mirror_landmarks(mirror_landmarks(lm))
    torch.testing.assert_close(back, lm, rtol=0, atol=1e-7)
    m = mirror_landmarks(lm)
    # the mirrored face's left eye (36-41) is the image-mirrored right eye (42-47)
    torch.testing.assert_close(m[:, 36:42, 0].mean(1), 1 - lm[:, 42:48, 0].mean(1), rtol=0,
                               atol=1e-6)
