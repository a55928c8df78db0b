"""ScatterND family (ONNX ScatterND, opset 18, and its "of shape" forms):
wrappers and fake kernels (autograd is in C++).

Data: the floating dtypes, uint8, int8, int16, int32, int64 (integers exact,
add and mul wrapping around as torch's), and bool with reduction="none" only.
Duplicate destinations: add, mul, max and min combine every duplicate (the half
types in float, rounded once); with reduction="none" the last update in the
order of ``indices`` wins, on every device. An index out of range is an error:
an exception on the CPU, a device-side assert naming the op and the argument on
CUDA (as torch's own CUDA index ops: raising at once would need a host sync;
the error surfaces at the next synchronization).
"""

import torch

from ._common import check_float_or_int_dtype, check_same_device, public

_ops = torch.ops.teachcompute_ext
REDUCTIONS = ("none", "add", "mul", "max", "min")


scatter_nd = public(
    "scatter_nd",
    """scatter_nd(data: torch.Tensor, indices: torch.Tensor, updates: torch.Tensor, reduction: str = "none")

    A copy of ``data`` with ``updates`` scattered at ``indices`` (ONNX ScatterND).
    """,
)


scatter_nd_ = public(
    "scatter_nd_",
    """scatter_nd_(data: torch.Tensor, indices: torch.Tensor, updates: torch.Tensor, reduction: str = "none")

    In-place :func:`scatter_nd`; returns ``data``. Under autograd it is an in-place op of torch's
    kind (as ``index_put_``): differentiable for reduction none and add, ``data``'s version counter is
    bumped, and a leaf that requires grad is refused.
    """,
)


scatter_nd_of_shape = public(
    "scatter_nd_of_shape",
    """scatter_nd_of_shape(shape, indices: torch.Tensor, updates: torch.Tensor, reduction: str = "add")

    ScatterND into zeros of ``shape``: the backward of a gather or an embedding.
    """,
)


masked_scatter_nd_of_shape = public(
    "masked_scatter_nd_of_shape",
    """masked_scatter_nd_of_shape(shape, indices: torch.Tensor, updates: torch.Tensor, masked_value: int, reduction: str = "add")

    :func:`scatter_nd_of_shape` skipping the updates whose index (k = 1) equals ``masked_value``.
    """,
)


# ---- checks shared by the fake kernels (same words as csrc/scatter_nd/scatter_nd.h) ----
def _check(op, shape, data_dtype, indices, updates, reduction, data=None):
    data_is_tensor = data is not None
    if data_is_tensor:
        check_same_device(op, "indices", indices, "data", data)
        check_same_device(op, "updates", updates, "data", data)
    else:
        check_same_device(op, "indices", indices, "updates", updates)
    if reduction not in REDUCTIONS:
        raise ValueError(
            f"teachcompute_ext.{op}: unknown reduction '{reduction}' for argument 'reduction' "
            "(expected one of none, add, mul, max, min)"
        )
    if data_is_tensor:
        check_float_or_int_dtype(op, "data", data)
    check_float_or_int_dtype(op, "updates", updates)
    if updates.dtype == torch.bool and reduction != "none":
        raise TypeError(
            f"teachcompute_ext.{op}: reduction '{reduction}' is not supported for bool data "
            "(argument 'reduction'; bool takes 'none' only)"
        )
    if data_is_tensor and updates.dtype != data_dtype:
        raise TypeError(f"teachcompute_ext.{op}: 'updates' has dtype {updates.dtype} but 'data' has dtype {data_dtype}")
    if indices.dtype not in (torch.int64, torch.int32):
        raise TypeError(
            f"teachcompute_ext.{op}: unsupported dtype {indices.dtype} for argument 'indices' (expected int64 or int32)"
        )
    if indices.dim() < 1:
        raise RuntimeError(
            f"teachcompute_ext.{op}: 'indices' must have at least one dim [..., k], got shape {list(indices.shape)}"
        )
    k = indices.shape[-1]
    if not 1 <= k <= len(shape):
        raise RuntimeError(
            f"teachcompute_ext.{op}: the last dim of 'indices' (k = {k}) must be in [1, rank of data = "
            f"{len(shape)}]; indices {list(indices.shape)}, data {list(shape)}"
        )
    if k > 64:
        raise RuntimeError(
            f"teachcompute_ext.{op}: the last dim of 'indices' (k = {k}) is more than the 64 index dims supported"
        )
    expected = list(indices.shape[:-1]) + list(shape[k:])
    if list(updates.shape) != expected:
        raise RuntimeError(
            f"teachcompute_ext.{op}: 'updates' has shape {list(updates.shape)} but indices "
            f"{list(indices.shape)} and data {list(shape)} need {expected}"
        )
    return k


