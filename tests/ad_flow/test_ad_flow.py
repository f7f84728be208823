"""AD-flow: encoders, losses, gradients, the frozen Glow, training, thesis checkpoints."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import run_device

from ad_flow import (
    ADFlow,
    FeatureEncoder,
    SequenceClassifier,
    cycle_loss,
    reconstruction_loss,
    roll_time,
    structural_loss,
)
from ad_flow.recipe import DEFAULT_GLOW, draw, from_glow
from ad_flow.recipe import RECIPE as ad
from evaluation.models import System, run_sequence
from glow import CheckpointError, Glow
from training.checkpoint import save_checkpoint
from training.config import TrainConfig
from training.loop import StepContext, step_generator

DEVICE = str(run_device())  # the tests that train or run test.py (pytest --device)

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
import train as train_cli  # noqa: E402

SIZE = 16


def tiny_glow(seed: int = 0, size: int = SIZE) -> Glow:
    torch.manual_seed(seed)
    g = Glow(3, n_flow=2, n_block=2, hidden=16, img_size=size)
    g.initialize(torch.rand(8, 3, size, size) - 0.5)
    with torch.no_grad():  # non-trivial couplings and priors
        for p in g.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return g.eval()


def save_glow(path: Path, glow: Glow) -> Path:
    return save_checkpoint(path, model_name="glow", model_config=glow.config(),
                           train_config={}, weights=glow.state_dict())


def tiny_cfg(glow_path: Path, **kw) -> ad.Config:
    base = dict(glow=str(glow_path), img_size=SIZE, n_frames=6, n_classes=3, cls_hidden="24")
    base.update(kw)
    return ad.Config(**base)


def ctx_for(cfg: ad.Config, step: int = 0) -> StepContext:
    tcfg = TrainConfig(device="cpu")
    return StepContext(step=step, rank=0, world=1, device=torch.device("cpu"), model_cfg=cfg,
                       train_cfg=tcfg, generator=step_generator(0, step))


def synthetic_set(root: Path, size: int = SIZE, frames: int = 6) -> Path:
    from lrw.synthetic import SyntheticConfig, generate

    generate(SyntheticConfig(out=str(root), words=3, speakers=2, clips=2, frames=frames,
                             size=size, queries=1, sources=1), log=lambda *_: None)
    return root


# -------------------------------------------------------------------------------------------
# Losses


def _latents(b=2, t=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, t, 6, 8, 8, generator=g, dtype=torch.float64),
            torch.randn(b, t, 24, 4, 4, generator=g, dtype=torch.float64)]


def _split(enc: FeatureEncoder, z):
    b, t = z[0].shape[:2]
    faces, lips = enc.split([x.flatten(0, 1) for x in z])
    return ([f.view(b, t, *f.shape[1:]) for f in faces],
            [m.view(b, t, *m.shape[1:]) for m in lips])


def test_roll_time_matches_the_thesis_pairs() -> None:
    x = torch.arange(2 * 5).view(2, 5).float()
    out = roll_time(x, torch.tensor([2, 0]))
    assert torch.equal(out[0], torch.cat([x[0, 2:], x[0, :2]]))
    assert torch.equal(out[1], x[1])


@pytest.mark.parametrize("kind", ["linear", "conv", "mlp"])
def test_reconstruction_is_exact_without_shift(kind: str) -> None:
    z = _latents()
    enc = FeatureEncoder([(6, 8, 8), (24, 4, 4)], kind).double()
    faces, lips = _split(enc, z)
    assert reconstruction_loss(z, faces, lips, torch.tensor([0, 0])) < 1e-28
    assert reconstruction_loss(z, faces, lips, torch.tensor([1, 3])) > 1e-3


def test_structural_term_zero_for_a_constant_clip() -> None:
    enc = FeatureEncoder([(6, 8, 8), (24, 4, 4)], "linear").double()
    for lvl in enc.levels:  # E = 0: face = z
        torch.nn.init.zeros_(lvl.linear.weight)
        torch.nn.init.zeros_(lvl.linear.bias)
    const = [x[:, :1].expand_as(x).clone() for x in _latents()]
    faces, _ = _split(enc, const)
    assert structural_loss(const, faces) < 1e-28
    z = _latents()
    faces, _ = _split(enc, z)
    assert structural_loss(z, faces) > 0.5


def test_cycle_term_zero_for_a_projection_encoder() -> None:
    """E a projection (E^2 = E, no bias): face(face_a + lip_b) = (I-E)(I-E)z_a + (I-E)E z_b
    = face_a exactly."""
    enc = FeatureEncoder([(6, 8, 8), (24, 4, 4)], "linear").double()
    g = torch.Generator().manual_seed(1)
    for lvl in enc.levels:
        p = lvl.linear.weight.shape[0]
        q, _ = torch.linalg.qr(torch.randn(p, p // 2, generator=g, dtype=torch.float64))
        with torch.no_grad():
            lvl.linear.weight.copy_(q @ q.T)
            lvl.linear.bias.zero_()
    z = _latents(b=3)
    faces, lips = _split(enc, z)
    assert cycle_loss(enc, faces, lips, torch.tensor([0, 4, 2])) < 1e-24
    rand = FeatureEncoder([(6, 8, 8), (24, 4, 4)], "linear").double()
    faces, lips = _split(rand, z)
    assert cycle_loss(rand, faces, lips, torch.tensor([0, 4, 2])) > 1e-3


def test_face_target_convention_swaps_parts() -> None:
    z = torch.randn(4, 6, 8, 8)
    a = FeatureEncoder([(6, 8, 8)], "conv", "lip")
    b = FeatureEncoder([(6, 8, 8)], "conv", "face")
    b.load_state_dict(a.state_dict())
    fa, la = a.split_level(0, z)
    fb, lb = b.split_level(0, z)
    assert torch.allclose(fa, lb) and torch.allclose(la, fb)


def test_classifier_reads_both_directions() -> None:
    clf = SequenceClassifier([64, 16], n_classes=5, hidden=(8,))
    lips = [torch.randn(3, 7, 6, 8, 8), torch.randn(3, 7, 24, 4, 4)]
    assert SequenceClassifier.features(lips).shape == (3, 7, 80)
    logits = clf(lips)
    assert logits.shape == (3, 5)
    # Each clip's logits depend on that clip only.
    assert torch.allclose(clf([x[1:2] for x in lips]), logits[1:2], atol=1e-6)


# -------------------------------------------------------------------------------------------
# The model around a frozen Glow


@pytest.mark.parametrize("kind", ["linear", "conv", "mlp"])
def test_every_trainable_parameter_gets_a_gradient_and_glow_stays_frozen(tmp_path, kind) -> None:
    glow_path = save_glow(tmp_path / "glow.pt", tiny_glow())
    cfg = tiny_cfg(glow_path, encoder=kind)
    model = ad.build(cfg)
    model.train()
    assert not model.glow.training
    assert all(not p.requires_grad for p in model.glow.parameters())
    assert not any(k.startswith("glow") or ".blocks." in k for k in model.state_dict())
    frames = torch.rand(2, 6, 3, SIZE, SIZE) - 0.5
    terms = ad.losses(model, (frames, torch.tensor([0, 2])), ctx_for(cfg))
    assert set(ad.loss_weights(cfg)) <= set(terms)
    for k in ("rec", "struct", "cycle", "cls"):
        assert torch.isfinite(terms[k]) and terms[k] > 0, k
    sum(terms[k] for k in ad.loss_weights(cfg)).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in model.glow.parameters())
    groups = ad.param_groups(model, cfg, SimpleNamespace(lr=1e-5))
    assert [g["lr"] for g in groups] == [1e-5, 1e-4]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_two_ranks_draw_and_pair_like_one_process(tmp_path) -> None:
    """Rank r of 2 uses rows r::2 of the one-process draw of shifts and pair frames, and its
    clips' cycle partners come from the global batch (clip g pairs with clip g+1 of all 4, which
    for rank 1's last clip sits on rank 0): the two ranks' terms average to one process's."""
    glow_path = save_glow(tmp_path / "glow.pt", tiny_glow())
    cfg = tiny_cfg(glow_path)
    model = ad.build(cfg)
    torch.manual_seed(1)
    with torch.no_grad():  # a non-trivial split and classifier
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    frames = torch.rand(4, 6, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2)) - 0.5
    labels = torch.tensor([0, 1, 2, 0])
    one = ad.losses(model, (frames, labels), ctx_for(cfg, step=3))

    shifts, pair = draw(4, 6, step_generator(0, 3))
    assert ((shifts >= 1) & (shifts < 6)).all() and ((pair >= 0) & (pair < 6)).all()
    g = torch.arange(4)
    every = frames[g, pair[(g - 1) % 4]]  # what the all-gather of the handed-over frames holds
    terms = []
    for rank in range(2):
        ctx = ctx_for(cfg, step=3)
        ctx.rank, ctx.world = rank, 2

        def gather(x, rank=rank):
            torch.testing.assert_close(x, every[rank::2], rtol=0, atol=0)  # this rank's share
            return every

        ctx.gather = gather
        terms.append(ad.losses(model, (frames[rank::2], labels[rank::2]), ctx))
    for k in ("rec", "struct", "cycle", "cls"):
        torch.testing.assert_close((terms[0][k] + terms[1][k]) / 2, one[k], rtol=1e-5,
                                   atol=1e-7, msg=k)


