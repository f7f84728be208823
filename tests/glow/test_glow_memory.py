"""Low-memory mode (recompute in backward) and the speed paths of the Glow core.

Every fast path is checked against the straightforward computation: low-memory gradients
against normal-mode gradients, eval-mode fused ActNorm+1x1 conv and cached priors against
training-mode outputs. Tiny shapes, float64.
"""

from __future__ import annotations

import copy

import pytest
import torch

from glow import Coupling, Flow, Glow, fast, memory
from glow.fast import install
from glow.memory import enable_low_memory, reversible_forward


def _glow(affine: bool, conv_lu: bool, seed: int = 0) -> tuple[Glow, torch.Tensor]:
    """A non-trivial tiny Glow (ActNorm initialised, every parameter perturbed) and a batch."""
    torch.manual_seed(seed)
    model = Glow(3, 2, 3, affine=affine, conv_lu=conv_lu, hidden=8, img_size=16).double()
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64) - 0.5
    model.initialize(x)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model, x


def _loss_and_grads(model: Glow, x: torch.Tensor, keep: bool = False):
    x = x.clone().requires_grad_(True)
    log_p, logdet, z = model(x)
    # Touch every output so every gradient path is exercised.
    loss = -(log_p + logdet).mean() + 1e-2 * sum((zi**2).sum() for zi in z)
    if not keep:
        model.zero_grad(set_to_none=True)
    loss.backward()
    return loss.detach(), x.grad, {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("affine,conv_lu", [(False, True), (True, True), (True, False)])
@pytest.mark.parametrize("parts,direct", [(1, False), (1, True), (2, True), (3, False)])
def test_low_memory_gradients_equal_normal(affine: bool, conv_lu: bool, parts: int,
                                           direct: bool, monkeypatch) -> None:
    """Recomputed in parts of the batch or whole; gradients written straight into ``.grad``
    (no process group) or returned through autograd (what DDP needs): the same gradients."""
    monkeypatch.setattr(memory, "RECOMPUTE_PARTS", parts)
    monkeypatch.setattr(fast, "PRODUCTS_MIN_HIDDEN", 1)  # the products, as at hidden 512
    monkeypatch.setattr(memory, "_direct_grads_allowed", lambda: direct)
    model, x = _glow(affine, conv_lu)
    x = torch.cat([x, x.flip(-1)[:1]])  # batch 3: parts of unequal size
    low = enable_low_memory(copy.deepcopy(model))
    loss_a, gx_a, g_a = _loss_and_grads(model, x)
    loss_b, gx_b, g_b = _loss_and_grads(low, x)
    # twice: the second backward adds into the .grad that the first one left
    _, _, g_b2 = _loss_and_grads(low, x, keep=True)
    # the no-grad forward runs the conditioner as modules, the plain one as matrix products:
    # equal to float64 rounding, not bit for bit
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-13, atol=0)
    torch.testing.assert_close(gx_b, gx_a, rtol=1e-9, atol=1e-11)
    assert g_a.keys() == g_b.keys()
    params = dict(low.named_parameters())
    for name in g_a:
        assert g_b[name] is not None, name
        # laid out like the parameter, as autograd's accumulation stores it (fused Adam needs it)
        assert params[name].grad.stride() == params[name].stride(), name
        torch.testing.assert_close(g_b[name], g_a[name], rtol=1e-9, atol=1e-11, msg=name)
        torch.testing.assert_close(g_b2[name], 2 * g_a[name], rtol=1e-9, atol=1e-11, msg=name)


