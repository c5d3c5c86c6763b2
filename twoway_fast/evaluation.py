"""A trained model on a data set: representations of a split and every metric of docs/method.md#evaluation."""
from __future__ import annotations

import torch
from torch import Tensor

from . import metrics
from .data import CHUNK, Dataset, Split
from .projection import Projection


@torch.no_grad()
def encode(model, split: Split, rows: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Eval-mode representations (X channel on x, Y channel on y) of every row, in the split's order
    (or of the rows `rows`, an index tensor)."""
    was_training = model.training
    model.eval()
    try:
        zx, zy = [], []
        chunks = split.chunks() if rows is None else rows.split(CHUNK)
        for index in chunks:
            x, y = split.rows(index)
            zx.append(model.encode_x(x, prepared=True))
            zy.append(model.encode_y(y, prepared=True))
        return torch.cat(zx), torch.cat(zy)
    finally:
        model.train(was_training)


def retrieval_of(split: Split, zx: Tensor, zy: Tensor) -> dict:
    """R@K both ways with the split's grouping: the items' x rows against every y row."""
    items = split.item_rows()
    return metrics.retrieval(zx[items], zy, split.group)


def fit_projection(model, data: Dataset) -> Projection:
    """The CCA projection of the model's representations, fitted on the training split."""
    return Projection.fit(*encode(model, data.train))


def evaluate(model, data: Dataset, split: str = "test", projection: Projection | None = None) -> dict:
    """total_correlation, cca_correlation (the CCA protocol: the canonical correlations on `split` of
    the projection fitted on the training representations, every dimension kept), effective_rank (of the
    x representation; effective_rank_y of the y one), x2y / y2x retrieval on the raw representations and
    "projected": x2y / y2x on the CCA-projected ones. `projection`: a saved one (a run's
    projection.npz), else fitted on data.train."""
    zx, zy = encode(model, data.split(split))
    projection = fit_projection(model, data) if projection is None else projection
    px, py = projection.x(zx), projection.y(zy)
    out = {
        "split": split,
        "rows": len(zx),
        "dims": zx.shape[1],
        "total_correlation": metrics.total_correlation(zx, zy),
        "cca_correlation": metrics.total_correlation(px, py),
        "effective_rank": metrics.effective_rank(zx),
        "effective_rank_y": metrics.effective_rank(zy),
    }
    return out | retrieval_of(data.split(split), zx, zy) | {"projected": retrieval_of(data.split(split), px, py)}


def views(split: Split) -> tuple[Tensor, Tensor]:
    """Both (preprocessed) views of every row of the split, float64."""
    parts = [split.rows(i) for i in split.chunks()]
    return torch.cat([p[0] for p in parts]).double(), torch.cat([p[1] for p in parts]).double()


def linear_cca_on(data: Dataset, k: int, split: str = "test") -> tuple[Tensor, Tensor]:
    """Linear CCA of the (preprocessed) views fitted on the training split, k canonical dimensions
    (at most the smaller view width), applied to `split`: its projected x and y views."""
    tx, ty = views(data.train)
    ex, ey = views(data.split(split))
    projection = Projection(*metrics.linear_cca(tx, ty, min(k, tx.shape[1], ty.shape[1])))
    return projection.x(ex), projection.y(ey)


def linear_cca_baseline(data: Dataset, k: int, split: str = "test") -> dict:
    """The same metrics for linear CCA on the raw (preprocessed) views, k canonical dimensions:
    the baseline every 2-Way Net result should be read against."""
    zx, zy = linear_cca_on(data, k, split)
    k = zx.shape[1]
    out = {
        "split": split,
        "rows": len(zx),
        "dims": k,
        "total_correlation": metrics.total_correlation(zx, zy),
        "cca_correlation": metrics.total_correlation(zx, zy),  # already the CCA protocol
        "effective_rank": metrics.effective_rank(zx),
        "effective_rank_y": metrics.effective_rank(zy),
    }
    device = data.split(split).device
    ranks = retrieval_of(data.split(split), zx.to(device), zy.to(device))
    return out | ranks | {"projected": ranks}  # already projected
