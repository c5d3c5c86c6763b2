"""Writes an MNIST-format data set (IDX files) built from scikit-learn's digits, for machines that
cannot download MNIST: each 8x8 digit is upscaled to 28x28 (20x20 content in a 28x28 frame, as MNIST)
with a random rotation, scale and shift, so every image is distinct.

    python scripts/make_mnist_like.py OUT_DIR [--train 20000] [--test 5000] [--seed 0]

The result works wherever MNIST does: `twoway-fast train --preset mnist --data OUT_DIR`.
"""
import argparse
from pathlib import Path

import numpy as np
from scipy import ndimage
from sklearn.datasets import load_digits

from twoway_fast.data.idx import write_idx


def render(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    big = ndimage.zoom(digit / 16.0, 20 / 8, order=1)  # 20x20, like MNIST's digit box
    big = ndimage.rotate(big, rng.uniform(-15, 15), reshape=False, order=1)
    big = ndimage.zoom(big, rng.uniform(0.9, 1.1), order=1)[:20, :20]
    frame = np.zeros((28, 28))
    dy, dx = rng.integers(2, 28 - big.shape[0] - 1), rng.integers(2, 28 - big.shape[1] - 1)
    frame[dy:dy + big.shape[0], dx:dx + big.shape[1]] = big
    return np.clip(frame * 255, 0, 255).astype(np.uint8)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--train", type=int, default=20000)
    p.add_argument("--test", type=int, default=5000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    digits = load_digits().images
    rng = np.random.default_rng(args.seed)
    # disjoint source digits for train and test, so test images are not variants of training ones
    order = rng.permutation(len(digits))
    sources = {"train": order[: int(0.8 * len(order))], "t10k": order[int(0.8 * len(order)):]}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", args.train), ("t10k", args.test)):
        picks = rng.choice(sources[name], n)
        images = np.stack([render(digits[i], rng) for i in picks])
        write_idx(out / f"{name}-images-idx3-ubyte.gz", images)
        print(f"{out}/{name}-images-idx3-ubyte.gz: {images.shape}")


if __name__ == "__main__":
    main()
