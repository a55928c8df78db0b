"""ScatterND family (ONNX ScatterND, opset 18, and its "of shape" forms):
wrappers, fake kernels and autograd.

Duplicate destinations: add, mul, max and min combine every duplicate; with
reduction="none" the CPU keeps the last update in the order of ``indices``
(CUDA: one of them, unless ``torch.use_deterministic_algorithms(True)``, which
also keeps the last). Out-of-range indices raise on the CPU; on CUDA their
updates are skipped (nothing outside the tensor is read or written, no error is
raised, since raising would need a host sync).
"""
import torch

from ._common import FLOAT_DTYPES

_ops = torch.ops.teachcompute_ext
REDUCTIONS = ("none", "add", "mul", "max", "min")


def scatter_nd(data: torch.Tensor, indices: torch.Tensor, updates: torch.Tensor, reduction: str = "none"):
    """A copy of ``data`` with ``updates`` scattered at ``indices`` (ONNX ScatterND)."""
    return _ops.scatter_nd.default(data, indices, updates, reduction)


def scatter_nd_(data: torch.Tensor, indices: torch.Tensor, updates: torch.Tensor, reduction: str = "none"):
    """In-place :func:`scatter_nd`; returns ``data``."""
    _ops.scatter_nd_.default(data, indices, updates, reduction)
    return data


def scatter_nd_of_shape(shape, indices: torch.Tensor, updates: torch.Tensor, reduction: str = "add"):
    """ScatterND into zeros of ``shape``: the backward of a gather or an embedding."""
    return _ops.scatter_nd_of_shape.default(list(shape), indices, updates, reduction)


def masked_scatter_nd_of_shape(shape, indices: torch.Tensor, updates: torch.Tensor, masked_value: int,
                               reduction: str = "add"):
    """:func:`scatter_nd_of_shape` skipping the updates whose index (k = 1) equals ``masked_value``."""
    return _ops.masked_scatter_nd_of_shape.default(list(shape), indices, updates, masked_value, reduction)


# ---- checks shared by the fake kernels (same words as csrc/scatter_nd/scatter_nd.h) ----
def _check(op, shape, data_dtype, indices, updates, reduction, data_is_tensor=True):
    if reduction not in REDUCTIONS:
        raise ValueError(f"teachcompute_ext.{op}: unknown reduction '{reduction}' for argument 'reduction' "
                         "(expected one of none, add, mul, max, min)")
    if data_is_tensor and data_dtype not in FLOAT_DTYPES:
        raise TypeError(f"teachcompute_ext.{op}: unsupported dtype {data_dtype} for argument 'data' "
                        "(expected float32, float64, float16 or bfloat16)")
    if updates.dtype not in FLOAT_DTYPES:
        raise TypeError(f"teachcompute_ext.{op}: unsupported dtype {updates.dtype} for argument 'updates' "
                        "(expected float32, float64, float16 or bfloat16)")
    if data_is_tensor and updates.dtype != data_dtype:
        raise TypeError(f"teachcompute_ext.{op}: 'updates' has dtype {updates.dtype} but 'data' has dtype {data_dtype}")
    if indices.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"teachcompute_ext.{op}: unsupported dtype {indices.dtype} for argument 'indices' "
                        "(expected int64 or int32)")
    if indices.dim() < 1:
        raise RuntimeError(f"teachcompute_ext.{op}: 'indices' must have at least one dim [..., k], got shape "
                           f"{list(indices.shape)}")
    k = indices.shape[-1]
    if not 1 <= k <= len(shape):
        raise RuntimeError(f"teachcompute_ext.{op}: the last dim of 'indices' (k = {k}) must be in [1, rank of data = "
                           f"{len(shape)}]; indices {list(indices.shape)}, data {list(shape)}")
    expected = list(indices.shape[:-1]) + list(shape[k:])
    if list(updates.shape) != expected:
        raise RuntimeError(f"teachcompute_ext.{op}: 'updates' has shape {list(updates.shape)} but indices "
                           f"{list(indices.shape)} and data {list(shape)} need {expected}")
    return k


@torch.library.register_fake("teachcompute_ext::scatter_nd")
def _scatter_nd_fake(data, indices, updates, reduction="none"):
    _check("scatter_nd", data.shape, data.dtype, indices, updates, reduction)
    return data.new_empty(data.shape)


@torch.library.register_fake("teachcompute_ext::scatter_nd_")
def _scatter_nd__fake(data, indices, updates, reduction="none"):
    _check("scatter_nd_", data.shape, data.dtype, indices, updates, reduction)


@torch.library.register_fake("teachcompute_ext::scatter_nd_of_shape")
def _scatter_nd_of_shape_fake(shape, indices, updates, reduction="add"):
    _check("scatter_nd_of_shape", shape, updates.dtype, indices, updates, reduction, data_is_tensor=False)
    return updates.new_empty(shape)


