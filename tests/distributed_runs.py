"""Training runs for tests/test_distributed.py, the same code in one process or in each rank of a gloo
group that spawn() starts on 127.0.0.1 (spawned processes import this module by name)."""
from __future__ import annotations

import socket
import time
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from twoway_fast import TwoWayLoss, TwoWayNet, data
from twoway_fast.train import Trainer, TrainConfig

ROWS = 160  # of the digits halves: 10 global batches of 16 per epoch
TIMEOUT_S = 240  # a whole spawned run; collectives time out after 60 s, so a lost rank fails, never hangs


def digits_split(name: str, dtype: torch.dtype, rows: int | None = None) -> data.Split:
    split = data.load("digits", data.DataConfig(preprocess="l2_rows")).split(name)
    return data.Split(split.x[:rows].to(dtype), split.y[:rows].to(dtype), None, split.device)


def trainer(run_dir=None, *, backend="fused", order="act_then_bn", form="second_moment", midway="sum",
            repr_affine=True, sync_stats=True, epochs=2, dtype=torch.float64, val=False, lr=0.01) -> Trainer:
    """A small 2-Way Net on the first ROWS digits rows; 2 epochs of 10 steps of 16 rows (global)."""
    torch.manual_seed(0)
    model = TwoWayNet(32, 32, [24, 8, 24], order=order, backend=backend, dropout=[0.5, 0.0, 0.5],
                      repr_affine=repr_affine).to(dtype)
    criterion = TwoWayLoss(model, lh=2.0, lc=2.0, lxy=0.5, lu=0.8, decorrelation=form, decorrelation_input="before_dropout",
                           midway=midway)
    config = TrainConfig(epochs=epochs, batch_size=16, lr=lr, lr_milestones=[], sync_stats=sync_stats)
    train = digits_split("train", dtype, ROWS)
    validation = digits_split("val", dtype) if val else None
    return Trainer(model, criterion, train, validation, config, run_dir, progress=False)


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------- what each rank runs

def train_and_save(out_dir, **kwargs):
    """Trains; every rank saves its final state (rank{r}.pt) and the metrics log."""
    t = trainer(**kwargs)
    log = t.fit()
    torch.save({"weights": weights(t.model), "log": log}, f"{out_dir}/rank{dist.get_rank()}.pt")


def _rank_main(rank: int, world: int, port: int, job, out_dir: str, kwargs: dict):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=60))
    try:
        job(out_dir, **kwargs)
        # Every rank done before any tears its connections down: once, in CI under load, a rank aborted
        # at teardown ("terminate called without an active exception") after its job had finished.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(job, world: int, out_dir, **kwargs) -> None:
    """Runs job(out_dir, **kwargs) in `world` gloo ranks; a rank's exception fails the caller with its
    traceback, and a run over TIMEOUT_S is killed and reported."""
    context = mp.start_processes(_rank_main, args=(world, free_port(), job, str(out_dir), kwargs), nprocs=world,
                                 join=False, start_method="spawn")
    deadline = time.monotonic() + TIMEOUT_S
    while not context.join(timeout=max(deadline - time.monotonic(), 0)):
        if time.monotonic() >= deadline:
            for p in context.processes:
                p.kill()
            raise TimeoutError(f"{world} spawned ranks did not finish {job.__name__} within {TIMEOUT_S} s")
