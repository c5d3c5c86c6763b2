"""Evaluation metrics (SPEC section 5)."""
from __future__ import annotations

import torch
from torch import Tensor

from .retrieval import retrieval_ranks  # noqa: F401  (re-exported: twoway_fast.metrics.retrieval_ranks)


def total_correlation(a: Tensor, b: Tensor) -> float:
    """Sum over dimensions of the Pearson correlation between a[:, i] and b[:, i] (paired), float64."""
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(f"a and b must be two (n, k) matrices of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    a = a.double() - a.double().mean(0)
    b = b.double() - b.double().mean(0)
    denom = (a.norm(dim=0) * b.norm(dim=0)).clamp_min(torch.finfo(torch.float64).tiny)
    return float(((a * b).sum(0) / denom).sum())
