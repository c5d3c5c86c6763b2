"""Keeps freed memory in the process's heap for the next training step (glibc only).

A training step allocates and frees the same few MiB of tensors every time. glibc serves blocks over
its mmap threshold (128 KiB, raised only as far as the largest block freed so far) with fresh
mappings and gives the heap's free top back to the system past its trim threshold, so each step
faulted those pages in again: about 485 page faults (1.9 MiB) a mnist step; without them the median
one-thread step fell 0.8-0.9 ms of 8.7-9.5 (its minimum, a step that happened not to fault, did not;
benchmarks/HISTORY.md). Fixed thresholds keep them: blocks under 32 MiB come from the heap and up to
256 MiB of free heap stays mapped. The cost is that memory: a process holds on to what it freed.
"""
from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h>
MMAP_THRESHOLD = 32 << 20  # glibc's ceiling for this setting on 64-bit systems
TRIM_THRESHOLD = 256 << 20

_kept = False


def keep_freed_memory() -> bool:
    """Sets the thresholds once per process; True when they are in force (glibc on Linux)."""
    global _kept
    if _kept:
        return True
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None)  # the C library the process runs on
    if not hasattr(libc, "gnu_get_libc_version"):  # another libc (musl's mallopt does nothing)
        return False
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _kept = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _kept
