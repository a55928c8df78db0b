"""The Llama family: rms_norm, add_rms_norm, rotary_embedding, swiglu, geglu.
Each against a float64 reference of torch's own formula on fresh random inputs,
forward and backward, every dtype, odd widths, non-contiguous and empty inputs,
gradcheck, opcheck, torch.compile(fullgraph=True, dynamic=True), torch.func, and
every bad input of the issue."""

import pytest
import torch
import torch.nn.functional as F

import teachcompute_ext as t

from conftest import DEVICES, FLOAT_DTYPES, assert_func_grad_matches_autograd

ops = torch.ops.teachcompute_ext
TOL = {
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.float64: dict(rtol=1e-10, atol=1e-10),
    torch.float16: dict(rtol=2e-3, atol=2e-3),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2),
}
# Widths that are and are not a multiple of the vector width (16 float32 lanes here).
WIDTHS = [1, 7, 33, 96, 300, 1000, 4096]


def _rand(*shape, dtype=torch.float32, device="cpu", grad=False):
    return torch.randn(*shape, dtype=dtype, device=device).requires_grad_(grad)


def _grads(out, inputs, g):
    return torch.autograd.grad(out, [i for i in inputs if i is not None and i.requires_grad], g)


def _close(ours, ref, dtype):
    torch.testing.assert_close(ours.double(), ref.double(), **TOL[dtype])


# ---- rms_norm / add_rms_norm -----------------------------------------------------------


def _ref_rms_norm(x, w, eps):
    x64 = x.double()
    out = x64 * torch.rsqrt(x64.pow(2).mean(-1, keepdim=True) + eps)
    return out * w.double() if w is not None else out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("weight", [True, False])
