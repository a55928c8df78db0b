"""Embedding family: embedding and embedding_bag (torch.nn.functional semantics),
wrappers and fake kernels (autograd is in C++). The dense weight gradients come from the
ScatterND family's scatter-add kernel: deterministic on the CPU always, on CUDA
under torch.use_deterministic_algorithms(True).
"""
import torch

from ._common import check_float_dtype, check_same_device

_ops = torch.ops.teachcompute_ext
MODES = ("sum", "mean", "max")


def embedding(weight: torch.Tensor, indices: torch.Tensor, padding_idx=None) -> torch.Tensor:
    """``weight[indices]``, as ``torch.nn.functional.embedding(indices, weight, padding_idx)``
    (note the argument order: weight first, as in the schema)."""
    return _ops.embedding.default(weight, indices, padding_idx)


def embedding_bag(weight: torch.Tensor, indices: torch.Tensor, offsets=None, mode: str = "mean",
                  per_sample_weights=None, padding_idx=None, include_last_offset: bool = False) -> torch.Tensor:
    """``torch.nn.functional.embedding_bag(indices, weight, offsets, mode=..., ...)``: bags of
    rows reduced by sum, mean or max, without building the gathered matrix."""
    return _ops.embedding_bag.default(weight, indices, offsets, mode, per_sample_weights, padding_idx,
                                      include_last_offset)


def _check_indices(op, t, name="indices"):
    if t.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"teachcompute_ext.{op}: unsupported dtype {t.dtype} for argument '{name}' "
                        "(expected int64 or int32)")


def _check_weight(op, weight):
    check_float_dtype(op, "weight", weight)
    if weight.dim() != 2:
        raise RuntimeError(f"teachcompute_ext.{op}: 'weight' must be 2-D [num_embeddings, dim], got shape "
                           f"{list(weight.shape)}")


def _bag_count(indices, offsets, mode, psw, include_last_offset):
    op = "embedding_bag"
    if mode not in MODES:
        raise ValueError(f"teachcompute_ext.{op}: unknown mode '{mode}' for argument 'mode' (expected one of sum, mean, max)")
    _check_indices(op, indices)
    if indices.dim() == 2:
        if offsets is not None:
            raise RuntimeError(f"teachcompute_ext.{op}: 'offsets' must be None when 'indices' is 2-D (fixed-length "
                               f"bags), got shape {list(indices.shape)}")
        bags = indices.shape[0]
    else:
        if indices.dim() != 1:
            raise RuntimeError(f"teachcompute_ext.{op}: 'indices' must be 1-D (with offsets) or 2-D, got shape "
                               f"{list(indices.shape)}")
        if offsets is None:
            raise RuntimeError(f"teachcompute_ext.{op}: 'offsets' is required when 'indices' is 1-D")
        _check_indices(op, offsets, "offsets")
        bags = offsets.shape[0] - (1 if include_last_offset else 0)
    if psw is not None:
        if mode != "sum":
            raise RuntimeError(f"teachcompute_ext.{op}: 'per_sample_weights' is only supported with mode='sum', "
                               f"got mode='{mode}'")
        if psw.shape != indices.shape:
            raise RuntimeError(f"teachcompute_ext.{op}: 'per_sample_weights' has shape {list(psw.shape)} but "
                               f"'indices' has shape {list(indices.shape)}")
    return bags


def _check_padding(op, padding_idx, num):
    if padding_idx is not None and not -num <= padding_idx < num:
        raise IndexError(f"teachcompute_ext.{op}: padding_idx {padding_idx} out of range for argument 'padding_idx' "
                         f"of a weight with {num} rows")


def _check_bag_args(op, weight, indices, offsets, mode, psw, padding_idx, include_last_offset):
    """Mirror of check_bag_args in csrc/embedding/embedding.h (same checks, same order, same words)."""
    _check_weight(op, weight)
    check_same_device(op, "indices", indices, "weight", weight)
    if offsets is not None:
        check_same_device(op, "offsets", offsets, "weight", weight)
    if psw is not None:
        check_same_device(op, "per_sample_weights", psw, "weight", weight)
    bags = _bag_count(indices, offsets, mode, psw, include_last_offset)
    if psw is not None and psw.dtype != weight.dtype:
        raise TypeError(f"teachcompute_ext.embedding_bag: 'per_sample_weights' has dtype {psw.dtype} but 'weight' "
                        f"has dtype {weight.dtype}")
    _check_padding(op, padding_idx, weight.shape[0])
    return bags


@torch.library.register_fake("teachcompute_ext::embedding")
def _embedding_fake(weight, indices, padding_idx=None):
    _check_weight("embedding", weight)
    _check_indices("embedding", indices)
    check_same_device("embedding", "indices", indices, "weight", weight)
    _check_padding("embedding", padding_idx, weight.shape[0])
    return weight.new_empty(tuple(indices.shape) + (weight.shape[1],))


@torch.library.register_fake("teachcompute_ext::embedding_backward")
def _embedding_backward_fake(grad, indices, num_weights, padding_idx=None):
    op = "embedding_backward"
    check_float_dtype(op, "grad", grad)
    _check_indices(op, indices)
    check_same_device(op, "indices", indices, "grad", grad)
    if grad.dim() != indices.dim() + 1 or list(grad.shape[:-1]) != list(indices.shape):
        raise RuntimeError(f"teachcompute_ext.{op}: argument 'grad' has shape {list(grad.shape)} but 'indices' has "
                           f"shape {list(indices.shape)} (expected indices.shape + [embedding_dim])")
    _check_padding(op, padding_idx, num_weights)
    return grad.new_empty((num_weights, grad.shape[-1]))


@torch.library.register_fake("teachcompute_ext::embedding_bag_forward")
def _embedding_bag_forward_fake(weight, indices, offsets, mode, psw, padding_idx, include_last_offset):
    bags = _check_bag_args("embedding_bag", weight, indices, offsets, mode, psw, padding_idx, include_last_offset)
    out = weight.new_empty((bags, weight.shape[1]))
    argmax = indices.new_empty((bags, weight.shape[1]) if mode == "max" else (0,), dtype=torch.int64)
    return out, argmax


@torch.library.register_fake("teachcompute_ext::embedding_bag_backward")
def _embedding_bag_backward_fake(grad, weight, indices, offsets, max_indices, mode, psw, padding_idx,
                                 include_last_offset):
    op = "embedding_bag_backward"
    check_float_dtype(op, "grad", grad)
    bags = _check_bag_args(op, weight, indices, offsets, mode, psw, padding_idx, include_last_offset)
    check_same_device(op, "grad", grad, "weight", weight)
    if grad.dim() != 2 or grad.shape[0] != bags or grad.shape[1] != weight.shape[1]:
        raise RuntimeError(f"teachcompute_ext.{op}: argument 'grad' has shape {list(grad.shape)} but the bags have "
                           f"shape [{bags}, {weight.shape[1]}]")
    if mode == "max":
        check_same_device(op, "max_indices", max_indices, "weight", weight)
        if max_indices.dtype != torch.int64 or max_indices.shape != grad.shape:
            raise RuntimeError(f"teachcompute_ext.{op}: argument 'max_indices' must be int64 of shape "
                               f"{list(grad.shape)} (the forward's argmax), got {max_indices.dtype} of shape "
                               f"{list(max_indices.shape)}")
    gpsw = psw.new_empty(psw.shape) if psw is not None else grad.new_empty((0,))
    return grad.new_empty(weight.shape), gpsw


# Autograd is registered in C++ (csrc/embedding/embedding_autograd.cpp), like every family's.
