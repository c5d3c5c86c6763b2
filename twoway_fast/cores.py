"""The CPU cores that other processes leave free, and a thread pool sized by them.

The CPU training step runs parallel regions whose threads wait for each other at every join (the two
channels side by side, the passes' column chunks). When another process holds a core, the thread that
shares it with that process is descheduled for whole time slices and the others spin or sleep at the
join, slower than one thread alone on a free core (benchmarks/RESULTS.md, contention). So the training
loop asks, every few steps, how many cores are free and uses no more threads than that, up to the count
it started with. The kernels give the same bits for any thread count (tests/test_cores.py), so this
changes speed only.
"""
from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import torch

_LOADAVG = Path("/proc/loadavg")
_OWN_TASKS = Path("/proc/self/task")


def _own_running() -> int:
    """This process's threads that are runnable now (state R in /proc/self/task/*/stat)."""
    running = 0
    for task in _OWN_TASKS.iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:  # the thread ended between the listing and the read
            continue
        # The state follows the command name, which is in parentheses and may hold spaces.
        if stat[stat.rindex(")") + 2] == "R":
            running += 1
    return running


def others_running(samples: int = 5, interval: float = 1e-3) -> int:
    """Runnable threads of other processes, the median of `samples` reads `interval` seconds apart
    (a process that runs for a moment does not count; one that computes does). 0 where /proc is not
    there (outside Linux): nothing is known, so nothing is taken away."""
    if not _LOADAVG.exists():
        return 0
    counts = []
    for i in range(samples):
        if i:
            time.sleep(interval)
        # The 4th field, "running/total", counts the runnable scheduling entities of the whole system.
        system = int(_LOADAVG.read_text().split()[3].split("/")[0])
        counts.append(max(0, system - _own_running()))
    return int(statistics.median(counts))


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def free_cores() -> int:
    """Usable cores that no other process is computing on, at least 1."""
    return max(1, usable_cores() - others_running())


class ThreadBudget:
    """torch's CPU thread count kept at min(the count at construction, free cores): `update()` between
    steps, `restore()` at the end (back to the count at construction)."""

    def __init__(self):
        self.ceiling = torch.get_num_threads()

    def update(self) -> None:
        if self.ceiling == 1:
            return
        wanted = min(self.ceiling, free_cores())
        if wanted != torch.get_num_threads():
            torch.set_num_threads(wanted)

    def restore(self) -> None:
        if torch.get_num_threads() != self.ceiling:
            torch.set_num_threads(self.ceiling)
