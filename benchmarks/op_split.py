"""Where the fused mnist step's time goes, op by op: the network op's forward and backward called
directly (no autograd) against their GEMMs alone on the same shapes, then the module-level pieces
(model forward with autograd, the loss, forward + backward, the optimizer step). Minimum of rounds:
    python benchmarks/op_split.py [rounds] [threads]"""
import sys
import time

import torch

import twoway_fast
import twoway_fast.ops  # noqa: F401  (loads the compiled ops: torch.ops.twoway_fast below)
from twoway_fast.reference import rng_states

BATCH, DX, HIDDEN, DY = 128, 392, [392, 50, 392], 392  # the mnist preset


def best_ms(f, rounds: int) -> float:
    f()
    f()
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t)
    return best * 1e3


def main(rounds: int) -> None:
    torch.manual_seed(0)
    x, y = torch.randn(BATCH, DX), torch.randn(BATCH, DY)
    preset = twoway_fast.presets.get("mnist")
    model = preset.build_model(DX, DY, hidden=HIDDEN, repr_affine=True, backend="fused")  # as training_step.py
    criterion = preset.build_loss(model)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, nesterov=True, fused=True)
    seed = torch.tensor(1)
    n, repr_layer = len(HIDDEN), model.repr_layer
    bns = [*model.bn_x, *model.bn_y]
    w = [p.detach() for p in model.weights]
    gamma, beta = [b.gamma.detach() for b in bns], [b.beta.detach() for b in bns]
    bias = [p.detach() for p in [*model.x_bias, *model.y_bias]]
    states = rng_states(seed, n)
    net_args = (x, y, w, bias, gamma, beta, states, model.dropout, repr_layer, model.leaks, model.bn_eps,
                model.act_first)
    times = {}
    with torch.no_grad():
        out = torch.ops.twoway_fast.twoway_net.default(*net_args)
        z, mean, std = out[6:]
        g_hat = [torch.randn_like(x), torch.randn_like(y)]
        g_h = torch.randn_like(out[2])
        backward_args = (*g_hat, g_h, -g_h, g_h, -g_h, x, y, w, gamma, beta, states, model.dropout, repr_layer,
                         model.leaks, model.act_first, z, mean, std, False)
        times["network op forward"] = best_ms(lambda: torch.ops.twoway_fast.twoway_net.default(*net_args), rounds)
        times["network op backward"] = best_ms(
            lambda: torch.ops.twoway_fast.twoway_net_backward.default(*backward_args), rounds)
        wide, narrow = torch.randn(BATCH, HIDDEN[0]), torch.randn(BATCH, HIDDEN[1])
        p_wide, q_wide, p_narrow = torch.randn(2 * BATCH, DX), torch.randn(2 * BATCH, DX), torch.randn(2 * BATCH, 50)

        def forward_gemms():  # per channel: 392 -> 392 -> 50 -> 392 -> 392
            for _ in range(2):
                x @ w[0].T, wide @ w[1].T, narrow @ w[2].T, wide @ w[3].T

        def backward_gemms():  # per channel three input gradients (none at the input), then the K = 2B dW
            for _ in range(2):
                wide @ w[3], wide @ w[2], narrow @ w[1]
            p_wide.T @ q_wide, p_narrow.T @ q_wide, p_wide.T @ p_narrow, p_wide.T @ q_wide

        times["its forward GEMMs alone"] = best_ms(forward_gemms, rounds)
        times["its backward GEMMs alone"] = best_ms(backward_gemms, rounds)
    times["model forward (autograd)"] = best_ms(lambda: model(x, y, seed=seed), rounds)
    out = model(x, y, seed=seed)
    times["loss forward"] = best_ms(lambda: criterion(out, x, y), rounds)

    def forward_backward():
        opt.zero_grad(set_to_none=True)
        criterion(model(x, y, seed=seed), x, y).total.backward()

    times["forward + backward"] = best_ms(forward_backward, rounds)
    times["optimizer step"] = best_ms(opt.step, rounds)
    print(f"{torch.get_num_threads()} threads, min of {rounds} rounds")
    for name, ms in times.items():
        print(f"  {name:28s} {ms:7.3f} ms")


if __name__ == "__main__":
    if len(sys.argv) > 2:
        torch.set_num_threads(int(sys.argv[2]))
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 300)
