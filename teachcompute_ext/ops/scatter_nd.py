"""ScatterND family (ONNX ScatterND, opset 18, and its "of shape" forms):
wrappers and fake kernels (autograd is in C++).

Duplicate destinations: add, mul, max and min combine every duplicate (the half
types in float, rounded once); with reduction="none" the last update in the
order of ``indices`` wins, on every device. An index out of range is an error:
an exception on the CPU, a device-side assert naming the op and the argument on
CUDA (as torch's own CUDA index ops: raising at once would need a host sync;
the error surfaces at the next synchronization).
"""
import torch

from ._common import FLOAT_DTYPES, check_same_device

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
def _check(op, shape, data_dtype, indices, updates, reduction, data=None):
    data_is_tensor = data is not None
    if data_is_tensor:
        check_same_device(op, "indices", indices, "data", data)
        check_same_device(op, "updates", updates, "data", data)
    else:
        check_same_device(op, "indices", indices, "updates", updates)
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
    if k > 64:
        raise RuntimeError(f"teachcompute_ext.{op}: the last dim of 'indices' (k = {k}) is more than the 64 index "
                           "dims supported")
    expected = list(indices.shape[:-1]) + list(shape[k:])
    if list(updates.shape) != expected:
        raise RuntimeError(f"teachcompute_ext.{op}: 'updates' has shape {list(updates.shape)} but indices "
                           f"{list(indices.shape)} and data {list(shape)} need {expected}")
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
        raise RuntimeError(f"teachcompute_ext.{op}: 'indices' must end in a dim of 1 (k = 1), got shape "
                           f"{list(indices.shape)}")
    return updates.new_empty(shape)

# Autograd (none and add) is registered in C++ (csrc/scatter_nd/scatter_nd_autograd.cpp).
