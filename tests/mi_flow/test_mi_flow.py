"""MI-flow: bijection and log-det, conditional priors, the CLUB estimator and its gradient
paths, a tiny training run, generate() in both modes, thesis state dicts."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from conftest import run_device
from PIL import Image

from glow import ActNorm, ZeroConv2d, gaussian_log_p
from mi_flow import CLUB, MIFlow, mask_condition, mouth_window
from mi_flow.recipe import RECIPE as R
from training.checkpoint import save_checkpoint
from training.config import TrainConfig
from training.loop import StepContext, step_generator
from training.recipe_helpers import dequantised

DEVICE = str(run_device())  # the tests that train or run test.py (pytest --device)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors gain nothing from threads, and on a shared 2-core machine OpenMP threads
    contending with other processes make each step many times slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _perturb(module: torch.nn.Module, scale: float = 0.05) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))


def _model(dtype=torch.float64, size: int = 8, init: bool = True, **kw) -> MIFlow:
    """A tiny non-trivial MI-flow: ActNorm initialised, every parameter perturbed."""
    torch.manual_seed(0)
    args = dict(n_flow=2, n_block=2, hidden=16, img_size=size)
    args.update(kw)
    m = MIFlow(3, **args).to(dtype)
    if init:
        m.initialize(torch.rand(6, 3, size, size, dtype=dtype) - 0.5)
    _perturb(m)
    return m.eval()


def _flat(z_list) -> torch.Tensor:
    return torch.cat([z.flatten(1) for z in z_list], 1)


def test_mouth_window_scales_with_size():
    assert mouth_window(64) == (31, 47, 21, 42)
    assert mouth_window(32) == (15, 24, 10, 21)
    x = torch.randn(2, 3, 32, 32)
    c = mask_condition(x)
    assert torch.equal(c[:, :, 15:24, 10:21], x[:, :, 15:24, 10:21])
    c[:, :, 15:24, 10:21] = 0
    assert not c.any()


@pytest.mark.parametrize("affine,conv_lu,prior_kept", [
    (False, True, False), (True, True, False), (True, False, True)])
def test_round_trip_and_logdet(affine, conv_lu, prior_kept):
    m = _model(affine=affine, conv_lu=conv_lu, prior_kept=prior_kept)
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64) - 0.5
    log_p, logdet, log_c, z_list, conds = m(x)
    assert log_p.shape == logdet.shape == log_c.shape == (2,)
    # exact inversion, under x's conditions and under any other (given latents are used as is)
    assert torch.allclose(m.reverse(z_list, conds), x, atol=1e-10)
    other = m.conditions(torch.rand_like(x) - 0.5)
    assert torch.allclose(m.reverse(z_list, other), x, atol=1e-10)
    # log-det of x -> z against the autograd Jacobian, one sample at a time
    for i in range(2):
        xi = x[i:i + 1]
        jac = torch.autograd.functional.jacobian(lambda v: _flat(m(v)[3]), xi, vectorize=True)
        jac = jac.reshape(xi.numel(), xi.numel())
        _, ref = torch.linalg.slogdet(jac)
        assert torch.allclose(logdet[i], ref, atol=1e-8), (logdet[i].item(), ref.item())


def test_log_likelihood_matches_definition():
    """log_c is the split latents' density under the conditional priors of x's conditions."""
    m = _model(prior_kept=True)
    x = torch.rand(3, 3, 8, 8, dtype=torch.float64) - 0.5
    log_p, _, log_c, z_list, conds = m(x)
    kept = m.blocks[0].flow_forward(x)[0].chunk(2, 1)[0]
    mean, log_sd = m.blocks[0].prior_params(conds[0], kept)
    assert torch.allclose(log_c, gaussian_log_p(z_list[0], mean, log_sd).flatten(1).sum(1))
    mean, log_sd = m.blocks[1].prior_params(None, None, like=z_list[1])
    assert torch.allclose(log_p, gaussian_log_p(z_list[1], mean, log_sd).flatten(1).sum(1))


def test_conditional_prior_depends_on_mouth_only():
    m = _model(init=False)
    block = m.blocks[0]
    with torch.no_grad():  # zero-initialised: the prior ignores c before training
        block.prior_c.conv.weight.zero_()
        block.prior_c.conv.bias.zero_()
        block.prior_c.scale.zero_()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64) - 0.5
    z = torch.randn(2, 6, 4, 4, dtype=torch.float64)

    def log_p_split(img):
        mean, log_sd = block.prior_params(m.conditions(img)[0], None)
        return gaussian_log_p(z, mean, log_sd).flatten(1).sum(1)

    y = x.clone()
    t, b, left, r = mouth_window(8)
    y[:, :, t:b, left:r] = torch.rand_like(y[:, :, t:b, left:r]) - 0.5  # another mouth
    assert torch.allclose(log_p_split(x), log_p_split(y))
    _perturb(block.prior_c, 0.2)
    assert not torch.allclose(log_p_split(x), log_p_split(y))
    outside = x.clone()
    outside[:, :, :t] = torch.rand_like(outside[:, :, :t]) - 0.5  # same mouth, other face
    assert torch.allclose(log_p_split(x), log_p_split(outside))


def _fit_club(z: torch.Tensor, c: torch.Tensor, steps: int = 300) -> CLUB:
    torch.manual_seed(1)
    est = CLUB(z.shape[1], c.shape[1], hidden=32)
    opt = torch.optim.Adam(est.parameters(), lr=3e-3)
    for _ in range(steps):
        idx = torch.randint(0, z.shape[0], (64,))
        loss = est.learning_loss(z[idx], c[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return est


@pytest.mark.parametrize("sample", [False, True])
def test_club_estimate_rises_with_dependence(sample):
    g = torch.Generator().manual_seed(0)
    c_dim, z_dim = 3, 12

    def draw(n, dependent):
        c = 0.2 * torch.randn(n, c_dim, generator=g)
        z = torch.randn(n, z_dim, generator=g)
        if dependent:  # the latent reveals c
            z[:, :c_dim] = 5 * c + 0.1 * torch.randn(n, c_dim, generator=g)
        return z, c

    estimates = {}
    for dependent in (False, True):
        est = _fit_club(*draw(1024, dependent))
        est.sample = sample
        z, c = draw(256, dependent)  # held out
        with torch.no_grad():
            estimates[dependent] = est.mi_upper(
                z, c, generator=torch.Generator().manual_seed(0)).item()
    # true MI: 0 and 3 * 0.5 * log(1 + (5 * 0.2 / 0.1)^2) = 6.9 nats
    assert estimates[True] > 3.0 and abs(estimates[False]) < 0.5, estimates


def test_club_gradient_paths():
    est = CLUB(8, 3, hidden=16)
    z = torch.randn(5, 8, requires_grad=True)
    c = torch.randn(5, 3)
    params = list(est.parameters())
    g = torch.autograd.grad(est.mi_upper(z, c), [z, *params], allow_unused=True)
    assert g[0] is not None and g[0].abs().sum() > 0
    assert all(gi is None for gi in g[1:])  # the penalty never trains the estimator
    g = torch.autograd.grad(est.learning_loss(z, c), [z, *params], allow_unused=True)
    assert g[0] is None  # the estimator's loss never reaches the flow
    assert all(gi is not None for gi in g[1:])


def _ctx(cfg: R.Config, step: int = 0) -> StepContext:
    return StepContext(step=step, rank=0, world=1, device=torch.device("cpu"), model_cfg=cfg,
                       train_cfg=TrainConfig(), generator=step_generator(0, step))


def test_losses_route_gradients():
    """The MI penalty moves the flow, the estimator's NLL moves the estimator, nothing else."""
    cfg = R.Config(n_flow=2, n_block=2, hidden=16, img_size=16, mi_weight=0.1)
    torch.manual_seed(0)
    m = R.build(cfg)
    batch = (torch.rand(4, 3, 16, 16) - 0.5, torch.zeros(4, dtype=torch.long))
    R.initialize(m, batch, _ctx(cfg))
    _perturb(m)
    terms = R.losses(m, batch, _ctx(cfg))
    assert set(R.loss_weights(cfg)) <= set(terms)
    assert {"bpd", "cond_bpd", "recon", "mi", "mi_q_nll"} <= set(terms)
    flow, est = m.flow_parameters(), list(m.mi.parameters())

    def grads(term):
        return torch.autograd.grad(terms[term], flow + est, allow_unused=True,
                                   retain_graph=True)

    g = grads("mi")
    assert any(gi is not None and gi.abs().sum() > 0 for gi in g[:len(flow)])
    assert all(gi is None for gi in g[len(flow):])
    g = grads("mi_q_nll")
    assert all(gi is None for gi in g[:len(flow)])
    assert all(gi is not None for gi in g[len(flow):])
    g = grads("bpd")
    assert all(gi is None for gi in g[len(flow):])
    # thesis defaults: no estimator at all, three terms
    base = R.Config()
    assert R.loss_weights(base) == {"bpd": 1.0, "cond_bpd": 0.0, "recon": 1.0}
    assert R.build(R.Config(n_flow=1, n_block=2, hidden=8, img_size=16)).mi is None