def test_transfer_with_zero_encoder_reconstructs_the_query(tmp_path) -> None:
    """E = 0 makes every latent pure face: the output is the query, exactly inverted."""
    glow = tiny_glow()
    model = from_glow(glow, tiny_cfg(tmp_path / "g.pt"))
    for lvl in model.encoder.levels:
        torch.nn.init.zeros_(lvl.linear.weight)
        torch.nn.init.zeros_(lvl.linear.bias)
    query = torch.rand(1, 3, SIZE, SIZE) - 0.5
    out = model.transfer(query, torch.rand(3, 3, SIZE, SIZE) - 0.5)
    assert torch.allclose(out, query.expand_as(out), atol=1e-4)


def test_query_is_encoded_once(tmp_path, monkeypatch) -> None:
    model = from_glow(tiny_glow(), tiny_cfg(tmp_path / "g.pt"))
    query = torch.rand(1, 3, SIZE, SIZE) - 0.5
    calls = []
    real = model.glow.encode
    monkeypatch.setattr(model.glow, "encode", lambda x: calls.append(x.shape[0]) or real(x))
    mixes = [torch.rand(2, 3, SIZE, SIZE) - 0.5 for _ in range(3)]
    outs = [ad.generate(model, query, mix, None, None) for mix in mixes]
    assert calls == [3, 2, 2]  # the query in one pass with the first chunk, then cached
    with torch.no_grad():  # the same as separate passes, to float rounding
        faces, _ = model.encoder.split(real(query))
        for mix, out in zip(mixes, outs, strict=True):
            _, lips = model.encoder.split(real(mix))
            want = model.glow.reverse([f + m for f, m in zip(faces, lips, strict=True)],
                                      reconstruct=True).clamp(-0.5, 0.5)
            torch.testing.assert_close(out, want, rtol=0, atol=1e-5)


