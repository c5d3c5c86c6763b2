"""A fused-backend training step with no autograd engine: one op call runs the network op, the loss op
and both backward ops (csrc/cpu/twoway_step.cpp), the gradients land in p.grad and the BN running
statistics are updated as in the autograd step. With torch.optim.SGD, Adam or AdamW (step.fused_updates)
the op also applies the optimiser's update, each weight right after its gradient's GEMM while that
gradient is in cache; with any other optimiser, twoway_step_gradients, then optimizer.step(). It maps
the gradients as csrc/autograd.cpp does (so it gives what the autograd step gives: the same gradients,
and the optimiser's update up to the last-bit roundings of its products) without the graph, the module's
argument packing and the engine's gradient accumulation (benchmarks/RESULTS.md has the times).

It applies to one process or one with local statistics (no synced batch norms), outside CUDA graphs,
on the CPU, where it is checked against the autograd step (tests/test_twoway_step.py)."""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import Tensor, nn
from torch.optim import optimizer as torch_optimizer

from ..backends import fused, resolve_backend
from ..dropout import rng_states
from ..loss import TwoWayLoss
from ..loss_terms import LossTerms, coefficient_list
from ..loss_variants import loss_options
from ..model import TwoWayNet
from .fused_updates import FUSED_UPDATES

# Step hooks of every optimiser (torch.optim.optimizer.register_optimizer_step_pre_hook / post_hook):
# where one is set, the optimiser's own step runs, which calls it.
_GLOBAL_STEP_HOOKS = [getattr(torch_optimizer, name, {}) for name in
                      ("_global_optimizer_pre_hooks", "_global_optimizer_post_hooks")]


def native_bf16_products() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX512_BF16 or AMX), where bfloat16 products
    run about twice as fast as float32 ones; without those instructions they are widened to float32 inside
    the GEMM and gain nothing."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def direct_step_applies(model: nn.Module, criterion: nn.Module, device: torch.device) -> bool:
    """Whether DirectStep can stand for the autograd step of this model, loss and data device."""
    return (isinstance(model, TwoWayNet) and isinstance(criterion, TwoWayLoss) and criterion.model[0] is model
            and model.stats_group is None and device.type == "cpu"
            and resolve_backend(model.backend, device).name == "fused")


class DirectStep:
    """step(x, y, seed) -> LossTerms after one optimiser update, like Trainer._eager_step with the fused
    backend. reduce_gradients(params) runs between the backward and the update (the gradient average
    of several processes). The parameter lists are taken once (load_state_dict keeps the parameters;
    build a new step after moving the model to another device or dtype). products: the dtype the
    network's matrix products multiply in, None for the parameters' own; torch.bfloat16 (the trainer's
    train.precision "bf16") halves their cost on CPUs with AVX512_BF16 or AMX, with float32 sums inside
    each product and everything else (parameters, statistics, loss, optimiser state) as it was."""

    def __init__(self, model: TwoWayNet, criterion: TwoWayLoss, optimizer: torch.optim.Optimizer,
                 first_row: int = 0, reduce_gradients: Callable[[Iterable[nn.Parameter]], None] | None = None,
                 products: torch.dtype | None = None):
        self.model, self.optimizer = model, optimizer
        self.products = products
        self.reduce_gradients = reduce_gradients
        self.coefficients = coefficient_list(criterion.coefficients)
        self.loss_options = loss_options(criterion.midway, criterion.decorrelation, criterion.decorrelation_input)
        self.eps = criterion.decorrelation_eps
        self.weights, self.bias, self.gamma, self.beta = model.op_parameters()
        self.params = [*self.weights, *self.bias, *self.gamma, *self.beta]
        self.param_ids = {id(p) for p in self.params}
        self.checked_group: list | None = None  # the optimiser's parameter list last checked
        self.in_group: list[bool] = []  # per parameter of self.params: in that list
        # rng_states built once; each step writes its seed into the first column in place.
        self.states = rng_states(torch.zeros((), dtype=torch.int64, device=self.weights[0].device), len(model.hidden),
                                 first_row)
        self.seeds = self.states[:, 0]

    @torch.no_grad()
    def __call__(self, x: Tensor, y: Tensor, seed: int | Tensor) -> LossTerms:
        net = self.model
        if not net.training:
            raise ValueError("DirectStep is a training step: call model.train() first")
        net.check_views(x, y)
        self.seeds.fill_(seed)  # the step's rng states: (seed, position, first_row) per hidden position
        fused_update = self.fused_update()
        # The last step's gradients freed before this one's exist.
        if fused_update is None:
            self.optimizer.zero_grad(set_to_none=True)
        else:
            for p in self.params:
                p.grad = None
        # The bias the running means add back (bn_then_act order), as it is before the update changes it.
        bias = None if net.act_first else [b.detach().clone() for b in self.bias]
        args = (x, y, self.weights, self.bias, self.gamma, self.beta, self.states, net.dropout, net.repr_layer,
                net.leaks, net.bn_eps, net.act_first, self.coefficients, self.loss_options, self.eps, self.products)
        if fused_update is None:
            terms, grads, mean, std = torch.ops.twoway_fast.twoway_step_gradients.default(*args)
        else:
            op, update_args = fused_update
            terms, grads, mean, std = op(*args, *update_args)
        for p, g in zip(self.params, grads):
            if p.requires_grad:  # a frozen parameter has no gradient, as in the autograd step
                p.grad = g
        net.update_running_stats(fused.slot_means(net, mean, bias), std)
        if fused_update is None:
            if self.reduce_gradients is not None:
                self.reduce_gradients(self.params)
            self.optimizer.step()
        return LossTerms(*terms.unbind(0))

    def fused_update(self) -> tuple[Callable, tuple] | None:
        """The training-step op that also applies self.optimizer's update, and its arguments after the
        step's own (the parameters it updates, their state, the settings): step.fused_updates says for
        which optimisers. None where no op can stand for self.optimizer.step(): another optimiser, several
        parameter groups or parameters the model does not hand the ops, hooks, non-contiguous parameters
        (updated in place by the op), gradients to reduce between backward and update, or state still to
        create (the optimiser's first step makes it)."""
        opt = self.optimizer
        found = FUSED_UPDATES.get(type(opt))
        if found is None or self.reduce_gradients is not None or len(opt.param_groups) != 1:
            return None
        group = opt.param_groups[0]
        params = group["params"]
        if params is not self.checked_group:
            if not {id(p) for p in params} <= self.param_ids:
                return None
            self.checked_group = params
            in_group = {id(p) for p in params}
            self.in_group = [id(p) in in_group for p in self.params]
        if (group.get("differentiable", False) or getattr(opt, "_optimizer_step_pre_hooks", None)
                or getattr(opt, "_optimizer_step_post_hooks", None) or any(_GLOBAL_STEP_HOOKS)):
            return None
        # The optimiser updates the parameters of its group that have a gradient: the trainable ones.
        update = [g and p.requires_grad for g, p in zip(self.in_group, self.params)]
        updated = [p for p, u in zip(self.params, update) if u]
        if not all(p.is_contiguous() for p in updated):
            return None
        name, arguments = found
        tail = arguments(group, opt.state, updated)
        return None if tail is None else (getattr(torch.ops.twoway_fast, name).default, (update, *tail))
