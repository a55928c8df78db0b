"""Reduce family benchmarks against torch, same process: vector_sum; reduce_sum,
reduce_mean, reduce_max, reduce_min, logsumexp over dim 0 and dim 1; softmax and
log_softmax (forward, and forward+backward).

    python benchmarks/bench_reduce.py [--device cpu|cuda] [--quick] [--out DIR]

The cases live in teachcompute_ext/bench/reduce.py; this is benchmarks/run.py
restricted to that family (same options, JSON into benchmarks/results/).
"""

import sys

import run

if __name__ == "__main__":
    sys.exit(run.main(["--family", "reduce", *sys.argv[1:]]))
