"""MI-flow as a trainable model (``train.py --model mi-flow``) and its test-time face.

Loss (the loop sums ``weight * term``)::

    bpd        bits/dim of x: -(log p(z_top) + log p(z_split | c) + logdet - D log n_bins)
                                / (D log 2)                                        weight 1
    cond_bpd   -log p(z_split | c) / (D log 2): the condition-relevant term again   weight --beta
    recon      MSE(x, reverse(x's top latent, split latents sampled at --recon_temp from the
               conditional priors, x's conditions))                      weight --recon_weight
    mi         CLUB estimate of I(z_top; mouth crop), nats; gradient to the flow only
                                                                          weight --mi_weight
    matched    MSE(answer, reverse(query's top latent, mix's split latents; mix's conditions)):
               the thesis-mode output on lrw.matched pairs made from training data (ours)
                                                                      weight --matched_weight
    mi_q_nll   the CLUB estimator's own NLL (per condition dim); gradient to the estimator only
                                                                        weight --mi_q_weight

``bpd + beta * cond_bpd`` is the thesis's ``-log(n_bins) D + logdet + log_p + (beta + 1) log_c``
in bits/dim. Thesis defaults: beta 0, recon weight 1, no MI term (``--mi_weight 0``; the
estimator is then not even built unless ``--mi_monitor``).
"""

from __future__ import annotations

import argparse
import copy
import math
import time
import types
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cliargs import grid_count, model_size, nonnegative, positive, positive_int, whole
from glow import bits_per_dim, quantize
from glow.io import CheckpointError, is_ours, recorded_n_bits, safe_load, strip_prefix
from lrw.datasets import ClipDataset, ImageFolderDataset, training_root
from lrw.index import open_index
from lrw.matched import MatchedPairs, model_tensor
from training.checkpoint import load_checkpoint
from training.config import opt
from training.recipe import DataInfo, Recipe
from training.recipe_helpers import GlowFlags, dequantised, images, unwrap, validate_glow_flags
from training.run import resolve_checkpoint

from .io import is_thesis_state, model_from_thesis_state
from .model import MIFlow, mouth_window

ESTIMATORS = ["club", "club_sample"]


@dataclass
class Config(GlowFlags):
    """MI-flow hyper-parameters: the Glow ones (thesis names and defaults) and the MI terms."""

    n_block: int = opt(4, "number of blocks (L, at least 2)", check=whole(2))
    n_sample: int = opt(10, "images per row of the sample grids (at most the batch)",
                        check=grid_count)
    beta: float = opt(0.0, "extra weight of the condition-relevant term: adds beta * "
                      "bits/dim of the split latents under their conditional priors (thesis: 0)",
                      check=nonnegative)
    recon_weight: float = opt(1.0, "weight of the MSE between x and its reconstruction from "
                              "the top latent with sampled split latents (thesis: 1)",
                              check=nonnegative)
    recon_temp: float = opt(0.7, "temperature of the split latents in that reconstruction",
                            check=nonnegative)
    prior_kept: bool = opt(False, "also condition the split priors on the kept half "
                           "(standard Glow; ablation, not the thesis)")
    mi_weight: float = opt(0.0, "weight of the condition-irrelevant term: the CLUB upper bound "
                           "on I(top latent; mouth crop) in nats (ours; thesis: 0)",
                           check=nonnegative)
    mi_estimator: str = opt("club", "MI estimator: CLUB over all pairs of the batch, or "
                            "CLUB-sample (one shuffled partner each)", choices=ESTIMATORS)
    mi_hidden: int = opt(256, "hidden width of the estimator's q(c|z) network", check=positive_int)
    mi_cond_pool: int = opt(4, "the estimator's condition: the mouth window average-pooled "
                            "to N x N (3 N^2 numbers)", check=positive_int)
    mi_q_weight: float = opt(1.0, "weight of the estimator's own NLL (trains only the "
                             "estimator; scales its share of the clipped gradient norm)",
                             check=nonnegative)
    mi_lr_scale: float = opt(1.0, "the estimator's learning rate as a multiple of --lr",
                             check=positive)
    matched_weight: float = opt(0.0, "weight of the matched-pairs term (ours): MSE between the "
                                "thesis-mode output for a training query with another speaker's "
                                "mouth mixed in and the query speaker's own frame whose mouth "
                                "reads nearest (lrw/matched.py; needs mouth readings: a "
                                "synthetic set, or preprocess.py --landmarks). 0: off (thesis)",
                                check=nonnegative)
    matched_pairs: int = opt(192, "(query clip, source clip) pairs of different speakers the "
                             "matched-pairs term draws its frames from, once before training",
                             check=positive_int)
    matched_batch: int = opt(8, "matched (query, mix, answer) frames per step (global batch)",
                             check=positive_int)
    matched_within: str = opt("speaker", "where the matched answers come from: any clip of the "
                              "query's speaker, or the query's own clip (one head pose and "
                              "light, for data whose clips differ in them)",
                              choices=["speaker", "clip"])
    mi_monitor: bool = opt(False, "build and train the estimator and log the MI estimate "
                           "even when --mi_weight is 0")
    diag_pairs: int = opt(2, "held-out query x source pairs scored at every sample grid in "
                          "both test modes, when DATA is a synthetic set's train/ (0: off); "
                          "cond mode's motion shows how much of the mouth the conditional "
                          "priors explain")