@pytest.mark.parametrize("parts", [1, 2])
def test_grads_ready_hands_over_each_flow_once_with_final_gradients(parts: int,
                                                                     monkeypatch) -> None:
    """Inside ``on_grads_ready`` every flow's parameters reach the callback exactly once, with
    their whole gradient (what a plain backward gives), while the gradients handed over before
    were freed: at no point are more than one flow's gradients alive in the flows."""
    monkeypatch.setattr(memory, "RECOMPUTE_PARTS", parts)
    model, x = _glow(True, True)
    low = enable_low_memory(copy.deepcopy(model))
    _, _, plain = _loss_and_grads(model, x)
    names = {id(p): n for n, p in low.named_parameters()}
    flow_params = {id(p) for b in low.blocks for p in b.flows.parameters()}
    seen: list[str] = []
    alive: list[int] = []

    def ready(params):
        for p in params:
            seen.append(names[id(p)])
            torch.testing.assert_close(p.grad, plain[names[id(p)]], rtol=1e-9, atol=1e-11)
        alive.append(sum(1 for p in low.parameters()
                         if id(p) in flow_params and p.grad is not None))
        for p in params:
            p.grad = None

    low.zero_grad(set_to_none=True)
    with memory.on_grads_ready(ready):
        x2 = x.clone().requires_grad_(True)
        log_p, logdet, z = low(x2)
        (-(log_p + logdet).mean() + 1e-2 * sum((zi**2).sum() for zi in z)).backward()
    assert sorted(seen) == sorted(names[i] for i in flow_params)  # each once, all of them
    per_flow = len(list(low.blocks[0].flows[0].parameters()))
    assert max(alive) == per_flow
    # outside the flows (the learned priors) the gradients stay in .grad, as always
    for n, p in low.named_parameters():
        assert (p.grad is None) == (id(p) in flow_params), n
    # and nothing is handed over outside the context
    low.zero_grad(set_to_none=True)
    _loss_and_grads(low, x)
    assert all(p.grad is not None for p in low.parameters())


