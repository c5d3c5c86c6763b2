"""Typed wrappers over torch.ops.twoway_fast.*, with their fake (shape-only) kernels (every op's
autograd is in C++: csrc/autograd.cpp).

Importing this module requires the compiled extension (twoway_fast._C)."""
from __future__ import annotations

import torch
from torch import Tensor

from ._extension import EXTENSION, WHY_NOT
from .loss_terms import LossTerms

if EXTENSION is None:
    raise ImportError(WHY_NOT)


# ---------------------------------------------------------------- the fake kernels' argument checks
# The C++ kernels' checks (csrc/checks.h, csrc/twoway_net_checks.h, the per-op checks), made here too:
# a call with any argument on the meta device reaches the fake kernel, not the C++ one, and without
# them would return uninitialised memory as its result.

def _one_device(op: str, **named) -> None:
    """Every tensor argument (lists included, None skipped) on the device of the first."""
    first = None
    for name, value in named.items():
        items = list(enumerate(value)) if isinstance(value, (list, tuple)) else [(None, value)]
        for i, t in items:
            if t is None:
                continue
            label = name if i is None else f"{name}[{i}]"
            if first is None:
                first = (label, t.device)
            torch._check(t.device == first[1], lambda: f"{op}: {label} is on {t.device} but {first[0]} is on "
                                                       f"{first[1]}")


def _columns(op: str, **matrices) -> None:
    """2-D, with at least one column: the kernels divide by the column count."""
    for name, t in matrices.items():
        torch._check(t.dim() == 2, lambda: f"{op}: {name} must be a 2-D (batch, width) tensor, got shape "
                                           f"{tuple(t.shape)}")
        torch._check(t.shape[1] > 0, lambda: f"{op}: {name} must have at least one column, got shape "
                                             f"{tuple(t.shape)}")


def _net_args(op: str, x, y, weights, **others) -> None:
    _one_device(op, x=x, y=y, weights=weights, **others)
    _columns(op, x=x, y=y)
    for k, w in enumerate(weights):
        torch._check(w.dim() in (2, 3), lambda: f"{op}: weights[{k}] must be (out, in) or locally dense "
                                                f"(M, out/M, in/M), got shape {tuple(w.shape)}")
        torch._check(_weight_out(w) > 0, lambda: f"{op}: weights[{k}] must give at least one column, got shape "
                                                 f"{tuple(w.shape)}")


