"""Glow core: every bijective layer (round trip, log-det vs autograd Jacobian), caches, loading."""

from __future__ import annotations

import math

import pytest
import torch

from glow import (
    ActNorm,
    CheckpointError,
    Coupling,
    Flow,
    Glow,
    InvConv2d,
    InvConv2dLU,
    Squeeze,
    bits_per_dim,
    dequantize,
    load_glow,
    quantize,
)
from glow.fast import install


def _perturb(module: torch.nn.Module, scale: float = 0.05) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))


def _make(name: str) -> tuple[torch.nn.Module, tuple[int, ...], torch.Tensor | None]:
    """A non-trivial layer (initialised, every parameter perturbed) and its input shape."""
    c = 4
    cond = None
    if name == "actnorm":
        m = ActNorm(c)
    elif name == "invconv":
        m = InvConv2d(c)
    elif name == "invconv_lu":
        m = InvConv2dLU(c)
    elif name == "coupling_additive":
        m = Coupling(c, affine=False, hidden=8)
    elif name == "coupling_affine":
        m = Coupling(c, affine=True, hidden=8)
    elif name == "coupling_cond":
        m = Coupling(c, affine=True, hidden=8, cond_channel=3)
        cond = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    elif name == "flow_affine":
        m = Flow(c, affine=True, conv_lu=True, hidden=8)
    elif name == "flow_plain":
        m = Flow(c, affine=False, conv_lu=False, hidden=8)
    elif name == "squeeze":
        m = Squeeze()
    else:
        raise KeyError(name)
    m = m.double()
    x = torch.randn(2, c, 4, 4, dtype=torch.float64)
    for mod in m.modules():
        if isinstance(mod, ActNorm):
            mod.initialize(x)
    _perturb(m)
    return m, (2, c, 4, 4), cond


LAYERS = ["actnorm", "invconv", "invconv_lu", "coupling_additive", "coupling_affine",
          "coupling_cond", "flow_affine", "flow_plain", "squeeze"]


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("name", LAYERS)
def test_layer_is_bijective_with_exact_logdet(name: str, fast: bool) -> None:
    """Every layer, plain (glow/layers.py) and with its fast twins (glow/fast.py)."""
    torch.manual_seed(0)
    m, shape, cond = _make(name)
    if fast:
        install(m)
    x = torch.randn(*shape, dtype=torch.float64)
    y, logdet = m(x, cond)
    assert logdet.shape == (shape[0],)
    torch.testing.assert_close(m.reverse(y, cond), x, atol=1e-10, rtol=0)
    y2 = torch.randn_like(y)
    torch.testing.assert_close(m(m.reverse(y2, cond), cond)[0], y2, atol=1e-10, rtol=0)
    # The layer is not the identity (parameters were perturbed) ...
    assert name == "squeeze" or not torch.allclose(y, x)
    # ... and its log-det equals log|det J| of the autograd Jacobian, per sample.
    for b in range(shape[0]):
        xb = x[b:b + 1]
        cb = None if cond is None else cond[b:b + 1]
        jac = torch.autograd.functional.jacobian(lambda t, c=cb: m(t, c)[0], xb)
        d = xb.numel()
        expected = torch.linalg.slogdet(jac.reshape(d, d))[1]
        torch.testing.assert_close(logdet[b], expected, atol=1e-8, rtol=1e-8)


def _tiny_glow(affine: bool, conv_lu: bool = True, dtype=torch.float64) -> Glow:
    g = Glow(3, n_flow=2, n_block=2, affine=affine, conv_lu=conv_lu, hidden=8, img_size=4)
    g = g.to(dtype)
    g.initialize(torch.rand(4, 3, 4, 4, dtype=dtype) - 0.5)
    _perturb(g)
    return g


@pytest.mark.parametrize("affine", [False, True])
def test_whole_glow_is_bijective_with_exact_logdet(affine: bool) -> None:
    torch.manual_seed(1)
    g = _tiny_glow(affine)
    x = torch.rand(2, 3, 4, 4, dtype=torch.float64) - 0.5
    log_p, logdet, z = g(x)
    assert log_p.shape == (2,) and logdet.shape == (2,)
    assert [tuple(t.shape[1:]) for t in z] == g.z_shapes(4)
    torch.testing.assert_close(g.reverse(z, reconstruct=True), x, atol=1e-10, rtol=0)

    def flat(t: torch.Tensor) -> torch.Tensor:
        return torch.cat([zz.flatten(1) for zz in g(t)[2]], 1)

    jac = torch.autograd.functional.jacobian(flat, x[:1]).reshape(48, 48)
    torch.testing.assert_close(logdet[0], torch.linalg.slogdet(jac)[1], atol=1e-8, rtol=1e-8)


def test_z_shapes_match_reference_layout() -> None:
    g = Glow(3, n_flow=1, n_block=4, hidden=4, img_size=64)
    assert g.z_shapes() == [(6, 32, 32), (12, 16, 16), (24, 8, 8), (96, 4, 4)]


def test_sampling_and_none_latents_use_the_prior() -> None:
    torch.manual_seed(2)
    g = _tiny_glow(False, dtype=torch.float32).eval()
    s = g.sample(3, temperature=0.7, img_size=4)
    assert s.shape == (3, 3, 4, 4) and torch.isfinite(s).all()
    x = torch.rand(2, 3, 4, 4) - 0.5
    z = g.encode(x)
    # Keeping the top latent and resampling the lower level changes the image but not the top.
    y = g.reverse([None, z[1]], temperature=0.7)
    assert y.shape == x.shape and not torch.allclose(y, x)
    torch.testing.assert_close(g.encode(y)[1], z[1], atol=1e-4, rtol=1e-4)


