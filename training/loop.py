"""The training loop every model shares: seeded, resumable bit for bit, DDP under torchrun,
AMP, NaN-skipping, Ctrl-C safe. A run's files are named by :class:`training.run.Run`.

Read top to bottom: what a recipe's step sees (:class:`StepContext`), the checks of the flags,
then :func:`train` and :class:`Training`, a run in the order it happens: 1. prepare the run,
2. data, model and optimiser, 3. one step, 4. checkpoints, samples, diagnostics and the log,
5. the loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, default_collate

from lrw.datasets import read_unreadable_log
from lrw.imageio import save_image

from . import distributed
from .checkpoint import load_checkpoint, save_checkpoint, set_rng_state
from .cli import check_folder
from .config import TrainConfig
from .logs import JsonlLog, plot_curves
from .optim import StepInBackward, grads_finite, training_adam
from .precision import SLOW_CPU_BF16, cpu_has_fast_bf16, set_gpu_switches
from .progress import progress
from .recipe import DataInfo, Recipe
from .run import Run


class TrainingStopped(RuntimeError):
    """The run cannot go on (e.g. too many non-finite losses); message is one line."""


# --- What a recipe's step sees ------------------------------------------------------------------

@dataclass
class StepContext:
    """What a recipe's ``losses``/``sample``/``initialize`` may need besides the batch.

    ``generator`` is a CPU generator seeded from (seed, step): identical on every rank and on a
    resumed run, so per-step randomness never depends on the process layout.
    """

    step: int
    rank: int
    world: int
    device: torch.device
    model_cfg: Any
    train_cfg: TrainConfig
    generator: torch.Generator = field(repr=False, default=None)
    data: DataInfo | None = field(repr=False, default=None)  # from recipe.dataset
    # ``heldout(fn, size, pairs) -> scores`` of a generator on the held-out pairs of the
    # synthetic set the training data belongs to (train.py gives evaluation's scorer; None:
    # no such set, or train() called without one)
    heldout: Callable[..., dict[str, float]] | None = field(repr=False, default=None)

    def global_rand(self, local_shape: tuple[int, ...], normal: bool = False) -> Tensor:
        """Noise for this rank's share of the global batch (same values as one process)."""
        shape = (local_shape[0] * self.world, *local_shape[1:])
        noise = (torch.randn if normal else torch.rand)(shape, generator=self.generator)
        return noise[self.rank::self.world].to(self.device)

    def gather(self, x: Tensor) -> Tensor:
        """The global batch (all ranks' shares, in single-process order)."""
        return distributed.gather_interleaved(x, self.world)


def step_generator(seed: int, step: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + step * 7919 + 12345) % (2**63 - 1))
    return g


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


# --- The flags: what they switch on, and the ones refused ---------------------------------------

def lean_optimizer(model_cfg) -> bool:
    """Whether to zero the gradients in place between steps (and let the recipe step Adam
    inside backward, ``step_in_backward``): with ``--low_memory``. Gradients freed and
    re-allocated every step leave glibc holding the old pages (part of -112 MiB peak at the
    thesis config, ``bench/glow_memory.py``). The same numbers either way
    (``tests/training/test_training.py``)."""
    return bool(getattr(model_cfg, "low_memory", False))


def hide_triton_without_gpu() -> bool:
    """Keep ``import triton`` from loading when no CUDA device exists; True when it was hidden.

    ``torch._dynamo`` imports triton when the package is installed (the PyPI wheel ships it):
    ~75 MiB resident for a library that only compiles GPU kernels (docs/performance.md). The
    loop's own optimiser no longer imports ``torch._dynamo`` (``training.optim``), but other
    code may (torchvision, e.g. a VGG loss; DDP's runtime). Without a CUDA device
    nothing can use it, so ``triton`` is marked absent before that import; torch then reports
    "no triton" as on any machine without it. A no-op with a GPU or once triton is loaded.
    """
    if "triton" in sys.modules or torch.cuda.is_available():
        return False
    sys.modules["triton"] = None  # an import of it raises ImportError
    return True


def amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``--amp``/``--amp_dtype`` on ``device`` (None: AMP off).

    ``auto`` is bf16 wherever it is supported (CPUs whose oneDNN has bf16, recent GPUs): it needs
    no loss scaling. fp16 (CUDA only) trains with a GradScaler, saved in the checkpoint. On a CPU
    without fast bf16 (:func:`training.precision.cpu_has_fast_bf16`) ``--amp`` is refused
    rather than run many times slower than float32.
    """
    if not cfg.amp:
        return None
    if device.type not in ("cuda", "cpu"):
        raise ValueError(f"--amp: not supported on {device.type}; drop --amp")
    if device.type == "cpu" and not cpu_has_fast_bf16():
        raise ValueError(f"--amp: {SLOW_CPU_BF16}; drop --amp")
    if cfg.amp_dtype == "fp16" and device.type != "cuda":
        raise ValueError("--amp_dtype fp16 needs CUDA; use --amp_dtype bf16 on the CPU")
    bf16_ok = device.type == "cpu" or torch.cuda.is_bf16_supported()
    if cfg.amp_dtype == "bf16" and not bf16_ok:
        raise ValueError("--amp_dtype bf16: this GPU has no bf16; use --amp_dtype fp16")
    if cfg.amp_dtype == "fp16" or (cfg.amp_dtype == "auto" and not bf16_ok):
        return torch.float16
    return torch.bfloat16


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


# Flags that change what a seeded run computes: a resume with a new value is refused (unless
# --allow_changes), since the result would no longer equal the uninterrupted run. The rest
# (iter, logging and saving intervals, workers, progress, device) may change freely.
RESUME_LOCKED = ("batch", "lr", "adam_eps", "seed", "grad_clip", "amp", "amp_dtype")


def resume_changes(saved: dict, model_cfg: Any, cfg: TrainConfig, data: dict) -> list[str]:
    """Differences between a checkpoint's run and this one that break the bit-for-bit resume:
    ``["--lr 0.0001 -> 0.001", ...]`` (model flags, locked training flags, data)."""
    old_model = saved.get("config", {}).get("model", {})
    old_train = saved.get("config", {}).get("train", {})
    out = []
    for k, v in dataclasses.asdict(model_cfg).items():
        if k in old_model and old_model[k] != v:
            out.append(f"--{k} {old_model[k]} -> {v}")
    for k in RESUME_LOCKED:
        if k in old_train and old_train[k] != getattr(cfg, k):
            out.append(f"--{k} {old_train[k]} -> {getattr(cfg, k)}")
    old_data = old_train.get("data", {})
    for k, v in data.items():
        if k in old_data and old_data[k] != v:
            out.append(f"data {k} {old_data[k]} -> {v}")
    return out


def validate_train(cfg: TrainConfig) -> None:
    """One-line errors for training flags that cannot work."""
    for k in ("batch", "iter", "log_every", "max_bad_steps"):
        if getattr(cfg, k) < (0 if k == "iter" else 1):
            raise ValueError(f"--{k} {getattr(cfg, k)} must be at least {0 if k == 'iter' else 1}")
    for k in ("sample_every", "save_every", "workers", "grad_clip"):
        if getattr(cfg, k) < 0:
            raise ValueError(f"--{k} {getattr(cfg, k)} must not be negative (0 turns it off)")
    if not cfg.lr > 0:
        raise ValueError(f"--lr {cfg.lr} must be positive")
    if cfg.resume and cfg.force:
        raise ValueError("--resume and --force contradict each other; give one")
    if cfg.amp_dtype not in ("auto", "bf16", "fp16"):
        raise ValueError(f"--amp_dtype {cfg.amp_dtype}: use auto, bf16 or fp16")


def clip_group_gradients(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """Clip each parameter group whose dict carries ``clip_norm > 0`` on its own.

    A recipe with two players in one optimiser (e.g. an auto-encoder and its discriminator,
    see ``param_groups`` in the registry) clips each player's gradient norm separately, as
    two optimisers would. Returns ``{group name (or index): norm before clipping}``.
    """
    norms = {}
    for k, group in enumerate(optimizer.param_groups):
        limit = group.get("clip_norm", 0)
        if limit and limit > 0:
            norm = torch.nn.utils.clip_grad_norm_(group["params"], limit)
            norms[str(group.get("name", k))] = float(norm)
    return norms


# --- A run: the lock and the process group around it --------------------------------------------

def train(recipe: Recipe, model_cfg: Any, cfg: TrainConfig, data_dir: str | Path,
          say=print, heldout=None) -> dict:
    """Train ``recipe``'s model; returns a summary dict. Raises ValueError/TrainingStopped.
    ``heldout(data_dir, device)``: the held-out scorer for ``StepContext.heldout`` (or None)."""
    # Refused before the process group forms, so every rank exits at once with the same line.
    if distributed.launched_world() > 1 and not recipe.DDP_EXACT:
        raise ValueError(f"--model {recipe.NAME} does not support torchrun/DDP "
                         f"({recipe.DDP_NOTE}); train with one process")
    hide_triton_without_gpu()
    run = Run(cfg.name, cfg.checkpoint_dir, cfg.result_dir)
    check_folder(cfg.result_dir, "--result_dir")
    check_folder(cfg.checkpoint_dir, "--checkpoint_dir")
    # One process per run name: taken before anything of the run is read, deleted or written
    # (--force included); under torchrun the main rank holds it for the whole group.
    lock = run.lock() if os.environ.get("RANK", "0") == "0" else None
    if lock is not None:
        lock.acquire()
        if lock.stale:
            say(lock.stale)
    try:
        info = distributed.setup(cfg.device)
        try:
            result = Training(recipe, model_cfg, cfg, Path(data_dir), info, run, say,
                              heldout).loop()
            distributed.barrier()  # every rank done with its collectives before any tears down
            return result
        finally:
            distributed.teardown()
    finally:
        if lock is not None:
            lock.release()


class Training:
    """One process's share of a run: its state, and its sections in the order they run.
    Building it prepares the run (sections 1 and 2); :meth:`loop` trains (3 to 5)."""

    def __init__(self, recipe: Recipe, model_cfg, cfg: TrainConfig, data_dir: Path,
                 info: distributed.DistInfo, run: Run, say, heldout=None) -> None:
        self.recipe, self.model_cfg, self.cfg, self.data_dir = recipe, model_cfg, cfg, data_dir
        self.info, self.run, self.say = info, run, say
        self.device, self.world, self.main = info.device, info.world, info.is_main
        self.heldout = heldout(data_dir, self.device) if heldout else None
        self.step = self.skipped = self.bad_in_row = 0
        self.sampled_at = -1  # the step of the last sample grid
        self.prepare()
        self.load_data()
        self.build()
        self.open_run_folder()
        self.plan_steps()

    def ctx(self) -> StepContext:
        return StepContext(step=self.step, rank=self.info.rank, world=self.world,
                           device=self.device, model_cfg=self.model_cfg, train_cfg=self.cfg,
                           generator=step_generator(self.cfg.seed, self.step), data=self.data,
                           heldout=self.heldout)

    # --- 1. Prepare the run: the flags, then the checkpoint to resume or a fresh start ----------

    def prepare(self) -> None:
        cfg = self.cfg
        validate_train(cfg)
        self.low_dtype = amp_dtype(cfg, self.device)  # refused before a fresh start clears a run
        if cfg.batch % self.world:
            raise ValueError(f"--batch {cfg.batch} is not divisible by the {self.world} processes")
        self.local_batch = cfg.batch // self.world
        # CUDA: TF32 products unless --no_tf32; cuDNN autotuning, since every step has one shape
        # (a fixed batch, drop_last). Nothing is set off CUDA.
        self.switches = set_gpu_switches(self.device, tf32=cfg.tf32, benchmark=True)
        self.resumed = None
        if cfg.resume:
            self.resumed = self.resume_checkpoint()
        else:
            self.start_fresh()

    def resume_checkpoint(self) -> dict:
        """The checkpoint ``--resume`` continues (from ``self.source``), below --iter."""
        cfg, run = self.cfg, self.run
        self.source = run.resume_source()
        if self.source is None:
            raise ValueError(f"--resume: {run.last} does not exist, nor any step_*.pt beside it "
                             f"(run '{cfg.name}' has no checkpoint); start it without --resume")
        resumed = load_checkpoint(self.source, expect_model=self.recipe.NAME)
        if self.source != run.last and self.main:
            self.say(f"note: {run.last} is missing; resuming from {self.source}, the newest "
                     "checkpoint")
        if int(resumed.get("step", 0)) >= cfg.iter:
            raise ValueError(f"--resume: run '{cfg.name}' is already at iteration "
                             f"{int(resumed.get('step', 0))}, not below --iter {cfg.iter}; give a "
                             "larger --iter to train further")
        return resumed

    def start_fresh(self) -> None:
        """Refuse to train over an existing run NAME, or with --force delete its files first
        (the main process deletes; every rank checks, so all refuse).

        A run that stopped before writing any checkpoint (a log, samples, no ``last.pt`` and no
        ``step_*.pt``) holds nothing to continue: it is started over with a note, so the advice
        given when such a run stops (e.g. "try a lower --lr") works as given."""
        cfg, run = self.cfg, self.run
        checkpoints = [p for p in (run.last,) if p.exists()] + run.step_checkpoints()
        if not checkpoints and not run.log.exists():
            return
        if checkpoints and not cfg.force:
            newest = run.resume_source()
            src = "" if newest == run.last else f" (from {newest.name}, its newest checkpoint)"
            raise ValueError(f"{checkpoints[0]}: run '{cfg.name}' exists; continue it with "
                             f"--resume{src}, start it over with --force (deletes its "
                             f"{len(checkpoints)} checkpoint(s)), or pick another -n NAME")
        if not self.main:
            return
        if not checkpoints and not cfg.force:
            self.say(f"note: run '{cfg.name}' stopped before its first checkpoint; starting it "
                     f"over (its log {run.log} is replaced)")
        run.clear()

    # --- 2. Data, model and optimiser -----------------------------------------------------------

    def load_data(self) -> None:
        """The dataset (after seeding), and a resume's checks against it."""
        model_cfg, cfg, data_dir = self.model_cfg, self.cfg, self.data_dir
        self.recipe.validate(model_cfg)
        seed_everything(cfg.seed)
        self.dataset, self.data = dataset, data = self.recipe.dataset(model_cfg, data_dir)
        # the flags the data decided (e.g. AD-flow's number of words): the checkpoint records them
        self.model_cfg = model_cfg = dataclasses.replace(model_cfg, **data.config)
        if hasattr(dataset, "record_unreadable"):  # every process of the run appends to it
            dataset.record_unreadable(self.run.unreadable)
        self.data_facts = {"path": str(data_dir.resolve()), "items": len(dataset)}
        changes = resume_changes(self.resumed, model_cfg, cfg, self.data_facts) \
            if self.resumed is not None else []
        if changes and not cfg.allow_changes:
            raise ValueError(f"--resume: {self.source} was trained differently "
                             f"({'; '.join(changes)}); drop the changed flags to continue bit "
                             "for bit, or accept the change with --allow_changes")
        if changes and self.main:
            self.say(f"warning: resuming with changes ({'; '.join(changes)}); the run is no "
                     "longer bit for bit the uninterrupted one")
        if len(dataset) < cfg.batch:
            raise ValueError(f"{data_dir}: only {len(dataset)} training items, fewer than "
                             f"--batch {cfg.batch}; add data or lower --batch")

    def build(self) -> None:
        """The model, Adam over the recipe's parameter groups, fp16's loss scaler, this rank's
        sampler and the fixed batch of the sample grids (the first items of epoch 0); then a
        resume's state, or the recipe's data-dependent initialisation."""
        recipe, model_cfg, cfg, dataset = self.recipe, self.model_cfg, self.cfg, self.dataset
        self.model = model = recipe.build(model_cfg, self.data).to(self.device)
        groups = recipe.param_groups(model, model_cfg, cfg)
        self.lean = lean_optimizer(model_cfg)
        self.optimizer = training_adam(groups, lr=cfg.lr, eps=cfg.adam_eps)
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]  # before a resume's
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.low_dtype == torch.float16)

        self.sampler = distributed.ResumableSampler(dataset, self.world, self.info.rank, cfg.seed)
        self.steps_per_epoch = self.sampler.num_samples // self.local_batch
        if self.steps_per_epoch == 0:
            raise ValueError(f"{self.data_dir}: too few items for --batch {cfg.batch}")
        self.sampler.set_epoch(0)
        if hasattr(dataset, "set_epoch"):  # per-item draws seeded by (seed, epoch, item)
            dataset.set_epoch(0, cfg.seed)
        first = list(distributed.DistributedSampler.__iter__(self.sampler))[:self.local_batch]
        self.sample_batch = to_device(default_collate([dataset[i] for i in first]), self.device)

        resumed = self.resumed
        if resumed is None:
            recipe.initialize(model, self.sample_batch, self.ctx())
            return
        model.load_state_dict(resumed["weights"])
        if resumed.get("optimizer"):
            self.optimizer.load_state_dict(resumed["optimizer"])
        self.step = int(resumed["step"])
        if resumed.get("rng"):
            set_rng_state(resumed["rng"])
        if resumed.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(resumed["scaler"])

    def open_run_folder(self) -> None:
        """The logs; on the main process the folders, the resolved config.json, the logs cut
        back to a resume's step, and the run's first line."""
        cfg, run = self.cfg, self.run
        self.log, self.diag_log = JsonlLog(run.log), JsonlLog(run.diagnostics)
        self.events = None  # --tensorboard: the same records as TensorBoard events
        if self.main and cfg.tensorboard:
            # deferred: the tensorboard package is optional, needed only with --tensorboard
            from .tensorboard import EventLog

            self.events = EventLog(run.samples, self.step if self.resumed is not None else None)
        if not self.main:
            return
        run.samples.mkdir(parents=True, exist_ok=True)
        run.checkpoints.mkdir(parents=True, exist_ok=True)
        resolved = {"model": self.recipe.NAME, "data_dir": str(self.data_dir),
                    "model_config": dataclasses.asdict(self.model_cfg),
                    "train_config": dataclasses.asdict(cfg), "world_size": self.world}
        run.config.write_text(json.dumps(resolved, indent=2) + "\n")
        if self.resumed is not None:
            self.log.truncate_after(self.step)
            self.diag_log.truncate_after(self.step)
        switches = f" ({', '.join(self.switches)})" if self.switches else ""
        self.say(f"[{self.recipe.NAME}] {len(self.dataset)} items, "
                 f"{sum(p.numel() for p in self.model.parameters()):,} parameters, device "
                 f"{self.device}{switches}, {self.world} process(es); run folder {run.samples}")

    # --- 3. One step ----------------------------------------------------------------------------

    def plan_steps(self) -> None:
        """DDP around the model, the loss weights, where Adam steps, the clock and the bar."""
        recipe, cfg = self.recipe, self.cfg
        self.net = self.model
        if self.world > 1:
            self.net = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=recipe.DDP_FIND_UNUSED)
        self.weights = recipe.loss_weights(self.model_cfg)
        self.group_clip = any(g.get("clip_norm", 0) > 0 for g in self.optimizer.param_groups)
        # Adam stepped layer by layer inside a low-memory backward (a whole gradient set never
        # alive at once): where the recipe offers it and nothing needs all gradients first
        # (clipping by a norm, fp16 loss scaling).
        self.grads_ready = recipe.step_in_backward(self.model_cfg)
        if not self.lean or cfg.grad_clip > 0 or self.group_clip or self.scaler.is_enabled():
            self.grads_ready = None
        self.t0 = time.time()
        self.bar = None
        if self.main and cfg.progress:
            self.bar = progress(cfg.iter, f"{recipe.NAME}:{cfg.name}", initial=self.step,
                                file=sys.stderr)

    def train_step(self, batch) -> tuple[dict[str, Tensor], Tensor, str | None]:
        """One optimiser step: (loss terms, weighted total, None), or "loss"/"gradient" last
        when that was non-finite on some rank and nothing was updated."""
        cfg, optimizer, scaler, model = self.cfg, self.optimizer, self.scaler, self.model
        batch = to_device(batch, self.device)
        ctx = self.ctx()
        factor = self.recipe.lr_factor(self.model_cfg, cfg, self.step)  # a function of the step
        if factor is not None:
            for g, base in zip(optimizer.param_groups, self.base_lrs, strict=True):
                g["lr"] = base * factor
        # Before the forward pass: freed gradients (the default) then do not sit beside the
        # forward's activations at their peak (one gradient set less at peak).
        optimizer.zero_grad(set_to_none=not self.lean)
        with _autocast(self.device, self.low_dtype):
            terms = self.recipe.losses(self.net, batch, ctx)
        total = sum(w * terms[k].float() for k, w in self.weights.items() if w)
        if not distributed.all_true(bool(torch.isfinite(total).item()), self.device, self.world):
            return terms, total, "loss"
        bad = None
        stepper = StepInBackward(optimizer) if self.grads_ready is not None else None
        with self.grads_ready(stepper) if stepper else contextlib.nullcontext():
            scaler.scale(total).backward()
        if stepper is not None and stepper.bad:
            bad = "gradient"  # the rest of the step is skipped (StepInBackward)
            optimizer.zero_grad(set_to_none=True)
        if cfg.grad_clip > 0 or self.group_clip:
            scaler.unscale_(optimizer)
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            clip_group_gradients(optimizer)
        if bad is None and not scaler.is_enabled() and not grads_finite(model.parameters()):
            # a finite loss can still overflow in backward; clipping an infinite norm would
            # write NaN into every parameter (fp16's scaler skips these)
            optimizer.zero_grad(set_to_none=True)
            bad = "gradient"
        if bad is None:
            scaler.step(optimizer)  # (after StepInBackward: the parameters it left)
            scaler.update()
        return terms, total, bad

    def skip(self, bad: str) -> None:
        """A step without an update: counted, warned, stopped after too many in a row."""
        self.bad_in_row += 1
        self.skipped += 1
        if self.bad_in_row >= self.cfg.max_bad_steps:
            plural = {"loss": "losses", "gradient": "gradients"}[bad]
            kept = (f"the last good checkpoint is {self.run.last}" if self.run.last.is_file()
                    else "no checkpoint was written")
            raise TrainingStopped(
                f"{self.bad_in_row} non-finite {plural} in a row at iteration {self.step}; "
                f"stopped, {kept} (try a lower --lr, --grad_clip 5, or check the data)")
        if self.main:
            self.say(f"warning: non-finite {bad} at iteration {self.step}, step skipped")

    # --- 4. Checkpoints, sample grids, diagnostics and the log ----------------------------------

    def save(self, numbered: bool = False) -> None:
        """``last.pt`` (and ``step_NNNNNNN.pt`` when ``numbered``), on the main process."""
        if not self.main:
            return
        recipe, model_cfg, model = self.recipe, self.model_cfg, self.model
        payload = dict(model_name=recipe.NAME, model_config=dataclasses.asdict(model_cfg),
                       train_config={**dataclasses.asdict(self.cfg), "data": self.data_facts},
                       weights=model.state_dict(), scaler=self.scaler.state_dict(),
                       optimizer=self.optimizer.state_dict(), step=self.step,
                       extra=recipe.checkpoint_extra(model, model_cfg))
        save_checkpoint(self.run.last, **payload)
        if numbered:
            save_checkpoint(self.run.step_checkpoint(self.step), **payload)

    def write_samples(self) -> None:
        """This step's sample grid (once), the diagnostics and the loss curves."""
        if not self.main or self.sampled_at == self.step:
            return
        self.sampled_at = step = self.step
        self.model.eval()
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            images, nrow = self.recipe.sample(self.model, self.sample_batch, self.ctx())
        self.model.train()
        save_image((images.float().cpu() + 0.5).clamp(0, 1), self.run.grid(step), nrow=nrow)
        if self.events is not None:
            self.events.image("samples", self.run.grid(step), step)
        self.write_diagnostics()
        plot_curves(self.log.read(), self.run.samples / "loss.png")

    def write_diagnostics(self) -> None:
        """Held-out diagnostics (e.g. AD-flow's motion metric on unseen identities)."""
        if not self.main:
            return
        self.model.eval()
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            diag = self.recipe.diagnostics(self.model, self.ctx())
        self.model.train()
        if diag:  # their own log and plot: the loss log keeps one record shape
            drec = {"step": self.step, **{k: float(v) for k, v in diag.items()}}
            self.diag_log.write(drec)
            if self.events is not None:
                self.events.scalars(drec, self.step, "diagnostics/")
            plot_curves(self.diag_log.read(), self.run.samples / "diagnostics.png")
            self.say(f"[{self.recipe.NAME}] step {self.step}: " + ", ".join(
                f"{k} {float(v):.4g}" for k, v in diag.items()))

    def after_step(self, terms: dict[str, Tensor], total: Tensor) -> None:
        """The log record, the progress bar, and the grids and checkpoints due at this step."""
        step, cfg = self.step, self.cfg
        if self.main and (step % cfg.log_every == 0 or step == cfg.iter or step == 1):
            rec = {"step": step, "time": round(time.time() - self.t0, 3),
                   "loss": float(total.detach()),
                   **{k: float(v.detach()) for k, v in terms.items()},
                   "lr": self.optimizer.param_groups[0]["lr"], "skipped": self.skipped}
            self.log.write(rec)
            if self.events is not None:
                self.events.scalars(rec, step)
            if self.bar is not None:
                post = {"loss": f"{rec['loss']:.4f}"}
                if "bpd" in rec:
                    post["bpd"] = f"{rec['bpd']:.3f}"
                self.bar.set_postfix(post)
        if self.bar is not None:
            self.bar.update(1)
        if cfg.sample_every and step % cfg.sample_every == 0:
            self.write_samples()
            self.save()
        if cfg.save_every and step % cfg.save_every == 0:
            self.save(numbered=True)

    # --- 5. The loop ----------------------------------------------------------------------------

    def batches(self) -> DataLoader:
        """The batches from this step on. Datasets with per-epoch draws (set_epoch) get a loader
        per epoch (its workers must see each epoch's set_epoch); the others one loader over
        distributed.RunSampler for the rest of the run (the same batches in the same order,
        its workers started once)."""
        cfg, dataset, sampler = self.cfg, self.dataset, self.sampler
        if hasattr(dataset, "set_epoch"):
            epoch, offset = divmod(self.step, self.steps_per_epoch)
            sampler.set_epoch(epoch)
            dataset.set_epoch(epoch, cfg.seed)
            sampler.start_index = offset * self.local_batch
        else:
            sampler = distributed.RunSampler(sampler, self.local_batch, self.step, cfg.iter)
        return DataLoader(dataset, batch_size=self.local_batch, sampler=sampler,
                          num_workers=cfg.workers, drop_last=True,
                          pin_memory=self.device.type == "cuda", persistent_workers=False)

    def loop(self) -> dict:
        """Train to --iter (Ctrl-C stops cleanly); then :meth:`finish`."""
        interrupted = False
        if self.resumed is None and self.cfg.sample_every:
            self.write_diagnostics()  # the starting point (after any data-dependent init)
        self.model.train()
        try:
            while self.step < self.cfg.iter:
                for batch in self.batches():
                    if self.step >= self.cfg.iter:
                        break
                    terms, total, bad = self.train_step(batch)
                    if bad is not None:  # no update
                        self.skip(bad)
                        self.step += 1
                        continue
                    self.bad_in_row = 0
                    self.step += 1
                    self.after_step(terms, total)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            if self.bar is not None:
                self.bar.close()
            if self.events is not None:  # what was logged survives a stopped run
                self.events.flush()
        return self.finish(interrupted)

    def finish(self, interrupted: bool) -> dict:
        """The last checkpoint, grid and curves; the summary, and the warnings it carries."""
        run, main, step = self.run, self.main, self.step
        if main:
            self.save()
            if not interrupted:
                self.write_samples()  # its curves hold every record up to this step
            else:
                plot_curves(self.log.read(), run.samples / "loss.png")
            if self.events is not None:
                self.events.close()
        records = self.log.read() if main else []
        summary = {"step": step, "skipped": self.skipped, "interrupted": interrupted,
                   "checkpoint": str(run.last), "run_dir": str(run.samples),
                   "last": records[-1] if records else {},
                   "seconds": round(time.time() - self.t0, 2)}
        if interrupted and main:
            self.say(f"interrupted at iteration {step}; checkpoint written to {run.last} "
                     "(continue with --resume)")
        bad = read_unreadable_log(run.unreadable) if main else []
        if bad:
            summary["unreadable"] = len(bad)
            self.say(f"warning: {len(bad)} of the {len(self.dataset)} training files could not "
                     f"be read and were replaced by readable ones (first: {bad[0]}; all listed "
                     f"in {run.unreadable})")
        return summary
