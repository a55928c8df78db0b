"""Matmul family: fused_matmul (alpha * op(a) @ op(b)) and fused_linear
(act(x @ weight.T + bias)): wrappers, fake kernels and autograd.

fused_linear is a composite op: it calls fused_linear_forward, which also
returns the pre-activation when a backward will need it (gelu, gelu_tanh,
silu; relu's mask comes from its output, none needs nothing), and the backward
is one op, fused_linear_backward, which fuses grad * act'(pre) with the bias
gradient and runs the two GEMMs.
"""
import torch

from ._common import check_float_dtype

_ops = torch.ops.teachcompute_ext
ACTIVATIONS = ("none", "relu", "gelu", "gelu_tanh", "silu")
_NEEDS_PRE = ("gelu", "gelu_tanh", "silu")


def fused_matmul(a: torch.Tensor, b: torch.Tensor, alpha: float = 1.0, trans_a: bool = False,
                 trans_b: bool = False) -> torch.Tensor:
    """``alpha * op(a) @ op(b)``, op transposing the last two dims when its flag is set; batch dims
    broadcast as in ``torch.matmul`` (onnxruntime's com.microsoft FusedMatMul). Both inputs need 2 dims
    or more."""
    return _ops.fused_matmul.default(a, b, alpha, trans_a, trans_b)


def fused_linear(x: torch.Tensor, weight: torch.Tensor, bias=None, activation: str = "none") -> torch.Tensor:
    """``act(F.linear(x, weight, bias))`` with act one of none, relu, gelu (erf), gelu_tanh, silu;
    forward and backward fused around the GEMMs."""
    return _ops.fused_linear.default(x, weight, bias, activation)


# ---- checks, mirroring csrc/matmul/fused_linear.h --------------------------------------------

def _check_same(op, what, t, ref_what, ref):
    if t.dtype != ref.dtype:
        raise RuntimeError(f"teachcompute_ext.{op}: argument '{what}' has dtype {t.dtype} but '{ref_what}' has "
                           f"dtype {ref.dtype}")
    if t.device != ref.device:
        raise RuntimeError(f"teachcompute_ext.{op}: argument '{what}' is on {t.device} but '{ref_what}' is on "
                           f"{ref.device}")


def _check_activation(op, activation):
    if activation not in ACTIVATIONS:
        raise ValueError(f"teachcompute_ext.{op}: unknown activation '{activation}' for argument 'activation' "
                         f"(expected one of {', '.join(ACTIVATIONS)})")


def _check_linear(op, x, weight, bias):
    check_float_dtype(op, "x", x)
    check_float_dtype(op, "weight", weight)
    if weight.dim() != 2:
        raise RuntimeError(f"teachcompute_ext.{op}: argument 'weight' must be 2-D [out_features, in_features], "
                           f"got shape {list(weight.shape)}")
    if x.dim() < 1:
        raise RuntimeError(f"teachcompute_ext.{op}: argument 'x' must have at least 1 dim [..., in_features], "
                           "got a 0-d tensor")
    _check_same(op, "weight", weight, "x", x)
    torch._check(x.shape[-1] == weight.shape[1], lambda: (
        f"teachcompute_ext.{op}: in_features mismatch: 'x' has shape {list(x.shape)} (last dim {x.shape[-1]}) "
        f"but 'weight' has shape {list(weight.shape)} (in_features {weight.shape[1]})"))
    if bias is not None:
        _check_same(op, "bias", bias, "x", x)
        torch._check(bias.dim() == 1 and bias.shape[0] == weight.shape[0], lambda: (
            f"teachcompute_ext.{op}: argument 'bias' must have shape [{weight.shape[0]}] (out_features), "
            f"got {list(bias.shape)}"))


def _matmul_shape(op, a, b, trans_a, trans_b):
    check_float_dtype(op, "a", a)
    check_float_dtype(op, "b", b)
    _check_same(op, "b", b, "a", a)
    for name, t in (("a", a), ("b", b)):
        if t.dim() < 2:
            raise RuntimeError(f"teachcompute_ext.{op}: argument '{name}' must have at least 2 dims, got shape "
                               f"{list(t.shape)}")
    m, ka = (a.shape[-1], a.shape[-2]) if trans_a else (a.shape[-2], a.shape[-1])
    kb, n = (b.shape[-1], b.shape[-2]) if trans_b else (b.shape[-2], b.shape[-1])
    torch._check(ka == kb, lambda: (
        f"teachcompute_ext.{op}: inner dims do not match: op(a) is {m}x{ka} (a {list(a.shape)}, trans_a={trans_a}) "
        f"but op(b) is {kb}x{n} (b {list(b.shape)}, trans_b={trans_b})"))
    ba, bb = a.shape[:-2], b.shape[:-2]
    d = max(len(ba), len(bb))
    ba, bb = (1,) * (d - len(ba)) + tuple(ba), (1,) * (d - len(bb)) + tuple(bb)
    batch = []
    for sa, sb in zip(ba, bb):
        torch._check(sa == sb or sa == 1 or sb == 1, lambda: (
            f"teachcompute_ext.{op}: batch dims do not broadcast: 'a' has batch shape {list(a.shape[:-2])} and "
            f"'b' has batch shape {list(b.shape[:-2])}"))
        batch.append(sb if sa == 1 else sa)
    return batch, m, n


