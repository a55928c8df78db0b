"""Embedding family: embedding and embedding_bag (torch.nn.functional semantics),
wrappers and fake kernels (autograd is in C++). The dense weight gradients come from the
ScatterND family's scatter-add kernel: deterministic on the CPU always, on CUDA
under torch.use_deterministic_algorithms(True).
"""

import torch

from ._common import check_float_dtype, check_same_device, public

_ops = torch.ops.teachcompute_ext
MODES = ("sum", "mean", "max")


embedding = public(
    "embedding",
    """embedding(weight: torch.Tensor, indices: torch.Tensor, padding_idx=None)

    ``weight[indices]``, as ``torch.nn.functional.embedding(indices, weight, padding_idx)``
    (note the argument order: weight first, as in the schema).
    """,
)


embedding_bag = public(
    "embedding_bag",
    """embedding_bag(weight: torch.Tensor, indices: torch.Tensor, offsets=None, mode: str = "mean", per_sample_weights=None, padding_idx=None, include_last_offset: bool = False)

    ``torch.nn.functional.embedding_bag(indices, weight, offsets, mode=..., ...)``: bags of
    rows reduced by sum, mean or max, without building the gathered matrix.
    """,
)


def _check_indices(op, t, name="indices"):
    if t.dtype not in (torch.int64, torch.int32):
        raise TypeError(
            f"teachcompute_ext.{op}: unsupported dtype {t.dtype} for argument '{name}' (expected int64 or int32)"
        )


def _check_weight(op, weight):
    check_float_dtype(op, "weight", weight)
    if weight.dim() != 2:
        raise RuntimeError(
            f"teachcompute_ext.{op}: 'weight' must be 2-D [num_embeddings, dim], got shape {list(weight.shape)}"
        )


def _bag_count(indices, offsets, mode, psw, include_last_offset, op="embedding_bag"):
    if mode not in MODES:
        raise ValueError(
            f"teachcompute_ext.{op}: unknown mode '{mode}' for argument 'mode' (expected one of sum, mean, max)"
        )
    _check_indices(op, indices)
    if indices.dim() == 2:
        if offsets is not None:
            raise RuntimeError(
                f"teachcompute_ext.{op}: 'offsets' must be None when 'indices' is 2-D (fixed-length "
                f"bags), got shape {list(indices.shape)}"
            )
        bags = indices.shape[0]
    else:
        if indices.dim() != 1:
            raise RuntimeError(
                f"teachcompute_ext.{op}: 'indices' must be 1-D (with offsets) or 2-D, got shape {list(indices.shape)}"
            )
        if offsets is None:
            raise RuntimeError(f"teachcompute_ext.{op}: 'offsets' is required when 'indices' is 1-D")
        _check_indices(op, offsets, "offsets")
        bags = offsets.shape[0] - (1 if include_last_offset else 0)
    if psw is not None:
        if mode != "sum":
            raise RuntimeError(
                f"teachcompute_ext.{op}: 'per_sample_weights' is only supported with mode='sum', got mode='{mode}'"
            )
        if psw.shape != indices.shape:
            raise RuntimeError(
                f"teachcompute_ext.{op}: 'per_sample_weights' has shape {list(psw.shape)} but "
                f"'indices' has shape {list(indices.shape)}"
            )
    return bags


def _check_padding(op, padding_idx, num):
    if padding_idx is not None and not -num <= padding_idx < num:
        raise IndexError(
            f"teachcompute_ext.{op}: padding_idx {padding_idx} out of range for argument 'padding_idx' "
            f"of a weight with {num} rows"
        )


