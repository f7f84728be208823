"""The pose flow as a trainable model (``train.py --model pose-flow``) and its test-time face.

A batch is ``B`` quadruplets (anchor, positive of the same identity, two negatives of another
identity), i.e. ``4B`` images with their landmarks. Loss (the loop sums ``weight * term``)::

    bpd    bits/dim of the dequantised images under the conditional flow          weight 1
    quad   quadruplet loss on w (margins --margin_pos 0, --margin_neg 0.3)  weight --quad_weight 5
    recs   L1(image, reverse(own w, own maps, split latents drawn at --recon_temp 0.7))
                                                                         weight --recs_weight 1
    recc   L1(image, reverse(w of the other frame of the same identity, this frame's maps,
           split latents drawn at --recon_temp))                         weight --recc_weight 1
    perc   VGG19 feature L1 on the cross reconstructions (--vgg_weights FILE)
                                                                         weight --perc_weight 1
    idc    1 - cos of face embeddings on the cross reconstructions (--id_net FILE)
                                                                           weight --id_weight 1

``--rec_loss l2``: both reconstruction terms as the mean squared error instead of L1.

The anchor's defaults (PGFlowV3): the loss weights above, 8-bit images, Adam 1e-4 with betas
(0.9, 0.99); its feature-guide loss needs pretrained ArcFace blocks and is not reproduced. Our
changes: dequantisation noise at every size (the anchor's is commented out), learned priors
(``--prior standard`` for the anchor's N(0, I)), a cosine learning-rate decay over ``--iter``
that never climbs back (the anchor's CosineAnnealingLR with T_max 30 over 100 epochs does).

``--reference warp`` (ours): each frame is modelled given its partner frame of the same identity
(anchor <-> positive, negative 1 <-> negative 2) warped to its landmarks; the flow runs on the
residual and sees the warped partner in every condition. ``w`` then codes the residual, so the
quadruplet term is dropped; ``recc`` is exactly the test-time path (the partner warped, ``w``
and the split latents at their prior means), ``recs`` keeps the frame's own ``w``.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cliargs import (
    grid_count,
    model_size,
    nonnegative,
    nonnegative_int,
    positive,
    positive_int,
    real,
    whole,
)
from glow import bits_per_dim, quantize
from lrw.datasets import training_root
from training.config import opt
from training.recipe import DataInfo, Recipe
from training.recipe_helpers import dequantised, unwrap

from . import driving
from .data import QuadrupletDataset
from .losses import identity_loss, loss_net, perceptual_loss, quadruplet_loss
from .model import PRIORS, REFERENCES, PoseFlow

# ``--rec_loss``: the distance of the reconstruction terms
REC_LOSSES = {"l1": F.l1_loss, "l2": F.mse_loss}


@dataclass
class Config:
    """Pose-flow hyper-parameters (anchor defaults unless said)."""

    img_size: int = opt(64, "image size (divisible by 2^(n_block + n_header))", check=model_size)
    n_flow: int = opt(16, "flows per block (the first, unconditioned block gets half)",
                      check=positive_int)
    n_block: int = opt(4, "split blocks (squeeze, conditioned flows, split half off)",
                       check=positive_int)
    n_header: int = opt(2, "header blocks after the splits (squeeze, no split), down to w")
    hidden: int = opt(0, "hidden channels of every coupling network (0: the anchor's per-level "
                      "widths 64,128,128,256,256,512,512)")
    affine: bool = opt(True, "additive couplings instead of affine", flag="--additive")
    prior: str = opt("learned", "priors of the split latents and w: learned (conditional "
                     "Gaussians) or standard (the anchor's fixed N(0, I))", choices=list(PRIORS))
    reference: str = opt("none", "none: the anchor's model (w carries the appearance); warp: "
                         "model each frame given another frame of the face warped to its "
                         "landmarks (the flow learns what the warp cannot draw; use it with "
                         "--additive, the demo adds --recc_weight 30; no quadruplet term); "
                         "warp_motion: warp, with the warp's displacement field in the "
                         "condition too", choices=list(REFERENCES))
    prior_hidden: int = opt(0, "with --prior learned: 0, each split latent's prior is one "
                            "3x3 convolution of the kept half and the condition (linear); N > 0, "
                            "a conditioner network N channels wide (non-linear)",
                            check=nonnegative_int)
    sigma: float = opt(0.1, "heatmap sigma as a fraction of the image", check=positive)
    coord_below: int = opt(8, "levels below this many px also get the landmark coordinates")
    n_bits: int = opt(8, "bits per colour channel after quantisation", check=whole(1, 8))
    quad_weight: float = opt(5.0, "weight of the quadruplet loss on w", check=nonnegative)
    margin_pos: float = opt(0.0, "quadruplet loss: same-identity distances below this are free",
                            check=nonnegative)
    margin_neg: float = opt(0.3, "quadruplet loss: identity means are pushed this far apart",
                            check=nonnegative)
    recs_weight: float = opt(1.0, "weight of the L1 self reconstruction", check=nonnegative)
    recc_weight: float = opt(1.0, "weight of the L1 cross reconstruction", check=nonnegative)
    recon_temp: float = opt(0.7, "temperature of the split latents in the reconstructions",
                            check=nonnegative)
    rec_loss: str = opt("l1", "distance of both reconstruction terms: l1, or l2 (the mean "
                        "squared error: where the landmarks leave an edge's place uncertain it "
                        "is fitted by the mean, which PSNR rewards; weigh it ~15x higher)",
                        choices=list(REC_LOSSES))
    vgg_weights: str = opt("", "torchvision VGG19 state dict for the perceptual loss on the "
                           "cross reconstructions (empty: off)")
    perc_weight: float = opt(1.0, "weight of the perceptual loss (with --vgg_weights)",
                             check=nonnegative)
    id_net: str = opt("", "TorchScript face-embedding network for the identity loss on the "
                      "cross reconstructions (empty: off)")
    id_weight: float = opt(1.0, "weight of the identity loss (with --id_net)", check=nonnegative)
    id_size: int = opt(112, "input size of the face-embedding network", check=model_size)
    flip: float = opt(0.0, "probability of mirroring a training quadruplet left-right "
                      "(images, and landmarks renumbered; on the synthetic faces 0.5 changed "
                      "nothing measurable: docs/pose_flow.md)",
                      check=real(0.0, 1.0, name="probability"))
    lr_min: float = opt(1e-7, "the cosine learning-rate decay ends at this rate (at --iter)",
                        check=nonnegative)
    n_sample: int = opt(4, "quadruplets in the sample grids", check=grid_count)


def flatten_batch(batch) -> tuple[Tensor, Tensor]:
    """``(images [B, 4, 3, S, S], landmarks [B, 4, 68, 2])`` -> ``[4B, ...]`` ordered
    anchors, positives, negatives 1, negatives 2 (so ``chunk(4)`` splits the roles)."""
    images, lm = batch
    return (images.transpose(0, 1).reshape(-1, *images.shape[2:]),
            lm.transpose(0, 1).reshape(-1, *lm.shape[2:]))


def cross_order(n: int) -> Tensor:
    """Index of the partner frame of each of ``4B`` frames: anchor <-> positive, neg1 <-> neg2."""
    b = n // 4
    r = torch.arange(b)
    return torch.cat([r + b, r, r + 3 * b, r + 2 * b])


def partner_reference(m: PoseFlow, image: Tensor, lm: Tensor) -> Tensor | None:
    """With a reference: each frame's partner (same identity) warped to its landmarks, as the
    flow takes it (:meth:`PoseFlow.reference_input`)."""
    if m.reference == "none":
        return None
    k = cross_order(image.shape[0]).to(image.device)
    return m.reference_input(image[k], lm[k], lm)


# ---------------------------------------------------------------------------------------------
# Test time: test.py (--source / --transfer_grid) and evaluate.py
# ---------------------------------------------------------------------------------------------

class PoseFlowRecipe(Recipe):
    """The pose flow: a conditional flow re-posing a face to other landmarks."""

    NAME = "pose-flow"
    TRANSFER_GRID = True
    EVAL_JOB = "pose"
    Config = Config
    DEFAULT_CHECKPOINT = "pose-flow.pt"
    GENERATES = True
    NEEDS_MIX = False
    PASTE_REGION = "face"  # test.py --paste_back region: the pose flow changes the whole face
    # The anchor trained batch 16 quadruplets per GPU at lr 1e-4; one CPU/GPU here: 8.
    TRAIN_DEFAULTS = {"batch": 8, "lr": 1e-4, "iter": 100000, "sample_every": 500,
                      "save_every": 10000, "grad_clip": 5.0}

    def validate(self, cfg: Config) -> None:
        if cfg.n_block < 1 or cfg.n_header < 0 or cfg.n_flow < 1:
            raise ValueError("need --n_block >= 1, --n_header >= 0 and --n_flow >= 1")
        levels = cfg.n_block + cfg.n_header
        if cfg.img_size % 2**levels:
            raise ValueError(f"--img_size {cfg.img_size} is not divisible by 2^(n_block + "
                             f"n_header) = {2**levels}; use a multiple of {2**levels}")
        if not 1 <= cfg.n_bits <= 8:
            raise ValueError(f"--n_bits {cfg.n_bits} must be between 1 and 8")
        if cfg.prior not in PRIORS:
            raise ValueError(f"--prior {cfg.prior}: choose one of {', '.join(PRIORS)}")
        if cfg.reference not in REFERENCES:
            raise ValueError(f"--reference {cfg.reference}: choose one of {', '.join(REFERENCES)}")
        if cfg.sigma <= 0 or cfg.hidden < 0:
            raise ValueError("--sigma must be > 0 and --hidden >= 0")
        if cfg.prior_hidden and cfg.prior != "learned":
            raise ValueError("--prior_hidden needs --prior learned (the standard prior has no "
                             "network); drop one of them")
        for name in ("quad_weight", "recs_weight", "recc_weight", "perc_weight", "id_weight",
                     "recon_temp", "margin_pos", "margin_neg", "lr_min"):
            if getattr(cfg, name) < 0:
                raise ValueError(f"--{name} must be >= 0")
        for flag, path in (("--vgg_weights", cfg.vgg_weights), ("--id_net", cfg.id_net)):
            if path and not Path(path).is_file():
                raise ValueError(f"{flag} {path}: no such file")

    def dataset(self, cfg: Config, data_dir: Path):
        ds = QuadrupletDataset(training_root(data_dir), cfg.img_size, flip=cfg.flip)
        notes = [ds.index.skipped_summary()]
        if ds.single_frame_identities:
            notes.append(f"{ds.single_frame_identities} identities have a single frame (their "
                         "positive is the anchor itself)")
        for note in filter(None, notes):
            print(f"warning: {data_dir}: {note}", file=sys.stderr)
        return ds, DataInfo(data_dir)

    def build(self, cfg: Config, data: DataInfo | None = None) -> PoseFlow:
        return PoseFlow(img_size=cfg.img_size, n_flow=cfg.n_flow, n_block=cfg.n_block,
                        n_header=cfg.n_header, hidden=cfg.hidden, sigma=cfg.sigma,
                        coord_below=cfg.coord_below, prior=cfg.prior, affine=cfg.affine,
                        reference=cfg.reference, prior_hidden=cfg.prior_hidden)

    def initialize(self, model: PoseFlow, batch, ctx) -> None:
        """ActNorm data init from the *global* first batch, so every DDP rank starts identical
        (the anchor initialised each rank from its own shard)."""
        m = unwrap(model)
        image, lm = flatten_batch(batch)
        x = dequantised(image, ctx.model_cfg.n_bits, ctx)
        ref = partner_reference(m, image, lm)
        m.initialize(ctx.gather(x), ctx.gather(lm), None if ref is None else ctx.gather(ref))

    def losses(self, model: nn.Module, batch, ctx) -> dict[str, Tensor]:
        cfg: Config = ctx.model_cfg
        m = unwrap(model)
        image, lm = flatten_batch(batch)
        x = dequantised(image, cfg.n_bits, ctx)
        ref = partner_reference(m, image, lm)
        log_p, logdet, w, splits, conds = model(x, lm, ref=ref)  # through the (DDP) wrapper
        n_dims = x[0].numel()
        terms = {"bpd": bits_per_dim(log_p, logdet, n_dims, cfg.n_bits).mean(),
                 "logdet": (logdet / (n_dims * math.log(2))).mean().detach()}
        if ref is None:  # with a reference, w codes the residual: no identity to pull together
            quad, d_pos, d_neg = quadruplet_loss(*w.flatten(1).chunk(4), cfg.margin_pos,
                                                 cfg.margin_neg)
            terms.update(quad=quad, d_pos=d_pos.detach(), d_neg=d_neg.detach())
        want_rec = cfg.recs_weight > 0 or cfg.recc_weight > 0 or cfg.vgg_weights or cfg.id_net
        if want_rec:
            n = x.shape[0]
            # one reverse pass for both: own w (self) and, for the cross reconstruction, the
            # partner's w (or with a reference, w at its prior mean: the test-time path)
            eps = [ctx.global_rand((2 * n, *s.shape[1:]), normal=True).to(s.dtype) for s in splits]
            if ref is None:
                w_cross = w[cross_order(n).to(w.device)]
            else:  # exactly what a transfer computes: w and the split latents at their prior means
                w_cross = m.prior_w(n, 0.0)
                eps = [torch.cat([e[:n], torch.zeros_like(e[n:])]) for e in eps]
            w2 = torch.cat([w, w_cross])
            conds2 = [None if c is None else torch.cat([c, c]) for c in conds]
            rec = m.reverse(w2, conds2, None, cfg.recon_temp, eps,
                            ref=None if ref is None else torch.cat([ref, ref]))
            rec_s, rec_c = rec[:n], rec[n:]
            distance = REC_LOSSES[cfg.rec_loss]
            terms["recs"] = distance(rec_s, image)
            terms["recc"] = distance(rec_c, image)
            if cfg.vgg_weights:
                terms["perc"] = perceptual_loss(loss_net("vgg", cfg.vgg_weights, x.device),
                                                rec_c, image)
            if cfg.id_net:
                terms["idc"] = identity_loss(loss_net("id", cfg.id_net, x.device, cfg.id_size),
                                             rec_c, image)
        return terms

    def loss_weights(self, cfg: Config) -> dict[str, float]:
        weights = {"bpd": 1.0, "recs": cfg.recs_weight, "recc": cfg.recc_weight}
        if cfg.reference == "none":
            weights["quad"] = cfg.quad_weight
        if cfg.vgg_weights:
            weights["perc"] = cfg.perc_weight
        if cfg.id_net:
            weights["idc"] = cfg.id_weight
        return weights

    def lr_factor(self, cfg: Config, train_cfg, step: int) -> float:
        """Cosine decay from ``--lr`` at step 0 to ``--lr_min`` at ``--iter``, then held: it never
        climbs back (a function of the step alone, so a resumed run continues the same curve)."""
        lr0 = train_cfg.lr
        if lr0 <= 0:
            return 1.0
        u = min(step / max(train_cfg.iter, 1), 1.0)
        floor = min(cfg.lr_min / lr0, 1.0)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * u))

    @torch.no_grad()
    def sample(self, model: PoseFlow, batch, ctx) -> tuple[Tensor, int]:
        """Rows: anchors; positives; anchors re-posed to their positive's landmarks; anchors
        re-posed to a negative's landmarks (another face's pose); those negatives. Split latents
        at their prior means."""
        cfg: Config = ctx.model_cfg
        m = unwrap(model)
        image, lm = flatten_batch(batch)
        b = image.shape[0] // 4
        k = min(cfg.n_sample, b)
        a, p, n1 = image[:k], image[b:b + k], image[2 * b:2 * b + k]
        la, lp, ln = lm[:k], lm[b:b + k], lm[2 * b:2 * b + k]
        x = quantize(a, cfg.n_bits) + 0.5 / 2**cfg.n_bits
        to_p = m.transfer(x, la, lp)
        to_n = m.transfer(x, la, ln)
        return torch.cat([a, p, to_p, to_n, n1]).clamp(-0.5, 0.5), k

    def checkpoint_extra(self, model: PoseFlow, cfg: Config) -> dict:
        return {"architecture": unwrap(model).config()}

    def add_test_args(self, parser) -> None:
        driving.add_test_args(parser)

    def load_for_test(self, args, device):
        return driving.load_for_test(args, device)

    def generate(self, model, query, mix, source, args):
        return driving.generate(model, query, mix, source, args)

    @torch.no_grad()
    def transfer_poses(self, model: PoseFlow, images, landmarks, target_landmarks,
                       temperature: float = 0.0, mirror: bool = False) -> Tensor:
        """Each face's appearance (its ``w``) under every target's landmarks (``mirror``:
        averaged with the mirrored rendering, :meth:`PoseFlow.render`)."""
        app = model.appearance(images, landmarks, mirror)
        n = target_landmarks.shape[0]
        return torch.stack([model.render(model.select_appearance(app, i, n), target_landmarks,
                                         temperature) for i in range(images.shape[0])])


RECIPE = PoseFlowRecipe()
