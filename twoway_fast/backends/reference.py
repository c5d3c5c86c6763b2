"""The reference backend: TwoWayNet's training forward and TwoWayLoss computed by the plain-PyTorch
oracle (twoway_fast/reference.py), and what runs on it in every backend: eval mode, encoding, and the
layers the synced backend walks (synced.py). The one production module that imports the oracle."""
from __future__ import annotations

from .. import reference as oracle

# (net, x, y, seed, first_row) -> (TwoWayOutput, batch statistics); seed=None is eval mode.
forward = oracle.forward
# (out, x, y, weights, gammas, **coefficients and variant) -> LossTerms
loss = oracle.loss
# (net, a, channel) -> the eval-mode representation of one view
encode = oracle.encode


def predict(net, a, channel: str):
    """The eval-mode output of one channel: x -> y_hat (channel "x") or y -> x_hat ("y")."""
    return oracle._channel(net, a, channel, None)[0]
# The pieces of a network walk (synced.py's, with statistics over several processes).
tied_linear = oracle.tied_linear
hidden_block_with_stats = oracle.hidden_block_with_stats
# The uniformity term of rows (synced.py's, of every rank's rows).
uniformity = oracle.uniformity
