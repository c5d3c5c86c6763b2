"""The tied dropout's random state: one (seed, offset, first_row) per hidden position, passed to the ops
as a tensor (the masks themselves: csrc/philox.h, and reference.dropout_mask in plain PyTorch)."""
from __future__ import annotations

import torch
from torch import Tensor


def rng_states(seed: Tensor, positions: int, first_row: int = 0) -> Tensor:
    """One (seed, offset, first_row) per hidden position; the two channels share them (tied dropout).
    first_row: the global index of the batch's first row (a rank's slice of a larger batch)."""
    states = torch.zeros(positions, 3, dtype=torch.int64, device=seed.device)
    states[:, 0] = seed
    states[:, 1] = torch.arange(positions, device=seed.device)
    states[:, 2] = first_row
    return states