def test_grads_ready_leaves_shared_parameters_and_the_autograd_path(monkeypatch) -> None:
    """A parameter used by two layers is not final after the first: it stays in ``.grad``.
    Inside a process group (gradients through autograd, for DDP) nothing is handed over."""
    torch.manual_seed(2)
    flows = install(torch.nn.ModuleList(
        Flow(4, coupling=Coupling(4, affine=True, hidden=8)) for _ in range(2))).double()
    flows[1].coupling = flows[0].coupling  # shared
    x = torch.randn(2, 4, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        for f in flows:
            f.actnorm.initialize(x)
    shared = {id(p) for p in flows[0].coupling.parameters()}
    for direct in (True, False):
        monkeypatch.setattr(memory, "_direct_grads_allowed", lambda d=direct: d)
        got: list[int] = []
        flows.zero_grad(set_to_none=True)
        with memory.on_grads_ready(lambda ps, got=got: got.extend(id(p) for p in ps)):
            y, ld = reversible_forward(flows, x.clone().requires_grad_(True))
            ((y**2).sum() + ld.sum()).backward()
        if direct:
            assert got and not shared & set(got)
            assert len(got) == len(set(got))
        else:
            assert got == []
        assert all(p.grad is not None for p in flows.parameters())
    with memory.on_grads_ready(lambda ps: None), pytest.raises(RuntimeError):
        with memory.on_grads_ready(lambda ps: None):
            pass


def test_low_memory_keeps_state_dict_and_round_trip() -> None:
    model, x = _glow(True, True)
    keys = list(model.state_dict())
    enable_low_memory(model)
    assert list(model.state_dict()) == keys
    for train in (True, False):
        model.train(train)
        with torch.no_grad():
            z = model(x)[2]
            torch.testing.assert_close(model.reverse(z), x, atol=1e-10, rtol=0)
    # With grad enabled too (the recomputing path).
    model.train()
    z = model(x)[2]
    torch.testing.assert_close(model.reverse([zi.detach() for zi in z]), x, atol=1e-10, rtol=0)


def test_low_memory_can_be_switched_off_and_needs_a_block() -> None:
    model, _ = _glow(False, True)
    enable_low_memory(model)
    assert all(b.low_memory for b in model.blocks)
    enable_low_memory(model, enabled=False)
    assert not any(b.low_memory for b in model.blocks)
    with pytest.raises(ValueError):
        enable_low_memory(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("parts,direct", [(1, True), (2, True), (2, False)])
def test_reversible_forward_with_condition(parts: int, direct: bool, monkeypatch) -> None:
    """The conditional use: flows whose couplings take ``cond``; cond gets its gradient."""
    monkeypatch.setattr(memory, "RECOMPUTE_PARTS", parts)
    monkeypatch.setattr(fast, "PRODUCTS_MIN_HIDDEN", 1)  # the products, as at hidden 512
    monkeypatch.setattr(memory, "_direct_grads_allowed", lambda: direct)
    torch.manual_seed(1)
    flows = install(torch.nn.ModuleList(
        Flow(4, coupling=Coupling(4, affine=True, hidden=8, cond_channel=3)) for _ in range(3)
    )).double()
    x = torch.randn(2, 4, 4, 4, dtype=torch.float64)
    cond = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        h = x
        for f in flows:
            f.actnorm.initialize(h)
            h, _ = f(h, cond)
        for p in flows.parameters():
            p.add_(0.05 * torch.randn_like(p))

    def run(low: bool):
        xx, cc = x.clone().requires_grad_(True), cond.clone().requires_grad_(True)
        if low:
            y, ld = reversible_forward(flows, xx, cc)
        else:
            y, ld = xx, xx.new_zeros(2)
            for f in flows:
                y, d = f(y, cc)
                ld = ld + d
        flows.zero_grad(set_to_none=True)
        ((y**2).sum() + ld.sum()).backward()
        return y.detach(), ld.detach(), xx.grad, cc.grad, [p.grad for p in flows.parameters()]

    a, b = run(False), run(True)
    for u, v in zip(a[:4], b[:4], strict=True):
        torch.testing.assert_close(v, u, rtol=1e-9, atol=1e-11)
    for u, v in zip(a[4], b[4], strict=True):
        torch.testing.assert_close(v, u, rtol=1e-9, atol=1e-11)


def test_low_memory_without_grad_is_the_plain_path() -> None:
    model, x = _glow(False, True)
    ref = model(x)
    enable_low_memory(model)
    with torch.no_grad():
        out = model(x)
    torch.testing.assert_close(out[0], ref[0].detach())
    torch.testing.assert_close(out[1], ref[1].detach())


@pytest.mark.parametrize("affine,conv_lu", [(False, True), (True, False)])
def test_eval_fast_paths_equal_training_mode(affine: bool, conv_lu: bool) -> None:
    """Eval mode fuses ActNorm+1x1 conv and caches the top prior; results must not change."""
    model, x = _glow(affine, conv_lu)
    # Small noise: a randomly perturbed model amplifies large latents enormously in reverse.
    noise = [0.1 * torch.randn((2, *s), dtype=torch.float64) for s in model.z_shapes()]
    with torch.no_grad():
        model.train()
        log_p, logdet, z = model(x)
        rec = model.reverse(z)
        smp = model.reverse(noise, reconstruct=False)
        assert torch.isfinite(smp).all()
        model.eval()
        for _ in range(2):  # second pass runs from the caches
            log_p2, logdet2, z2 = model(x)
            torch.testing.assert_close(log_p2, log_p, rtol=1e-12, atol=1e-9)
            torch.testing.assert_close(logdet2, logdet, rtol=1e-12, atol=1e-9)
            for u, v in zip(z, z2, strict=True):
                torch.testing.assert_close(v, u, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(model.reverse(z2), rec, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(model.reverse(noise, reconstruct=False), smp,
                                       rtol=1e-10, atol=1e-12)
    # The channels-last conditioner must not leak its layout into the latents.
    assert z[-1].is_contiguous()


def test_eval_caches_follow_parameter_changes() -> None:
    model, x = _glow(True, True)
    model.eval()
    with torch.no_grad():
        model(x)  # fill the caches
        for p in model.parameters():
            p.add_(0.01)  # in place, as an optimiser step does
        cached = model(x)
        model.train()
        fresh = model(x)
    torch.testing.assert_close(cached[0], fresh[0], rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(cached[1], fresh[1], rtol=1e-12, atol=1e-9)


def test_flow_eval_with_grad_uses_the_differentiable_path() -> None:
    torch.manual_seed(2)
    flow = install(Flow(4, affine=True, hidden=8)).double().eval()
    x = torch.randn(2, 4, 4, 4, dtype=torch.float64)
    y, logdet = flow(x)
    assert y.requires_grad and logdet.requires_grad
    (y.sum() + logdet.sum()).backward()
    assert flow.actnorm.scale.grad is not None and flow.invconv.w_s.grad is not None
