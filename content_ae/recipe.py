"""The content-disentanglement auto-encoder as a recipe (``train.py --model content-ae``).

One optimiser step trains both players, with two Adam parameter groups (auto-encoder and
discriminator, betas (0.5, 0.999), each with its own learning rate and gradient-norm clip):

* auto-encoder: ``rec_a + rec_b + w_adv * adv`` with ``rec_a = MSE(Dec(E1(a) ⊕ E2(a)), a)``,
  ``rec_b = MSE(Dec(E1(b) ⊕ 0), b)``, ``adv = BCE(D(E1(a)), 0) + BCE(D(E1(b)), 0)``; the
  discriminator's parameters are frozen while ``adv`` is built, so it sends them no gradient;
* discriminator: ``disc = BCE(D(E1(a)), 1) + BCE(D(E1(b)), 0)`` on the *same* common codes,
  detached, so E1 runs once per batch and step (the original encodes both batches a second
  time for the discriminator and back-propagates into E1 for nothing).

The original alternates: auto-encoder step, then the discriminator sees the updated E1. Here
the discriminator sees the codes from before the update (one step older); the losses and the
gradients of each player are otherwise the paper's. Images are scaled to ``[-1, 1]`` for the
losses, as the paper does. ``--mask`` adds ``mask_rec`` (A rebuilt as ``m * Dec(E1(a) ⊕ E2(a))
+ (1 - m) * Dec(E1(a) ⊕ 0)``) and ``mask_l1`` (mean of the mask, weighted by
``--mask_weight``): the mask must cover what the attribute adds and nothing else.
"""

from __future__ import annotations

import argparse
import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cliargs import finite, grid_count, model_size, nonnegative, positive_int
from training.config import opt
from training.recipe import DataInfo, Recipe

from .data import PairDataset, split_paths
from .model import MASK_POWER, Arch, ContentAE, _ints, bce_logits

ARCH_DEFAULTS = {
    "original": dict(n_down=6, sep=25, e1_widths="32,64,128,256", e2_widths="32,64,128,128,128",
                     dec_widths="512,256,128,64,32", disc_hidden=512, disc_lr=2e-4,
                     eps=1e-8),
    # The remake's E2 has 512 base channels (about 106M parameters); here it matches E1's.
    "improved": dict(n_down=4, sep=128, e1_widths="32,64,128,256", e2_widths="32,64,128,256",
                     dec_widths="", disc_hidden=256, disc_lr=4e-4, eps=1e-6),
}


@dataclass
class Config:
    """Content-AE options (0 or empty: the architecture's default, see ``--arch``)."""

    arch: str = opt("original", "original (Press et al.: 4x4 stride-2 convs, transposed-conv "
                    "decoder, MLP discriminator) or improved (the remake: residual blocks, "
                    "upsampling + ILN, spectral-norm discriminator)",
                    choices=list(ARCH_DEFAULTS))
    img_size: int = opt(128, "image size (a multiple of 2^n_down)", check=model_size)
    n_down: int = opt(0, "stride-2 downsamplings per encoder (0: 6 original, 4 improved); "
                      "the code grid is img_size / 2^n_down")
    code: int = opt(512, "code channels per grid cell (common + specific)", check=positive_int)
    sep: int = opt(0, "specific channels per grid cell (0: 25 original, 128 improved)")
    e1_widths: str = opt("", "E1 widths of the first layers; the rest are code - sep "
                         "(empty: 32,64,128,256)")
    e2_widths: str = opt("", "E2 widths before its last layer (sep) (empty: 32,64,128,128,128 "
                         "original, 32,64,128,256 improved)")
    dec_widths: str = opt("", "original decoder: widths after each transposed conv but the last "
                          "(empty: 512,256,128,64,32)")
    disc_hidden: int = opt(0, "discriminator width (0: 512 original, 256 improved)")
    n_res: int = opt(6, "improved: residual blocks at the end of each encoder")
    dec_res: int = opt(3, "improved: residual blocks at the start of the decoder")
    w_adv: float = opt(1e-3, "weight of the adversarial term on the common code (the "
                       "original's --discweight)", check=nonnegative)
    disc_lr: float = opt(0.0, "discriminator learning rate (0: 2e-4 original, 4e-4 improved)",
                         check=nonnegative)
    eps: float = opt(0.0, "Adam epsilon of both groups (0: 1e-8 original, 1e-6 improved)",
                     check=nonnegative)
    ae_clip: float = opt(5.0, "gradient-norm clip of the auto-encoder (0: off)", check=nonnegative)
    disc_clip: float = opt(5.0, "gradient-norm clip of the discriminator (0: off; the original "
                           "meant 5 but its clip saw no parameters)", check=nonnegative)
    mask: bool = opt(False, "the decoder also predicts a soft mask; a transfer or removal "
                     "changes only the masked region")
    mask_weight: float = opt(0.01, "--mask: weight of the masks' means (sparsity): A's own "
                             "mask (mask_l1) and the mask of B's code (mask_b; B has nothing "
                             "to add, so its mask should vanish)", check=nonnegative)
    mask_warmup: int = opt(0, "--mask: iterations over which the sparsity weight rises "
                           "linearly from 0 (a mask pushed to zero before the attribute has left "
                           "E1 stays there: its sigmoid saturates)")
    w_rec_a: float = opt(1.0, "weight of rec_a, the plain decoding of A's code; with --mask "
                         "mask_rec rebuilds A too, and 0 leaves the decoder's image free "
                         "outside the mask", check=nonnegative)
    flip: bool = opt(True, "no random horizontal flips of the training images", flag="--no_flip")
    n_display: int = opt(8, "faces per side in the sample grids", check=grid_count)


