"""Matmul family: fused_matmul, fused_linear and nn.FusedLinear against a float64 torch reference."""

import pytest
import torch
import torch.nn.functional as F

import teachcompute_ext

from conftest import DEVICES, FLOAT_DTYPES, assert_func_grad_matches_autograd

ops = torch.ops.teachcompute_ext
ACTS = {
    "none": lambda v: v,
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_tanh": lambda v: F.gelu(v, approximate="tanh"),
    "silu": F.silu,
}
# Inputs are scaled so each output is O(1); the tolerance then covers a K-term
# dot product accumulated in the dtype's GEMM (half types: float32 accumulation,
# one rounding of the result and of the stored pre-activation).
TOL = {
    torch.float32: dict(rtol=1e-4, atol=1e-4),
    torch.float64: dict(rtol=1e-10, atol=1e-10),
    torch.float16: dict(rtol=1e-2, atol=1e-2),
    torch.bfloat16: dict(rtol=5e-2, atol=5e-2),
}


def _rand(shape, dtype, device, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(device, dtype)


def _linear_inputs(x_shape, n, dtype, device, seed, bias=True):
    k = x_shape[-1]
    x = _rand(x_shape, dtype, device, seed)
    w = _rand((n, k), dtype, device, seed + 1, scale=1 / max(k, 1) ** 0.5)
    b = _rand((n,), dtype, device, seed + 2) if bias else None
    return x, w, b


def _reference(x, w, b, act):
    x64, w64 = x.double(), w.double()
    b64 = None if b is None else b.double()
    return ACTS[act](F.linear(x64, w64, b64))


# (x shape, out features): 2-D, 3-D, 1-D, empty batch, no input features (the
# output is act(bias), the bias still gets a gradient), and one large enough
# for the CPU path's tiled GEMM (2 M N K above its threshold) with ragged tiles.
LINEAR_SHAPES = [((37, 19), 23), ((3, 5, 19), 23), ((19,), 23), ((0, 19), 23), ((6, 0), 5), ((260, 300), 600)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize("bias", [True, False])
def test_fused_linear_forward_backward_match_float64(bias, act, dtype, device):
    for i, (x_shape, n) in enumerate(LINEAR_SHAPES):
        x, w, b = _linear_inputs(x_shape, n, dtype, device, 10 * i, bias)
        params = [t.clone().requires_grad_() for t in (x, w) + ((b,) if bias else ())]
        out = teachcompute_ext.fused_linear(params[0], params[1], params[2] if bias else None, act)
        assert out.dtype == dtype and out.shape == (*x_shape[:-1], n)
        ref_params = [t.detach().double().requires_grad_() for t in params]
        ref = _reference(ref_params[0], ref_params[1], ref_params[2] if bias else None, act)
        torch.testing.assert_close(out.double(), ref, **TOL[dtype])
        g = _rand(out.shape, dtype, device, 10 * i + 5)
        if act == "relu":
            # relu' jumps at 0: where the pre-activation is within rounding of 0
            # the mask is not decided by the dtype, so no gradient flows there.
            pre = F.linear(*[t.detach() for t in ref_params[:2]], ref_params[2].detach() if bias else None)
            g = g * (pre.abs() > 4 * TOL[dtype]["atol"]).to(dtype)
        grads = torch.autograd.grad(out, params, g)
        ref_grads = torch.autograd.grad(ref, ref_params, g.double())
        for name, got, want in zip(("x", "weight", "bias"), grads, ref_grads):
            assert got.dtype == dtype and got.shape == want.shape, name
            # grad_weight and grad_bias sum over M rows: scale the tolerance by sqrt(M)
            scale = 1.0 if name == "x" else max(1.0, out.numel() / n) ** 0.5
            tol = {k: v * scale for k, v in TOL[dtype].items()}
            torch.testing.assert_close(got.double(), want, **tol, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize("bias", [True, False])
def test_fused_linear_gradcheck(bias, act, device):
    for x_shape, n in [((4, 5), 3), ((2, 3, 5), 4), ((0, 5), 3)]:
        x, w, b = _linear_inputs(x_shape, n, torch.float64, device, 3, bias)
        args = [x.requires_grad_(), w.requires_grad_()] + ([b.requires_grad_()] if bias else [None])
        assert torch.autograd.gradcheck(lambda *a: teachcompute_ext.fused_linear(*a, act), args)
    # non-contiguous x: a transposed view
    xt = _rand((5, 6), torch.float64, device, 4).t().requires_grad_()
    w = _rand((3, 5), torch.float64, device, 5).requires_grad_()
    b = _rand((3,), torch.float64, device, 6).requires_grad_() if bias else None
    assert not xt.is_contiguous()
    assert torch.autograd.gradcheck(lambda *a: teachcompute_ext.fused_linear(*a, act), [xt, w, b])


@pytest.mark.parametrize("device", DEVICES)
def test_fused_linear_non_contiguous_inputs(device):
    x = _rand((40, 30), torch.float32, device, 1)[::2, ::3]  # (20, 10), both strides > 1
    w = _rand((10, 8), torch.float32, device, 2).t()  # (8, 10), a transposed view
    b = _rand((16,), torch.float32, device, 3)[::2]
    for act in ACTS:
        torch.testing.assert_close(
            teachcompute_ext.fused_linear(x, w, b, act).double(), _reference(x, w, b, act), **TOL[torch.float32]
        )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("act", ["gelu", "silu", "relu", "none"])
def test_fused_linear_saves_only_what_the_backward_needs(act, device):
    x, w, b = _linear_inputs((6, 5), 4, torch.float32, device, 7)
    # inference (no grad): no pre-activation is written
    with torch.no_grad():
        _, pre = ops.fused_linear_forward(x, w, b, act, False)
    assert pre.numel() == 0
    _, pre = ops.fused_linear_forward(x, w, b, act, True)
    assert pre.numel() == (24 if act in ("gelu", "silu") else 0)
    # save_pre=False under autograd recomputes the pre-activation: same gradients
    params = [t.clone().requires_grad_() for t in (x, w, b)]
    out, _ = ops.fused_linear_forward(*params, act, False)
    g = _rand(out.shape, torch.float32, device, 8)
    got = torch.autograd.grad(out, params, g)
    ref = [t.detach().double().requires_grad_() for t in params]
    want = torch.autograd.grad(_reference(*ref, act), ref, g.double())
    for a, e in zip(got, want):
        torch.testing.assert_close(a.double(), e, **TOL[torch.float32])


def test_fused_linear_bias_grad_same_bits_for_any_thread_count():
    x, w, b = _linear_inputs((700, 64), 96, torch.float32, "cpu", 9)
    g = _rand((700, 96), torch.float32, "cpu", 10)
    aux = F.linear(x, w, b)
    old = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append(ops.fused_linear_backward(g, x, w, aux, "gelu", True, [False, False, True])[2])
    finally:
        torch.set_num_threads(old)
    assert all(torch.equal(results[0], r) for r in results[1:])


MATMUL_SHAPES = [  # shapes of op(a) and op(b): broadcasting as torch.matmul
    ((7, 5), (5, 6)),
    ((3, 7, 5), (5, 6)),
    ((7, 5), (4, 5, 6)),
    ((2, 1, 7, 5), (3, 5, 6)),
    ((0, 7, 5), (5, 6)),
    ((7, 0), (0, 6)),
    ((2, 3, 4), (2, 4, 5)),
]


def _op_inputs(sa, sb, ta, tb, dtype, device, seed):
    a = _rand(sa, dtype, device, seed, scale=1 / max(sa[-1], 1) ** 0.5)
    b = _rand(sb, dtype, device, seed + 1)
    # the stored tensor is op(.)'s transpose when the flag is set
    a = a.mT.contiguous() if ta else a
    b = b.mT.contiguous() if tb else b
    return a, b


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("ta", [False, True])
@pytest.mark.parametrize("tb", [False, True])
def test_fused_matmul_matches_float64(tb, ta, dtype, device):
    for i, (sa, sb) in enumerate(MATMUL_SHAPES):
        a, b = _op_inputs(sa, sb, ta, tb, dtype, device, 20 + i)
        alpha = 0.75
        out = teachcompute_ext.fused_matmul(a, b, alpha, ta, tb)
        A = a.double().mT if ta else a.double()
        B = b.double().mT if tb else b.double()
        ref = alpha * torch.matmul(A, B)
        assert out.dtype == dtype and out.shape == ref.shape
        torch.testing.assert_close(out.double(), ref, **TOL[dtype])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("ta", [False, True])
@pytest.mark.parametrize("tb", [False, True])
def test_fused_matmul_gradcheck(tb, ta, device):
    for sa, sb in [((3, 4), (4, 2)), ((2, 3, 4), (4, 2)), ((3, 4), (2, 4, 2)), ((2, 1, 3, 4), (3, 4, 2))]:
        a, b = _op_inputs(sa, sb, ta, tb, torch.float64, device, 5)
        f = lambda a, b: teachcompute_ext.fused_matmul(a, b, -1.5, ta, tb)  # noqa: E731
        assert torch.autograd.gradcheck(f, [a.requires_grad_(), b.requires_grad_()])
        assert torch.autograd.gradgradcheck(f, [a, b])


def test_fused_matmul_and_linear_bad_input():
    x, w, b = _linear_inputs((4, 5), 3, torch.float32, "cpu", 1)
    fl = teachcompute_ext.fused_linear
    with pytest.raises(RuntimeError, match=r"teachcompute_ext.fused_linear: in_features mismatch: 'x' has shape"):
        fl(x, w[:, :4])
    with pytest.raises(RuntimeError, match=r"fused_linear: argument 'bias' must have shape \[3\]"):
        fl(x, w, b[:2])
    with pytest.raises(RuntimeError, match=r"fused_linear: argument 'weight' has dtype torch.float64 but 'x'"):
        fl(x, w.double())
    with pytest.raises(RuntimeError, match=r"fused_linear: argument 'bias' has dtype torch.float16 but 'x'"):
        fl(x, w, b.half())
    with pytest.raises(
        ValueError,
        match=r"unknown activation 'tanh' for argument 'activation' \(expected one of "
        r"none, relu, gelu, gelu_tanh, silu\)",
    ):
        fl(x, w, b, "tanh")
    with pytest.raises(RuntimeError, match=r"fused_linear: argument 'weight' must be 1-D \[in_features\] or 2-D"):
        fl(x, w[None])
    with pytest.raises(RuntimeError, match=r"fused_linear: argument 'weight' must be 1-D \[in_features\] or 2-D"):
        fl(x, w[0, 0])
    with pytest.raises(RuntimeError, match=r"fused_linear: argument 'bias' must be 0-d when 'weight' is 1-D"):
        fl(x, w[0], b[:1])
    with pytest.raises(RuntimeError, match=r"fused_linear: in_features mismatch"):
        fl(x, w[0, :4])
    with pytest.raises(TypeError, match=r"fused_linear: unsupported dtype torch.int64 for argument 'x'"):
        fl(x.long(), w.long())
    # devices: the meta device reaches the same checks through the fake kernel
    with pytest.raises(
        RuntimeError,
        match=r"fused_linear: Expected all tensors to be on the same device.*argument 'weight' is on meta, 'x' is on cpu",
    ):
        fl(x, w.to("meta"))
    fm = teachcompute_ext.fused_matmul
    with pytest.raises(RuntimeError, match=r"fused_matmul: inner dims do not match: op\(a\) is 4x5"):
        fm(x, x)
    fm(x, x, 1.0, False, True)  # a @ a.T is fine
    with pytest.raises(RuntimeError, match=r"fused_matmul: batch dims do not broadcast: 'a' has batch shape \[2\]"):
        fm(torch.randn(2, 3, 4), torch.randn(3, 4, 5))
    with pytest.raises(RuntimeError, match=r"fused_matmul: argument 'b' must have at least 1 dim, got a 0-d tensor"):
        fm(x, torch.randn(()))
    with pytest.raises(RuntimeError, match=r"fused_matmul: argument 'a' must have at least 1 dim, got a 0-d tensor"):
        fm(torch.randn(()), x)
    with pytest.raises(RuntimeError, match=r"fused_matmul: inner dims do not match: op\(a\) is 1x4"):
        fm(torch.randn(4), torch.randn(5))
    with pytest.raises(
        RuntimeError,
        match=r"fused_matmul: Expected all tensors to be on the same device.*argument 'b' is on meta, 'a' is on cpu",
    ):
        fm(x, torch.randn(5, 2, device="meta"))
    # and inside a compiled graph (fake kernels)
    with pytest.raises(Exception, match=r"in_features mismatch"):
        torch.compile(fl, fullgraph=True)(x, w[:, :4])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_matmul_opcheck(dtype, device):
    x, w, b = _linear_inputs((6, 5), 4, dtype, device, 2)
    grad_ok = dtype in (torch.float32, torch.float64)
    for act in ACTS:
        for save_pre in (True, False):
            args = (x.requires_grad_(grad_ok), w.requires_grad_(grad_ok), b.requires_grad_(grad_ok), act, save_pre)
            torch.library.opcheck(ops.fused_linear_forward, args)
        aux = F.linear(x, w, b).detach()
        for mask in ([True, True, True], [False, True, False], [True, False, True]):
            torch.library.opcheck(
                ops.fused_linear_backward,
                (_rand((6, 4), dtype, device, 3), x.detach(), w.detach(), aux, act, True, mask),
            )
    for ta in (False, True):
        a, bb = _op_inputs((2, 3, 4), (4, 5), ta, False, dtype, device, 4)
        torch.library.opcheck(ops.fused_matmul, (a.requires_grad_(grad_ok), bb.requires_grad_(grad_ok), 0.5, ta, False))


@pytest.mark.parametrize("device", DEVICES)
def test_matmul_torch_compile_fullgraph_dynamic(device):
    torch._dynamo.reset()

    def f(x, w, b, a, c):
        return (
            teachcompute_ext.fused_linear(x, w, b, "gelu").sum() + teachcompute_ext.fused_matmul(a, c, 2.0, True).sum()
        )

    cf = torch.compile(f, fullgraph=True, dynamic=True)
    for m in (3, 8, 17):
        x, w, b = _linear_inputs((m, 5), 4, torch.float64, device, m)
        a, c = _op_inputs((m, 6), (6, 2), True, False, torch.float64, device, m + 1)
        ins = [t.requires_grad_() for t in (x, w, b, a, c)]
        got = cf(*ins)
        got_g = torch.autograd.grad(got, ins)
        want = f(*ins)
        want_g = torch.autograd.grad(want, ins)
        torch.testing.assert_close(got, want)
        for p, q in zip(got_g, want_g):
            torch.testing.assert_close(p, q)


def test_fused_linear_model_compiles_with_no_graph_break():
    torch._dynamo.reset()
    model = torch.nn.Sequential(
        teachcompute_ext.nn.FusedLinear(8, 16, activation="gelu"),
        teachcompute_ext.nn.FusedLinear(16, 16, activation="silu", bias=False),
        teachcompute_ext.nn.FusedLinear(16, 4),
    ).double()
    x = _rand((5, 8), torch.float64, "cpu", 1)
    explain = torch._dynamo.explain(model)(x)
    assert explain.graph_break_count == 0 and explain.graph_count == 1
    compiled = torch.compile(model, fullgraph=True, dynamic=True)
    torch.testing.assert_close(compiled(x), model(x))


def test_nn_fused_linear_is_a_drop_in_for_linear():
    torch.manual_seed(0)
    ref = torch.nn.Linear(6, 3)
    torch.manual_seed(0)
    ours = teachcompute_ext.nn.FusedLinear(6, 3, activation="relu")
    # same initialization for the same seed, same state_dict keys and shapes
    for (k1, v1), (k2, v2) in zip(ref.state_dict().items(), ours.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    other = torch.nn.Linear(6, 3)
    ours.load_state_dict(other.state_dict())
    back = torch.nn.Linear(6, 3)
    back.load_state_dict(ours.state_dict())
    x = _rand((4, 6), torch.float32, "cpu", 2)
    torch.testing.assert_close(ours(x), F.relu(back(x)))
    nb = teachcompute_ext.nn.FusedLinear(6, 3, bias=False, dtype=torch.float64)
    assert nb.bias is None and nb.weight.dtype == torch.float64 and "activation=none" in repr(nb)
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        teachcompute_ext.nn.FusedLinear(6, 3, activation="swish")


# ---- issue 11 defects ---------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("activation", ["none", "relu", "gelu", "gelu_tanh", "silu"])
@pytest.mark.parametrize("x_shape", [(24,), (1, 24), (1, 1, 24)])
def test_fused_linear_bias_gradient_of_a_single_row(x_shape, activation, device):
    # One row (1-D x, batch 1): the CUDA bias gradient was left uninitialized.
    g = torch.Generator().manual_seed(len(x_shape))
    x = torch.randn(x_shape, generator=g, dtype=torch.float64).to(device).requires_grad_()
    w = torch.randn(40, 24, generator=g, dtype=torch.float64).to(device).requires_grad_()
    b = torch.randn(40, generator=g, dtype=torch.float64).to(device).requires_grad_()
    out = teachcompute_ext.fused_linear(x, w, b, activation)
    acts = {
        "none": lambda t: t,
        "relu": torch.relu,
        "gelu": F.gelu,
        "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"),
        "silu": F.silu,
    }
    ref = acts[activation](F.linear(x, w, b))
    torch.testing.assert_close(out, ref)
    go = torch.randn(out.shape, generator=g, dtype=torch.float64).to(device)
    grads = torch.autograd.grad(out, (x, w, b), go)
    refs = torch.autograd.grad(ref, (x, w, b), go)
    for a, r in zip(grads, refs):
        torch.testing.assert_close(a, r)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bias", [False, True])
def test_fused_linear_relu_keeps_nan_as_torch_relu(bias, device):
    x = torch.randn(6, 8, device=device)
    x[2, 3] = float("nan")
    w, b = torch.randn(5, 8, device=device), (torch.randn(5, device=device) if bias else None)
    out = teachcompute_ext.fused_linear(x, w, b, "relu")
    ref = torch.relu(F.linear(x, w, b))
    assert torch.equal(out.isnan(), ref.isnan()) and out[2].isnan().all()
    torch.testing.assert_close(out, ref, equal_nan=True)


# ---- 1-D operands and zero-size dims follow torch.matmul / F.linear ------------------------------------
# (a shape, b shape) as stored; a flag on a 1-D operand is ignored (a vector's transpose is the vector),
# a flag on a matrix transposes it, so the stored shape is op(.)'s transpose then.
VECTOR_CASES = [
    ((4,), (4,)),
    ((4,), (4, 3)),
    ((4,), (2, 4, 3)),
    ((3, 4), (4,)),
    ((2, 3, 4), (4,)),
    ((2, 1, 3, 4), (4,)),
    ((4,), (5, 2, 4, 3)),
    ((0,), (0,)),
    ((0,), (0, 3)),
    ((3, 0), (0,)),
]


def _vector_inputs(sa, sb, ta, tb, dtype, device, seed):
    a = _rand(sa, dtype, device, seed)
    b = _rand(sb, dtype, device, seed + 1)
    a = a.mT.contiguous() if ta and a.dim() >= 2 else a
    b = b.mT.contiguous() if tb and b.dim() >= 2 else b
    return a, b


def _matmul_reference(a, b, alpha, ta, tb):
    A = a.double().mT if ta and a.dim() >= 2 else a.double()
    B = b.double().mT if tb and b.dim() >= 2 else b.double()
    return alpha * torch.matmul(A, B)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("ta", [False, True])
@pytest.mark.parametrize("tb", [False, True])
def test_fused_matmul_vectors_match_torch_matmul(tb, ta, device):
    for i, (sa, sb) in enumerate(VECTOR_CASES):
        a, b = _vector_inputs(sa, sb, ta, tb, torch.float64, device, 40 + i)
        out = teachcompute_ext.fused_matmul(a, b, 0.75, ta, tb)
        ref = _matmul_reference(a, b, 0.75, ta, tb)
        assert out.shape == ref.shape, (sa, sb)
        torch.testing.assert_close(out, ref, **TOL[torch.float64])
        # the same with inputs that require grad (the autograd kernel's views), and its gradients
        pa, pb = a.clone().requires_grad_(), b.clone().requires_grad_()
        out = teachcompute_ext.fused_matmul(pa, pb, 0.75, ta, tb)
        ra, rb = a.clone().requires_grad_(), b.clone().requires_grad_()
        ref = _matmul_reference(ra, rb, 0.75, ta, tb)
        torch.testing.assert_close(out, ref, **TOL[torch.float64])
        g = _rand(ref.shape, torch.float64, device, 50 + i)
        for got, want in zip(torch.autograd.grad(out, (pa, pb), g), torch.autograd.grad(ref, (ra, rb), g)):
            assert got.shape == want.shape
            torch.testing.assert_close(got, want, **TOL[torch.float64])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("ta", [False, True])
@pytest.mark.parametrize("tb", [False, True])
def test_fused_matmul_vectors_gradcheck(tb, ta, device):
    for sa, sb in [((4,), (4,)), ((4,), (4, 3)), ((4,), (2, 4, 3)), ((3, 4), (4,)), ((2, 3, 4), (4,))]:
        a, b = _vector_inputs(sa, sb, ta, tb, torch.float64, device, 7)
        f = lambda a, b: teachcompute_ext.fused_matmul(a, b, -1.5, ta, tb)  # noqa: E731
        assert torch.autograd.gradcheck(f, [a.requires_grad_(), b.requires_grad_()])
        assert torch.autograd.gradgradcheck(f, [a, b])


# (a, b, trans_b): empty inner dims (the product is zeros), m = 0, n = 0, batch 0, broadcast batch 0
ZERO_SIZE_CASES = [
    ((5, 5, 0), (0, 5), False),
    ((3, 0), (0, 4), False),
    ((2, 3, 0), (2, 0, 4), False),
    ((2, 3, 0), (4, 0), True),
    ((0, 4), (4, 3), False),
    ((3, 4), (4, 0), False),
    ((0, 3, 4), (4, 5), False),
    ((0, 3, 4), (1, 4, 5), False),
    ((2, 3, 4), (0, 1, 4, 5), False),
    ((0,), (2, 0, 3), False),
]


@pytest.mark.parametrize("device", DEVICES)
def test_fused_matmul_zero_size_dims(device):
    for i, (sa, sb, tb) in enumerate(ZERO_SIZE_CASES):
        a = _rand(sa, torch.float64, device, 60 + i).requires_grad_()
        b = _rand(sb, torch.float64, device, 70 + i).requires_grad_()
        out = teachcompute_ext.fused_matmul(a, b, 2.0, False, tb)
        ref = _matmul_reference(a, b, 2.0, False, tb)
        assert out.shape == ref.shape, (sa, sb)
        torch.testing.assert_close(out, ref)
        with torch.no_grad():
            torch.testing.assert_close(teachcompute_ext.fused_matmul(a, b, 2.0, False, tb), ref.detach())
        g = torch.ones_like(ref)
        for got, want in zip(torch.autograd.grad(out, (a, b), g), torch.autograd.grad(ref, (a, b), g)):
            assert got.shape == want.shape
            torch.testing.assert_close(got, want)
    a = torch.zeros(3, 0, dtype=torch.float64, device=device, requires_grad=True)
    b = torch.zeros(0, 2, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: teachcompute_ext.fused_matmul(a, b), [a, b])


def _linear_ref(x, w, b):
    # F.linear refuses a 0-d bias with a 1-D weight for a 2-D x (its addmm path): the same sum written out
    out = F.linear(x, w)
    return out if b is None else out + b


LINEAR_VECTOR_X = [(4,), (3, 4), (2, 3, 4), (0, 4), (2, 0, 4), (3, 0)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize("bias", [False, True])
def test_fused_linear_vector_weight_matches_f_linear(bias, act, device):
    for i, xs in enumerate(LINEAR_VECTOR_X):
        x = _rand(xs, torch.float64, device, 80 + i)
        w = _rand(xs[-1:], torch.float64, device, 90 + i)
        b = _rand((), torch.float64, device, 100 + i) if bias else None
        if bias and len(xs) != 2:
            # where F.linear takes this bias, it agrees with the sum written out
            torch.testing.assert_close(F.linear(x, w, b), _linear_ref(x, w, b))
        params = [t.clone().requires_grad_() for t in (x, w) + ((b,) if bias else ())]
        out = teachcompute_ext.fused_linear(params[0], params[1], params[2] if bias else None, act)
        refs = [t.clone().requires_grad_() for t in params]
        ref = ACTS[act](_linear_ref(refs[0], refs[1], refs[2] if bias else None))
        assert out.shape == ref.shape == xs[:-1]
        torch.testing.assert_close(out, ref, **TOL[torch.float64])
        with torch.no_grad():
            torch.testing.assert_close(teachcompute_ext.fused_linear(x, w, b, act), ref.detach(), **TOL[torch.float64])
        if out.numel():
            g = _rand(out.shape, torch.float64, device, 110 + i)
            for got, want in zip(torch.autograd.grad(out, params, g), torch.autograd.grad(ref, refs, g)):
                torch.testing.assert_close(got, want, **TOL[torch.float64])
        if len(xs) <= 2 and act != "relu":  # relu: gradcheck's finite difference crosses the kink
            assert torch.autograd.gradcheck(
                lambda *p: teachcompute_ext.fused_linear(p[0], p[1], p[2] if bias else None, act), refs
            )
    # the 2-D weight takes no 0-d bias (it needs [out_features])
    with pytest.raises(RuntimeError, match=r"fused_linear: argument 'bias' must have shape \[3\]"):
        teachcompute_ext.fused_linear(
            x, _rand((3, xs[-1]), torch.float64, device, 1), torch.zeros((), device=device, dtype=torch.float64)
        )


@pytest.mark.parametrize("device", DEVICES)
def test_vector_and_zero_size_opcheck(device):
    for sa, sb, ta, tb in [
        ((4,), (4,), True, True),
        ((4,), (2, 3, 4), False, True),
        ((2, 4, 3), (4,), True, False),
        ((5, 5, 0), (0, 5), False, False),
        ((0, 3, 4), (4, 5), False, False),
    ]:
        a, b = _rand(sa, torch.float64, device, 1), _rand(sb, torch.float64, device, 2)
        torch.library.opcheck(ops.fused_matmul, (a.requires_grad_(), b.requires_grad_(), 0.5, ta, tb))
    for xs in [(4,), (3, 4), (2, 3, 4)]:
        x, w, b = (
            _rand(xs, torch.float64, device, 3),
            _rand((4,), torch.float64, device, 4),
            _rand((), torch.float64, device, 5),
        )
        for act in ("gelu", "relu"):
            for save_pre in (True, False):
                torch.library.opcheck(
                    ops.fused_linear_forward,
                    (x.requires_grad_(), w.requires_grad_(), b.requires_grad_(), act, save_pre),
                )
        torch.library.opcheck(ops.fused_linear, (x, w, None, "silu"))


@pytest.mark.parametrize("device", DEVICES)
def test_vector_cases_torch_compile_fullgraph_dynamic(device):
    torch._dynamo.reset()

    def f(v, m, x, w, b):
        return (
            teachcompute_ext.fused_matmul(v, m, 2.0, False, True).sum()
            + teachcompute_ext.fused_matmul(m, v).sum()
            + teachcompute_ext.fused_matmul(v, v)
            + teachcompute_ext.fused_linear(x, w, b, "gelu").sum()
        )

    cf = torch.compile(f, fullgraph=True, dynamic=True)
    for k in (3, 8, 17):
        ins = [
            _rand(s, torch.float64, device, k + j).requires_grad_()
            for j, s in enumerate([(k,), (2, 5, k), (4, k), (k,), ()])
        ]
        got, want = cf(*ins), f(*ins)
        torch.testing.assert_close(got, want)
        for p, q in zip(torch.autograd.grad(got, ins), torch.autograd.grad(want, ins)):
            torch.testing.assert_close(p, q)
    # an empty inner dim, compiled
    a, b = _rand((5, 5, 0), torch.float64, device, 1), _rand((0, 5), torch.float64, device, 2)
    torch.testing.assert_close(
        torch.compile(teachcompute_ext.fused_matmul, fullgraph=True, dynamic=True)(a, b),
        torch.zeros(5, 5, 5, dtype=torch.float64, device=device),
    )


# ---- torch.func transforms: the autograd Nodes are hand-built (no torch::autograd::Function) ----------
FUNC_CASES = {
    "matmul": (lambda a, b: teachcompute_ext.fused_matmul(a, b, 0.5, False, True), [(3, 4), (2, 5, 4)]),
    "matmul_batched_b2d": (lambda a, b: teachcompute_ext.fused_matmul(a, b, 1.5, True, False), [(2, 4, 3), (4, 5)]),
    "matmul_vectors": (lambda a, b: teachcompute_ext.fused_matmul(a, b), [(4,), (2, 4, 3)]),
    "linear_none": (lambda x, w, b: teachcompute_ext.fused_linear(x, w, b), [(3, 4), (5, 4), (5,)]),
    "linear_gelu": (lambda x, w, b: teachcompute_ext.fused_linear(x, w, b, "gelu"), [(2, 3, 4), (5, 4), (5,)]),
    "linear_relu": (lambda x, w: teachcompute_ext.fused_linear(x, w, None, "relu"), [(3, 4), (5, 4)]),
    "linear_silu_vector_weight": (lambda x, w, b: teachcompute_ext.fused_linear(x, w, b, "silu"), [(3, 4), (4,), ()]),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", list(FUNC_CASES))
def test_torch_func_grad_matches_autograd(case, device):
    fn, shapes = FUNC_CASES[case]
    ins = [_rand(s, torch.float64, device, 120 + i) for i, s in enumerate(shapes)]
    out_shape = fn(*ins).shape
    g = _rand(out_shape, torch.float64, device, 130)
    loss = assert_func_grad_matches_autograd(fn, ins, g)
    # and a second order: the gradient of a gradient's norm (the backward ops are differentiable)
    if case.startswith("matmul"):
        gg = torch.func.grad(lambda a, b: torch.func.grad(loss)(a, b).pow(2).sum(), argnums=1)(*ins)
        pa, pb = [t.clone().requires_grad_() for t in ins]
        (ga,) = torch.autograd.grad(loss(pa, pb), (pa,), create_graph=True)
        torch.testing.assert_close(gg, torch.autograd.grad(ga.pow(2).sum(), pb)[0])


def test_fused_linear_half_rounds_the_biased_product_once():
    # A bias that nearly cancels x @ W^T: added after the GEMM's bfloat16 rounding it gave
    # exact zeros where F.linear keeps tiny positive values, and relu dropped their gradient.
    g = torch.Generator().manual_seed(7)
    x, w = torch.randn(8, 96, generator=g), torch.randn(300, 96, generator=g)
    b = -(x[0] @ w.t()) + 1e-3 * torch.rand(300, generator=g)  # row 0: pre-activations just above 0
    x, w, b = x.bfloat16(), w.bfloat16(), b.bfloat16()
    ours = teachcompute_ext.fused_linear(x, w, b, "relu")
    ref = torch.relu(torch.nn.functional.linear(x, w, b))
    assert torch.equal(ours > 0, ref > 0), ((ours > 0) ^ (ref > 0)).sum()
    torch.testing.assert_close(ours, ref)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_fused_matmul_alpha_zero_is_zero_times_the_product(dtype, device):
    # alpha = 0 with beta = 0: the CPU's 16-bit batched GEMMs left the output
    # unwritten (garbage, NaN). torch's 0 * (a @ b) keeps the product's NaN and inf.
    for sa, sb, ta, tb in [
        ((2, 300, 5), (300, 3), True, False),
        ((2, 3, 96, 33), (1, 7, 96), True, True),
        ((4, 6), (6, 5), False, False),
    ]:
        a, b = _rand(sa, dtype, device, 1), _rand(sb, dtype, device, 2)
        a.view(-1)[3] = float("inf")
        want = 0.0 * torch.matmul(a.mT if ta else a, b.mT if tb else b)
        got = teachcompute_ext.fused_matmul(a, b, 0.0, ta, tb)
        torch.testing.assert_close(got, want, equal_nan=True)
        assert got.isnan().any()