def _check_bag_args(
    op, weight, indices, offsets, mode, psw, padding_idx, include_last_offset, layout_op="embedding_bag"
):
    """Mirror of check_bag_args in csrc/embedding/embedding.h (same checks, same order, same words)."""
    _check_weight(op, weight)
    check_same_device(op, "indices", indices, "weight", weight)
    if offsets is not None:
        check_same_device(op, "offsets", offsets, "weight", weight)
    if psw is not None:
        check_same_device(op, "per_sample_weights", psw, "weight", weight)
    bags = _bag_count(indices, offsets, mode, psw, include_last_offset, layout_op)
    if psw is not None and psw.dtype != weight.dtype:
        raise TypeError(
            f"teachcompute_ext.{layout_op}: 'per_sample_weights' has dtype {psw.dtype} but 'weight' "
            f"has dtype {weight.dtype}"
        )
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
    _check_embedding_backward(grad, indices, num_weights, padding_idx)
    return grad.new_empty((num_weights, grad.shape[-1]))


def _check_embedding_backward(grad, indices, num_weights, padding_idx):
    op = "embedding_backward"
    check_float_dtype(op, "grad", grad)
    _check_indices(op, indices)
    check_same_device(op, "indices", indices, "grad", grad)
    if grad.dim() != indices.dim() + 1 or list(grad.shape[:-1]) != list(indices.shape):
        raise RuntimeError(
            f"teachcompute_ext.{op}: argument 'grad' has shape {list(grad.shape)} but 'indices' has "
            f"shape {list(indices.shape)} (expected indices.shape + [embedding_dim])"
        )
    if num_weights < 0:
        raise RuntimeError(f"teachcompute_ext.{op}: argument 'num_weights' must be non-negative, got {num_weights}")
    _check_padding(op, padding_idx, num_weights)


@torch.library.register_fake("teachcompute_ext::embedding_bag_forward")
def _embedding_bag_forward_fake(weight, indices, offsets, mode, psw, padding_idx, include_last_offset):
    bags = _check_bag_args("embedding_bag", weight, indices, offsets, mode, psw, padding_idx, include_last_offset)
    out = weight.new_empty((bags, weight.shape[1]))
    argmax = indices.new_empty((bags, weight.shape[1]) if mode == "max" else (0,), dtype=torch.int64)
    return out, argmax


def _check_bag_grad(op, grad, weight, bags, mode, max_indices):
    """The bags' gradient, a row per bag, and in max mode the forward's argmax that routes it."""
    if grad.dim() != 2 or grad.shape[0] != bags or grad.shape[1] != weight.shape[1]:
        raise RuntimeError(
            f"teachcompute_ext.{op}: argument 'grad' has shape {list(grad.shape)} but the bags have "
            f"shape [{bags}, {weight.shape[1]}]"
        )
    if mode == "max":
        check_same_device(op, "max_indices", max_indices, "weight", weight)
        if max_indices.dtype != torch.int64 or max_indices.shape != grad.shape:
            raise RuntimeError(
                f"teachcompute_ext.{op}: argument 'max_indices' must be int64 of shape "
                f"{list(grad.shape)} (the forward's argmax), got {max_indices.dtype} of shape "
                f"{list(max_indices.shape)}"
            )


@torch.library.register_fake("teachcompute_ext::embedding_bag_backward")
def _embedding_bag_backward_fake(
    grad, weight, indices, offsets, max_indices, mode, psw, padding_idx, include_last_offset
):
    op = "embedding_bag_backward"
    check_float_dtype(op, "grad", grad)
    bags = _check_bag_args(op, weight, indices, offsets, mode, psw, padding_idx, include_last_offset)
    check_same_device(op, "grad", grad, "weight", weight)
    _check_bag_grad(op, grad, weight, bags, mode, max_indices)
    gpsw = psw.new_empty(psw.shape) if psw is not None else grad.new_empty((0,))
    return grad.new_empty(weight.shape), gpsw


# ---------------------------------------------------------------------------
# The backward fused with an optimizer step (csrc/embedding/embedding.h says
# what each optimizer does and keeps): weight and state updated in place.
# ---------------------------------------------------------------------------
OPTIMIZERS = ("sgd", "rowwise_adagrad", "adagrad", "adam", "adamw")


