"""Autocast: under torch.autocast each op gives the dtype and the values of its
torch counterpart under the same autocast (CPU bfloat16 and float16; CUDA
float16 and bfloat16 when a GPU is there). The policy is in csrc/common/autocast.h."""

import functools

import pytest
import torch
import torch.nn.functional as F

import teachcompute_ext as tce

import op_db
from conftest import CUDA_OK

CASES = [("cpu", torch.bfloat16), ("cpu", torch.float16)] + [
    pytest.param("cuda", dt, marks=pytest.mark.skipif(not CUDA_OK, reason="no CUDA device or CUDA not compiled"))
    for dt in (torch.float16, torch.bfloat16)
]


def _pairs(device):
    """(name, ours, torch's counterpart): every public op of the table (tests/op_db.py), each of its
    small samples in float32 and in both lower-precision dtypes; the counterpart is the table's
    reference (torch's own ops), which follows torch's autocast policy."""
    pairs = []
    for op in op_db.PUBLIC:
        for dt in (torch.float32, torch.float16, torch.bfloat16):
            for sample in op.small(device, dt, 0):
                pairs.append(
                    (
                        f"{op.name} {sample.name} {dt}",
                        functools.partial(op_db.call, op, sample),
                        functools.partial(op_db.call, op, sample, op.ref),
                    )
                )
    return pairs


@pytest.mark.parametrize("device,dtype", CASES)
def test_each_op_follows_torchs_autocast_policy(device, dtype):
    for name, ours, theirs in _pairs(device):
        with torch.autocast(device, dtype=dtype):
            outs, refs = op_db.outputs(ours()), op_db.outputs(theirs())
        for out, ref in zip(outs, refs):
            assert out.dtype == ref.dtype, f"{name}: {out.dtype} under autocast, torch's counterpart gives {ref.dtype}"
            tol = 3e-2 if ref.dtype in (torch.float16, torch.bfloat16) else 1e-5
            torch.testing.assert_close(out.double(), ref.double(), rtol=tol, atol=tol, msg=name)


@pytest.mark.parametrize("device,dtype", CASES)
def test_mixed_dtypes_promote_under_autocast_as_torchs_elementwise_ops(device, dtype):
    # Under autocast a Linear's lower-precision output meets float32 tables, residuals
    # and gates (the Llama model, transformers' rotary): the fused elementwise ops
    # promote as q * cos, x + residual and silu(gate) * up do, gradients included
    # (outside autocast mixed dtypes stay an error).
    g = torch.Generator().manual_seed(3)
    lo = torch.randn(9, 16, generator=g).to(device, dtype).requires_grad_()
    hi = torch.randn(9, 16, generator=g).to(device).requires_grad_()
    c, s = torch.randn(9, 8, generator=g).to(device), torch.randn(9, 8, generator=g).to(device)
    w = torch.randn(16, generator=g).to(device)
    pairs = [
        (
            "rotary_embedding",
            lambda: tce.rotary_embedding(lo, c, s),
            lambda: torch.cat([lo[:, :8] * c - lo[:, 8:] * s, lo[:, 8:] * c + lo[:, :8] * s], -1),
        ),
        ("add_rms_norm", lambda: tce.add_rms_norm(lo, hi, w)[0], lambda: F.rms_norm(lo + hi, (16,), w, 1e-6)),
        ("swiglu", lambda: tce.swiglu(lo, hi), lambda: F.silu(lo) * hi),
        ("geglu", lambda: tce.geglu(hi, lo, "tanh"), lambda: F.gelu(hi, approximate="tanh") * lo),
    ]
    for name, ours, theirs in pairs:
        with torch.autocast(device, dtype=dtype):
            out, ref = ours(), theirs()
        assert out.dtype == ref.dtype == torch.float32, name
        # torch's F.silu(lo) rounds the activation to lo's dtype before the product; ours, promoted first, does not
        torch.testing.assert_close(out, ref, rtol=2e-2, atol=2e-2, msg=name)
        leaves = [lo, hi] if name != "rotary_embedding" else [lo]
        for a, b in zip(torch.autograd.grad(out.sum(), leaves), torch.autograd.grad(ref.sum(), leaves)):
            assert a.dtype == b.dtype
            # the lower-precision leaf's gradient is rounded to its dtype, by each in its own order
            torch.testing.assert_close(a.double(), b.double(), rtol=1e-2, atol=1e-2 * b.abs().max().item(), msg=name)
    with pytest.raises(TypeError, match="rotary_embedding"):
        tce.rotary_embedding(lo, c, s)


@pytest.mark.parametrize("device,dtype", CASES)
def test_autocast_backward_gives_torchs_gradients(device, dtype):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(7, 16, generator=g).to(device)
    w = torch.randn(12, 16, generator=g).to(device).requires_grad_()
    b = torch.randn(12, generator=g).to(device).requires_grad_()
    r = torch.randn(7, 12, generator=g).to(device)
    grads = []
    for linear in (lambda: tce.fused_linear(x, w, b, "silu"), lambda: F.silu(F.linear(x, w, b))):
        with torch.autocast(device, dtype=dtype):
            y = linear()
            assert y.dtype == dtype
            loss = (y.float() * r).sum()
        grads.append(torch.autograd.grad(loss, (w, b)))
    for ours, ref in zip(*grads):
        assert ours.dtype == ref.dtype == torch.float32  # parameters keep their dtype
        # Both round x, w, the output and the gradients to the autocast dtype: equal up to a few of its ulps.
        torch.testing.assert_close(ours, ref, rtol=3e-2, atol=3e-2 * ref.abs().max().item())


@pytest.mark.parametrize("device,dtype", CASES[:1])
def test_autocast_under_compile(device, dtype):
    g = torch.Generator().manual_seed(2)
    x, w = torch.randn(5, 16, generator=g), torch.randn(12, 16, generator=g)

    def f(x, w):
        with torch.autocast(device, dtype=dtype):
            return tce.softmax(tce.fused_linear(x, w, None, "gelu"), 1)

    torch._dynamo.reset()
    out = torch.compile(f, fullgraph=True, dynamic=True)(x, w)
    with torch.autocast(device, dtype=dtype):
        ref = torch.softmax(F.gelu(F.linear(x, w)), 1)
    assert out.dtype == ref.dtype == dtype
    torch.testing.assert_close(out.double(), ref.double(), rtol=2e-2, atol=2e-2)
