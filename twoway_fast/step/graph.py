"""A training step captured in a CUDA graph and replayed (TrainConfig.cuda_graph): forward, loss,
backward and the optimiser update of one batch become one graph launch, so a small network's step is no
longer bound by launching a few hundred kernels from Python.

Every op of a step must stay on the device for this (no host reads: the dropout seed, masks and the
loss terms are device tensors). What a graph fixes at capture: the batch shape, the tensors it reads
(the parameters, gradients and optimiser state, updated in place) and the learning rates, Python
numbers; the step is captured anew when a scheduler changes one."""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ..types import LossTerms

Step = Callable[[Tensor, Tensor, Tensor], LossTerms]  # (x, y, seed) -> terms, after one optimiser update


class CapturedStep:
    """Wraps an eager training step (x, y, seed) -> LossTerms. The first `warmup` calls run it eagerly
    on a side stream (real steps; they create the cuBLAS handles, autograd state and optimiser state
    a capture must find in place); the next call captures it once, and every call after that copies
    its inputs into the graph's static ones and replays the graph. The terms returned are the graph's
    own output tensors: read them before the next call."""

    def __init__(self, step: Step, optimizer: torch.optim.Optimizer, warmup: int = 3):
        self.step, self.optimizer, self.warmup = step, optimizer, warmup
        for group in optimizer.param_groups:  # Adam and kin: step counts on the device, as replays need
            if "capturable" in group:
                group["capturable"] = True
        self.eager_calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.captured_for: tuple | None = None  # (x shape, y shape, learning rates) of the graph
        self.inputs: list[Tensor] = []
        self.terms: LossTerms | None = None

    def __call__(self, x: Tensor, y: Tensor, seed: Tensor) -> LossTerms:
        if x.device.type != "cuda":
            raise ValueError(f"a CUDA-graph step needs the data on a CUDA device, got {x.device}")
        if self.eager_calls < self.warmup:
            self.eager_calls += 1
            side = torch.cuda.Stream(x.device)
            side.wait_stream(torch.cuda.current_stream(x.device))
            with torch.cuda.stream(side):
                terms = self.step(x, y, seed)
            torch.cuda.current_stream(x.device).wait_stream(side)
            return terms
        key = (x.shape, y.shape, tuple(group["lr"] for group in self.optimizer.param_groups))
        if key != self.captured_for:
            self._capture(x, y, seed)
            self.captured_for = key
        for static, value in zip(self.inputs, (x, y, seed)):
            static.copy_(value)
        self.graph.replay()
        return self.terms

    def _capture(self, x: Tensor, y: Tensor, seed: Tensor) -> None:
        self.graph = self.terms = None  # the previous graph's memory goes back to the allocator
        self.inputs = [x.clone(), y.clone(), torch.as_tensor(seed, dtype=torch.int64).to(x.device).clone()]
        # Gradients as None: the captured backward allocates them in the graph's pool and assigns,
        # so every replay writes them afresh (no accumulation across replays).
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            terms = self.step(*self.inputs)
        self.graph, self.terms = graph, terms