def state_shapes(optimizer, num, dim):
    """The shapes of (state1, state2) each optimizer keeps ([0]: none)."""
    one = {"sgd": (0,), "rowwise_adagrad": (num,)}.get(optimizer, (num, dim))
    two = (num, dim) if optimizer in ("adam", "adamw") else (0,)
    return one, two


def state_dtype(weight_dtype):
    """float32 for a half table (moments in bfloat16 would lose the small updates), else its own."""
    return torch.float64 if weight_dtype == torch.float64 else torch.float32


def _check_row_update(op, weight, state1, state2, optimizer, lr, beta1, beta2, eps, weight_decay, step):
    """Mirror of check_row_update in csrc/embedding/embedding.cpp."""
    import math

    if optimizer not in OPTIMIZERS:
        raise ValueError(
            f"teachcompute_ext.{op}: unknown optimizer '{optimizer}' for argument 'optimizer' "
            "(expected one of sgd, rowwise_adagrad, adagrad, adam, adamw)"
        )
    if not weight.is_contiguous():
        raise RuntimeError(
            f"teachcompute_ext.{op}: argument 'weight' must be contiguous (it is updated in place), got strides "
            f"{list(weight.stride())}"
        )
    if not (math.isfinite(lr) and lr >= 0):
        raise ValueError(f"teachcompute_ext.{op}: argument 'lr' must be finite and >= 0, got {lr:g}")
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise ValueError(
            f"teachcompute_ext.{op}: argument 'weight_decay' must be finite and >= 0, got {weight_decay:g}"
        )
    if optimizer != "sgd" and not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"teachcompute_ext.{op}: argument 'eps' must be finite and > 0, got {eps:g}")
    if optimizer in ("adam", "adamw"):
        for name, beta in (("beta1", beta1), ("beta2", beta2)):
            if not 0 <= beta < 1:
                raise ValueError(f"teachcompute_ext.{op}: argument '{name}' must be in [0, 1), got {beta:g}")
        if step < 1:
            raise ValueError(
                f"teachcompute_ext.{op}: argument 'step' must be >= 1 (the count of steps, this one included), "
                f"got {step}"
            )
    shapes = state_shapes(optimizer, weight.shape[0], weight.shape[1])
    dtype = state_dtype(weight.dtype)
    for name, t, shape in (("state1", state1, shapes[0]), ("state2", state2, shapes[1])):
        check_same_device(op, name, t, "weight", weight)
        if list(t.shape) != list(shape):
            raise RuntimeError(
                f"teachcompute_ext.{op}: argument '{name}' must have shape {list(shape)} for optimizer "
                f"'{optimizer}' and a weight of shape {list(weight.shape)}, got {list(t.shape)}"
            )
        if shape != (0,):
            if t.dtype != dtype:
                raise TypeError(
                    f"teachcompute_ext.{op}: argument '{name}' must be {dtype} for a {weight.dtype} weight, "
                    f"got {t.dtype}"
                )
            if not t.is_contiguous():
                raise RuntimeError(
                    f"teachcompute_ext.{op}: argument '{name}' must be contiguous (it is updated in place)"
                )


def _check_grad(op, grad, weight):
    check_same_device(op, "grad", grad, "weight", weight)
    if grad.dtype != weight.dtype:
        raise TypeError(
            f"teachcompute_ext.{op}: argument 'grad' has dtype {grad.dtype} but 'weight' has dtype {weight.dtype}"
        )


