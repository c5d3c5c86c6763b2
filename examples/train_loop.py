"""A 2-Way Net trained with a plain PyTorch loop on the digits halves, then evaluated.

The preset gives the tuned settings (model, loss, optimiser, preprocessing); the loop is yours to
change. Run: python examples/train_loop.py [--epochs 30]
"""
import argparse

import torch

from twoway_fast import data, presets
from twoway_fast.config import TrainConfig
from twoway_fast.evaluation import evaluate
from twoway_fast.train import make_optimizer


def main(epochs: int) -> dict:
    torch.manual_seed(0)
    preset = presets.get("digits")  # 8x8 digits: left 4 columns -> right 4 columns, 16-d representation
    dataset = data.load("digits", data.DataConfig(**preset.data))  # splits, preprocessing fitted on train
    model = preset.build_model(dataset.dx, dataset.dy)
    criterion = preset.build_loss(model)
    config = TrainConfig(**preset.train)
    optimizer = make_optimizer(model.parameters(), config)
    generator = torch.Generator().manual_seed(0)

    for epoch in range(epochs):
        model.train()
        for index in data.batches(len(dataset.train), config.batch_size, generator, torch.device("cpu")):
            x, y = dataset.train.rows(index)
            terms = criterion(model(x, y), x, y)  # terms.total and each term by name
            optimizer.zero_grad()
            terms.total.backward()
            optimizer.step()
        print(f"epoch {epoch + 1}: loss {terms.total.item():.3f} (mid-way {terms.midway.item():.3f})")

    results = evaluate(model, dataset, "test")  # eval mode inside
    print(f"test: total correlation {results['total_correlation']:.2f}, CCA protocol "
          f"{results['cca_correlation']:.2f}, effective rank {results['effective_rank']:.1f} of {results['dims']}, "
          f"R@1 {results['x2y']['r1']:.0f}% / {results['y2x']['r1']:.0f}%")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30, help="training epochs")
    main(parser.parse_args().epochs)
