"""Pose flow training, data and driving: losses on hand-made codes, a tiny run that lowers
its losses, the anchor's bugs (lazy ZeroConv scale, per-rank init, no dequantisation, a
climbing learning rate), the data checks and every bad input, test.py's driving (the grid:
tests/talking/test_pose_grid.py; evaluate.py: tests/evaluation/test_pose.py)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import POSE_TINY as TINY
from PIL import Image

from glow import ZeroConv2d
from lrw.video import read_video
from pose_flow.data import PoseDataError, QuadrupletDataset, open_index
from pose_flow.losses import quadruplet_loss
from pose_flow.recipe import RECIPE as recipe
from pose_flow.recipe import cross_order, flatten_batch
from training.config import TrainConfig
from training.loop import StepContext, step_generator
from training.recipe_helpers import dequantised

ROOT = Path(__file__).resolve().parents[2]


def _script(name: str):
    """A script's module loaded by path (``import test`` may find the standard library's)."""
    spec = importlib.util.spec_from_file_location(f"_pose_test_{name}", ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _ctx(cfg: recipe.Config, step: int = 0, world: int = 1, gather=None) -> StepContext:
    ctx = StepContext(step=step, rank=0, world=world, device=torch.device("cpu"),
                      model_cfg=cfg, train_cfg=TrainConfig(), generator=step_generator(0, step))
    if gather is not None:
        ctx.gather = gather
    return ctx


def test_quadruplet_loss_on_hand_made_codes():
    a, p = torch.tensor([[0.0, 0.0]]), torch.tensor([[2.0, 0.0]])   # d(a, p) = (4 + 0) / 2 = 2
    n1, n2 = torch.tensor([[10.0, 0.0]]), torch.tensor([[10.0, 2.0]])  # d = 2
    # means (1, 0) and (10, 1): d = (81 + 1) / 2 = 41 -> capped at the margin 0.3
    loss, d_pos, d_neg = quadruplet_loss(a, p, n1, n2, margin_pos=0.0, margin_neg=0.3)
    assert loss.item() == pytest.approx(0.5 * 2 + 0.5 * 2 - 0.3)
    assert d_pos.item() == pytest.approx(2.0) and d_neg.item() == pytest.approx(41.0)
    # identical pairs, means 0.2 apart (< margin): the negative term is live
    z = torch.zeros(1, 2)
    loss, _, d_neg = quadruplet_loss(z, z, z + 0.2 ** 0.5, z + 0.2 ** 0.5, 0.05, 0.3)
    assert d_neg.item() == pytest.approx(0.2)
    assert loss.item() == pytest.approx(0.05 - 0.2)


def test_tiny_run_lowers_the_losses(pose_trained):
    log = [json.loads(x) for x in (Path(pose_trained["summary"]["run_dir"]) / "log.jsonl")
           .read_text().splitlines()]
    first = np.mean([r["loss"] for r in log[:3]])
    last = np.mean([r["loss"] for r in log[-3:]])
    assert last < first - 0.5, (first, last)
    # with a reference the reconstructions start at the warp's error (an untrained model
    # decodes a zero residual): twenty tiny steps are not expected to beat it
    keys = ("bpd", "recs", "recc") if pose_trained["reference"] == "none" else ("bpd",)
    for key in keys:
        assert np.mean([r[key] for r in log[-3:]]) < np.mean([r[key] for r in log[:3]]), key
    assert (Path(pose_trained["summary"]["run_dir"]) / "000020.png").is_file()
    # the learning rate decays and never climbs back
    lrs = [r["lr"] for r in log]
    assert all(b <= a for a, b in zip(lrs, lrs[1:], strict=False)) and lrs[-1] < lrs[0] / 10


def test_rec_loss_l2_is_the_mean_squared_error_of_the_same_reconstructions(pose_set):
    ds = QuadrupletDataset(pose_set / "train", 16)
    batch = torch.utils.data.default_collate([ds[0], ds[1]])
    terms = {}
    for loss in ("l1", "l2"):
        cfg = recipe.Config(**TINY, reference="warp", affine=False, recon_temp=0.0, rec_loss=loss)
        torch.manual_seed(0)
        model = recipe.build(cfg)
        recipe.initialize(model, batch, _ctx(cfg))
        # perturb the zero-initialised outputs so the reconstructions are not the warp itself
        with torch.no_grad():
            for zc in (m for m in model.modules() if isinstance(m, ZeroConv2d)):
                zc.conv.weight.normal_(0, 0.05)
        terms[loss] = recipe.losses(model, batch, _ctx(cfg))
        # the image and the reconstructions of this pass, rebuilt the way losses() makes them
        image, lm = flatten_batch(batch)
        n = image.shape[0]
        ref = model.warp_reference(image[cross_order(n)], lm[cross_order(n)], lm)
        with torch.no_grad():
            conds = model.conditions(lm, ref)
            rec = model.reverse(model.prior_w(n, 0.0), conds, None, 0.0, None, ref=ref)
        want = {"l1": (rec - image).abs().mean(), "l2": ((rec - image) ** 2).mean()}[loss]
        assert terms[loss]["recc"].item() == pytest.approx(want.item(), rel=1e-5), loss
    assert terms["l2"]["recc"] < terms["l1"]["recc"]  # errors below 1: squares are smaller


def test_lr_factor_is_monotone_and_ends_at_lr_min():
    cfg, tc = recipe.Config(lr_min=1e-6), TrainConfig(lr=1e-4, iter=100)
    f = [recipe.lr_factor(cfg, tc, s) for s in range(0, 300)]
    assert f[0] == 1.0 and all(b <= a + 1e-12 for a, b in zip(f, f[1:], strict=False))
    assert f[100] == pytest.approx(0.01) and f[299] == pytest.approx(0.01)


def test_zero_conv_scale_is_trained_from_the_first_step(pose_set):
    cfg = recipe.Config(**TINY)
    model = recipe.build(cfg)
    ds = QuadrupletDataset(pose_set / "train", 16)
    batch = torch.utils.data.default_collate([ds[0], ds[1]])
    recipe.initialize(model, batch, _ctx(cfg))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    zc = next(m for m in model.modules() if isinstance(m, ZeroConv2d))
    scale = zc.scale
    owned = {id(p) for g in opt.param_groups for p in g["params"]}
    start = scale.detach().clone()
    for step in range(3):
        terms = recipe.losses(model, batch, _ctx(cfg, step))
        opt.zero_grad()
        sum(w * terms[k] for k, w in recipe.loss_weights(cfg).items()).backward()
        # the forward pass used the optimiser's own parameter (the anchor replaced it with a
        # new Parameter on the first forward, so the optimiser never saw it move)
        assert zc.scale is scale and id(scale) in owned and scale.grad is not None
        opt.step()
    assert not torch.equal(scale.detach(), start)


def test_actnorm_init_uses_the_global_batch(pose_set):
    cfg = recipe.Config(**TINY)
    ds = QuadrupletDataset(pose_set / "train", 16)
    local = torch.utils.data.default_collate([ds[0]])
    other = torch.utils.data.default_collate([ds[5]])

    def gather(x):  # two ranks: this one's shard and another's
        o = flatten_batch(other)
        extra = o[0] if x.dim() == 4 else o[1]
        return torch.cat([x, extra.to(x.dtype)])

    a, b = recipe.build(cfg), recipe.build(cfg)
    b.load_state_dict(a.state_dict())
    recipe.initialize(a, local, _ctx(cfg, gather=gather))
    recipe.initialize(b, local, _ctx(cfg))
    assert not torch.allclose(a.blocks[0].flows[0].actnorm.loc, b.blocks[0].flows[0].actnorm.loc)


@pytest.mark.parametrize("size", [64, 256])
def test_dequantisation_noise_at_every_size(size):
    cfg = recipe.Config(n_bits=8)
    x = torch.rand(1, 3, size, size) - 0.5
    q = dequantised(x, cfg.n_bits, _ctx(cfg))
    noise = q - torch.round((x + 0.5) * 255) / 256 + 0.5
    assert noise.min() >= -1e-6 and noise.max() < 1 / 256 + 1e-6 and noise.std() > 1 / 256 / 4


def test_optional_vgg_and_identity_losses_from_local_files(pose_set, tmp_path):
    from torchvision.models.vgg import cfgs, make_layers

    torch.manual_seed(0)
    vgg = tmp_path / "vgg19.pt"  # a randomly initialised VGG19, saved as torchvision names it
    torch.save({f"features.{k}": v for k, v in make_layers(cfgs["E"]).state_dict().items()}, vgg)
    emb = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, 2), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 8))
    idnet = tmp_path / "id.pt"
    torch.jit.save(torch.jit.trace(emb, torch.rand(1, 3, 32, 32)), str(idnet))
    cfg = recipe.Config(**TINY, vgg_weights=str(vgg), id_net=str(idnet), id_size=32)
    recipe.validate(cfg)
    model = recipe.build(cfg)
    ds = QuadrupletDataset(pose_set / "train", 16)
    terms = recipe.losses(model, torch.utils.data.default_collate([ds[0]]), _ctx(cfg))
    assert {"perc", "idc"} <= set(terms) and {"perc", "idc"} <= set(recipe.loss_weights(cfg))
    assert terms["perc"].item() > 0 and np.isfinite(terms["idc"].item())
    terms["perc"].backward()  # the perceptual loss reaches the flow
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    with pytest.raises(ValueError, match="--vgg_weights .*no such file"):
        recipe.validate(recipe.Config(**TINY, vgg_weights=str(tmp_path / "nope.pt")))


def test_prior_hidden_builds_network_priors_and_needs_the_learned_prior():
    cfg = recipe.Config(**{**TINY, "prior_hidden": 4})
    recipe.validate(cfg)
    m = recipe.build(cfg)
    assert m.config()["prior_hidden"] == 4
    assert all(isinstance(b.prior, torch.nn.Sequential) for b in m.blocks if b.prior is not None)
    with pytest.raises(ValueError, match="--prior_hidden needs --prior learned"):
        recipe.validate(recipe.Config(**{**TINY, "prior_hidden": 4, "prior": "standard"}))


# -- data and bad input ------------------------------------------------------------------------


def test_bad_landmark_files_are_skipped_and_counted(pose_set, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(pose_set / "train", data)
    frames = sorted(data.glob("id000/clip00/*.png"))
    frames[0].with_suffix(".npy").unlink()                                # missing
    np.save(frames[1].with_suffix(".npy"), np.zeros((5, 2), np.float32))  # wrong shape
    bad = np.load(frames[2].with_suffix(".npy"))
    bad[3, 0] = np.nan
    np.save(frames[2].with_suffix(".npy"), bad)                           # NaN
    ix = open_index(data)
    assert ix.skipped == {"missing": 1, "shape": 1, "nan": 1}
    assert len(ix.frames) == 9 and "id000" not in ix.identities
    assert (data / ".pose_index.json").is_file()
    assert open_index(data).skipped == ix.skipped  # from the cache


def test_the_sampler_keeps_landmarks_and_reads_a_changed_file_again(pose_set, tmp_path):
    from pose_flow import data as pose_data

    root = tmp_path / "data"
    shutil.copytree(pose_set / "train", root)
    ds = QuadrupletDataset(root, 16)
    frame = ds.index.frames[0]
    _, lm = ds.load(0)
    assert torch.equal(lm, torch.from_numpy(np.load(frame.with_suffix(".npy"))))
    lm += 1  # the caller's copy: the kept array is not touched
    assert torch.equal(ds.load(0)[1], torch.from_numpy(np.load(frame.with_suffix(".npy"))))
    moved = np.load(frame.with_suffix(".npy")) * 0.5
    np.save(frame.with_suffix(".npy"), moved)
    assert torch.equal(ds.load(0)[1], torch.from_numpy(moved))  # the file changed: read again
    np.save(frame.with_suffix(".npy"), np.zeros((5, 2), np.float32))
    with pytest.raises(PoseDataError, match="landmarks now shape"):
        ds.load(0)
    frame.with_suffix(".npy").unlink()
    with pytest.raises(PoseDataError, match="landmarks now missing"):
        ds.load(0)
    assert len(pose_data._landmarks) <= pose_data.LANDMARK_CACHE_ENTRIES


def test_mirror_keeps_every_point_meaning_on_a_symmetric_face():
    from pose_flow.conditions import MIRROR, mirror
    from synthface.face import sample_identity
    from synthface.landmarks import face_landmarks

    assert sorted(MIRROR.tolist()) == list(range(68))
    # the synthetic faces are drawn symmetric about x = 0.5: mirrored, every point lands on
    # the point of the same meaning (a wrong pairing moves a point by a face's width)
    lm = torch.from_numpy(np.stack([face_landmarks(sample_identity(np.random.default_rng(s)))
                                    for s in range(3)]))
    img = torch.rand(3, 3, 8, 8)
    m_img, m_lm = mirror(img, lm)
    assert torch.allclose(m_lm, lm, atol=1e-9)
    assert torch.equal(m_img[..., 0], img[..., -1])
    back_img, back_lm = mirror(m_img, m_lm + 0.01)  # twice: the identity (on any points)
    assert torch.equal(back_img, img)
    assert torch.allclose(back_lm, lm + torch.tensor([-0.01, 0.01]).double(), atol=1e-12)


def test_flip_mirrors_whole_quadruplets_from_the_items_generator(pose_set):
    from pose_flow.data import mirror

    plain = QuadrupletDataset(pose_set / "train", 16)
    always = QuadrupletDataset(pose_set / "train", 16, flip=1.0)
    half = [QuadrupletDataset(pose_set / "train", 16, flip=0.5) for _ in range(2)]
    for ds in (plain, always, *half):
        ds.set_epoch(3, seed=1)
    flipped = 0
    for i in range(len(plain)):
        img, lm = plain[i]
        a_img, a_lm = always[i]
        m_img, m_lm = mirror(img, lm)
        assert torch.equal(a_img, m_img) and torch.equal(a_lm, m_lm)  # same partners, mirrored
        h_img, h_lm = half[0][i]
        assert torch.equal(h_img, half[1][i][0])  # the same draw on every instance
        flipped += bool(torch.equal(h_img, m_img))
        assert torch.equal(h_img, m_img) or torch.equal(h_img, img)
    assert 0 < flipped < len(plain)


def test_single_frame_identity_and_one_identity(pose_set, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(pose_set / "train", data)
    for f in sorted(data.glob("id001/clip00/*.png"))[1:]:
        f.unlink()
        f.with_suffix(".npy").unlink()
    ds = QuadrupletDataset(data, 16)
    assert ds.single_frame_identities == 1
    i = ds.index.frames.index(next(data.glob("id001/clip00/*.png")))
    a, p, n1, n2 = ds.indices(i)
    assert a == p and ds.index.identity_of[n1] == ds.index.identity_of[n2] != \
        ds.index.identity_of[a]
    one = tmp_path / "one"
    shutil.copytree(pose_set / "train" / "id000", one / "id000")
    with pytest.raises(PoseDataError, match="only one identity"):
        QuadrupletDataset(one, 16)
    empty = tmp_path / "empty" / "id"
    empty.mkdir(parents=True)
    with pytest.raises(PoseDataError, match="no frame with usable landmarks"):
        QuadrupletDataset(empty.parent, 16)


# -- test.py and evaluate.py -------------------------------------------------------------------

def test_driving_writes_every_frame_a_video_and_a_grid(pose_set, pose_trained, tmp_path):
    test_script = _script("test")

    ck = pose_trained["ckpt"]
    src = pose_set / "image" / "source_img" / "drive00"
    query = pose_set / "image" / "ref_img" / "ev00_16.png"
    rc = test_script.main(["--model", "pose-flow", "--source", str(src), str(query),
                           "--checkpoint", str(ck), "--result_dir", str(tmp_path),
                           "--no_progress", "--retarget", "--batch", "2"])
    assert rc == 0
    out = tmp_path / "target_img" / "drive00" / "ev00_16"
    n = len(list(src.glob("*.png")))
    assert len(list(out.glob("[0-9]*.png"))) == n == 5
    frames, fps = read_video(out / "video.mp4")
    assert len(frames) == n and fps == pytest.approx(25)
    assert (out / "grid.png").is_file()
    # --mirror reaches the model: the same frames, each averaged with the mirrored rendering
    rc = test_script.main(["--model", "pose-flow", "--source", str(src), str(query),
                           "--checkpoint", str(ck), "--result_dir", str(tmp_path / "m"),
                           "--no_progress", "--retarget", "--batch", "2", "--mirror"])
    mout = tmp_path / "m" / "target_img" / "drive00" / "ev00_16"
    plain = [np.asarray(Image.open(f)) for f in sorted(out.glob("[0-9]*.png"))]
    mirrored = [np.asarray(Image.open(f)) for f in sorted(mout.glob("[0-9]*.png"))]
    assert rc == 0 and len(mirrored) == n
    assert any(not np.array_equal(a, b) for a, b in zip(plain, mirrored, strict=True))


def test_source_without_landmarks_is_a_one_line_error(pose_set, pose_trained, tmp_path, capsys):
    test_script = _script("test")

    src = tmp_path / "src"
    shutil.copytree(pose_set / "image" / "source_img" / "drive00", src)
    (src / "002.npy").unlink()
    rc = test_script.main(["--model", "pose-flow", "--source", str(src),
                           str(pose_set / "image" / "ref_img" / "ev00_16.png"), "--checkpoint",
                           str(pose_trained["ckpt"]),
                           "--result_dir", str(tmp_path), "--no_progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "002.png" in err[0] and err[0].startswith("error:")


def test_driving_from_a_video_file(pose_set, pose_trained, tmp_path, shared_faces):
    """test.py --model pose-flow --source VIDEO: the cached crops carry their landmarks, one
    frame out per source frame, pasted back at the query's size (the face region)."""
    from faces.io import read_image, sorted_frames
    from lrw.video import write_video

    frames = [read_image(p) for p in sorted_frames(shared_faces / "source_img" / "ellen")[:4]]
    video = write_video(tmp_path / "clip.mp4", frames, 25)
    query = pose_set / "image" / "ref_img" / "ev00_16.png"
    rc = _script("test").main(["--model", "pose-flow", "--source", str(video), str(query),
                               "--checkpoint", str(pose_trained["ckpt"]),
                               "--result_dir", str(tmp_path / "res"), "--image_dir",
                               str(tmp_path / "image"), "--no_progress"])
    assert rc == 0
    out = tmp_path / "res" / "target_img" / "clip" / "ev00_16"
    assert len(list(out.glob("[0-9]*.png"))) == 4
    cache = next((tmp_path / "image" / "source_img" / ".video").iterdir())
    assert len(list(cache.glob("*.npy"))) == 4  # the landmarks the pose flow is driven by
    size = np.asarray(Image.open(query)).shape[:2]
    assert np.asarray(Image.open(out / "000.png")).shape[:2] == size
