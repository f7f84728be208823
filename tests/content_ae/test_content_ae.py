"""content-ae: architectures, losses, the loop's group clipping, scripts, resume, bad input."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from content_ae.model import ConvDecoder
from content_ae.recipe import RECIPE as recipe
from training.config import TrainConfig
from training.loop import StepContext, clip_group_gradients, step_generator

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--img_size", "16", "--n_down", "3", "--code", "32", "--sep", "4",
        "--e1_widths", "8", "--e2_widths", "8,8", "--dec_widths", "16,8", "--disc_hidden", "16"]


def tiny_cfg(**kw) -> recipe.Config:
    base = dict(img_size=16, n_down=3, code=32, sep=4, e1_widths="8", e2_widths="8,8",
                dec_widths="16,8", disc_hidden=16)
    base.update(kw)
    return recipe.Config(**base)


def cli(name: str):
    spec = importlib.util.spec_from_file_location(f"_t_{name}", ROOT / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


def ctx_for(cfg, step=0) -> StepContext:
    return StepContext(step=step, rank=0, world=1, device=torch.device("cpu"), model_cfg=cfg,
                       train_cfg=TrainConfig(), generator=step_generator(0, step))


def _conv(cin, cout, k=4, bias=True):
    return cin * cout * k * k + (cout if bias else 0)


# ---------------------------------------------------------------------------- architectures

def test_original_shapes_and_parameter_counts():
    cfg = recipe.Config()  # the paper's: 128 px, sep 25
    m = recipe.build(cfg)
    x = torch.randn(2, 3, 128, 128)
    ca, sa = m.e1(x), m.e2(x)
    assert ca.shape == (2, 487, 2, 2) and sa.shape == (2, 25, 2, 2)
    img, mask = m.decode(ca, sa)
    assert img.shape == (2, 3, 128, 128) and mask is None
    assert m.disc(ca).shape == (2,)
    n = lambda mod: sum(p.numel() for p in mod.parameters())  # noqa: E731
    e1 = sum(_conv(i, o) for i, o in [(3, 32), (32, 64), (64, 128), (128, 256), (256, 487),
                                      (487, 487)])
    e2 = sum(_conv(i, o) for i, o in [(3, 32), (32, 64), (64, 128), (128, 128), (128, 128),
                                      (128, 25)])
    # the original's first transposed conv 512 -> 512 (with bias), split into common/specific
    dec = _conv(512, 512) + sum(_conv(i, o) for i, o in [(512, 256), (256, 128), (128, 64),
                                                          (64, 32), (32, 3)])
    disc = 487 * 4 * 512 + 512 + 512 + 1
    assert (n(m.e1), n(m.e2), n(m.decoder), n(m.disc)) == (e1, e2, dec, disc)


def test_improved_shapes_and_sane_e2():
    cfg = recipe.Config(arch="improved")
    m = recipe.build(cfg)
    x = torch.randn(1, 3, 128, 128)
    ca, sa = m.e1(x), m.e2(x)
    assert ca.shape == (1, 384, 8, 8) and sa.shape == (1, 128, 8, 8)
    assert m.decode(ca, sa)[0].shape == (1, 3, 128, 128)
    assert m.disc(ca).shape == (1,)
    n_e1 = sum(p.numel() for p in m.e1.parameters())
    n_e2 = sum(p.numel() for p in m.e2.parameters())
    # stem 7x7 + three 3x3 downs (no bias) + 3x3 down to 128, six res blocks at 128
    stem_downs = 3 * 32 * 49 + sum(i * o * 9 for i, o in [(32, 64), (64, 128), (128, 256),
                                                        (256, 128)])
    assert n_e2 == stem_downs + 6 * 2 * 128 * 128 * 9
    assert n_e2 < n_e1 / 5 and n_e2 < 5e6  # the remake's E2 is ~106M parameters
    sn = [k for k, _ in m.disc.named_parameters() if "original" in k]
    assert sn, "the improved discriminator is spectral-normalised"


def test_mask_output_and_bad_flags():
    m = recipe.build(tiny_cfg(mask=True))
    with torch.no_grad():
        img, mask = m.decode(m.e1(torch.randn(2, 3, 16, 16)), None)
    assert mask.shape == (2, 1, 16, 16) and float(mask.min()) >= 0 and float(mask.max()) <= 1
    for bad in (dict(img_size=20), dict(sep=32), dict(e2_widths="8"), dict(e1_widths="8,x")):
        with pytest.raises(ValueError):
            recipe.validate(tiny_cfg(**bad))


def test_mask_power_blends_with_the_raised_mask():
    torch.manual_seed(0)
    m = recipe.build(tiny_cfg(mask=True)).eval()
    a, b = torch.rand(2, 3, 16, 16) * 2 - 1, torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        img, mask = m.decode(m.e1(b), m.e2(a))
        removed, _ = m.decode(m.e1(a), None)
        _, own = m.decode(m.e1(a), m.e2(a))
        for p in (1.0, 1.5, 3.0):
            m.mask_power = p
            torch.testing.assert_close(m.transfer(a, b),
                                       mask**p * img + (1 - mask**p) * b)
            torch.testing.assert_close(m.remove(a), own**p * removed + (1 - own**p) * a)
    assert "mask_power" not in " ".join(m.state_dict())  # a setting, not a weight
    plain = recipe.build(tiny_cfg(mask=False)).eval()
    plain.mask_power = 3.0
    with torch.no_grad():  # no mask: the decoding itself, whatever the power
        torch.testing.assert_close(plain.transfer(a, b), plain.decode(plain.e1(b),
                                                                      plain.e2(a))[0])


def test_donor_mask_gates_a_transfer_by_the_donors_own_mask():
    """``donor_mask``: the transfer's mask times the donor's own (``Dec(E1(a) ⊕ E2(a))``'s),
    so no pixel moves further from the target than without it, and some move less."""
    torch.manual_seed(1)
    m = recipe.build(tiny_cfg(mask=True)).eval()
    a, b = torch.rand(3, 3, 16, 16) * 2 - 1, torch.rand(3, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        img, mask = m.decode(m.e1(b), m.e2(a))
        _, own = m.decode(m.e1(a), m.e2(a))
        plain = m.transfer(a, b)
        m.donor_mask = True
        for p in (1.0, 1.5):
            m.mask_power = p
            g = (mask * own) ** p
            torch.testing.assert_close(m.transfer(a, b), g * img + (1 - g) * b)
        gated = m.transfer(a, b)
        removed_plain = m.remove(a)
    assert torch.all((gated - b).abs() <= (plain - b).abs() + 1e-6)
    assert float((plain - b).abs().sum() - (gated - b).abs().sum()) > 1e-3
    m.donor_mask = False
    with torch.no_grad():  # removal is untouched by the setting
        torch.testing.assert_close(m.remove(a), removed_plain)
    assert "donor_mask" not in " ".join(m.state_dict())


def test_evaluate_donor_mask_keeps_more_of_the_outside(synth, tmp_path):
    assert _train(tmp_path, synth, "m", "--iter", "6", "--sample_every", "0", "--mask") == 0
    out = {}
    for name, extra in (("plain", []), ("gated", ["--donor_mask"])):
        assert cli("evaluate")(["--model", "content-ae", "--checkpoint", "m", str(synth),
                                "--checkpoint_dir", str(tmp_path / "ck"), "--name", name,
                                "--result_dir", str(tmp_path / "res"), *extra]) == 0
        out[name] = json.loads((tmp_path / f"res/eval/{name}/metrics.json").read_text())
    assert out["gated"]["_info"]["donor_mask"] is True
    assert out["plain"]["_info"]["donor_mask"] is False
    assert "gated by the donor's own mask" in (tmp_path / "res/eval/gated/table.md").read_text()
    g, p = out["gated"]["model"]["transfer"], out["plain"]["model"]["transfer"]
    assert g["outside_psnr"] >= p["outside_psnr"] and g["psnr"] != p["psnr"]
    # the removal and both baselines do not depend on it
    assert out["gated"]["model"]["removal"] == out["plain"]["model"]["removal"]
    assert out["gated"]["paste region"] == out["plain"]["paste region"]


# ---------------------------------------------------------------------------- losses

@pytest.mark.parametrize("arch", ["original", "improved"])
def test_losses_are_the_formulas(arch):
    torch.manual_seed(0)
    extra = dict(arch=arch, flip=False)
    if arch == "improved":
        extra.update(n_down=2, e1_widths="8,16", e2_widths="8,8", code=32, sep=8, n_res=1,
                     dec_res=1)
    cfg = tiny_cfg(**extra)
    m = recipe.build(cfg)
    m.disc.eval()  # spectral norm's power iteration would move between the two evaluations
    a, b = torch.rand(3, 3, 16, 16) - 0.5, torch.rand(3, 3, 16, 16) - 0.5
    terms = recipe.losses(m, (a, b), ctx_for(cfg))
    a2, b2 = a * 2, b * 2
    ca, cb, sa = m.e1(a2), m.e1(b2), m.e2(a2)
    rec_a = F.mse_loss(m.decode(ca, sa)[0], a2)
    rec_b = F.mse_loss(m.decode(cb, torch.zeros(3, cfg.sep or 8, *cb.shape[2:]))[0], b2)
    pa, pb = torch.sigmoid(m.disc(ca)), torch.sigmoid(m.disc(cb))
    zeros, ones = torch.zeros(3), torch.ones(3)
    adv = F.binary_cross_entropy(pa, zeros) + F.binary_cross_entropy(pb, zeros)
    disc = F.binary_cross_entropy(pa, ones) + F.binary_cross_entropy(pb, zeros)
    for k, v in (("rec_a", rec_a), ("rec_b", rec_b), ("adv", adv), ("disc", disc)):
        torch.testing.assert_close(terms[k], v, rtol=1e-5, atol=1e-6, msg=k)
    w = recipe.loss_weights(cfg)
    assert w == {"rec_a": 1.0, "rec_b": 1.0, "adv": 1e-3, "disc": 1.0}


def test_mask_terms_are_the_formulas():
    torch.manual_seed(2)
    cfg = tiny_cfg(mask=True, flip=False, mask_weight=0.2, mask_warmup=4, w_rec_a=0.5)
    m = recipe.build(cfg)
    a, b = torch.rand(3, 3, 16, 16) - 0.5, torch.rand(3, 3, 16, 16) - 0.5
    terms = recipe.losses(m, (a, b), ctx_for(cfg, step=1))  # ramp (1 + 1) / 4
    a2, b2 = a * 2, b * 2
    ca = m.e1(a2)
    img_a, mask_a = m.decode(ca, m.e2(a2))
    removed, _ = m.decode(ca, None)
    _, mask_b = m.decode(m.e1(b2), None)
    torch.testing.assert_close(terms["mask_rec"],
                               F.mse_loss(mask_a * img_a + (1 - mask_a) * removed, a2))
    torch.testing.assert_close(terms["mask_l1"], mask_a.mean() * 0.5)
    torch.testing.assert_close(terms["mask_b"], mask_b.mean() * 0.5)
    late = recipe.losses(m, (a, b), ctx_for(cfg, step=10))
    torch.testing.assert_close(late["mask_l1"], mask_a.mean())  # full weight after warm-up
    w = recipe.loss_weights(cfg)
    assert w["rec_a"] == 0.5 and w["mask_l1"] == w["mask_b"] == 0.2 and w["mask_rec"] == 1.0
    with pytest.raises(ValueError):
        recipe.validate(tiny_cfg(w_rec_a=-1.0))


def test_b_code_specific_part_is_exactly_zero():
    torch.manual_seed(1)
    cfg = tiny_cfg()
    m = recipe.build(cfg)
    assert isinstance(m.decoder, ConvDecoder) and m.decoder.first_s.bias is None
    b = torch.randn(2, 3, 16, 16)
    cb = m.e1(b)
    zero = torch.zeros(2, 4, *cb.shape[2:])
    assert torch.equal(m.decoder.first_s(zero), torch.zeros_like(m.decoder.first_c(cb)))
    torch.testing.assert_close(m.decode(cb, None)[0], m.decode(cb, zero)[0], rtol=0, atol=1e-6)


def test_each_player_gets_only_its_own_gradient():
    torch.manual_seed(2)
    cfg = tiny_cfg(flip=False)
    m = recipe.build(cfg)
    a, b = torch.rand(2, 3, 16, 16) - 0.5, torch.rand(2, 3, 16, 16) - 0.5
    t = recipe.losses(m, (a, b), ctx_for(cfg))
    t["adv"].backward(retain_graph=True)
    assert all(p.grad is None for p in m.disc.parameters())  # D frozen inside the adv term
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.e1.parameters())
    m.zero_grad(set_to_none=True)
    t["disc"].backward()
    assert all(p.grad is None for p in m.e1.parameters())  # D trained on detached codes
    assert all(p.grad is not None for p in m.disc.parameters())


def test_discriminator_clipping_sees_its_parameters():
    torch.manual_seed(3)
    cfg = tiny_cfg(flip=False, disc_clip=1e-4, ae_clip=1e-3)
    m = recipe.build(cfg)
    groups = recipe.param_groups(m, cfg, TrainConfig(lr=2e-4))
    opt = torch.optim.Adam(groups)
    assert [g["name"] for g in opt.param_groups] == ["autoencoder", "discriminator"]
    assert opt.param_groups[1]["params"] == list(m.disc.parameters())
    assert opt.param_groups[0]["betas"] == (0.5, 0.999) and opt.param_groups[0]["lr"] == 2e-4
    a, b = torch.rand(2, 3, 16, 16) - 0.5, torch.rand(2, 3, 16, 16) - 0.5
    t = recipe.losses(m, (a, b), ctx_for(cfg))
    sum(w * t[k] for k, w in recipe.loss_weights(cfg).items()).backward()
    norms = clip_group_gradients(opt)
    assert norms["discriminator"] > 1e-4 and norms["autoencoder"] > 1e-3
    after = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in m.disc.parameters()]))
    assert float(after) == pytest.approx(1e-4, rel=1e-3)
    # a state dict round trip keeps the per-group clip (resume clips the same way)
    opt2 = torch.optim.Adam(recipe.param_groups(m, cfg, TrainConfig(lr=2e-4)))
    opt2.load_state_dict(opt.state_dict())
    assert opt2.param_groups[1]["clip_norm"] == 1e-4


def test_integer_labels_are_not_needed():
    from content_ae.model import bce_logits

    logits = torch.tensor([0.3, -1.2, 2.0])
    expect = F.binary_cross_entropy(torch.sigmoid(logits), torch.ones(3))
    torch.testing.assert_close(bce_logits(logits, 1), expect)


# ---------------------------------------------------------------------------- scripts

@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    from synthface.attributes import write_attribute_set

    root = tmp_path_factory.mktemp("cae") / "glasses"
    write_attribute_set(root, "glasses", 16, 16, 16, 3, 3, seed=5)
    return root


def _train(tmp: Path, data: Path, name: str, *extra: str) -> int:
    return cli("train")(["--model", "content-ae", "-n", name, str(data), *TINY, "--batch", "4",
                         "--lr", "2e-3", "--disc_lr", "2e-3", "--workers", "0", "--no_progress",
                         "--checkpoint_dir", str(tmp / "ck"), "--result_dir", str(tmp / "res"),
                         "--log_every", "1", *extra])


@pytest.mark.slow  # end to end through the scripts
def test_tiny_run_lowers_losses_and_writes_the_grid(synth, tmp_path):
    assert _train(tmp_path, synth, "run", "--iter", "40", "--sample_every", "20") == 0
    log = [json.loads(line) for line in (tmp_path / "res/sample_run/log.jsonl").read_text()
           .splitlines()]
    first, last = log[0], log[-1]
    assert last["rec_a"] < 0.8 * first["rec_a"] and last["rec_b"] < 0.8 * first["rec_b"]
    sample = Image.open(tmp_path / "res/sample_run/000040.png")
    # the sample grid: n_display 4 (the batch) + 1 columns/rows of 16 px tiles with 2 px padding
    assert sample.size == (5 * 18 + 2, 5 * 18 + 2)
    out = tmp_path / "tr"
    assert cli("test")(["--model", "content-ae", "--checkpoint", "run", str(synth),
                        "--checkpoint_dir", str(tmp_path / "ck"), "--out", str(out),
                        "--n_display", "3", "--interpolate", "4"]) == 0
    grid = Image.open(out / "grid.png")
    # n + 1 columns; header, 3 rows, removals; 16 px tiles enlarged 8x to 128 px
    assert grid.size == (4 * 130 + 2, 5 * 130 + 2)
    assert len(list((out / "cells").glob("A*_B*.png"))) == 9
    assert len(list((out / "removal").glob("A*.png"))) == 3
    assert Image.open(out / "cells" / "A1_B1.png").size == (16, 16)  # cells at model size
    g = np.asarray(grid.convert("RGB")).astype(int)
    assert g[2:130, 2:130].max() == 0  # the blank top-left tile
    b1 = np.asarray(Image.open(synth / "testB/00000.png").convert("RGB")).astype(int)
    b1 = b1.repeat(8, 0).repeat(8, 1)
    assert np.abs(g[2:130, 132:260] - b1).max() <= 1  # row 0 holds B_1 next
    assert Image.open(out / "interpolation.png").size == (5 * 18 + 2, 3 * 18 + 2)
    # single transfer with --a/--b
    assert cli("test")(["--model", "content-ae", "--checkpoint", "run", "--checkpoint_dir",
                        str(tmp_path / "ck"), "--out", str(out / "one"),
                        "--a", str(synth / "testA/00000.png"),
                        "--b", str(synth / "testB/00001.png")]) == 0
    assert (out / "one/transfer.png").is_file() and (out / "one/removal.png").is_file()
    # evaluate.py against the exact answers, with both baselines
    assert cli("evaluate")(["--model", "content-ae", "--checkpoint", "run", str(synth),
                            "--checkpoint_dir", str(tmp_path / "ck"),
                            "--result_dir", str(tmp_path / "res")]) == 0
    metrics = json.loads((tmp_path / "res/eval/run/metrics.json").read_text())
    assert metrics["_info"]["pairs"] == 9
    assert metrics["copy target"]["transfer"]["outside_psnr"] == 100.0  # untouched outside
    assert metrics["copy target"]["transfer"]["region_psnr"] < 40
    assert 0 < metrics["model"]["transfer"]["psnr"] < 100
    assert cli("evaluate")(["--model", "content-ae", "--checkpoint", "run", str(synth),
                            "--checkpoint_dir", str(tmp_path / "ck"), "--mask_power", "0",
                            "--result_dir", str(tmp_path / "res")]) == 1


def test_resume_is_bit_for_bit(synth, tmp_path):
    assert _train(tmp_path, synth, "full", "--iter", "6", "--sample_every", "0") == 0
    assert _train(tmp_path, synth, "half", "--iter", "3", "--sample_every", "0") == 0
    assert _train(tmp_path, synth, "half", "--iter", "6", "--sample_every", "0",
                  "--resume") == 0
    a = torch.load(tmp_path / "ck/full/last.pt", weights_only=True)
    b = torch.load(tmp_path / "ck/half/last.pt", weights_only=True)
    assert a["step"] == b["step"] == 6
    for k, v in a["weights"].items():
        assert torch.equal(v, b["weights"][k]), k
    assert a["optimizer"]["param_groups"][1]["name"] == "discriminator"


def test_original_spellings_carry_over(synth, tmp_path):
    out = tmp_path / "bald_result"
    argv = recipe.translate_argv(["--root", str(synth), "--out", str(out), "--bs", "4",
                                  "--iters", "2", "--load", "", "--resize", "16"])
    assert argv[-1] == str(synth) and "--resume" not in argv
    assert argv[argv.index("--batch") + 1] == "4" and argv[argv.index("--iter") + 1] == "2"
    rc = cli("train")(["--model", "content-ae", "--root", str(synth), "--out", str(out),
                       "--bs", "4", "--iters", "2", "--load", "", *TINY[2:], "--resize", "16",
                       "--workers", "0", "--no_progress", "--sample_every", "0"])
    assert rc == 0 and (out / "run/last.pt").is_file()
    assert cli("test")(["--model", "content-ae", "--data", str(synth), "--out",
                        str(tmp_path / "bald_eval"), "--checkpoint", str(out / "run/last.pt"),
                        "--n_display", "2"]) == 0
    assert (tmp_path / "bald_eval/grid.png").is_file()


# ---------------------------------------------------------------------------- bad input

def _img(path: Path, size=16, colour=(200, 100, 50)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).save(path)


def test_bad_data_folders(tmp_path, capsys):
    def run(data) -> str:
        rc = _train(tmp_path, data, "bad", "--iter", "1")
        assert rc == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ")
        return err[0]

    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no images" in run(empty)
    only_a = tmp_path / "only_a"
    for k in range(4):
        _img(only_a / "trainA" / f"{k}.png")
    assert "trainB/ is missing" in run(only_a)
    (only_a / "trainB").mkdir()
    assert "empty" in run(only_a)
    flat = tmp_path / "flat"
    _img(flat / "x.png")
    assert "no trainA/ and trainB/" in run(flat)


def test_unreadable_images_are_skipped_and_counted(tmp_path):
    from content_ae.data import PairDataset, split_paths

    root = tmp_path / "d"
    for k in range(3):
        _img(root / "trainA" / f"{k}.png")
        _img(root / "trainB" / f"{k}.png", colour=(10, 20, 30))
    (root / "trainA/bad.png").write_bytes(b"not an image")
    (root / "trainB/bad.jpg").write_bytes(b"")
    ds = PairDataset(*split_paths(root), 16)
    with pytest.warns(UserWarning):
        items = [ds[i] for i in range(len(ds))]
    assert len(items) == 4 and all(a.shape == (3, 16, 16) for a, _ in items)
    assert ds.n_skipped == 2 and "skipped 1 unreadable" in ds.skipped_summary()


def test_list_files_resolve_relative_paths(tmp_path):
    from content_ae.data import split_paths

    root = tmp_path / "lists"
    for side in "AB":
        _img(root / "img" / f"{side}.png")
        (root / f"train{side}.txt").write_text(f"img/{side}.png\n\n")
    a, b = split_paths(root)
    assert a == [root / "img/A.png"] and b == [root / "img/B.png"]


def test_resume_without_checkpoint_and_bad_checkpoint(synth, tmp_path, capsys):
    assert _train(tmp_path, synth, "fresh", "--iter", "1", "--resume") == 1
    assert "does not exist" in capsys.readouterr().err
    assert cli("test")(["--model", "content-ae", "--checkpoint", "nope", str(synth),
                        "--checkpoint_dir", str(tmp_path)]) == 1
    assert capsys.readouterr().err.startswith("error: --checkpoint nope")


@pytest.mark.slow  # end to end through the scripts
def test_demo_part_tiny(tmp_path):
    from content_ae.demo import run

    out = run(tmp_path / "demo", tmp_path / "res", tiny=True, say=lambda *a: None)
    assert Path(out["grid"]).is_file() and "| copy target |" in out["table"]
    again = run(tmp_path / "demo", tmp_path / "res", tiny=True, say=lambda *a: None)
    assert again["table"] == out["table"]  # a finished run is reused, not refused