def arch_of(cfg: Config) -> Arch:
    """The resolved architecture (defaults filled in); ``ValueError`` for impossible flags."""
    d = ARCH_DEFAULTS.get(cfg.arch)
    if d is None:
        raise ValueError(f"--arch {cfg.arch}: choose one of {', '.join(ARCH_DEFAULTS)}")
    n_down = cfg.n_down or d["n_down"]
    sep = cfg.sep or d["sep"]
    e1 = _ints(cfg.e1_widths or d["e1_widths"], "e1_widths")
    e2 = _ints(cfg.e2_widths or d["e2_widths"], "e2_widths")
    dec = _ints(cfg.dec_widths or d["dec_widths"], "dec_widths")
    if cfg.arch == "improved" and not cfg.n_down:
        n_down = len(e1)
    return Arch(arch=cfg.arch, img_size=cfg.img_size, n_down=n_down, code=cfg.code, sep=sep,
                e1_widths=e1, e2_widths=e2, dec_widths=dec,
                disc_hidden=cfg.disc_hidden or d["disc_hidden"], n_res=cfg.n_res,
                dec_res=cfg.dec_res, mask=cfg.mask)


@contextlib.contextmanager
def frozen(module: nn.Module):
    """Parameters of ``module`` record no gradient inside the block (inputs still do)."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def _net(model) -> ContentAE:
    if isinstance(model, nn.parallel.DistributedDataParallel):
        raise ValueError("content-ae does not support torchrun/DDP yet; train with one process")
    return model


def _flip(x: Tensor, ctx) -> Tensor:
    """Random horizontal flips from the step generator (the same on a resumed run; each call
    draws anew, so A and B flip independently)."""
    if not ctx.model_cfg.flip:
        return x
    u = ctx.global_rand((x.shape[0],))
    return torch.where((u < 0.5).view(-1, 1, 1, 1), x.flip(-1), x)


TRAIN_ALIASES = {"--bs": "--batch", "--iters": "--iter", "--resize": "--img_size",
                 "--discweight": "--w_adv", "--disclr": "--disc_lr",
                 "--display_iter": "--sample_every", "--save_iter": "--save_every",
                 "--progress_iter": "--log_every", "--num_display": "--n_display"}


def translate(argv: list[str], aliases: dict[str, str]) -> list[str]:
    """Rewrite the original's flags as ours.

    ``aliases`` renames flags that take a value. Besides: ``--root DATA`` becomes the
    positional data folder, ``--out DIR`` sets both ``--checkpoint_dir`` and ``--result_dir``,
    ``--load DIR`` becomes ``--resume`` with ``--checkpoint_dir DIR`` (an empty ``--load ''``,
    the original's default, means a fresh run). Everything else passes through unchanged.
    """
    out: list[str] = []
    tail: list[str] = []
    i = 0
    while i < len(argv):
        flag, eq, value = argv[i].partition("=") if argv[i].startswith("--") else (argv[i], "", "")
        value = value if eq else None  # --flag=value or --flag value
        special = flag in ("--root", "--out", "--load") or flag in aliases
        if special and value is None:
            if i + 1 >= len(argv):
                out.append(argv[i])  # let argparse report the missing value
                break
            value = argv[i + 1]
            i += 1
        i += 1
        if not special:
            out.append(argv[i - 1])
            continue
        if flag == "--root":
            tail.append(value)
        elif flag == "--out":
            out += ["--checkpoint_dir", value, "--result_dir", value]
        elif flag == "--load":
            if value:
                out += ["--resume", "--checkpoint_dir", value]
        else:
            out += [aliases[flag], value]
    return out + tail


class ContentAERecipe(Recipe):
    """The content-disentanglement auto-encoder (two players, one optimiser step)."""

    NAME = "content-ae"
    TEST_JOB = "transfer"
    EVAL_JOB = "attribute"
    Config = Config
    DDP_EXACT = False  # train.py refuses torchrun with DDP_NOTE (tests/training/test_ddp.py)
    DDP_NOTE = ("its losses call the sub-networks directly rather than through the DDP wrapper "
                "and freeze the discriminator mid-step, which DDP's gradient reducer does not "
                "follow")
    # The original: batch 32, lr 2e-4 both, 1.25M iterations, grids every 5000, checkpoints
    # every 10000. --lr is the auto-encoder's (the remake used 1e-4: pass --lr 1e-4 with
    # --arch improved).
    TRAIN_DEFAULTS = {"batch": 32, "lr": 2e-4, "iter": 1250000, "sample_every": 5000,
                      "save_every": 10000, "log_every": 100}

    def validate(self, cfg: Config) -> None:
        a = arch_of(cfg)
        if a.n_down < 1 or cfg.img_size % 2**a.n_down or cfg.img_size < 2**a.n_down:
            k = 2**a.n_down
            raise ValueError(f"--img_size {cfg.img_size} is not a multiple of 2^n_down = "
                             f"{k}; use e.g. {k * max(1, cfg.img_size // k)}")
        if not 0 < a.sep < a.code:
            raise ValueError(f"--sep {a.sep} must be between 1 and --code {a.code} - 1")
        if a.arch == "original":
            if len(a.e1_widths) > a.n_down:
                raise ValueError(f"--e1_widths has {len(a.e1_widths)} entries, more than n_down "
                                 f"{a.n_down}")
            for name, widths in (("e2_widths", a.e2_widths), ("dec_widths", a.dec_widths)):
                if len(widths) != a.n_down - 1:
                    raise ValueError(f"--{name} needs n_down - 1 = {a.n_down - 1} entries, got "
                                     f"{len(widths)}")
        else:
            for name, widths in (("e1_widths", a.e1_widths), ("e2_widths", a.e2_widths)):
                if len(widths) != a.n_down:
                    raise ValueError(f"--{name} needs n_down = {a.n_down} entries (stem + "
                                     f"{a.n_down - 1} downsamplings), got {len(widths)}")
            if a.code % 2**a.n_down:
                raise ValueError(f"--code {a.code} must be divisible by 2^n_down = {2**a.n_down} "
                                 "(the decoder halves it at each upsampling)")
        if min(cfg.w_adv, cfg.mask_weight, cfg.w_rec_a, cfg.ae_clip, cfg.disc_clip) < 0:
            raise ValueError("--w_adv, --mask_weight, --w_rec_a, --ae_clip and --disc_clip must "
                             "not be negative")
        if cfg.n_display < 1:
            raise ValueError("--n_display must be at least 1")

    def build(self, cfg: Config, data: DataInfo | None = None) -> ContentAE:
        return ContentAE(arch_of(cfg))

    def dataset(self, cfg: Config, data_dir: Path):
        a, b = split_paths(data_dir, "train")
        return PairDataset(a, b, cfg.img_size), DataInfo(data_dir)

    def param_groups(self, model: ContentAE, cfg: Config, train_cfg) -> list[dict]:
        """Two Adam groups, each clipped on its own (``clip_norm``, see ``training.loop``).

        Both use the fused Adam kernel (one pass over each parameter instead of a chain of
        element-wise ops; the same update up to rounding), about 5% of a CPU step at 128 px.
        """
        d = ARCH_DEFAULTS[cfg.arch]
        eps = cfg.eps or d["eps"]
        return [
            {"params": model.autoencoder_parameters(), "lr": train_cfg.lr, "fused": True,
             "betas": (0.5, 0.999), "eps": eps, "clip_norm": cfg.ae_clip, "name": "autoencoder"},
            {"params": list(model.disc.parameters()), "lr": cfg.disc_lr or d["disc_lr"],
             "fused": True, "betas": (0.5, 0.999), "eps": eps, "clip_norm": cfg.disc_clip,
             "name": "discriminator"},
        ]

    def losses(self, model, batch, ctx) -> dict[str, Tensor]:
        """Named terms (see the module docstring); ``batch = (a [n,3,S,S], b [n,3,S,S])`` in
        ``[-0.5, 0.5]``."""
        m = _net(model)
        cfg = ctx.model_cfg
        a, b = batch
        a = _flip(a * 2, ctx)
        b = _flip(b * 2, ctx)
        # Each network runs once per batch and serves both players; A and B go through separately
        # (no concatenated copies, and backward's transient buffers are one batch wide, not two).
        common_a, common_b = m.e1(a), m.e1(b)
        img_a, mask_a = m.decode(common_a, m.e2(a))
        img_b, mask_b = m.decode(common_b, None)  # B's zero specific half skipped exactly
        terms = {"rec_a": F.mse_loss(img_a, a), "rec_b": F.mse_loss(img_b, b)}
        with frozen(m.disc):
            terms["adv"] = bce_logits(m.disc(common_a), 0.0) + bce_logits(m.disc(common_b), 0.0)
        judged_a, judged_b = m.disc(common_a.detach()), m.disc(common_b.detach())
        terms["disc"] = bce_logits(judged_a, 1.0) + bce_logits(judged_b, 0.0)
        if mask_a is not None:
            removed, _ = m.decode(common_a, None)
            blended = mask_a * img_a + (1 - mask_a) * removed
            terms["mask_rec"] = F.mse_loss(blended, a)
            ramp = min(1.0, (ctx.step + 1) / cfg.mask_warmup) if cfg.mask_warmup else 1.0
            terms["mask_l1"] = mask_a.mean() * ramp  # the ramped mean (the weight is static)
            terms["mask_b"] = mask_b.mean() * ramp
        with torch.no_grad():
            terms["disc_acc"] = ((judged_a > 0).float().mean() + (judged_b <= 0).float().mean()) / 2
        return terms

    def loss_weights(self, cfg: Config) -> dict[str, float]:
        w = {"rec_a": cfg.w_rec_a, "rec_b": 1.0, "adv": cfg.w_adv, "disc": 1.0}
        if cfg.mask:
            w.update(mask_rec=1.0, mask_l1=cfg.mask_weight, mask_b=cfg.mask_weight)
        return w

    def sample(self, model: ContentAE, batch, ctx) -> tuple[Tensor, int]:
        """The paper's transfer grid (``Dec(E1(b_j) ⊕ E2(a_i))`` in row ``i``) of the first
        ``--n_display`` pairs of the fixed sample batch."""
        n = min(ctx.model_cfg.n_display, batch[0].shape[0])
        grid = self.transfer_grid(model, batch[0][:n] * 2, batch[1][:n] * 2)
        return grid / 2, n + 1

    def translate_argv(self, argv: list[str]) -> list[str]:
        """The original's spellings of ``train.py`` flags as ours, so its commands carry over:
        ``--root DATA`` (the data folder), ``--out DIR`` (checkpoints and samples in DIR),
        ``--bs``, ``--iters``, ``--resize``, ``--discweight``, ``--disclr``, ``--display_iter``,
        ``--save_iter``, ``--progress_iter``, ``--num_display``; ``--load DIR`` resumes the run
        whose checkpoints are in DIR."""
        return translate(argv, TRAIN_ALIASES)

    # -- test time: talking.transfer (test.py) and evaluation.attribute (evaluate.py)

    def add_test_args(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--mask_power", type=finite, default=MASK_POWER, metavar="P",
                            help="models trained with --mask: blend with mask**P (1: the mask as "
                                 f"trained; higher drops its soft fringe; default: {MASK_POWER})")
        parser.add_argument("--donor_mask", action="store_true",
                            help="models trained with --mask: a transfer changes only where the "
                                 "donor's own mask (of its own code) also marks the attribute, "
                                 "not the hair or background the transfer's mask spills onto "
                                 "(docs/content_ae.md; costs one more decoding)")

    def from_checkpoint(self, ckpt: dict, path: str | Path = "checkpoint",
                        args: argparse.Namespace | None = None) -> ContentAE:
        """With ``args.mask_power`` (test.py, evaluate.py) set."""
        if args is not None and not args.mask_power > 0:
            raise ValueError(f"--mask_power {args.mask_power}: give a positive power (1: the "
                             "mask as trained)")
        model = super().from_checkpoint(ckpt, path)
        if args is not None:
            model.mask_power = args.mask_power
            model.donor_mask = bool(getattr(args, "donor_mask", False))
        return model

    def transfer(self, model: ContentAE, a: Tensor, b: Tensor) -> Tensor:
        return model.transfer(a, b)

    def remove(self, model: ContentAE, a: Tensor) -> Tensor:
        return model.remove(a)

    @torch.no_grad()
    def interpolate(self, model: ContentAE, a: Tensor, b: Tensor, k: int) -> Tensor:
        """The specific code from ``E2(a[0])`` to ``E2(a[1])`` (or zero) under ``E1(b_j)``."""
        s0 = model.e2(a[:1])
        s1 = model.e2(a[1:2]) if a.shape[0] > 1 else torch.zeros_like(s0)
        tiles = []
        for j in range(b.shape[0]):
            bj = b[j:j + 1]
            common = model.e1(bj)
            tiles.append(bj)
            for t in torch.linspace(0, 1, k).tolist():
                img, mask = model.decode(common, (1 - t) * s0 + t * s1)
                tiles.append(model.blend(img, mask, bj))
        return torch.cat(tiles)

    def transfer_info(self, model: ContentAE) -> dict:
        return {"mask_power": model.mask_power if model.arch.mask else None,
                "donor_mask": bool(model.donor_mask) if model.arch.mask else None}


RECIPE = ContentAERecipe()
