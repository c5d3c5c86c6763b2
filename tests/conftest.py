import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def assert_close(actual, expected, dtype, what=""):
    """float64: near exact; float32: the rounding of a few thousand terms."""
    tol = dict(rtol=1e-9, atol=1e-10) if dtype == torch.float64 else dict(rtol=2e-4, atol=2e-5)
    torch.testing.assert_close(actual, expected, **tol, msg=lambda m: f"{what}: {m}")
