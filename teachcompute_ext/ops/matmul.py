"""Matmul family: fused_matmul (alpha * op(a) @ op(b)) and fused_linear
(act(x @ weight.T + bias)): wrappers, fake kernels and autograd.

fused_linear is a composite op: it calls fused_linear_forward, which also
returns the pre-activation when a backward will need it (gelu, gelu_tanh,
silu; relu's mask comes from its output, none needs nothing), and the backward
is one op, fused_linear_backward, which fuses grad * act'(pre) with the bias
gradient and runs the two GEMMs.
"""
import torch

from ._common import check_float_dtype, check_same_device

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


# ---- checks, mirroring csrc/matmul/matmul.h --------------------------------------------

def _check_same(op, what, t, ref_what, ref):
    if t.dtype != ref.dtype:
        raise RuntimeError(f"teachcompute_ext.{op}: argument '{what}' has dtype {t.dtype} but '{ref_what}' has "
                           f"dtype {ref.dtype}")
    check_same_device(op, what, t, ref_what, ref)


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
    op = "fused_linear_backward"
    _check_linear(op, x, weight, None)
    _check_activation(op, activation)
    _check_same(op, "grad", grad, "x", x)
    out_shape = [*x.shape[:-1], weight.shape[0]]
    torch._check(list(grad.shape) == out_shape, lambda: (
        f"teachcompute_ext.{op}: argument 'grad' has shape {list(grad.shape)} but the output has shape {out_shape}"))
    if activation != "none":
        torch._check(aux.shape == grad.shape, lambda: (
            f"teachcompute_ext.{op}: argument 'aux' (the saved {'output' if activation == 'relu' else 'pre-activation'})"
            f" has shape {list(aux.shape)} but 'grad' has shape {list(grad.shape)}"))
        _check_same(op, "aux", aux, "x", x)
    n, k = weight.shape
    gx = x.new_empty(x.shape) if output_mask[0] else x.new_empty((0, 0))
    gw = x.new_empty((n, k)) if output_mask[1] else x.new_empty((0, 0))
    gb = x.new_empty((n,)) if output_mask[2] and has_bias else x.new_empty((0,))
    return gx, gw, gb

# Autograd is registered in C++ (csrc/matmul/matmul_autograd.cpp).