@torch.library.register_fake("teachcompute_ext::embedding_update_")
def _embedding_update_fake(
    weight, state1, state2, grad, indices, padding_idx, optimizer, lr, beta1, beta2, eps, weight_decay, step
):
    op = "embedding_update_"
    _check_weight(op, weight)
    _check_indices(op, indices)
    check_same_device(op, "indices", indices, "weight", weight)
    _check_grad(op, grad, weight)
    if list(grad.shape) != list(indices.shape) + [weight.shape[1]]:
        raise RuntimeError(
            f"teachcompute_ext.{op}: argument 'grad' has shape {list(grad.shape)} but 'indices' has shape "
            f"{list(indices.shape)} and 'weight' {list(weight.shape)} (expected indices.shape + [embedding_dim])"
        )
    _check_row_update(op, weight, state1, state2, optimizer, lr, beta1, beta2, eps, weight_decay, step)
    _check_padding(op, padding_idx, weight.shape[0])


@torch.library.register_fake("teachcompute_ext::embedding_bag_update_")
def _embedding_bag_update_fake(
    weight,
    state1,
    state2,
    grad,
    indices,
    offsets,
    max_indices,
    bag_mode,
    psw,
    padding_idx,
    include_last_offset,
    psw_grad,
    optimizer,
    lr,
    beta1,
    beta2,
    eps,
    weight_decay,
    step,
):
    op = "embedding_bag_update_"
    mode = bag_mode
    bags = _check_bag_args(op, weight, indices, offsets, mode, psw, padding_idx, include_last_offset, op)
    _check_grad(op, grad, weight)
    _check_bag_grad(op, grad, weight, bags, mode, max_indices)
    _check_row_update(op, weight, state1, state2, optimizer, lr, beta1, beta2, eps, weight_decay, step)
    return psw.new_empty(psw.shape) if psw is not None and psw_grad else grad.new_empty((0,))


# Autograd is registered in C++ (csrc/embedding/embedding_autograd.cpp), like every family's.


# ---------------------------------------------------------------------------
# vmap rules (torch.func.vmap). A batched weight [B, V, D] is read as one table
# of B * V rows, sample b's index i becoming row b * V + i (_vmap.flat_rows);
# bags are flattened into B times as many bags. padding_idx p: in the stacked
# table every sample's padding entry goes to row p itself (sample 0's padding
# row, which no other entry can reach) and padding_idx stays p, so the op skips
# them all, in the bags and in the gradients.
# ---------------------------------------------------------------------------
from . import _vmap  # noqa: E402


def _wrap_padding(padding_idx, rows):
    return padding_idx + rows if padding_idx is not None and padding_idx < 0 else padding_idx


def _stacked_rows(idx, rows, batch, padding_idx):
    """idx (batch first) as rows of the stacked table, and the padding_idx of that table."""
    flat = _vmap.flat_rows(idx, rows, batch, allow_negative=False)
    pad = _wrap_padding(padding_idx, rows)
    if pad is not None:
        flat = torch.where(idx == pad, pad, flat)
    return flat, pad


def _vmap_embedding(info, in_dims, weight, indices, padding_idx=None):
    w_b, i_b = in_dims[:2]
    lw = _vmap.logical(weight, w_b)
    _check_weight("embedding", lw)
    _check_indices("embedding", indices)
    check_same_device("embedding", "indices", indices, "weight", weight)
    _check_padding("embedding", padding_idx, lw.shape[0])
    if w_b is None:  # one table: the batch dim of indices is a dim like the others
        return _ops.embedding.default(weight, indices, padding_idx), i_b
    batch, rows = info.batch_size, lw.shape[0]
    idx = _vmap.front_or_expand(indices, i_b, batch)
    table = _vmap.front(weight, w_b).reshape(batch * rows, lw.shape[1])
    # Padding rows are read like any other (weight[b, p]: the forward ignores
    # padding_idx), so they cannot be redirected to one row as in the backward;
    # their gradient is cut here instead, for a grad taken around this vmap
    # (always: under torch.func.grad the tensors here do not say they require grad).
    out = _ops.embedding.default(table, _vmap.flat_rows(idx, rows, batch, allow_negative=False), None)
    pad = _wrap_padding(padding_idx, rows)
    if pad is not None:
        out = torch.where((idx == pad).unsqueeze(-1), out.detach(), out)
    return out, 0


