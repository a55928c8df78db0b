"""Autocast: under torch.autocast each op gives the dtype and the values of its
torch counterpart under the same autocast (CPU bfloat16 and float16; CUDA
float16 and bfloat16 when a GPU is there). The policy is in csrc/common/autocast.h."""
import pytest
import torch
import torch.nn.functional as F

import teachcompute_ext as tce
from conftest import CUDA_OK

ACT = {"none": lambda y: y, "relu": F.relu, "gelu": F.gelu, "gelu_tanh": lambda y: F.gelu(y, approximate="tanh"),
       "silu": F.silu}

CASES = [("cpu", torch.bfloat16), ("cpu", torch.float16)] + [
    pytest.param("cuda", dt, marks=pytest.mark.skipif(not CUDA_OK, reason="no CUDA device or CUDA not compiled"))
    for dt in (torch.float16, torch.bfloat16)]


def _pairs(device):
    """(name, ours, torch's counterpart, inputs): every op a user calls under autocast."""
    g = torch.Generator().manual_seed(0)

    def r(*s):
        return torch.randn(*s, generator=g).to(device)

    x, w, b = r(9, 16), r(12, 16), r(12)
    a3, b3 = r(2, 9, 16), r(16, 5)
    idx = torch.randint(0, 12, (4, 3), generator=g).to(device)
    pairs = []
    for act, f in ACT.items():
        pairs.append((f"fused_linear {act}", lambda x, w, b, act=act: tce.fused_linear(x, w, b, act),
                      lambda x, w, b, f=f: f(F.linear(x, w, b)), (x, w, b)))
    pairs += [
        ("fused_matmul", lambda a, b: tce.fused_matmul(a, b, 0.5), lambda a, b: 0.5 * torch.matmul(a, b), (a3, b3)),
        ("fused_matmul trans_b", lambda a, b: tce.fused_matmul(a, b, 1.0, False, True),
         lambda a, b: torch.matmul(a, b.transpose(-1, -2)), (x, w)),
    ]
    # The other ops, in float32 and in the autocast's lower precision inputs.
    for dt in (torch.float32, torch.float16, torch.bfloat16):
        xd = x.to(dt)
        pairs += [
            (f"softmax {dt}", lambda t: tce.softmax(t, 1), lambda t: torch.softmax(t, 1), (xd,)),
            (f"log_softmax {dt}", lambda t: tce.log_softmax(t, 1), lambda t: torch.log_softmax(t, 1), (xd,)),
            (f"logsumexp {dt}", lambda t: tce.logsumexp(t, [1]), lambda t: torch.logsumexp(t, [1]), (xd,)),
            (f"reduce_sum {dt}", lambda t: tce.reduce_sum(t, [0]), lambda t: torch.sum(t, [0]), (xd,)),
            (f"vector_sum {dt}", tce.vector_sum, torch.sum, (xd,)),
            (f"reduce_mean {dt}", lambda t: tce.reduce_mean(t, [1]), lambda t: torch.mean(t, [1]), (xd,)),
            (f"reduce_max {dt}", lambda t: tce.reduce_max(t, 1)[0], lambda t: torch.max(t, 1)[0], (xd,)),
            (f"embedding {dt}", lambda wt: tce.embedding(wt, idx), lambda wt: F.embedding(idx, wt), (w.to(dt),)),
            (f"embedding_bag {dt}", lambda wt: tce.embedding_bag(wt, idx, None, "sum"),
             lambda wt: F.embedding_bag(idx, wt, mode="sum"), (w.to(dt),)),
            (f"rms_norm {dt}", lambda t, wt: tce.rms_norm(t, wt), lambda t, wt: F.rms_norm(t, (16,), wt, 1e-6),
             (xd, r(16).to(dt))),
            (f"add_rms_norm {dt}", lambda t, u, wt: tce.add_rms_norm(t, u, wt)[0],
             lambda t, u, wt: F.rms_norm(t + u, (16,), wt, 1e-6), (xd, xd.flip(0), r(16).to(dt))),
            (f"rotary_embedding {dt}", lambda t, c, s: tce.rotary_embedding(t, c, s),
             # the rotation by halves, joined by pads: torch.cat's autocast refuses float16 under bfloat16
             lambda t, c, s: (F.pad(t[:, :8] * c - t[:, 8:] * s, (0, 8)) + F.pad(t[:, 8:] * c + t[:, :8] * s, (8, 0))),
             (xd, r(9, 8).to(dt), r(9, 8).to(dt))),
            (f"swiglu {dt}", tce.swiglu, lambda g, u: F.silu(g) * u, (xd, xd.flip(1))),
            (f"geglu {dt}", tce.geglu, lambda g, u: F.gelu(g) * u, (xd, xd.flip(1))),
        ]
    return pairs


@pytest.mark.parametrize("device,dtype", CASES)
def test_each_op_follows_torchs_autocast_policy(device, dtype):
    for name, ours, theirs, args in _pairs(device):
        with torch.autocast(device, dtype=dtype):
            out, ref = ours(*args), theirs(*args)
        assert out.dtype == ref.dtype, f"{name}: {out.dtype} under autocast, torch's counterpart gives {ref.dtype}"
        tol = 2e-2 if ref.dtype in (torch.float16, torch.bfloat16) else 1e-5
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
        ("rotary_embedding", lambda: tce.rotary_embedding(lo, c, s),
         lambda: torch.cat([lo[:, :8] * c - lo[:, 8:] * s, lo[:, 8:] * c + lo[:, :8] * s], -1)),
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