# ---- fake kernels ------------------------------------------------------------------------------

@torch.library.register_fake("teachcompute_ext::fused_matmul")
def _fused_matmul_fake(a, b, alpha=1.0, trans_a=False, trans_b=False):
    batch, m, n = _matmul_shape("fused_matmul", a, b, trans_a, trans_b)
    return a.new_empty((*batch, m, n))


@torch.library.register_fake("teachcompute_ext::fused_linear_forward")
def _fused_linear_forward_fake(x, weight, bias, activation, save_pre):
    _check_linear("fused_linear", x, weight, bias)
    _check_activation("fused_linear", activation)
    shape = (*x.shape[:-1], weight.shape[0])
    out = x.new_empty(shape)
    pre = x.new_empty(shape if save_pre and activation in _NEEDS_PRE else (0, 0))
    return out, pre


@torch.library.register_fake("teachcompute_ext::fused_linear_backward")
def _fused_linear_backward_fake(grad, x, weight, aux, activation, has_bias, output_mask):
    _check_linear("fused_linear_backward", x, weight, None)
    _check_activation("fused_linear_backward", activation)
    n, k = weight.shape
    gx = x.new_empty(x.shape) if output_mask[0] else x.new_empty((0, 0))
    gw = x.new_empty((n, k)) if output_mask[1] else x.new_empty((0, 0))
    gb = x.new_empty((n,)) if output_mask[2] and has_bias else x.new_empty((0,))
    return gx, gw, gb


# ---- autograd ----------------------------------------------------------------------------------

def _matmul_setup(ctx, inputs, output):
    a, b, alpha, trans_a, trans_b = inputs
    ctx.save_for_backward(a, b)
    ctx.alpha, ctx.trans_a, ctx.trans_b = alpha, trans_a, trans_b


def _matmul_backward(ctx, grad):
    # C = alpha op(a) op(b). Each gradient is again one fused_matmul, its
    # transposes chosen so no operand is ever transposed by a copy (and double
    # backward works, since fused_matmul is differentiable).
    a, b = ctx.saved_tensors
    alpha, ta, tb = ctx.alpha, ctx.trans_a, ctx.trans_b
    ga = gb = None
    if ctx.needs_input_grad[0]:
        ga = fused_matmul(b, grad, alpha, tb, True) if ta else fused_matmul(grad, b, alpha, False, not tb)
        ga = ga.sum_to_size(a.shape)
    if ctx.needs_input_grad[1]:
        if b.dim() == 2 and grad.dim() > 2 and not ta:
            # b shared by the whole batch: one GEMM over all batch rows, not a
            # batched product summed afterwards.
            a2, g2 = a.reshape(-1, a.shape[-1]), grad.reshape(-1, grad.shape[-1])
            gb = fused_matmul(g2, a2, alpha, True, False) if tb else fused_matmul(a2, g2, alpha, True, False)
        else:
            gb = fused_matmul(grad, a, alpha, True, ta) if tb else fused_matmul(a, grad, alpha, not ta, False)
            gb = gb.sum_to_size(b.shape)
    return ga, gb, None, None, None


def _linear_setup(ctx, inputs, output):
    x, weight, bias, activation, save_pre = inputs
    out, pre = output
    ctx.mark_non_differentiable(pre)
    # No zero-filled [M, N] gradient for pre (it has none): measured 2.5 ms a
    # step at (2048, 4096) before this.
    ctx.set_materialize_grads(False)
    ctx.activation, ctx.has_bias = activation, bias is not None
    ctx.recompute = activation in _NEEDS_PRE and not save_pre
    if activation == "relu":
        aux = out
    elif activation in _NEEDS_PRE and save_pre:
        aux = pre
    else:
        aux = None
    ctx.save_for_backward(x, weight, bias if ctx.recompute else None, aux)


def _linear_backward(ctx, grad, _grad_pre):
    if grad is None:  # no gradient reached the output (grads are not materialized): all zero
        return None, None, None, None, None
    x, weight, bias, aux = ctx.saved_tensors
    if ctx.recompute:
        # Called with save_pre=False under autograd (fused_linear itself never
        # does that): one more GEMM instead of the saved [M, N] tensor.
        aux = _ops.fused_linear_forward.default(x, weight, bias, "none", False)[0]
    if aux is None:
        aux = grad.new_empty((0,))
    mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]]
    gx, gw, gb = _ops.fused_linear_backward.default(grad, x, weight, aux, ctx.activation, ctx.has_bias, mask)
    return (gx if mask[0] else None), (gw if mask[1] else None), (gb if mask[2] else None), None, None


torch.library.register_autograd("teachcompute_ext::fused_matmul", _matmul_backward, setup_context=_matmul_setup)
torch.library.register_autograd("teachcompute_ext::fused_linear_forward", _linear_backward,
                                setup_context=_linear_setup)