def test_eval_mode_caches_the_1x1_inverse(monkeypatch) -> None:
    torch.manual_seed(3)
    g = _tiny_glow(False, dtype=torch.float32).eval()
    x = torch.rand(2, 3, 4, 4) - 0.5
    with torch.no_grad():
        z = g.encode(x)
        g.reverse(z)  # warm the caches
        calls = []
        real_inv = torch.linalg.inv
        monkeypatch.setattr(torch.linalg, "inv", lambda a: calls.append(1) or real_inv(a))
        g.reverse(z)
        g.encode(x)
        assert calls == [], "eval-mode inference must not re-invert the 1x1 weights"
        # Loading weights invalidates the cache.
        state = {k: v.clone() for k, v in g.state_dict().items()}
        state["blocks.0.flows.0.invconv.w_s"] += 0.1
        g.load_state_dict(state)
        g.reverse(z)
        assert calls, "new weights must be picked up"
    # Inverse of the cached weight is right.
    lu = g.blocks[0].flows[0].invconv
    w, inv = lu.weight_logdet()[0], lu.inverse()
    torch.testing.assert_close(w.squeeze() @ inv.squeeze(), torch.eye(12), atol=1e-5, rtol=0)
    g.train()
    assert lu._cache is None


def test_quantize_and_bits_per_dim() -> None:
    x = torch.linspace(0, 255, 256).view(1, 1, 16, 16) / 255 - 0.5
    q = quantize(x, 5)
    assert q.unique().numel() == 32 and q.min() >= -0.5 and q.max() < 0.5
    d = dequantize(q, 5)
    assert ((d - q) >= 0).all() and ((d - q) < 1 / 32).all()
    # A uniform density on [-0.5, 0.5]^D (log_p + logdet = 0) costs exactly n_bits per dim.
    bpd = bits_per_dim(torch.zeros(2), torch.zeros(2), 48, 5)
    torch.testing.assert_close(bpd, torch.full((2,), 5.0))
    assert math.isclose(float(bits_per_dim(torch.tensor([-48 * math.log(2)]), torch.zeros(1),
                                           48, 5)), 6.0, rel_tol=1e-6)


# Key names of rosinality/glow-pytorch's Glow(3, 1, 2, affine=False, conv_lu=True), written out
# by hand from that code: the thesis's glow_checkpoint.pt has this layout (with n_flow=32,
# n_block=4).
def _reference_keys(n_block: int, n_flow: int, conv_lu: bool) -> set[str]:
    keys = set()
    for b in range(n_block):
        lu = conv_lu or b == n_block - 1  # the reference always builds its last block with LU
        for f in range(n_flow):
            p = f"blocks.{b}.flows.{f}."
            keys |= {p + "actnorm.loc", p + "actnorm.scale", p + "actnorm.initialized"}
            if lu:
                keys |= {p + "invconv." + n for n in
                         ("w_p", "u_mask", "l_mask", "s_sign", "l_eye", "w_l", "w_s", "w_u")}
            else:
                keys.add(p + "invconv.weight")
            keys |= {p + "coupling.net." + n for n in
                     ("0.weight", "0.bias", "2.weight", "2.bias", "4.conv.weight",
                      "4.conv.bias", "4.scale")}
        keys |= {f"blocks.{b}.prior.conv.weight", f"blocks.{b}.prior.conv.bias",
                 f"blocks.{b}.prior.scale"}
    return keys


@pytest.mark.parametrize("conv_lu", [True, False])
def test_loads_reference_layout_state_dicts(tmp_path, conv_lu: bool) -> None:
    torch.manual_seed(4)
    src = Glow(3, n_flow=2, n_block=2, affine=False, conv_lu=conv_lu, hidden=8, img_size=8,
               conv_lu_last=True)
    src.initialize(torch.rand(4, 3, 8, 8) - 0.5)
    _perturb(src, 0.01)
    state = src.state_dict()
    assert set(state) == _reference_keys(2, 2, conv_lu)
    path = tmp_path / "glow_checkpoint.pt"
    torch.save({"module." + k: v for k, v in state.items()}, path)  # DataParallel prefix
    g = load_glow(path, n_flow=2, n_block=2, affine=False, conv_lu=conv_lu)
    assert not g.training
    x = torch.rand(3, 3, 8, 8) - 0.5
    src.eval()
    with torch.no_grad():
        a, b = src(x), g(x)
        for ta, tb in zip([a[0], a[1], *a[2]], [b[0], b[1], *b[2]], strict=True):
            torch.testing.assert_close(ta, tb, atol=1e-4, rtol=1e-6)
        torch.testing.assert_close(g.reverse(b[2]), x, atol=1e-4, rtol=0)
    with pytest.raises(CheckpointError, match="architecture mismatch"):
        load_glow(path, n_flow=3)


def test_load_glow_errors_are_one_line(tmp_path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x89PNG not a checkpoint")
    with pytest.raises(CheckpointError) as err:
        load_glow(bad)
    assert "\n" not in str(err.value) and str(bad) in str(err.value)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_glow(tmp_path / "missing.pt")
    torch.save({"weights": {"x": torch.zeros(1)}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="neither"):
        load_glow(tmp_path / "other.pt")
