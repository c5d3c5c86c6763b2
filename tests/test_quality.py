"""The default settings on a small real set: a short training run must not collapse the representation
(the original settings do, which shows the bound can fail). scikit-learn's digits halves, 16-d."""
import pytest

from twoway_fast import data, metrics, presets
from twoway_fast.evaluation import encode
from twoway_fast.train import Trainer, TrainConfig, build

EPOCHS = 15
# Effective rank of the 16-d test representation after EPOCHS epochs (seed 0): the default form
# measured 11.5, the faithful form 4.3 (it collapses).
RANK_BOUND = 8.0


def trained_rank(faithful: bool) -> float:
    preset = presets.get("digits", faithful=faithful)
    dataset = data.load("digits", data.DataConfig(**preset.data))
    config = TrainConfig(**(preset.train | {"epochs": EPOCHS}))
    model, criterion = build(preset, dataset.dx, dataset.dy, 0)
    Trainer(model, criterion, dataset.train, None, config, None, progress=False).fit()
    zx, _ = encode(model, dataset.test)
    return metrics.effective_rank(zx)


@pytest.mark.parametrize("faithful", [False, True], ids=["default", "faithful"])
def test_default_keeps_the_representation_full_and_faithful_collapses(faithful):
    rank = trained_rank(faithful)
    assert (rank > RANK_BOUND) != faithful, f"effective rank {rank:.2f} of 16 (bound {RANK_BOUND})"
