"""Typed wrappers over torch.ops.twoway_fast.*, with their fake (shape-only) kernels and autograd.

Importing this module requires the compiled extension (twoway_fast._C)."""
from __future__ import annotations

import torch
from torch import Tensor

from ._extension import EXTENSION, WHY_NOT

if EXTENSION is None:
    raise ImportError(WHY_NOT)


def hidden_block(z: Tensor, gamma: Tensor, beta: Tensor, rng_state: Tensor, p: float, leak: float, eps: float,
                 act_first: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Training-mode hidden block: BN (batch statistics) and LeakyReLU in the preset's order, then the
    tied dropout of rng_state = int64 (seed, offset, first_row). Returns (out, batch mean, batch std)."""
    return torch.ops.twoway_fast.hidden_block.default(z, gamma, beta, rng_state, p, leak, eps, act_first)


@torch.library.register_fake("twoway_fast::hidden_block")
def _(z, gamma, beta, rng_state, p, leak, eps, act_first):
    torch._check(z.dim() == 2, lambda: f"z must be 2-D, got {z.dim()}-D")
    width = z.shape[1]
    return z.new_empty(z.shape), z.new_empty(width), z.new_empty(width)


@torch.library.register_fake("twoway_fast::hidden_block_backward")
def _(grad_out, z, gamma, beta, mean, std, rng_state, p, leak, act_first):
    return z.new_empty(z.shape), gamma.new_empty(gamma.shape), beta.new_empty(beta.shape)


def _hidden_block_setup(ctx, inputs, output):
    z, gamma, beta, rng_state, p, leak, eps, act_first = inputs
    _, mean, std = output
    ctx.save_for_backward(z, gamma, beta, mean, std, rng_state)
    ctx.p, ctx.leak, ctx.act_first = p, leak, act_first
    ctx.mark_non_differentiable(mean, std)


def _hidden_block_backward(ctx, grad_out, _grad_mean, _grad_std):
    z, gamma, beta, mean, std, rng_state = ctx.saved_tensors
    grad_z, grad_gamma, grad_beta = torch.ops.twoway_fast.hidden_block_backward.default(
        grad_out, z, gamma, beta, mean, std, rng_state, ctx.p, ctx.leak, ctx.act_first)
    return grad_z, grad_gamma, grad_beta, None, None, None, None, None


torch.library.register_autograd("twoway_fast::hidden_block", _hidden_block_backward,
                                setup_context=_hidden_block_setup)


def retrieval_ranks(a: Tensor, b: Tensor, group: Tensor, tile_rows: int) -> tuple[Tensor, Tensor]:
    """Ranks under dot-product similarity of the rows as given (normalise them first for correlation),
    tile_rows queries per GEMM: (ranks_a2b (n,), ranks_b2a (m,)), int64, 1-based, ties against the query."""
    return torch.ops.twoway_fast.retrieval_ranks.default(a, b, group, tile_rows)


@torch.library.register_fake("twoway_fast::retrieval_ranks")
def _(a, b, group, tile_rows):
    return a.new_empty(a.shape[0], dtype=torch.int64), b.new_empty(b.shape[0], dtype=torch.int64)