def _random_split(model: ADFlow) -> None:
    torch.manual_seed(3)
    with torch.no_grad():  # a split that is neither "all face" nor "all lip"
        for lvl in model.encoder.levels:
            lvl.linear.weight.normal_(0, 0.3)
            lvl.linear.bias.normal_(0, 0.1)


def test_relative_motion_adds_the_lip_change_since_the_first_frame(tmp_path) -> None:
    model = from_glow(tiny_glow(), tiny_cfg(tmp_path / "g.pt"))
    _random_split(model)
    torch.manual_seed(4)
    query = torch.rand(1, 3, SIZE, SIZE) - 0.5
    mix = torch.rand(5, 3, SIZE, SIZE) - 0.5
    rel = SimpleNamespace(motion="relative")
    model.begin_sequence()
    out = ad.generate(model, query, mix, None, rel)
    with torch.no_grad():  # z(query) + lip(mix_t) - lip(mix_0), from separate passes
        zq = model.glow.encode(query)
        _, lips = model.encoder.split(model.glow.encode(mix))
        want = model.glow.reverse([q + m - m[:1] for q, m in zip(zq, lips, strict=True)],
                                  reconstruct=True).clamp(-0.5, 0.5)
    torch.testing.assert_close(out, want, rtol=0, atol=1e-5)
    # the first frame is the reference: the query itself comes back (the Glow is exact)
    torch.testing.assert_close(out[:1], query.clamp(-0.5, 0.5), rtol=0, atol=1e-4)
    # absolute motion is unchanged by the option: face(query) + lip(mix), bit for bit
    absolute = ad.generate(model, query, mix, None, SimpleNamespace(motion="absolute"))
    assert torch.equal(absolute, ad.generate(model, query, mix, None, None))
    assert (absolute - out).abs().max() > 1e-3  # and the two differ
    # transfer never builds a graph, in either motion (the encoders' weights want gradients)
    assert any(p.requires_grad for p in model.encoder.parameters())
    for relative in (False, True):
        assert not model.transfer(query, mix, relative=relative).requires_grad