def test_bpd_plus_beta_is_the_thesis_loss():
    cfg = R.Config(n_flow=2, n_block=2, hidden=16, img_size=16, beta=0.5)
    torch.manual_seed(0)
    m = R.build(cfg)
    batch = (torch.rand(3, 3, 16, 16) - 0.5, torch.zeros(3, dtype=torch.long))
    R.initialize(m, batch, _ctx(cfg))
    _perturb(m)
    terms = R.losses(m, batch, _ctx(cfg, 3))
    x = dequantised(batch[0], cfg.n_bits, _ctx(cfg, 3))
    log_p, logdet, log_c, _, _ = m(x)
    d = x[0].numel()
    thesis = -(-np.log(2.0**cfg.n_bits) * d + logdet + log_p + (cfg.beta + 1) * log_c)
    thesis = (thesis / (np.log(2) * d)).mean()
    total = sum(w * terms[k] for k, w in R.loss_weights(cfg).items() if k != "recon")
    assert torch.allclose(total, thesis, atol=1e-5)


def _face_folder(root, n: int = 24, size: int = 16):
    from lrw.synthetic import MouthState, render, sample_identity

    rng = np.random.default_rng(0)
    ids = [sample_identity(rng) for _ in range(4)]
    folder = root / "train" / "WORD"
    folder.mkdir(parents=True)
    for i in range(n):
        img = render(ids[i % 4], MouthState(float(rng.uniform(0, 1)), float(rng.uniform(-1, 1))),
                     size)
        Image.fromarray(img).save(folder / f"WORD_{i:05d}_01.png")
    return root / "train"