def _vmap_embedding_backward(info, in_dims, grad, indices, num_weights, padding_idx=None):
    g_b, i_b = in_dims[:2]
    _check_embedding_backward(_vmap.logical(grad, g_b), _vmap.logical(indices, i_b), num_weights, padding_idx)
    batch = info.batch_size
    if i_b is None:
        # One set of indices: the batch moves next to the embedding dim and the
        # samples' gradients are columns of one [V, B * D] gradient.
        dim = grad.shape[-1]
        g = grad.movedim(g_b, -2).reshape(*indices.shape, batch * dim)
        out = _ops.embedding_backward.default(g, indices, num_weights, padding_idx)
        return out.view(num_weights, batch, dim), 1
    idx = indices.movedim(i_b, 0)
    flat, pad = _stacked_rows(idx, num_weights, batch, padding_idx)
    g = _vmap.front_or_expand(grad, g_b, batch)
    out = _ops.embedding_backward.default(g, flat, batch * num_weights, pad)
    return out.view(batch, num_weights, g.shape[-1]), 0


def _flat_bags(batch, tables, weight, w_b, indices, i_b, offsets, o_b, psw, p_b, padding_idx, include_last_offset):
    """The arguments of one embedding_bag call over the whole batch, and how to cut its bags
    back into samples: (weight, indices, offsets, psw, padding_idx, include_last_offset,
    bags per sample in that call, whether the last of them is an added tail bag). tables: one
    table per sample (the weight is batched, or per-sample weight gradients are wanted)."""
    lw = _vmap.logical(weight, w_b)
    rows, dim = lw.shape[0], lw.shape[1]
    idx = _vmap.front_or_expand(indices, i_b, batch).to(torch.int64)
    pad = padding_idx
    if tables:
        weight = _vmap.front_or_expand(weight, w_b, batch).reshape(batch * rows, dim)
        idx, pad = _stacked_rows(idx, rows, batch, padding_idx)
    psw = None if psw is None else _vmap.front_or_expand(psw, p_b, batch)
    if idx.dim() == 3:  # fixed-length bags [bags, L]
        bags = idx.shape[1]
        length = idx.shape[2]  # not -1: reshape cannot infer a dim of an empty batch
        psw = None if psw is None else psw.reshape(batch * bags, length)
        return weight, idx.reshape(batch * bags, length), None, psw, pad, False, bags, False
    n = idx.shape[1]
    off = _vmap.front_or_expand(offsets, o_b, batch).to(torch.int64)
    off = off + _vmap.batch_index(batch, off) * n
    psw = None if psw is None else psw.reshape(-1)
    if not include_last_offset:
        # offsets[0] is 0 (the op checks it), so each sample's last bag ends where the next sample starts.
        return weight, idx.reshape(-1), off.reshape(-1), psw, pad, False, off.shape[1], False
    # A sample's last offset may end its last bag before its last index, and one
    # flat list of offsets has no gaps: the tail becomes one more bag per sample,
    # dropped afterwards.
    per = off.shape[1]
    off = torch.cat([off.reshape(-1), off.new_full((1,), batch * n)])
    return weight, idx.reshape(-1), off, psw, pad, True, per, True