def hidden_block(z: Tensor, gamma: Tensor, beta: Tensor, rng_state: Tensor, p: float, leak: float, eps: float,
                 act_first: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Training-mode hidden block: BN (batch statistics) and LeakyReLU in the preset's order, then the
    tied dropout of rng_state = int64 (seed, offset, first_row). Returns (out, batch mean, batch std)."""
    return torch.ops.twoway_fast.hidden_block.default(z, gamma, beta, rng_state, p, leak, eps, act_first)


@torch.library.register_fake("twoway_fast::hidden_block")
def _(z, gamma, beta, rng_state, p, leak, eps, act_first):
    _one_device("hidden_block", z=z, gamma=gamma, beta=beta, rng_state=rng_state)
    _columns("hidden_block", z=z)
    width = z.shape[1]
    return z.new_empty(z.shape), z.new_empty(width), z.new_empty(width)


@torch.library.register_fake("twoway_fast::hidden_block_backward")
def _(grad_out, z, gamma, beta, mean, std, rng_state, p, leak, act_first):
    _one_device("hidden_block_backward", grad_out=grad_out, z=z, gamma=gamma, beta=beta, mean=mean, std=std,
                rng_state=rng_state)
    _columns("hidden_block_backward", z=z)
    return z.new_empty(z.shape), gamma.new_empty(gamma.shape), beta.new_empty(beta.shape)


def hidden_block_with_stats(z: Tensor, gamma: Tensor, beta: Tensor, mean: Tensor, std: Tensor, rng_state: Tensor,
                            p: float, leak: float, act_first: bool) -> Tensor:
    """The training-mode hidden block with the BN statistics (mean, std of the BN input) given, e.g. taken
    over the rows of every process (twoway_fast.backends.synced); differentiable in mean and std too."""
    return torch.ops.twoway_fast.hidden_block_with_stats.default(z, gamma, beta, mean, std, rng_state, p, leak,
                                                                 act_first)


@torch.library.register_fake("twoway_fast::hidden_block_with_stats")
def _(z, gamma, beta, mean, std, rng_state, p, leak, act_first):
    _one_device("hidden_block_with_stats", z=z, gamma=gamma, beta=beta, mean=mean, std=std, rng_state=rng_state)
    _columns("hidden_block_with_stats", z=z)
    return z.new_empty(z.shape)


@torch.library.register_fake("twoway_fast::hidden_block_with_stats_backward")
def _(grad_out, z, gamma, beta, mean, std, rng_state, p, leak, act_first):
    _one_device("hidden_block_with_stats_backward", grad_out=grad_out, z=z, gamma=gamma, beta=beta, mean=mean,
                std=std, rng_state=rng_state)
    _columns("hidden_block_with_stats_backward", z=z)
    return (z.new_empty(z.shape), mean.new_empty(mean.shape), std.new_empty(std.shape), gamma.new_empty(gamma.shape),
            beta.new_empty(beta.shape))


# ---------------------------------------------------------------- the network op (both channels)

def twoway_net(x: Tensor, y: Tensor, weights: list[Tensor], bias: list[Tensor], gamma: list[Tensor],
               beta: list[Tensor], rng_states: Tensor, p: list[float], repr_layer: int, leak: list[float],
               eps: float, act_first: bool):
    """Both channels of a 2-Way Net in training mode (list layouts in csrc/channel_layout.h).
    Returns (x_hat, y_hat, hx, hy, hx_pre, hy_pre, z, mean, std); mean and std are per (channel,
    position), X's first, and mean excludes the bias that batch norm cancels in bn_then_act order;
    they are float32 for half and bfloat16 activations (stats_dtype)."""
    return torch.ops.twoway_fast.twoway_net.default(x, y, weights, bias, gamma, beta, rng_states, p, repr_layer,
                                                    leak, eps, act_first)


def stats_dtype(activations: torch.dtype) -> torch.dtype:
    """The dtype of the batch statistics, loss terms and decorrelation matrices the ops return: float32
    for half and bfloat16 activations (the kernels accumulate in float32), else the activations' own."""
    return torch.float32 if activations in (torch.float16, torch.bfloat16) else activations


def _weight_out(w: Tensor) -> int:
    return w.shape[0] if w.dim() == 2 else w.shape[0] * w.shape[1]


@torch.library.register_fake("twoway_fast::twoway_net")
def _(x, y, weights, bias, gamma, beta, rng_states, p, repr_layer, leak, eps, act_first):
    _net_args("twoway_net", x, y, weights, bias=bias, gamma=gamma, beta=beta, rng_states=rng_states)
    n = len(gamma) // 2
    torch._check(len(weights) == n + 1, lambda: f"weights must hold {n + 1} matrices, got {len(weights)}")
    widths = [_weight_out(w) for w in weights[:n]]
    rows, h = x.shape[0], widths[repr_layer]
    reps = [x.new_empty(rows, h) for _ in range(4)]
    z = [x.new_empty(rows, widths[k % n]) for k in range(2 * n)]
    mean = [x.new_empty(widths[k % n], dtype=stats_dtype(x.dtype)) for k in range(2 * n)]
    std = [x.new_empty(widths[k % n], dtype=stats_dtype(x.dtype)) for k in range(2 * n)]
    return (y.new_empty(rows, x.shape[1]), x.new_empty(rows, y.shape[1]), *reps, z, mean, std)


@torch.library.register_fake("twoway_fast::twoway_net_backward")
def _(grad_x_hat, grad_y_hat, grad_hx, grad_hy, grad_hx_pre, grad_hy_pre, x, y, weights, gamma, beta, rng_states,
      p, repr_layer, leak, act_first, z, mean, std, input_grads):
    _net_args("twoway_net_backward", x, y, weights, grad_x_hat=grad_x_hat, grad_y_hat=grad_y_hat, grad_hx=grad_hx,
              grad_hy=grad_hy, grad_hx_pre=grad_hx_pre, grad_hy_pre=grad_hy_pre, gamma=gamma, beta=beta,
              rng_states=rng_states, z=z, mean=mean, std=std)
    n = len(gamma) // 2
    widths = [_weight_out(w) for w in weights[:n]]
    grad_x = x.new_empty(x.shape) if input_grads else x.new_empty(0)
    grad_y = y.new_empty(y.shape) if input_grads else y.new_empty(0)
    grad_bias = ([x.new_empty(w) for w in widths] + [x.new_empty(y.shape[1])]
                 + [x.new_empty(w) for w in widths] + [x.new_empty(x.shape[1])])
    return (grad_x, grad_y, [w.new_empty(w.shape) for w in weights], grad_bias,
            [g.new_empty(g.shape) for g in gamma], [b.new_empty(b.shape) for b in beta])


# ---------------------------------------------------------------- the 2-Way loss

def twoway_loss(x: Tensor, y: Tensor, x_hat: Tensor, y_hat: Tensor, hx: Tensor, hy: Tensor, hx_dec: Tensor,
                hy_dec: Tensor, weights: list[Tensor], gammas: list[Tensor], coefficients: list[float],
                loss_options: int, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """The 2-Way loss: terms (twoway_fast.loss_terms.LossTerms' order, the total first) and the
    decorrelation matrices Cx, Cy, all in stats_dtype (float32 for half inputs: a sum of squares soon
    passes float16's range). coefficients in loss_terms.COEFFICIENTS' order; loss_options the variants'
    bits (loss_variants.loss_options)."""
    return torch.ops.twoway_fast.twoway_loss.default(x, y, x_hat, y_hat, hx, hy, hx_dec, hy_dec, weights, gammas,
                                                     coefficients, loss_options, eps)


@torch.library.register_fake("twoway_fast::twoway_loss")
def _(x, y, x_hat, y_hat, hx, hy, hx_dec, hy_dec, weights, gammas, coefficients, loss_options, eps):
    _one_device("twoway_loss", x=x, y=y, x_hat=x_hat, y_hat=y_hat, hx=hx, hy=hy, hx_dec=hx_dec, hy_dec=hy_dec,
                weights=weights, gammas=gammas)
    _columns("twoway_loss", x=x, y=y, hx=hx)
    k, dtype = hx.shape[1], stats_dtype(hx.dtype)
    terms = x.new_empty(len(LossTerms._fields), dtype=dtype)
    return terms, hx.new_empty(k, k, dtype=dtype), hx.new_empty(k, k, dtype=dtype)


@torch.library.register_fake("twoway_fast::twoway_loss_backward")
def _(grad_terms, x, y, x_hat, y_hat, hx, hy, hx_dec, hy_dec, weights, gammas, cx, cy, coefficients, loss_options,
      eps):
    _one_device("twoway_loss_backward", grad_terms=grad_terms, x=x, y=y, x_hat=x_hat, y_hat=y_hat, hx=hx, hy=hy,
                hx_dec=hx_dec, hy_dec=hy_dec, weights=weights, gammas=gammas, cx=cx, cy=cy)
    _columns("twoway_loss_backward", x=x, y=y, hx=hx)
    return (x_hat.new_empty(x_hat.shape), y_hat.new_empty(y_hat.shape), hx.new_empty(hx.shape),
            hy.new_empty(hy.shape), hx_dec.new_empty(hx_dec.shape), hy_dec.new_empty(hy_dec.shape),
            [w.new_empty(w.shape) for w in weights], [g.new_empty(g.shape) for g in gammas])


# ---------------------------------------------------------------- one training step (CPU)

@torch.library.register_fake("twoway_fast::twoway_step_gradients")
def _step_fake(x, y, weights, bias, gamma, beta, rng_states, p, repr_layer, leak, eps, act_first, coefficients,
               loss_options, decorrelation_eps, products):
    _net_args("twoway_step", x, y, weights, bias=bias, gamma=gamma, beta=beta, rng_states=rng_states)
    widths = [_weight_out(w) for w in weights[:len(gamma) // 2]]
    stats = [x.new_empty(widths[k % len(widths)], dtype=stats_dtype(x.dtype)) for k in range(len(gamma))]
    grads = [q.new_empty(q.shape) for q in [*weights, *bias, *gamma, *beta]]
    terms = x.new_empty(len(LossTerms._fields), dtype=stats_dtype(x.dtype))
    return terms, grads, stats, [s.new_empty(s.shape) for s in stats]


@torch.library.register_fake("twoway_fast::twoway_sgd_step")
def _(x, y, weights, bias, gamma, beta, rng_states, p, repr_layer, leak, eps, act_first, coefficients, loss_options,
      decorrelation_eps, products, update, momentum_buffers, lr, momentum, dampening, nesterov, weight_decay,
      maximize):
    _one_device("twoway_sgd_step", x=x, momentum_buffers=momentum_buffers)
    return _step_fake(x, y, weights, bias, gamma, beta, rng_states, p, repr_layer, leak, eps, act_first, coefficients,
                      loss_options, decorrelation_eps, products)


@torch.library.register_fake("twoway_fast::twoway_adam_step")
def _(x, y, weights, bias, gamma, beta, rng_states, p, repr_layer, leak, eps, act_first, coefficients, loss_options,
      decorrelation_eps, products, update, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, lr, beta1, beta2,
      epsilon, weight_decay, decoupled_weight_decay, amsgrad, maximize):
    _one_device("twoway_adam_step", x=x, exp_avgs=exp_avgs, exp_avg_sqs=exp_avg_sqs, max_exp_avg_sqs=max_exp_avg_sqs)
    return _step_fake(x, y, weights, bias, gamma, beta, rng_states, p, repr_layer, leak, eps, act_first, coefficients,
                      loss_options, decorrelation_eps, products)


# ---------------------------------------------------------------- retrieval ranks

def retrieval_ranks(a: Tensor, b: Tensor, group: Tensor, tile_rows: int) -> tuple[Tensor, Tensor]:
    """Ranks under dot-product similarity of the rows as given (normalise them first for correlation),
    tile_rows queries per GEMM: (ranks_a2b (n,), ranks_b2a (m,)), int64, 1-based, ties against the query."""
    return torch.ops.twoway_fast.retrieval_ranks.default(a, b, group, tile_rows)


@torch.library.register_fake("twoway_fast::retrieval_ranks")
def _(a, b, group, tile_rows):
    _one_device("retrieval_ranks", a=a, b=b, group=group)
    _columns("retrieval_ranks", a=a, b=b)
    return a.new_empty(a.shape[0], dtype=torch.int64), b.new_empty(b.shape[0], dtype=torch.int64)
