"""Reduce family: vector_sum, reduce_sum, reduce_mean, reduce_max, reduce_min, logsumexp,
softmax, log_softmax: wrappers and fake kernels (autograd is in C++)."""

import torch

from ._common import INT_DTYPES, check_dim, check_float_dtype, check_float_or_int_dtype, check_same_device, public

_ops = torch.ops.teachcompute_ext


vector_sum = public(
    "vector_sum",
    """vector_sum(x: torch.Tensor)

    Sum of every element of ``x`` as a 0-dim tensor of ``x``'s dtype.

    Like ``torch.sum(x)`` for float32, float64, float16 and bfloat16 (the half
    types accumulate in float32); any shape and strides; 0 for an empty tensor.
    Integer and bool tensors sum exactly into int64, as ``torch.sum``.
    The CPU result is bitwise identical from run to run and for any thread
    count; the CUDA result is bitwise reproducible (no float atomics).
    """,
)


@torch.library.register_fake("teachcompute_ext::vector_sum")
def _vector_sum_fake(x):
    check_float_or_int_dtype("vector_sum", "x", x)
    return x.new_empty((), dtype=torch.int64 if x.dtype in INT_DTYPES else x.dtype)


# Autograd is registered in C++ (csrc/reduce/reduce_autograd.cpp): cheaper per call.


softmax = public(
    "softmax",
    """softmax(x: torch.Tensor, dim: int)

    ``torch.softmax(x, dim)``: float32, float64, float16, bfloat16 (half types
    compute in float32); the result is contiguous, of x's dtype. The gradient is
    one fused op, ``softmax_backward``.
    """,
)


log_softmax = public(
    "log_softmax",
    """log_softmax(x: torch.Tensor, dim: int)

    ``torch.log_softmax(x, dim)``, with the same conventions as :func:`softmax`.
    """,
)


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
            raise RuntimeError(
                f"teachcompute_ext.{op}: argument 'grad' has dtype {grad.dtype} but 'out' has dtype {out.dtype}"
            )
        check_dim(op, out, dim)
        return out.new_empty(out.shape)

    return fake


for _name in ("softmax", "log_softmax"):
    torch.library.register_fake(f"teachcompute_ext::{_name}")(_softmax_fake(_name))
    torch.library.register_fake(f"teachcompute_ext::{_name}_backward")(_softmax_backward_fake(f"{_name}_backward"))


# ---------------------------------------------------------------------------
# Reductions along dims
# ---------------------------------------------------------------------------
reduce_sum = public(
    "reduce_sum",
    """reduce_sum(x: torch.Tensor, dim=None, keepdim: bool = False)

    ``torch.sum(x, dim, keepdim)``: dim is an int, a list of ints, or None (all dims). Integer and
    bool inputs sum into int64, as torch's.
    """,
)


reduce_mean = public(
    "reduce_mean",
    """reduce_mean(x: torch.Tensor, dim=None, keepdim: bool = False)

    ``torch.mean(x, dim, keepdim)``; NaN over an empty dimension, as torch.
    """,
)


reduce_max = public(
    "reduce_max",
    """reduce_max(x: torch.Tensor, dim: int, keepdim: bool = False)

    ``torch.max(x, dim, keepdim)``: (values, indices); the index of the first
    maximum (of the first NaN when there is one); the gradient flows to it.
    Floating, integer and bool dtypes.
    """,
)


reduce_min = public(
    "reduce_min",
    """reduce_min(x: torch.Tensor, dim: int, keepdim: bool = False)

    ``torch.min(x, dim, keepdim)``, with the same conventions as :func:`reduce_max`.
    """,
)


logsumexp = public(
    "logsumexp",
    """logsumexp(x: torch.Tensor, dim, keepdim: bool = False)

    ``torch.logsumexp(x, dim, keepdim)`` in one online pass (max and sum together).
    """,
)


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
        if op == "reduce_sum":
            check_float_or_int_dtype(op, "x", x)
        else:
            check_float_dtype(op, "x", x)
        dtype = torch.int64 if x.dtype in INT_DTYPES else x.dtype
        return x.new_empty(_reduced_shape(op, x, dim, keepdim), dtype=dtype)

    return fake


