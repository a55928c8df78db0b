"""Runs every op family's benchmarks on the CPU (and CUDA when present) and
prints one table; JSON per family and device goes to --out.

    python -m teachcompute_ext.bench              # real numbers into ./bench-out
    python -m teachcompute_ext.bench --quick      # small sizes, few repeats (CI)
"""
import argparse
import sys

import torch

from . import FAMILIES, family, harness


def main(argv=None, default_out="bench-out"):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", action="append", choices=["cpu", "cuda"],
                   help="device to run on (repeatable); default: cpu, and cuda when present")
    p.add_argument("--family", action="append", choices=FAMILIES, help="op family (repeatable); default: all")
    p.add_argument("--quick", action="store_true", help="small sizes, few repeats: well under a minute on a CPU")
    p.add_argument("--out", default=default_out, help=f"folder for the JSON results (default: {default_out})")
    p.add_argument("--cold-allocator", action="store_true",
                   help="leave glibc returning large blocks to the OS (each big output page-faults anew)")
    args = p.parse_args(argv)
    if not args.cold_allocator:
        harness.ALLOCATOR = harness.keep_allocator_warm()
    devices = args.device or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    all_results = []
    for device in devices:
        for name in args.family or FAMILIES:
            progress = lambda case: print(f"  {name}: {case.op} {case.shape} {case.dtype} {case.device}",  # noqa: E731
                                          file=sys.stderr, flush=True)
            results, bound, path = family(name).run(device, args.quick, args.out, progress=progress)
            print(f"{name} on {device}: copy bandwidth {bound / 1e9:.1f} GB/s (read + write) -> {path}")
            all_results += results
    print(harness.format_table(all_results))
    return 1 if any("error" in r for r in all_results) else 0


if __name__ == "__main__":
    sys.exit(main())
