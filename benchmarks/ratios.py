"""Prints the ratios of one pytest-benchmark run (its --benchmark-json file), from the minimum of the
rounds (the least disturbed by other load on the machine):
    python benchmarks/ratios.py results.json"""
import json
import sys
from collections import defaultdict


def main(path: str) -> None:
    mins = defaultdict(dict)
    for b in json.load(open(path))["benchmarks"]:
        mins[b["params"]["shape"]][b["params"]["provider"]] = b["stats"]["min"]
    for shape, t in mins.items():
        print(f"{shape}: " + ", ".join(f"{p} {s * 1e3:.2f} ms" for p, s in t.items()))
        fused = t["fused"]
        print(f"  reference / fused          {t['reference'] / fused:.2f}x")
        print(f"  compiled_reference / fused {t['compiled_reference'] / fused:.2f}x")
        print(f"  fused / gemm_floor         {fused / t['gemm_floor']:.2f}x")
        print(f"  compiled_fused / gemm_floor {t['compiled_fused'] / t['gemm_floor']:.2f}x, "
              f"compiled_reference / compiled_fused {t['compiled_reference'] / t['compiled_fused']:.2f}x")
        direct = t["direct_fused"]
        print(f"  fused / direct_fused {fused / direct:.2f}x, compiled_reference / direct_fused "
              f"{t['compiled_reference'] / direct:.2f}x, direct_fused / gemm_floor {direct / t['gemm_floor']:.2f}x, "
              f"direct_fused / gemm_floor_side_by_side {direct / t['gemm_floor_side_by_side']:.2f}x")


if __name__ == "__main__":
    main(sys.argv[1])
