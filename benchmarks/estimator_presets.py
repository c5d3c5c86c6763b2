"""Which preset the scikit-learn estimator should start from on small data: TwoWayEstimator fitted with
each preset on the first 80% of the rows, scored (the CCA protocol, `score`) and its effective rank
measured on the last 20%, with the wall time of the fit.

    .venv/bin/python benchmarks/estimator_presets.py [--mnist MNIST_DIR] [--rows 5000]
        [--presets mnist digits] [--threads 1] [--seed 0]

Sets: scikit-learn's digits (1797 rows, left and right 4 columns, 16-d code) and, with --mnist, the
first --rows MNIST training images (left and right halves, pixels in [0, 1], 50-d code). Each fit is
the estimator as a user calls it: TwoWayEstimator(preset=P, n_components=k, random_state=seed).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from twoway_fast import TwoWayEstimator, metrics
from twoway_fast.data import load_digits, load_mnist_dir


def small_sets(mnist: str | None, rows: int) -> dict[str, tuple[np.ndarray, np.ndarray, int]]:
    digits = load_digits().splits["all"]
    sets = {"digits": (digits.x.astype(np.float64), digits.y.astype(np.float64), 16)}
    if mnist:
        train = load_mnist_dir(mnist).splits["train"]
        sets[f"mnist {rows}"] = (train.x[:rows].astype(np.float64), train.y[:rows].astype(np.float64), 50)
    return sets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mnist", help="a folder of MNIST IDX files (adds the MNIST set)")
    parser.add_argument("--rows", type=int, default=5000, help="MNIST training images to use")
    parser.add_argument("--presets", nargs="+", default=["mnist", "digits"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for name, (x, y, k) in small_sets(args.mnist, args.rows).items():
        fit = int(len(x) * 0.8)
        for preset in args.presets:
            start = time.perf_counter()
            estimator = TwoWayEstimator(preset=preset, n_components=k, random_state=args.seed).fit(x[:fit], y[:fit])
            seconds = time.perf_counter() - start
            zx = estimator.transform(x[fit:])
            print(f"{name:>12}  preset {preset:<8} CCA protocol {estimator.score(x[fit:], y[fit:]):6.2f}  "
                  f"effective rank {metrics.effective_rank(zx):5.1f} of {k}  fit {seconds:6.1f} s", flush=True)


if __name__ == "__main__":
    main()
