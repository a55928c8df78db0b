"""Matmul family: fused_matmul (alpha * op(a) @ op(b)) and fused_linear
(act(x @ weight.T + bias)): wrappers, fake kernels and autograd.

fused_linear is a composite op: it calls fused_linear_forward, which also
returns the pre-activation when a backward will need it (gelu, gelu_tanh,
silu; relu's mask comes from its output, none needs nothing), and the backward
is one op, fused_linear_backward, which fuses grad * act'(pre) with the bias
gradient and runs the two GEMMs.
"""

import math

import torch
import torch.nn.functional as F

from . import _vmap
from ._common import check_float_dtype, check_same_device, public

_ops = torch.ops.teachcompute_ext
ACTIVATIONS = ("none", "relu", "gelu", "gelu_tanh", "silu")
_NEEDS_PRE = ("gelu", "gelu_tanh", "silu")


fused_matmul = public(
    "fused_matmul",
    """fused_matmul(a: torch.Tensor, b: torch.Tensor, alpha: float = 1.0, trans_a: bool = False, trans_b: bool = False)

    ``alpha * op(a) @ op(b)``, op transposing the last two dims when its flag is set; batch dims
    broadcast as in ``torch.matmul`` (onnxruntime's com.microsoft FusedMatMul). 1-D operands follow
    ``torch.matmul``: a 1-D ``a`` is ``[1, k]`` and a 1-D ``b`` is ``[k, 1]``, that 1 removed from the
    result (both 1-D: a 0-d dot product); a flag on a 1-D operand is ignored (the transpose of a vector
    is the vector). An empty inner dim gives zeros.
    """,
)


fused_linear = public(
    "fused_linear",
    """fused_linear(x: torch.Tensor, weight: torch.Tensor, bias=None, activation: str = "none")

    ``act(F.linear(x, weight, bias))`` with act one of none, relu, gelu (erf), gelu_tanh, silu;
    forward and backward fused around the GEMMs. As ``F.linear``, a 1-D ``weight`` ``[in_features]``
    gives an output ``x.shape[:-1]`` (no out_features dim), and its ``bias`` must then be 0-d
    (``F.linear`` itself refuses that bias for a 2-D ``x``; this op accepts it for every ``x``).
    """,
)


# ---- checks, mirroring csrc/matmul/matmul.h --------------------------------------------


def _check_same(op, what, t, ref_what, ref):
    if t.dtype != ref.dtype:
        raise RuntimeError(
            f"teachcompute_ext.{op}: argument '{what}' has dtype {t.dtype} but '{ref_what}' has dtype {ref.dtype}"
        )
    check_same_device(op, what, t, ref_what, ref)


def _check_activation(op, activation):
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"teachcompute_ext.{op}: unknown activation '{activation}' for argument 'activation' "
            f"(expected one of {', '.join(ACTIVATIONS)})"
        )


def _check_linear(op, x, weight, bias, vector_weight_ok=True):
    check_float_dtype(op, "x", x)
    check_float_dtype(op, "weight", weight)
    if not (weight.dim() == 2 or (vector_weight_ok and weight.dim() == 1)):
        raise RuntimeError(
            f"teachcompute_ext.{op}: argument 'weight' must be "
            f"{'1-D [in_features] or ' if vector_weight_ok else ''}2-D [out_features, in_features], "
            f"got shape {list(weight.shape)}"
        )
    if x.dim() < 1:
        raise RuntimeError(
            f"teachcompute_ext.{op}: argument 'x' must have at least 1 dim [..., in_features], got a 0-d tensor"
        )
    _check_same(op, "weight", weight, "x", x)
    torch._check(
        x.shape[-1] == weight.shape[-1],
        lambda: (
            f"teachcompute_ext.{op}: in_features mismatch: 'x' has shape {list(x.shape)} (last dim {x.shape[-1]}) "
            f"but 'weight' has shape {list(weight.shape)} (in_features {weight.shape[-1]})"
        ),
    )
    if bias is not None:
        _check_same(op, "bias", bias, "x", x)
        if weight.dim() == 1:
            if bias.dim() != 0:
                raise RuntimeError(
                    f"teachcompute_ext.{op}: argument 'bias' must be 0-d when 'weight' is 1-D "
                    f"(no out_features), got shape {list(bias.shape)}"
                )
        else:
            torch._check(
                bias.dim() == 1 and bias.shape[0] == weight.shape[0],
                lambda: (
                    f"teachcompute_ext.{op}: argument 'bias' must have shape [{weight.shape[0]}] (out_features), "
                    f"got {list(bias.shape)}"
                ),
            )


