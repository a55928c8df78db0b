"""Reduce family: vector_sum (and, later, the reductions along dims)."""
import torch

from ._common import check_float_dtype

_ops = torch.ops.teachcompute_ext


def vector_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of every element of ``x`` as a 0-dim tensor of ``x``'s dtype.

    Like ``torch.sum(x)`` for float32, float64, float16 and bfloat16 (the half
    types accumulate in float32); any shape and strides; 0 for an empty tensor.
    The CPU result is bitwise identical from run to run and for any thread
    count; the CUDA result is bitwise reproducible (no float atomics).
    """
    return _ops.vector_sum.default(x)


@torch.library.register_fake("teachcompute_ext::vector_sum")
def _vector_sum_fake(x):
    check_float_dtype("vector_sum", "x", x)
    return x.new_empty(())

# Autograd is registered in C++ (csrc/reduce/reduce_autograd.cpp): cheaper per call.
