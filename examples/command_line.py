"""The command line's whole workflow from Python: train on your own arrays, evaluate, embed a split,
encode new rows of one view, and compare with linear CCA. Each call is the same as `twoway-fast ...`
in a shell.

Run: python examples/command_line.py [--epochs 30] [--out runs/example]
"""
import argparse
import json
from pathlib import Path

import numpy as np

from twoway_fast.cli import main as twoway_fast


def make_two_views(path: Path, rows: int = 2000, shared: int = 4, seed: int = 0) -> None:
    """Two noisy 20-d views of the same `shared` hidden directions, saved as an .npz with arrays x and y."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((rows, shared))
    x = z @ rng.standard_normal((shared, 20)) + 0.5 * rng.standard_normal((rows, 20))
    y = np.tanh(z @ rng.standard_normal((shared, 20))) + 0.5 * rng.standard_normal((rows, 20))
    np.savez(path, x=x.astype(np.float32), y=y.astype(np.float32))


def main(epochs: int, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    views = out / "views.npz"
    make_two_views(views)
    run = out / "run"
    common = ["--device", "cpu", "--threads", "1"]
    # The digits preset's settings, resized for 20-d views with a 4-d representation.
    assert twoway_fast(["train", "--preset", "digits", "--data", str(views), "--out", str(run),
                        "--epochs", str(epochs), "--set", "model.hidden=[64,4,64]",
                        "--set", "data.preprocess=standardize", "--no-progress", *common]) == 0
    assert twoway_fast(["eval", str(run), "--split", "val", "--json", *common]) == 0
    assert twoway_fast(["embed", str(run), "--split", "test", "--out", str(out / "test.npz"), *common]) == 0
    # New rows of one view alone, through the standardisation the run fitted on its training split.
    np.save(out / "new_x.npy", np.random.default_rng(1).standard_normal((5, 20)).astype(np.float32))
    assert twoway_fast(["encode", str(run), "--x", str(out / "new_x.npy"), "--out", str(out / "new.npz"), *common]) == 0
    assert twoway_fast(["cca", "--data", str(views), "--dims", "4", "--set", "data.preprocess=standardize",
                        *common]) == 0
    with np.load(out / "test.npz") as z:
        print(f"test representations: x {z['x'].shape}, y {z['y'].shape}")
    return json.loads((run / "eval.json").read_text())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30, help="training epochs")
    parser.add_argument("--out", type=Path, default=Path("runs/example"), help="folder for the data and the run")
    args = parser.parse_args()
    main(args.epochs, args.out)