def _matmul_shape(op, a, b, trans_a, trans_b):
    """The output shape, as check_matmul in matmul.h (1-D operands as torch.matmul's)."""
    check_float_dtype(op, "a", a)
    check_float_dtype(op, "b", b)
    _check_same(op, "b", b, "a", a)
    for name, t in (("a", a), ("b", b)):
        if t.dim() < 1:
            raise RuntimeError(f"teachcompute_ext.{op}: argument '{name}' must have at least 1 dim, got a 0-d tensor")
    a_vec, b_vec = a.dim() == 1, b.dim() == 1
    trans_a, trans_b = trans_a and not a_vec, trans_b and not b_vec
    if a_vec:
        m, ka = 1, a.shape[0]
    else:
        m, ka = (a.shape[-1], a.shape[-2]) if trans_a else (a.shape[-2], a.shape[-1])
    if b_vec:
        kb, n = b.shape[0], 1
    else:
        kb, n = (b.shape[-1], b.shape[-2]) if trans_b else (b.shape[-2], b.shape[-1])
    torch._check(
        ka == kb,
        lambda: (
            f"teachcompute_ext.{op}: inner dims do not match: op(a) is {m}x{ka} (a {list(a.shape)}, "
            f"trans_a={int(trans_a)}) but op(b) is {kb}x{n} (b {list(b.shape)}, trans_b={int(trans_b)})"
        ),
    )
    ba, bb = a.shape[:-2], b.shape[:-2]
    d = max(len(ba), len(bb))
    ba, bb = (1,) * (d - len(ba)) + tuple(ba), (1,) * (d - len(bb)) + tuple(bb)
    batch = []
    for sa, sb in zip(ba, bb):
        torch._check(
            sa == sb or sa == 1 or sb == 1,
            lambda: (
                f"teachcompute_ext.{op}: batch dims do not broadcast: 'a' has batch shape {list(a.shape[:-2])} and "
                f"'b' has batch shape {list(b.shape[:-2])}"
            ),
        )
        batch.append(sb if sa == 1 else sa)
    return (*batch, *(() if a_vec else (m,)), *(() if b_vec else (n,)))


# ---- fake kernels ------------------------------------------------------------------------------


@torch.library.register_fake("teachcompute_ext::fused_matmul")
def _fused_matmul_fake(a, b, alpha=1.0, trans_a=False, trans_b=False):
    return a.new_empty(_matmul_shape("fused_matmul", a, b, trans_a, trans_b))


@torch.library.register_fake("teachcompute_ext::fused_linear_forward")
def _fused_linear_forward_fake(x, weight, bias, activation, save_pre):
    _check_linear("fused_linear", x, weight, bias)
    _check_activation("fused_linear", activation)
    shape = (*x.shape[:-1], *weight.shape[:-1])  # a 1-D weight: no out_features dim
    out = x.new_empty(shape)
    pre = x.new_empty(shape if save_pre and activation in _NEEDS_PRE else (0, 0))
    return out, pre


@torch.library.register_fake("teachcompute_ext::fused_linear_backward")
def _fused_linear_backward_fake(grad, x, weight, aux, activation, has_bias, output_mask):
    op = "fused_linear_backward"
    _check_linear(op, x, weight, None, vector_weight_ok=False)
    _check_activation(op, activation)
    _check_same(op, "grad", grad, "x", x)
    out_shape = [*x.shape[:-1], weight.shape[0]]
    torch._check(
        list(grad.shape) == out_shape,
        lambda: (
            f"teachcompute_ext.{op}: argument 'grad' has shape {list(grad.shape)} but the output has shape {out_shape}"
        ),
    )
    if activation != "none":
        torch._check(
            aux.shape == grad.shape,
            lambda: (
                f"teachcompute_ext.{op}: argument 'aux' (the saved {'output' if activation == 'relu' else 'pre-activation'})"
                f" has shape {list(aux.shape)} but 'grad' has shape {list(grad.shape)}"
            ),
        )
        _check_same(op, "aux", aux, "x", x)
    n, k = weight.shape
    gx = x.new_empty(x.shape) if output_mask[0] else x.new_empty((0, 0))
    gw = x.new_empty((n, k)) if output_mask[1] else x.new_empty((0, 0))
    gb = x.new_empty((n,)) if output_mask[2] and has_bias else x.new_empty((0,))
    return gx, gw, gb