def test_relative_motion_keeps_its_reference_across_chunks_until_a_new_sequence(tmp_path):
    model = from_glow(tiny_glow(), tiny_cfg(tmp_path / "g.pt"))
    _random_split(model)
    torch.manual_seed(5)
    query = torch.rand(1, 3, SIZE, SIZE) - 0.5
    seq_a, seq_b = torch.rand(6, 3, SIZE, SIZE) - 0.5, torch.rand(4, 3, SIZE, SIZE) - 0.5
    rel = SimpleNamespace(motion="relative")
    ad.begin_sequence(model, rel)
    whole = ad.generate(model, query, seq_a, None, rel)
    ad.begin_sequence(model, rel)
    chunked = torch.cat([ad.generate(model, query, seq_a[i:i + 2], None, rel)
                         for i in range(0, 6, 2)])
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-5)
    # a new sequence takes its own first frame; without begin_sequence it would keep A's
    ad.begin_sequence(model, rel)
    b_fresh = ad.generate(model, query, seq_b, None, rel)
    stale = ad.generate(model, query, seq_b, None, rel)  # no begin: B's first frame stays
    torch.testing.assert_close(stale, b_fresh, rtol=0, atol=1e-5)
    ad.begin_sequence(model, rel)
    ad.generate(model, query, seq_a[:1], None, rel)
    kept_a = ad.generate(model, query, seq_b, None, rel)  # A's reference, not B's
    assert (kept_a - b_fresh).abs().max() > 1e-3
    # a new query starts a new reference as well
    other = torch.rand(1, 3, SIZE, SIZE) - 0.5
    first = ad.generate(model, other, seq_b, None, rel)
    torch.testing.assert_close(first[:1], other, rtol=0, atol=1e-4)


def test_evaluation_scores_both_motions_and_starts_each_sequence_afresh(tmp_path) -> None:
    model = from_glow(tiny_glow(), tiny_cfg(tmp_path / "g.pt"))
    _random_split(model)
    def labels(motion):
        return [lab for lab, _ in ad.eval_systems(model, SimpleNamespace(motion=motion))]
    assert labels(None) == ["ad-flow", "ad-flow (relative)"]  # both unless --motion is given
    assert labels("absolute") == ["ad-flow"] and labels("relative") == ["ad-flow (relative)"]
    args = SimpleNamespace(motion="relative")
    calls = []

    def fn(q, mix, src):
        return ad.generate(model, q, mix, src, args)

    def begin():
        calls.append(1)
        ad.begin_sequence(model, args)

    rng = torch.Generator().manual_seed(6)
    query = (torch.rand(256, 256, 3, generator=rng) * 255).byte().numpy()
    frames = [(torch.rand(256, 256, 3, generator=rng) * 255).byte().numpy() for _ in range(5)]
    system = System("rel", fn, begin=begin)
    one = run_sequence(query, frames, SIZE, [system], batch=2)["rel"]
    two = run_sequence(query, frames[2:], SIZE, [system], batch=2)["rel"]
    assert len(calls) == 2  # once per sequence
    # each sequence's first frame is its reference: the query comes back there
    copy = run_sequence(query, frames[:1], SIZE, [])["baseline: copy query"][0]
    for seq in (one, two):
        assert abs(seq[0].astype(int) - copy.astype(int)).max() <= 1


