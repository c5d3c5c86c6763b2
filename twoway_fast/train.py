"""Training a 2-Way Net (docs/method.md#training): optimiser and schedule, validation each epoch, best-checkpoint
selection, atomic checkpoints, resume, progress bar (on a terminal), a JSON-lines metrics log and
callbacks (twoway_fast.callbacks: on_step, on_epoch).

Determinism: the model is initialised from torch's generator seeded with `seed`; batch order and
dropout seeds come from two CPU generators seeded from it and saved in every checkpoint (with torch's
own generator), so a run resumed from a checkpoint continues exactly as the uninterrupted run would
have. Checkpoints are written once per epoch: a run killed mid-epoch resumes at the start of that
epoch with the state it had then, and replays the epoch bit for bit.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm

from . import metrics, run
from .callbacks import Callback
from .config import LOWER_IS_BETTER, TrainConfig
from .cores import ThreadBudget
from .data import Split, batches
from .distributed import Ranks, average_buffers, broadcast_parameters
from .evaluation import encode, retrieval_of
from .presets import Preset
from .projection import Projection
from .step.direct import DirectStep, direct_step_applies, native_bf16_products
from .step.graph import CapturedStep
from .types import LossTerms

TERMS = LossTerms._fields
CHECK_EVERY = 20  # steps between reads of the loss on the host (each read waits for the device)
CCA_FIT_ROWS = 10000  # training rows whose representations fit each epoch's CCA projection (validate)


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or Inf; the run stopped and the last good checkpoint was kept."""


def make_optimizer(params, config: TrainConfig) -> torch.optim.Optimizer:
    params = list(params)
    if config.optimizer.lower() == "sgd":
        # torch's fused kernel on the CPU: one pass per parameter instead of the per-tensor loop torch
        # defaults to there (mnist step: 0.24 vs 0.81 ms, benchmarks/HISTORY.md). Elsewhere torch's default.
        fused = True if params and all(p.device.type == "cpu" for p in params) else None
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov, fused=fused)
    name = {n.lower(): n for n in torch.optim.__all__}.get(config.optimizer.lower(), "")
    cls = getattr(torch.optim, name, None)
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise ValueError(f"train.optimizer {config.optimizer!r} is not a torch.optim optimiser")
    return cls(params, lr=config.lr)


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """The learning rate per epoch: halved (lr_gamma) at each of lr_milestones, or a half cosine from lr
    down to 0 after the last epoch. The cosine is a closed form of the epoch and config.epochs, so a run
    resumed with more epochs stretches it instead of climbing back up a restarted cosine."""
    if config.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda epoch: 0.5 * (1 + math.cos(math.pi * min(epoch, config.epochs) / config.epochs)))
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, config.lr_milestones, config.lr_gamma)


def build(preset: Preset, dx: int, dy: int, seed: int, device: str | torch.device = "cpu"):
    """(model, criterion) for the preset, initialised deterministically from `seed`."""
    torch.manual_seed(seed)
    model = preset.build_model(dx, dy).to(device)
    return model, preset.build_loss(model)


