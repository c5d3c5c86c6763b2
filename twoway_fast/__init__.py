"""twoway_fast: fast, trustworthy 2-Way Nets (Eisenschtat and Wolf, CVPR 2017).

The names below load on first use, so `import twoway_fast` (and `twoway-fast --help`) does not import
torch. The compiled ops load with the first module that needs them (a model, a loss, `twoway_fast.ops`),
which refuses a torch other than the one they were built against; `import twoway_fast.ops` registers
their fake kernels and autograd for direct `torch.ops.twoway_fast.*` calls.
"""
import importlib
import importlib.util

from ._version import __version__

__all__ = ["TwoWayNet", "TwoWayLoss", "TwoWayOutput", "LossTerms", "TwoWayEstimator", "load", "presets", "reference",
           "__version__"]

_HOMES = {"TwoWayNet": "model", "TwoWayLoss": "loss", "TwoWayOutput": "types", "LossTerms": "loss_terms",
          "TwoWayEstimator": "estimator",  # the estimator pulls in scikit-learn
          "load": "run"}  # a run folder as a model with its preprocessing


def __getattr__(name):
    if name in _HOMES:
        value = getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    elif not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        value = importlib.import_module(f".{name}", __name__)  # a submodule: presets, reference, ops, ...
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # loaded once
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
