"""Llama family: rms_norm, add_rms_norm, rotary_embedding, swiglu, geglu:
wrappers, fake kernels and vmap rules (autograd is in C++).

rms_norm and add_rms_norm are composite ops: they call rms_norm_forward /
add_rms_norm_forward, which also return rstd (one float per row) for the
backward, one fused op (rms_norm_backward) that gives x's gradient in one pass
per row and the weight's as a deterministic sum over rows. rotary_embedding's
backward is the inverse rotation (rotary_embedding_backward); swiglu's and
geglu's is one op for both gradients (glu_backward).
"""

import math

import torch
import torch.nn.functional as F

from . import _vmap
from ._common import check_float_dtype, check_same_device, public

_ops = torch.ops.teachcompute_ext

rms_norm = public(
    "rms_norm",
    """rms_norm(x: torch.Tensor, weight=None, eps: float = 1e-6)

    ``F.rms_norm(x, (x.shape[-1],), weight, eps)``: ``x * rsqrt(mean(x**2, -1) + eps) * weight``
    over the last dim, in one pass over x, computed in float32 for float16/bfloat16 (float64 for
    float64) and rounded once. ``weight`` ``[D]`` may have another floating dtype than x, as torch
    allows; the result has x's dtype. The backward is one fused pass per row.
    """,
)

add_rms_norm = public(
    "add_rms_norm",
    """add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight=None, eps: float = 1e-6)

    The Llama residual pattern in one pass: ``h = x + residual`` (rounded to x's dtype), returns
    ``(rms_norm(h, weight, eps), h)``; ``h`` is the next residual. x and residual have the same
    shape and dtype.
    """,
)

rotary_embedding = public(
    "rotary_embedding",
    """rotary_embedding(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool = False)

    Rotary position embedding of ``x [..., head_dim]``. ``cos`` and ``sin`` (same shape, x's
    dtype) have last dim ``rotary_dim / 2`` and leading dims that broadcast to x's
    (``[seq, rotary_dim / 2]`` for x ``[batch, heads, seq, head_dim]``); columns past
    ``rotary_dim`` pass through. ``interleaved=False`` rotates the pairs ``(i, i + rotary_dim / 2)``
    (Llama, GPT-NeoX: transformers' ``x * cat(cos, cos) + rotate_half(x) * cat(sin, sin)``);
    ``True`` the pairs ``(2i, 2i + 1)`` (GPT-J, Meta's original). x is read through its strides
    (a ``[batch, seq, heads, head_dim]`` view is not copied); the result is contiguous.
    """,
)

swiglu = public(
    "swiglu",
    """swiglu(gate: torch.Tensor, up=None)

    ``F.silu(gate) * up`` in one pass (and one for the backward). With ``up=None``, ``gate`` is one
    tensor ``[..., 2 * I]`` (a single GEMM's output), its first half the gate and its second the
    up projection, read in place; the result is ``[..., I]``.
    """,
)

geglu = public(
    "geglu",
    """geglu(gate: torch.Tensor, up=None, approximate: str = "none")

    ``F.gelu(gate, approximate=approximate) * up``, with the same forms as :func:`swiglu`.
    """,
)


# ---- checks, mirroring csrc/llama/llama.h ----------------------------------------------


def _acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_shape_eq(op, arg, t, ref_arg, ref):
    torch._check(
        t.shape == ref.shape,
        lambda: (
            f"teachcompute_ext.{op}: argument '{arg}' has shape {list(t.shape)} but '{ref_arg}' has shape "
            f"{list(ref.shape)} (expected the same shape)"
        ),
    )


def _check_dtype_eq(op, arg, t, ref_arg, ref):
    if t.dtype != ref.dtype:
        raise TypeError(
            f"teachcompute_ext.{op}: argument '{arg}' has dtype {t.dtype} but '{ref_arg}' has dtype "
            f"{ref.dtype} (expected the same dtype)"
        )


def _check_rms_norm(op, x, weight, eps):
    check_float_dtype(op, "x", x)
    if x.dim() < 1:
        raise RuntimeError(f"teachcompute_ext.{op}: argument 'x' must have at least 1 dim (got a 0-d tensor)")
    if not (eps > 0 and math.isfinite(eps)):
        raise ValueError(
            f"teachcompute_ext.{op}: argument 'eps' must be > 0 (got {eps:g})"
        )  # C++'s printing of a double
    if weight is not None:
        check_float_dtype(op, "weight", weight)
        check_same_device(op, "weight", weight, "x", x)
        torch._check(
            weight.dim() == 1 and weight.shape[0] == x.shape[-1],
            lambda: (
                f"teachcompute_ext.{op}: argument 'weight' has shape {list(weight.shape)} but x's last dim is "
                f"{x.shape[-1]} (expected [{x.shape[-1]}])"
            ),
        )


