"""Many processes, GPUs or machines: ``torchrun ... -m filtag_kg run|profile|explain``.

When launched by ``torchrun`` (``WORLD_SIZE`` > 1) each process joins one
process group (NCCL on GPUs, Gloo on CPUs). The dataset's fixed order is cut
into *rounds* of ``world x batch`` consecutive images; in every round, rank r
takes the r-th batch. Nothing is padded, so every image is counted exactly
once, and after each round all ranks together have finished the same prefix
of the dataset: a checkpoint is one number (how many images are done) plus the
summed state, so a killed run resumes with any number of processes.

Collectives happen only at checkpoints and at the end: class sums and counts
are summed with one all-reduce, running top images are gathered and merged,
skipped files and explanation lines are gathered to rank 0, which alone
writes artifacts.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Sampler


@dataclass(frozen=True)
class Dist:
    """This process's place in the process group (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        """Whether several processes work together."""
        return self.world > 1

    @property
    def main(self) -> bool:
        """Whether this process writes artifacts and prints (rank 0)."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every rank (no-op alone)."""
        if self.active:
            torch.distributed.barrier()

    def all_sum(self, tensors: list[torch.Tensor]) -> None:
        """Sum each tensor over all ranks, in place."""
        if self.active:
            for t in tensors:
                torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's copy of a same-shaped tensor, in rank order."""
        if not self.active:
            return [tensor]
        out = [torch.empty_like(tensor) for _ in range(self.world)]
        torch.distributed.all_gather(out, tensor.contiguous())
        return out

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's picklable object, in rank order (on every rank)."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's picklable object, on every rank."""
        if not self.active:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]


def current() -> Dist:
    """The process group this process belongs to, joining it on first use.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) the group is initialised from the
    environment: NCCL when CUDA is available and ``FILTAG_KG_BACKEND`` does not
    say otherwise, else Gloo. Without ``torchrun``: rank 0 of 1.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = os.environ.get("FILTAG_KG_BACKEND") or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def shutdown() -> None:
    """Leave the process group, if one was joined."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


class RoundSampler(Sampler[list[int]]):
    """Batches of dataset positions for one rank, in rounds of ``world x batch``.

    Round t covers positions ``[start + t*world*batch, start + (t+1)*world*batch)``;
    rank r takes the r-th ``batch``-sized slice of it (possibly shorter or
    empty at the end, never padded). Every rank yields the same number of
    batches, so collectives line up.
    """

    def __init__(self, start: int, stop: int, batch_size: int, dist: Dist) -> None:
        self.start, self.stop, self.batch_size, self.dist = start, stop, batch_size, dist

    @property
    def round_size(self) -> int:
        """Images per round over all ranks."""
        return self.dist.world * self.batch_size

    def __len__(self) -> int:
        return max(0, -(-(self.stop - self.start) // self.round_size))

    def __iter__(self) -> Iterator[list[int]]:
        for r0 in range(self.start, self.stop, self.round_size):
            lo = r0 + self.dist.rank * self.batch_size
            yield list(range(lo, min(lo + self.batch_size, self.stop)))

    def done_after(self, rounds: int) -> int:
        """How many dataset positions all ranks together finished after ``rounds`` rounds."""
        return min(self.stop, self.start + rounds * self.round_size)