@pytest.mark.slow
def test_tiny_training_run_lowers_the_loss(tmp_path):
    from training.loop import train

    data = _face_folder(tmp_path)
    # the estimator is trained and logged (--mi_monitor) without steering the flow
    cfg = R.Config(n_flow=2, n_block=2, hidden=16, img_size=16, mi_monitor=True, n_sample=4)
    tcfg = TrainConfig(name="mi", batch=4, iter=60, lr=1e-3, device=DEVICE, workers=0,
                       sample_every=30, save_every=0, log_every=1, progress=False,
                       checkpoint_dir=str(tmp_path / "ckpt"), result_dir=str(tmp_path / "res"),
                       grad_clip=5.0)
    summary = train(R, cfg, tcfg, data, say=lambda *_: None)
    assert summary["step"] == 60
    log = [json.loads(line) for line in (tmp_path / "res" / "sample_mi" / "log.jsonl")
           .read_text().splitlines()]
    assert {"bpd", "cond_bpd", "recon", "mi", "mi_q_nll"} <= set(log[0])
    first = np.mean([r["bpd"] for r in log[:5]])
    last = np.mean([r["bpd"] for r in log[-5:]])
    assert last < first - 0.3, (first, last)
    assert (tmp_path / "res" / "sample_mi" / "000030.png").is_file()
    # the run's checkpoint is what test.py loads
    args = argparse.Namespace(checkpoint=summary["checkpoint"], mode="cond")
    model = R.load_for_test(args, "cpu")
    assert model.mi is not None and model.initialized


