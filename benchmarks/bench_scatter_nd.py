"""ScatterND family benchmarks against torch's index_put_ / index_add_ (and
onnxruntime's ScatterND when installed), same process.

    python benchmarks/bench_scatter_nd.py [--device cpu|cuda] [--quick] [--out DIR]

The cases live in teachcompute_ext/bench/scatter_nd.py; this is benchmarks/run.py
restricted to that family (same options, JSON into benchmarks/results/).
"""

import sys

import run

if __name__ == "__main__":
    sys.exit(run.main(["--family", "scatter_nd", *sys.argv[1:]]))
