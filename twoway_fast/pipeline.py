"""A whole run, as the command line and the demo take it: train, keep the best checkpoint, evaluate it on
test, write the plots (train_run); and the table of results they print (format_results)."""
from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Sequence

from . import callbacks, distributed, plots, presets, run
from . import data as data_mod
from .evaluation import encode, evaluate, fit_projection
from .projection import FILE as PROJECTION
from .train import Trainer, TrainConfig, build


def format_results(results: dict[str, dict]) -> str:
    """One line per method: the three correlation views and retrieval both ways."""
    head = (f"{'':<14}{'total corr':>11}{'CCA prot.':>10}{'eff. rank':>10}   "
            f"{'R@1 x2y/y2x':>12}{'R@5':>12}{'R@10':>12}{'medr':>10}")
    lines = [head]
    for name, r in results.items():
        pair = {k: f"{r['x2y'][k]:.0f}/{r['y2x'][k]:.0f}" for k in ("r1", "r5", "r10", "medr")}
        lines.append(f"{name:<14}{r['total_correlation']:>11.2f}{r['cca_correlation']:>10.2f}"
                     f"{r['effective_rank']:>10.1f}   {pair['r1']:>12}{pair['r5']:>12}{pair['r10']:>12}"
                     f"{pair['medr']:>10}")
        if "projected" in r and r["projected"] != {"x2y": r["x2y"], "y2x": r["y2x"]}:
            p = {k: f"{r['projected']['x2y'][k]:.0f}/{r['projected']['y2x'][k]:.0f}" for k in ("r1", "r5", "r10", "medr")}
            lines.append(f"{'  CCA-projected':<45}{p['r1']:>12}{p['r5']:>12}{p['r10']:>12}{p['medr']:>10}")
    first = next(iter(results.values()))
    lines.append(f"({first['dims']} dimensions, {first['rows']} {first['split']} rows; R@K in %; "
                 f"CCA-projected: retrieval on the canonical directions fitted on the training split)")
    return "\n".join(lines)


def train_run(preset: presets.Preset, source: str, out: str | Path, device: str, resume: bool = False,
              progress: bool = True, overwrite: bool = False, log: Sequence[str] = ()) -> dict | None:
    """Trains, keeps the best checkpoint, evaluates it on test, writes the plots; returns the results.
    Launched by torchrun, every rank trains and rank 0 alone evaluates and writes (the others return None).
    Rank 0 holds the run folder's lock throughout (run.claim): a folder another training writes to, or
    that holds another run (unless resume or overwrite), is refused before any data is read.
    log: writers besides metrics.jsonl, "csv" (RUN/metrics.csv) and "tensorboard" (RUN/tensorboard)."""
    out = Path(out)
    unknown = sorted(set(log) - set(callbacks.WRITERS))
    if unknown:
        raise ValueError(f"log may name {', '.join(callbacks.WRITERS)}; got {unknown}")
    if "tensorboard" in log:
        callbacks.tensorboard_writer()  # its package missing: refused before any work
    device = distributed.init_from_env(device)
    rank = distributed.Ranks.current().rank
    config = TrainConfig(**preset.train)
    outputs = (*plots.FILES, PROJECTION, callbacks.CSV, callbacks.TENSORBOARD)
    with run.claim(out, resume, overwrite, outputs) if rank == 0 else contextlib.nullcontext():
        return _train_claimed(preset, source, out, device, resume, progress, config, rank, log)


def _loggers(log: Sequence[str], out: Path, trainer: Trainer) -> list:
    """The writers `log` names, continuing the run's log where the trainer resumed."""
    loggers = [callbacks.EpochLines()]
    if "csv" in log:
        loggers.append(callbacks.CSVLogger(out / callbacks.CSV, trainer.log))
    if "tensorboard" in log:
        loggers.append(callbacks.TensorBoardLogger(out / callbacks.TENSORBOARD, trainer.epoch))
    return loggers


def _train_claimed(preset, source, out: Path, device, resume: bool, progress: bool, config: TrainConfig,
                   rank: int, log: Sequence[str]) -> dict | None:
    dataset = data_mod.load(source, data_mod.DataConfig(**preset.data), device)
    if resume:
        run.check_widths(source, dataset.dx, dataset.dy, out, run.read_config(out))
    model, criterion = build(preset, dataset.dx, dataset.dy, config.seed, device)
    trainer = Trainer(model, criterion, dataset.train, dataset.val, config, out, progress=progress and rank == 0)
    if rank == 0:
        run.check_space(out, model)
    if resume:
        trainer.resume()
        if rank == 0:
            print(f"resuming {out} after epoch {trainer.epoch}", file=sys.stderr)
    if rank == 0:  # on resume too: the values --resume may change (run.RESUMABLE) are recorded
        run.write_config(out, preset, source, dataset.dx, dataset.dy, config.seed)
        run.write_atomic(out / run.PREPROCESSING, dataset.preprocessing.to_bytes())
    if rank == 0:  # the projection belongs to the best checkpoint, which training replaces
        (out / PROJECTION).unlink(missing_ok=True)
    if rank == 0:
        trainer.callbacks += _loggers(log, out, trainer)
    try:
        trainer.fit()
    finally:
        for logger in trainer.callbacks:
            if hasattr(logger, "close"):
                logger.close()
    if rank != 0:
        return None
    model.load_state_dict(run.load_checkpoint(out / run.BEST, device, model)["model"])
    projection = fit_projection(model, dataset)
    run.write_atomic(out / PROJECTION, projection.to_bytes())
    results = evaluate(model, dataset, "test", projection)
    zx, zy = encode(model, dataset.test)
    plots.write_all(out, model, dataset, trainer.log, zx, zy, projection, criterion.coefficients)
    run.write_atomic(out / run.EVAL, (json.dumps(results, indent=2) + "\n").encode())
    return results