def test_build_refuses_an_uninitialised_glow_and_checks_given_flags(tmp_path) -> None:
    raw = Glow(3, 2, 2, hidden=16, img_size=SIZE)
    bad = save_glow(tmp_path / "raw.pt", raw)
    with pytest.raises(CheckpointError, match="never initialised"):
        ad.build(tiny_cfg(bad))
    thesis = tmp_path / "thesis_glow.pt"
    torch.save(tiny_glow().state_dict(), thesis)  # a bare state dict, as the thesis saved
    ad.build(tiny_cfg(thesis, n_flow=2, n_block=2))
    with pytest.raises(CheckpointError, match="n_flow=3"):
        ad.build(tiny_cfg(thesis, n_flow=3))


# -------------------------------------------------------------------------------------------
# Training and checkpoints


@pytest.mark.slow
def test_tiny_run_lowers_the_loss_and_checkpoint_records_the_glow(tmp_path) -> None:
    data = synthetic_set(tmp_path / "syn")
    glow_path = save_glow(tmp_path / "glow.pt", tiny_glow())
    rc = train_cli.main([
        "--model", "ad-flow", "-n", "tiny", str(data), "--glow", str(glow_path),
        "--img_size", str(SIZE), "--n_frames", "6", "--cls_hidden", "24", "--iter", "30",
        "--batch", "3", "--lr", "3e-3", "--cls_lr", "3e-3", "--workers", "0", "--device", DEVICE,
        "--log_every", "1", "--sample_every", "15", "--no_progress", "--init", "random",
        "--checkpoint_dir", str(tmp_path / "ck"), "--result_dir", str(tmp_path / "res")])
    assert rc == 0  # the thesis recipe (random init) lowers its losses
    log = [json.loads(line) for line in (tmp_path / "res/sample_tiny/log.jsonl").open()]
    first = sum(r["loss"] for r in log[:3]) / 3
    last = sum(r["loss"] for r in log[-3:]) / 3
    assert last < 0.8 * first, (first, last)
    assert (tmp_path / "res/sample_tiny/000015.png").is_file()
    ck = torch.load(tmp_path / "ck/tiny/last.pt", weights_only=True)
    assert ck["model"] == "ad-flow" and ck["config"]["model"]["n_classes"] == 3
    assert not any(".blocks." in k for k in ck["weights"])
    g = ck["extra"]["glow"]
    assert g["path"] == str(glow_path) and len(g["sha256"]) == 64
    assert g["config"]["n_flow"] == 2 and ck["extra"]["words"] == ["ABOUT", "MONEY", "PEOPLE"]


def _thesis_dict(model: ADFlow) -> dict:
    """Our weights in the thesis's ``ad-flow_total_checkpoint.tar`` layout."""
    sd = model.state_dict()
    f_enc = {}
    for k, v in sd.items():
        if k.startswith("encoder.levels."):
            _, _, lvl, _, *rest = k.split(".")
            f_enc[".".join(["Fencoders", lvl, "Linear", *rest])] = v
    s_class = {("rnn.gru." + k[len("classifier.gru."):]) if k.startswith("classifier.gru.")
               else "model." + k[len("classifier.head."):]: v
               for k, v in sd.items() if k.startswith("classifier.")}
    return {"iteration": 10000, "f_encoder": f_enc, "f_optim": {"state": {}, "param_groups": []},
            "s_class": s_class, "s_optim": {"state": {}, "param_groups": []}}


