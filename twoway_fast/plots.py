"""Plots of a run, saved as PNG files in the run folder. Figures are built with matplotlib's object API
(no pyplot), so no display or backend choice is involved. Each names its split and labels every axis.

    loss.png              the weighted loss terms per epoch, stacked, training beside validation
    validation.png        validation R@1, CCA protocol (with the paired correlation) and effective rank per epoch
    spectrum.png          test canonical correlations, sorted, against linear CCA's on the same views
    recall.png            test R@K against K, both directions, against linear CCA's
    cross_correlation.png every x dimension against every y dimension, test split
    reconstructions.png   test images: each half from the other (image halves only)
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from . import metrics
from .data import Dataset
from .evaluation import linear_cca_on
from .loss_terms import COEFFICIENT_OF
from .retrieval import retrieval_ranks
from .run import write_atomic
from .train import TERMS

LOSS_PNG, VALIDATION_PNG, SPECTRUM_PNG = "loss.png", "validation.png", "spectrum.png"
RECALL_PNG, CROSS_PNG, RECON_PNG = "recall.png", "cross_correlation.png", "reconstructions.png"
FILES = (LOSS_PNG, VALIDATION_PNG, SPECTRUM_PNG, RECALL_PNG, CROSS_PNG, RECON_PNG)
SEAM = (0.85, 0.1, 0.1)  # the line between a real half and a reconstructed one


def _save(fig: Figure, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    write_atomic(path, buffer.getvalue())


def plot_losses(log: list[dict], coefficients: dict[str, float], path: Path) -> None:
    """The loss as it is minimised: each term times its coefficient (those weighted 0 left out), stacked, so
    the top edge is the total; a term below 0 (the uniformity's log) stacked down from 0 instead, the total
    then the top edge less that band's depth; training (mean over the epoch's steps, in training mode) beside
    validation (eval mode)."""
    epochs = [row["epoch"] for row in log]
    terms = [t for t in TERMS[1:] if coefficients[COEFFICIENT_OF[t]] != 0]  # the terms that weigh in
    fig = Figure(figsize=(12, 4.8), layout="constrained")
    panels = [("train", "training split: mean over each epoch's steps\n(training mode: dropout, batch statistics)")]
    if all("val" in row for row in log):
        panels.append(("val", "validation split: after each epoch\n(eval mode: running statistics, no dropout)"))
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    for ax, (part, title) in zip(axes, panels):
        weighted = [[coefficients[COEFFICIENT_OF[t]] * row[part][t] for row in log] for t in terms]
        labels = [f"{COEFFICIENT_OF[t]} x {t} ({coefficients[COEFFICIENT_OF[t]]:.3g})" for t in terms]
        colors = [f"C{i}" for i in range(len(terms))]
        below = [i for i, w in enumerate(weighted) if max(w) < 0]
        # matplotlib stacks every band on the previous one: the terms below 0 go down from 0 on their own
        for group in (below, [i for i in range(len(terms)) if i not in below]):
            if group:
                ax.stackplot(epochs, [weighted[i] for i in group], labels=[labels[i] for i in group],
                             colors=[colors[i] for i in group], alpha=0.85)
        ax.plot(epochs, [row[part]["total"] for row in log], color="black", lw=1, ls="--", label="total")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("weighted loss (coefficient x term)")
        ax.yaxis.set_tick_params(labelleft=True)
    axes[-1].legend(fontsize=8, loc="upper right")
    _save(fig, path)


def plot_validation(log: list[dict], path: Path) -> None:
    """The validation metrics per epoch; the best epoch (by the run's train.select) marked."""
    rows = [row for row in log if "val" in row]
    epochs = [row["epoch"] for row in rows]
    best = [row["epoch"] for row in rows if row["best"]]
    fig = Figure(figsize=(13, 4), layout="constrained")
    axes = fig.subplots(1, 3)
    axes[0].plot(epochs, [r["val"]["x2y"]["r1"] for r in rows], marker=".", label="x -> y")
    axes[0].plot(epochs, [r["val"]["y2x"]["r1"] for r in rows], marker=".", label="y -> x")
    axes[0].set_ylabel("R@1 (% of queries)")
    axes[0].set_title("retrieval")
    axes[1].plot(epochs, [r["val"]["cca_correlation"] for r in rows], marker=".", label="CCA protocol")
    axes[1].plot(epochs, [r["val"]["total_correlation"] for r in rows], marker=".", ls="--",
                 label="paired (rewards collapse)")
    axes[1].set_ylabel("total correlation (sum over dimensions)")
    axes[1].set_title("correlation")
    axes[2].plot(epochs, [r["val"]["effective_rank"] for r in rows], marker=".", label="x representation")
    axes[2].set_ylabel("effective rank (dimensions)")
    axes[2].set_title("effective rank")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if best:
            ax.axvline(best[-1], color="grey", ls=":", label=f"best epoch ({best[-1]})")
        ax.legend(fontsize=8)
    fig.suptitle("validation split, after each epoch")
    _save(fig, path)


def plot_spectrum(zx, zy, projection, linear: tuple, split: str, path: Path) -> None:
    """Canonical correlations on `split`, largest first: the 2-Way Net's representations projected by
    `projection` (the CCA protocol), their raw dimensions' paired correlations for contrast, and linear
    CCA on the views themselves (`linear`: its projected x and y on `split`)."""
    protocol = np.sort(metrics.correlation_per_dimension(projection.x(zx), projection.y(zy)))[::-1]
    paired = np.sort(metrics.correlation_per_dimension(zx, zy))[::-1]
    cca = np.sort(metrics.correlation_per_dimension(*linear))[::-1]
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(np.arange(1, len(protocol) + 1), protocol, marker=".", label=f"2-Way Net, CCA protocol (sum {protocol.sum():.1f})")
    ax.plot(np.arange(1, len(paired) + 1), paired, ls="--",
            label=f"2-Way Net, raw dimensions paired (sum {paired.sum():.1f}; rewards collapse)")
    ax.plot(np.arange(1, len(cca) + 1), cca, marker=".", label=f"linear CCA on the views (sum {cca.sum():.1f})")
    ax.set_ylim(min(0.0, paired.min(), protocol.min()), 1.0)
    ax.set_xlabel("canonical direction (sorted, largest correlation first)")
    ax.set_ylabel("correlation of x and y")
    ax.set_title(f"{split} split: correlation spectrum; effective rank of the 2-Way Net's x code "
                 f"{metrics.effective_rank(zx):.1f} of {zx.shape[1]}", fontsize=10)
    ax.legend(fontsize=8)
    _save(fig, path)


def _recall_curve(ranks: torch.Tensor, ks: np.ndarray) -> np.ndarray:
    r = ranks.detach().cpu().numpy()
    return np.array([(r <= k).mean() * 100 for k in ks])


def plot_recall(curves: dict[str, tuple], rows: int, split: str, path: Path) -> None:
    """R@K against K; `curves`: {method: (x2y ranks, y2x ranks)}."""
    ks = np.arange(1, min(100, rows) + 1)
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for i, (name, (x2y, y2x)) in enumerate(curves.items()):
        color = f"C{i}"
        ax.plot(ks, _recall_curve(x2y, ks), color=color, label=f"{name}, x -> y")
        ax.plot(ks, _recall_curve(y2x, ks), color=color, ls="--", label=f"{name}, y -> x")
    ax.set_xlabel("K (rank at which the true partner counts as found)")
    ax.set_ylabel("R@K (% of queries)")
    ax.set_title(f"{split} split: retrieval among {rows} rows (correlation similarity)", fontsize=10)
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_cross_correlation(zx, zy, split: str, path: Path) -> None:
    """Correlation of every x dimension with every y dimension: a good representation is diagonal;
    a collapsed one shows the same strong value everywhere."""
    fig = Figure(figsize=(6, 5), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(metrics.cross_correlation(zx, zy), cmap="RdBu_r", vmin=-1, vmax=1)
    fig.colorbar(image, ax=ax, label="Pearson correlation")
    ax.set_xlabel("y representation dimension")
    ax.set_ylabel("x representation dimension")
    ax.set_title(f"{split} split: x code against y code", fontsize=10)
    _save(fig, path)


def _image(half: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A flattened column-major half back to (rows, cols)."""
    return half.reshape(shape[1], shape[0]).T


def _contrast(half: np.ndarray) -> np.ndarray:
    """One half as RGB, stretched over its own range (a reconstruction lives on another scale than the
    real half beside it; one scale for both would flatten one of them to grey)."""
    low, high = half.min(), half.max()
    grey = (half - low) / (high - low) if high > low else np.zeros_like(half)
    return np.repeat(grey[:, :, None], 3, axis=2)


def _tile(left: np.ndarray, right: np.ndarray, seam: tuple[float, float, float] | None) -> np.ndarray:
    """Two halves side by side, with a one-pixel seam between them (coloured where one half is
    reconstructed)."""
    line = np.ones((left.shape[0], 1, 3)) * (seam if seam is not None else (1.0, 1.0, 1.0))
    return np.concatenate([_contrast(left), line, _contrast(right)], axis=1)


@torch.no_grad()
def plot_reconstructions(model, data: Dataset, path: Path, count: int = 8) -> None:
    """For test images, three rows: the original; the left half beside the right half reconstructed
    from it; the left half reconstructed from the right half beside the right half."""
    split = data.test
    x, y = split.rows(torch.arange(min(count, len(split)), device=split.device))
    model.eval()
    out = model(x, y)
    shape = data.half_shape
    rows = []
    for left, right, seam in ((x, y, None), (x, out.y_hat, SEAM), (out.x_hat, y, SEAM)):
        tiles = [_tile(_image(left[c].cpu().numpy(), shape), _image(right[c].cpu().numpy(), shape), seam)
                 for c in range(len(x))]
        gap = np.ones((shape[0], 2, 3))  # white between images
        rows.append(np.concatenate([t for tile in tiles for t in (tile, gap)], axis=1))
    gap = np.ones((2, rows[0].shape[1], 3))
    mosaic = np.concatenate([rows[0], gap, rows[1], gap, rows[2]], axis=0)
    fig = Figure(figsize=(1.3 * len(x) + 2, 4.2), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(mosaic, interpolation="nearest")
    h = shape[0] + 2
    ax.set_yticks([h * 0.5, h * 1.5, h * 2.5], ["original", "x | y from x", "x from y | y"])
    ax.set_xticks([shape[1] + 0.5 + i * (2 * shape[1] + 3) for i in range(len(x))], [str(i) for i in range(len(x))])
    ax.set_xlabel("test image (each half stretched over its own range; red line: real half | reconstructed half)")
    ax.set_title("test split: each half reconstructed from the other", fontsize=10)
    _save(fig, path)


def write_all(run_dir: str | Path, model, data: Dataset, log: list[dict], zx, zy, projection,
              coefficients: dict[str, float]) -> list[Path]:
    """Every plot that applies; (zx, zy) are the test representations and `projection` the run's CCA
    projection of them, `coefficients` the loss's (TwoWayLoss.coefficients). Returns the files written."""
    run_dir = Path(run_dir)
    written = []
    if log:
        plot_losses(log, coefficients, run_dir / LOSS_PNG)
        written.append(run_dir / LOSS_PNG)
        if any("val" in row for row in log):
            plot_validation(log, run_dir / VALIDATION_PNG)
            written.append(run_dir / VALIDATION_PNG)
    linear = linear_cca_on(data, zx.shape[1], "test")
    plot_spectrum(zx, zy, projection, linear, "test", run_dir / SPECTRUM_PNG)
    test = data.test
    items = test.item_rows()
    px, py = projection.x(zx), projection.y(zy)
    device = zx.device
    curves = {"2-Way Net": retrieval_ranks(zx[items], zy, test.group),
              "2-Way Net, CCA-projected": retrieval_ranks(px[items], py, test.group),
              "linear CCA": retrieval_ranks(linear[0].to(device)[items], linear[1].to(device), test.group)}
    plot_recall(curves, len(items), "test", run_dir / RECALL_PNG)
    plot_cross_correlation(zx, zy, "test", run_dir / CROSS_PNG)
    written += [run_dir / SPECTRUM_PNG, run_dir / RECALL_PNG, run_dir / CROSS_PNG]
    if data.half_shape is not None and not data.config.pca:  # image halves, still pixels
        plot_reconstructions(model, data, run_dir / RECON_PNG)
        written.append(run_dir / RECON_PNG)
    return written
