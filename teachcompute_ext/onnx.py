"""ONNX export of the teachcompute_ext ops with standard ONNX operators only.

    import teachcompute_ext.onnx
    torch.onnx.export(model, args, dynamo=True,
                      custom_translation_table=teachcompute_ext.onnx.custom_translation_table)

Each translation is a plain Python function that the exporter calls while it
records ONNX nodes (it is traced, not kept as an ONNX function), so the model
holds ai.onnx nodes and no custom domain: any runtime can load it.

Every node comes from opset 18, the exporter's own base opset, so the same
translation is valid whatever ``opset_version`` (18 or later) the export asks
for; Gelu (opset 20) is therefore written out with Erf / Tanh, a pattern that
onnxruntime fuses back into one Gelu kernel.

A model that calls the in-place ``scatter_nd_`` goes through :func:`export` instead
(torch.onnx cannot read the node torch.export makes of an in-place custom op).

Not translated: softmax_backward, log_softmax_backward, embedding_backward,
embedding_bag_backward, rms_norm_backward, rotary_embedding_backward and
glu_backward. They only appear in a graph that computes gradients, and
torch.onnx exports inference graphs.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch

try:
    from onnxscript import ir
    from onnxscript import opset18 as op
except ImportError as e:  # an optional dependency: the ops themselves do not need it
    raise ImportError(
        "teachcompute_ext.onnx needs onnxscript, as torch.onnx.export(dynamo=True) does: pip install onnxscript"
    ) from e

_ops = torch.ops.teachcompute_ext
_HALF = (ir.DataType.FLOAT16, ir.DataType.BFLOAT16)
_INTEGER = (
    ir.DataType.BOOL,
    ir.DataType.UINT8,
    ir.DataType.INT8,
    ir.DataType.INT16,
    ir.DataType.INT32,
    ir.DataType.INT64,
)

__all__ = ["custom_translation_table", "export", "functionalize_scatter_nd_"]


# ---- helpers -------------------------------------------------------------------------------
def _const(value, dtype) -> ir.Value:
    """A Constant of an exact dtype: the exporter gives untyped Python numbers float32 or
    int64, which breaks float64 and half models."""
    return op.Constant(value=ir.tensor(value, dtype=dtype))


def _ints(values) -> ir.Value:
    return _const(list(values), ir.DataType.INT64)


def _up(x):
    """x in float32 when it is a half type: our kernels accumulate half inputs in float32,
    so the exported model does the same."""
    return op.Cast(x, to=ir.DataType.FLOAT) if x.dtype in _HALF else x


def _acc_dtype(x):
    return ir.DataType.FLOAT if x.dtype in _HALF else x.dtype


def _down(y, x):
    return op.Cast(y, to=x.dtype) if x.dtype in _HALF else y


def _int64(t):
    return t if t.dtype == ir.DataType.INT64 else op.Cast(t, to=ir.DataType.INT64)


def _shape_tensor(shape) -> ir.Value:
    """A SymInt[] argument as a 1-D int64 tensor: ints when static, scalar values
    (from sym_size) where a dim is dynamic."""
    if all(isinstance(s, int) for s in shape):
        return _ints(shape)
    parts = [_ints([s]) if isinstance(s, int) else op.Reshape(_int64(s), _ints([1])) for s in shape]
    return op.Concat(*parts, axis=0)


def _axes(dim, rank):
    """The axes of a reduction; None reduces every dim (no axes input). A 0-d tensor has
    nothing to reduce even when torch accepts dim 0 or -1 for it."""
    if rank == 0 or dim is None or len(dim) == 0:
        return None
    return _ints(dim)


# ---- reduce ----------------------------------------------------------------------------------
def _sum_input(x):
    """Integer and bool tensors sum in int64, torch's result dtype (ONNX's ReduceSum keeps
    the input type and takes no bool); half types in float32."""
    return _int64(x) if x.dtype in _INTEGER else _up(x)


def vector_sum(x):
    return _down(op.ReduceSum(_sum_input(x), keepdims=0), x)


def reduce_sum(x, dim: Optional[Sequence[int]] = None, keepdim: bool = False):
    axes = _axes(dim, len(x.shape))
    return _down(op.ReduceSum(_sum_input(x), axes, keepdims=int(keepdim)), x)


def reduce_mean(x, dim: Optional[Sequence[int]] = None, keepdim: bool = False):
    axes = _axes(dim, len(x.shape))
    return _down(op.ReduceMean(_up(x), axes, keepdims=int(keepdim)), x)


def _max_min(reduce, arg, x, dim, keepdim):
    if len(x.shape) == 0:
        return op.Identity(x), _const(0, ir.DataType.INT64)
    # bool and int16 have no ReduceMax / ArgMax in opset 18: compared as uint8 and
    # int32 (exact), then cast back.
    wider = {ir.DataType.BOOL: ir.DataType.UINT8, ir.DataType.INT16: ir.DataType.INT32}.get(x.dtype)
    xv = op.Cast(x, to=wider) if wider is not None else x
    values = reduce(xv, _ints([dim]), keepdims=int(keepdim))
    if wider is not None:
        values = op.Cast(values, to=x.dtype)
    # select_last_index=0: the first extremum, as torch.max(x, dim).
    indices = arg(xv, axis=dim, keepdims=int(keepdim), select_last_index=0)
    if x.dtype in _INTEGER:
        return values, indices
    # NaN wins, as in torch.max and our kernels: value NaN, index of the first NaN
    # (ReduceMax / ArgMax skip NaN in onnxruntime).
    nan = op.Cast(op.IsNaN(x), to=ir.DataType.UINT8)
    has_nan = op.Cast(op.ReduceMax(nan, _ints([dim]), keepdims=int(keepdim)), to=ir.DataType.BOOL)
    first_nan = op.ArgMax(nan, axis=dim, keepdims=int(keepdim), select_last_index=0)
    values = op.Where(has_nan, op.CastLike(_const(float("nan"), ir.DataType.FLOAT), x), values)
    return values, op.Where(has_nan, first_nan, indices)


def reduce_max(x, dim: int, keepdim: bool = False):
    return _max_min(op.ReduceMax, op.ArgMax, x, dim, keepdim)


def reduce_min(x, dim: int, keepdim: bool = False):
    return _max_min(op.ReduceMin, op.ArgMin, x, dim, keepdim)


def logsumexp(x, dim: Sequence[int], keepdim: bool = False):
    # Max-shifted, as torch: ReduceLogSumExp is exp-then-log in the ONNX reference and
    # overflows float32 from x ~ 89 in runtimes that implement it that way
    # (onnxruntime shifts, others need not). An infinite max is replaced by 0, as torch
    # does, so rows of -inf give -inf and a +inf gives +inf instead of NaN.
    xf = _up(x)
    axes = _axes(dim, len(x.shape))
    m = op.ReduceMax(xf, axes, keepdims=1)
    m = op.Where(op.IsInf(m), _const(0.0, _acc_dtype(x)), m)
    s = op.ReduceSum(op.Exp(op.Sub(xf, m)), axes, keepdims=int(keepdim))
    if not keepdim:
        m = op.Squeeze(m, axes) if axes is not None else op.Reshape(m, _ints([]))
    return _down(op.Add(op.Log(s), m), x)


def softmax(x, dim: int):
    return _down(op.Softmax(_up(x), axis=dim), x)


def log_softmax(x, dim: int):
    return _down(op.LogSoftmax(_up(x), axis=dim), x)


# ---- scatter_nd ------------------------------------------------------------------------------
# ONNX ScatterND (opset 18) is the op these were written after: same reductions, same
# negative-index convention. With duplicate indices and reduction="none" the ONNX spec
# leaves the winner undefined; onnxruntime's CPU kernel keeps the last, as ours does.
def _may_be_all_rows(shape, rows) -> bool:
    """Whether indices of this shape could be [[0], [1], ..., [rows - 1]]."""
    if len(shape) != 2 or shape[1] != 1:
        return False
    return not (isinstance(shape[0], int) and isinstance(rows, int) and shape[0] != rows)


def _scatter(data, rows, idx, index_shape, updates, reduction):
    """ScatterND of data (whose first dim is rows), sheltered from an optimizer bug.

    onnxscript's optimizer (0.7.2, run by torch.onnx.export by default) replaces a
    ScatterND whose constant indices are [[0], ..., [n-1]] by its updates, whatever the
    reduction (microsoft/onnxscript#3049): add, mul, max and min lose data. Such indices
    appear with static shapes (torch.arange(batch) folded to a constant). A leading axis
    of 1 on data, and a 0 before each index, gives the same result with shapes the rule
    does not match."""
    if reduction != "none" and updates.dtype in _HALF:
        # Accumulated in float32 and rounded once, as our kernels (onnxruntime's CPU
        # ScatterND also refuses float16 with a reduction).
        # (data cast by name: a ConstantOfShape's output may not carry its dtype yet)
        data32 = op.Cast(data, to=ir.DataType.FLOAT)
        return _down(_scatter(data32, rows, idx, index_shape, _up(updates), reduction), updates)
    if reduction == "none" or not _may_be_all_rows(index_shape, rows):
        return op.ScatterND(data, idx, updates, reduction=reduction)
    idx = op.Pad(idx, _ints([0, 1, 0, 0]))  # [n, 1] -> [n, 2], a 0 in front
    out = op.ScatterND(op.Unsqueeze(data, _ints([0])), idx, updates, reduction=reduction)
    return op.Squeeze(out, _ints([0]))


def scatter_nd(data, indices, updates, reduction: str = "none"):
    return _scatter(data, data.shape[0], _int64(indices), indices.shape, updates, reduction)


def _zeros(shape, dtype, value=0.0):
    return op.ConstantOfShape(shape, value=ir.tensor([value], dtype=dtype))


def scatter_nd_of_shape(shape: Sequence[int], indices, updates, reduction: str = "add"):
    return _scatter(
        _zeros(_shape_tensor(shape), updates.dtype), shape[0], _int64(indices), indices.shape, updates, reduction
    )


def masked_scatter_nd_of_shape(shape: Sequence[int], indices, updates, masked_value: int, reduction: str = "add"):
    idx = _int64(indices)
    masked = op.Equal(idx, _ints([masked_value]))  # [..., 1], compared before any wrapping
    if reduction != "none":
        # Into zeros, a zero update changes nothing for add, mul (0 * u = 0), max and min
        # (the zero is already there), so a masked update becomes 0 sent to row 0.
        zero_rows = op.Where(masked, _ints([0]), idx)
        keep = op.Not(op.Squeeze(masked, _ints([-1])))
        # keep is [...] for updates [..., *shape[1:]]: trailing dims of 1 to broadcast.
        r = len(indices.shape) - 1
        if len(shape) > 1:
            keep = op.Unsqueeze(keep, _ints(range(r, r + len(shape) - 1)))
        # half updates in float32, rounded once at the end (as _scatter does)
        upd = op.Where(keep, _up(updates), _const(0.0, _acc_dtype(updates)))
        return _down(
            _scatter(
                _zeros(_shape_tensor(shape), _acc_dtype(updates)), shape[0], zero_rows, indices.shape, upd, reduction
            ),
            updates,
        )
    # reduction="none": the last write wins, so a zero would overwrite; masked updates go
    # to one extra row past the end, sliced off. Negative indices are wrapped first so that
    # -1 keeps meaning the last real row.
    shape_t = _shape_tensor(shape)
    rows = op.Slice(shape_t, _ints([0]), _ints([1]))
    idx = op.Where(op.Less(idx, _ints([0])), op.Add(idx, rows), idx)
    idx = op.Where(masked, rows, idx)
    padded = op.Concat(op.Add(rows, _ints([1])), op.Slice(shape_t, _ints([1]), _ints([len(shape)])), axis=0)
    out = op.ScatterND(_zeros(padded, updates.dtype), idx, updates, reduction="none")
    return op.Slice(out, _ints([0]), rows, _ints([0]))


# ---- embedding -------------------------------------------------------------------------------
def embedding(weight, indices, padding_idx: Optional[int] = None):
    # padding_idx only matters for the gradient.
    return op.Gather(weight, indices, axis=0)


def _padding(weight, padding_idx):
    """padding_idx wrapped to a row of weight, as a 1-element int64 tensor."""
    if padding_idx >= 0:
        return _ints([padding_idx])
    rows = weight.shape[0]
    if isinstance(rows, int):
        return _ints([padding_idx + rows])
    return op.Add(_ints([padding_idx]), op.Shape(weight, start=0, end=1))


def _bag_fixed(weight, idx, mode, psw, keep):
    """2-D indices: bag b is row b, all bags of the same length, reduced over axis 1."""
    g = op.Gather(weight, idx, axis=0)  # [bags, length, dim]
    dtype = weight.dtype
    axis1 = _ints([1])
    keep3 = op.Unsqueeze(keep, _ints([-1])) if keep is not None else None
    if mode == "max":
        masked = op.Where(keep3, g, _const(-math.inf, dtype)) if keep is not None else g
        out = op.ReduceMax(masked, axis1, keepdims=0)
        # ArgMax keeps the first maximum, as our kernel: its row of weight is the argmax.
        rows = op.GatherElements(idx, op.ArgMax(masked, axis=1, keepdims=0, select_last_index=0), axis=1)
        if keep is None:
            return out, rows
        has = op.Unsqueeze(op.ReduceMax(op.Cast(keep, to=ir.DataType.INT64), axis1, keepdims=0), _ints([-1]))
        has = op.Cast(has, to=ir.DataType.BOOL)
        # A bag of padding only is zeros with no argmax row (-1).
        return op.Where(has, out, _const(0.0, dtype)), op.Where(has, rows, _ints([-1]))
    if psw is not None:
        g = op.Mul(g, op.Unsqueeze(psw, _ints([-1])))
    if keep is None:
        reduce = op.ReduceSum if mode == "sum" else op.ReduceMean
        return reduce(g, axis1, keepdims=0), None
    s = op.ReduceSum(op.Where(keep3, g, _const(0.0, dtype)), axis1, keepdims=0)
    if mode == "sum":
        return s, None
    count = op.ReduceSum(op.Cast(keep, to=dtype), axis1, keepdims=1)
    # Padding is not counted; a bag of padding only divides zero by one.
    return op.Div(s, op.Max(count, _const(1.0, dtype))), None


def _bag_offsets(weight, idx, offsets, mode, psw, keep, include_last_offset):
    """1-D indices cut into bags by offsets: a segment reduction. Each index gets the
    number of its bag (a cumulative count of the bag starts at or before it) and
    ScatterND with a reduction accumulates the gathered rows into [bags, dim]. Every
    scatter starts from the identity of its reduction (0 for add, -inf for max, n for
    min), so the optimizer rule that _scatter shelters from cannot change the results."""
    dtype = weight.dtype
    i64 = ir.DataType.INT64
    off = _int64(offsets)
    n = op.Shape(idx)  # [1]
    starts = op.Slice(off, _ints([0]), _ints([-1])) if include_last_offset else off
    bags = op.Shape(starts)
    # Empty trailing bags start at n: one more slot than there are indices.
    marks = op.ScatterElements(
        _zeros(op.Add(n, _ints([1])), i64), starts, op.Expand(_ints([1]), bags), axis=0, reduction="add"
    )
    seg = op.Sub(op.CumSum(op.Slice(marks, _ints([0]), n), _const(0, i64)), _ints([1]))
    seg2 = op.Unsqueeze(seg, _ints([-1]))  # ScatterND index: [n, 1]
    position = op.Range(_const(0, i64), op.Size(idx), _const(1, i64))
    valid = keep
    if include_last_offset:
        # Indices at or past the last offset belong to no bag.
        in_range = op.Less(position, op.Slice(off, _ints([-1]), _ints([2**62])))
        valid = in_range if valid is None else op.And(valid, in_range)
    g = op.Gather(weight, idx, axis=0)  # [n, dim]
    out_shape = op.Concat(bags, op.Shape(weight, start=1, end=2), axis=0)
    valid2 = op.Unsqueeze(valid, _ints([-1])) if valid is not None else None
    if mode != "sum":
        # Rows per bag that count (padding and the tail excluded): the mean's divisor, and
        # what tells an empty bag in max mode.
        ones = op.Cast(valid, to=dtype) if valid is not None else op.Expand(_const([1.0], dtype), n)
        count = op.Unsqueeze(op.ScatterND(_zeros(bags, dtype), seg2, ones, reduction="add"), _ints([-1]))
    if mode == "max":
        masked = op.Where(valid2, g, _const(-math.inf, dtype)) if valid is not None else g
        best = op.ScatterND(_zeros(out_shape, dtype, -math.inf), seg2, masked, reduction="max")
        # The argmax row (for embedding_bag_forward; dead code, removed, under embedding_bag):
        # the first position of each bag whose value is the bag's max, by a min-scatter of
        # positions where n stands for "none", whose row is -1.
        hit = op.Equal(masked, op.Gather(best, seg, axis=0))
        if valid is not None:
            hit = op.And(hit, valid2)
        candidate = op.Where(hit, op.Unsqueeze(position, _ints([-1])), op.Size(idx))
        first = op.ScatterND(op.Expand(op.Size(idx), out_shape), seg2, candidate, reduction="min")
        rows = op.Gather(op.Concat(idx, _ints([-1]), axis=0), first, axis=0)
        # A bag with no row that counts (empty, or padding only) is zeros, as torch.
        return op.Where(op.Greater(count, _const(0.0, dtype)), best, _const(0.0, dtype)), rows
    if psw is not None:
        g = op.Mul(g, op.Unsqueeze(psw, _ints([-1])))
    if valid is not None:
        g = op.Where(valid2, g, _const(0.0, dtype))
    total = op.ScatterND(_zeros(out_shape, dtype), seg2, g, reduction="add")
    if mode == "sum":
        return total, None
    return op.Div(total, op.Max(count, _const(1.0, dtype))), None


def embedding_bag_forward(
    weight,
    indices,
    offsets=None,
    mode: str = "mean",
    per_sample_weights=None,
    padding_idx: Optional[int] = None,
    include_last_offset: bool = False,
):
    idx = _int64(indices)
    keep = op.Not(op.Equal(idx, _padding(weight, padding_idx))) if padding_idx is not None else None
    # Half tables are summed in float32 and rounded once, as our kernels (onnxruntime's
    # CPU ScatterND also refuses float16 with a reduction).
    w, psw = _up(weight), (_up(per_sample_weights) if per_sample_weights is not None else None)
    if len(indices.shape) == 2:
        out, rows = _bag_fixed(w, idx, mode, psw, keep)
    else:
        out, rows = _bag_offsets(w, idx, offsets, mode, psw, keep, include_last_offset)
    out = _down(out, weight)
    if rows is None:
        rows = op.Constant(value=ir.tensor(np.zeros(0, np.int64)))  # sum, mean: no argmax
    return out, rows


def embedding_bag(
    weight,
    indices,
    offsets=None,
    mode: str = "mean",
    per_sample_weights=None,
    padding_idx: Optional[int] = None,
    include_last_offset: bool = False,
):
    out, _ = embedding_bag_forward(weight, indices, offsets, mode, per_sample_weights, padding_idx, include_last_offset)
    return out


# ---- matmul (ops from the fused-op branch; registered only where the library has them) -----
def _swap_last(x):
    rank = len(x.shape)
    perm = list(range(rank))
    perm[-2], perm[-1] = perm[-1], perm[-2]
    return op.Transpose(x, perm=perm)


def fused_matmul(a, b, alpha: float = 1.0, trans_a: bool = False, trans_b: bool = False):
    # Standard MatMul rather than com.microsoft FusedMatMul: any runtime loads it, and
    # onnxruntime fuses Transpose + MatMul + Mul back into its FusedMatMul kernel itself.
    # MatMul has torch.matmul's 1-D rules; a transpose flag on a vector is ignored, as ours.
    # A transposed matrix times a vector is the vector times the matrix: no Transpose (and
    # onnxruntime 1.32's Transpose + MatMul fusion got a^T @ v wrong: it computed a @ v).
    a_vec, b_vec = len(a.shape) == 1, len(b.shape) == 1
    if b_vec and trans_a and not a_vec:
        y = op.MatMul(b, a)
    elif a_vec and trans_b and not b_vec:
        y = op.MatMul(b, a)
    else:
        y = op.MatMul(_swap_last(a) if trans_a and not a_vec else a, _swap_last(b) if trans_b and not b_vec else b)
    return op.Mul(y, _const(alpha, a.dtype)) if alpha != 1.0 else y


def _gelu(x, dtype):
    half = _const(0.5, dtype)
    one = _const(1.0, dtype)
    return op.Mul(op.Mul(half, x), op.Add(one, op.Erf(op.Mul(x, _const(1 / math.sqrt(2.0), dtype)))))


def _gelu_tanh(x, dtype):
    inner = op.Mul(
        _const(math.sqrt(2.0 / math.pi), dtype), op.Add(x, op.Mul(_const(0.044715, dtype), op.Mul(op.Mul(x, x), x)))
    )
    return op.Mul(op.Mul(_const(0.5, dtype), x), op.Add(_const(1.0, dtype), op.Tanh(inner)))


def fused_linear(x, weight, bias=None, activation: str = "none"):
    if len(weight.shape) == 1:
        # F.linear's 1-D weight: a dot product over the last dim, a 0-d bias.
        y = op.MatMul(x, weight)
        if bias is not None:
            y = op.Add(y, bias)
    elif len(x.shape) == 2:
        # One Gemm: transB takes weight [out, in] as it is stored, with the bias added.
        y = op.Gemm(x, weight, bias, transB=1)
    else:
        y = op.MatMul(x, op.Transpose(weight, perm=[1, 0]))
        if bias is not None:
            y = op.Add(y, bias)
    dtype = x.dtype
    if activation == "none":
        return y
    if activation == "relu":
        return op.Relu(y)
    if activation == "gelu":
        return _gelu(y, dtype)
    if activation == "gelu_tanh":
        return _gelu_tanh(y, dtype)
    if activation == "silu":
        return op.Mul(y, op.Sigmoid(y))
    raise ValueError(
        f"teachcompute_ext.onnx: unknown activation '{activation}' for argument 'activation' "
        "(expected one of none, relu, gelu, gelu_tanh, silu)"
    )


# ---- llama: rms_norm, add_rms_norm, rotary_embedding, swiglu, geglu ---------------------------
# Written out with opset-18 nodes rather than RMSNormalization: that node is opset 23 (the
# exporter's default is 20, and a translation cannot choose the model's opset), and it has
# no output for the per-row inverse RMS that rms_norm_forward returns. Half inputs are
# computed in float32 and rounded once, as the kernels do.
def _up_as(v, x):
    """_up of v, a node's output whose dtype is x's: while the exporter traces, a node's
    output may carry no dtype, so the decision is taken on the input x."""
    return op.Cast(v, to=ir.DataType.FLOAT) if x.dtype in _HALF else v


def _rms_norm(h, x, weight, eps: float):
    """rms_norm of h, whose dtype is x's."""
    acc = _acc_dtype(x)
    hf = _up_as(h, x)
    last = _ints([-1])
    mean_sq = op.ReduceMean(op.Mul(hf, hf), last, keepdims=1)
    rstd = op.Reciprocal(op.Sqrt(op.Add(mean_sq, _const(eps, acc))))
    y = op.Mul(hf, rstd)
    if weight is not None:
        # weight may have another float dtype than x (as F.rms_norm allows); out keeps x's.
        y = op.Mul(y, weight if weight.dtype == acc else op.Cast(weight, to=acc))
    return _down(y, x), op.Squeeze(rstd, last)


def rms_norm_forward(x, weight=None, eps: float = 1e-6):
    return _rms_norm(x, x, weight, eps)


def rms_norm(x, weight=None, eps: float = 1e-6):
    out, _ = _rms_norm(x, x, weight, eps)
    return out


def add_rms_norm_forward(x, residual, weight=None, eps: float = 1e-6):
    # The sum is rounded to x's dtype before it is normalized: new_residual is what the
    # next block adds to, and the op normalizes exactly that tensor.
    h = op.Add(x, residual)
    out, rstd = _rms_norm(h, x, weight, eps)
    return out, h, rstd


def add_rms_norm(x, residual, weight=None, eps: float = 1e-6):
    out, h, _ = add_rms_norm_forward(x, residual, weight, eps)
    return out, h


def _last_dim(v) -> ir.Value:
    """v's last dim as a 1-element int64 tensor: a constant when the export knows it."""
    d = v.shape[-1] if v.shape is not None else None
    return _ints([d]) if isinstance(d, int) else op.Shape(v, start=-1)


def rotary_embedding(x, cos, sin, interleaved: bool = False):
    half = _last_dim(cos)
    half_n = cos.shape[-1] if cos.shape is not None else None
    rd = _ints([2 * half_n]) if isinstance(half_n, int) else op.Mul(half, _ints([2]))
    last = _ints([-1])
    c, s = _up(cos), _up(sin)
    if interleaved:
        # Pairs (x[2i], x[2i+1]): even and odd lanes by stride-2 slices, rotated, then put
        # back side by side ([..., rd/2, 2]) and flattened into [..., rd].
        xe = _up_as(op.Slice(x, _ints([0]), rd, last, _ints([2])), x)
        xo = _up_as(op.Slice(x, _ints([1]), rd, last, _ints([2])), x)
        even = op.Sub(op.Mul(xe, c), op.Mul(xo, s))
        odd = op.Add(op.Mul(xo, c), op.Mul(xe, s))
        pairs = op.Concat(op.Unsqueeze(even, last), op.Unsqueeze(odd, last), axis=-1)
        # rd rather than -1: a -1 cannot be inferred when a leading dim is 0.
        rot = op.Reshape(pairs, op.Concat(op.Shape(x, end=-1), rd, axis=0))
    else:
        x1 = _up_as(op.Slice(x, _ints([0]), half, last), x)
        x2 = _up_as(op.Slice(x, half, rd, last), x)
        rot = op.Concat(op.Sub(op.Mul(x1, c), op.Mul(x2, s)), op.Add(op.Mul(x2, c), op.Mul(x1, s)), axis=-1)
    rot = _down(rot, x)
    head_dim = x.shape[-1] if x.shape is not None else None
    if isinstance(head_dim, int) and isinstance(half_n, int) and head_dim == 2 * half_n:
        return rot
    # rotary_dim < head_dim: the last head_dim - rotary_dim lanes pass through unchanged.
    rest = op.Slice(x, rd, _ints([2**62]), last)
    return op.Concat(rot, rest, axis=-1)


def _glu(gate, up, act):
    x = gate
    if up is None:  # one tensor [..., 2 I]: the gate is the first half, up the second
        gate, up = op.Split(x, axis=-1, num_outputs=2)
    g, u = _up_as(gate, x), _up_as(up, x)
    return _down(op.Mul(act(g, _acc_dtype(x)), u), x)


def swiglu(gate, up=None):
    return _glu(gate, up, lambda g, dtype: op.Mul(g, op.Sigmoid(g)))


def geglu(gate, up=None, approximate: str = "none"):
    if approximate not in ("none", "tanh"):
        raise ValueError(
            f"teachcompute_ext.onnx: unknown approximation '{approximate}' for argument "
            "'approximate' of geglu (expected none or tanh)"
        )
    return _glu(gate, up, _gelu if approximate == "none" else _gelu_tanh)


# ---- in-place scatter_nd_ --------------------------------------------------------------------
def functionalize_scatter_nd_(program: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """Rewrites the in-place ``scatter_nd_`` of a functionalized ExportedProgram as ``scatter_nd``.

    torch.export turns an in-place custom op into an ``auto_functionalized_v2`` node, and
    torch.onnx cannot translate those: it reads the op handle stored in the node's
    arguments as a graph value and fails with a KeyError. The node writes ``scatter_nd``
    of the tensor into a new copy of it, which is exactly what ``scatter_nd`` computes, so
    the rewrite is exact when the tensor is not a view (a view would need its base
    rebuilt around it, left as an error).
    """
    hops = {torch.ops.higher_order.auto_functionalized_v2, torch.ops.higher_order.auto_functionalized}
    graph = program.graph_module.graph
    for node in list(graph.nodes):
        if node.target not in hops or node.args[0] is not _ops.scatter_nd_.default:
            continue
        kw = dict(node.kwargs)
        if node.target is torch.ops.higher_order.auto_functionalized:
            data = kw["data"]
        else:
            views = {"_data_size", "_data_storage_offset", "_data_slice_dim"} & kw.keys()
            if views:
                raise NotImplementedError(
                    "teachcompute_ext.onnx: scatter_nd_ on a view (a slice or a strided view of another "
                    "tensor) cannot be exported; call scatter_nd on the whole tensor instead"
                )
            data = kw["_all_bases"][kw["_data_base_index"]]
        with graph.inserting_before(node):
            functional = graph.call_function(
                _ops.scatter_nd.default, (data, kw["indices"], kw["updates"], kw.get("reduction", "none"))
            )
        functional.meta.update({k: v for k, v in node.meta.items() if k != "val"})
        # The node returns (None, the written copy of data): index 1 is the new data.
        for user in list(node.users):
            if user.args[1] != 1:
                raise AssertionError(f"unexpected use of {node}: {user}")
            functional.meta["val"] = user.meta["val"]
            user.replace_all_uses_with(functional)
            graph.erase_node(user)
        graph.erase_node(node)
    graph.lint()
    program.graph_module.recompile()
    return program


def export(model, args=(), kwargs=None, *, dynamic_shapes=None, strict=False, **onnx_kwargs):
    """``torch.onnx.export(model, args, dynamo=True, custom_translation_table=...)`` for
    models that also call the in-place ``scatter_nd_``: exports with torch.export,
    functionalizes, rewrites ``scatter_nd_`` (see :func:`functionalize_scatter_nd_`) and
    hands the program to torch.onnx. ``onnx_kwargs`` go to ``torch.onnx.export``."""
    program = torch.export.export(model, tuple(args), kwargs, dynamic_shapes=dynamic_shapes, strict=strict)
    program = functionalize_scatter_nd_(program.run_decompositions({}))
    return torch.onnx.export(program, dynamo=True, custom_translation_table=custom_translation_table, **onnx_kwargs)


def _table():
    table = {}
    functions = {
        "vector_sum": vector_sum,
        "reduce_sum": reduce_sum,
        "reduce_mean": reduce_mean,
        "reduce_max": reduce_max,
        "reduce_min": reduce_min,
        "logsumexp": logsumexp,
        "softmax": softmax,
        "log_softmax": log_softmax,
        "scatter_nd": scatter_nd,
        "scatter_nd_of_shape": scatter_nd_of_shape,
        "masked_scatter_nd_of_shape": masked_scatter_nd_of_shape,
        "embedding": embedding,
        "embedding_bag": embedding_bag,
        "embedding_bag_forward": embedding_bag_forward,
        "fused_matmul": fused_matmul,
        "fused_linear": fused_linear,
        "rms_norm_forward": rms_norm_forward,
        "add_rms_norm_forward": add_rms_norm_forward,
        "rotary_embedding": rotary_embedding,
        "swiglu": swiglu,
        "geglu": geglu,
        # Composite ops: a graph holds their *_forward op, unless the exporter keeps them
        # whole because this table names them.
        "rms_norm": rms_norm,
        "add_rms_norm": add_rms_norm,
    }
    for name, fn in functions.items():
        table[getattr(_ops, name).default] = fn
    return table


custom_translation_table = _table()