def _check_residual(op, x, residual):
    check_same_device(op, "residual", residual, "x", x)
    _check_dtype_eq(op, "residual", residual, "x", x)
    _check_shape_eq(op, "residual", residual, "x", x)


def _check_rotary(op, x, cos, sin, xname="x"):
    check_float_dtype(op, xname, x)
    check_same_device(op, "cos", cos, xname, x)
    check_same_device(op, "sin", sin, xname, x)
    _check_dtype_eq(op, "cos", cos, xname, x)
    _check_dtype_eq(op, "sin", sin, xname, x)
    _check_shape_eq(op, "sin", sin, "cos", cos)
    if x.dim() < 1:
        raise RuntimeError(
            f"teachcompute_ext.{op}: argument '{xname}' must have at least 1 dim [..., head_dim] (got a 0-d tensor)"
        )
    if not 1 <= cos.dim() <= x.dim():
        raise RuntimeError(
            f"teachcompute_ext.{op}: argument 'cos' has shape {list(cos.shape)}, which cannot "
            f"broadcast to {xname}'s shape {list(x.shape)} (expected [..., rotary_dim / 2] with at "
            f"most {x.dim()} dims)"
        )
    half, head_dim = cos.shape[-1], x.shape[-1]
    torch._check(
        2 * half <= head_dim,
        lambda: (
            f"teachcompute_ext.{op}: rotary_dim {2 * half} (twice the last dim of 'cos') is larger than head_dim "
            f"{head_dim} ({xname}'s last dim)"
        ),
    )
    lead = x.dim() - cos.dim()
    for d in range(cos.dim() - 1):
        torch._check(
            cos.shape[d] == 1 or cos.shape[d] == x.shape[d + lead],
            lambda: (
                f"teachcompute_ext.{op}: argument 'cos' has shape {list(cos.shape)}, which cannot broadcast to "
                f"{xname}'s shape {list(x.shape)} (dim {d} is {cos.shape[d]}, expected 1 or {x.shape[d + lead]})"
            ),
        )


