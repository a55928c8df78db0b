"""Embedding family: embedding and embedding_bag (torch.nn.functional semantics),
wrappers, fake kernels and autograd. The dense weight gradients come from the
ScatterND family's scatter-add kernel: deterministic on the CPU always, on CUDA
under torch.use_deterministic_algorithms(True).
"""
import torch

from ._common import check_float_dtype

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


@torch.library.register_fake("teachcompute_ext::embedding")
def _embedding_fake(weight, indices, padding_idx=None):
    _check_weight("embedding", weight)
    _check_indices("embedding", indices)
    return weight.new_empty(tuple(indices.shape) + (weight.shape[1],))


@torch.library.register_fake("teachcompute_ext::embedding_backward")
def _embedding_backward_fake(grad, indices, num_weights, padding_idx=None):
    check_float_dtype("embedding_backward", "grad", grad)
    _check_indices("embedding_backward", indices)
    return grad.new_empty((num_weights, grad.shape[-1]))


@torch.library.register_fake("teachcompute_ext::embedding_bag_forward")
def _embedding_bag_forward_fake(weight, indices, offsets, mode, psw, padding_idx, include_last_offset):
    _check_weight("embedding_bag", weight)
    bags = _bag_count(indices, offsets, mode, psw, include_last_offset)
    out = weight.new_empty((bags, weight.shape[1]))
    argmax = indices.new_empty((bags, weight.shape[1]) if mode == "max" else (0,), dtype=torch.int64)
    return out, argmax


@torch.library.register_fake("teachcompute_ext::embedding_bag_backward")
def _embedding_bag_backward_fake(grad, weight, indices, offsets, max_indices, mode, psw, padding_idx,
                                 include_last_offset):
    check_float_dtype("embedding_bag_backward", "grad", grad)
    _bag_count(indices, offsets, mode, psw, include_last_offset)
    gpsw = psw.new_empty(psw.shape) if psw is not None else grad.new_empty((0,))
    return grad.new_empty(weight.shape), gpsw


def _embedding_setup(ctx, inputs, output):
    weight, indices, padding_idx = inputs
    ctx.save_for_backward(indices)
    ctx.num_weights = weight.shape[0]
    ctx.padding_idx = padding_idx


def _embedding_backward(ctx, grad):
    (indices,) = ctx.saved_tensors
    return _ops.embedding_backward.default(grad, indices, ctx.num_weights, ctx.padding_idx), None, None


def _bag_setup(ctx, inputs, output):
    weight, indices, offsets, mode, psw, padding_idx, include_last_offset = inputs
    _, max_indices = output
    ctx.save_for_backward(weight, indices, offsets, max_indices, psw)
    ctx.mode, ctx.padding_idx, ctx.include_last_offset = mode, padding_idx, include_last_offset


def _bag_backward(ctx, grad, _grad_max_indices):
    weight, indices, offsets, max_indices, psw = ctx.saved_tensors
    gw, gpsw = _ops.embedding_bag_backward.default(grad, weight, indices, offsets, max_indices, ctx.mode, psw,
                                                   ctx.padding_idx, ctx.include_last_offset)
    return (gw if ctx.needs_input_grad[0] else None), None, None, None, \
        (gpsw if psw is not None and ctx.needs_input_grad[4] else None), None, None


torch.library.register_autograd("teachcompute_ext::embedding", _embedding_backward, setup_context=_embedding_setup)
torch.library.register_autograd("teachcompute_ext::embedding_bag_forward", _bag_backward, setup_context=_bag_setup)
