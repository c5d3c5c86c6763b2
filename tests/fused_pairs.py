"""Shared by the fused-backend tests: twin models (reference and fused) with identical parameters,
and a tolerance that scales with the compared tensor."""
from __future__ import annotations

import copy

import torch

import twoway_fast


def twin_models(dx, dy, hidden, dtype, **kwargs):
    """(reference model, fused model), equal parameters; biases and betas random (not 0) so that every
    gradient path is exercised."""
    ref = twoway_fast.TwoWayNet(dx, dy, hidden, backend="reference", **kwargs).to(dtype)
    with torch.no_grad():
        for b in [*ref.x_bias, *ref.y_bias]:
            b.normal_(0, 0.1)
        for bn in [*ref.bn_x, *ref.bn_y]:
            if isinstance(bn.beta, torch.nn.Parameter):  # not the fixed ones (repr_affine=False)
                bn.beta.normal_(0, 0.1)
    fused = copy.deepcopy(ref)
    fused.backend = "fused"
    return ref, fused


def close(actual, expected, dtype, what):
    """float64: rounding only. float32: relative to the larger of the tensor's largest entry and 1, the
    scale of the tests' inputs and cotangents (BN divides by small standard deviations, so single
    elements, and gradients that are 0 up to rounding, carry more rounding than a plain rtol allows)."""
    tol = 1e-9 if dtype == torch.float64 else 2e-4
    scale = max(expected.abs().max().item(), 1.0) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol * scale, msg=lambda m: f"{what}: {m}")


def grads(module):
    return {name: p.grad for name, p in module.named_parameters()}
