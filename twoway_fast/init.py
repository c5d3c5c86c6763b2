"""Parameter initialisation of a 2-Way Net (as torch.nn.init, for its tied and locally dense weights)."""
from __future__ import annotations

import math

import torch
from torch import Tensor


def glorot_uniform_(weight: Tensor) -> Tensor:
    """Glorot/Xavier uniform, per block for a locally dense layer (each block is a dense map)."""
    fan_out, fan_in = weight.shape[-2], weight.shape[-1]
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    with torch.no_grad():
        return weight.uniform_(-bound, bound)
