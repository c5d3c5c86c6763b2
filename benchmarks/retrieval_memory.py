"""Peak extra memory of one ranking method, measured in a fresh process:
    python benchmarks/retrieval_memory.py METHOD N M D   ->  one JSON line

The inputs are built first; then the kernel's peak-RSS mark is reset (/proc/self/clear_refs = 5) and
the method runs once. Peak extra = peak RSS during the run - RSS before it: everything the method
allocates (torch, numpy, MKL buffers alike), not its inputs."""
import gc
import json
import sys

from retrieval_baselines import METHODS, inputs_for, make_data


def status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def main(method: str, n: int, m: int, d: int) -> None:
    args = inputs_for(method, *make_data(n, m, d))
    METHODS[method](*inputs_for(method, *make_data(8, 40, d)))  # load libraries and thread pools first
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = status_kib("VmRSS")
    METHODS[method](*args)
    peak = status_kib("VmHWM")
    print(json.dumps({"method": method, "n": n, "m": m, "d": d, "peak_extra_mib": round((peak - before) / 1024, 1),
                      "inputs_mib": round(sum(x.nbytes for x in args) / 2**20, 1)}))


if __name__ == "__main__":
    main(sys.argv[1], *map(int, sys.argv[2:5]))
