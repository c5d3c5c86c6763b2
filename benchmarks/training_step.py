"""The training steps the benchmarks compare, built once per (provider, shape, optimiser): forward, the
2-Way loss, backward and the optimiser's update (a Nesterov SGD unless said), on fixed float32 data of
the shape's batch.

providers: "fused" (TwoWayNet(backend="fused")), "reference" (backend="reference", eager),
"compiled_reference" (the reference's forward and loss under torch.compile(fullgraph=True); backward
through the compiled graph, the same optimizer), "compiled_fused" (the same with the fused backend:
the ops without the Python around them), "direct_fused" (twoway_fast.step.direct.DirectStep: the fused
ops and their backward ops called without the autograd engine, the same optimizer) and "gemm_floor"
(the fused step's matrix products alone, on preallocated buffers: 2 (n + 1) forward, 2n input-gradient
and n + 1 weight-gradient GEMMs with K = 2B, and the loss's decorrelation: C = H^T H and dH = H G per
channel at the representation width; the floor a step cannot beat) and "gemm_floor_side_by_side" (the
same products scheduled as the network op schedules them on two threads: one channel a thread, each
product single-threaded, then the weight gradients shared out; benchmarks/gemm_side_by_side.cpp, built
on first use: the floor of a step that runs its channels side by side)."""
from __future__ import annotations

from pathlib import Path

import torch

import twoway_fast
from twoway_fast.heap import keep_freed_memory

keep_freed_memory()  # as `twoway-fast train` does; process-wide, so every provider runs with it

_MNIST = twoway_fast.presets.get("mnist")
SHAPES = {  # (dx, hidden, dy, batch)
    "mnist": (392, [392, 50, 392], 392, 128),  # the paper's mnist architecture
    "wide": (1024, [2000, 3000, 4000], 1024, 128),  # flickr8k's structure at widths two cores can train
    # The mnist preset as users run it, read from the preset so that the benchmark follows its changes.
    "mnist_preset": (392, list(_MNIST.model["hidden"]), 392, _MNIST.train["batch_size"]),
}
# The optimisers, as the presets build them (lr aside): the SGD of the faithful forms, the default Adam.
OPTIMIZERS = {
    "sgd": lambda params: torch.optim.SGD(params, lr=1e-4, momentum=0.9, nesterov=True, fused=True),
    "adam": lambda params: torch.optim.Adam(params, lr=1e-3, fused=True),
    "adamw": lambda params: torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4, fused=True),
}
PROVIDERS = ("fused", "reference", "compiled_reference", "compiled_fused", "direct_fused", "gemm_floor",
             "gemm_floor_side_by_side")


def make_step(provider: str, shape: str, optimizer: str = "sgd"):
    """A no-argument callable running one training step. "direct_fused_unfused_update": DirectStep with
    the optimiser's own update after the gradients op (as for an optimiser no op stands for);
    "direct_fused_bf16": DirectStep with the network's products in bfloat16 (train.precision "bf16");
    "gemm_floor_bf16": the floor's products on bfloat16 operands."""
    dx, hidden, dy, batch = SHAPES[shape]
    torch.manual_seed(0)
    x, y = torch.randn(batch, dx), torch.randn(batch, dy)
    preset = twoway_fast.presets.get("flickr8k" if shape == "wide" else "mnist")  # the default (tuned) form
    if provider.startswith("gemm_floor"):
        # The preset may leave repr_layer unset (the middle position): the model resolves it.
        repr_width = hidden[preset.build_model(dx, dy, hidden=hidden).repr_layer]
        if provider == "gemm_floor_side_by_side":
            return _gemm_floor_side_by_side(x, y, hidden, repr_width)
        low = provider == "gemm_floor_bf16"
        return _gemm_floor(*(x.bfloat16(), y.bfloat16()) if low else (x, y), hidden, repr_width)
    model = preset.build_model(dx, dy, hidden=hidden, backend="reference" if "reference" in provider else "fused")
    criterion = preset.build_loss(model)
    opt = OPTIMIZERS[optimizer](model.parameters())
    seed = torch.tensor(1)
    if provider.startswith("direct_fused"):
        from twoway_fast.step.direct import DirectStep

        direct = DirectStep(model, criterion, opt,
                            products=torch.bfloat16 if provider == "direct_fused_bf16" else None)
        if provider == "direct_fused_unfused_update":
            direct.fused_update = lambda: None
        return lambda: direct(x, y, seed)

    def loss(x, y, seed):
        return criterion(model(x, y, seed=seed), x, y).total

    if provider.startswith("compiled"):
        loss = torch.compile(loss, fullgraph=True)

    def step():
        opt.zero_grad(set_to_none=True)
        loss(x, y, seed).backward()
        opt.step()

    return step


