"""How a training forward and the loss are computed, one module per way:

    resolve.py     resolve_backend: the backend a model's `backend` setting names on a device
    fused.py       the network and loss ops of twoway_fast._C (twoway_fast/ops.py)
    reference.py   the plain-PyTorch oracle (twoway_fast/reference.py); also eval mode and encoding
    synced.py      batch statistics over the rows of several processes (TwoWayNet.stats_group), on
                   either of the two above
"""
from .resolve import BACKENDS, REFERENCE, VERIFIED_DEVICE_TYPES, Backend, fused_unavailable_reason, resolve_backend

__all__ = ["BACKENDS", "REFERENCE", "VERIFIED_DEVICE_TYPES", "Backend", "fused_unavailable_reason", "resolve_backend"]
