"""Reduce family: vector_sum, softmax, log_softmax (the reductions along dims come next)."""
import torch

from ._common import check_dim, check_float_dtype

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


def softmax(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``torch.softmax(x, dim)``: float32, float64, float16, bfloat16 (half types
    compute in float32); the result is contiguous, of x's dtype. The gradient is
    one fused op, ``softmax_backward``."""
    return _ops.softmax.default(x, dim)


def log_softmax(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``torch.log_softmax(x, dim)``, with the same conventions as :func:`softmax`."""
    return _ops.log_softmax.default(x, dim)


def _softmax_fake(op):
    def fake(x, dim):
        check_float_dtype(op, "x", x)
        check_dim(op, x, dim)
        return x.new_empty(x.shape)

    return fake


def _softmax_backward_fake(op):
    def fake(grad, out, dim):
        check_float_dtype(op, "grad", grad)
        if grad.shape != out.shape:
            raise RuntimeError(
                f"teachcompute_ext.{op}: argument 'grad' has shape {list(grad.shape)} but 'out' has shape "
                f"{list(out.shape)}"
            )
        check_dim(op, out, dim)
        return out.new_empty(out.shape)

    return fake


for _name in ("softmax", "log_softmax"):
    torch.library.register_fake(f"teachcompute_ext::{_name}")(_softmax_fake(_name))
    torch.library.register_fake(f"teachcompute_ext::{_name}_backward")(_softmax_backward_fake(f"{_name}_backward"))
