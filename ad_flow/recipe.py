"""AD-flow as a recipe for ``train.py`` and ``test.py`` (see ``training/registry.py``).

Training: the Glow given by ``--glow`` is frozen; clips of ``n_frames`` frames are encoded with
it under ``no_grad`` (frames as read, not dequantised, like the thesis; ``--n_bits`` turns the
Glow-style dequantisation on), and the feature encoder and sequence classifier learn from four
weighted terms: ``rec`` (sequential random-pair reconstruction), ``struct``
(structural-perceptual), ``cycle`` (cycle consistency) and ``cls`` (word classification).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from cliargs import model_size, nonnegative, positive, positive_int, whole
from glow import CheckpointError, Glow, load_glow, safe_load
from glow.io import file_sha256, file_sha256_soon, is_ours, recorded_n_bits
from lrw.datasets import ClipDataset
from lrw.index import open_index
from training.config import from_dict, opt
from training.recipe import DataInfo, Recipe
from training.recipe_helpers import dequantised, unwrap

from .init import fit_linear_encoders
from .matched import fit_matched_encoders
from .model import CLOSED_FORM_KINDS, ENCODERS, ADFlow, FeatureEncoder, SequenceClassifier
from .thesis import convert, is_thesis_checkpoint

DEFAULT_GLOW = "glow_checkpoint.pt"
MOTIONS = ("absolute", "relative")
"""``--motion``: how the source's mouth reaches the query's latents (``ADFlow.transfer``)."""


def _motion(args) -> str:
    """``args.motion`` (``--motion``; absent or None: ``absolute``, test.py's default)."""
    return getattr(args, "motion", None) or "absolute"


@dataclass
class Config:
    """AD-flow options (thesis defaults)."""

    glow: str = opt("checkpoint/glow_checkpoint.pt", "the trained Glow (ours or the thesis's "
                    "state dict)")
    n_flow: int | None = opt(None, "flows per block of a thesis-format Glow (inferred; checked "
                             "when given)", check=positive_int)
    n_block: int | None = opt(None, "blocks of a thesis-format Glow (inferred; checked when "
                              "given)", check=positive_int)
    affine: bool = opt(False, "assert that a thesis-format Glow uses affine coupling")
    conv_lu: bool = opt(True, "assert that a thesis-format Glow uses the plain 1x1 conv",
                        flag="--no_lu")
    img_size: int | None = opt(None, "image size (default: the Glow checkpoint's; a "
                               "thesis-format Glow: 64). A different value is an error for a "
                               "project Glow checkpoint", check=model_size)
    encoder: str = opt("linear", "feature encoder: linear (thesis: one map over positions, "
                       "shared by the channels), full (ours: one map over a level's channels "
                       "and positions), conv or mlp (thesis ablations)", choices=list(ENCODERS))
    encoder_target: str = opt("lip", "what the encoder outputs: lip (lip = E(z), face = z - lip)"
                              " or face (the thesis's conv ablation)", choices=["lip", "face"])
    n_frames: int = opt(29, "frames per clip (LRW clips have 29)", check=whole(2))
    n_classes: int = opt(0, "word classes (0: the number of words in DATA_DIR)")
    cls_hidden: str = opt("2048,1024", "hidden widths of the classifier's MLP head")
    cls_lr: float = opt(1e-4, "Adam learning rate of the classifier (--lr is the encoders')",
                        check=positive)
    n_bits: int = opt(0, "dequantise frames to this many bits like Glow training (0: off, as "
                      "the thesis)", check=whole(0, 8))
    w_rec: float = opt(1.0, "weight of the sequential random-pair reconstruction term",
                       check=nonnegative)
    w_struct: float = opt(1.0, "weight of the structural-perceptual term", check=nonnegative)
    w_cycle: float = opt(1.0, "weight of the cycle-consistency term", check=nonnegative)
    w_cls: float = opt(1.0, "weight of the sequential classification term", check=nonnegative)
    n_sample_clips: int = opt(2, "clips shown with the reference in each sample grid (0: the "
                              "first alone)")
    init: str = opt("lstsq", "encoder initialisation: lstsq (ours: the closed-form minimiser of "
                    "the structural term over the training clips), matched (ours: fitted to "
                    "the test's task, a query speaker's own frame nearest in mouth reading as "
                    "the answer to a mix with another speaker's mouth; needs landmarks, see "
                    "docs/ad_flow.md), both for linear and full encoders, or random (the thesis)",
                    choices=["lstsq", "matched", "random"])
    init_ridge: float = opt(0.01, "ridge of the least-squares init, relative to the latents' "
                            "mean variance (larger: the lip part moves less, the face is kept "
                            "better)", check=positive)
    init_clips: int = opt(0, "clips the least-squares init reads (0: every training clip)")
    init_pairs: int = opt(192, "(query clip, source clip) pairs of different speakers the "
                          "matched init fits", check=positive_int)
    diag_pairs: int = opt(2, "held-out query x source pairs scored (motion, PSNR) at every "
                          "sample grid when DATA is a synthetic set's train/ (0: off)")


def _hidden(cfg: Config) -> list[int]:
    try:
        hidden = [int(h) for h in str(cfg.cls_hidden).split(",") if h.strip()]
    except ValueError:
        raise ValueError(f"--cls_hidden {cfg.cls_hidden!r}: give comma-separated widths, "
                         "e.g. 2048,1024") from None
    if any(h < 1 for h in hidden):
        raise ValueError(f"--cls_hidden {cfg.cls_hidden!r}: widths must be positive")
    return hidden


# -------------------------------------------------------------------------------------------
# Building

def load_frozen_glow(path: str | Path, cfg: Config) -> Glow:
    """The Glow at ``path``; thesis-format architecture flags are checked when given."""
    glow = load_glow(path, n_flow=cfg.n_flow, n_block=cfg.n_block,
                     affine=True if cfg.affine else None,
                     conv_lu=False if not cfg.conv_lu else None, img_size=cfg.img_size)
    if not glow.initialized:
        raise CheckpointError(f"{path}: the Glow's ActNorm layers were never initialised "
                              "(an untrained Glow); train one with train.py --model glow")
    return glow


def from_glow(glow: Glow, cfg: Config) -> ADFlow:
    """An AD-flow model around an already loaded ``glow``."""
    shapes = glow.z_shapes()  # the Glow's own size (load_glow checked --img_size against it)
    encoder = FeatureEncoder(shapes, cfg.encoder, cfg.encoder_target)
    classifier = SequenceClassifier([h * w for _, h, w in shapes], max(cfg.n_classes, 1),
                                    _hidden(cfg))
    return ADFlow(glow, encoder, classifier)


# -------------------------------------------------------------------------------------------
# Training

def _frames(batch, cfg: Config, ctx) -> tuple[Tensor, Tensor | None]:
    frames, labels = (batch if isinstance(batch, (list, tuple)) else (batch, None))
    if cfg.n_bits:
        frames = dequantised(frames, cfg.n_bits, ctx)
    return frames, labels


def draw(b: int, t: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Per clip: the time shift of the reconstruction pairs (1..T-1) and the frame of the
    partner clip whose face part enters the cycle term (0..T-1)."""
    shifts = torch.randint(1, t, (b,), generator=generator)
    pair = torch.randint(0, t, (b,), generator=generator)
    return shifts, pair


def partner_frames(frames: Tensor, pair: Tensor, ctx) -> Tensor:
    """The cycle partners of this rank's clips in the *global* batch: for global clip ``g``,
    frame ``pair[g]`` of clip ``(g + 1) % B``. frames [b, T, 3, S, S] (this rank's share, global
    clip ``g = j * world + rank``), pair [B] (the global draw) -> [b, 3, S, S].

    Each rank hands over the one frame its clips' predecessors need (b frames, not the clips),
    so one all-gather of ``b`` images replaces a gather of every latent."""
    big_b = pair.shape[0]
    g = torch.arange(big_b)
    given = pair[(g - 1) % big_b][ctx.rank::ctx.world].to(frames.device)
    local = frames[torch.arange(frames.shape[0], device=frames.device), given]
    every = ctx.gather(local.contiguous())  # [B, 3, S, S]: clip g's frame pair[g - 1]
    return every[((g + 1) % big_b)[ctx.rank::ctx.world].to(frames.device)]


# -------------------------------------------------------------------------------------------
# Test time (the talking-face job): where the Glow is


def _recorded_candidates(rec: str, absolute: str | None, checkpoint: Path,
                         default: Path | None = None) -> list[Path]:
    """Where the Glow recorded as ``rec`` may be: the absolute path recorded at training;
    ``rec`` itself if absolute, else relative to the checkpoint's folder and to the current
    one; for a run tree moved as a whole, the tail of ``rec`` under each folder above the
    checkpoint; and ``default`` (CHECKPOINT_DIR/glow_checkpoint.pt). Every candidate is checked
    by its sha256."""
    p = Path(rec)
    here = checkpoint.resolve().parent
    cands = [Path(absolute)] if absolute else []
    cands += [p] if p.is_absolute() else [here / p, p]
    parts = p.parts
    for up in (here, *list(here.parents)[:3]):
        for k in range(min(2, len(parts)), min(3, len(parts)) + 1):  # RUN/FILE, a level more
            cands.append(up.joinpath(*parts[-k:]))
    cands += [default] if default is not None else []
    seen, out = {str(checkpoint.resolve())}, []
    for c in cands:
        key = str(c.resolve()) if c.exists() else str(c)
        if key not in seen:
            seen.add(key)
            out.append(c)
    return out


def glow_path(args, recorded: dict) -> tuple[Path, bool]:
    """The Glow file of an AD-flow model at test time (the one resolution of it): ``--glow``;
    else the Glow the AD-flow checkpoint records (its path absolute, or relative to the
    checkpoint's folder), when a file there has the recorded sha256; else, for a checkpoint that
    records none (the thesis's), CHECKPOINT_DIR/glow_checkpoint.pt. Returns ``(path, verify)``:
    with ``verify`` the caller checks the file's sha256 against the record (read beside the
    load) and refuses a mismatch with :func:`changed_glow`. A recorded Glow that is nowhere is a
    one-line ``CheckpointError`` naming it and ``--glow``. ``load_for_test`` keeps the path as
    ``model.glow_path``."""
    if getattr(args, "glow", None):
        return Path(args.glow), False
    rec = recorded.get("path")
    if not rec:
        return Path(getattr(args, "checkpoint_dir", "checkpoint")) / DEFAULT_GLOW, False
    ckpt = Path(args.checkpoint)
    # the default file too: a Glow moved there is found when its sha256 is the recorded one
    default = Path(getattr(args, "checkpoint_dir", "checkpoint")) / DEFAULT_GLOW
    existing = [c for c in _recorded_candidates(rec, recorded.get("absolute"), ckpt, default)
                if c.is_file()]
    want = recorded.get("sha256")
    if len(existing) == 1 or (existing and not want):
        return existing[0], bool(want)
    for c in existing:  # several files could be it: the digest decides
        if file_sha256(c) == want:
            return c, False
    if existing:
        raise changed_glow(ckpt, rec, existing[0])
    raise CheckpointError(
        f"{ckpt}: the Glow it was trained on ({rec}) is not there (looked beside the checkpoint, "
        f"in the current folder and at {default}); pass it with --glow PATH")


def changed_glow(ckpt: Path, rec: str, found: Path) -> CheckpointError:
    return CheckpointError(
        f"{ckpt}: the Glow it was trained on ({rec}) has changed since (the sha256 of {found} "
        "differs from the recorded one); pass the Glow it was trained on with --glow PATH")


def _first_problem(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return (lines[1] if len(lines) > 1 else lines[0] if lines else type(exc).__name__)[:300]


class ADFlowRecipe(Recipe):
    """AD-flow: a frozen Glow, a feature encoder splitting its latents into face and lips, and
    a sequence classifier; the talking-face model of the thesis."""

    NAME = "ad-flow"
    Config = Config
    DEFAULT_CHECKPOINT = "ad-flow_total_checkpoint.tar"
    GENERATES = True
    # Thesis: Adam, lr 1e-5 (encoders) and 1e-4 (classifier), 200k iterations, one clip per
    # step, samples every 200 and checkpoints every 10k iterations. Here 4 clips per step by
    # default: the cycle term pairs each clip with another one of the same batch.
    TRAIN_DEFAULTS = {"batch": 4, "lr": 1e-5, "iter": 200000, "sample_every": 200,
                      "save_every": 10000}
    DDP_FIND_UNUSED = True  # the classifier is idle when --w_cls 0

    def validate(self, cfg: Config) -> None:
        if cfg.encoder not in ENCODERS:
            raise ValueError(f"--encoder {cfg.encoder}: choose one of {', '.join(ENCODERS)}")
        if cfg.n_frames < 2:
            raise ValueError(f"--n_frames {cfg.n_frames}: need at least 2 frames per clip")
        if cfg.n_bits and not 1 <= cfg.n_bits <= 8:
            raise ValueError(f"--n_bits {cfg.n_bits} must be 0 (off) or between 1 and 8")
        if cfg.n_classes < 0:
            raise ValueError("--n_classes must be 0 (from the data) or positive")
        _hidden(cfg)
        if min(cfg.w_rec, cfg.w_struct, cfg.w_cycle, cfg.w_cls) < 0:
            raise ValueError("loss weights must not be negative")
        if cfg.init in ("lstsq", "matched") and cfg.encoder not in CLOSED_FORM_KINDS:
            raise ValueError(f"--init {cfg.init} is the closed form of a linear map; with "
                             f"--encoder {cfg.encoder} use --init random")
        if cfg.init_ridge <= 0:
            raise ValueError(f"--init_ridge {cfg.init_ridge} must be positive")
        if cfg.init_clips < 0 or cfg.diag_pairs < 0:
            raise ValueError("--init_clips and --diag_pairs must not be negative")

    def dataset(self, cfg: Config, data_dir: Path):
        """LRW-style clips ``(frames [T, 3, S, S], label)``; the data decides ``--n_classes 0``
        (the number of words) and ``--img_size`` when not given (the Glow's)."""
        index = open_index(data_dir)
        note = index.ignored_note()
        if note:  # what was left out is said, with a count, not dropped silently
            print(note)
        decided = {}
        if cfg.n_classes == 0:
            decided["n_classes"] = index.n_classes
        elif cfg.n_classes < index.n_classes:
            raise ValueError(f"--n_classes {cfg.n_classes} but {data_dir} holds "
                             f"{index.n_classes} words")
        size = cfg.img_size
        if size is None:  # the frames must have the Glow's size: read it from the file
            size = decided["img_size"] = int(load_frozen_glow(cfg.glow, cfg).img_size)
        ds = ClipDataset(index, size, n_frames=cfg.n_frames)
        # the words are recorded in the checkpoint (build, checkpoint_extra); the clips are
        # read by initialize()
        return ds, DataInfo(data_dir, decided, words=list(index.words), dataset=ds)

    def build(self, cfg: Config, data: DataInfo | None = None) -> nn.Module:
        glow = load_frozen_glow(cfg.glow, cfg)
        model = from_glow(glow, cfg)
        model.glow_info = {"path": str(cfg.glow), "absolute": str(Path(cfg.glow).resolve()),
                           "sha256": file_sha256(cfg.glow), "config": glow.config()}
        model.words = data.words if data is not None else None
        return model

    def param_groups(self, model: ADFlow, cfg: Config, train_cfg) -> list[dict]:
        groups = [{"params": list(model.encoder.parameters()), "lr": train_cfg.lr}]
        if model.classifier is not None:
            groups.append({"params": list(model.classifier.parameters()), "lr": cfg.cls_lr})
        return groups

    def initialize(self, model: ADFlow, batch, ctx) -> None:
        """``--init lstsq``: the linear encoders start at the structural term's closed form;
        ``--init matched``: at the matched-pairs fit (ad_flow/matched.py)."""
        cfg: Config = ctx.model_cfg
        if cfg.init == "random":
            return
        ds = ctx.data.dataset if ctx.data is not None else None
        if ds is None:
            raise ValueError(f"--init {cfg.init} needs the training clips (call dataset() first)")
        if cfg.init == "matched":
            fit_matched_encoders(unwrap(model), ds, ctx.data.root, cfg.init_pairs,
                                 cfg.init_ridge, ctx.train_cfg.seed, ctx.rank, ctx.world,
                                 log=print if ctx.rank == 0 else None)
            return
        def clips():
            for i in range(len(ds)):
                yield ds[i]

        fit_linear_encoders(unwrap(model), clips, cfg.init_ridge, cfg.init_clips, ctx.rank,
                            ctx.world, log=print if ctx.rank == 0 else None)

    def losses(self, model: nn.Module, batch, ctx) -> dict[str, Tensor]:
        cfg: Config = ctx.model_cfg
        frames, labels = _frames(batch, cfg, ctx)
        # One draw for the global batch, sliced per rank (rank r holds global clips r, r+W, ...):
        # N processes draw what one process with the same global batch draws.
        shifts, pair = draw(frames.shape[0] * ctx.world, frames.shape[1], ctx.generator)
        partner = partner_frames(frames, pair, ctx) if ctx.world > 1 else None
        shifts, pair = shifts[ctx.rank::ctx.world], pair[ctx.rank::ctx.world]
        return model(frames, labels, shifts.to(frames.device), pair.to(frames.device),
                     with_classifier=cfg.w_cls > 0, partner=partner)

    def loss_weights(self, cfg: Config) -> dict[str, float]:
        return {"rec": cfg.w_rec, "struct": cfg.w_struct, "cycle": cfg.w_cycle, "cls": cfg.w_cls}

    @torch.no_grad()
    def sample(self, model: nn.Module, batch, ctx) -> tuple[Tensor, int]:
        """Rows per shown clip (as the thesis): [reference frame 0 | reference face + this clip's
        lips, frame by frame] and [this clip's frame 0 | this clip]. Clip 0 is the reference."""
        m = unwrap(model)
        cfg: Config = ctx.model_cfg
        frames = batch[0] if isinstance(batch, (list, tuple)) else batch
        b, t = frames.shape[:2]
        ref = frames[0]
        ref_faces, _ = m.encoder.split(m.encode_frames(ref[:1]))
        shown = list(range(1, b))[: cfg.n_sample_clips] or [0]
        rows = []
        for j in shown:
            clip = frames[j]
            _, lips = m.encoder.split(m.encode_frames(clip))
            z = [f + lip for f, lip in zip(ref_faces, lips, strict=True)]
            mixed = m.glow.reverse(z, reconstruct=True)
            rows += [ref[:1], mixed, clip[:1], clip]
        return torch.cat(rows).clamp(-0.5, 0.5), t + 1

    def checkpoint_extra(self, model: ADFlow, cfg: Config) -> dict:
        """The Glow this model was trained on (path, sha256, architecture) and the word list."""
        extra = {"glow": dict(getattr(model, "glow_info", {}))}
        if model.words:
            extra["words"] = list(model.words)
        return extra

    def diagnostics(self, model: nn.Module, ctx) -> dict[str, float]:
        """Held-out motion and identity scores (see evaluation.motion) on the first
        ``--diag_pairs`` query x source pairs, when the training data is a synthetic set's
        train/."""
        cfg: Config = ctx.model_cfg
        if not cfg.diag_pairs or ctx.heldout is None:
            return {}
        m = unwrap(model)
        return ctx.heldout(lambda q, mix, src: m.transfer(q, mix).clamp_(-0.5, 0.5),
                           m.img_size, cfg.diag_pairs)

    def add_test_args(self, parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("model: ad-flow")
        g.add_argument("--glow", default=None,
                       help="the Glow (default: the one the AD-flow checkpoint records, found "
                            "by its path, absolute or relative to the checkpoint's folder, and "
                            "checked by its sha256; for a checkpoint without a record (the "
                            f"thesis's): CHECKPOINT_DIR/{DEFAULT_GLOW})")
        g.add_argument("--n_flow", type=positive_int, default=None,
                       help="flows per block of a thesis-format Glow (inferred; checked when "
                            "given)")
        g.add_argument("--n_block", type=positive_int, default=None,
                       help="blocks of a thesis-format Glow (inferred; checked when given)")
        g.add_argument("--affine", action="store_true",
                       help="assert that a thesis-format Glow uses affine coupling")
        g.add_argument("--no_lu", dest="conv_lu", action="store_false",
                       help="assert that a thesis-format Glow uses the plain 1x1 conv")
        g.add_argument("--motion", choices=MOTIONS, default=None,
                       help="absolute (test.py's default, the thesis's): each frame's latents "
                            "are the query's face part plus the mouth mix's lip part; "
                            "relative: the query's own latents plus the change of the mix's "
                            "lip part since the source's first frame (the source should start "
                            "with the mouth at rest). evaluate.py scores both unless given")

    def load_for_test(self, args, device: torch.device | str = "cpu") -> ADFlow:
        """Our AD-flow checkpoint or the thesis's ``.tar`` dict, with its Glow, in eval mode.

        ``args.checkpoint`` is the file; ``args.glow`` etc. as added by :func:`add_test_args`.
        """
        path = Path(args.checkpoint)
        obj = safe_load(path)
        if is_ours(obj):
            if obj.get("model") != self.NAME:
                raise CheckpointError(f"{path}: a '{obj.get('model')}' checkpoint, expected "
                                      f"'{self.NAME}' (use --model {obj.get('model')})")
        elif is_thesis_checkpoint(obj):
            state, facts = convert(obj, str(path))
            cfg = Config(encoder=facts["encoder"], encoder_target=facts["target"],
                         img_size=facts["img_size"] or 64, n_classes=facts["n_classes"] or 500,
                         cls_hidden=",".join(map(str, facts["hidden"] or [2048, 1024])))
            obj = {"config": {"model": asdict(cfg)}, "weights": state}
        else:
            raise CheckpointError(f"{path}: neither an AD-flow checkpoint of this project nor the "
                                  "thesis's (a dict with 'f_encoder')")
        return self.from_checkpoint(obj, path, args).to(device).eval()

    def from_checkpoint(self, ckpt: dict, path: str | Path = "checkpoint",
                        args=None) -> ADFlow:
        """With its Glow: ``args.glow``, else the one the checkpoint records (``glow_path``)."""
        args, path = args or argparse.Namespace(checkpoint=str(path)), Path(path)
        cfg = from_dict(Config, ckpt["config"]["model"])
        state = ckpt["weights"]
        recorded = dict(ckpt.get("extra", {}).get("glow", {}))
        words = ckpt.get("extra", {}).get("words")
        cfg.n_flow = getattr(args, "n_flow", None)
        cfg.n_block = getattr(args, "n_block", None)
        cfg.affine = bool(getattr(args, "affine", False))
        cfg.conv_lu = bool(getattr(args, "conv_lu", True))
        gpath, verify = glow_path(args, recorded)
        # the digest is read beside the load (the same file, already in the page cache after it):
        # the recorded Glow must match it; an explicit --glow that differs gets a warning
        digest = file_sha256_soon(gpath) if recorded.get("sha256") and gpath.is_file() else None
        glow = load_glow(gpath, n_flow=cfg.n_flow, n_block=cfg.n_block,
                         affine=True if cfg.affine else None,
                         conv_lu=False if not cfg.conv_lu else None, img_size=cfg.img_size)
        if digest is not None and digest() != recorded["sha256"]:
            if verify:
                raise changed_glow(path, recorded.get("path"), gpath)
            print(f"warning: {gpath} is not the Glow file this AD-flow model was trained on "
                  f"({recorded.get('path')}); results may be poor", file=sys.stderr)
        model = from_glow(glow, cfg)
        if not any(k.startswith("classifier.") for k in state):
            model.classifier = None
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise CheckpointError(f"{path}: weights do not fit its model on the Glow {gpath} "
                                  f"({_first_problem(exc)}); pass the matching --glow") from None
        model.words = words
        model.glow_path = gpath  # for eval_density: the file actually loaded
        return model

    @torch.no_grad()
    def generate(self, model: ADFlow, query: Tensor, mix: Tensor, source: Tensor,
                 args=None) -> Tensor:
        """query [1, 3, S, S], mix [T, 3, S, S] (source unused) -> [T, 3, S, S] in [-0.5, 0.5].

        The query's parts are computed once and reused for every chunk of frames;
        ``args.motion`` (``--motion``): ``absolute`` (default) or ``relative``
        (:meth:`ADFlow.transfer`; the reference is the sequence's first frame, see
        :meth:`begin_sequence`).
        """
        relative = _motion(args) == "relative"
        return unwrap(model).transfer(query, mix, relative=relative).clamp_(-0.5, 0.5)

    def builds_on_mix(self, args) -> bool:
        """``--motion relative`` builds on the query's own latents: its change is the query's."""
        return _motion(args) != "relative"

    def begin_sequence(self, model: ADFlow, args=None) -> None:
        """A new source sequence: ``--motion relative`` takes its first frame as reference."""
        unwrap(model).begin_sequence()

    def eval_systems(self, model: ADFlow, args) -> list[tuple[str, argparse.Namespace]]:
        """evaluate.py: AD-flow with each motion, "ad-flow" (absolute, the thesis's) and
        "ad-flow (relative)"; only the one ``--motion`` names when given."""
        chosen = getattr(args, "motion", None)
        return [(self.NAME if motion == "absolute" else f"{self.NAME} ({motion})",
                 argparse.Namespace(**{**vars(args), "motion": motion}))
                for motion in MOTIONS if chosen in (None, motion)]

    def eval_density(self, model: ADFlow, args) -> tuple[nn.Module, int, list[str]]:
        """evaluate.py: AD-flow's likelihood is its frozen Glow's, at that Glow's ``n_bits``."""
        path = getattr(model, "glow_path", None)
        return model.glow, recorded_n_bits(path), ["bits/dim of AD-flow: its frozen Glow's"]


RECIPE = ADFlowRecipe()