def _query_source(size: int, t: int = 3, dtype=torch.float64):
    g = torch.Generator().manual_seed(3)
    query = torch.rand(1, 3, size, size, generator=g, dtype=dtype) - 0.5
    source = torch.rand(t, 3, size, size, generator=g, dtype=dtype) - 0.5
    return query, source


@pytest.mark.parametrize("prior_kept", [False, True])
def test_generate_modes(prior_kept):
    m = _model(size=16, prior_kept=prior_kept)
    query, source = _query_source(16)
    mix = query.repeat(3, 1, 1, 1)
    out = R.generate(m, query, mix, source, argparse.Namespace(mode="thesis"))
    assert out.shape == (3, 3, 16, 16)
    assert torch.allclose(out, mix, atol=1e-8)  # mix == query: the query comes back exactly
    cond = R.generate(m, query, None, source, argparse.Namespace(mode="cond"))
    assert cond.shape == (3, 3, 16, 16) and torch.isfinite(cond).all()
    # cond mode depends on the source's mouth only
    other = source.clone()
    other[:, :, :4] = 0
    assert torch.allclose(cond, R.generate(m, query, None, other,
                                           argparse.Namespace(mode="cond")))
    with pytest.raises(ValueError):
        R.generate(m, query, mix, source, argparse.Namespace(mode="nope"))


def _thesis_keys(n_block: int, n_flow: int, lu: bool) -> set[str]:
    """Every key of the thesis MI-flow's state dict (its model.py, written out by hand)."""
    keys = set()
    for i in range(n_block):
        top = i == n_block - 1
        for j in range(n_flow):
            f = f"blocks.{i}.flows.{j}."
            keys |= {f + "actnorm.loc", f + "actnorm.scale", f + "actnorm.initialized"}
            if lu or top:  # the thesis's top block is always LU
                keys |= {f + "invconv." + k for k in
                         ("w_p", "u_mask", "l_mask", "s_sign", "l_eye", "w_l", "w_s", "w_u")}
            else:
                keys.add(f + "invconv.weight")
            keys |= {f + "coupling.net." + k for k in
                     ("0.weight", "0.bias", "2.weight", "2.bias", "4.conv.weight",
                      "4.conv.bias", "4.scale")}
        if top:
            keys |= {f"blocks.{i}.prior." + k for k in ("conv.weight", "conv.bias", "scale")}
        else:
            keys |= {f"blocks.{i}.cond.conv.0.weight", f"blocks.{i}.cond.conv.0.bias"}
            keys |= {f"blocks.{i}.prior_c." + k for k in ("conv.weight", "conv.bias", "scale")}
    return keys


def _test_args(path, **kw) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    R.add_test_args(parser)
    args = parser.parse_args([])
    args.checkpoint = str(path)
    for k, v in kw.items():
        setattr(args, k, v)
    return args


@pytest.mark.parametrize("lu", [True, False])
def test_thesis_state_dict_loads_and_matches(tmp_path, lu):
    src = _model(dtype=torch.float32, size=16, conv_lu=lu, conv_lu_last=True)
    state = src.state_dict()
    thesis = _thesis_keys(2, 2, lu)
    assert set(state) == thesis
    path = tmp_path / R.DEFAULT_CHECKPOINT
    torch.save({"module." + k: v for k, v in state.items()}, path)  # DataParallel prefix
    args = _test_args(path, img_size=16)
    loaded = R.load_for_test(args, "cpu")
    assert not loaded.training and R.model_size(loaded) == 16
    query, source = _query_source(16, dtype=torch.float32)
    mix = source.clone()
    mix[:, :, :8] = query[:, :, :8]
    for mode in ("thesis", "cond"):
        a = argparse.Namespace(mode=mode)
        assert torch.allclose(R.generate(src, query, mix, source, a),
                              R.generate(loaded, query, mix, source, a), atol=1e-6)
    assert torch.allclose(src(source)[2], loaded(source)[2])
    # flags are checked against the file
    from glow.io import CheckpointError

    with pytest.raises(CheckpointError, match="n_flow=3"):
        R.load_for_test(_test_args(path, n_flow=3), "cpu")
    plain = {k: v for k, v in state.items() if ".cond." not in k and "prior_c" not in k}
    torch.save(plain, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="not an MI-flow"):
        R.load_for_test(_test_args(tmp_path / "plain.pt"), "cpu")


