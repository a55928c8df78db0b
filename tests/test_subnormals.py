"""No subnormal where torch has a zero: every activation (forward and backward), every
fused epilogue and every op whose output feeds a GEMM, on inputs spanning -1e4..1e4 with
NaN and infinities, gives as many exact zeros and as many subnormals as torch's op.

Why it matters: a subnormal operand makes a GEMM run on the CPU's slow path. fused_linear
gelu's derivative once returned tiny values where torch's is exactly zero (at -10:
-7.7e-22; from -13.5: subnormals), and on pre-activations of an unscaled layer (standard
deviation about 20) 1.5% of the gradient was subnormal: the two GEMMs of the backward
that read it ran 3.5x slower (13.4 ms against 3.9 ms for silu on the same shapes).
"""

import pytest
import torch
import torch.nn.functional as F

import teachcompute_ext as t

ACTS = {
    "none": lambda y: y,
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_tanh": lambda y: F.gelu(y, approximate="tanh"),
    "silu": F.silu,
}


def values(dtype, special=True):
    """-1e4..1e4, dense where the activations bend and underflow, and NaN, +-inf, +-0."""
    parts = [
        torch.linspace(-1e4, 1e4, 20001, dtype=torch.float64),
        torch.linspace(-120, 120, 240001, dtype=torch.float64),
        torch.linspace(-8, 8, 160001, dtype=torch.float64),
    ]
    if special:
        parts.append(torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0], dtype=torch.float64))
    return torch.cat(parts).to(dtype)


def kinds(x):
    """Per entry: 0 exact zero, 1 subnormal, 2 anything else (normal, infinite, NaN)."""
    x = x.detach()
    tiny = torch.finfo(x.dtype).tiny
    k = torch.full(x.shape, 2, dtype=torch.int8)
    k[x == 0] = 0
    k[(x != 0) & (x.abs() < tiny)] = 1
    return k


def assert_same_kinds(ours, theirs, what, inputs=None):
    """No subnormal where torch has none, entry by entry (the kind that slows a GEMM down); and
    NaN where torch's is NaN (but for torch's float32 and bfloat16 gelu(+inf), NaN, where ours
    is +inf, as torch's float64 and the limit). Exact zeros are counted too: where ours is 0 and
    torch's a normal number or the reverse, only at the values' rounding boundary (float32's
    0.5 (1 + erf(x)) rounding to 0, exp underflowing), within the values' tolerance."""
    a, b = kinds(ours), kinds(theirs)
    extra = (a == 1) & (b != 1)
    assert not bool(extra.any()), (
        f"{what}: {int(extra.sum())} subnormals where torch has none, at {ours.detach()[extra][:5].tolist()} "
        f"(torch: {theirs.detach()[extra][:5].tolist()})"
    )
    nan_ok = theirs.isnan() == ours.isnan()
    if inputs is not None:
        nan_ok |= (inputs == float("inf")) & ours.isinf()
    assert bool(nan_ok.all()), f"{what}: NaN at other places than torch's"
    return {
        "ours zeros": int((a == 0).sum()),
        "torch zeros": int((b == 0).sum()),
        "ours subnormals": int((a == 1).sum()),
        "torch subnormals": int((b == 1).sum()),
    }


DTYPES = [torch.float32, torch.bfloat16, torch.float64]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("act", list(ACTS))
def test_fused_linear_epilogues_forward_and_backward(act, dtype):
    # An identity weight makes the pre-activation the input itself (x * 1 + 0s, exact),
    # so the epilogue and its derivative see every value of the grid. No infinities here:
    # the GEMM's 0 * inf would be NaN on both sides.
    v = values(dtype, special=False)
    x = v[: v.numel() // 16 * 16].view(-1, 16).requires_grad_()
    w = torch.eye(16, dtype=dtype)
    xr = x.detach().clone().requires_grad_()
    ours = t.fused_linear(x, w, None, act)
    theirs = ACTS[act](F.linear(xr, w))
    assert_same_kinds(ours, theirs, f"fused_linear {act} forward")
    g = torch.ones_like(ours)
    (gx,) = torch.autograd.grad(ours, x, g)
    (gr,) = torch.autograd.grad(theirs, xr, g)
    assert_same_kinds(gx, gr, f"fused_linear {act} backward")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", ["swiglu", "geglu", "geglu_tanh"])
def test_gated_units_forward_and_backward(name, dtype):
    gate = values(dtype).requires_grad_()
    up = torch.ones_like(gate).requires_grad_()
    gr, ur = gate.detach().clone().requires_grad_(), up.detach().clone().requires_grad_()
    if name == "swiglu":
        ours, theirs = t.swiglu(gate, up), F.silu(gr) * ur
    else:
        approx = "tanh" if name == "geglu_tanh" else "none"
        ours, theirs = t.geglu(gate, up, approx), F.gelu(gr, approximate=approx) * ur
    assert_same_kinds(ours, theirs, f"{name} forward", inputs=gate.detach())
    g = torch.ones_like(ours)
    for a, b, arg in zip(
        torch.autograd.grad(ours, (gate, up), g), torch.autograd.grad(theirs, (gr, ur), g), ("gate", "up")
    ):
        # up's gradient is gelu(gate): the same +inf as the forward
        assert_same_kinds(a, b, f"{name} backward ({arg})", inputs=gate.detach() if arg == "up" else None)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_softmax_rows_with_outliers_and_masks(name, dtype):
    # Rows of values spread over the whole range (exp of differences of 1e4 underflows),
    # rows with -inf entries (masks) and fully masked rows.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 100, generator=g, dtype=torch.float64) * torch.logspace(0, 4, 64, dtype=torch.float64)[:, None]
    x[::3, ::2] = -float("inf")
    x[5] = -float("inf")
    x = x.to(dtype).requires_grad_()
    xr = x.detach().clone().requires_grad_()
    ours, theirs = getattr(t, name)(x, 1), getattr(torch, name)(xr, 1)
    assert_same_kinds(ours, theirs, f"{name} forward")
    grad = torch.randn(64, 100, generator=g, dtype=torch.float64).to(dtype)
    (gx,) = torch.autograd.grad(ours, x, grad)
    (gt,) = torch.autograd.grad(theirs, xr, grad)
    assert_same_kinds(gx, gt, f"{name} backward")
