"""Data-parallel training on torch.distributed (torchrun; gloo on the CPU, NCCL on GPUs): the process
group and this process's place in it.

Every rank holds the whole model and takes a contiguous slice of every global batch; gradients are
averaged after backward. With synchronised statistics (TwoWayNet.stats_group set) the batch norms and
the decorrelation covariance see the rows of every rank: that forward and loss are the synced backend
(twoway_fast/backends/synced.py).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

# Every collective of a training step in this process (all-reduces, the synced loss's all-gather), forward and
# backward, and the bytes this process put in (the benchmark reads them).
collective_calls = 0
bytes_sent = 0


def count_collective(t: Tensor) -> None:
    global collective_calls, bytes_sent
    collective_calls += 1
    bytes_sent += t.numel() * t.element_size()


def init_from_env(device: str) -> str:
    """Joins the process group torchrun describes in the environment (WORLD_SIZE, RANK, MASTER_ADDR, ...),
    gloo for the CPU and NCCL for CUDA; returns the device of this rank (cuda:LOCAL_RANK for cuda).
    Without torchrun's environment it does nothing."""
    if "WORLD_SIZE" not in os.environ or dist.is_initialized():
        return device
    cuda = torch.device(device).type == "cuda"
    if cuda:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo")
    return device


@dataclass(frozen=True)
class Ranks:
    """This process's place in the data-parallel run: rank `rank` of `world` (0 of 1 without one)."""
    rank: int = 0
    world: int = 1

    @classmethod
    def current(cls) -> Ranks:
        return cls(dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else cls()

    def local_rows(self, batch_size: int) -> int:
        if batch_size % self.world:
            raise ValueError(f"train.batch_size {batch_size} (the global batch) must divide by the number of "
                             f"processes, {self.world}")
        return batch_size // self.world

    def shard(self, index: Tensor) -> Tensor:
        """This rank's contiguous slice of a global batch; rows keep their global position, so the
        dropout masks (drawn per global row from first_row) do not depend on the number of ranks."""
        return index.view(self.world, -1)[self.rank]

    def first_row(self, local_rows: int) -> int:
        return self.rank * local_rows

    def average_gradients(self, params) -> None:
        """All ranks' gradients averaged, in one all-reduce of the flattened gradients."""
        if self.world == 1:
            return
        params = [p for p in params if p.requires_grad]
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        count_collective(flat)
        dist.all_reduce(flat)
        flat /= self.world
        for p, g in zip(params, flat.split([g.numel() for g in grads])):
            p.grad = g.view_as(p)

    def average(self, t: Tensor) -> Tensor:
        """The mean over ranks of a tensor (metrics, local running statistics)."""
        if self.world == 1:
            return t
        t = t.clone()
        count_collective(t)
        dist.all_reduce(t)
        return t / self.world

    def first_bad(self, step: Tensor, value: Tensor) -> tuple[int, float]:
        """The earliest step (-1: none) at which any rank's loss was not finite, and that loss: every rank
        stops at the same check, none is left waiting in an all-reduce."""
        if self.world == 1:
            return int(step), float(value)
        pair = torch.stack([step.double(), value.double()])
        gathered = [torch.empty_like(pair) for _ in range(self.world)]
        dist.all_gather(gathered, pair)
        bad = [(int(s), v) for s, v in (g.tolist() for g in gathered) if s >= 0]
        return min(bad, key=lambda sv: sv[0]) if bad else (-1, 0.0)

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


@torch.no_grad()
def average_buffers(model, ranks: Ranks) -> None:
    """Local statistics leave each rank its own BN running estimates; average them (before validation
    and checkpoints, so every rank holds the same model)."""
    buffers = list(model.buffers())
    mean = ranks.average(torch.cat([b.reshape(-1) for b in buffers]))  # one all-reduce for all of them
    for buffer, value in zip(buffers, mean.split([b.numel() for b in buffers])):
        buffer.copy_(value.view_as(buffer))


def broadcast_parameters(model) -> None:
    """Rank 0's parameters and buffers on every rank (the runs are seeded alike; this makes it certain)."""
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            dist.broadcast(t, 0)
