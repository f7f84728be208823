"""The fast twins of the Glow layers (glow/fast.py) against the plain computation, in float64.

Each fast path (1x1 convolutions as matrix products, ActNorm folded into the 1x1 weight in
training mode, the eval-mode caches, ZeroConv2d's closed-form border correction, the
conditioner as matrix products) is compared with the plain layer of glow/layers.py or the
textbook formula written out here with ``F.conv2d`` and explicit padding, values and gradients.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from glow import fast, layers
from glow.fast import ConditionerNet, border_correction, conv1x1, install
from glow.layers import Flow, InvConv2d, InvConv2dLU, ZeroConv2d, coupling_net

D = torch.float64


def _perturb(module: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial parameters everywhere (zero-initialised convs would hide mistakes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
def test_conv1x1_matches_conv2d(channels_last: bool, with_bias: bool) -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 6, 5, 4, generator=g, dtype=D)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(5, 6, generator=g, dtype=D)
    b = torch.randn(5, generator=g, dtype=D) if with_bias else None
    ref = F.conv2d(x, w[:, :, None, None], b)
    out = conv1x1(x, w, b)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    # a non-contiguous channel slice (what chunk() hands over) takes the general path
    torch.testing.assert_close(conv1x1(x[:, :3], w[:, :3]), F.conv2d(x[:, :3], w[:, :3, None, None]))


@pytest.mark.parametrize("h,w", [(1, 1), (1, 4), (2, 3), (5, 5), (8, 3)])
def test_border_correction_is_the_ones_padding(h: int, w: int) -> None:
    wsum = torch.randn(4, 3, 3, dtype=D, generator=torch.Generator().manual_seed(h * 10 + w))
    border = torch.ones(1, 1, h + 2, w + 2, dtype=D)
    border[:, :, 1:-1, 1:-1] = 0
    ref = F.conv2d(border, wsum[:, None])[0]
    torch.testing.assert_close(border_correction(wsum, h, w), ref, rtol=1e-12, atol=1e-12)


def test_zeroconv_matches_padding_with_ones_values_and_grads() -> None:
    z = install(ZeroConv2d(5, 4)).to(D)
    _perturb(z)
    x = torch.randn(2, 5, 6, 3, dtype=D, requires_grad=True)
    out = z(x)
    conv = z.conv
    ref = F.conv2d(F.pad(x, (1, 1, 1, 1), value=1.0), conv.weight, conv.bias) \
        * torch.exp(3 * z.scale)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(ref)
    params = [x, conv.weight, conv.bias, z.scale]
    got = torch.autograd.grad(out, params, g)
    want = torch.autograd.grad(ref, params, g)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def _plain_conditioner(net: ConditionerNet, x: torch.Tensor) -> torch.Tensor:
    """The conditioner written out: conv3x3 (zero padding), ReLU, conv1x1, ReLU, and the
    ZeroConv2d as a convolution of the input padded with ones, times exp(3 scale)."""
    c1, _, c2, _, zc = net
    h = F.relu(F.conv2d(x, c1.weight, c1.bias, padding=1))
    h = F.relu(F.conv2d(h, c2.weight, c2.bias))
    return F.conv2d(F.pad(h, (1, 1, 1, 1), value=1.0), zc.conv.weight, zc.conv.bias) \
        * torch.exp(3 * zc.scale)


@pytest.mark.parametrize("shape", [(3, 6, 5, 7), (2, 12, 1, 1), (1, 3, 2, 9), (4, 5, 8, 8)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_conditioner_products_match_the_convolutions(shape, channels_last: bool,
                                                     monkeypatch) -> None:
    """The matrix-product conditioner (training on the CPU) against the plain convolutions:
    values, and the gradients of the input and of every parameter, in float64."""
    monkeypatch.setattr(fast, "PRODUCTS_MIN_HIDDEN", 1)  # small nets too, for the test
    n, cin, h, w = shape
    net = install(coupling_net(cin, 2 * cin - 1, hidden=16)).to(D)
    _perturb(net, seed=cin)  # ZeroConv2d starts at zero: nothing would be tested
    x = torch.randn(n, cin, h, w, dtype=D, generator=torch.Generator().manual_seed(2))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    assert net._fast(x)  # the path under test is the one taken
    out, ref = net(x), _plain_conditioner(net, x)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(ref)
    params = [x, *net.parameters()]
    got = torch.autograd.grad(out, params, g)
    want = torch.autograd.grad(ref, params, g)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_conditioner_takes_the_modules_where_the_products_do_not_apply(monkeypatch) -> None:
    """Inference, autocast, forward hooks and narrow nets run the plain modules (hooks must
    fire)."""
    net = install(coupling_net(4, 4, hidden=8))
    x = torch.randn(2, 4, 6, 6, requires_grad=True)
    assert not net._fast(x)  # narrower than PRODUCTS_MIN_HIDDEN
    monkeypatch.setattr(fast, "PRODUCTS_MIN_HIDDEN", 8)
    assert net._fast(x)
    with torch.no_grad():
        assert not net._fast(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not net._fast(x)
    seen = []
    handle = net[2].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    assert not net._fast(x)
    net(x)
    handle.remove()
    assert seen == [torch.Size([2, 8, 6, 6])] and net._fast(x)


def test_conditioner_products_under_vmap(monkeypatch) -> None:
    """Batched Jacobians (``vmap`` over the backward, as MI-flow's log-det test uses) work on
    the products and equal the modules'."""
    monkeypatch.setattr(fast, "PRODUCTS_MIN_HIDDEN", 1)
    net = install(coupling_net(2, 3, hidden=5)).to(D)
    _perturb(net, seed=3)
    x = torch.randn(1, 2, 3, 4, dtype=D)
    got = torch.autograd.functional.jacobian(net, x, vectorize=True)
    want = torch.autograd.functional.jacobian(lambda v: _plain_conditioner(net, v), x,
                                              vectorize=True)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def _plain_flow(flow: Flow, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ActNorm, then the 1x1 conv as F.conv2d, then the coupling: the textbook sequence."""
    an, ic = flow.actnorm, flow.invconv
    h = an.scale * (x + an.loc)
    if isinstance(ic, InvConv2dLU):
        w, ld_w = ic.calc_weight(), ic.w_s.sum()
    else:
        w = ic.weight[:, :, 0, 0]
        ld_w = torch.linalg.slogdet(w)[1]
    h = F.conv2d(h, w[:, :, None, None])
    hw = x.shape[2] * x.shape[3]
    logdet = hw * (torch.log(torch.abs(an.scale)).sum() + ld_w)
    out, det = flow.coupling(h)
    return out, logdet + det


@pytest.mark.parametrize("conv_lu", [True, False])
@pytest.mark.parametrize("affine", [False, True])
def test_training_fold_matches_plain_sequence(conv_lu: bool, affine: bool) -> None:
    torch.manual_seed(0)
    flow = install(Flow(8, affine=affine, conv_lu=conv_lu, hidden=16)).to(D).train()
    x = torch.randn(3, 8, 4, 4, dtype=D)
    flow.actnorm.initialize(x)
    _perturb(flow)
    x = x.clone().requires_grad_(True)
    out, logdet = flow(x)
    ref, ref_ld = _plain_flow(flow, x)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(logdet, ref_ld.expand(3) if ref_ld.dim() == 0 else ref_ld,
                               rtol=1e-10, atol=1e-10)
    g, gl = torch.randn_like(out), torch.randn_like(logdet)
    params = [x, *flow.parameters()]
    got = torch.autograd.grad((out, logdet), params, (g, gl), allow_unused=True)
    want = torch.autograd.grad((ref, ref_ld.expand(3)), params, (g, gl), allow_unused=True)
    for (name, _), a, b in zip([("x", x), *flow.named_parameters()], got, want, strict=True):
        assert (a is None) == (b is None), name
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=name)
    # and the reverse (training mode, used by low-memory backward) still inverts it
    with torch.no_grad():
        torch.testing.assert_close(flow.reverse(out), x, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("cls", [InvConv2d, InvConv2dLU])
def test_training_forward_computes_no_inverse(cls, monkeypatch) -> None:
    layer = install(cls(6)).train()
    flow = install(Flow(6, conv_lu=cls is InvConv2dLU, hidden=8)).train()

    def no_inverse(*a, **k):
        raise AssertionError("an inverse was computed in a training-mode forward")

    monkeypatch.setattr(torch.linalg, "inv", no_inverse)
    x = torch.randn(2, 6, 3, 3)
    out, _ = layer(x)
    out.sum().backward()
    out, _ = flow(x)
    out.sum().backward()


def test_skip_init_loads_the_same_model_without_random_draws(tmp_path) -> None:
    from glow import Glow, load_glow
    from glow.io import skip_init
    from training.checkpoint import save_checkpoint

    torch.manual_seed(0)
    glow = Glow(3, n_flow=2, n_block=2, hidden=8, img_size=8)
    x = torch.rand(4, 3, 8, 8) - 0.5
    glow.initialize(x)
    _perturb(glow)
    path = save_checkpoint(tmp_path / "g.pt", model_name="glow", model_config=glow.config(),
                           train_config={}, weights=glow.state_dict(), with_rng=False)
    plain = load_glow(path)
    state = torch.random.get_rng_state()
    with skip_init():
        fast = load_glow(path)
    assert torch.equal(torch.random.get_rng_state(), state)  # nothing was drawn
    assert not any(t.is_meta for t in [*fast.parameters(), *fast.buffers()])  # all loaded
    assert all(p.requires_grad for p in fast.parameters())
    with torch.no_grad():
        z = plain.encode(x)
        for a, b in zip(z, fast.encode(x), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.testing.assert_close(fast.reverse(z), plain.reverse(z), rtol=0, atol=0)


def _plain_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy with every fast twin turned back into its plain layer (glow/layers.py)."""
    plain = copy.deepcopy(model)
    for m in plain.modules():
        if type(m).__module__ == fast.__name__:
            m.__class__ = type(m).__bases__[-1]
    return plain


def test_install_switches_exact_types_and_keeps_the_state() -> None:
    class Own(layers.ZeroConv2d):
        pass

    torch.manual_seed(0)
    flow, own = Flow(4, hidden=8), Own(2, 2)
    state = {k: v.clone() for k, v in flow.state_dict().items()}
    rng = torch.random.get_rng_state()
    install(flow)
    install(own)
    assert torch.equal(torch.random.get_rng_state(), rng)  # nothing drawn
    assert type(flow) is fast.Flow and type(flow.invconv) is fast.InvConv2dLU
    assert type(flow.coupling.net) is fast.ConditionerNet
    assert type(flow.coupling.net[4]) is fast.ZeroConv2d and type(own) is Own
    assert type(flow.actnorm) is layers.ActNorm and type(flow.coupling) is layers.Coupling
    after = flow.state_dict()
    assert list(after) == list(state) and all(torch.equal(after[k], state[k]) for k in state)
    from glow import Glow
    g = Glow(3, n_flow=1, n_block=2, hidden=8, img_size=8)
    assert all(type(m) not in (layers.Flow, layers.InvConv2d, layers.InvConv2dLU,
                               layers.ZeroConv2d, layers.ConditionerNet) for m in g.modules())


@pytest.mark.parametrize("conv_lu", [True, False])
@pytest.mark.parametrize("affine", [False, True])
def test_eval_caches_and_fused_flow_match_the_plain_layers(conv_lu: bool, affine: bool) -> None:
    """Outside training (cached W, W^-1, the float64 fold of ActNorm into the 1x1 conv) and in
    eval mode with gradients (the differentiable path): forward, log-det and reverse equal the
    plain layers'."""
    torch.manual_seed(1)
    flow = install(Flow(6, affine=affine, conv_lu=conv_lu, hidden=8)).to(D)
    x = torch.randn(3, 6, 4, 5, dtype=D)
    flow.actnorm.initialize(x)
    _perturb(flow)
    flow.eval()
    plain = _plain_copy(flow)
    for m in (flow, flow.invconv):
        ref_y, ref_ld = plain(x) if m is flow else plain.invconv(x)
        for _ in range(2):  # the second pass runs from the caches
            with torch.no_grad():
                y, ld = m(x)
                torch.testing.assert_close(y, ref_y, rtol=1e-12, atol=1e-12)
                torch.testing.assert_close(ld, ref_ld, rtol=1e-12, atol=1e-10)
                torch.testing.assert_close(m.reverse(y), x, rtol=1e-10, atol=1e-12)
                rev = plain.reverse(y) if m is flow else plain.invconv.reverse(y)
                torch.testing.assert_close(m.reverse(y), rev, rtol=1e-10, atol=1e-12)
        y, ld = m(x)  # eval with gradients
        assert y.requires_grad and ld.requires_grad
        torch.testing.assert_close(y, ref_y, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("affine,conv_lu", [(False, True), (True, False)])
def test_whole_glow_matches_the_plain_layers(affine: bool, conv_lu: bool, monkeypatch) -> None:
    """A Glow on its fast twins (as built) against the same Glow on the plain layers: training
    loss and every gradient (conditioner products included), eval latents and reverse."""
    from glow import Glow

    monkeypatch.setattr(fast, "PRODUCTS_MIN_HIDDEN", 1)
    torch.manual_seed(2)
    g = Glow(3, n_flow=2, n_block=2, affine=affine, conv_lu=conv_lu, hidden=8, img_size=8).to(D)
    x = torch.rand(2, 3, 8, 8, dtype=D) - 0.5
    g.initialize(x)
    _perturb(g)
    plain = _plain_copy(g)
    grads = []
    for m in (g, plain):
        log_p, logdet, z = m(x)
        (-(log_p + logdet).mean() + sum((zi ** 2).sum() for zi in z)).backward()
        grads.append({n: p.grad for n, p in m.named_parameters()})
    for n, want in grads[1].items():
        torch.testing.assert_close(grads[0][n], want, rtol=1e-9, atol=1e-11, msg=n)
    g.eval(), plain.eval()
    with torch.no_grad():
        z, ref = g.encode(x), plain.encode(x)
        for a, b in zip(z, ref, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(g.reverse(z), plain.reverse(ref), rtol=1e-10, atol=1e-12)
