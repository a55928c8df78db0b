"""Matmul family benchmarks against torch, same process: fused_linear against
eager F.gelu(F.linear(x, W, b)) (and relu, none) and torch.compile of it,
forward and forward+backward; fused_matmul against alpha * torch.matmul.

    python benchmarks/bench_matmul.py [--device cpu|cuda] [--quick] [--out DIR]

The cases live in teachcompute_ext/bench/matmul.py; this is benchmarks/run.py
restricted to that family (same options, JSON into benchmarks/results/).
"""

import sys

import run

if __name__ == "__main__":
    sys.exit(run.main(["--family", "matmul", *sys.argv[1:]]))
