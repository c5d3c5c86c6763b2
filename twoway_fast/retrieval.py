"""Cross-view retrieval ranks, computed tile by tile: no N x M similarity matrix in memory, no sort.

The fused op (csrc/retrieval_ranks.h, CPU and CUDA) does the work where the extension has a kernel for
the device; `plain_ranks` is the plain-PyTorch version of the same rule, the fallback elsewhere."""
from __future__ import annotations

import torch
from torch import Tensor

from ._extension import has_kernel

# Rows of `a` per GEMM block: the block holds tile_rows x m scores. Large enough for an efficient
# GEMM, small enough that the block stays a small multiple of the inputs.
TILE_ROWS = {"cpu": 512, "cuda": 4096}
PLAIN_TILE_ROWS = 1024


def correlation_normalise(a: Tensor) -> Tensor:
    """Rows centred and scaled to unit norm, so a dot product is the Pearson correlation of two rows.
    Each row is first scaled by a power of two that brings its largest magnitude into [0.5, 1): exact
    (the same bits as without it), and no sum of squares or mean can overflow for finite inputs."""
    _, exponent = torch.frexp(a.abs().amax(1, keepdim=True))  # 0 for a zero (or NaN/Inf) row: unscaled
    a = torch.ldexp(a, -exponent.to(a.dtype))
    centred = a - a.mean(1, keepdim=True)
    return centred / centred.norm(dim=1, keepdim=True).clamp_min(torch.finfo(a.dtype).tiny)


def _check(a: Tensor, b: Tensor, group: Tensor | None) -> Tensor:
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b must be (n, d) and (m, d) with the same d, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[0] == 0 or b.shape[0] == 0:
        raise ValueError("a and b must not be empty")
    if a.dtype != b.dtype or a.device != b.device or not a.is_floating_point():
        raise ValueError(f"a and b must be floating point of one dtype on one device, got {a.dtype} on {a.device} "
                         f"and {b.dtype} on {b.device}")
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


def _plain_one_way(queries: Tensor, candidates: Tensor, true_of_candidate: Tensor, query_owns: bool) -> Tensor:
    # Scores in float64, like the fused op's (csrc/retrieval_ranks.h). Identical candidates must tie,
    # and one GEMM may round identical columns differently: score each distinct candidate row once.
    queries = queries.double()
    distinct, inverse = torch.unique(candidates.double(), dim=0, return_inverse=True)
    n = queries.shape[0]
    ranks = torch.empty(n, dtype=torch.int64, device=queries.device)
    for start in range(0, n, PLAIN_TILE_ROWS):
        rows = torch.arange(start, min(n, start + PLAIN_TILE_ROWS), device=queries.device)
        scores = (queries[rows] @ distinct.T)[:, inverse]
        if query_owns:  # candidate j matches query i iff true_of_candidate[j] == i
            match = true_of_candidate.unsqueeze(0) == rows.unsqueeze(1)
        else:  # query j matches candidate true_of_candidate[j]
            match = torch.zeros_like(scores, dtype=torch.bool)
            match[torch.arange(len(rows)), true_of_candidate[rows]] = True
        best = scores.masked_fill(~match, float("-inf")).amax(1, keepdim=True)  # NaN propagates
        ranks[rows] = 1 + (~(scores < best) & ~match).sum(1)
    return ranks


def plain_ranks(a: Tensor, b: Tensor, group: Tensor) -> tuple[Tensor, Tensor]:
    """The fused op's rule in plain PyTorch, on rows as given (dot-product similarity), for devices
    without a kernel. Scores in float64; slower, and O(tile x m) memory several times over."""
    return _plain_one_way(a, b, group, query_owns=True), _plain_one_way(b, a, group, query_owns=False)


def retrieval_ranks(a: Tensor, b: Tensor, group: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """1-based ranks under correlation similarity, both directions.

    a: (n, d), b: (m, d); group: int64 (m,), the row of `a` that each row of `b` belongs to (None: m == n
    and row i pairs with row i). Returns (ranks_a2b (n,), ranks_b2a (m,)): for each `a` row the rank of
    its best matching `b` row among all m, for each `b` row the rank of its `a` row among all n.
    Ties count against the query: rank = 1 + #non-matching candidates scoring >= the best match; a NaN
    score counts against the query too. Scores are float64 dot products of the normalised rows (the
    float32 GEMM only settles the clear cases, see csrc/retrieval_ranks.h), so identical rows always tie
    and ranks do not depend on tiling or matmul precision. Half and bfloat16 inputs are normalised in
    float32.
    """
    group = _check(a, b, group)
    if a.dtype in (torch.float16, torch.bfloat16):
        a, b = a.float(), b.float()
    a_n, b_n = correlation_normalise(a), correlation_normalise(b)
    if has_kernel("retrieval_ranks", a.device.type):
        from . import ops  # registers the fake kernel on first use

        return ops.retrieval_ranks(a_n, b_n, group, TILE_ROWS.get(a.device.type, TILE_ROWS["cuda"]))
    return plain_ranks(a_n, b_n, group)
