"""TwoWayNet: the nn.Module users hold. It owns the parameters and the BN running statistics; the
computation comes from a backend: the plain-PyTorch reference or the fused ops."""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .backends import reference as reference_backend
from .backends import resolve_backend
from .init import glorot_uniform_
from .types import OpParameters, TwoWayOutput

ORDERS = ("act_then_bn", "bn_then_act")


class BatchNormParams(nn.Module):
    """One modified batch norm: gamma ~ U(0.95, 1.05), beta = 0, running mean and std (not variance).
    affine=False: gamma = 1 and beta = 0 fixed (buffers, not parameters), so the output has unit scale."""

    def __init__(self, width: int, affine: bool = True):
        super().__init__()
        if affine:
            self.gamma = nn.Parameter(torch.empty(width).uniform_(0.95, 1.05))
            self.beta = nn.Parameter(torch.zeros(width))
        else:
            self.register_buffer("gamma", torch.ones(width))
            self.register_buffer("beta", torch.zeros(width))
        self.register_buffer("running_mean", torch.zeros(width))
        self.register_buffer("running_std", torch.ones(width))


def _positive_widths(name: str, widths: Sequence[int]) -> list[int]:
    widths = [int(w) for w in widths]
    if not widths or any(w < 1 for w in widths):
        raise ValueError(f"{name} must be a non-empty list of positive widths, got {widths}")
    return widths


def _dropout_per_position(dropout: float | Sequence[float], n: int) -> list[float]:
    rates = [float(dropout)] * n if isinstance(dropout, (int, float)) else [float(p) for p in dropout]
    if len(rates) != n:
        raise ValueError(f"dropout must be one rate or one per hidden position ({n}), got {len(rates)} rates")
    for p in rates:
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    return rates


def _locally_dense(spec: Mapping[int | str, int] | None, sizes: list[int]) -> dict[int, int]:
    """{weight index: M}; weight i maps sizes[i] -> sizes[i+1]; negative indices count from the end."""
    layers = len(sizes) - 1
    blocks = {}
    for key, m in (spec or {}).items():
        i, m = int(key), int(m)
        if not -layers <= i < layers:
            raise ValueError(f"locally_dense names weight {i}, but the network has weights 0..{layers - 1}")
        i %= layers
        if m < 1 or sizes[i] % m or sizes[i + 1] % m:
            raise ValueError(f"locally dense weight {i} maps width {sizes[i]} to {sizes[i + 1]}: both must "
                             f"divide by M = {m}")
        if m > 1:
            blocks[i] = m
    return blocks


