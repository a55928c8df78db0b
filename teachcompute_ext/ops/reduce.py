"""Reduce family: vector_sum, reduce_sum, reduce_mean, reduce_max, reduce_min, logsumexp,
softmax, log_softmax: wrappers and fake kernels (autograd is in C++)."""
import torch

from ._common import check_dim, check_float_dtype, check_same_device

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
        check_same_device(op, "out", out, "grad", grad)
        if grad.shape != out.shape:
            raise RuntimeError(
                f"teachcompute_ext.{op}: argument 'grad' has shape {list(grad.shape)} but 'out' has shape "
                f"{list(out.shape)}"
            )
        if grad.dtype != out.dtype:
            raise RuntimeError(f"teachcompute_ext.{op}: argument 'grad' has dtype {grad.dtype} but 'out' has dtype "
                               f"{out.dtype}")
        check_dim(op, out, dim)
        return out.new_empty(out.shape)

    return fake


for _name in ("softmax", "log_softmax"):
    torch.library.register_fake(f"teachcompute_ext::{_name}")(_softmax_fake(_name))
    torch.library.register_fake(f"teachcompute_ext::{_name}_backward")(_softmax_backward_fake(f"{_name}_backward"))


# ---------------------------------------------------------------------------
# Reductions along dims
# ---------------------------------------------------------------------------
def reduce_sum(x: torch.Tensor, dim=None, keepdim: bool = False) -> torch.Tensor:
    """``torch.sum(x, dim, keepdim)``: dim is an int, a list of ints, or None (all dims)."""
    return _ops.reduce_sum.default(x, _as_list(dim), keepdim)


def reduce_mean(x: torch.Tensor, dim=None, keepdim: bool = False) -> torch.Tensor:
    """``torch.mean(x, dim, keepdim)``; NaN over an empty dimension, as torch."""
    return _ops.reduce_mean.default(x, _as_list(dim), keepdim)


def reduce_max(x: torch.Tensor, dim: int, keepdim: bool = False):
    """``torch.max(x, dim, keepdim)``: (values, indices); the index of the first
    maximum (of the first NaN when there is one); the gradient flows to it."""
    return _ops.reduce_max.default(x, dim, keepdim)


def reduce_min(x: torch.Tensor, dim: int, keepdim: bool = False):
    """``torch.min(x, dim, keepdim)``, with the same conventions as :func:`reduce_max`."""
    return _ops.reduce_min.default(x, dim, keepdim)


def logsumexp(x: torch.Tensor, dim, keepdim: bool = False) -> torch.Tensor:
    """``torch.logsumexp(x, dim, keepdim)`` in one online pass (max and sum together)."""
    return _ops.logsumexp.default(x, _as_list(dim), keepdim)


def _as_list(dim):
    if dim is None:
        return None
    return [dim] if isinstance(dim, int) else list(dim)


def _reduced_mask(op, x, dim):
    """Mirror of reduced_mask in csrc/reduce/reduce.h (same checks, same words)."""
    ndim = x.dim()
    if dim is None or len(dim) == 0:
        return [True] * ndim
    seen = set()
    mask = [False] * ndim
    for d in dim:
        check_dim(op, x, d)
        w = d + max(ndim, 1) if d < 0 else d
        if w in seen:
            raise RuntimeError(f"teachcompute_ext.{op}: dim {w} appears more than once in argument 'dim' {list(dim)}")
        seen.add(w)
        if ndim > 0:
            mask[w] = True
    return mask


def _reduced_shape(op, x, dim, keepdim):
    mask = _reduced_mask(op, x, dim)
    return [1 if m else s for s, m in zip(x.shape, mask) if keepdim or not m]


def _sum_mean_fake(op):
    def fake(x, dim=None, keepdim=False):
        check_float_dtype(op, "x", x)
        return x.new_empty(_reduced_shape(op, x, dim, keepdim))

    return fake


def _maxmin_fake(op):
    def fake(x, dim, keepdim=False):
        check_float_dtype(op, "x", x)
        check_dim(op, x, dim)
        w = dim + max(x.dim(), 1) if dim < 0 else dim
        if x.dim() > 0 and x.shape[w] == 0:
            raise IndexError(
                f"teachcompute_ext.{op}: cannot reduce over dim {w} of size 0 (argument 'dim'); "
                "the maximum or minimum of nothing is undefined"
            )
        shape = _reduced_shape(op, x, [dim], keepdim)
        return x.new_empty(shape), x.new_empty(shape, dtype=torch.int64)

    return fake


torch.library.register_fake("teachcompute_ext::reduce_sum")(_sum_mean_fake("reduce_sum"))
torch.library.register_fake("teachcompute_ext::reduce_mean")(_sum_mean_fake("reduce_mean"))
torch.library.register_fake("teachcompute_ext::logsumexp")(_sum_mean_fake("logsumexp"))
torch.library.register_fake("teachcompute_ext::reduce_max")(_maxmin_fake("reduce_max"))
torch.library.register_fake("teachcompute_ext::reduce_min")(_maxmin_fake("reduce_min"))