def test_load_for_test_warns_about_another_glow_and_skips_random_init(tmp_path,
                                                                      capsys) -> None:
    """The Glow's digest (read beside its load) is checked against the one recorded at
    training: a different file with the same architecture gets a warning, the same file
    none. Under skip_init (as test.py loads) nothing is drawn and the model is the same."""
    from glow.io import skip_init

    glow_path = save_glow(tmp_path / "glow.pt", tiny_glow())
    other = save_glow(tmp_path / "other.pt", tiny_glow(seed=1))
    cfg = tiny_cfg(glow_path)
    model = ad.build(cfg)
    ours = save_checkpoint(tmp_path / "ours.pt", model_name="ad-flow",
                           model_config=cfg.__dict__ | {}, train_config={},
                           weights=model.state_dict(), extra=ad.checkpoint_extra(model, cfg))
    args = SimpleNamespace(checkpoint=str(ours), glow=None, checkpoint_dir=str(tmp_path))
    plain = ad.load_for_test(args, "cpu")
    assert "not the Glow file" not in capsys.readouterr().err
    state = torch.random.get_rng_state()
    with skip_init():
        fast = ad.load_for_test(args, "cpu")
    assert torch.equal(torch.random.get_rng_state(), state)  # nothing was drawn
    torch.nn.Linear(3, 3)  # and torch.nn.init draws again once the context is left
    assert not torch.equal(torch.random.get_rng_state(), state)
    assert fast.classifier is not None
    for k, v in plain.state_dict().items():
        assert torch.equal(fast.state_dict()[k], v), k
    query, mix = torch.rand(1, 3, SIZE, SIZE) - 0.5, torch.rand(3, 3, SIZE, SIZE) - 0.5
    assert torch.equal(ad.generate(fast, query, mix, mix), ad.generate(plain, query, mix, mix))
    ad.load_for_test(SimpleNamespace(**{**vars(args), "glow": str(other)}), "cpu")
    err = capsys.readouterr().err
    assert "not the Glow file" in err and str(other) in err


def test_thesis_checkpoint_loads_and_generates_like_ours(tmp_path) -> None:
    glow = tiny_glow()
    glow_path = save_glow(tmp_path / "glow.pt", glow)
    cfg = tiny_cfg(glow_path, n_classes=500, cls_hidden="2048,1024")
    model = ad.build(cfg)
    ours = save_checkpoint(tmp_path / "ours.pt", model_name="ad-flow",
                           model_config=cfg.__dict__ | {}, train_config={},
                           weights=model.state_dict(),
                           extra=ad.checkpoint_extra(model, cfg))
    thesis = tmp_path / "ad-flow_total_checkpoint.tar"
    torch.save(_thesis_dict(model), thesis)
    thesis_glow = tmp_path / "glow_checkpoint.pt"
    torch.save(glow.state_dict(), thesis_glow)

    a = ad.load_for_test(SimpleNamespace(checkpoint=str(ours), glow=None,
                                         checkpoint_dir=str(tmp_path)), "cpu")
    b = ad.load_for_test(SimpleNamespace(checkpoint=str(thesis), glow=None,
                                         checkpoint_dir=str(tmp_path)), "cpu")
    assert b.encoder.kind == "linear" and b.classifier is not None
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    query = torch.rand(1, 3, SIZE, SIZE) - 0.5
    mix = torch.rand(4, 3, SIZE, SIZE) - 0.5
    out_a = ad.generate(a, query, mix, mix, None)
    out_b = ad.generate(b, query, mix, mix, None)
    assert torch.allclose(out_a, out_b, atol=1e-5)
    lips = [torch.randn(1, 5, *s) for s in glow.z_shapes()]
    assert torch.allclose(a.classifier(lips), b.classifier(lips), atol=1e-5)


