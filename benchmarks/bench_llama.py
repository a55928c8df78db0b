"""Llama family benchmarks against torch, same process: rms_norm and add_rms_norm
against F.rms_norm, rotary_embedding against transformers' q * cos + rotate_half(q) * sin,
swiglu and geglu against F.silu(g) * u and F.gelu(g) * u, a GEMM then swiglu against two
F.linear, and a decoder layer's training step against its pure-torch twin; eager and
torch.compile, forward and forward+backward.

    python benchmarks/bench_llama.py [--device cpu|cuda] [--quick] [--out DIR]

The cases live in teachcompute_ext/bench/llama.py; this is benchmarks/run.py
restricted to that family (same options, JSON into benchmarks/results/).
"""

import sys

import run

if __name__ == "__main__":
    sys.exit(run.main(["--family", "llama", *sys.argv[1:]]))
