"""Cross-view retrieval ranks, computed tile by tile: no N x M similarity matrix in memory, no sort."""
from __future__ import annotations

import torch
from torch import Tensor

TILE = 1024


def correlation_normalise(a: Tensor) -> Tensor:
    """Rows centred and scaled to unit norm, so a dot product is the Pearson correlation of two rows."""
    centred = a - a.mean(1, keepdim=True)
    return centred / centred.norm(dim=1, keepdim=True).clamp_min(torch.finfo(a.dtype).tiny)


def _check(a: Tensor, b: Tensor, group: Tensor | None) -> Tensor:
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b must be (n, d) and (m, d) with the same d, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[0] == 0 or b.shape[0] == 0:
        raise ValueError("a and b must not be empty")
    if group is None:
        if a.shape[0] != b.shape[0]:
            raise ValueError(f"without group, a and b must have the same number of rows, got {a.shape[0]} and {b.shape[0]}")
        return torch.arange(a.shape[0], device=b.device)
    group = torch.as_tensor(group, device=b.device)
    if group.dtype != torch.int64 or group.shape != (b.shape[0],):
        raise ValueError(f"group must be an int64 tensor of shape ({b.shape[0]},), got {group.dtype} {tuple(group.shape)}")
    if group.min() < 0 or group.max() >= a.shape[0]:
        raise ValueError(f"group values must index rows of a (0..{a.shape[0] - 1})")
    if torch.bincount(group, minlength=a.shape[0]).min() == 0:
        raise ValueError("every row of a needs at least one matching row of b in group")
    return group


def _ranks(queries: Tensor, candidates: Tensor, true_of_candidate: Tensor, query_owns: bool) -> Tensor:
    """Rank of each query's best true candidate: 1 + the non-matching candidates scoring at least as
    high (ties count against the query)."""
    n = queries.shape[0]
    ranks = torch.empty(n, dtype=torch.int64, device=queries.device)
    for start in range(0, n, TILE):
        rows = torch.arange(start, min(n, start + TILE), device=queries.device)
        scores = queries[rows] @ candidates.T
        if query_owns:  # candidate j matches query i iff true_of_candidate[j] == i
            match = true_of_candidate.unsqueeze(0) == rows.unsqueeze(1)
        else:  # query j matches candidate true_of_candidate[j]
            match = torch.zeros_like(scores, dtype=torch.bool)
            match[torch.arange(len(rows)), true_of_candidate[rows]] = True
        best = scores.masked_fill(~match, float("-inf")).amax(1, keepdim=True)
        ranks[rows] = 1 + ((scores >= best) & ~match).sum(1)
    return ranks


def retrieval_ranks(a: Tensor, b: Tensor, group: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """1-based ranks under correlation similarity, both directions.

    a: (n, d), b: (m, d); group: int64 (m,), the row of `a` that each row of `b` belongs to (None: m == n
    and row i pairs with row i). Returns (ranks_a2b (n,), ranks_b2a (m,)): for each `a` row the rank of
    its best matching `b` row among all m, for each `b` row the rank of its `a` row among all n.
    Ties count against the query: rank = 1 + #non-matching candidates scoring >= the best match.
    """
    group = _check(a, b, group)
    a_n, b_n = correlation_normalise(a), correlation_normalise(b)
    return _ranks(a_n, b_n, group, query_owns=True), _ranks(b_n, a_n, group, query_owns=False)