def test_thesis_ablation_layouts_and_refusals(tmp_path) -> None:
    glow = tiny_glow()
    torch.save(glow.state_dict(), tmp_path / "glow_checkpoint.pt")
    args = SimpleNamespace(glow=None, checkpoint_dir=str(tmp_path))
    conv = FeatureEncoder(glow.z_shapes(), "conv")
    f_enc = {k.replace("levels", "Fencoders").replace(".conv.", ".Conv."): v
             for k, v in conv.state_dict().items()}
    torch.save({"f_encoder": f_enc}, tmp_path / "conv.tar")
    args.checkpoint = str(tmp_path / "conv.tar")
    m = ad.load_for_test(args, "cpu")
    assert m.encoder.kind == "conv" and m.encoder.target == "face" and m.classifier is None

    torch.save({"f_encoder": {"Lencoders.0.Conv.0.weight": torch.zeros(1)}}, tmp_path / "fl.tar")
    args.checkpoint = str(tmp_path / "fl.tar")
    with pytest.raises(CheckpointError, match="FL"):
        ad.load_for_test(args, "cpu")

    big = Glow(3, 2, 3, hidden=16, img_size=SIZE)  # 3 levels: weights do not fit
    lin = FeatureEncoder(big.z_shapes(), "linear")
    torch.save({"f_encoder": {k.replace("levels", "Fencoders").replace(".linear.", ".Linear."): v
                              for k, v in lin.state_dict().items()}}, tmp_path / "big.tar")
    args.checkpoint = str(tmp_path / "big.tar")
    with pytest.raises(CheckpointError) as err:
        ad.load_for_test(args, "cpu")
    assert "\n" not in str(err.value) and "--glow" in str(err.value)


def test_test_time_finds_the_recorded_glow_or_says_how(tmp_path, monkeypatch) -> None:
    """No --glow: the Glow the checkpoint records is found from another folder, after the run
    tree moved, and checked by its sha256; a changed or missing file is a one-line error
    naming the recorded path and --glow (never a silent fall-back to checkpoint/)."""
    import shutil

    run = tmp_path / "demo"
    (run / "checkpoint" / "glow").mkdir(parents=True)
    (run / "checkpoint" / "ad").mkdir()
    monkeypatch.chdir(tmp_path)
    glow_rel = Path("demo/checkpoint/glow/last.pt")  # recorded as given: relative to the cwd
    save_glow(glow_rel, tiny_glow())
    cfg = tiny_cfg(glow_rel)
    model = ad.build(cfg)
    ck = save_checkpoint(run / "checkpoint" / "ad" / "last.pt", model_name="ad-flow",
                         model_config=cfg.__dict__ | {}, train_config={},
                         weights=model.state_dict(), extra=ad.checkpoint_extra(model, cfg))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    def load(checkpoint: Path):
        return ad.load_for_test(SimpleNamespace(checkpoint=str(checkpoint), glow=None,
                                                checkpoint_dir="checkpoint"), "cpu")

    assert Path(load(ck).glow_path).resolve() == (run / "checkpoint" / "glow" / "last.pt")
    moved = tmp_path / "moved" / "demo"
    shutil.move(str(run), str(moved))  # the absolute path recorded is gone now
    found = load(moved / "checkpoint" / "ad" / "last.pt").glow_path
    assert Path(found).resolve() == moved / "checkpoint" / "glow" / "last.pt"
    save_glow(moved / "checkpoint" / "glow" / "last.pt", tiny_glow(seed=3))  # file changed
    with pytest.raises(CheckpointError) as err:
        load(moved / "checkpoint" / "ad" / "last.pt")
    msg = str(err.value)
    assert "\n" not in msg and str(glow_rel) in msg and "--glow" in msg and "changed" in msg
    (moved / "checkpoint" / "glow" / "last.pt").unlink()
    with pytest.raises(CheckpointError) as err:
        load(moved / "checkpoint" / "ad" / "last.pt")
    msg = str(err.value)
    assert "\n" not in msg and str(glow_rel) in msg and "--glow" in msg
    # another Glow at CHECKPOINT_DIR/glow_checkpoint.pt is not taken for the recorded one
    save_glow(Path("checkpoint") / DEFAULT_GLOW, tiny_glow(seed=4))
    with pytest.raises(CheckpointError, match="has changed") as err:
        load(moved / "checkpoint" / "ad" / "last.pt")
    assert "--glow" in str(err.value)
