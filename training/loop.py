"""The training loop every model shares.

Seeded, resumable bit for bit, DDP under torchrun, AMP on CUDA, NaN-skipping, Ctrl-C safe;
writes ``CHECKPOINT_DIR/NAME/{last.pt, step_NNNNNNN.pt}`` and the run folder
``RESULT_DIR/sample_NAME/`` (``config.json``, ``log.jsonl``, ``loss.png``, ``NNNNNN.png``; with
``--tensorboard`` also TensorBoard event files, ``training.tensorboard``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
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
from .runlock import RunLock


def lean_optimizer(model_cfg) -> bool:
    """Whether to zero the gradients in place between steps (and let the recipe step Adam
    inside backward, ``step_in_backward``): with ``--low_memory``. Gradients freed and
    re-allocated every step leave glibc holding the old pages (part of -112 MiB peak at the
    thesis config, ``bench/glow_memory.py``). The same numbers either way
    (``tests/test_training.py``)."""
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
    import sys

    if "triton" in sys.modules or torch.cuda.is_available():
        return False
    sys.modules["triton"] = None  # an import of it raises ImportError
    return True


class TrainingStopped(RuntimeError):
    """The run cannot go on (e.g. too many non-finite losses); message is one line."""


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


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def run_paths(cfg: TrainConfig) -> tuple[Path, Path]:
    """(checkpoint folder, run/sample folder) of a run."""
    return Path(cfg.checkpoint_dir) / cfg.name, Path(cfg.result_dir) / f"sample_{cfg.name}"


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
        raise ValueError(
            f"--amp: {SLOW_CPU_BF16}; drop --amp")
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


UNREADABLE_LOG = "unreadable.txt"  # in the run folder: the training files that could not be read


def step_checkpoints(ckpt_dir: Path) -> list[Path]:
    """``step_NNNNNNN.pt`` files of a run, oldest first."""
    return sorted(ckpt_dir.glob("step_*.pt"))


def resume_source(ckpt_dir: Path) -> Path | None:
    """The checkpoint ``--resume`` continues from: ``last.pt``, or when it is missing (deleted,
    or lost with a disk) the newest ``step_*.pt``; None when the run has no checkpoint."""
    last = ckpt_dir / "last.pt"
    if last.is_file():
        return last
    steps = step_checkpoints(ckpt_dir)
    return steps[-1] if steps else None


def _start_fresh(cfg: TrainConfig, ckpt_dir: Path, run_dir: Path, delete: bool = True,
                 say=print) -> None:
    """Refuse to train over an existing run NAME, or with --force delete its files first
    (only ``delete=True``, the main process, deletes; every rank checks, so all refuse).

    A run folder whose run stopped before writing any checkpoint (a log, samples, no
    ``last.pt`` and no ``step_*.pt``) holds nothing to continue: it is started over with a note,
    so the advice given when such a run stops (e.g. "try a lower --lr") works as given."""
    log_path, last = run_dir / "log.jsonl", ckpt_dir / "last.pt"
    checkpoints = [p for p in (last,) if p.exists()] + step_checkpoints(ckpt_dir)
    old = checkpoints + [p for p in (log_path,) if p.exists()]
    if not old:
        return
    if checkpoints and not cfg.force:
        newest = resume_source(ckpt_dir)
        src = "" if newest == last else f" (from {newest.name}, its newest checkpoint)"
        raise ValueError(f"{checkpoints[0]}: run '{cfg.name}' exists; continue it with "
                         f"--resume{src}, start it over with --force (deletes its "
                         f"{len(checkpoints)} checkpoint(s)), or pick another -n NAME")
    if not delete:
        return
    if not checkpoints and not cfg.force:
        say(f"note: run '{cfg.name}' stopped before its first checkpoint; starting it over "
            f"(its log {log_path} is replaced)")
    for p in old:
        p.unlink()
    (run_dir / UNREADABLE_LOG).unlink(missing_ok=True)
    for p in run_dir.glob("[0-9]*.png"):
        p.unlink()
    for p in run_dir.glob("events.out.tfevents.*"):  # an earlier run's TensorBoard events
        p.unlink()


def train(recipe: ModuleType, model_cfg: Any, cfg: TrainConfig, data_dir: str | Path,
          say=print) -> dict:
    """Train ``recipe``'s model; returns a summary dict. Raises ValueError/TrainingStopped."""
    # Refused before the process group forms, so every rank exits at once with the same line.
    if distributed.launched_world() > 1 and not getattr(recipe, "DDP_EXACT", True):
        raise ValueError(f"--model {recipe.NAME} does not support torchrun/DDP "
                         f"({getattr(recipe, 'DDP_NOTE', 'not exact')}); train with one process")
    hide_triton_without_gpu()
    ckpt_dir, run_dir = run_paths(cfg)
    check_folder(cfg.result_dir, "--result_dir")
    check_folder(cfg.checkpoint_dir, "--checkpoint_dir")
    # One process per run name: taken before anything of the run is read, deleted or written
    # (--force included); under torchrun the main rank holds it for the whole group.
    lock = RunLock(ckpt_dir, cfg.name) if os.environ.get("RANK", "0") == "0" else None
    if lock is not None:
        lock.acquire()
        if lock.stale:
            say(lock.stale)
    try:
        info = distributed.setup(cfg.device)
        try:
            result = _train(recipe, model_cfg, cfg, Path(data_dir), info, say)
            distributed.barrier()  # every rank done with its collectives before any tears down
            return result
        finally:
            distributed.teardown()
    finally:
        if lock is not None:
            lock.release()



