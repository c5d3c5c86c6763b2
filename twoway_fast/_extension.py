"""Loads the compiled ops (twoway_fast._C) and refuses a torch other than the one they were built for:
a mismatch would otherwise surface as an obscure `undefined symbol` at import or a crash later."""
from __future__ import annotations

import torch

REBUILD = "pip install --no-build-isolation -e . (in the source tree; or `make clean test`)"


def load():
    """Returns (module or None, why not). Raises ImportError on a torch version mismatch."""
    try:
        from . import _build_info
    except ImportError:
        return None, f"twoway_fast._C was never built; build it with: {REBUILD}"
    if _build_info.TORCH_VERSION != torch.__version__:
        raise ImportError(
            f"twoway_fast was built against torch {_build_info.TORCH_VERSION} but torch {torch.__version__} "
            f"is installed; rebuild it against this torch with: {REBUILD}"
        )
    try:
        from . import _C
    except ImportError as err:
        return None, f"twoway_fast._C failed to load ({err}); rebuild it with: {REBUILD}"
    return _C, ""


EXTENSION, WHY_NOT = load()


def has_kernel(op: str, device_type: str) -> bool:
    """Whether the loaded extension registers torch.ops.twoway_fast.<op> for this device type."""
    return EXTENSION is not None and torch._C._dispatch_has_kernel_for_dispatch_key(
        f"twoway_fast::{op}", device_type.upper())
