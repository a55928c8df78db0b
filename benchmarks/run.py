"""Runs every op family's benchmarks on the CPU (and CUDA when present) and
prints one table; JSON per family and device goes to --out.

    python benchmarks/run.py              # real numbers into benchmarks/results/
    python benchmarks/run.py --quick      # small sizes, few repeats (CI)
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_embedding  # noqa: E402
import bench_reduce  # noqa: E402
import bench_scatter_nd  # noqa: E402
import harness  # noqa: E402

FAMILIES = {"reduce": bench_reduce, "scatter_nd": bench_scatter_nd, "embedding": bench_embedding}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", action="append", choices=["cpu", "cuda"],
                   help="device to run on (repeatable); default: cpu, and cuda when present")
    p.add_argument("--family", action="append", choices=sorted(FAMILIES), help="op family (repeatable); default: all")
    p.add_argument("--quick", action="store_true", help="small sizes, few repeats: well under a minute on a CPU")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"),
                   help="folder for the JSON results (default: benchmarks/results)")
    p.add_argument("--cold-allocator", action="store_true",
                   help="leave glibc returning large blocks to the OS (each big output page-faults anew)")
    args = p.parse_args()
    if not args.cold_allocator:
        harness.ALLOCATOR = harness.keep_allocator_warm()
    devices = args.device or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    all_results = []
    for device in devices:
        for name in args.family or sorted(FAMILIES):
            progress = lambda case: print(f"  {name}: {case.op} {case.shape} {case.dtype} {case.device}",  # noqa: E731
                                          file=sys.stderr, flush=True)
            results, bound, path = FAMILIES[name].run(device, args.quick, args.out, progress=progress)
            print(f"{name} on {device}: copy bandwidth {bound / 1e9:.1f} GB/s (read + write) -> {path}")
            all_results += results
    print(harness.format_table(all_results))
    return 1 if any("error" in r for r in all_results) else 0


if __name__ == "__main__":
    sys.exit(main())