def test_our_checkpoint_round_trip(tmp_path):
    cfg = R.Config(n_flow=2, n_block=2, hidden=16, img_size=16, prior_kept=True)
    torch.manual_seed(0)
    m = R.build(cfg)
    m.initialize(torch.rand(4, 3, 16, 16) - 0.5)
    _perturb(m)
    import dataclasses

    path = save_checkpoint(tmp_path / "last.pt", model_name="mi-flow",
                           model_config=dataclasses.asdict(cfg), train_config=None,
                           weights=m.state_dict())
    loaded = R.load_for_test(_test_args(path), "cpu")
    query, source = _query_source(16, dtype=torch.float32)
    a = argparse.Namespace(mode="cond")
    assert torch.equal(R.generate(m.eval(), query, None, source, a),
                       R.generate(loaded, query, None, source, a))
    glow_ckpt = save_checkpoint(tmp_path / "glow.pt", model_name="glow", model_config={},
                                train_config=None, weights={})
    from glow.io import CheckpointError

    with pytest.raises(CheckpointError, match="expected 'mi-flow'"):
        R.load_for_test(_test_args(glow_ckpt), "cpu")


def test_train_flags():
    import train

    args = train.build_parser("mi-flow").parse_args(
        ["DATA", "--beta", "0.5", "--mi_weight", "0.1", "--prior_kept", "--no_lu",
         "--mi_estimator", "club_sample", "--img_size", "32", "--n_block", "3"])
    assert args.batch == 10 and args.grad_clip == 5.0 and args.lr == 1e-4
    assert args.beta == 0.5 and args.mi_weight == 0.1 and args.prior_kept
    assert args.conv_lu is False and args.mi_estimator == "club_sample"
    from training.config import from_args

    cfg = from_args(R.Config, args)
    R.validate(cfg)
    with pytest.raises(ValueError):
        R.validate(R.Config(n_block=1))
    with pytest.raises(ValueError):
        R.validate(R.Config(img_size=40))


def test_actnorm_initialised_explicitly():
    m = MIFlow(3, 1, 2, hidden=8, img_size=8)
    assert not m.initialized
    m.initialize(torch.rand(4, 3, 8, 8) - 0.5)
    assert m.initialized
    assert all(isinstance(b.prior_c, ZeroConv2d) for b in m.blocks[:-1])
    # the data init's promise: on the batch it saw, every ActNorm outputs zero mean and unit
    # variance per channel (each initialised on what the layers before it produce)
    seen = []

    def grab(flow, inp):  # the training forward folds ActNorm into the 1x1 conv: apply it here
        seen.append(flow.actnorm(inp[0])[0])

    hooks = [f.register_forward_pre_hook(grab) for f in m.modules()
             if isinstance(getattr(f, "actnorm", None), ActNorm)]
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(1)) - 0.5
    m2 = MIFlow(3, 1, 2, hidden=8, img_size=8)
    m2.load_state_dict(m.state_dict())
    for a in m.modules():
        if isinstance(a, ActNorm):
            a.initialized.zero_()
    m.initialize(x)
    m.train()
    m(x)
    for h in hooks:
        h.remove()
    assert len(seen) >= 2  # both flows ran
    for y in seen:
        torch.testing.assert_close(y.mean((0, 2, 3)), torch.zeros(y.shape[1]), atol=1e-5,
                                   rtol=0)
        torch.testing.assert_close(y.std((0, 2, 3)), torch.ones(y.shape[1]), atol=1e-3,
                                   rtol=0)
    # initialised means "set by that batch": a different batch gives different scales
    assert not torch.allclose(next(a for a in m.modules() if isinstance(a, ActNorm)).scale,
                              next(a for a in m2.modules() if isinstance(a, ActNorm)).scale)