@torch.library.register_fake("teachcompute_ext::scatter_nd")
def _scatter_nd_fake(data, indices, updates, reduction="none"):
    _check("scatter_nd", data.shape, data.dtype, indices, updates, reduction, data)
    return data.new_empty(data.shape)


@torch.library.register_fake("teachcompute_ext::scatter_nd_")
def _scatter_nd__fake(data, indices, updates, reduction="none"):
    _check("scatter_nd_", data.shape, data.dtype, indices, updates, reduction, data)


@torch.library.register_fake("teachcompute_ext::scatter_nd_of_shape")
def _scatter_nd_of_shape_fake(shape, indices, updates, reduction="add"):
    _check("scatter_nd_of_shape", shape, updates.dtype, indices, updates, reduction)
    return updates.new_empty(shape)


@torch.library.register_fake("teachcompute_ext::masked_scatter_nd_of_shape")
def _masked_scatter_nd_of_shape_fake(shape, indices, updates, masked_value, reduction="add"):
    op = "masked_scatter_nd_of_shape"
    k = _check(op, shape, updates.dtype, indices, updates, reduction)
    if k != 1:
        raise RuntimeError(
            f"teachcompute_ext.{op}: 'indices' must end in a dim of 1 (k = 1), got shape {list(indices.shape)}"
        )
    return updates.new_empty(shape)


# Autograd (none and add) is registered in C++ (csrc/scatter_nd/scatter_nd_autograd.cpp).


# ---------------------------------------------------------------------------
# vmap rules (torch.func.vmap). With unbatched indices the batch dim moves to
# just after the k indexed dims of data (and after the index dims of updates):
# every index then addresses a [B, ...] slab, and no index tensor is built.
# With batched indices, each index tuple gets its sample's number as a first
# coordinate (k + 1). Duplicates stay in index order within a sample either way,
# so reduction="none" keeps the last one, as without vmap.
# ---------------------------------------------------------------------------
from . import _vmap  # noqa: E402


def _vmap_scatter_args(batch, k, data, d_b, indices, i_b, updates, u_b):
    """(data, indices, updates, out_dim) of one scatter over the whole batch; data is None for
    the "of shape" ops (the caller builds the shape from out_dim)."""
    lead = indices.dim() - (0 if i_b is None else 1) - 1  # the index dims of one sample
    if i_b is None:
        if data is not None:
            data = _vmap.front_or_expand(data, d_b, batch).movedim(0, k)
        return data, indices, _vmap.front_or_expand(updates, u_b, batch).movedim(0, lead), k
    indices = indices.movedim(i_b, 0)
    first = _vmap.batch_index(batch, indices).expand(*indices.shape[:-1], 1)
    indices = torch.cat([first, indices], dim=-1)
    if data is not None:
        data = _vmap.front_or_expand(data, d_b, batch)
    return data, indices, _vmap.front_or_expand(updates, u_b, batch), 0


def _vmap_scatter_nd(info, in_dims, data, indices, updates, reduction="none"):
    d_b, i_b, u_b = in_dims[:3]
    ld = _vmap.logical(data, d_b)
    k = _check(
        "scatter_nd", ld.shape, ld.dtype, _vmap.logical(indices, i_b), _vmap.logical(updates, u_b), reduction, ld
    )
    data, indices, updates, out_dim = _vmap_scatter_args(info.batch_size, k, data, d_b, indices, i_b, updates, u_b)
    return _ops.scatter_nd.default(data, indices, updates, reduction), out_dim


