"""A trained model on a data set: representations of a split and every metric of docs/method.md#evaluation."""
from __future__ import annotations

import torch
from torch import Tensor

from . import metrics
from .data import Dataset, Split


@torch.no_grad()
def encode(model, split: Split) -> tuple[Tensor, Tensor]:
    """Eval-mode representations (X channel on x, Y channel on y) of every row, in the split's order."""
    was_training = model.training
    model.eval()
    try:
        zx, zy = [], []
        for index in split.chunks():
            x, y = split.rows(index)
            zx.append(model.encode_x(x))
            zy.append(model.encode_y(y))
        return torch.cat(zx), torch.cat(zy)
    finally:
        model.train(was_training)


def retrieval_of(split: Split, zx: Tensor, zy: Tensor) -> dict:
    """R@K both ways with the split's grouping: the items' x rows against every y row."""
    items = split.item_rows()
    return metrics.retrieval(zx[items], zy, split.group)


def evaluate(model, data: Dataset, split: str = "test") -> dict:
    """total_correlation, cca_correlation (CCA fitted on the training representations, top k = the
    representation width), effective_rank (of the x representation; effective_rank_y of the y one),
    and x2y / y2x retrieval, on `split`."""
    zx, zy = encode(model, data.split(split))
    tx, ty = encode(model, data.train)
    out = {
        "split": split,
        "rows": len(zx),
        "dims": zx.shape[1],
        "total_correlation": metrics.total_correlation(zx, zy),
        "cca_correlation": metrics.cca_correlation(tx, ty, zx, zy),
        "effective_rank": metrics.effective_rank(zx),
        "effective_rank_y": metrics.effective_rank(zy),
    }
    return out | retrieval_of(data.split(split), zx, zy)


def linear_cca_baseline(data: Dataset, k: int, split: str = "test") -> dict:
    """The same metrics for linear CCA on the raw (preprocessed) views, k canonical dimensions:
    the baseline every 2-Way Net result should be read against."""
    def views(s: Split):
        parts = [s.rows(i) for i in s.chunks()]
        return torch.cat([p[0] for p in parts]).double(), torch.cat([p[1] for p in parts]).double()

    tx, ty = views(data.train)
    ex, ey = views(data.split(split))
    k = min(k, tx.shape[1], ty.shape[1])
    mean_x, wx, mean_y, wy, _ = metrics.linear_cca(tx, ty, k)
    zx = torch.from_numpy((ex.cpu().numpy() - mean_x) @ wx)
    zy = torch.from_numpy((ey.cpu().numpy() - mean_y) @ wy)
    out = {
        "split": split,
        "rows": len(zx),
        "dims": k,
        "total_correlation": metrics.total_correlation(zx, zy),
        "cca_correlation": metrics.total_correlation(zx, zy),  # already the CCA protocol
        "effective_rank": metrics.effective_rank(zx),
        "effective_rank_y": metrics.effective_rank(zy),
    }
    return out | retrieval_of(data.split(split), zx.to(ex.device), zy.to(ex.device))