def _vmap_bag_forward(info, in_dims, weight, indices, offsets, mode, psw, padding_idx, include_last_offset):
    w_b, i_b, o_b, p_b = in_dims[0], in_dims[1], in_dims[2], in_dims[4]
    _check_bag_args(
        "embedding_bag",
        _vmap.logical(weight, w_b),
        _vmap.logical(indices, i_b),
        _vmap.logical(offsets, o_b),
        mode,
        _vmap.logical(psw, p_b),
        padding_idx,
        include_last_offset,
    )
    batch = info.batch_size
    lw = _vmap.logical(weight, w_b)
    rows, dim = lw.shape[0], lw.shape[1]
    w, idx, off, ps, pad, ilo, per, tail = _flat_bags(
        batch, w_b is not None, weight, w_b, indices, i_b, offsets, o_b, psw, p_b, padding_idx, include_last_offset
    )
    out, argmax = _ops.embedding_bag_forward.default(w, idx, off, mode, ps, pad, ilo)
    keep = per - 1 if tail else per
    out = out.view(batch, per, dim)[:, :keep]
    if mode != "max":
        return (out, argmax), (0, None)
    argmax = argmax.view(batch, per, dim)[:, :keep]
    if w_b is not None:  # rows of the stacked table back to rows of each sample's
        argmax = torch.where(argmax >= 0, argmax - _vmap.batch_index(batch, argmax) * rows, argmax)
    return (out, argmax), (0, 0)


def _vmap_bag(
    info, in_dims, weight, indices, offsets=None, mode="mean", psw=None, padding_idx=None, include_last_offset=False
):
    in_dims = tuple(in_dims) + (None,) * (7 - len(in_dims))
    (out, _), (out_dim, _) = _vmap_bag_forward(
        info, in_dims, weight, indices, offsets, mode, psw, padding_idx, include_last_offset
    )
    return out, out_dim


def _vmap_bag_backward(
    info, in_dims, grad, weight, indices, offsets, max_indices, mode, psw, padding_idx, include_last_offset
):
    g_b, w_b, i_b, o_b, m_b, p_b = in_dims[0], in_dims[1], in_dims[2], in_dims[3], in_dims[4], in_dims[6]
    lw = _vmap.logical(weight, w_b)
    _check_bag_args(
        "embedding_bag_backward",
        lw,
        _vmap.logical(indices, i_b),
        _vmap.logical(offsets, o_b),
        mode,
        _vmap.logical(psw, p_b),
        padding_idx,
        include_last_offset,
    )
    batch = info.batch_size
    rows, dim = lw.shape[0], lw.shape[1]
    # Per-sample weight gradients need one table per sample even when the weight is shared.
    w, idx, off, ps, pad, ilo, per, tail = _flat_bags(
        batch, True, weight, w_b, indices, i_b, offsets, o_b, psw, p_b, padding_idx, include_last_offset
    )
    g = _vmap.front_or_expand(grad, g_b, batch)
    if mode == "max":
        m = _vmap.front_or_expand(max_indices, m_b, batch)
        m = torch.where(m >= 0, m + _vmap.batch_index(batch, m) * rows, m)
    if tail:  # the tail bags _flat_bags added: no gradient, no maximum
        g = torch.cat([g, g.new_zeros(batch, 1, dim)], dim=1)
        if mode == "max":
            m = torch.cat([m, m.new_full((batch, 1, dim), -1)], dim=1)
    g = g.reshape(batch * per, dim)
    m = m.reshape(g.shape) if mode == "max" else max_indices.new_empty((0,))
    gw, gpsw = _ops.embedding_bag_backward.default(g, w, idx, off, m, mode, ps, pad, ilo)
    gw = gw.view(batch, rows, dim)
    if psw is None:
        return (gw, gpsw), (0, None)
    return (gw, gpsw.view(batch, *_vmap.Logical(psw, p_b).shape)), (0, 0)


_vmap.register("embedding", _vmap_embedding)
_vmap.register("embedding_backward", _vmap_embedding_backward)
_vmap.register("embedding_bag", _vmap_bag)
_vmap.register("embedding_bag_forward", _vmap_bag_forward)
_vmap.register("embedding_bag_backward", _vmap_bag_backward)


def _vmap_refuse_update(name):
    def rule(info, in_dims, *args):
        raise RuntimeError(
            f"teachcompute_ext.{name}: vmap is not supported (it updates one table in place, "
            "which per-sample calls cannot share)"
        )

    return rule


for _name in ("embedding_update_", "embedding_bag_update_"):
    _vmap.register(_name, _vmap_refuse_update(_name))
