"""Plots a reader can use: every axis labelled, the split named, the loss drawn as the weighted terms
whose sum is the total, training and validation each said how they are measured, the spectrum against
linear CCA's, and reconstructions with a seam between the real and the reconstructed half."""
import numpy as np
import pytest

from twoway_fast import data, plots, presets
from twoway_fast.loss_terms import COEFFICIENT_OF
from twoway_fast.evaluation import encode, fit_projection
from twoway_fast.train import Trainer, TrainConfig, build


@pytest.fixture(scope="module")
def figures(tmp_path_factory):
    """Every figure of a short digits run, captured as drawn (name -> Figure)."""
    digits = data.load("digits", data.DataConfig(preprocess="l2_rows"))
    preset = presets.resolve("digits", overrides=["model.hidden=[32,8,32]", "train.epochs=3"])
    config = TrainConfig(**preset.train)
    model, criterion = build(preset, digits.dx, digits.dy, config.seed)
    log = Trainer(model, criterion, digits.train, digits.val, config, None, progress=False).fit()
    drawn = {}
    original = plots._save
    plots._save = lambda fig, path: (drawn.__setitem__(path.name, fig), original(fig, path))
    try:
        out = tmp_path_factory.mktemp("plots")
        written = plots.write_all(out, model, digits, log, *encode(model, digits.test), fit_projection(model, digits),
                                  criterion.coefficients)
    finally:
        plots._save = original
    assert sorted(p.name for p in written) == sorted(plots.FILES) and all(p.stat().st_size for p in written)
    return drawn, log, criterion.coefficients


def test_every_axis_is_labelled_and_every_figure_names_its_split(figures):
    drawn, _, _ = figures
    for name, fig in drawn.items():
        axes = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
        titles = " ".join([fig._suptitle.get_text() if fig._suptitle else ""] + [ax.get_title() for ax in axes])
        assert "split" in titles, name
        for ax in axes:
            assert ax.get_xlabel() and (ax.get_ylabel() or ax.get_yticklabels()), (name, ax.get_title())


def test_loss_is_the_stack_of_weighted_terms_and_says_how_each_side_is_measured(figures):
    drawn, log, coefficients = figures
    train, val = drawn[plots.LOSS_PNG].axes
    assert "training mode" in train.get_title() and "eval mode" in val.get_title()
    assert "coefficient x term" in train.get_ylabel()
    # The stack's top edge is the total the optimiser saw, for both.
    for ax, part in ((train, "train"), (val, "val")):
        top = ax.collections[-1].get_paths()[0].vertices[:, 1].max()
        assert top == pytest.approx(max(row[part]["total"] for row in log), rel=1e-6)
    # Each weighted term has its band; a term weighted 0 (the preset's lxy) has none.
    labels = " ".join(t.get_text() for t in val.get_legend().get_texts())
    for term, coefficient in COEFFICIENT_OF.items():
        assert (f" x {term} (" in labels) == (coefficients[coefficient] != 0), term
    assert coefficients["lxy"] == 0


def test_spectrum_is_sorted_against_linear_cca(figures):
    drawn, _, _ = figures
    lines = drawn[plots.SPECTRUM_PNG].axes[0].get_lines()
    assert [line.get_label().split(" (")[0] for line in lines] == [
        "2-Way Net, CCA protocol", "2-Way Net, raw dimensions paired", "linear CCA on the views"]
    for line in lines:
        values = line.get_ydata()
        assert np.all(np.diff(values) <= 0)  # largest first


def test_reconstructions_have_a_seam_and_their_own_contrast(figures):
    drawn, _, _ = figures
    mosaic = drawn[plots.RECON_PNG].axes[0].get_images()[0].get_array()
    red = np.all(np.isclose(mosaic, plots.SEAM), axis=2)
    assert red.any(axis=0).sum() >= 8  # a seam column in every image of the reconstructed rows
    grey = mosaic[..., 0][~red]
    assert grey.min() == 0 and grey.max() == 1  # each half stretched over its own range


def test_a_term_below_zero_goes_down_from_zero_and_the_rest_stack_to_the_total(tmp_path, monkeypatch):
    """The uniformity's log is negative: its band hangs from 0, the positive bands stack up from 0, and
    the dashed total is the top edge less that band's depth."""
    coefficients = {c: 0.0 for c in COEFFICIENT_OF.values()} | {"lx": 1.0, "lh": 2.0, "lu": 3.0}
    log = []
    for epoch in (1, 2, 3):
        terms = {t: 0.0 for t in COEFFICIENT_OF} | {"recon_x": 10.0 / epoch, "midway": 4.0 - epoch,
                                                   "uniform_x": -2.0 - epoch, "uniform_y": -1.0}
        terms["total"] = sum(coefficients[COEFFICIENT_OF[t]] * v for t, v in terms.items())
        log.append({"epoch": epoch, "train": terms, "val": dict(terms)})
    drawn = {}
    monkeypatch.setattr(plots, "_save", lambda fig, path: drawn.__setitem__(path.name, fig))
    plots.plot_losses(log, coefficients, tmp_path / plots.LOSS_PNG)
    for ax in drawn[plots.LOSS_PNG].axes:
        bands = {c.get_label(): c.get_paths()[0].vertices[:, 1] for c in ax.collections}
        down = [bands[f"lu x uniform_{v} (3)"] for v in "xy"]
        assert max(b.max() for b in down) == 0  # both hang from 0
        assert min(b.min() for b in down) == pytest.approx(3 * (-3.0 - 1.0 - 2.0))  # stacked on each other
        up = [bands["lx x recon_x (1)"], bands["lh x midway (2)"]]
        assert min(b.min() for b in up) == 0 and max(b.max() for b in up) == pytest.approx(10 + 2 * 3)
        total = [line for line in ax.get_lines() if line.get_label() == "total"][0].get_ydata()
        assert list(total) == pytest.approx([row["val"]["total"] for row in log])
        assert total[0] == pytest.approx(10 + 2 * 3 - 3 * (3 + 1))