def _train(recipe, model_cfg, cfg: TrainConfig, data_dir: Path, info, say) -> dict:
    device, rank, world = info.device, info.rank, info.world
    main = info.is_main
    validate_train(cfg)
    low_dtype = amp_dtype(cfg, device)  # refused here, before a fresh start clears the run
    if cfg.batch % world:
        raise ValueError(f"--batch {cfg.batch} is not divisible by the {world} processes")
    local_batch = cfg.batch // world
    # CUDA: TF32 products unless --no_tf32; cuDNN autotuning, since every step has one shape
    # (a fixed batch, drop_last). Nothing is set off CUDA.
    switches = set_gpu_switches(device, tf32=cfg.tf32, benchmark=True)
    ckpt_dir, run_dir = run_paths(cfg)
    last_path = ckpt_dir / "last.pt"

    resumed = None
    if cfg.resume:
        if cfg.force:
            raise ValueError("--resume and --force contradict each other; give one")
        source = resume_source(ckpt_dir)
        if source is None:
            raise ValueError(f"--resume: {last_path} does not exist, nor any step_*.pt beside it "
                             f"(run '{cfg.name}' has no checkpoint); start it without --resume")
        resumed = load_checkpoint(source, expect_model=recipe.NAME)
        if source != last_path and main:
            say(f"note: {last_path} is missing; resuming from {source}, the newest checkpoint")
        if int(resumed.get("step", 0)) >= cfg.iter:
            raise ValueError(f"--resume: run '{cfg.name}' is already at iteration "
                             f"{int(resumed.get('step', 0))}, not below --iter {cfg.iter}; give a "
                             "larger --iter to train further")
    else:
        _start_fresh(cfg, ckpt_dir, run_dir, delete=main, say=say)

    recipe.validate(model_cfg)
    seed_everything(cfg.seed)
    dataset = recipe.dataset(model_cfg, data_dir)
    unreadable_log = run_dir / UNREADABLE_LOG  # every process of the run appends to it
    if hasattr(dataset, "record_unreadable"):
        dataset.record_unreadable(unreadable_log)
    data_facts = {"path": str(data_dir.resolve()), "items": len(dataset)}
    if resumed is not None:
        changes = resume_changes(resumed, model_cfg, cfg, data_facts)
        if changes and not cfg.allow_changes:
            raise ValueError(f"--resume: {source} was trained differently ({'; '.join(changes)})"
                             "; drop the changed flags to continue bit for bit, or accept the "
                             "change with --allow_changes")
        if changes and main:
            say(f"warning: resuming with changes ({'; '.join(changes)}); the run is no longer "
                "bit for bit the uninterrupted one")
    if len(dataset) < cfg.batch:
        raise ValueError(f"{data_dir}: only {len(dataset)} training items, fewer than "
                         f"--batch {cfg.batch}; add data or lower --batch")
    model = recipe.build(model_cfg).to(device)
    groups = (recipe.param_groups(model, model_cfg, cfg) if hasattr(recipe, "param_groups")
              else [{"params": [p for p in model.parameters() if p.requires_grad]}])
    lean = lean_optimizer(model_cfg)
    optimizer = training_adam(groups, lr=cfg.lr, eps=cfg.adam_eps)
    base_lrs = [g["lr"] for g in optimizer.param_groups]  # before a resume overwrites them
    scaler = torch.amp.GradScaler("cuda", enabled=low_dtype == torch.float16)

    sampler = distributed.ResumableSampler(dataset, world, rank, cfg.seed)
    steps_per_epoch = sampler.num_samples // local_batch
    if steps_per_epoch == 0:
        raise ValueError(f"{data_dir}: too few items for --batch {cfg.batch}")

    # A fixed batch for the sample grids: the first items of epoch 0's permutation.
    sampler.set_epoch(0)
    if hasattr(dataset, "set_epoch"):  # per-item draws seeded by (seed, epoch, item)
        dataset.set_epoch(0, cfg.seed)
    first_idx = list(distributed.DistributedSampler.__iter__(sampler))[:local_batch]
    sample_batch = to_device(default_collate([dataset[i] for i in first_idx]), device)

    step = 0
    if resumed is not None:
        model.load_state_dict(resumed["weights"])
        if resumed.get("optimizer"):
            optimizer.load_state_dict(resumed["optimizer"])
        step = int(resumed["step"])
        if resumed.get("rng"):
            set_rng_state(resumed["rng"])
        if resumed.get("scaler") and scaler.is_enabled():
            scaler.load_state_dict(resumed["scaler"])
    elif hasattr(recipe, "initialize"):
        recipe.initialize(model, sample_batch, _ctx(step, info, model_cfg, cfg))

    log = JsonlLog(run_dir / "log.jsonl")
    diag_log = JsonlLog(run_dir / "diagnostics.jsonl")  # recipe.diagnostics at sample steps
    events = None  # --tensorboard: the same records as TensorBoard events (imported only then)
    if main and cfg.tensorboard:
        from .tensorboard import EventLog

        events = EventLog(run_dir, step if resumed is not None else None)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        resolved = {"model": recipe.NAME, "data_dir": str(data_dir),
                    "model_config": dataclasses.asdict(model_cfg),
                    "train_config": dataclasses.asdict(cfg), "world_size": world}
        (run_dir / "config.json").write_text(json.dumps(resolved, indent=2) + "\n")
        if resumed is not None:
            log.truncate_after(step)
            diag_log.truncate_after(step)
        say(f"[{recipe.NAME}] {len(dataset)} items, {sum(p.numel() for p in model.parameters()):,}"
            f" parameters, device {device}"
            f"{' (' + ', '.join(switches) + ')' if switches else ''}, {world} process(es); "
            f"run folder {run_dir}")

    net = model
    if world > 1:
        net = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=getattr(recipe, "DDP_FIND_UNUSED", False))

    weights = recipe.loss_weights(model_cfg)
    group_clip = any(g.get("clip_norm", 0) > 0 for g in optimizer.param_groups)
    # Adam stepped layer by layer inside a low-memory backward (a whole gradient set never
    # alive at once): where the recipe offers it and nothing needs all gradients first
    # (clipping by a norm, fp16 loss scaling).
    offer = getattr(recipe, "step_in_backward", None)
    grads_ready = offer(model_cfg) if offer is not None else None
    if not lean or cfg.grad_clip > 0 or group_clip or scaler.is_enabled():
        grads_ready = None
    bad_in_row = skipped = 0
    t0 = time.time()
    bar = None
    if main and cfg.progress:
        bar = progress(cfg.iter, f"{recipe.NAME}:{cfg.name}", initial=step, file=sys.stderr)

    def save(path_step: int | None) -> None:
        if not main:
            return
        payload = dict(model_name=recipe.NAME, model_config=dataclasses.asdict(model_cfg),
                       train_config={**dataclasses.asdict(cfg), "data": data_facts},
                       weights=unwrap(net).state_dict(), scaler=scaler.state_dict(),
                       optimizer=optimizer.state_dict(), step=step,
                       extra=(recipe.checkpoint_extra(model, model_cfg)
                              if hasattr(recipe, "checkpoint_extra") else {}))
        save_checkpoint(last_path, **payload)
        if path_step is not None:
            save_checkpoint(ckpt_dir / f"step_{path_step:07d}.pt", **payload)

    sampled_at = [-1]

    def write_samples() -> None:
        if not main or sampled_at[0] == step:
            return
        sampled_at[0] = step
        model.eval()
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            images, nrow = recipe.sample(model, sample_batch, _ctx(step, info, model_cfg, cfg))
        model.train()
        save_image((images.float().cpu() + 0.5).clamp(0, 1), run_dir / f"{step:06d}.png",
                   nrow=nrow)
        if events is not None:
            events.image("samples", run_dir / f"{step:06d}.png", step)
        write_diagnostics()
        plot_curves(log.read(), run_dir / "loss.png")

    def write_diagnostics() -> None:
        """Held-out diagnostics (e.g. AD-flow's motion metric on unseen identities)."""
        if not main or not hasattr(recipe, "diagnostics"):
            return
        model.eval()
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            diag = recipe.diagnostics(model, _ctx(step, info, model_cfg, cfg))
        model.train()
        if diag:  # their own log and plot: the loss log keeps one record shape
            drec = {"step": step, **{k: float(v) for k, v in diag.items()}}
            diag_log.write(drec)
            if events is not None:
                events.scalars(drec, step, "diagnostics/")
            plot_curves(diag_log.read(), run_dir / "diagnostics.png")
            say(f"[{recipe.NAME}] step {step}: " + ", ".join(
                f"{k} {float(v):.4g}" for k, v in diag.items()))

    # Datasets with per-epoch draws (set_epoch) get a loader per epoch; the others one loader
    # over distributed.RunSampler for the whole run (the same batches in the same order).
    per_epoch_state = hasattr(dataset, "set_epoch")
    interrupted = False
    if resumed is None and cfg.sample_every:
        write_diagnostics()  # the starting point (after any data-dependent init)
    model.train()
    try:
        while step < cfg.iter:
            if per_epoch_state:  # its workers must see each epoch's set_epoch: one per epoch
                epoch, offset = divmod(step, steps_per_epoch)
                sampler.set_epoch(epoch)
                dataset.set_epoch(epoch, cfg.seed)
                sampler.start_index = offset * local_batch
                order = sampler
            else:  # one loader, its workers started once, for every remaining step
                order = distributed.RunSampler(sampler, local_batch, step, cfg.iter)
            loader = DataLoader(dataset, batch_size=local_batch, sampler=order,
                                num_workers=cfg.workers, drop_last=True,
                                pin_memory=device.type == "cuda",
                                persistent_workers=False)
            for batch in loader:
                if step >= cfg.iter:
                    break
                batch = to_device(batch, device)
                ctx = _ctx(step, info, model_cfg, cfg)
                if hasattr(recipe, "lr_factor"):  # a schedule that is a function of the step
                    factor = recipe.lr_factor(model_cfg, cfg, step)
                    for g, base in zip(optimizer.param_groups, base_lrs, strict=True):
                        g["lr"] = base * factor
                # Before the forward pass: freed gradients (the default) then do not sit beside
                # the forward's activations at their peak (one gradient set less at peak).
                optimizer.zero_grad(set_to_none=not lean)
                with _autocast(device, low_dtype):
                    terms = recipe.losses(net, batch, ctx)
                total = sum(w * terms[k].float() for k, w in weights.items() if w)
                finite = distributed.all_true(bool(torch.isfinite(total).item()), device, world)
                bad = None if finite else "loss"
                if bad is None:
                    stepper = StepInBackward(optimizer) if grads_ready is not None else None
                    with grads_ready(stepper) if stepper else contextlib.nullcontext():
                        scaler.scale(total).backward()
                    if stepper is not None and stepper.bad:
                        bad = "gradient"  # the rest of the step is skipped (StepInBackward)
                        optimizer.zero_grad(set_to_none=True)
                    if cfg.grad_clip > 0 or group_clip:
                        scaler.unscale_(optimizer)
                        if cfg.grad_clip > 0:
                            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                        clip_group_gradients(optimizer)
                    if bad is None and not scaler.is_enabled() \
                            and not grads_finite(model.parameters()):
                        # a finite loss can still overflow in backward; clipping an infinite
                        # norm would write NaN into every parameter (fp16's scaler skips these)
                        optimizer.zero_grad(set_to_none=True)
                        bad = "gradient"
                if bad is not None:  # no update: counted, warned, stopped after too many
                    bad_in_row += 1
                    skipped += 1
                    if bad_in_row >= cfg.max_bad_steps:
                        plural = {"loss": "losses", "gradient": "gradients"}[bad]
                        kept = (f"the last good checkpoint is {last_path}" if last_path.is_file()
                                else "no checkpoint was written")
                        raise TrainingStopped(
                            f"{bad_in_row} non-finite {plural} in a row at iteration {step}; "
                            f"stopped, {kept} (try a lower --lr, --grad_clip 5, or check the "
                            "data)")
                    if main:
                        say(f"warning: non-finite {bad} at iteration {step}, step skipped")
                    step += 1
                    continue
                scaler.step(optimizer)  # (after StepInBackward: the parameters it left)
                scaler.update()
                bad_in_row = 0
                step += 1

                if main and (step % cfg.log_every == 0 or step == cfg.iter or step == 1):
                    rec = {"step": step, "time": round(time.time() - t0, 3),
                           "loss": float(total.detach()),
                           **{k: float(v.detach()) for k, v in terms.items()},
                           "lr": optimizer.param_groups[0]["lr"], "skipped": skipped}
                    log.write(rec)
                    if events is not None:
                        events.scalars(rec, step)
                    if bar is not None:
                        post = {"loss": f"{rec['loss']:.4f}"}
                        if "bpd" in rec:
                            post["bpd"] = f"{rec['bpd']:.3f}"
                        bar.set_postfix(post)
                if bar is not None:
                    bar.update(1)
                if cfg.sample_every and step % cfg.sample_every == 0:
                    write_samples()
                    save(None)
                if cfg.save_every and step % cfg.save_every == 0:
                    save(step)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if bar is not None:
            bar.close()
        if events is not None:  # what was logged survives a stopped run
            events.flush()
    if main:
        save(None)
        if not interrupted:
            write_samples()
        plot_curves(log.read(), run_dir / "loss.png")
        if events is not None:
            events.close()
    records = log.read() if main else []
    summary = {"step": step, "skipped": skipped, "interrupted": interrupted,
               "checkpoint": str(last_path), "run_dir": str(run_dir),
               "last": records[-1] if records else {},
               "seconds": round(time.time() - t0, 2)}
    if interrupted and main:
        say(f"interrupted at iteration {step}; checkpoint written to {last_path} "
            "(continue with --resume)")
    bad = read_unreadable_log(unreadable_log) if main else []
    if bad:
        summary["unreadable"] = len(bad)
        say(f"warning: {len(bad)} of the {len(dataset)} training files could not be read and "
            f"were replaced by readable ones (first: {bad[0]}; all listed in {unreadable_log})")
    return summary


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


def _ctx(step: int, info, model_cfg, cfg: TrainConfig) -> StepContext:
    return StepContext(step=step, rank=info.rank, world=info.world, device=info.device,
                       model_cfg=model_cfg, train_cfg=cfg,
                       generator=step_generator(cfg.seed, step))


