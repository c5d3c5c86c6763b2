"""A quick end-to-end run: a 2-Way Net on the left/right halves of scikit-learn's 8x8 digits."""
from __future__ import annotations

import torch
from sklearn.datasets import load_digits

from . import TwoWayLoss, TwoWayNet
from .metrics import total_correlation


def digit_halves() -> tuple[torch.Tensor, torch.Tensor]:
    """Each 8x8 image flattened column-major (SPEC section 4): left 4 columns = X, right 4 = Y."""
    images = torch.tensor(load_digits().images, dtype=torch.float32)  # (1797, 8, 8), values 0..16
    columns = images.transpose(1, 2).reshape(len(images), 64)
    return columns[:, :32], columns[:, 32:]


def main(epochs: int = 30, seed: int = 0) -> None:
    torch.manual_seed(seed)
    x, y = digit_halves()
    order = torch.randperm(len(x))
    train, test = order[:1500], order[1500:]
    mean_x, std_x = x[train].mean(0), x[train].std(0) + 1e-3  # standardise on the training split only
    mean_y, std_y = y[train].mean(0), y[train].std(0) + 1e-3
    x, y = (x - mean_x) / std_x, (y - mean_y) / std_y
    model = TwoWayNet(32, 32, [64, 16, 64], dropout=[0.2, 0.0, 0.2], bn_eps=1e-5, backend="reference")
    criterion = TwoWayLoss(model, lh=2.0, lc=2.0, decorrelation="correlation", decorrelation_input="before_dropout")
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, nesterov=True)
    for epoch in range(1, epochs + 1):
        model.train()
        total, batches = 0.0, 0
        for batch in train[torch.randperm(len(train))].split(128):
            if len(batch) < 128:
                continue  # incomplete last batch dropped, as in the original
            terms = criterion(model(x[batch], y[batch]), x[batch], y[batch])
            opt.zero_grad()
            terms.total.backward()
            opt.step()
            total, batches = total + terms.total.item(), batches + 1
        if epoch == 1 or epoch % 5 == 0:
            model.eval()
            with torch.no_grad():
                corr = total_correlation(model.encode_x(x[test]), model.encode_y(y[test]))
            print(f"epoch {epoch:3d}  train loss {total / batches:8.3f}  test total correlation {corr:6.2f} / 16")


if __name__ == "__main__":
    main()
