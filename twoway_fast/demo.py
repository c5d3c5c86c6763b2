"""`make demo`: a 2-Way Net on the two halves of scikit-learn's digits (embedded, no download), trained
on the CPU in about a minute, next to linear CCA on the same split."""
from __future__ import annotations

from pathlib import Path

import torch

from . import data as data_mod
from . import presets, run
from .evaluation import linear_cca_baseline
from .pipeline import format_results, train_run


def demo(out: str | Path = "runs/demo", device: str = "cpu", epochs: int | None = None,
         progress: bool = True) -> dict:
    # The digits model is too small to gain from threads, and extra threads make it crawl on a busy
    # machine (measured: 40 s with one thread, nearly 4 minutes with two on a shared 2-core box).
    if device == "cpu":
        torch.set_num_threads(1)
    overrides = [] if epochs is None else [f"train.epochs={epochs}"]
    preset = presets.resolve("digits", overrides=overrides)
    print(f"2-Way Net, preset 'digits' (hidden {preset.model['hidden']}), on the digits halves "
          f"(left 4 columns -> right 4 columns), {preset.train['epochs']} epochs on {device}")
    results = train_run(preset, "digits", out, device, progress=progress, overwrite=_earlier_demo(out))
    dataset = data_mod.load("digits", data_mod.DataConfig(**preset.data), device)
    baseline = linear_cca_baseline(dataset, results["dims"])
    print(format_results({"2-Way Net": results, "linear CCA": baseline}))
    print(f"plots and checkpoints in {out}")
    return {"twoway": results, "linear_cca": baseline}


def _earlier_demo(out: str | Path) -> bool:
    """Whether `out` holds a run on the embedded digits (a demo's, which a new demo replaces); another
    run there is refused, as for train."""
    try:
        return run.read_config(out)["data"] == "digits"
    except ValueError:
        return False
