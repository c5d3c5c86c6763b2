"""Every script in examples/ runs, on small data and few epochs, and produces what it says."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_every_example_is_tested():
    tested = {"train_loop", "sklearn_estimator", "command_line"}
    assert {p.stem for p in EXAMPLES.glob("*.py")} == tested


def test_train_loop(capsys):
    results = load("train_loop").main(epochs=3)
    assert results["dims"] == 16 and results["cca_correlation"] > 4  # 7 measured after 3 epochs; linear CCA gets about 7 in 16-d
    assert "epoch 3: loss" in capsys.readouterr().out


def test_sklearn_estimator():
    accuracy = load("sklearn_estimator").main(epochs=3)
    assert accuracy > 0.5  # ten classes: chance is 0.1; 76% measured after 3 epochs


def test_command_line(tmp_path, capsys):
    results = load("command_line").main(epochs=2, out=tmp_path)
    assert results["dims"] == 4 and results["cca_correlation"] > 2  # 3.3 of 4 measured after 2 epochs
    assert (tmp_path / "test.npz").exists() and "test representations" in capsys.readouterr().out
    with np.load(tmp_path / "new.npz") as new:
        assert new.files == ["x"] and new["x"].shape == (5, 4)