# Autograd is registered in C++ (csrc/matmul/matmul_autograd.cpp).


# ---- vmap rules (torch.func.vmap) ------------------------------------------------------------
# vmap rules of the matmul family (torch.func.vmap): fused_matmul, fused_linear,
# fused_linear_forward, fused_linear_backward.
#
# fused_matmul broadcasts batch dims as torch.matmul, so a batch dim in front,
# with unsqueezed dims so that it lines up with nothing of the other operand,
# is one more batch dim. fused_linear with only x batched is the op itself (the
# batch is one more leading dim of x). A batched weight or bias is no linear
# layer shared by the batch any more: the GEMM is then a batched fused_matmul
# (x @ W^T per sample, trans_b in the GEMM, no copy of W) and the bias and the
# activation are torch's ops on its output, so autograd sees exactly F.linear +
# activation. The backward likewise: act'(pre) * grad by torch's own backward
# ops, then two batched fused_matmul (per-sample weight gradients are what
# vmap(grad) wants, and the fused op sums them over the batch) and a reduce_sum.
def _as_matrix(t, bdim, vector, row):
    """A batched (or unbatched) operand as a matrix: a logical vector [k] becomes [1, k] (row)
    or [k, 1], as torch.matmul reads it, so the rule never depends on how the op treats 1-D."""
    t = _vmap.front(t, bdim)
    if vector:
        t = t.unsqueeze(-2 if row else -1)
    return t


def _vmap_fused_matmul(info, in_dims, a, b, alpha=1.0, trans_a=False, trans_b=False):
    a_b, b_b = in_dims[:2]
    a_vec = _vmap.logical(a, a_b).dim() == 1
    b_vec = _vmap.logical(b, b_b).dim() == 1
    a = _as_matrix(a, a_b, a_vec, row=True)
    b = _as_matrix(b, b_b, b_vec, row=False)
    # A transpose flag on a vector is ignored (torch.matmul has no transposed vector).
    trans_a, trans_b = trans_a and not a_vec, trans_b and not b_vec
    # Batch dims align from the right: pad the batched operand(s) after the batch
    # dim until the batch dim stands left of every dim of the other operand.
    if a_b is not None and b_b is not None:
        rank = max(a.dim(), b.dim())
        a = a.view(a.shape[0], *[1] * (rank - a.dim()), *a.shape[1:])
        b = b.view(b.shape[0], *[1] * (rank - b.dim()), *b.shape[1:])
    elif a_b is not None and b.dim() >= a.dim():
        a = a.view(a.shape[0], *[1] * (b.dim() - a.dim() + 1), *a.shape[1:])
    elif b_b is not None and a.dim() >= b.dim():
        b = b.view(b.shape[0], *[1] * (a.dim() - b.dim() + 1), *b.shape[1:])
    out = _ops.fused_matmul.default(a, b, alpha, trans_a, trans_b)
    if b_vec:
        out = out.squeeze(-1)
    if a_vec:
        out = out.squeeze(-1 if b_vec else -2)
    return out, 0


_ACT = {
    "none": lambda t: t,
    "relu": torch.relu,
    "gelu": F.gelu,
    "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"),
    "silu": F.silu,
}


