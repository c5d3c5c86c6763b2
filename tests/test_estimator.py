import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from twoway_fast import TwoWayEstimator

FAST = dict(hidden=[8, 4, 8], epochs=1)
# Like sklearn's CCA (which sklearn's checks exempt by name): fit_transform(X, y) returns both views'
# representations, transform(X) only X's.
EXPECTED_FAILURES = {"check_transformer_general": "fit_transform(X, y) returns (X's, y's) like sklearn's CCA",
                     "check_transformer_data_not_an_array": "fit_transform(X, y) returns (X's, y's) like CCA"}


@parametrize_with_checks([TwoWayEstimator(**FAST)], expected_failed_checks=lambda e: EXPECTED_FAILURES)
def test_sklearn_checks(estimator, check):
    check(estimator)


def two_views(n=300, seed=0):
    """Two nonlinear views of 3 shared latent variables (fixed maps, samples drawn with `seed`)."""
    maps = np.random.default_rng(123)
    ax, ay = maps.normal(size=(3, 10)), maps.normal(size=(3, 6))
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 3))
    x = np.tanh(z @ ax) + 0.1 * rng.normal(size=(n, 10))
    y = np.abs(z @ ay) + 0.1 * rng.normal(size=(n, 6))
    return x.astype(np.float32), y.astype(np.float32)


def test_fit_transform_score():
    x, y = two_views()
    est = TwoWayEstimator(hidden=[32, 4, 32], epochs=30, lr=1e-3, optimizer="Adam", batch_size=32)
    zx, zy = est.fit_transform(x, y)
    assert zx.shape == zy.shape == (300, 4) and zx.dtype == np.float32
    np.testing.assert_array_equal(est.transform(x), zx)
    held_out = two_views(seed=1)
    untrained = TwoWayEstimator(hidden=[32, 4, 32], epochs=1, lr=1e-9, batch_size=32).fit(x, y)
    assert est.score(*held_out) > untrained.score(*held_out) + 0.5  # learnt the shared directions
    with pytest.raises(ValueError, match="y has 5 features"):
        est.transform(x, y[:, :5])
    with pytest.raises(ValueError, match="requires y to be passed"):
        clone(est).fit(x, None)


def test_pipeline_and_grid_search():
    x, y = two_views(200)
    pipe = make_pipeline(StandardScaler(), TwoWayEstimator(hidden=[16, 4, 16], epochs=3, batch_size=50))
    pipe.fit(x, y)
    assert pipe.transform(x).shape == (200, 4)
    search = GridSearchCV(TwoWayEstimator(hidden=[16, 4, 16], epochs=3, batch_size=50), {"lh": [0.5, 2.0]}, cv=2)
    search.fit(x, y)
    assert search.best_params_["lh"] in (0.5, 2.0) and np.isfinite(search.best_score_)


def test_random_state_none_generator_and_bad_values():
    x, y = two_views(60)
    fixed = [TwoWayEstimator(**FAST, random_state=3).fit(x, y).transform(x) for _ in range(2)]
    np.testing.assert_array_equal(*fixed)  # an int seeds every fit alike
    fresh = [TwoWayEstimator(**FAST, random_state=None).fit(x, y).transform(x) for _ in range(2)]
    assert not np.array_equal(*fresh)  # None: a fresh seed each fit, as in scikit-learn
    drawn = [TwoWayEstimator(**FAST, random_state=np.random.RandomState(5)).fit(x, y).transform(x)
             for _ in range(2)]
    np.testing.assert_array_equal(*drawn)  # the same RandomState state: the same seed drawn
    TwoWayEstimator(**FAST, random_state=np.random.default_rng(1)).fit(x, y)
    with pytest.raises(ValueError, match="random_state must be an int, None or a numpy RandomState"):
        TwoWayEstimator(**FAST, random_state="seven").fit(x, y)
