"""Chooses where the computation runs: the fused ops of twoway_fast._C (fused.py) or the plain-PyTorch
reference (reference.py)."""
# No `from __future__ import annotations`: Backend's field types stay objects for the API reference.
import warnings
from typing import Callable, NamedTuple

import torch

from .._extension import EXTENSION, WHY_NOT, has_kernel
from . import reference

BACKENDS = ("auto", "fused", "reference")


class Backend(NamedTuple):
    name: str
    forward: Callable  # (net, x, y, seed, first_row) -> (TwoWayOutput, batch statistics), as reference.forward
    loss: Callable  # same signature and result as reference.loss


REFERENCE = Backend("reference", reference.forward, reference.loss)


@torch.compiler.assume_constant_result  # a fact about the build: torch.compile need not trace it
def _has_kernels(device_type: str) -> bool:
    return has_kernel("twoway_net", device_type)


# Device types whose fused kernels have passed the test suite on real hardware. "auto" picks the fused
# ops only there; elsewhere they stay opt-in (backend="fused"). The CUDA kernels have only been
# compiled so far: add "cuda" once scripts/gpu_check.sh passes on a GPU.
VERIFIED_DEVICE_TYPES = ("cpu",)


def fused_unavailable_reason(device: torch.device) -> str:
    """Empty when the fused ops run on `device`, else why not."""
    if EXTENSION is None:
        return WHY_NOT
    if not _has_kernels(device.type):
        return f"twoway_fast._C has no kernels for {device.type} in this build"
    return ""


def resolve_backend(name: str, device: torch.device) -> Backend:
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    if name == "reference":
        return REFERENCE
    why = fused_unavailable_reason(device)
    if not why and name == "auto" and device.type not in VERIFIED_DEVICE_TYPES:
        why = f"its {device.type} kernels are not yet verified on hardware (backend='fused' opts in)"
    if not why:
        from . import fused  # its import of ops registers fake kernels and autograd on first use

        return Backend("fused", fused.forward, fused.loss)
    if name == "fused":
        raise RuntimeError(f"backend='fused' is unavailable on {device}: {why}")
    warnings.warn(f"twoway_fast: using the reference backend on {device}: {why}", stacklevel=3)
    return REFERENCE
