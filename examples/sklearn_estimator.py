"""twoway_fast.TwoWayEstimator in a scikit-learn workflow: link the top and bottom halves of the
digits images, then use the shared representation of the top half alone to classify the digit.

Run: python examples/sklearn_estimator.py [--epochs 20]
"""
import argparse

from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from twoway_fast import TwoWayEstimator


def main(epochs: int) -> float:
    digits = load_digits()
    top, bottom = digits.images[:, :4].reshape(-1, 32), digits.images[:, 4:].reshape(-1, 32)
    top_train, top_test, bottom_train, bottom_test, label_train, label_test = train_test_split(
        top / 16, bottom / 16, digits.target, test_size=0.25, random_state=0)

    # The digits preset's tuned settings; any of them can be set here (hidden, lh, lc, lr, ...).
    net = TwoWayEstimator(preset="digits", epochs=epochs, random_state=0)
    net.fit(top_train, bottom_train)
    # score: the CCA protocol (canonical correlations summed), which a collapsed representation cannot fake.
    print(f"CCA protocol on held-out pairs: {net.score(top_test, bottom_test):.2f} of {net.n_components_} "
          f"(best of {len(net.log_)} epochs on an internal validation split: epoch {net.best_epoch_})")

    # One view is enough to reach the shared space: the top half alone, encoded, predicts the digit.
    classifier = LogisticRegression(max_iter=2000).fit(net.transform(top_train), label_train)
    accuracy = classifier.score(net.transform(top_test), label_test)
    print(f"digit from the top half's representation: {accuracy:.0%} accuracy")
    return accuracy


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20, help="training epochs")
    main(parser.parse_args().epochs)
