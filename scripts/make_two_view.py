"""Writes a synthetic two-view data set with a known shared structure, as an .npz of x and y:
k shared latent variables z, and per view k private ones; each view is a fixed random nonlinear map of
(z, its private variables) plus noise (x: tanh of a linear map; y: a rectified linear map), so
the best possible representation carries exactly k correlated directions, which a linear CCA can only
partly recover.

    python scripts/make_two_view.py OUT.npz [--rows 20000] [--k 10] [--dx 100] [--dy 80] [--noise 0.5]

Then: `twoway-fast train --preset mnist --data OUT.npz --set model.hidden=[256,10,256] ...`.
"""
import argparse

import numpy as np


def two_view(rows: int, k: int, dx: int, dy: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(rows, k))
    views = []
    for width, f in ((dx, np.tanh), (dy, lambda t: np.maximum(t, 0.0))):
        private = rng.normal(size=(rows, k))
        mix = 2 * rng.normal(size=(2 * k, width)) / np.sqrt(2 * k)  # scale 2: tanh saturates
        views.append(f(np.hstack([z, private]) @ mix) + noise * rng.normal(size=(rows, width)))
    return views[0].astype(np.float32), views[1].astype(np.float32)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--rows", type=int, default=20000)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--dx", type=int, default=100)
    p.add_argument("--dy", type=int, default=80)
    p.add_argument("--noise", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    x, y = two_view(a.rows, a.k, a.dx, a.dy, a.noise, a.seed)
    np.savez(a.out, x=x, y=y)
    print(f"{a.out}: x {x.shape}, y {y.shape}, {a.k} shared directions")


if __name__ == "__main__":
    main()