@torch.library.register_fake("teachcompute_ext::masked_scatter_nd_of_shape")
def _masked_scatter_nd_of_shape_fake(shape, indices, updates, masked_value, reduction="add"):
    op = "masked_scatter_nd_of_shape"
    k = _check(op, shape, updates.dtype, indices, updates, reduction, data_is_tensor=False)
    if k != 1:
        raise RuntimeError(f"teachcompute_ext.{op}: 'indices' must end in a dim of 1 (k = 1), got shape "
                           f"{list(indices.shape)}")
    return updates.new_empty(shape)


# ---- autograd ---------------------------------------------------------------------------
def _rows(indices, shape):
    """Destination row of each update (negative indices wrapped), flattened."""
    idx = indices.long()
    row = torch.zeros(idx.shape[:-1], dtype=torch.long, device=idx.device)
    for d in range(idx.shape[-1]):
        v = idx[..., d]
        row = row * shape[d] + torch.where(v < 0, v + shape[d], v)
    return row.reshape(-1)


def _n_rows(shape, k):
    n = 1
    for s in shape[:k]:
        n = n * s
    return n


def _winners(rows, n_rows):
    """True for the last update of each destination (the one reduction="none" keeps)."""
    pos = torch.arange(rows.numel(), device=rows.device)
    last = torch.full((n_rows,), -1, dtype=torch.long, device=rows.device)
    last = last.scatter_reduce(0, rows, pos, reduce="amax", include_self=True)
    return last[rows] == pos


def _not_differentiable(op, reduction):
    raise RuntimeError(f"teachcompute_ext.{op}: not differentiable for reduction='{reduction}' "
                       "(gradients exist for none and add)")


def _gather_rows(grad, rows, k, updates_shape, keep=None):
    g2 = grad.reshape(_n_rows(grad.shape, k), -1)
    out = g2.index_select(0, rows.clamp(min=0))
    if keep is not None:
        out = out * keep.unsqueeze(1).to(out.dtype)
    return out.reshape(updates_shape)


def _scatter_nd_setup(ctx, inputs, output):
    _, indices, updates, reduction = inputs
    ctx.save_for_backward(indices)
    ctx.reduction = reduction
    ctx.updates_shape = updates.shape


def _scatter_nd_backward(ctx, grad):
    (indices,) = ctx.saved_tensors
    if ctx.reduction not in ("none", "add"):
        _not_differentiable("scatter_nd", ctx.reduction)
    k = indices.shape[-1]
    rows = _rows(indices, grad.shape)
    grad_data = grad_updates = None
    if ctx.reduction == "add":
        if ctx.needs_input_grad[0]:
            grad_data = grad
        if ctx.needs_input_grad[2]:
            grad_updates = _gather_rows(grad, rows, k, ctx.updates_shape)
    else:
        n_rows = _n_rows(grad.shape, k)
        if ctx.needs_input_grad[0]:
            written = torch.zeros(n_rows, dtype=torch.bool, device=grad.device).index_fill(0, rows, True)
            grad_data = grad.reshape(n_rows, -1).masked_fill(written.unsqueeze(1), 0).reshape(grad.shape)
        if ctx.needs_input_grad[2]:
            grad_updates = _gather_rows(grad, rows, k, ctx.updates_shape, keep=_winners(rows, n_rows))
    return grad_data, None, grad_updates, None


def _of_shape_setup(ctx, inputs, output):
    shape, indices, updates = inputs[0], inputs[1], inputs[2]
    masked = len(inputs) == 5
    ctx.masked_value = inputs[3] if masked else None
    ctx.reduction = inputs[-1]
    ctx.save_for_backward(indices)
    ctx.updates_shape = updates.shape
    ctx.op = "masked_scatter_nd_of_shape" if masked else "scatter_nd_of_shape"


def _of_shape_backward(ctx, grad):
    (indices,) = ctx.saved_tensors
    if ctx.reduction not in ("none", "add"):
        _not_differentiable(ctx.op, ctx.reduction)
    k = indices.shape[-1]
    keep = None
    if ctx.masked_value is not None:
        mask = (indices[..., 0] != ctx.masked_value).reshape(-1)
        rows = torch.where(mask, _rows(indices, grad.shape), 0)
        keep = mask
    else:
        rows = _rows(indices, grad.shape)
    if ctx.reduction == "none":
        n_rows = _n_rows(grad.shape, k)
        win = _winners(torch.where(keep, rows, n_rows) if keep is not None else rows, n_rows + 1)
        keep = win if keep is None else (win & keep)
    grad_updates = _gather_rows(grad, rows, k, ctx.updates_shape, keep=keep)
    if ctx.masked_value is not None:
        return None, None, grad_updates, None, None
    return None, None, grad_updates, None


torch.library.register_autograd("teachcompute_ext::scatter_nd", _scatter_nd_backward, setup_context=_scatter_nd_setup)
torch.library.register_autograd("teachcompute_ext::scatter_nd_of_shape", _of_shape_backward,
                                setup_context=_of_shape_setup)
torch.library.register_autograd("teachcompute_ext::masked_scatter_nd_of_shape", _of_shape_backward,
                                setup_context=_of_shape_setup)