def estimator_enabled(cfg: Config) -> bool:
    return cfg.mi_weight > 0 or cfg.mi_monitor


def matched_pool(root: Path, size: int, pairs: int, seed: int, within: str = "speaker",
                 log=None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The matched pairs of the training clips under ``root`` (:mod:`lrw.matched`) at the
    model's ``size``: ``(queries [P, 3, S, S], owner [N] (each frame's query), mixes
    [N, 3, S, S], answers [N, 3, S, S])`` in [-0.5, 0.5], the answers from ``within``
    (``speaker`` or ``clip``). ``ValueError`` (one line) without mouth readings."""
    t0 = time.time()
    ds = ClipDataset(open_index(root), size)  # DATA or DATA/train
    matched = MatchedPairs(ds, root, pairs, seed, flag="--matched_weight",
                           fallback="train with --matched_weight 0", within=within)
    queries, owner, mixes, answers = [], [], [], []
    for _, q, mix, ans in matched.iterate(size=size):
        owner += [len(queries)] * len(ans)
        queries.append(model_tensor([q], size))
        mixes.append(model_tensor(mix, size))
        answers.append(model_tensor(ans, size))
    if not queries:
        raise ValueError(f"--matched_weight: no readable pair among the {pairs} drawn from {root}")
    if log is not None:
        log(f"[mi-flow] matched pairs: {len(queries)} of {pairs} drawn from "
            f"{len(matched.by_speaker)} speakers ({matched.skipped} skipped for an unreadable "
            f"frame; mouth readings: {matched.source}), {len(owner)} frames, in "
            f"{time.time() - t0:.1f} s")
    return torch.cat(queries), torch.tensor(owner), torch.cat(mixes), torch.cat(answers)


# ---------------------------------------------------------------------------------------------
# Loading (test.py, evaluate.py)
# ---------------------------------------------------------------------------------------------

MODES = ("thesis", "cond")


def load_mi_flow(path: str | Path, map_location: str | torch.device = "cpu",
                 **thesis_flags) -> MIFlow:
    """Load MI-flow in eval mode from our checkpoint or a thesis state dict.

    Our checkpoints rebuild themselves from their recorded config; ``thesis_flags``
    (``n_flow n_block affine conv_lu img_size``) only describe/check a thesis state dict.
    """
    obj = safe_load(path, map_location)
    if is_ours(obj):
        ckpt = load_checkpoint(path, map_location, expect_model="mi-flow")
        return RECIPE.from_checkpoint(ckpt, path).eval()
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], Mapping) and not is_thesis_state(
                    strip_prefix(obj)):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: neither a project checkpoint nor an MI-flow state dict")
    return model_from_thesis_state(obj, source=str(path), **thesis_flags).eval()


class MIFlowRecipe(Recipe):
    """MI-flow: a Glow whose split latents have priors conditioned on the mouth."""

    NAME = "mi-flow"
    Config = Config
    # The thesis's MI-flow training: batch 10, Adam lr 1e-4, gradient-norm clip 5, 200k
    # iterations, sample grids every 100 and weights every 10k iterations.
    TRAIN_DEFAULTS = {"batch": 10, "lr": 1e-4, "iter": 200000, "grad_clip": 5.0,
                      "sample_every": 100, "save_every": 10000}
    DEFAULT_CHECKPOINT = "mi-flow_total_checkpoint.pt"
    GENERATES = True
    MODES = MODES  # test.py --mode choices; evaluate.py evaluates each

    def validate(self, cfg: Config) -> None:
        if cfg.n_block < 2 or cfg.n_flow < 1:
            raise ValueError("MI-flow needs --n_block >= 2 (a conditioned split) and --n_flow >= 1")
        validate_glow_flags(cfg)
        for name in ("beta", "recon_weight", "mi_weight", "mi_q_weight", "recon_temp",
                     "matched_weight"):
            if getattr(cfg, name) < 0:
                raise ValueError(f"--{name} must be >= 0")
        if cfg.mi_estimator not in ESTIMATORS:
            raise ValueError(f"--mi_estimator {cfg.mi_estimator}: choose one of {ESTIMATORS}")
        t, b, left, r = mouth_window(cfg.img_size)
        if not 1 <= cfg.mi_cond_pool <= min(b - t, r - left):
            raise ValueError(f"--mi_cond_pool {cfg.mi_cond_pool} must be between 1 and the mouth "
                             f"window's side ({min(b - t, r - left)} px at {cfg.img_size} px)")
        if estimator_enabled(cfg) and cfg.mi_q_weight <= 0:
            raise ValueError("--mi_q_weight must be > 0 when the MI estimator is used")

    def dataset(self, cfg: Config, data_dir: Path):
        return ImageFolderDataset(training_root(data_dir), cfg.img_size), DataInfo(data_dir)

    def build(self, cfg: Config, data: DataInfo | None = None) -> MIFlow:
        return MIFlow(3, cfg.n_flow, cfg.n_block, affine=cfg.affine, conv_lu=cfg.conv_lu,
                      hidden=cfg.hidden, img_size=cfg.img_size, prior_kept=cfg.prior_kept,
                      mi_estimator=cfg.mi_estimator if estimator_enabled(cfg) else None,
                      mi_hidden=cfg.mi_hidden, mi_cond_pool=cfg.mi_cond_pool)

    def load_weights(self, model: MIFlow, state: dict) -> None:
        if model.mi is None:  # an estimator trained alongside is not needed to generate
            state = {k: v for k, v in state.items() if not k.startswith("mi.")}
        model.load_state_dict(state)

    def param_groups(self, model: MIFlow, cfg: Config, train_cfg) -> list[dict]:
        groups = [{"params": model.flow_parameters()}]
        if model.mi is not None:
            groups.append({"params": list(model.mi.parameters()),
                           "lr": train_cfg.lr * cfg.mi_lr_scale})
        return groups

    def initialize(self, model: MIFlow, batch, ctx) -> None:
        x = dequantised(images(batch), ctx.model_cfg.n_bits, ctx)
        unwrap(model).initialize(ctx.gather(x))

    def losses(self, model: nn.Module, batch, ctx) -> dict[str, Tensor]:
        cfg: Config = ctx.model_cfg
        m = unwrap(model)
        image = images(batch)
        x = dequantised(image, cfg.n_bits, ctx)
        log_p, logdet, log_c, z_list, conds = model(x)  # through the (DDP) wrapper
        n_dims = x[0].numel()
        per_dim = n_dims * math.log(2)
        terms = {
            "bpd": bits_per_dim(log_p + log_c, logdet, n_dims, cfg.n_bits).mean(),
            "cond_bpd": (-log_c / per_dim).mean(),
            "log_p": (log_p / per_dim).mean().detach(),
            "log_c": (log_c / per_dim).mean().detach(),
            "logdet": (logdet / per_dim).mean().detach(),
        }
        if cfg.recon_weight > 0:
            eps = [ctx.global_rand(tuple(z.shape), normal=True).to(z.dtype) for z in z_list[:-1]]
            rec = m.reverse([*([None] * len(eps)), z_list[-1]], conds,
                            temperature=cfg.recon_temp, eps=[*eps, None])
            terms["recon"] = F.mse_loss(rec, image)
        if cfg.matched_weight > 0:
            terms["matched"] = self._matched_term(m, cfg, ctx)
        if m.mi is not None:
            c = m.mi_condition(image)
            # negatives from the global batch (ctx.gather: identity in one process)
            terms["mi"] = m.mi.mi_upper(z_list[-1], c, generator=ctx.generator,
                                        c_global=ctx.gather(c), rank=ctx.rank, world=ctx.world)
            terms["mi_q_nll"] = m.mi.learning_loss(z_list[-1], c)
        return terms

    def _matched_term(self, m: MIFlow, cfg: Config, ctx) -> Tensor:
        """MSE between the thesis-mode output (the query's top latent, the mix's split latents
        and conditions, inverted) and the answer, on ``--matched_batch`` frames of the pairs
        drawn once from the training clips (``ctx.data.cache``); the draw is the global batch's,
        sliced per rank."""
        pool = ctx.data.cache.get("matched")
        if pool is None:
            pool = ctx.data.cache["matched"] = matched_pool(
                ctx.data.root, cfg.img_size, cfg.matched_pairs, ctx.train_cfg.seed,
                within=cfg.matched_within, log=print if ctx.rank == 0 else None)
        queries, owner, mixes, answers = pool
        pick = torch.randint(len(owner), (cfg.matched_batch,), generator=ctx.generator)
        pick = pick[ctx.rank::ctx.world]
        n = len(pick)  # the queries and the mixes encoded as one batch
        z, conds = m.encode(torch.cat([queries[owner[pick]], mixes[pick]]).to(ctx.device))
        out = m.reverse([*(zi[n:] for zi in z[:-1]), z[-1][:n]], [c[n:] for c in conds])
        return F.mse_loss(out, answers[pick].to(ctx.device))

    def loss_weights(self, cfg: Config) -> dict[str, float]:
        weights = {"bpd": 1.0, "cond_bpd": cfg.beta, "recon": cfg.recon_weight}
        if cfg.matched_weight > 0:
            weights["matched"] = cfg.matched_weight
        if estimator_enabled(cfg):
            weights.update(mi=cfg.mi_weight, mi_q_nll=cfg.mi_q_weight)
        return weights

    @torch.no_grad()
    def sample(self, model: MIFlow, batch, ctx) -> tuple[Tensor, int]:
        """Rows: the batch; its reconstruction from the top latent with split latents sampled
        under its own conditions; the same under the conditions of the next image in the batch
        (a mouth swap); samples from the priors under the batch's conditions. Fixed noise."""
        cfg: Config = ctx.model_cfg
        m = unwrap(model)
        x = images(batch)[: cfg.n_sample]
        g = torch.Generator().manual_seed(ctx.train_cfg.seed)

        def noise(shapes) -> list[Tensor]:
            return [torch.randn((x.shape[0], *s), generator=g).to(x.device, x.dtype)
                    for s in shapes]

        z_list, conds = m.encode(quantize(x, cfg.n_bits) + 0.5 / 2**cfg.n_bits)
        n_split = len(conds)
        eps = noise(m.z_shapes(x.shape[-1]))
        split_none = [None] * n_split
        rec = m.reverse([*split_none, z_list[-1]], conds, cfg.temp, eps=eps)
        swapped = [c.roll(1, 0) for c in conds]
        swap = m.reverse([*split_none, z_list[-1]], swapped, cfg.temp, eps=eps)
        prior = m.reverse([None] * (n_split + 1), conds, cfg.temp, eps=eps)
        return torch.cat([x, rec, swap, prior]).clamp(-0.5, 0.5), x.shape[0]

    def checkpoint_extra(self, model: MIFlow, cfg: Config) -> dict:
        return {"architecture": unwrap(model).config()}

    def diagnostics(self, model: nn.Module, ctx) -> dict[str, float]:
        """Held-out motion and identity (evaluation.motion) in both test modes on the first
        ``--diag_pairs`` pairs, when the training data is a synthetic set's train/."""
        cfg: Config = ctx.model_cfg
        if not cfg.diag_pairs or ctx.heldout is None:
            return {}
        m = unwrap(model)
        out = {}
        for mode in ("thesis", "cond"):
            args = types.SimpleNamespace(mode=mode)
            scores = ctx.heldout(lambda q, mix, src, a=args: self.generate(m, q, mix, src, a),
                                 m.img_size, cfg.diag_pairs)
            out.update({f"{mode}_{k}": v for k, v in scores.items()
                        if k in ("motion_dev", "motion", "dpsnr")})
        return out

    def add_test_args(self, parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("mi-flow")
        g.add_argument("--mode", choices=["thesis", "cond"], default="thesis",
                       help="thesis: the mix's split latents with the query's top latent, inverted "
                            "exactly; cond: the query's top latent with the split latents at the "
                            "conditional prior means under each source frame's mouth (no mix "
                            "needed). Default: thesis")
        g.add_argument("--n_flow", type=positive_int, default=None,
                       help="thesis-format state dicts: flows per block (default: read from the "
                            "file; the thesis used 32)")
        g.add_argument("--n_block", type=positive_int, default=None,
                       help="thesis-format state dicts: blocks (default: read from the file; 4)")
        g.add_argument("--affine", action="store_true", default=None,
                       help="thesis-format state dicts: affine couplings (default: read from the "
                            "file; the thesis used additive)")
        g.add_argument("--no_lu", dest="no_lu", action="store_true", default=None,
                       help="thesis-format state dicts: plain 1x1 convs (default: read from the "
                            "file)")
        g.add_argument("--img_size", type=model_size, default=None,
                       help="thesis-format state dicts: image size the model was trained at "
                            "(default 64); our checkpoints record it")

    def load_for_test(self, args, device: torch.device | str) -> MIFlow:
        """Our checkpoint or the thesis's state dict at ``args.checkpoint``, in eval mode."""
        no_lu = getattr(args, "no_lu", None)
        path = resolve_checkpoint(getattr(args, "checkpoint", None),
                                  getattr(args, "checkpoint_dir", "checkpoint"),
                                  self.DEFAULT_CHECKPOINT)
        model = load_mi_flow(
            path, map_location="cpu",
            n_flow=getattr(args, "n_flow", None), n_block=getattr(args, "n_block", None),
            affine=getattr(args, "affine", None), conv_lu=None if no_lu is None else not no_lu,
            img_size=getattr(args, "img_size", None))
        return model.to(device).eval()

    @torch.no_grad()
    def generate(self, model: MIFlow, query: Tensor, mix: Tensor | None, source: Tensor,
                 args) -> Tensor:
        """The query face speaking with the source's mouth.

        query [1, 3, S, S], mix [T, 3, S, S] (the query with each source frame's mouth blended
        in), source [T, 3, S, S], all in [-0.5, 0.5] on the model's device -> [T, 3, S, S].

        ``thesis`` mode: the mix's split latents and the query's top latent, inverted exactly
        (the thesis's test.py). ``cond`` mode: the query's top latent with every split latent at
        its conditional prior mean under the source frame's condition. The query is encoded once;
        the frames go through as one batch.
        """
        m = unwrap(model)
        mode = getattr(args, "mode", "thesis") or "thesis"
        t = source.shape[0]
        z_query, _ = m.encode(query)
        top = z_query[-1].expand(t, *z_query[-1].shape[1:])
        if mode == "thesis":
            if mix is None:
                raise ValueError("--mode thesis needs the mouth mix")
            z_mix, conds = m.encode(mix)
            return m.reverse([*z_mix[:-1], top], conds)
        if mode == "cond":
            conds = m.conditions(source)
            return m.reverse([*([None] * len(conds)), top], conds, temperature=0.0)
        raise ValueError(f"unknown --mode {mode!r} (thesis or cond)")

    def eval_systems(self, model: MIFlow, args) -> list[tuple[str, argparse.Namespace]]:
        """evaluate.py: MI-flow in both its test modes, one system each ("mi-flow (MODE)")."""
        out = []
        for mode in self.MODES:
            mode_args = copy.copy(args)
            mode_args.mode = mode
            out.append((f"{self.NAME} ({mode})", mode_args))
        return out

    def eval_density(self, model: MIFlow, args) -> tuple[nn.Module, int, list[str]]:
        """evaluate.py: bits/dim of the model itself (its forward returns ``log_c``, which
        ``EvalModel.bits_per_dim`` adds), at the ``n_bits`` its checkpoint records."""
        return model, recorded_n_bits(args.checkpoint), []

    def log_density(self, density: MIFlow, x: Tensor) -> tuple[Tensor, Tensor]:
        """The split latents' conditional log-density ``log_c`` included."""
        log_p, logdet, log_c, _, _ = density(x)
        return log_p + log_c, logdet


RECIPE = MIFlowRecipe()