def _gemm_floor(x: torch.Tensor, y: torch.Tensor, hidden: list[int], repr_width: int):
    batch, dtype = x.shape[0], x.dtype  # the network's operands in x's dtype
    sizes = [x.shape[1], *hidden, y.shape[1]]
    n = len(hidden)
    h = torch.randn(batch, repr_width)  # the loss's products stay float32
    cov = torch.empty(repr_width, repr_width)
    dh = torch.empty(batch, repr_width)
    weights = [(torch.randn(sizes[k + 1], sizes[k]) * 0.01).to(dtype) for k in range(n + 1)]
    acts = [torch.empty(batch, s, dtype=dtype) for s in sizes]  # one buffer per width, reused by both channels
    grads = [torch.empty(batch, s, dtype=dtype) for s in sizes]
    p = [torch.randn(2 * batch, sizes[k + 1], dtype=dtype) for k in range(n + 1)]
    q = [torch.randn(2 * batch, sizes[k], dtype=dtype) for k in range(n + 1)]
    dw = [torch.empty_like(w) for w in weights]

    def step():
        a = x
        for k in range(n + 1):  # X channel forward
            a = torch.mm(a, weights[k].T, out=acts[k + 1])
        a = y
        for k in range(n, -1, -1):  # Y channel forward
            a = torch.mm(a, weights[k], out=acts[k])
        for k in range(n, 0, -1):  # X channel input gradients
            torch.mm(p[k][:batch], weights[k], out=grads[k])
        for k in range(n):  # Y channel input gradients
            torch.mm(q[k][batch:], weights[k].T, out=grads[k + 1])
        for k in range(n + 1):  # both channels' weight gradients, K = 2B
            torch.mm(p[k].T, q[k], out=dw[k])
        for _ in range(2):  # the decorrelation of each channel: C, then the gradient H G
            torch.mm(h.T, h, out=cov)
            torch.mm(h, cov, out=dh)

    return step


def _gemm_floor_side_by_side(x: torch.Tensor, y: torch.Tensor, hidden: list[int], repr_width: int):
    from torch.utils.cpp_extension import load

    batch = x.shape[0]
    here = Path(__file__).parent
    ext = load("twoway_gemm_side_by_side", [str(here / "gemm_side_by_side.cpp")],
               extra_include_paths=[str(here.parent / "csrc")], extra_cflags=["-O2", "-fopenmp"],
               extra_ldflags=["-fopenmp"])
    sizes = [x.shape[1], *hidden, y.shape[1]]
    n = len(hidden)
    weights = [torch.randn(sizes[k + 1], sizes[k]) * 0.01 for k in range(n + 1)]
    acts = [[torch.empty(batch, s) for s in sizes] for _ in range(2)]  # the channels write at once: one set each
    grads = [[torch.empty(batch, s) for s in sizes] for _ in range(2)]
    p = [torch.randn(2 * batch, sizes[k + 1]) for k in range(n + 1)]
    q = [torch.randn(2 * batch, sizes[k]) for k in range(n + 1)]
    dw = [torch.empty_like(w) for w in weights]
    h = [torch.randn(batch, repr_width) for _ in range(2)]
    cov = [torch.empty(repr_width, repr_width) for _ in range(2)]
    dh = [torch.empty(batch, repr_width) for _ in range(2)]
    return lambda: ext.step(x, y, weights, acts, grads, p, q, dw, h, cov, dh)
