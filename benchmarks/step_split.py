"""Where the direct training step's time goes (twoway_fast.step.direct.DirectStep, mnist preset, the
benchmark's step of training_step.py): the step itself runs, with its op calls and the optimiser step
wrapped so that each records when it starts and ends; the pieces are the calls and the Python between
them. Minimum and median of rounds per piece, in ms (the wrappers add about a microsecond a call,
counted in the piece before the call). By default the step as the Trainer runs it with SGD (one
twoway_sgd_step call); `adam` with Adam (one twoway_adam_step call); `optimizer` forces the path of
every other optimiser (twoway_step_gradients, then SGD's optimizer.step()):
    python benchmarks/step_split.py [rounds] [threads] [sgd|adam|optimizer]"""
import inspect
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from training_step import make_step  # noqa: E402

# The pieces, in the order of DirectStep.__call__; each op piece is one call, the others what lies
# between two calls.
PIECES = {"sgd": ("checks, seed, optimiser settings", "twoway_sgd_step op", "gradients, running stats, return"),
          "adam": ("checks, seed, optimiser settings", "twoway_adam_step op", "gradients, running stats, return"),
          "optimizer": ("checks, seed, settings, zero_grad", "twoway_step_gradients op",
                        "gradients, running statistics", "optimizer.step", "(return)")}
OPS = ("twoway_step_gradients", "twoway_sgd_step", "twoway_adam_step")


class Stamped:
    """Stands for a callable; appends perf_counter() to `stamps` before and after each call."""

    def __init__(self, f, stamps: list):
        self.f, self.stamps = f, stamps

    def __call__(self, *args, **kwargs):
        self.stamps.append(time.perf_counter())
        try:
            return self.f(*args, **kwargs)
        finally:
            self.stamps.append(time.perf_counter())


class StampedPacket:
    """Stands for an op packet in torch.ops.twoway_fast: its .default stamped."""

    def __init__(self, packet, stamps: list):
        self.default = Stamped(packet.default, stamps)


def main(rounds: int, path: str) -> None:
    step = make_step("direct_fused", "mnist", "adam" if path == "adam" else "sgd")
    direct = inspect.getclosurevars(step).nonlocals["direct"]  # the DirectStep that make_step built
    if path == "optimizer":
        direct.fused_update = lambda: None
    pieces = PIECES[path]
    stamps: list[float] = []
    namespace = torch.ops.twoway_fast
    originals = {name: getattr(namespace, name) for name in OPS}
    for name in OPS:
        setattr(namespace, name, StampedPacket(originals[name], stamps))
    optimizer = direct.optimizer
    optimizer.step = Stamped(optimizer.step, stamps)
    times = {piece: [] for piece in (*pieces, "total")}
    try:
        for _ in range(2):  # warm-up
            step()
        for _ in range(rounds):
            stamps.clear()
            start = time.perf_counter()
            step()
            marks = [start, *stamps, time.perf_counter()]
            assert len(marks) == len(pieces) + 1, "DirectStep's calls changed: update PIECES"
            for piece, t0, t1 in zip(pieces, marks, marks[1:]):
                times[piece].append(t1 - t0)
            times["total"].append(marks[-1] - marks[0])
    finally:
        for name in OPS:
            setattr(namespace, name, originals[name])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, mnist direct step ({path}), {rounds} rounds")
    for piece, ts in times.items():
        ts.sort()
        print(f"  {piece:32s} min {ts[0] * 1e3:6.3f} ms  median {ts[len(ts) // 2] * 1e3:6.3f} ms")


if __name__ == "__main__":
    path = next((a for a in sys.argv[1:] if a in PIECES), "sgd")
    args = [int(a) for a in sys.argv[1:] if a not in PIECES]
    if len(args) > 1:
        torch.set_num_threads(args[1])
    main(args[0] if args else 300, path)
