"""The default settings on small real sets: a short training run must not collapse the representation
(the original settings do, which shows the bound can fail): scikit-learn's digits halves, 16-d, and a
slice of real MNIST with the mnist default."""
from pathlib import Path

import numpy as np
import pytest

from twoway_fast import data, metrics, presets
from twoway_fast.data.idx import read_idx
from twoway_fast.data.sources import image_halves
from twoway_fast.evaluation import encode
from twoway_fast.train import Trainer, TrainConfig, build

EPOCHS = 15
# Effective rank of the 16-d test representation after EPOCHS epochs (seed 0): the default form
# measured 11.9, the faithful form 4.3 (it collapses).
RANK_BOUND = 8.0


def trained_rank(name: str, source, faithful: bool, epochs: int) -> float:
    """Effective rank of the test representation after `epochs` of preset `name` on `source` (seed 0)."""
    preset = presets.get(name, faithful=faithful)
    dataset = data.load(source, data.DataConfig(**preset.data))
    config = TrainConfig(**(preset.train | {"epochs": epochs}))
    model, criterion = build(preset, dataset.dx, dataset.dy, 0)
    Trainer(model, criterion, dataset.train, None, config, None, progress=False).fit()
    zx, _ = encode(model, dataset.test)
    return metrics.effective_rank(zx)


@pytest.mark.parametrize("faithful", [False, True], ids=["default", "faithful"])
def test_default_keeps_the_representation_full_and_faithful_collapses(faithful):
    rank = trained_rank("digits", "digits", faithful, EPOCHS)
    assert (rank > RANK_BOUND) != faithful, f"effective rank {rank:.2f} of 16 (bound {RANK_BOUND})"


MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"  # the real images, where CI has them
MNIST_ROWS, MNIST_EPOCHS = 10000, 6
# Effective rank of the 50-d test representation after MNIST_EPOCHS epochs on the first MNIST_ROWS
# real training images (the .npz loader's splits, seed 0): the mnist default measured 25.6 (its rank
# grows with training: 49 of 50 after 20 epochs of the full set), the faithful form 3.0 (it collapses).
# At this size the default already retrieves better than linear CCA (R@1 47% / 49% against 32% on the
# 2000 test pairs; CCA protocol 31.4 against 25.3).
MNIST_RANK_BOUND = 15.0


@pytest.mark.skipif(not (MNIST / "train-images-idx3-ubyte.gz").is_file(), reason="real MNIST is not here")
@pytest.mark.parametrize("faithful", [False, True], ids=["default", "faithful"])
def test_mnist_default_keeps_its_directions_on_real_images(tmp_path, faithful):
    x, y = image_halves(read_idx(MNIST / "train-images-idx3-ubyte.gz")[:MNIST_ROWS].astype(np.float32) / 255)
    np.savez(tmp_path / "halves.npz", x=x, y=y)
    rank = trained_rank("mnist", tmp_path / "halves.npz", faithful, MNIST_EPOCHS)
    assert (rank > MNIST_RANK_BOUND) != faithful, f"effective rank {rank:.2f} of 50 (bound {MNIST_RANK_BOUND})"
