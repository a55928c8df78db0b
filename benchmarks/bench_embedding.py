"""Embedding family benchmarks against torch.nn.functional, same process.

    python benchmarks/bench_embedding.py [--device cpu|cuda] [--quick] [--out DIR]

The cases live in teachcompute_ext/bench/embedding.py; this is benchmarks/run.py
restricted to that family (same options, JSON into benchmarks/results/).
"""

import sys

import run

if __name__ == "__main__":
    sys.exit(run.main(["--family", "embedding", *sys.argv[1:]]))