def _glu_out_shape(op, gate, up):
    check_float_dtype(op, "gate", gate)
    if up is not None:
        check_same_device(op, "up", up, "gate", gate)
        _check_dtype_eq(op, "up", up, "gate", gate)
        _check_shape_eq(op, "up", up, "gate", gate)
        return list(gate.shape)
    if gate.dim() < 1:
        raise RuntimeError(
            f"teachcompute_ext.{op}: argument 'gate' must have at least 1 dim when 'up' is None (got a 0-d tensor)"
        )
    torch._check(
        gate.shape[-1] % 2 == 0,
        lambda: (
            f"teachcompute_ext.{op}: argument 'gate' has an odd last dim {gate.shape[-1]} (with 'up' None, gate is "
            "[..., 2 * I], split in two halves)"
        ),
    )
    return [*gate.shape[:-1], gate.shape[-1] // 2]


_GLU_ACTIVATIONS = {"silu": F.silu, "gelu": F.gelu, "gelu_tanh": lambda t: F.gelu(t, approximate="tanh")}


def _check_approximate(op, approximate):
    if approximate not in ("none", "tanh"):
        raise ValueError(
            f"teachcompute_ext.{op}: unknown value '{approximate}' for argument 'approximate' "
            "(expected 'none' or 'tanh')"
        )


# ---- fake kernels --------------------------------------------------------------------------


@torch.library.register_fake("teachcompute_ext::rms_norm_forward")
def _rms_norm_forward_fake(x, weight, eps):
    _check_rms_norm("rms_norm", x, weight, eps)
    return x.new_empty(x.shape), x.new_empty(x.shape[:-1], dtype=_acc(x.dtype))


@torch.library.register_fake("teachcompute_ext::add_rms_norm_forward")
def _add_rms_norm_forward_fake(x, residual, weight, eps):
    _check_rms_norm("add_rms_norm", x, weight, eps)
    _check_residual("add_rms_norm", x, residual)
    return x.new_empty(x.shape), x.new_empty(x.shape), x.new_empty(x.shape[:-1], dtype=_acc(x.dtype))


@torch.library.register_fake("teachcompute_ext::rms_norm_backward")
def _rms_norm_backward_fake(grad, x, weight, rstd, grad_add, output_mask):
    op = "rms_norm_backward"
    _check_rms_norm(op, x, weight, 1.0)
    check_same_device(op, "grad", grad, "x", x)
    check_same_device(op, "rstd", rstd, "x", x)
    _check_shape_eq(op, "grad", grad, "x", x)
    _check_dtype_eq(op, "grad", grad, "x", x)
    acc = _acc(x.dtype)
    torch._check(
        rstd.shape == x.shape[:-1] and rstd.dtype == acc,
        lambda: (
            f"teachcompute_ext.{op}: argument 'rstd' has shape {list(rstd.shape)} and dtype {rstd.dtype} (expected "
            f"x's rows {list(x.shape[:-1])} in {acc})"
        ),
    )
    if grad_add is not None:
        check_same_device(op, "grad_add", grad_add, "x", x)
        _check_shape_eq(op, "grad_add", grad_add, "x", x)
        _check_dtype_eq(op, "grad_add", grad_add, "x", x)
    gx = x.new_empty(x.shape if output_mask[0] else (0,))
    gw = weight.new_empty(weight.shape) if output_mask[1] and weight is not None else x.new_empty((0,))
    return gx, gw


def _rotary_fake(op, xname):
    def fake(x, cos, sin, interleaved=False):
        _check_rotary(op, x, cos, sin, xname)
        return x.new_empty(x.shape)

    return fake


torch.library.register_fake("teachcompute_ext::rotary_embedding")(_rotary_fake("rotary_embedding", "x"))
torch.library.register_fake("teachcompute_ext::rotary_embedding_backward")(
    _rotary_fake("rotary_embedding_backward", "grad")
)


@torch.library.register_fake("teachcompute_ext::swiglu")
def _swiglu_fake(gate, up=None):
    return gate.new_empty(_glu_out_shape("swiglu", gate, up))


@torch.library.register_fake("teachcompute_ext::geglu")
def _geglu_fake(gate, up=None, approximate="none"):
    _check_approximate("geglu", approximate)
    return gate.new_empty(_glu_out_shape("geglu", gate, up))


@torch.library.register_fake("teachcompute_ext::glu_backward")
def _glu_backward_fake(grad, gate, up, activation):
    op = "glu_backward"
    if activation not in _GLU_ACTIVATIONS:
        raise ValueError(
            f"teachcompute_ext.{op}: unknown activation '{activation}' for argument 'activation' "
            "(expected 'silu', 'gelu' or 'gelu_tanh')"
        )
    out_shape = _glu_out_shape(op, gate, up)
    check_same_device(op, "grad", grad, "gate", gate)
    _check_dtype_eq(op, "grad", grad, "gate", gate)
    torch._check(
        list(grad.shape) == out_shape,
        lambda: (
            f"teachcompute_ext.{op}: argument 'grad' has shape {list(grad.shape)} (expected the output's shape "
            f"{out_shape})"
        ),
    )
    return gate.new_empty(gate.shape), gate.new_empty(gate.shape if up is not None else (0,))


# ---- vmap rules (torch.func.vmap) ------------------------------------------------------------
# Every op of the family works on rows of its last dim, so a batch dim moved to the
# front is one more leading dim: the op itself, once, on the whole batch. What is
# not row-wise gets torch's ops: a batched weight of rms_norm (one weight per
# sample) multiplies the unweighted norm, and cos and sin batched apart from x are
# expanded to x's batch (the op broadcasts them from there without a copy).


def _vmap_norm_forward(add):
    def rule(info, in_dims, x, *args):
        x_b = in_dims[0]
        r_b = in_dims[1] if add else None
        w_b = in_dims[2 if add else 1]
        residual = args[0] if add else None
        weight, eps = (args[1], args[2]) if add else (args[0], args[1])
        batch = info.batch_size
        x = _vmap.front_or_expand(x, x_b, batch)
        if add:
            residual = _vmap.front_or_expand(residual, r_b, batch)
        outs = (
            _ops.add_rms_norm_forward.default(x, residual, None if w_b is not None else weight, eps)
            if add
            else _ops.rms_norm_forward.default(x, None if w_b is not None else weight, eps)
        )
        if w_b is not None:
            w = _vmap.front(weight, w_b)
            w = w.view(batch, *[1] * (x.dim() - 2), w.shape[-1])
            outs = ((outs[0] * w).to(x.dtype), *outs[1:])
        return outs, (0,) * len(outs)

    return rule


def _vmap_rms_norm(info, in_dims, x, weight=None, eps=1e-6):
    # in_dims has one entry per argument given: none for a weight left out.
    (out, _), _ = _vmap_norm_forward(False)(info, (*in_dims, None)[:2], x, weight, eps)
    return out, 0


def _vmap_add_rms_norm(info, in_dims, x, residual, weight=None, eps=1e-6):
    (out, h, _), _ = _vmap_norm_forward(True)(info, (*in_dims, None)[:3], x, residual, weight, eps)
    return (out, h), (0, 0)


def _vmap_rms_norm_backward(info, in_dims, grad, x, weight, rstd, grad_add, output_mask):
    g_b, x_b, w_b, s_b, a_b = in_dims[:5]
    batch = info.batch_size
    grad = _vmap.front_or_expand(grad, g_b, batch)
    x = _vmap.front_or_expand(x, x_b, batch)
    rstd = _vmap.front_or_expand(rstd, s_b, batch)
    if grad_add is not None:
        grad_add = _vmap.front_or_expand(grad_add, a_b, batch)
    if w_b is None:
        gx, _ = _ops.rms_norm_backward.default(grad, x, weight, rstd, grad_add, [output_mask[0], False])
    else:
        # One weight per sample: grad * weight is the gradient of the unweighted norm.
        w = _vmap.front(weight, w_b)
        wv = w.view(batch, *[1] * (x.dim() - 2), w.shape[-1])
        gx, _ = _ops.rms_norm_backward.default(
            (grad * wv).to(x.dtype), x, None, rstd, grad_add, [output_mask[0], False]
        )
    if not (output_mask[1] and weight is not None):
        return (gx, x.new_empty((0,))), (0, None)
    # The op sums the weight gradient over every row, the batch's too: vmap wants
    # one per sample.
    xhat = x * rstd.unsqueeze(-1).to(x.dtype)
    gw = (grad * xhat).sum(dim=tuple(range(1, x.dim() - 1))).to(weight.dtype)
    return (gx, gw), (0, 0)


def _vmap_rotary(op):
    def rule(info, in_dims, x, cos, sin, interleaved=False):
        x_b, c_b, s_b = in_dims[:3]
        batch = info.batch_size
        x = _vmap.front_or_expand(x, x_b, batch)
        if c_b is None and s_b is None:
            return getattr(_ops, op).default(x, cos, sin, interleaved), 0

        # Per-sample tables: cos [B, ..., half] lined up with x [B, ..., head_dim].
        def table(t, b):
            t = _vmap.front_or_expand(t, b, batch)
            return t.view(batch, *[1] * (x.dim() - t.dim()), *t.shape[1:])

        return getattr(_ops, op).default(x, table(cos, c_b), table(sin, s_b), interleaved), 0

    return rule


def _vmap_glu(op):
    def rule(info, in_dims, gate, up=None, *rest):
        batch = info.batch_size
        g_b, u_b = in_dims[0], (in_dims[1] if len(in_dims) > 1 else None)
        gate = _vmap.front_or_expand(gate, g_b, batch)
        if up is not None:
            up = _vmap.front_or_expand(up, u_b, batch)
        return getattr(_ops, op).default(gate, up, *rest), 0

    return rule


def _vmap_glu_backward(info, in_dims, grad, gate, up, activation):
    batch = info.batch_size
    grad = _vmap.front_or_expand(grad, in_dims[0], batch)
    gate = _vmap.front_or_expand(gate, in_dims[1], batch)
    if up is not None:
        up = _vmap.front_or_expand(up, in_dims[2], batch)
    gg, gu = _ops.glu_backward.default(grad, gate, up, activation)
    return (gg, gu), (0, 0 if up is not None else None)


_vmap.register("rms_norm", _vmap_rms_norm)
_vmap.register("add_rms_norm", _vmap_add_rms_norm)
_vmap.register("rms_norm_forward", _vmap_norm_forward(False))
_vmap.register("add_rms_norm_forward", _vmap_norm_forward(True))
_vmap.register("rms_norm_backward", _vmap_rms_norm_backward)
_vmap.register("rotary_embedding", _vmap_rotary("rotary_embedding"))
_vmap.register("rotary_embedding_backward", _vmap_rotary("rotary_embedding_backward"))
_vmap.register("swiglu", _vmap_glu("swiglu"))
_vmap.register("geglu", _vmap_glu("geglu"))
_vmap.register("glu_backward", _vmap_glu_backward)
