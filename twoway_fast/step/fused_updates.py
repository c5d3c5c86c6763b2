"""The optimisers whose update a training-step op applies in the pass that completes each gradient
(csrc/cpu/parameter_updates.h): torch.optim.SGD (twoway_sgd_step), torch.optim.Adam and AdamW
(twoway_adam_step). For each, the op's arguments that stand for optimizer.step() on one parameter group,
or None where the op cannot: a setting it does not take, or state still to create (the optimiser's own
first step makes it)."""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

# (group, state, updated) -> the op's arguments after `update`, or None. `updated`: the parameters
# the op updates, in its order; `state`: the optimiser's per-parameter state.
Arguments = Callable[[dict, dict, list[Tensor]], tuple | None]


def _states(state: dict, updated: list[Tensor], *keys: str) -> list[list[Tensor]] | None:
    """Per key, the updated parameters' state tensors, or None where one has none yet."""
    out = []
    for key in keys:
        tensors = [state.get(p, {}).get(key) for p in updated]
        if any(t is None for t in tensors):
            return None
        out.append(tensors)
    return out


def sgd_arguments(group: dict, state: dict, updated: list[Tensor]) -> tuple | None:
    buffers: list[Tensor] = []
    if group["momentum"] != 0:
        found = _states(state, updated, "momentum_buffer")
        if found is None:
            return None
        buffers = found[0]
    return (buffers, float(group["lr"]), float(group["momentum"]), float(group["dampening"]),
            bool(group["nesterov"]), float(group["weight_decay"]), bool(group["maximize"]))


def adam_arguments(group: dict, state: dict, updated: list[Tensor]) -> tuple | None:
    if group["capturable"]:  # step counts on the device, read by tensor arithmetic
        return None
    keys = ["exp_avg", "exp_avg_sq", "step"] + (["max_exp_avg_sq"] if group["amsgrad"] else [])
    found = _states(state, updated, *keys)
    if found is None:
        return None
    exp_avgs, exp_avg_sqs, steps = found[:3]
    beta1, beta2 = group["betas"]
    return (exp_avgs, exp_avg_sqs, found[3] if group["amsgrad"] else [], steps, float(group["lr"]), float(beta1),
            float(beta2), float(group["eps"]), float(group["weight_decay"]),
            bool(group.get("decoupled_weight_decay", False)), bool(group["amsgrad"]), bool(group["maximize"]))


# The optimiser's exact type (a subclass may change the update) -> the op and its arguments.
FUSED_UPDATES: dict[type, tuple[str, Arguments]] = {
    torch.optim.SGD: ("twoway_sgd_step", sgd_arguments),
    torch.optim.Adam: ("twoway_adam_step", adam_arguments),
    torch.optim.AdamW: ("twoway_adam_step", adam_arguments),
}