def test_rms_norm_matches_float64(weight, width, dtype, device):
    x = _rand(5, 3, width, dtype=dtype, device=device, grad=True)
    w = _rand(width, dtype=dtype, device=device, grad=True) if weight else None
    out = t.rms_norm(x, w, 1e-5)
    assert out.dtype == dtype and out.shape == x.shape
    ref = _ref_rms_norm(x, w, 1e-5)
    _close(out, ref, dtype)
    g = torch.randn_like(out)
    got = _grads(out, (x, w), g)
    want = _grads(ref, (x, w), g.double())
    for a, b in zip(got, want):
        # the weight gradient sums 15 rows: a few more roundings in half types
        torch.testing.assert_close(a.double(), b.double(), **{k: 4 * v for k, v in TOL[dtype].items()})


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_rms_norm_matches_f_rms_norm(dtype, device):
    x, w = _rand(64, 300, dtype=dtype, device=device), _rand(300, dtype=dtype, device=device)
    _close(t.rms_norm(x, w, 1e-6), F.rms_norm(x, (300,), w, 1e-6), dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("wdtype", [torch.float32, torch.bfloat16])
def test_rms_norm_weight_of_another_dtype_as_torch(wdtype, device):
    # torch allows it (a warning): the result has x's dtype, the weight's gradient the weight's.
    xdtype = torch.bfloat16 if wdtype == torch.float32 else torch.float32
    x = _rand(8, 40, dtype=xdtype, device=device, grad=True)
    w = _rand(40, dtype=wdtype, device=device, grad=True)
    out = t.rms_norm(x, w)
    assert out.dtype == xdtype
    _close(out, _ref_rms_norm(x, w, 1e-6), torch.bfloat16)
    gx, gw = torch.autograd.grad(out.sum(), (x, w))
    assert gx.dtype == xdtype and gw.dtype == wdtype


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("width", [7, 96, 1000])
def test_add_rms_norm_matches_float64(width, dtype, device):
    x = _rand(4, 6, width, dtype=dtype, device=device, grad=True)
    r = _rand(4, 6, width, dtype=dtype, device=device, grad=True)
    w = _rand(width, dtype=dtype, device=device, grad=True)
    out, h = t.add_rms_norm(x, r, w, 1e-6)
    # h is rounded to x's dtype, then normalized as stored.
    h_ref = (x.double() + r.double()).to(dtype)
    torch.testing.assert_close(h, h_ref, rtol=0, atol=0)
    _close(out, _ref_rms_norm(h_ref, w, 1e-6), dtype)
    # both outputs used: x and residual get rms_norm's gradient plus h's own
    g1, g2 = torch.randn_like(out), torch.randn_like(h)
    got = torch.autograd.grad((out, h), (x, r, w), (g1, g2))
    x64, r64, w64 = (v.detach().double().requires_grad_() for v in (x, r, w))
    h64 = x64 + r64
    want = torch.autograd.grad((_ref_rms_norm(h64, w64, 1e-6), h64), (x64, r64, w64), (g1.double(), g2.double()))
    for a, b in zip(got, want):
        torch.testing.assert_close(a.double(), b, **{k: 4 * v for k, v in TOL[dtype].items()})


@pytest.mark.parametrize("device", DEVICES)
def test_add_rms_norm_only_one_output_used(device):
    x, r = _rand(3, 16, device=device, grad=True), _rand(3, 16, device=device, grad=True)
    w = _rand(16, device=device, grad=True)
    out, h = t.add_rms_norm(x, r, w)
    gx, gr = torch.autograd.grad(h.sum(), (x, r))  # only the new residual
    torch.testing.assert_close(gx, torch.ones_like(x))
    torch.testing.assert_close(gr, torch.ones_like(r))
    out, h = t.add_rms_norm(x, r, w)
    gx, gr, gw = torch.autograd.grad(out.sum(), (x, r, w))
    h2 = (x + r).detach().requires_grad_()
    gh, gw2 = torch.autograd.grad(F.rms_norm(h2, (16,), w, 1e-6).sum(), (h2, w))
    torch.testing.assert_close(gx, gh)
    torch.testing.assert_close(gr, gh)
    torch.testing.assert_close(gw, gw2)


@pytest.mark.parametrize("device", DEVICES)
def test_norms_gradcheck(device):
    x = _rand(3, 4, 9, dtype=torch.float64, device=device, grad=True)
    r = _rand(3, 4, 9, dtype=torch.float64, device=device, grad=True)
    w = _rand(9, dtype=torch.float64, device=device, grad=True)
    assert torch.autograd.gradcheck(lambda a, b: t.rms_norm(a, b, 1e-3), (x, w))
    assert torch.autograd.gradcheck(lambda a: t.rms_norm(a, None, 1e-3), (x,))
    assert torch.autograd.gradcheck(lambda a, b, c: t.add_rms_norm(a, b, c, 1e-3), (x, r, w))


def test_rms_norm_weight_grad_same_bits_for_any_thread_count():
    x, w = torch.randn(1000, 300), torch.randn(300)
    g = torch.randn(1000, 300)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            xx, ww = x.clone().requires_grad_(), w.clone().requires_grad_()
            results.append(torch.autograd.grad(t.rms_norm(xx, ww), (xx, ww), g))
    finally:
        torch.set_num_threads(threads)
    for gx, gw in results[1:]:
        assert torch.equal(gx, results[0][0]) and torch.equal(gw, results[0][1])


@pytest.mark.parametrize("device", DEVICES)
def test_norms_non_contiguous_and_strided_rows(device):
    base = _rand(6, 2 * 40, device=device)
    x = base[:, ::2]  # last dim strided: copied
    y = base[:, :40]  # rows of a wider tensor: read in place
    z = _rand(40, 6, device=device).t()
    w = _rand(40, device=device)
    for v in (x, y, z):
        _close(t.rms_norm(v, w), _ref_rms_norm(v, w, 1e-6), torch.float32)
        out, h = t.add_rms_norm(v, z, w)
        _close(out, _ref_rms_norm(v + z, w, 1e-6), torch.float32)


@pytest.mark.parametrize("device", DEVICES)
def test_norms_empty_inputs(device):
    for shape in ((0, 8), (3, 0, 8), (4, 0)):
        x = _rand(*shape, device=device, grad=True)
        w = _rand(shape[-1], device=device, grad=True)
        out = t.rms_norm(x, w)
        assert out.shape == x.shape
        gx, gw = torch.autograd.grad(out.sum(), (x, w), allow_unused=True)
        assert gx.shape == x.shape and gw.shape == w.shape and (gw == 0).all()
        out, h = t.add_rms_norm(x, x.detach(), w)
        assert out.shape == h.shape == x.shape


# ---- rotary_embedding ----------------------------------------------------------------------


def _rotate_half(x):
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


def _ref_rotary(x, cos, sin, interleaved):
    """transformers' formula (rotate-half), or GPT-J's pairs, in float64, with rotary_dim <= head_dim."""
    rd = 2 * cos.shape[-1]
    x64, c, s = x.double(), cos.double(), sin.double()
    xr, rest = x64[..., :rd], x64[..., rd:]
    if interleaved:
        c2, s2 = c.repeat_interleave(2, -1), s.repeat_interleave(2, -1)
        rot = torch.stack((-xr[..., 1::2], xr[..., ::2]), -1).flatten(-2)
    else:
        c2, s2 = torch.cat((c, c), -1), torch.cat((s, s), -1)
        rot = _rotate_half(xr)
    return torch.cat((xr * c2 + rot * s2, rest), -1)


def _tables(seq, half, dtype, device, base=10000.0):
    inv = 1.0 / base ** (torch.arange(half, dtype=torch.float64) / half)
    ang = torch.arange(seq, dtype=torch.float64)[:, None] * inv[None]
    return ang.cos().to(dtype).to(device), ang.sin().to(dtype).to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("head_dim,rotary_dim", [(128, 128), (64, 32), (96, 96), (6, 2), (34, 34), (80, 50)])
def test_rotary_matches_float64(head_dim, rotary_dim, interleaved, dtype, device):
    x = _rand(2, 3, 5, head_dim, dtype=dtype, device=device, grad=True)
    cos, sin = _tables(5, rotary_dim // 2, dtype, device)
    out = t.rotary_embedding(x, cos, sin, interleaved)
    ref = _ref_rotary(x, cos, sin, interleaved)
    _close(out, ref, dtype)
    g = torch.randn_like(out)
    (gx,) = torch.autograd.grad(out, x, g)
    (want,) = torch.autograd.grad(ref, x, g.double())
    _close(gx, want, dtype)


@pytest.mark.parametrize("device", DEVICES)
def test_rotary_both_layouts_without_copies(device):
    # q as transformers makes it: [b, s, h, d] from the projection, transposed to [b, h, s, d].
    b, s, h, d = 2, 7, 4, 16
    q_bshd = _rand(b, s, h, d, device=device)
    cos, sin = _tables(s, d // 2, torch.float32, device)
    q = q_bshd.transpose(1, 2)  # [b, h, s, d], not contiguous
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        out = t.rotary_embedding(q, cos, sin)
    names = {e.name for e in prof.events()}
    assert not names & {"aten::contiguous", "aten::clone", "aten::copy_"}, names
    _close(out, _ref_rotary(q, cos, sin, False), torch.float32)
    # [b, s, h, d] itself, with cos [s, 1, d/2] broadcast over the heads
    out2 = t.rotary_embedding(q_bshd, cos[:, None], sin[:, None])
    _close(out2, _ref_rotary(q_bshd, cos[:, None], sin[:, None], False), torch.float32)
    # per-batch positions: cos [b, 1, s, d/2]
    cb, sb = torch.stack([cos, cos.roll(1, 0)])[:, None], torch.stack([sin, sin.roll(1, 0)])[:, None]
    _close(t.rotary_embedding(q, cb, sb), _ref_rotary(q, cb, sb, False), torch.float32)


@pytest.mark.parametrize("device", DEVICES)
def test_rotary_gradcheck_x_cos_sin(device):
    for interleaved in (False, True):
        x = _rand(2, 3, 4, 10, dtype=torch.float64, device=device, grad=True)
        # cos and sin broadcast over the batch and the heads: their gradients are summed back
        c = _rand(1, 4, 4, dtype=torch.float64, device=device, grad=True)
        s = _rand(1, 4, 4, dtype=torch.float64, device=device, grad=True)
        f = lambda a, b, cc: t.rotary_embedding(a, b, cc, interleaved)  # noqa: E731
        assert torch.autograd.gradcheck(f, (x, c, s))


@pytest.mark.parametrize("device", DEVICES)
def test_rotary_empty_and_many_dims(device):
    cos, sin = _tables(3, 4, torch.float32, device)
    assert t.rotary_embedding(_rand(0, 3, 8, device=device), cos, sin).shape == (0, 3, 8)
    # more row dims than a kernel argument holds, none collapsible
    x = _rand(*([2] * 9), 3, 8, device=device).transpose(0, 5)
    _close(t.rotary_embedding(x, cos, sin), _ref_rotary(x, cos, sin, False), torch.float32)


# ---- swiglu / geglu ---------------------------------------------------------------------

GLUS = {
    "swiglu": (lambda g, u=None: t.swiglu(g, u), F.silu),
    "geglu": (lambda g, u=None: t.geglu(g, u), F.gelu),
    "geglu_tanh": (lambda g, u=None: t.geglu(g, u, "tanh"), lambda v: F.gelu(v, approximate="tanh")),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("name", list(GLUS))
@pytest.mark.parametrize("width", [1, 7, 33, 1000, 5000])
def test_glu_matches_float64(width, name, dtype, device):
    ours, act = GLUS[name]
    gate = _rand(3, 4, width, dtype=dtype, device=device, grad=True)
    up = _rand(3, 4, width, dtype=dtype, device=device, grad=True)
    out = ours(gate, up)
    ref = act(gate.double()) * up.double()
    _close(out, ref, dtype)
    g = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, (gate, up), g), torch.autograd.grad(ref, (gate, up), g.double())):
        _close(a, b, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(GLUS))
def test_glu_one_tensor_form(name, device):
    ours, act = GLUS[name]
    both = _rand(5, 2 * 37, device=device, grad=True)
    out = ours(both)
    gate, up = both.chunk(2, -1)
    ref = act(gate.double()) * up.double()
    _close(out, ref, torch.float32)
    g = torch.randn_like(out)
    (got,) = torch.autograd.grad(out, both, g)
    (want,) = torch.autograd.grad(ref, both, g.double())
    _close(got, want, torch.float32)
    assert torch.autograd.gradcheck(lambda v: ours(v), (both.detach().double().requires_grad_(),))


@pytest.mark.parametrize("one_tensor", [False, True])
def test_glu_cpu_streaming_path_for_outputs_past_32mb(one_tensor):
    # 1031 x 8195 float32 = 34 MB per output: the forward and the backward stream
    # their outputs; I is odd, so most rows start misaligned (aligned-head logic),
    # and the one-tensor form's gradient halves interleave row by row.
    shape = (1031, 2 * 8195) if one_tensor else (1031, 8195)
    gate = _rand(*shape, grad=True)
    up = None if one_tensor else _rand(*shape, grad=True)
    out = t.swiglu(gate, up)
    g64, u64 = gate.detach().double().chunk(2, -1) if one_tensor else (gate.detach().double(), up.detach().double())
    _close(out, F.silu(g64) * u64, torch.float32)
    grad = torch.randn_like(out)
    leaves = [gate] if one_tensor else [gate, up]
    got = torch.autograd.grad(out, leaves, grad)
    s = torch.sigmoid(g64)
    want_g, want_u = grad.double() * u64 * s * (1 + g64 * (1 - s)), grad.double() * g64 * s
    want = [torch.cat([want_g, want_u], -1)] if one_tensor else [want_g, want_u]
    for a, b in zip(got, want):
        _close(a, b, torch.float32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(GLUS))
def test_glu_gradcheck_non_contiguous_empty(name, device):
    ours, act = GLUS[name]
    g = _rand(3, 8, dtype=torch.float64, device=device, grad=True)
    u = _rand(8, 3, dtype=torch.float64, device=device).t().requires_grad_()
    assert torch.autograd.gradcheck(ours, (g, u))
    _close(ours(g, u), act(g) * u, torch.float64)
    assert ours(_rand(0, 8, device=device), _rand(0, 8, device=device)).shape == (0, 8)
    assert ours(_rand(4, 0, device=device)).shape == (4, 0)
    s = _rand((), dtype=torch.float64, device=device, grad=True)
    _close(ours(s, s * 2), act(s) * s * 2, torch.float64)


# ---- every op: opcheck, compile, torch.func ------------------------------------------------


def _op_samples(device, dtype=torch.float32):
    x, r = _rand(4, 3, 24, dtype=dtype, device=device), _rand(4, 3, 24, dtype=dtype, device=device)
    w = _rand(24, dtype=dtype, device=device)
    cos, sin = _tables(3, 8, dtype, device)
    rstd = torch.rsqrt(x.double().pow(2).mean(-1) + 1e-6).to(torch.float64 if dtype == torch.float64 else torch.float32)
    return [
        (ops.rms_norm, (x, w, 1e-6)),
        (ops.rms_norm, (x, None, 1e-5)),
        (ops.rms_norm_forward, (x, w, 1e-6)),
        (ops.add_rms_norm, (x, r, w, 1e-6)),
        (ops.add_rms_norm_forward, (x, r, w, 1e-6)),
        (ops.rms_norm_backward, (r, x, w, rstd, x, [True, True])),
        (ops.rms_norm_backward, (r, x, None, rstd, None, [True, False])),
        (ops.rotary_embedding, (x.transpose(0, 1), cos[:, None].expand(3, 4, 8), sin[:, None].expand(3, 4, 8), False)),
        (ops.rotary_embedding, (x, cos, sin, True)),
        (ops.rotary_embedding_backward, (x, cos, sin, False)),
        (ops.swiglu, (x, r)),
        (ops.swiglu, (x, None)),
        (ops.geglu, (x, r, "tanh")),
        (ops.glu_backward, (r, x, x, "gelu")),
        (ops.glu_backward, (r[..., :12], x, None, "silu")),
    ]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_llama_opcheck(dtype, device):
    for op, args in _op_samples(device, dtype):
        grad = op not in (ops.rms_norm_backward, ops.rotary_embedding_backward, ops.glu_backward)
        args = tuple(
            a.clone().requires_grad_(grad and a.is_floating_point()) if isinstance(a, torch.Tensor) else a for a in args
        )
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("device", DEVICES)
def test_llama_torch_compile_fullgraph_dynamic(device):
    def block(x, r, w, cos, sin):
        out, h = t.add_rms_norm(x, r, w)
        q = t.rotary_embedding(out.unflatten(-1, (2, 8)).transpose(1, 2), cos, sin)
        y = t.swiglu(q.transpose(1, 2).flatten(-2)) + t.geglu(out, h, "tanh").sum(-1, keepdim=True)
        return t.rms_norm(y, None, 1e-5).sum() + h.sum()

    torch._dynamo.reset()
    cf = torch.compile(block, fullgraph=True, dynamic=True)
    for n in (3, 5):
        args = [
            _rand(2, n, 16, device=device, grad=True),
            _rand(2, n, 16, device=device, grad=True),
            _rand(16, device=device, grad=True),
        ] + list(_tables(n, 4, torch.float32, device))
        want = block(*args)
        got = cf(*args)
        torch.testing.assert_close(got, want)
        gw = torch.autograd.grad(want, args[:3])
        gg = torch.autograd.grad(cf(*args), args[:3])
        for a, b in zip(gg, gw):  # float32 sums of a few hundred terms, in another order
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3)


def test_torch_func_grad_matches_autograd():
    x, r, w = torch.randn(3, 16), torch.randn(3, 16), torch.randn(16)
    cos, sin = _tables(3, 4, torch.float32, "cpu")
    g = torch.randn(3, 16)
    assert_func_grad_matches_autograd(lambda a, b: t.rms_norm(a, b), (x, w), g)
    assert_func_grad_matches_autograd(lambda a, b, c: t.add_rms_norm(a, b, c)[0], (x, r, w), g)
    assert_func_grad_matches_autograd(lambda a, c, s: t.rotary_embedding(a, c, s), (x, cos, sin), g)
    assert_func_grad_matches_autograd(lambda a, b: t.swiglu(a, b), (x, r), g)
    assert_func_grad_matches_autograd(lambda a, b: t.geglu(a, b), (x, r), g)


# ---- bad input ------------------------------------------------------------------------------


def test_bad_input_names_the_op_and_argument():
    x, w = torch.randn(4, 8), torch.randn(8)
    cos, sin = _tables(4, 2, torch.float32, "cpu")
    cases = [
        (lambda: t.rms_norm(x, torch.randn(7)), RuntimeError, r"rms_norm: argument 'weight' has shape \[7\]"),
        (lambda: t.rms_norm(x, torch.randn(2, 4)), RuntimeError, "argument 'weight'"),
        (lambda: t.rms_norm(x, w, 0.0), ValueError, "rms_norm: argument 'eps' must be > 0"),
        (lambda: t.rms_norm(x, w, -1e-6), ValueError, "argument 'eps'"),
        (lambda: t.rms_norm(x.long(), None), TypeError, "rms_norm: unsupported dtype torch.int64 for argument 'x'"),
        (lambda: t.rms_norm(torch.tensor(1.0)), RuntimeError, "rms_norm: argument 'x' must have at least 1 dim"),
        (lambda: t.add_rms_norm(x, torch.randn(4, 7), w), RuntimeError, "add_rms_norm: argument 'residual' has shape"),
        (lambda: t.add_rms_norm(x, x.double(), w), TypeError, "add_rms_norm: argument 'residual' has dtype"),
        (lambda: t.add_rms_norm(x, x, w, 0.0), ValueError, "add_rms_norm: argument 'eps'"),
        (
            lambda: t.rotary_embedding(x, torch.randn(4, 5), torch.randn(4, 5)),
            RuntimeError,
            "rotary_embedding: rotary_dim 10 .* larger than head_dim 8",
        ),
        (
            lambda: t.rotary_embedding(x, torch.randn(3, 2), torch.randn(3, 2)),
            RuntimeError,
            r"rotary_embedding: argument 'cos' has shape \[3, 2\], which cannot broadcast",
        ),
        (lambda: t.rotary_embedding(x, cos, sin[:, :1]), RuntimeError, "rotary_embedding: argument 'sin' has shape"),
        (
            lambda: t.rotary_embedding(x, cos.double(), sin.double()),
            TypeError,
            "rotary_embedding: argument 'cos' has dtype torch.float64",
        ),
        (
            lambda: t.rotary_embedding(x, cos[None, None], sin[None, None]),
            RuntimeError,
            "argument 'cos' .* at most 2 dims",
        ),
        (lambda: t.swiglu(x, torch.randn(4, 7)), RuntimeError, "swiglu: argument 'up' has shape"),
        (lambda: t.swiglu(x, x.double()), TypeError, "swiglu: argument 'up' has dtype"),
        (lambda: t.swiglu(torch.randn(4, 7)), RuntimeError, "swiglu: argument 'gate' has an odd last dim 7"),
        (lambda: t.geglu(x, x, "fast"), ValueError, "geglu: unknown value 'fast' for argument 'approximate'"),
        (lambda: t.geglu(torch.randn(3, 5)), RuntimeError, "geglu: argument 'gate' has an odd last dim"),
    ]
    for fn, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            fn()
    # and the same words from the fake kernels, inside a compiled graph
    torch._dynamo.reset()
    for fn, exc, msg in cases[:2] + cases[9:11] + cases[14:15]:
        with pytest.raises(Exception, match=msg):
            torch.compile(fn, fullgraph=True)()
