"""Device selection and torchrun / DistributedDataParallel set-up."""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler, Sampler


@dataclass
class DistInfo:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str = "auto", local_rank: int = 0,
                   local_world: int = 1) -> torch.device:
    """'auto' -> CUDA when available (per local rank under torchrun), else CPU.

    Under torchrun (``local_world`` processes on this node) ``cuda:N`` names the first GPU of
    this node's share: local rank r runs on ``cuda:N+r`` (``cuda`` and ``auto`` mean N = 0), so
    no two ranks land on one GPU.
    """
    if name == "auto":
        name = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    elif name == "cuda" and torch.cuda.is_available():
        name = f"cuda:{local_rank}"
    elif name.startswith("cuda:") and name[5:].isdigit() and local_world > 1:
        first = int(name[5:])
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count and first + local_world > count:
            raise ValueError(f"--device {name}: {local_world} processes per node need GPUs "
                             f"{first}..{first + local_world - 1}, this node has {count}; "
                             "lower --device's index or --nproc_per_node")
        name = f"cuda:{first + local_rank}"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name}: not a device (use auto, cpu, cuda or cuda:N)") \
            from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available here; use --device cpu")
    return device


def launched_world() -> int:
    """The number of processes torchrun started (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup(device: str = "auto") -> DistInfo:
    """Initialise the process group when launched by torchrun (WORLD_SIZE > 1)."""
    world = launched_world()
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1" if world == 1 else str(world)))
    dev = resolve_device(device, local_rank, local_world)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend)
    return DistInfo(rank, world, local_rank, dev)


def barrier() -> None:
    """Wait for every process of the group (nothing without one). Called after training
    succeeded, so that no rank destroys the group while a peer is still in a collective: a gloo
    peer that loses its connection there aborts its process."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def teardown() -> None:
    """Destroy the process group (nothing without one). DistributedDataParallel's wrapper sits
    in a reference cycle and holds the group: collected first, so the group's gloo threads end
    here on destroy, not in whichever later collection (or interpreter exit) would free it."""
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def gather_interleaved(x: torch.Tensor, world: int) -> torch.Tensor:
    """All-gather a per-rank batch into the global batch order (rank r's item j -> j*world+r)."""
    if world == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.contiguous())
    return torch.stack(parts, 1).reshape(x.shape[0] * world, *x.shape[1:])


def all_true(flag: bool, device: torch.device, world: int) -> bool:
    """Logical AND of ``flag`` over all ranks."""
    if world == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item() > 0.5)


class ResumableSampler(DistributedSampler):
    """DistributedSampler (shuffled by seed + epoch, drop_last) that can start mid-epoch.

    With one process it is the same permutation, so a single process with global batch B sees
    exactly the samples that W processes with B/W each see at the same step.
    """

    def __init__(self, dataset, world: int, rank: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed,
                         drop_last=True)
        self.start_index = 0

    def __iter__(self):
        indices = list(super().__iter__())
        return iter(indices[self.start_index:])

    def __len__(self) -> int:
        return self.num_samples - self.start_index


class RunSampler(Sampler[int]):
    """Every index the steps ``first_step .. last_step - 1`` of a run read, epoch after epoch,
    as one sequence: the batches (``batch`` indices each) of ``epochs``'s permutations exactly as
    a fresh per-epoch loader over it would form them (drop_last), resumed mid-epoch too.

    One ``DataLoader`` over it serves a whole run: its worker processes start once instead of
    every epoch and keep prefetching across epoch boundaries. Forking a worker from the training
    process after the model exists shares its whole heap copy-on-write, so each per-epoch fork
    made the next step fault in (copy) every page it wrote: on a small set (an epoch of a few
    steps) that was most of what content-ae's loop lost against its step (docs/performance.md,
    round 8). For datasets without per-epoch state in the workers (no ``set_epoch``).
    """

    def __init__(self, epochs: ResumableSampler, batch: int, first_step: int,
                 last_step: int) -> None:
        self.epochs, self.batch = epochs, batch
        self.first_step, self.last_step = first_step, last_step
        self.steps_per_epoch = epochs.num_samples // batch

    def __iter__(self):
        step, spe, b = self.first_step, self.steps_per_epoch, self.batch
        while step < self.last_step:
            epoch, offset = divmod(step, spe)
            self.epochs.set_epoch(epoch)
            order = list(DistributedSampler.__iter__(self.epochs))
            n = min(spe - offset, self.last_step - step)
            yield from order[offset * b:(offset + n) * b]
            step += n

    def __len__(self) -> int:
        return max(0, self.last_step - self.first_step) * self.batch
