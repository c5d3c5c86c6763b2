"""twoway_fast: fast, trustworthy 2-Way Nets (Eisenschtat and Wolf, CVPR 2017)."""
from . import _extension  # noqa: F401  (raises ImportError when built against another torch)
from . import presets, reference
from .loss import TwoWayLoss
from .model import TwoWayNet
from .reference import LossTerms, TwoWayOutput

__version__ = "0.1.0"
__all__ = ["TwoWayNet", "TwoWayLoss", "TwoWayOutput", "LossTerms", "TwoWayEstimator", "presets", "reference"]


def __getattr__(name):
    if name == "TwoWayEstimator":  # imported on first use: it pulls in scikit-learn
        from .estimator import TwoWayEstimator

        return TwoWayEstimator
    raise AttributeError(f"module 'twoway_fast' has no attribute {name!r}")