def _vmap_scatter_nd_(info, in_dims, data, indices, updates, reduction="none"):
    d_b, i_b, u_b = in_dims[:3]
    if d_b is None:
        # torch refuses the same for its in-place ops under vmap: one tensor cannot hold a batch of results.
        raise RuntimeError(
            "teachcompute_ext.scatter_nd_: vmap: argument 'data' is not batched but 'indices' or "
            "'updates' is, so each sample would write its own result into the same 'data'; batch "
            "'data' (in_dims) or use scatter_nd, which returns a new tensor"
        )
    ld = _vmap.logical(data, d_b)
    k = _check(
        "scatter_nd_", ld.shape, ld.dtype, _vmap.logical(indices, i_b), _vmap.logical(updates, u_b), reduction, ld
    )
    # data's view: the op writes through it (and copies back itself when the view is not contiguous).
    view, indices, updates, _ = _vmap_scatter_args(info.batch_size, k, data, d_b, indices, i_b, updates, u_b)
    _ops.scatter_nd_.default(view, indices, updates, reduction)
    return None, None


def _vmap_shape(shape, batch, out_dim):
    shape = list(shape)
    return shape[:out_dim] + [batch] + shape[out_dim:]


def _vmap_scatter_nd_of_shape(info, in_dims, shape, indices, updates, reduction="add"):
    i_b, u_b = in_dims[1:3]
    k = _check(
        "scatter_nd_of_shape",
        list(shape),
        updates.dtype,
        _vmap.logical(indices, i_b),
        _vmap.logical(updates, u_b),
        reduction,
    )
    _, indices, updates, out_dim = _vmap_scatter_args(info.batch_size, k, None, None, indices, i_b, updates, u_b)
    return _ops.scatter_nd_of_shape.default(
        _vmap_shape(shape, info.batch_size, out_dim), indices, updates, reduction
    ), out_dim


def _vmap_masked_scatter_nd_of_shape(info, in_dims, shape, indices, updates, masked_value, reduction="add"):
    i_b, u_b = in_dims[1], in_dims[2]
    _masked_check(shape, _vmap.logical(indices, i_b), _vmap.logical(updates, u_b), reduction)
    batch = info.batch_size
    if i_b is None:
        _, indices, updates, out_dim = _vmap_scatter_args(batch, 1, None, None, indices, None, updates, u_b)
        return _ops.masked_scatter_nd_of_shape.default(
            _vmap_shape(shape, batch, 1), indices, updates, masked_value, reduction
        ), 1
    # k must stay 1, so the samples' tables are stacked into one of batch * rows rows instead
    # of gaining a coordinate. Masked updates get a value no other index can take: batch * rows
    # (flat_rows sends the out-of-range ones further away).
    rows = shape[0]
    indices = indices.movedim(i_b, 0)
    flat = _vmap.flat_rows(indices, rows, batch, allow_negative=True)
    masked = batch * rows
    flat = torch.where(indices == masked_value, masked, flat)
    updates = _vmap.front_or_expand(updates, u_b, batch)
    out = _ops.masked_scatter_nd_of_shape.default([batch * rows, *shape[1:]], flat, updates, masked, reduction)
    return out.view(batch, *shape), 0


def _masked_check(shape, indices, updates, reduction):
    """The checks of the fake below, on logical arguments."""
    op = "masked_scatter_nd_of_shape"
    k = _check(op, list(shape), updates.dtype, indices, updates, reduction)
    if k != 1:
        raise RuntimeError(
            f"teachcompute_ext.{op}: 'indices' must end in a dim of 1 (k = 1), got shape {list(indices.shape)}"
        )


_vmap.register("scatter_nd", _vmap_scatter_nd)
_vmap.register("scatter_nd_", _vmap_scatter_nd_)
_vmap.register("scatter_nd_of_shape", _vmap_scatter_nd_of_shape)
_vmap.register("masked_scatter_nd_of_shape", _vmap_masked_scatter_nd_of_shape)