def _maxmin_fake(op):
    def fake(x, dim, keepdim=False):
        check_float_or_int_dtype(op, "x", x)
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


# ---------------------------------------------------------------------------
# vmap rules (torch.func.vmap): the batch dim goes first and every logical dim
# moves up by one, so each rule is one call of the op on the whole batch.
# ---------------------------------------------------------------------------
from . import _vmap  # noqa: E402


def _vmap_sum_like(op):
    fn = getattr(_ops, op).default

    def rule(info, in_dims, x, dim=None, keepdim=False):
        x = _vmap.front(x, in_dims[0])
        n = x.dim() - 1
        mask = _reduced_mask(op, _vmap.Logical(x, 0), dim)  # the logical dims, checked as the op would
        if n == 0:
            # Reducing a 0-d sample returns it, but our ops read the empty dim list
            # left after removing the batch dim as "every dim", batch included.
            return fn(x.unsqueeze(-1), [-1], False), 0
        return fn(x, [i + 1 for i, m in enumerate(mask) if m], keepdim), 0

    return rule


def _vmap_maxmin(op):
    fn = getattr(_ops, op).default

    def rule(info, in_dims, x, dim, keepdim=False):
        x = _vmap.front(x, in_dims[0])
        n = x.dim() - 1
        check_dim(op, _vmap.Logical(x, 0), dim)
        if n == 0:  # torch.max(scalar, 0) is (scalar, 0): reduce a dim of size 1 instead
            return fn(x.unsqueeze(-1), -1, False), (0, 0)
        return fn(x, _vmap.wrap_dim(dim, n) + 1, keepdim), (0, 0)

    return rule


def _vmap_vector_sum(info, in_dims, x):
    x = _vmap.front(x, in_dims[0])
    _vector_sum_fake(x)  # the dtype check with vector_sum's words, not reduce_sum's
    if x.dim() == 1:
        return _ops.reduce_sum.default(x.unsqueeze(-1), [-1], False), 0
    return _ops.reduce_sum.default(x, list(range(1, x.dim())), False), 0


def _vmap_softmax(op):
    fn = getattr(_ops, op).default

    def rule(info, in_dims, x, dim):
        x = _vmap.front(x, in_dims[0])
        n = x.dim() - 1
        check_dim(op, _vmap.Logical(x, 0), dim)
        if n == 0:
            return fn(x.unsqueeze(-1), -1).squeeze(-1), 0
        return fn(x, _vmap.wrap_dim(dim, n) + 1), 0

    return rule


def _vmap_softmax_backward(op):
    fn = getattr(_ops, op).default

    def rule(info, in_dims, grad, out, dim):
        # The kernels read contiguous inputs, so expanding the unbatched one costs
        # the copy the op makes anyway, and no more.
        grad = _vmap.front_or_expand(grad, in_dims[0], info.batch_size)
        out = _vmap.front_or_expand(out, in_dims[1], info.batch_size)
        n = out.dim() - 1
        check_dim(op, _vmap.Logical(out, 0), dim)
        if n == 0:
            return fn(grad.unsqueeze(-1), out.unsqueeze(-1), -1).squeeze(-1), 0
        return fn(grad, out, _vmap.wrap_dim(dim, n) + 1), 0

    return rule


_vmap.register("vector_sum", _vmap_vector_sum)
for _name in ("reduce_sum", "reduce_mean", "logsumexp"):
    _vmap.register(_name, _vmap_sum_like(_name))
for _name in ("reduce_max", "reduce_min"):
    _vmap.register(_name, _vmap_maxmin(_name))
for _name in ("softmax", "log_softmax"):
    _vmap.register(_name, _vmap_softmax(_name))
    _vmap.register(f"{_name}_backward", _vmap_softmax_backward(f"{_name}_backward"))
