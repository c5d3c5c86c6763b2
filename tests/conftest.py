import pytest
import torch

import twoway_fast.ops  # noqa: F401  (the compiled ops, their fake kernels and autograd, for direct torch.ops calls)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    """The CPU ops run the two channels side by side on two threads and one after the other otherwise
    (csrc/cpu/side_by_side.h): a test taking this fixture runs both paths, whatever this machine's
    default."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def assert_close(actual, expected, dtype, what=""):
    """float64: near exact; float32: the rounding of a few thousand terms."""
    tol = dict(rtol=1e-9, atol=1e-10) if dtype == torch.float64 else dict(rtol=2e-4, atol=2e-5)
    torch.testing.assert_close(actual, expected, **tol, msg=lambda m: f"{what}: {m}")


# A small, quick training on the embedded digits (tests of the command line and the run folder).
SMALL_TRAIN = ["--set", "model.hidden=[16,8,16]", "--set", "train.optimizer='Adam'", "--lr", "0.001",
               "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="session")
def small_run(tmp_path_factory):
    """A finished two-epoch run folder (last.pt, previous.pt, best.pt...), trained once per session:
    copy it (shutil.copytree) before changing it."""
    from twoway_fast.cli import main

    out = tmp_path_factory.mktemp("small_run") / "run"
    assert main(["train", "--preset", "digits", "--data", "digits", "--out", str(out), "--epochs", "2",
                 *SMALL_TRAIN]) == 0
    return out