def _linear(info, in_dims, x, weight, bias, activation, save_pre):
    """(out, pre) and their out_dims: fused_linear_forward over the batch."""
    x_b, w_b = in_dims[0], in_dims[1]
    b_b = in_dims[2] if len(in_dims) > 2 else None
    batch = info.batch_size
    _check_activation("fused_linear", activation)
    keep_pre = save_pre and activation in _NEEDS_PRE
    if w_b is None and b_b is None:
        # One layer for the whole batch: the batch is a leading dim of x (moved
        # only when it is x's last, the features' place).
        if x_b == x.dim() - 1:
            x, x_b = x.movedim(x_b, 0), 0
        out, pre = _ops.fused_linear_forward.default(x, weight, bias, activation, save_pre)
        return (out, pre), (x_b, x_b if keep_pre else None)
    lx, lw = _vmap.logical(x, x_b), _vmap.logical(weight, w_b)
    vector_weight = lw.dim() == 1  # F.linear's 1-D weight: one output feature, not in the output shape
    lead = list(lx.shape[:-1])
    k = lx.shape[-1]
    m = math.prod(lead)
    if w_b is None:
        mm = _ops.fused_linear_forward.default(_vmap.front(x, x_b), weight, None, "none", False)[0]
        if x_b is None:
            mm = mm.expand(batch, *mm.shape)
    else:
        w = _vmap.front(weight, w_b)
        if vector_weight:
            w = w.unsqueeze(1)
        x3 = _vmap.front(x, x_b).reshape(batch, m, k) if x_b is not None else x.reshape(1, m, k)
        mm = _ops.fused_matmul.default(x3, w, 1.0, False, True)
        mm = mm.view(batch, *lead) if vector_weight else mm.view(batch, *lead, w.shape[1])
    pre = mm
    if bias is not None:
        b = _vmap.front(bias, b_b)
        if b_b is not None:
            b = b.view(batch, *[1] * len(lead), *b.shape[1:])
        pre = mm + b
    out = _ACT[activation](pre)
    if keep_pre:
        return (out, pre), (0, 0)
    return (out, x.new_empty((0, 0))), (0, None)


def _vmap_fused_linear_forward(info, in_dims, x, weight, bias, activation, save_pre):
    return _linear(info, in_dims, x, weight, bias, activation, save_pre)


def _vmap_fused_linear(info, in_dims, x, weight, bias=None, activation="none"):
    # As the composite: keep the pre-activation only when a backward can follow.
    save_pre = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias))
    (out, _), (out_dim, _) = _linear(info, in_dims, x, weight, bias, activation, save_pre)
    return out, out_dim


def _act_backward(grad, aux, activation):
    """grad * act'(pre): torch's own backward ops (aux is the output for relu, else pre)."""
    if activation == "none":
        return grad
    if activation == "relu":
        return torch.ops.aten.threshold_backward(grad, aux, 0)
    if activation == "silu":
        return torch.ops.aten.silu_backward(grad, aux)
    return torch.ops.aten.gelu_backward(grad, aux, approximate="tanh" if activation == "gelu_tanh" else "none")


def _vmap_fused_linear_backward(info, in_dims, grad, x, weight, aux, activation, has_bias, output_mask):
    g_b, x_b, w_b, a_b = in_dims[:4]
    batch = info.batch_size
    lx, lw = _vmap.logical(x, x_b), _vmap.logical(weight, w_b)
    _check_activation("fused_linear_backward", activation)
    if lw.dim() != 2:  # the op's own words: its backward takes the 2-D weight only
        raise RuntimeError(
            "teachcompute_ext.fused_linear_backward: argument 'weight' must be 2-D [out_features, "
            f"in_features], got shape {list(lw.shape)}"
        )
    n, k = lw.shape
    lead = list(lx.shape[:-1])
    m = math.prod(lead)
    g = _vmap.front_or_expand(grad, g_b, batch).reshape(batch, m, n)
    if activation != "none":
        g = _act_backward(g, _vmap.front_or_expand(aux, a_b, batch).reshape(batch, m, n), activation)
    w = _vmap.front(weight, w_b)
    empty = x.new_empty((0, 0))
    outs, dims = [empty, empty, x.new_empty((0,))], [None, None, None]
    if output_mask[0]:
        outs[0], dims[0] = _ops.fused_matmul.default(g, w, 1.0, False, False).view(batch, *lead, k), 0
    if output_mask[1]:
        x3 = _vmap.front(x, x_b).reshape(batch, m, k) if x_b is not None else x.reshape(m, k)
        outs[1], dims[1] = _ops.fused_matmul.default(g, x3, 1.0, True, False), 0
    if output_mask[2] and has_bias:
        outs[2], dims[2] = _ops.reduce_sum.default(g, [1], False), 0
    return tuple(outs), tuple(dims)


_vmap.register("fused_matmul", _vmap_fused_matmul)
_vmap.register("fused_linear", _vmap_fused_linear)
_vmap.register("fused_linear_forward", _vmap_fused_linear_forward)
_vmap.register("fused_linear_backward", _vmap_fused_linear_backward)
