"""Training-step family against torch, same process: one step of the README model with
its table trained by the fused backward-and-update, against dense AdamW and
torch's sparse path (SparseAdam); the fused update alone against the sparse step.

    python benchmarks/bench_train.py [--device cpu|cuda] [--quick] [--out DIR]

The cases live in teachcompute_ext/bench/train.py; this is benchmarks/run.py
restricted to that family (same options, JSON into benchmarks/results/).
"""

import sys

import run

if __name__ == "__main__":
    sys.exit(run.main(["--family", "train", *sys.argv[1:]]))
