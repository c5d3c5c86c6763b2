"""The three ways of ranking that bench_retrieval_ranks.py compares, and their inputs.

- fused:  twoway_fast.metrics.retrieval_ranks (tiled GEMM + counting, no N x M matrix, no sort)
- torch:  torch mm -> full N x M similarity matrix, argsort of every row and every column
- scipy:  what the original evaluation does: scipy cdist(correlation) in float64 -> argsort
All three return (ranks_a2b, ranks_b2a), 1-based.
"""
import numpy as np
import torch
from scipy.spatial.distance import cdist

from twoway_fast import metrics
from twoway_fast.retrieval import correlation_normalise

CAPTIONS_PER_IMAGE = 5


def make_data(n: int, m: int, d: int, seed: int = 0):
    """n images, m = 5n captions (caption j belongs to image j // 5), each caption a noisy copy of its
    image: correlation about 0.1 against about 0.03 for strangers, so ranks spread over the range."""
    gen = torch.Generator().manual_seed(seed)
    group = torch.arange(m) // (m // n)
    a = torch.randn(n, d, generator=gen)
    b = a[group] + 10 * torch.randn(m, d, generator=gen)
    return a, b, group


def fused(a, b, group):
    return metrics.retrieval_ranks(a, b, group)


def torch_argsort(a, b, group):
    an, bn = correlation_normalise(a), correlation_normalise(b)
    scores = an @ bn.T
    order = scores.argsort(dim=1, descending=True)
    ranks_a2b = (group[order] == torch.arange(len(a)).unsqueeze(1)).to(torch.uint8).argmax(1) + 1
    order = scores.T.argsort(dim=1, descending=True)
    ranks_b2a = (order == group.unsqueeze(1)).to(torch.uint8).argmax(1) + 1
    return ranks_a2b, ranks_b2a


def scipy_argsort(a, b, group):
    """a, b: float64 numpy arrays, group: numpy int64."""
    dist = cdist(a, b, "correlation")
    order = np.argsort(dist, axis=1)
    ranks_a2b = np.argmax(group[order] == np.arange(len(a))[:, None], axis=1) + 1
    order = np.argsort(dist.T, axis=1)
    ranks_b2a = np.argmax(order == group[:, None], axis=1) + 1
    return ranks_a2b, ranks_b2a


def inputs_for(method: str, a, b, group):
    """scipy gets float64 numpy arrays, as the original evaluation used."""
    if method == "scipy":
        return a.double().numpy(), b.double().numpy(), group.numpy()
    return a, b, group


METHODS = {"fused": fused, "torch": torch_argsort, "scipy": scipy_argsort}
