"""Plots of a run, saved as PNG files in the run folder. Figures are built with matplotlib's object API
(no pyplot), so no display or backend choice is involved."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from . import metrics
from .data import Dataset
from .run import write_atomic
from .train import TERMS

LOSS_PNG, CORR_PNG, CROSS_PNG, RECON_PNG = "loss.png", "correlation.png", "cross_correlation.png", "reconstructions.png"
FILES = (LOSS_PNG, CORR_PNG, CROSS_PNG, RECON_PNG)


def _save(fig: Figure, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    write_atomic(path, buffer.getvalue())


def plot_losses(log: list[dict], path: Path) -> None:
    """Each loss term per epoch, training (mean over the epoch's steps) and validation."""
    fig = Figure(figsize=(12, 6), layout="constrained")
    epochs = [row["epoch"] for row in log]
    for i, term in enumerate(TERMS):
        ax = fig.add_subplot(2, 4, i + 1)
        ax.plot(epochs, [row["train"][term] for row in log], label="train")
        ax.plot(epochs, [row["val"][term] for row in log], label="validation")
        ax.set_title(term)
        ax.set_xlabel("epoch")
    fig.axes[0].legend()
    _save(fig, path)


def plot_correlation_per_dimension(zx, zy, path: Path) -> None:
    corr = metrics.correlation_per_dimension(zx, zy)
    fig = Figure(figsize=(8, 4), layout="constrained")
    ax = fig.add_subplot()
    ax.bar(np.arange(len(corr)), corr)
    ax.set_ylim(min(0.0, corr.min()), 1.0)
    ax.set_xlabel("representation dimension")
    ax.set_ylabel("Pearson correlation, x vs y")
    ax.set_title(f"total {corr.sum():.2f} of {len(corr)}; effective rank {metrics.effective_rank(zx):.1f}")
    _save(fig, path)


def plot_cross_correlation(zx, zy, path: Path) -> None:
    """Correlation of every x dimension with every y dimension: a good representation is diagonal;
    a collapsed one shows the same strong value everywhere."""
    fig = Figure(figsize=(6, 5), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(metrics.cross_correlation(zx, zy), cmap="RdBu_r", vmin=-1, vmax=1)
    fig.colorbar(image, ax=ax)
    ax.set_xlabel("y representation dimension")
    ax.set_ylabel("x representation dimension")
    _save(fig, path)


def _image(half: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A flattened column-major half back to (rows, cols)."""
    return half.reshape(shape[1], shape[0]).T


@torch.no_grad()
def plot_reconstructions(model, data: Dataset, path: Path, count: int = 8) -> None:
    """For test images, three rows: the original; the left half beside the right half reconstructed
    from it; the left half reconstructed from the right half beside the right half."""
    split = data.test
    x, y = split.rows(torch.arange(min(count, len(split)), device=split.device))
    model.eval()
    out = model(x, y)
    rows = []
    for left, right in ((x, y), (x, out.y_hat), (out.x_hat, y)):
        tiles = [np.hstack([_image(left[c].cpu().numpy(), data.half_shape),
                            _image(right[c].cpu().numpy(), data.half_shape)]) for c in range(len(x))]
        gap = np.full((data.half_shape[0], 1), np.nan)  # a blank column between images
        rows.append(np.hstack([t for tile in tiles for t in (tile, gap)]))
    gap = np.full((1, rows[0].shape[1]), np.nan)
    mosaic = np.vstack([rows[0], gap, rows[1], gap, rows[2]])
    fig = Figure(figsize=(1.2 * len(x), 4), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(mosaic, cmap="gray")
    h = data.half_shape[0] + 1
    ax.set_yticks([h * 0.5, h * 1.5, h * 2.5], ["original", "x | y from x", "x from y | y"])
    ax.set_xticks([])
    _save(fig, path)


def write_all(run_dir: str | Path, model, data: Dataset, log: list[dict], zx, zy) -> list[Path]:
    """Every plot that applies; (zx, zy) are the test representations. Returns the files written."""
    run_dir = Path(run_dir)
    written = []
    if log:
        plot_losses(log, run_dir / LOSS_PNG)
        written.append(run_dir / LOSS_PNG)
    plot_correlation_per_dimension(zx, zy, run_dir / CORR_PNG)
    plot_cross_correlation(zx, zy, run_dir / CROSS_PNG)
    written += [run_dir / CORR_PNG, run_dir / CROSS_PNG]
    if data.half_shape is not None and not data.config.pca:  # image halves, still pixels
        plot_reconstructions(model, data, run_dir / RECON_PNG)
        written.append(run_dir / RECON_PNG)
    return written