class TwoWayNet(nn.Module):
    """A 2-Way Net (docs/method.md#the-network): tied X->Y and Y->X channels sharing W_1..W_{n+1}.

    Args:
        dx, dy: widths of the two views.
        hidden: hidden widths h_1..h_n.
        repr_layer: hidden position (0-based) of the representation; None = the middle one.
        order: "act_then_bn" (LeakyReLU -> BN, presets mnist/xrmb) or "bn_then_act".
        dropout: tied-dropout rate, one for all hidden positions or one per position.
        leak: LeakyReLU slope.
        repr_linear: True leaves out the LeakyReLU at the representation position (slope 1 there): the
            code is a batch-normalised linear map of the layer below, as deep CCA's encoders end,
            rather than a rectified one. `leaks` holds the slope of every position.
        locally_dense: {weight index: M} for block-diagonal layers (index -1: the output layer W_{n+1}).
        backend: "fused" (the twoway_fast ops), "reference" (plain PyTorch) or "auto".
        bn_eps: batch-norm epsilon (1e-3 in the original, 1e-5 in the default presets).
        bn_momentum: weight of the batch value in the running mean/std update.
        repr_affine: False fixes gamma = 1 and beta = 0 in both batch norms at the representation
            position (codes of unit scale: the mid-way loss is then exactly 2 - 2 corr per dimension
            over a batch, the paper's argument held exactly rather than through the 1/gamma^2 penalty).
            The fixed gammas still count in the loss's gamma terms, as constants (no gradient).

    Parameters: weights[i] is W_{i+1}, shape (h_{i+1}, h_i) or (M, h_{i+1}/M, h_i/M) when locally
    dense; x_bias[k] / y_bias[k] are each channel's bias at hidden position k, index n the output
    layer's; bn_x[k] / bn_y[k] the batch norms at hidden position k (mirrored positions share k).

    stats_group: None (batch statistics of the rows given), or a torch.distributed process group whose
    ranks' rows together form the batch: the training batch norms and TwoWayLoss's decorrelation then
    use statistics over all of them (twoway_fast.backends.synced; set by the trainer).

    preprocessing: None, or the twoway_fast.data.Preprocessing fitted on the training split (attached by
    twoway_fast.load and the estimator): encode_x and encode_y then take raw rows.

    A training batch whose statistics are not finite (NaN or Inf rows, a diverged step) leaves the
    running statistics as they were, so one bad batch cannot spoil eval mode for good; the loss still
    shows it (the trainer stops on it, naming the step).
    """

    preprocessing = None

    def __init__(self, dx: int, dy: int, hidden: Sequence[int], repr_layer: int | None = None,
                 order: str = "act_then_bn", dropout: float | Sequence[float] = 0.5, leak: float = 0.3,
                 locally_dense: Mapping[int | str, int] | None = None, backend: str = "auto",
                 bn_eps: float = 1e-3, bn_momentum: float = 0.01, repr_affine: bool = True,
                 repr_linear: bool = False):
        super().__init__()
        self.hidden = _positive_widths("hidden", hidden)
        dx, dy = _positive_widths("view widths (dx, dy)", [dx, dy])
        n = len(self.hidden)
        self.repr_layer = n // 2 if repr_layer is None else int(repr_layer)
        if not 0 <= self.repr_layer < n:
            raise ValueError(f"repr_layer must be a hidden position in 0..{n - 1}, got {repr_layer}")
        if order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
        if bn_eps <= 0:
            raise ValueError(f"bn_eps must be positive, got {bn_eps}")
        self.dx, self.dy, self.order = dx, dy, order
        self.act_first = order == "act_then_bn"
        self.dropout = _dropout_per_position(dropout, n)
        self.leak, self.bn_eps, self.bn_momentum = float(leak), float(bn_eps), float(bn_momentum)
        if not math.isfinite(self.leak):
            raise ValueError(f"leak must be a finite slope, got {leak}")
        self.repr_linear = bool(repr_linear)
        # One slope per hidden position, as the ops take them.
        self.leaks = [1.0 if self.repr_linear and k == self.repr_layer else self.leak for k in range(n)]
        sizes = [dx, *self.hidden, dy]
        self.locally_dense = _locally_dense(locally_dense, sizes)
        self.weights = nn.ParameterList()
        for i in range(n + 1):
            m = self.locally_dense.get(i, 1)
            shape = (sizes[i + 1], sizes[i]) if m == 1 else (m, sizes[i + 1] // m, sizes[i] // m)
            self.weights.append(nn.Parameter(glorot_uniform_(torch.empty(shape))))
        self.x_bias = nn.ParameterList([nn.Parameter(torch.zeros(w)) for w in [*self.hidden, dy]])
        self.y_bias = nn.ParameterList([nn.Parameter(torch.zeros(w)) for w in [*self.hidden, dx]])
        self.repr_affine = bool(repr_affine)
        affine = [self.repr_affine or k != self.repr_layer for k in range(n)]
        self.bn_x = nn.ModuleList([BatchNormParams(w, a) for w, a in zip(self.hidden, affine)])
        self.bn_y = nn.ModuleList([BatchNormParams(w, a) for w, a in zip(self.hidden, affine)])
        self.backend = backend
        resolve_backend(backend, torch.device("cpu"))  # fail now on an unknown or unavailable backend
        self.stats_group = None

    def gammas(self) -> list[Tensor]:
        return [bn.gamma for bn in [*self.bn_x, *self.bn_y]]

    def op_parameters(self) -> OpParameters:
        """The parameters in the ops' argument order (the fused backend and the direct step pass these)."""
        bns = [*self.bn_x, *self.bn_y]
        return OpParameters(list(self.weights), [*self.x_bias, *self.y_bias], [bn.gamma for bn in bns],
                            [bn.beta for bn in bns])

    @staticmethod
    def _check_view(name: str, v: Tensor, width: int, weight: Tensor) -> None:
        if v.dim() != 2 or v.shape[1] != width:
            raise ValueError(f"{name} must have shape (batch, {width}), got {tuple(v.shape)}")
        if v.shape[0] == 0:
            raise ValueError(f"{name} is empty (0 rows)")
        if v.dtype != weight.dtype:
            raise ValueError(f"{name} has dtype {v.dtype} but the model's parameters are {weight.dtype}; "
                             f"convert one (e.g. model.to({v.dtype}) or {name}.to({weight.dtype}))")
        if v.device != weight.device:
            raise ValueError(f"{name} is on {v.device} but the model's parameters are on {weight.device}")

    def check_views(self, x: Tensor, y: Tensor) -> None:
        """Refuses a batch the network cannot take (shape, widths, rows, dtype, device), naming the problem."""
        weight = self.weights[0]  # the parameters' dtype and device
        self._check_view("x", x, self.dx, weight)
        self._check_view("y", y, self.dy, weight)
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x and y must have the same number of rows (pairs), got {x.shape[0]} and {y.shape[0]}")
        if self.training and x.shape[0] < 2 and self.stats_group is None:  # synced: the rows of all ranks count
            raise ValueError(f"training needs at least 2 rows per batch (batch statistics), got {x.shape[0]}")

    def forward(self, x: Tensor, y: Tensor, seed: int | Tensor | None = None, first_row: int = 0) -> TwoWayOutput:
        """Both channels. In training mode the tied-dropout masks come from `seed` (an int64; drawn
        from torch's generator when None) and the rows' global indices first_row, first_row + 1, ...
        (a rank's slice of a larger batch), and the BN running statistics are updated."""
        self.check_views(x, y)
        if not self.training:
            return reference_backend.forward(self, x, y, None)[0]
        if seed is None:  # drawn on the data's device: no host round trip, capturable in a CUDA graph
            seed = torch.randint(0, 2**63 - 1, (), dtype=torch.int64, device=x.device)
        seed = torch.as_tensor(seed, dtype=torch.int64, device=x.device)
        backend = resolve_backend(self.backend, x.device)
        if self.stats_group is None:
            out, stats = backend.forward(self, x, y, seed, first_row)
        else:
            from .backends import synced

            out, stats = synced.forward(self, x, y, seed, first_row, backend.name, self.stats_group)
        self._update_running_stats(stats)
        return out

    def _update_running_stats(self, stats) -> None:
        """stats: {("x" or "y", position): (batch mean, batch std)}, every slot, as the backends give them."""
        n = len(self.hidden)
        slots = [("x", k) for k in range(n)] + [("y", k) for k in range(n)]
        self.update_running_stats([stats[s][0] for s in slots], [stats[s][1] for s in slots])

    @torch.no_grad()
    def update_running_stats(self, mean: Sequence[Tensor], std: Sequence[Tensor]) -> None:
        """running = (1 - bn_momentum) running + bn_momentum batch, for every batch norm: `mean` and `std`
        per slot in the ops' order (X's hidden positions, then Y's), the means as the running means take
        them (with the bias where the ops skip it: backends.fused.slot_means adds it back)."""
        bns = [*self.bn_x, *self.bn_y]
        running = [bn.running_mean for bn in bns] + [bn.running_std for bn in bns]
        batch = [*mean, *std]
        batch = [b if b.dtype == r.dtype else b.to(r.dtype) for r, b in zip(running, batch)]
        batch = self._finite_or_running(running, batch)
        # One foreach call instead of two per batch norm (elementwise the same as lerp_ on each).
        torch._foreach_lerp_(running, batch, self.bn_momentum)

    @staticmethod
    def _finite_or_running(running: Sequence[Tensor], batch: Sequence[Tensor]) -> Sequence[Tensor]:
        """`batch`, or `running` itself when any batch statistic is NaN or Inf (the lerp then leaves the
        running statistics exactly as they are). Decided on the device, without a host read: the step
        stays free of synchronisation (and capturable in a CUDA graph)."""
        flat = torch.cat([b.reshape(-1) for b in batch])
        # 0 * v is 0 for every finite v and NaN for NaN or Inf: one sum tells (a third of the time of
        # isfinite().all(); ~40 us a mnist step on one core, against its ~9 ms).
        finite = flat.mul(0).sum() == 0
        chosen = torch.where(finite, flat, torch.cat([r.reshape(-1) for r in running]))
        return chosen.split([b.numel() for b in batch])

    def encode_x(self, x, *, prepared: bool = False) -> Tensor:
        """The X view's representation (eval semantics: running statistics, no dropout). With
        `preprocessing` attached, x is raw rows (see `prepare`); prepared=True: rows already through it."""
        return reference_backend.encode(self, self._network_rows("x", x, prepared), "x")

    def encode_y(self, y, *, prepared: bool = False) -> Tensor:
        """The Y view's representation (eval semantics: running statistics, no dropout). With
        `preprocessing` attached, y is raw rows (see `prepare`); prepared=True: rows already through it."""
        return reference_backend.encode(self, self._network_rows("y", y, prepared), "y")

    def predict_y(self, x, *, prepared: bool = False) -> Tensor:
        """The X channel's output, y_hat (eval semantics). With `preprocessing` attached, x is raw rows and
        y_hat comes back in the raw y view's space (the fitted PCA and standardisation undone; rows scaled
        by l2_rows stay at unit norm); prepared=True: rows in and out as the network takes them."""
        return self._predict("x", x, prepared)

    def predict_x(self, y, *, prepared: bool = False) -> Tensor:
        """The Y channel's output, x_hat: predict_y the other way."""
        return self._predict("y", y, prepared)

    def _network_rows(self, view: str, rows, prepared: bool) -> Tensor:
        """Rows of `view` through the preprocessing (unless `prepared`), checked against the network's width."""
        a = rows if prepared else self.prepare(view, rows)
        self._check_view(view, a, self.dx if view == "x" else self.dy, self.weights[0])
        return a

    def _predict(self, view: str, rows, prepared: bool) -> Tensor:
        out = reference_backend.predict(self, self._network_rows(view, rows, prepared), view)
        if prepared or self.preprocessing is None:
            return out
        other = self.preprocessing.view("y" if view == "x" else "x")
        raw = other.inverse_transform(out.detach().cpu().numpy())
        return torch.from_numpy(raw).to(device=out.device, dtype=out.dtype)

    def prepare(self, view: str, rows) -> Tensor:
        """Rows of one view ("x" or "y") as the network takes them. Without `preprocessing` (a model
        built in Python) they are returned as given. With it (twoway_fast.load, TwoWayEstimator), `rows`
        are raw: a tensor or array of the data's own width, put through the preprocessing fitted on the
        training split, as a float tensor of the parameters' dtype and device."""
        if self.preprocessing is None:
            return rows
        fitted = self.preprocessing.view(view)
        raw = rows.detach().cpu().numpy() if isinstance(rows, Tensor) else np.asarray(rows)
        if raw.ndim != 2 or raw.shape[1] != fitted.width:
            model_width = self.dx if view == "x" else self.dy
            got = f"{raw.shape[1]} features per row" if raw.ndim == 2 else f"shape {raw.shape}, not (rows, features)"
            raise ValueError(f"{view} has {got}; the model's {view} view takes raw rows of {fitted.width} features "
                             f"(preprocessing: {fitted.describe()}; {model_width} into the network)")
        weight = self.weights[0]
        return torch.from_numpy(fitted.transform(raw)).to(device=weight.device, dtype=weight.dtype)

    def extra_repr(self) -> str:
        return (f"dx={self.dx}, dy={self.dy}, hidden={self.hidden}, repr_layer={self.repr_layer}, "
                f"order={self.order!r}, dropout={self.dropout}, leak={self.leak}, bn_eps={self.bn_eps}, "
                f"locally_dense={self.locally_dense}, repr_affine={self.repr_affine}, repr_linear={self.repr_linear}, "
                f"backend={self.backend!r}")
