"""A fused-backend training step with no autograd engine: one op call runs the network op, the loss op
and both backward ops (csrc/cpu/twoway_step.cpp), the gradients land in p.grad and the BN running
statistics are updated as in the autograd step. With torch.optim.SGD (the Trainer's default) the op,
twoway_sgd_step, also applies SGD's update, each weight right after its gradient's GEMM while that
gradient is in cache; with any other optimiser, twoway_step_gradients, then optimizer.step(). It maps
the gradients as csrc/autograd.cpp does (so it gives what the autograd step gives: the same gradients,
and SGD's update up to the last-bit roundings of its products) without the graph, the module's argument
packing and the engine's gradient accumulation (benchmarks/RESULTS.md has the times).

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

# Step hooks of every optimiser (torch.optim.optimizer.register_optimizer_step_pre_hook / post_hook):
# where one is set, the optimiser's own step runs, which calls it.
_GLOBAL_STEP_HOOKS = [getattr(torch_optimizer, name, {}) for name in
                      ("_global_optimizer_pre_hooks", "_global_optimizer_post_hooks")]


def direct_step_applies(model: nn.Module, criterion: nn.Module, device: torch.device) -> bool:
    """Whether DirectStep can stand for the autograd step of this model, loss and data device."""
    return (isinstance(model, TwoWayNet) and isinstance(criterion, TwoWayLoss) and criterion.model[0] is model
            and model.stats_group is None and device.type == "cpu"
            and resolve_backend(model.backend, device).name == "fused")


class DirectStep:
    """step(x, y, seed) -> LossTerms after one optimiser update, like Trainer._eager_step with the fused
    backend. reduce_gradients(params) runs between the backward and the update (the gradient average
    of several processes). The parameter lists are taken once (load_state_dict keeps the parameters;
    build a new step after moving the model to another device or dtype)."""

    def __init__(self, model: TwoWayNet, criterion: TwoWayLoss, optimizer: torch.optim.Optimizer,
                 first_row: int = 0, reduce_gradients: Callable[[Iterable[nn.Parameter]], None] | None = None):
        self.model, self.optimizer = model, optimizer
        self.reduce_gradients = reduce_gradients
        self.coefficients = coefficient_list(criterion.coefficients)
        self.loss_options = loss_options(criterion.midway, criterion.decorrelation, criterion.decorrelation_input)
        self.eps = criterion.decorrelation_eps
        self.weights, self.bias, self.gamma, self.beta = model.op_parameters()
        self.params = [*self.weights, *self.bias, *self.gamma, *self.beta]
        self.param_ids = {id(p) for p in self.params}
        self.checked_group: list | None = None  # the optimiser's parameter list last found to be self.params
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
        sgd = self._sgd_settings()
        # The last step's gradients freed before this one's exist.
        if sgd is None:
            self.optimizer.zero_grad(set_to_none=True)
        else:
            for p in self.params:
                p.grad = None
        # The bias the running means add back (bn_then_act order), as it is before the update changes it.
        bias = None if net.act_first else [b.detach().clone() for b in self.bias]
        args = (x, y, self.weights, self.bias, self.gamma, self.beta, self.states, net.dropout, net.repr_layer,
                net.leaks, net.bn_eps, net.act_first, self.coefficients, self.loss_options, self.eps)
        ops = torch.ops.twoway_fast
        terms, grads, mean, std = (ops.twoway_step_gradients.default(*args) if sgd is None
                                   else ops.twoway_sgd_step.default(*args, *sgd))
        for p, g in zip(self.params, grads):
            if p.requires_grad:  # a frozen parameter has no gradient, as in the autograd step
                p.grad = g
        net.update_running_stats(fused.slot_means(net, mean, bias), std)
        if sgd is None:
            if self.reduce_gradients is not None:
                self.reduce_gradients(self.params)
            self.optimizer.step()
        return LossTerms(*terms.unbind(0))

    def _sgd_settings(self) -> tuple | None:
        """The arguments of the twoway_sgd_step op that stand for self.optimizer.step(), or None where it
        cannot: another optimiser, other parameters, hooks, frozen or non-contiguous parameters (updated in
        place by the op), fixed batch-norm gamma and beta (repr_affine=False: the op would update them
        too), gradients to reduce between backward and update, or momentum buffers still to create (the
        optimiser's first step makes them)."""
        opt = self.optimizer
        if type(opt) is not torch.optim.SGD or self.reduce_gradients is not None or len(opt.param_groups) != 1:
            return None
        group = opt.param_groups[0]
        params = group["params"]
        if params is not self.checked_group or len(params) != len(self.params):
            if len(params) != len(self.params) or {id(p) for p in params} != self.param_ids:
                return None
            self.checked_group = params
        if (group.get("differentiable", False) or getattr(opt, "_optimizer_step_pre_hooks", None)
                or getattr(opt, "_optimizer_step_post_hooks", None) or any(_GLOBAL_STEP_HOOKS)
                or not all(p.requires_grad and p.is_contiguous() for p in self.params)):
            return None
        buffers = []
        if group["momentum"] != 0:
            buffers = [opt.state.get(p, {}).get("momentum_buffer") for p in self.params]
            if any(b is None for b in buffers):
                return None
        return (buffers, float(group["lr"]), float(group["momentum"]), float(group["dampening"]),
                bool(group["nesterov"]), float(group["weight_decay"]), bool(group["maximize"]))