class Trainer:
    """Trains `model` on the `train` split, validating on `val` after each epoch, and writes the run
    folder `run_dir` (see twoway_fast.run). Without `val` every epoch counts as the best; without
    `run_dir` nothing is written (the estimator's in-memory use).

    progress: a progress bar per epoch, where stderr is a terminal (none in a log file or a pipe).
    callbacks: twoway_fast.callbacks.Callback objects (on_step after each step, on_epoch after each
    epoch); `trainer.callbacks` is a list, so more can be added before fit.
    adapt_threads: on the CPU in one process, use no more of torch's threads than other processes leave
    cores free, checked every few steps (twoway_fast.cores; the same results, faster on a busy machine);
    the thread count is restored when fit returns. False: the count as it is.
    The process's allocator is left alone: the command line opts in to twoway_fast.heap.

    Under torch.distributed (twoway_fast.distributed) each rank takes its slice of every global batch
    (config.batch_size rows), gradients are averaged, and rank 0 alone writes the run folder."""

    def __init__(self, model, criterion, train: Split, val: Split | None, config: TrainConfig,
                 run_dir: str | Path | None, progress: bool = True, callbacks: Sequence[Callback] = (),
                 adapt_threads: bool = True):
        if config.batch_size > len(train):
            raise ValueError(f"train.batch_size {config.batch_size} exceeds the {len(train)} training rows")
        self.model, self.criterion, self.config = model, criterion, config
        self.train_split, self.val_split = train, val
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.progress = progress
        self.callbacks = list(callbacks)
        self.optimizer = make_optimizer(model.parameters(), config)
        self.scheduler = make_scheduler(self.optimizer, config)
        self.shuffle_gen = torch.Generator().manual_seed(config.seed)
        self.dropout_gen = torch.Generator().manual_seed(config.seed + 1)
        self.epoch = 0  # epochs completed
        self.best: float | None = None
        self.log: list[dict] = []
        self.ranks = Ranks.current()
        # Rows keep their global index in the dropout masks: this rank's slice starts at first_row.
        self.first_row = self.ranks.first_row(self.ranks.local_rows(config.batch_size))
        if self.ranks.world > 1:
            model.stats_group = torch.distributed.group.WORLD if config.sync_stats else None
            broadcast_parameters(model)
        direct = not config.cuda_graph and direct_step_applies(model, criterion, train.device)
        # The products' dtype this trainer runs ("auto" resolved here; recorded in each metrics row).
        self.precision = config.precision
        if self.precision == "auto":
            self.precision = "bf16" if direct and native_bf16_products() else "fp32"
        if config.cuda_graph:
            if train.device.type != "cuda":
                raise ValueError(f"train.cuda_graph needs a CUDA device, but the training data is on {train.device}")
            if self.ranks.world > 1:
                raise ValueError("train.cuda_graph runs in one process only: the all-reduces of a "
                                 "multi-process step are not captured")
            self.step = CapturedStep(self._eager_step, self.optimizer)
        elif direct:  # the autograd step's result, faster
            reduce = self.ranks.average_gradients if self.ranks.world > 1 else None
            products = torch.bfloat16 if self.precision == "bf16" else None
            self.step = DirectStep(model, criterion, self.optimizer, self.first_row, reduce, products)
        else:
            self.step = self._eager_step
        if self.precision == "bf16" and not isinstance(self.step, DirectStep):
            raise ValueError("train.precision 'bf16' runs in the fused backend's CPU training step only: a "
                             f"TwoWayNet with backend 'fused' (this one: {getattr(model, 'backend', None)!r}), "
                             f"data on the CPU (here: {train.device}), one process or train.sync_stats false")
        # One process on the CPU: as many threads as other processes leave cores free (twoway_fast.cores).
        self.adapt_threads = adapt_threads and train.device.type == "cpu" and self.ranks.world == 1
        self.threads: ThreadBudget | None = None  # during fit, with the thread count fit started with

    # -------------------------------------------------------------- state

    def state(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "shuffle_gen": self.shuffle_gen.get_state(),
                "dropout_gen": self.dropout_gen.get_state(), "torch_rng": torch.get_rng_state(),
                "epoch": self.epoch, "best": self.best}

    def resume(self) -> None:
        """Continues from RUN/last.pt (RUN/previous.pt when last.pt is damaged, with a warning); the
        metrics log is cut back to the checkpoint's epoch."""
        if self.run_dir is None:
            raise ValueError("resume needs a run folder")
        # On the CPU: generator states must stay there; load_state_dict copies to the model's device.
        state = run.load_latest(self.run_dir, "cpu", self.model)
        run.remove_temporaries(self.run_dir)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if isinstance(self.scheduler, torch.optim.lr_scheduler.LambdaLR):  # the cosine of this run's epochs
            for group, base, rate in zip(self.optimizer.param_groups, self.scheduler.base_lrs, self.scheduler.lr_lambdas):
                group["lr"] = base * rate(self.scheduler.last_epoch)
        self.shuffle_gen.set_state(state["shuffle_gen"])
        self.dropout_gen.set_state(state["dropout_gen"])
        torch.set_rng_state(state["torch_rng"])
        self.epoch, self.best = state["epoch"], state["best"]
        self.log = [row for row in run.read_metrics(self.run_dir) if row["epoch"] <= self.epoch]

    # -------------------------------------------------------------- loop

    def fit(self) -> list[dict]:
        """Runs the remaining epochs, calling each callback's on_epoch(row) (process 0) after each;
        returns the metrics log."""
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.threads = ThreadBudget() if self.adapt_threads else None
        try:
            self._fit_epochs()
        finally:
            if self.threads is not None:
                self.threads.restore()
            self.threads = None
        return self.log

    def _fit_epochs(self) -> None:
        while self.epoch < self.config.epochs:
            start = time.perf_counter()
            train_terms, samples = self._train_epoch()
            seconds = time.perf_counter() - start
            if self.ranks.world > 1 and not self.config.sync_stats:
                average_buffers(self.model, self.ranks)  # one model on every rank for validation and saving
            self.epoch += 1
            self.scheduler.step()
            row = {"epoch": self.epoch, "lr": self.optimizer.param_groups[0]["lr"], "seconds": round(seconds, 3),
                   "samples_per_s": round(samples / seconds, 1), "precision": self.precision, "train": train_terms}
            row["best"] = True
            if self.val_split is not None:  # on every rank: one model, one result, no rank waits for a verdict
                row["val"] = self.validate(self.val_split)
                value = self._selection_value(row["val"])
                lower = LOWER_IS_BETTER[self.config.select]
                row["best"] = math.isfinite(value) and (
                    self.best is None or (value < self.best if lower else value > self.best))
                if row["best"]:
                    self.best = value
            self.log.append(row)
            if self.run_dir is not None and self.ranks.rank == 0:
                # last.pt goes last: a run killed before it resumes from the previous epoch and
                # rewrites best.pt and the metrics identically.
                state = self.state()
                if row["best"]:
                    run.save_checkpoint(state, self.run_dir / run.BEST, self.model)
                run.write_metrics(self.run_dir, self.log)
                run.save_checkpoint(state, self.run_dir / run.LAST, self.model, keep_previous=True)
            self.ranks.barrier()  # no rank reads or resumes past an unwritten checkpoint
            for callback in self._callbacks_with("on_epoch"):
                callback.on_epoch(row)

    def _callbacks_with(self, method: str) -> list:
        return [c for c in self.callbacks if hasattr(c, method)] if self.ranks.rank == 0 else []

    def _selection_value(self, val: dict) -> float:
        if self.config.select == "r1":
            return (val["x2y"]["r1"] + val["y2x"]["r1"]) / 2
        return val["total"] if self.config.select == "loss" else val["total_correlation"]

    def _train_epoch(self) -> tuple[dict, int]:
        model, split, cfg = self.model.train(), self.train_split, self.config
        steps = len(split) // cfg.batch_size
        device = split.device
        sums = torch.zeros(len(TERMS), dtype=torch.float64, device=device)
        first_bad = torch.full((), -1, dtype=torch.int64, device=device)
        bad_value = torch.zeros((), dtype=torch.float64, device=device)
        order = batches(len(split), cfg.batch_size, self.shuffle_gen if cfg.shuffle else None, device)
        on_step = [c.on_step for c in self._callbacks_with("on_step")]
        if self.threads is not None:
            self.threads.update()
        # disable=None: tqdm's own test, off where its stream (stderr) is not a terminal.
        bar = tqdm(total=steps * cfg.batch_size, unit="sample", unit_scale=True, leave=False,
                   desc=f"epoch {self.epoch + 1}/{cfg.epochs}", disable=None if self.progress else True)
        with bar:
            for b, index in enumerate(order):
                index = self.ranks.shard(index)
                x, y = split.rows(index)
                seed = torch.randint(0, 2**62, (), generator=self.dropout_gen)
                terms = self.step(x, y, seed)
                total = terms.total.detach().double()
                newly_bad = (first_bad < 0) & ~torch.isfinite(total)
                first_bad = torch.where(newly_bad, b, first_bad)
                bad_value = torch.where(newly_bad, total, bad_value)
                sums += torch.stack(tuple(terms)).detach().double()  # one stack and one cast, not eight
                if on_step:
                    detached = LossTerms(*(t.detach() for t in terms))
                    for call in on_step:
                        call(self.epoch * steps + b + 1, detached)
                bar.update(cfg.batch_size)
                if (b + 1) % CHECK_EVERY == 0 or b + 1 == steps:
                    self._stop_if_bad(*self.ranks.first_bad(first_bad, bad_value), steps)
                    if self.threads is not None:
                        self.threads.update()
                    bar.set_postfix(loss=f"{float(sums[0]) / (b + 1):.4g}")
        sums = self.ranks.average(sums)  # each rank's per-row terms are over its own rows
        return {name: float(v) / steps for name, v in zip(TERMS, sums.tolist())}, steps * cfg.batch_size

    def _eager_step(self, x, y, seed) -> LossTerms:
        """One optimiser update on the batch; returns its loss terms."""
        terms = self.criterion(self.model(x, y, seed=seed, first_row=self.first_row), x, y)
        self.optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        self.ranks.average_gradients(self.model.parameters())
        self.optimizer.step()
        return terms

    def _stop_if_bad(self, batch: int, value: float, steps: int) -> None:
        if batch < 0:
            return
        last = None if self.run_dir is None else self.run_dir / run.LAST
        kept = (f"the last good checkpoint is {last} (epoch {self.epoch})" if last is not None and last.exists()
                else "no checkpoint was written")
        raise NonFiniteLoss(f"loss is {value} at step {self.epoch * steps + batch + 1} (epoch {self.epoch + 1}, "
                            f"batch {batch + 1} of {steps}); training stopped, {kept}. Try a lower train.lr.")

    # -------------------------------------------------------------- validation

    @torch.no_grad()
    def validate(self, split: Split) -> dict:
        """Every loss term (eval mode, averaged over batches of the training batch size), the total
        correlation, the CCA protocol (cca_correlation: the projection fitted on the representations of
        the first CCA_FIT_ROWS training rows, a cheap stand-in for all of them), the effective rank of
        the x representation and R@K of the split."""
        model, cfg = self.model, self.config
        was_training = model.training
        model.eval()
        sums, count = torch.zeros(len(TERMS), dtype=torch.float64), 0
        for index in split.chunks(cfg.batch_size):
            if len(index) < 2:  # batch statistics of the decorrelation need 2 rows
                continue
            x, y = split.rows(index)
            terms = self.criterion(model(x, y), x, y)
            sums += torch.stack([t.double().cpu() for t in terms]) * len(index)
            count += len(index)
        zx, zy = encode(model, split)
        fit = self.train_split
        projection = Projection.fit(*encode(model, fit, torch.arange(min(len(fit), CCA_FIT_ROWS), device=fit.device)))
        model.train(was_training)
        out = {name: float(v) / count for name, v in zip(TERMS, sums.tolist())}
        out["total_correlation"] = metrics.total_correlation(zx, zy)
        out["cca_correlation"] = metrics.total_correlation(projection.x(zx), projection.y(zy))
        out["effective_rank"] = metrics.effective_rank(zx)
        if not math.isfinite(out["total"]):
            out["total"] = float("inf")  # a diverged validation loss never wins selection
        return out | retrieval_of(split, zx, zy)
