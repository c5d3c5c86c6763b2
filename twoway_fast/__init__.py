"""twoway_fast: fast, trustworthy 2-Way Nets (Eisenschtat and Wolf, CVPR 2017)."""
from . import _extension  # noqa: F401  (raises ImportError when built against another torch)

if _extension.EXTENSION is not None:
    from . import ops  # noqa: F401  (registers the ops' fake kernels and Python autograd on import)
from . import presets
from ._version import __version__
from .loss import TwoWayLoss
from .model import TwoWayNet
from .types import LossTerms, TwoWayOutput

__all__ = ["TwoWayNet", "TwoWayLoss", "TwoWayOutput", "LossTerms", "TwoWayEstimator", "presets", "reference"]


def __getattr__(name):
    if name == "TwoWayEstimator":  # imported on first use: it pulls in scikit-learn
        from .estimator import TwoWayEstimator

        return TwoWayEstimator
    if name == "reference":  # the plain-PyTorch oracle, for tests and comparisons
        from . import reference

        return reference
    raise AttributeError(f"module 'twoway_fast' has no attribute {name!r}")
