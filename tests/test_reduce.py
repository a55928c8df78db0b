"""Reduce family: vector_sum."""

import os
import subprocess
import sys

import pytest
import torch

import teachcompute_ext

from conftest import DEVICES, FLOAT_DTYPES, close_to_reference

vector_sum = teachcompute_ext.vector_sum
SHAPES = [(), (1,), (7,), (1000,), (3, 5, 7), (1025,), (65537,), (2, 70001), (300, 1000)]


def _rand(shape, dtype, device, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)


def _check(x):
    out = vector_sum(x)
    assert out.shape == () and out.dtype == x.dtype and out.device == x.device
    ref = x.double().sum().item()
    ok, tol = close_to_reference(out.item(), ref, x.double().abs().sum().item(), x.dtype)
    assert ok, f"vector_sum={out.item()} reference={ref} tol={tol} shape={tuple(x.shape)} strides={x.stride()}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_vector_sum_matches_float64_reference(shape, dtype, device):
    _check(_rand(shape, dtype, device, seed=hash(shape) % 1000))


def _views(device, dtype):
    x = _rand((301, 257), dtype, device, seed=11)
    y = _rand((4, 33, 65), dtype, device, seed=12)
    return {
        "transposed": x.t(),
        "permuted": y.permute(2, 0, 1),
        "sliced_cols": x[:, 3:200:3],
        "sliced_rows": x[::2],
        "column": x[:, 5],
        "misaligned_start": x.view(-1)[1:10001],
        "expanded": x[:1].expand(64, 257),
        "expanded_scalar": x[0, 0].expand(1000, 3),
        "expanded_inner": y[:, :, :1].expand(4, 33, 65),
        # 11 dims that cannot be merged: more than the CUDA kernel's 10
        "many_dims": _rand((3,) * 11, dtype, device, 13)[(slice(0, 2),) * 11],
    }


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("view", list(_views("cpu", torch.float32)))
def test_vector_sum_non_contiguous(view, dtype, device):
    x = _views(device, dtype)[view]
    assert x.is_contiguous() == (view == "misaligned_start")
    _check(x)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", [(0,), (3, 0, 2), (0, 5)])
def test_vector_sum_empty_is_zero(shape, dtype, device):
    out = vector_sum(torch.empty(shape, dtype=dtype, device=device))
    assert out.shape == () and out.dtype == dtype and out.item() == 0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.complex64, torch.uint16, torch.uint32, torch.float8_e4m3fn])
def test_vector_sum_rejects_other_dtypes(dtype, device):
    x = torch.ones(4, dtype=dtype, device=device)
    msg = rf"teachcompute_ext.vector_sum: unsupported dtype {dtype} for argument 'x'"
    with pytest.raises(TypeError, match=msg):
        vector_sum(x)
    # The fake kernel says the same under torch.compile (dynamo wraps the TypeError).
    with pytest.raises(Exception, match=msg):
        torch.compile(vector_sum, fullgraph=True, backend="eager")(x)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_vector_sum_cpu_half_types_round_once(dtype):
    # 1 + half-ulp + a tiny bit: exactly summed it rounds up; rounding through
    # float32 first would land on the tie and round down to 1.
    ulp = torch.finfo(dtype).eps
    x = torch.tensor([1.0, ulp / 2, 2.0**-24 if dtype == torch.float16 else 2.0**-20], dtype=dtype)
    assert vector_sum(x).item() == 1.0 + ulp


def test_vector_sum_cpu_long_strided_rows_use_all_threads_and_stay_exact():
    x = torch.rand(2_000_001, generator=torch.Generator().manual_seed(9))
    for view in (x[::2], x[:1].expand(3_000_000)):
        _check(view)


def test_vector_sum_cpu_accuracy_1e8_no_worse_than_torch_sum():
    g = torch.Generator().manual_seed(2024)
    x = torch.rand(100_000_000, generator=g, dtype=torch.float32)
    ref = x.double().sum().item()
    ours = abs(vector_sum(x).item() - ref) / ref
    theirs = abs(x.sum().item() - ref) / ref
    print(f"relative error on 1e8 uniform floats: vector_sum {ours:.3e}, torch.sum {theirs:.3e}")
    assert ours <= theirs


@pytest.mark.parametrize("isa", ["default", "avx2", "avx512"])
def test_vector_sum_cpu_every_isa_build(isa):
    # Each per-ISA build of the kernel, chosen the way torch chooses its own.
    code = (
        "import torch, teachcompute_ext as t\n"
        "g = torch.Generator().manual_seed(7)\n"
        "for dt in (torch.float32, torch.float64, torch.float16, torch.bfloat16):\n"
        "    for n in (1, 13, 1024, 1025, 70001):\n"
        "        x = torch.randn(n, generator=g, dtype=torch.float64).to(dt)\n"
        "        ref = x.double().sum().item()\n"
        "        err = abs(t.vector_sum(x).double().item() - ref)\n"
        "        tol = torch.finfo(dt).eps * abs(ref) + 1e-5 * x.double().abs().sum().item()\n"
        "        assert err <= tol, (dt, n, err, tol)\n"
        "print(torch.backends.cpu.get_cpu_capability())\n"
    )
    env = dict(os.environ, ATEN_CPU_CAPABILITY=isa)
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]


def test_vector_sum_cpu_same_bits_for_any_thread_count_and_run():
    x = torch.rand(3_000_001, generator=torch.Generator().manual_seed(5))
    saved = torch.get_num_threads()
    try:
        results = set()
        for threads in (1, 2, 3, saved):
            torch.set_num_threads(threads)
            results.update(vector_sum(x).item() for _ in range(3))
    finally:
        torch.set_num_threads(saved)
    assert len(results) == 1, results


@pytest.mark.skipif(
    not torch.cuda.is_available() or "CUDA" not in teachcompute_ext.compiled_backends(),
    reason="no CUDA device or CUDA not compiled",
)
def test_vector_sum_cuda_bitwise_reproducible_and_no_host_sync():
    x = torch.rand(2**24 + 3, device="cuda", generator=torch.Generator("cuda").manual_seed(3))
    torch.cuda.set_sync_debug_mode("error")  # raises on any synchronizing CUDA call
    try:
        outs = [vector_sum(x) for _ in range(5)]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(torch.equal(o, outs[0]) for o in outs)
    ref = x.double().sum().item()
    assert abs(outs[0].item() - ref) / ref < 1e-6


@pytest.mark.parametrize("device", DEVICES)
def test_vector_sum_gradcheck(device):
    x = _rand((4, 5), torch.float64, device, 21).requires_grad_()
    assert torch.autograd.gradcheck(vector_sum, (x,))
    assert torch.autograd.gradgradcheck(vector_sum, (x,))
    xt = _rand((6, 3), torch.float64, device, 22).t().requires_grad_()
    assert torch.autograd.gradcheck(vector_sum, (xt,))


@pytest.mark.parametrize("device", DEVICES)
def test_vector_sum_backward_is_an_expanded_view(device):
    x = _rand((64, 128), torch.float32, device, 23).requires_grad_()
    (grad,) = torch.autograd.grad(vector_sum(x) * 3, x)
    assert grad.shape == x.shape and grad.stride() == (0, 0)  # nothing of numel size was written
    assert torch.equal(grad, torch.full_like(x, 3))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_vector_sum_opcheck(dtype, device):
    for x in [
        _rand((3, 17), dtype, device, 31),
        _rand((3, 17), dtype, device, 32).t(),
        _rand((1030,), dtype, device, 33).requires_grad_(dtype in (torch.float32, torch.float64)),
        torch.empty(0, 4, dtype=dtype, device=device),
    ]:
        torch.library.opcheck(torch.ops.teachcompute_ext.vector_sum.default, (x,))


@pytest.mark.parametrize("device", DEVICES)
def test_vector_sum_torch_compile_fullgraph_dynamic(device):
    def f(x):
        return vector_sum(x * 2.0) + 1.0

    compiled = torch.compile(f, fullgraph=True, dynamic=True)
    for n in (33, 1000, 4097):
        x = _rand((n, 3), torch.float32, device, n).requires_grad_()
        out = compiled(x)
        expected = f(x.detach())
        torch.testing.assert_close(out, expected)
        (g,) = torch.autograd.grad(out, x)
        torch.testing.assert_close(g, torch.full_like(x, 2.0))


# ---------------------------------------------------------------------------
# softmax / log_softmax
# ---------------------------------------------------------------------------
SOFTMAX_OPS = [
    pytest.param(teachcompute_ext.softmax, torch.softmax, id="softmax"),
    pytest.param(teachcompute_ext.log_softmax, torch.log_softmax, id="log_softmax"),
]
# (shape, dim): last dim (rows), outer dims (columns, full and partial 64-wide tiles),
# long rows (a CUDA block per row), 0-dim.
SOFTMAX_CASES = [
    ((7,), 0),
    ((5, 37), 1),
    ((5, 37), 0),
    ((5, 37), -2),
    ((3, 100, 70), 1),
    ((3, 100, 70), 0),
    ((4, 3, 200), -1),
    ((2, 130, 65), 2),
    ((2, 130, 129), 1),
    ((3, 1500), 1),
    ((6, 5000), -1),
    ((), 0),
    ((), -1),
    # few long columns (CUDA splits them over blocks)
    ((3000, 5), 0),
    ((2, 2000, 3), 1),
    # every COLS tile width: one masked vector, a full vector and a masked one, 4 tiles + 44
    ((301, 7), 0),
    ((40, 33), 0),
    ((9, 300), 0),
]


def _softmax_ref(torch_fn, x, dim):
    return torch_fn(x.double(), dim)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape,dim", SOFTMAX_CASES)
@pytest.mark.parametrize("ours,theirs", SOFTMAX_OPS)
def test_softmax_matches_float64_reference(ours, theirs, shape, dim, dtype, device):
    x = _rand(shape, dtype, device, seed=len(shape) * 100 + dim) * 3
    out = ours(x, dim)
    assert out.dtype == dtype and out.shape == x.shape and out.is_contiguous()
    torch.testing.assert_close(out, _softmax_ref(theirs, x, dim).to(dtype))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("ours,theirs", SOFTMAX_OPS)
def test_softmax_special_values_as_torch(ours, theirs, device):
    inf, nan = float("inf"), float("nan")
    x = _rand((6, 130), torch.float32, device, 41)
    x[0] = -inf  # a row of -inf: NaN (softmax and log_softmax)
    x[1, :50] = -inf  # some -inf: zeros / -inf there
    x[2, 7] = nan  # NaN propagates to its row
    x[3, 3] = inf  # +inf: NaN row, as torch
    for dim in (1, 0):
        torch.testing.assert_close(ours(x, dim), theirs(x, dim), equal_nan=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("ours,theirs", SOFTMAX_OPS)
@pytest.mark.parametrize("width", [3, 33, 100])
def test_softmax_special_columns_in_masked_lanes(ours, theirs, width, device):
    # Over dim 0 each column is normalized on its own; the last columns of a
    # tile sit in its masked vector: a column of -inf, one with +inf, one with NaN.
    inf, nan = float("inf"), float("nan")
    x = _rand((50, width), torch.float32, device, width)
    x[:, -1] = -inf
    x[4, -2] = inf
    x[9, -3] = nan
    x[:20, 0] = -inf
    torch.testing.assert_close(ours(x, 0), theirs(x, 0), equal_nan=True)
    g = _rand((50, width), torch.float32, device, width + 1)
    y = theirs(x[:, :-3].double(), 0).float()
    name = "softmax" if ours is teachcompute_ext.softmax else "log_softmax"
    gx = getattr(torch.ops.teachcompute_ext, name + "_backward")(g[:, :-3].contiguous(), y, 0)
    ye = y.detach().double().requires_grad_()
    torch.testing.assert_close(
        gx,
        torch.ops.aten._softmax_backward_data(g[:, :-3].double(), ye, 0, torch.float64).float()
        if ours is teachcompute_ext.softmax
        else torch.ops.aten._log_softmax_backward_data(g[:, :-3].double(), ye, 0, torch.float64).float(),
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("ours,theirs", SOFTMAX_OPS)
def test_softmax_non_contiguous(ours, theirs, device):
    x = _rand((70, 90), torch.float32, device, 42)
    for view, dim in [(x.t(), 1), (x.t(), 0), (x[::2, 5:80], 1), (x[:, ::3], 0), (x[:1].expand(4, 90), 1)]:
        torch.testing.assert_close(ours(view, dim), theirs(view, dim))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("ours,theirs", SOFTMAX_OPS)
@pytest.mark.parametrize("shape,dim", [((0, 5), 1), ((5, 0), 1), ((5, 0), 0), ((2, 0, 3), 2)])
def test_softmax_empty(ours, theirs, shape, dim, device):
    x = torch.empty(shape, device=device)
    out = ours(x, dim)
    assert out.shape == x.shape and out.dtype == x.dtype


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_softmax_bad_input(name, device):
    op = getattr(teachcompute_ext, name)
    x = _rand((3, 4), torch.float32, device, 43)
    with pytest.raises(
        IndexError,
        match=rf"teachcompute_ext.{name}: dim 2 out of range for argument 'dim' "
        r"of a 2-d tensor \(expected in \[-2, 1\]\)",
    ):
        op(x, 2)
    with pytest.raises(IndexError, match=rf"teachcompute_ext.{name}: dim -3 out of range"):
        op(x, -3)
    with pytest.raises(TypeError, match=rf"teachcompute_ext.{name}: unsupported dtype torch.int64 for argument 'x'"):
        op(torch.ones(3, 4, dtype=torch.int64, device=device), 1)
    with pytest.raises(Exception, match=rf"teachcompute_ext.{name}: dim 5 out of range"):  # fake kernel, same words
        torch.compile(lambda t: op(t, 5), fullgraph=True, backend="eager")(x)
    bwd = getattr(torch.ops.teachcompute_ext, f"{name}_backward")
    with pytest.raises(RuntimeError, match=rf"teachcompute_ext.{name}_backward: argument 'grad' has shape \[3, 5\]"):
        bwd(torch.ones(3, 5, device=device), x, 1)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("ours,theirs", SOFTMAX_OPS)
@pytest.mark.parametrize("shape,dim", [((3, 37), 1), ((37, 3), 0), ((2, 5, 70), 1), ((2, 3, 66), 2), ((), 0)])
def test_softmax_gradcheck(ours, theirs, shape, dim, device):
    x = _rand(shape, torch.float64, device, 44).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: ours(t, dim), (x,))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_softmax_backward_op_matches_float64_formula(name, dtype, device):
    # The fused backward against its formula in float64, on the same (grad, out).
    fwd = getattr(teachcompute_ext, name)
    bwd = getattr(torch.ops.teachcompute_ext, f"{name}_backward")
    for shape, dim in [((8, 300), 1), ((3, 1500), 1), ((300, 70), 0), ((4, 50, 130), 1), ((3000, 5), 0)]:
        y = fwd(_rand(shape, dtype, device, 45), dim)
        g = _rand(shape, dtype, device, 46)
        gd, yd = g.double(), y.double()
        if name == "softmax":
            ref = yd * (gd - (gd * yd).sum(dim, keepdim=True))
        else:
            ref = gd - yd.exp() * gd.sum(dim, keepdim=True)
        torch.testing.assert_close(bwd(g, y, dim), ref.to(dtype))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("ours,theirs", SOFTMAX_OPS)
def test_softmax_gradient_matches_torch(ours, theirs, dtype, device):
    for shape, dim in [((8, 300), 1), ((300, 70), 0), ((2, 2000, 3), 1)]:
        x = _rand(shape, dtype, device, 45).requires_grad_()
        g = _rand(shape, dtype, device, 46)
        (gx,) = torch.autograd.grad(ours(x, dim), x, g)
        xd = x.detach().double().requires_grad_()
        (ref,) = torch.autograd.grad(theirs(xd, dim), xd, g.double())
        torch.testing.assert_close(gx, ref.to(dtype))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_softmax_opcheck(name, dtype, device):
    fwd = getattr(torch.ops.teachcompute_ext, name).default
    bwd = getattr(torch.ops.teachcompute_ext, f"{name}_backward").default
    grad_ok = dtype in (torch.float32, torch.float64)
    for shape, dim in [((4, 33), 1), ((33, 4), 0), ((2, 3, 70), 1)]:
        x = _rand(shape, dtype, device, 47).requires_grad_(grad_ok)
        torch.library.opcheck(fwd, (x, dim))
        y = fwd(x.detach(), dim)
        torch.library.opcheck(bwd, (_rand(shape, dtype, device, 48), y, dim))
    torch.library.opcheck(fwd, (_rand((5, 7), dtype, device, 49).t(), 0))


@pytest.mark.parametrize("device", DEVICES)
def test_softmax_torch_compile_fullgraph_dynamic(device):
    def f(x):
        return teachcompute_ext.log_softmax(teachcompute_ext.softmax(x * 2.0, -1), 0) * 3.0

    compiled = torch.compile(f, fullgraph=True, dynamic=True)
    for rows in (5, 17, 64):
        x = _rand((rows, 40), torch.float32, device, rows).requires_grad_()
        out = compiled(x)
        torch.testing.assert_close(out, f(x.detach()))
        (g,) = torch.autograd.grad(out.sum(), x)
        xe = x.detach().requires_grad_()
        (ge,) = torch.autograd.grad(f(xe).sum(), xe)
        torch.testing.assert_close(g, ge)


# ---------------------------------------------------------------------------
# reduce_sum, reduce_mean, logsumexp (dims), reduce_max, reduce_min (one dim)
# ---------------------------------------------------------------------------
DIMS_OPS = [
    pytest.param(teachcompute_ext.reduce_sum, lambda x, d, k: torch.sum(x, d, keepdim=k), id="reduce_sum"),
    pytest.param(teachcompute_ext.reduce_mean, lambda x, d, k: torch.mean(x, d, keepdim=k), id="reduce_mean"),
    pytest.param(teachcompute_ext.logsumexp, lambda x, d, k: torch.logsumexp(x, d, keepdim=k), id="logsumexp"),
]
# (shape, dims): inner rows, outer columns, several dims (GENERAL), every dim,
# few long rows (split across threads), 0-dim.
DIMS_CASES = [
    ((37, 130), [1]),
    ((37, 130), [0]),
    ((37, 130), [-1, 0]),
    ((6, 70, 5), [1]),
    ((6, 70, 5), [0, 2]),
    ((6, 70, 5), [2]),
    ((4, 3, 200), [0, 1]),
    ((2, 140001), [1]),
    ((140001, 2), [0]),
    ((), [0]),
    ((5,), [-1]),
]


def _dims_ref(ref_fn, x, dims, keepdim):
    xd = x.double()
    if x.dim() == 0:
        return ref_fn(xd, dims, keepdim)
    return ref_fn(xd, dims, keepdim)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("keepdim", [False, True])
@pytest.mark.parametrize("shape,dims", DIMS_CASES)
@pytest.mark.parametrize("ours,ref", DIMS_OPS)
def test_reduce_dims_match_float64_reference(ours, ref, shape, dims, keepdim, dtype, device):
    x = _rand(shape, dtype, device, seed=len(shape) * 10 + len(dims))
    out = ours(x, dims, keepdim)
    expected = _dims_ref(ref, x, dims, keepdim)
    assert out.dtype == dtype and out.shape == expected.shape
    torch.testing.assert_close(out, expected.to(dtype))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("ours,ref", DIMS_OPS)
def test_reduce_dims_none_and_views(ours, ref, device):
    x = _rand((40, 33, 7), torch.float32, device, 51)
    if ours is not teachcompute_ext.logsumexp:  # logsumexp's dim is required
        for keepdim in (False, True):
            torch.testing.assert_close(ours(x, None, keepdim), ref(x.double(), list(range(3)), keepdim).float())
    for view in (x.transpose(0, 2), x[:, ::2, 1:], x.permute(1, 2, 0), x[:1].expand(5, 33, 7)):
        for dims in ([0], [1], [2], [0, 2]):
            torch.testing.assert_close(ours(view, dims), ref(view.double(), dims, False).float())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("name", ["reduce_max", "reduce_min"])
def test_reduce_maxmin_values_and_indices_as_torch(name, dtype, device):
    ours, theirs = getattr(teachcompute_ext, name), getattr(torch, name.split("_")[1])
    g = torch.Generator().manual_seed(52)
    ties = torch.randint(0, 4, (70, 150), generator=g).to(device=device, dtype=dtype)  # many ties
    rand = _rand((70, 150), dtype, device, 53)
    for x in (
        ties,
        rand,
        rand.t(),
        rand[:, ::3],
        _rand((3, 100, 70), dtype, device, 54),
        _rand((2, 140001), dtype, device, 55),
    ):
        for dim in range(-x.dim(), x.dim()):
            for keepdim in (False, True):
                v, i = ours(x, dim, keepdim)
                ev, ei = theirs(x, dim, keepdim)
                assert torch.equal(v, ev) and torch.equal(i, ei), (tuple(x.shape), dim, keepdim)
    v, i = ours(torch.tensor(3.5, dtype=dtype, device=device), 0)
    assert v.item() == 3.5 and i.item() == 0 and v.shape == ()


@pytest.mark.parametrize("device", DEVICES)
def test_reduce_special_values_as_torch(device):
    inf, nan = float("inf"), float("nan")
    x = _rand((5, 130), torch.float32, device, 56)
    x[0] = -inf
    x[1, 5] = inf
    x[2, 9] = nan
    x[3, 4] = nan
    x[3, 80] = nan
    for dim in (0, 1):
        torch.testing.assert_close(teachcompute_ext.logsumexp(x, [dim]), torch.logsumexp(x, [dim]), equal_nan=True)
        torch.testing.assert_close(teachcompute_ext.reduce_sum(x, [dim]), torch.sum(x, dim), equal_nan=True)
        for name in ("max", "min"):
            v, i = getattr(teachcompute_ext, f"reduce_{name}")(x, dim)
            ev, ei = getattr(torch, name)(x, dim)
            torch.testing.assert_close(v, ev, equal_nan=True)
            assert torch.equal(i, ei)


@pytest.mark.parametrize("device", DEVICES)
def test_reduce_empty(device):
    x = torch.empty(3, 0, 4, device=device)
    assert torch.equal(teachcompute_ext.reduce_sum(x, [1]), torch.zeros(3, 4, device=device))
    assert teachcompute_ext.reduce_mean(x, [1]).isnan().all()
    assert (teachcompute_ext.logsumexp(x, [1]) == -float("inf")).all()
    assert teachcompute_ext.reduce_sum(x, [0]).shape == (0, 4)
    v, i = teachcompute_ext.reduce_max(x, 0)
    assert v.shape == (0, 4) and i.dtype == torch.int64
    for name in ("reduce_max", "reduce_min"):
        with pytest.raises(IndexError, match=rf"teachcompute_ext.{name}: cannot reduce over dim 1 of size 0"):
            getattr(teachcompute_ext, name)(x, 1)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["reduce_sum", "reduce_mean", "logsumexp", "reduce_max", "reduce_min"])
def test_reduce_bad_input(name, device):
    op = getattr(teachcompute_ext, name)
    x = _rand((3, 4), torch.float32, device, 57)
    with pytest.raises(
        IndexError,
        match=rf"teachcompute_ext.{name}: dim 2 out of range for argument 'dim' "
        r"of a 2-d tensor \(expected in \[-2, 1\]\)",
    ):
        op(x, 2)
    with pytest.raises(
        TypeError, match=rf"teachcompute_ext.{name}: unsupported dtype torch.complex64 for argument 'x'"
    ):
        op(torch.ones(3, 4, dtype=torch.complex64, device=device), 0)
    with pytest.raises(Exception, match=rf"teachcompute_ext.{name}: dim 3 out of range"):  # the fake kernel
        torch.compile(lambda t: op(t, 3), fullgraph=True, backend="eager")(x)
    if name in ("reduce_sum", "reduce_mean", "logsumexp"):
        with pytest.raises(RuntimeError, match=rf"teachcompute_ext.{name}: dim 1 appears more than once"):
            op(x, [1, -1])
        with pytest.raises(Exception, match=rf"teachcompute_ext.{name}: dim 1 appears more than once"):
            torch.compile(lambda t: op(t, [1, -1]), fullgraph=True, backend="eager")(x)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["reduce_sum", "reduce_mean", "logsumexp", "reduce_max", "reduce_min"])
def test_reduce_gradcheck(name, device):
    op = getattr(teachcompute_ext, name)
    x = _rand((4, 5, 3), torch.float64, device, 58).requires_grad_()
    if name in ("reduce_max", "reduce_min"):
        cases = [(1, False), (-1, True), (0, False)]
        fn = lambda t, d, k: op(t, d, k)[0]  # noqa: E731
    else:
        cases = [([1], False), ([0, 2], True), (None if name != "logsumexp" else [0, 1, 2], False)]
        fn = op
    for dims, keepdim in cases:
        assert torch.autograd.gradcheck(lambda t: fn(t, dims, keepdim), (x,))
    xs = _rand((), torch.float64, device, 59).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: fn(t, 0 if name in ("reduce_max", "reduce_min") else [0], False), (xs,))


@pytest.mark.parametrize("device", DEVICES)
def test_reduce_maxmin_gradient_goes_to_the_returned_index(device):
    x = torch.tensor([[1.0, 3.0, 3.0], [2.0, 0.0, 2.0]], device=device, requires_grad=True)
    v, i = teachcompute_ext.reduce_max(x, 1)
    v.sum().backward()
    assert torch.equal(x.grad, torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]], device=device))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("name", ["reduce_sum", "reduce_mean", "logsumexp", "reduce_max", "reduce_min"])
def test_reduce_opcheck(name, dtype, device):
    op = getattr(torch.ops.teachcompute_ext, name).default
    grad_ok = dtype in (torch.float32, torch.float64)
    x = _rand((4, 33, 5), dtype, device, 60).requires_grad_(grad_ok)
    if name in ("reduce_max", "reduce_min"):
        args = [(x, 1, False), (x, -1, True), (x.detach().transpose(0, 2), 0, False)]
    else:
        args = [(x, [1], False), (x, [0, 2], True), (x.detach().transpose(0, 2), [0], False)]
        if name != "logsumexp":
            args.append((x, None, False))
    for a in args:
        torch.library.opcheck(op, a)


@pytest.mark.parametrize("device", DEVICES)
def test_reduce_torch_compile_fullgraph_dynamic(device):
    def f(x):
        s = teachcompute_ext.reduce_sum(x, [1], keepdim=True)
        m = teachcompute_ext.reduce_mean(x * 2, [0])
        v, _ = teachcompute_ext.reduce_max(x, 1)
        w, _ = teachcompute_ext.reduce_min(x, 0, True)
        return (s * 0.5).sum() + m.sum() + v.sum() + w.sum() + teachcompute_ext.logsumexp(x, [1]).sum()

    compiled = torch.compile(f, fullgraph=True, dynamic=True)
    for rows in (5, 17, 64):
        x = _rand((rows, 40), torch.float32, device, rows).requires_grad_()
        out = compiled(x)
        torch.testing.assert_close(out, f(x.detach()))
        (g,) = torch.autograd.grad(out, x)
        xe = x.detach().requires_grad_()
        (ge,) = torch.autograd.grad(f(xe), xe)
        torch.testing.assert_close(g, ge)


@pytest.mark.parametrize(
    "shape, dtype", [((300, 30001), torch.float32), ((9001, 1001), torch.float32), ((18001, 1001), torch.bfloat16)]
)
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_softmax_cpu_streaming_path_for_outputs_past_32mb(name, shape, dtype):
    # Each about 36 MB: the row kernels stream y and gx; odd widths start rows
    # misaligned, so the aligned-head logic runs too. Rows of 30001 take the
    # online kernel, rows of 1001 the one-block kernel (bfloat16: through its
    # widened float row).
    x = _rand(shape, dtype, "cpu", 61).requires_grad_()
    g = _rand(shape, dtype, "cpu", 62)
    y = getattr(teachcompute_ext, name)(x, 1)
    (gx,) = torch.autograd.grad(y, x, g)
    xe = x.detach().requires_grad_()
    ye = getattr(torch, name)(xe, 1)
    (ge,) = torch.autograd.grad(ye, xe, g)
    if dtype == torch.float32:
        torch.testing.assert_close(y, ye)
        torch.testing.assert_close(gx, ge)
        return
    # bfloat16: both against float64, ours no further off than torch's (the
    # backward reads the rounded y: torch's and ours differ by an ulp there).
    x64 = x.detach().double().requires_grad_()
    y64 = getattr(torch, name)(x64, 1)
    (g64,) = torch.autograd.grad(y64, x64, g.double())
    for ours, theirs, want in ((y, ye, y64), (gx, ge, g64)):
        assert _err(ours, want) <= 1.5 * _err(theirs, want) + 1e-6


# ---- few outputs, long reductions; many dims (issue 11) ------------------------------------------------
def _err(out, ref):
    return (out.double() - ref).abs().max().item()


@pytest.mark.parametrize("device", DEVICES)
def test_reduce_sum_few_outputs_long_reduction_is_accurate(device):
    # (140001, 2) over dim 0: two outputs of 140001 elements each. One serial float
    # accumulation per output was about 3e-3 off (and ran on one thread).
    x = torch.randn(140001, 2, generator=torch.Generator().manual_seed(3)).to(device)
    ref = x.double().sum(0)
    err, torch_err = _err(teachcompute_ext.reduce_sum(x, 0), ref), _err(x.sum(0), ref)
    eps = torch.finfo(torch.float32).eps
    assert err <= 4 * max(torch_err, eps * ref.abs().max().item()), (err, torch_err)
    for keepdim in (False, True):
        torch.testing.assert_close(teachcompute_ext.reduce_mean(x, 0, keepdim), x.double().mean(0, keepdim).float())
        torch.testing.assert_close(teachcompute_ext.logsumexp(x, 0, keepdim), x.double().logsumexp(0, keepdim).float())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "shape,dims", [((300001, 3), [0]), ((5, 200003), [1]), ((1000, 7, 40), [0, 2]), ((3, 70000, 2), [1])]
)
def test_reduce_split_reductions_match_float64(shape, dims, device):
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=g).to(device)
    ref = x.double()
    torch.testing.assert_close(teachcompute_ext.reduce_sum(x, dims), ref.sum(dims).float(), rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(teachcompute_ext.logsumexp(x, dims), ref.logsumexp(dims).float())
    if len(dims) == 1:
        for ours, theirs in ((teachcompute_ext.reduce_max, torch.max), (teachcompute_ext.reduce_min, torch.min)):
            v, i = ours(x, dims[0])
            ev, ei = theirs(x, dims[0])
            assert torch.equal(v, ev) and torch.equal(i, ei)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("width", [1, 7, 16, 33, 64, 96, 300])
def test_reduce_over_dim0_every_tile_width(width, dtype, device):
    # A reduction over an outer dim is a COLS tile of up to 64 outputs whose last
    # vector is masked: widths below, at and past a vector and a tile, with
    # -inf, +inf and NaN columns in the masked lanes.
    x = _rand((301, width), dtype, device, width)
    ref = x.double()
    for ours, theirs in (
        (teachcompute_ext.reduce_sum, torch.sum),
        (teachcompute_ext.reduce_mean, torch.mean),
        (teachcompute_ext.logsumexp, torch.logsumexp),
    ):
        torch.testing.assert_close(ours(x, [0]), theirs(ref, [0]).to(dtype))
    for ours, theirs in ((teachcompute_ext.reduce_max, torch.max), (teachcompute_ext.reduce_min, torch.min)):
        v, i = ours(x, 0)
        ev, ei = theirs(x, 0)
        assert torch.equal(v, ev) and torch.equal(i, ei)
    special = x.clone()
    special[:, -1] = -float("inf")
    if width > 1:
        special[7, -2] = float("inf")
    if width > 2:
        special[9, -3] = float("nan")
    for ours, theirs in ((teachcompute_ext.logsumexp, torch.logsumexp), (teachcompute_ext.reduce_sum, torch.sum)):
        torch.testing.assert_close(ours(special, [0]), theirs(special, [0]), equal_nan=True)
    for ours, theirs in ((teachcompute_ext.reduce_max, torch.max), (teachcompute_ext.reduce_min, torch.min)):
        v, i = ours(special, 0)
        ev, ei = theirs(special, 0)
        torch.testing.assert_close(v, ev, equal_nan=True)
        assert torch.equal(i, ei)


@pytest.mark.parametrize("device", DEVICES)
def test_reduce_max_min_ties_and_nan_across_pieces_keep_the_first_index(device):
    # A long reduction is cut into pieces merged in order: the first index of
    # the extreme value (or of the first NaN) must win across piece boundaries.
    x = torch.zeros(400000, 3, device=device)
    x[[5, 150000, 399999], 0] = 7.0  # ties in different pieces
    x[[300000, 100], 1] = -3.0
    x[[250000, 350000], 2] = float("nan")
    v, i = teachcompute_ext.reduce_max(x, 0)
    assert i.tolist() == [5, 0, 250000] and v[0].item() == 7.0 and v[2].isnan()
    v, i = teachcompute_ext.reduce_min(x, 0)
    assert i.tolist() == [0, 100, 250000] and v[1].item() == -3.0


def test_reduce_cpu_split_results_are_the_same_bits_for_any_thread_count():
    x = torch.randn(200003, 3, generator=torch.Generator().manual_seed(9))
    general = torch.randn(9, 300, 70, generator=torch.Generator().manual_seed(10))[:, ::2, :].transpose(0, 2)
    outs = {}
    for n in (1, 2, 3):
        torch.set_num_threads(n)
        try:
            outs[n] = (
                teachcompute_ext.reduce_sum(x, 0),
                teachcompute_ext.logsumexp(x, [0]),
                teachcompute_ext.reduce_sum(general),
                teachcompute_ext.reduce_mean(general, [0, 1]),
            )
        finally:
            torch.set_num_threads(2)
    for n in (2, 3):
        assert all(torch.equal(a, b) for a, b in zip(outs[1], outs[n]))
    torch.testing.assert_close(outs[1][2], general.double().sum().float())


@pytest.mark.parametrize("device", DEVICES)
def test_reduce_many_alternating_kept_and_reduced_dims(device):
    # 11 kept and 11 reduced dims that cannot merge: more than the CUDA kernels'
    # fixed dim arrays hold (it overflowed them); planned from a reordered copy.
    x = torch.randn([2] * 22, generator=torch.Generator().manual_seed(1)).to(device)
    dims = list(range(1, 22, 2))
    eps = torch.finfo(torch.float32).eps
    for keepdim in (False, True):
        out, ref = teachcompute_ext.reduce_sum(x, dims, keepdim), x.double().sum(dims, keepdim)
        # one rounding of the result plus float32 accumulation error on sum(|x|)
        tol = eps * ref.abs() + 8 * eps * x.double().abs().sum(dims, keepdim)
        assert out.shape == ref.shape and ((out.double() - ref).abs() <= tol).all()
    torch.testing.assert_close(teachcompute_ext.logsumexp(x, dims), x.double().logsumexp(dims).float())
    xg = x.double().requires_grad_()
    teachcompute_ext.reduce_mean(xg, dims).sum().backward()
    torch.testing.assert_close(xg.grad, torch.full_like(xg, 1 / 2**11))


@pytest.mark.skipif(
    not torch.cuda.is_available() or "CUDA" not in teachcompute_ext.compiled_backends(),
    reason="no CUDA device or CUDA not compiled",
)
def test_reduce_and_softmax_cuda_more_rows_than_a_grid_holds():
    # 2^31 + 5 outputs: a grid of one block per output failed at 2^31 and was
    # silently partial above 2^32; the grids are capped and the kernels loop.
    n = 2**31 + 5
    x = torch.ones(n, 1, device="cuda")
    x[-1] = 3.0
    s = teachcompute_ext.reduce_sum(x, 1)
    assert s.shape == (n,) and s[-1].item() == 3.0 and s[:-1].min().item() == 1.0
    del s
    y = teachcompute_ext.softmax(x, 1)
    assert y[-1].item() == 1.0 and y.min().item() == 1.0


# ---- integer and bool dtypes: sums into int64, max / min exact (torch's results) ----------
INT_DTYPES = [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.bool]


def _rand_int(shape, dtype, device, seed, low=-50, high=50):
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return (torch.rand(shape, generator=g) > 0.5).to(device)
    if not dtype.is_signed:
        low = 0
    # A narrow range: max / min see many ties, so the first index of the best value is checked.
    return torch.randint(low, high, shape, generator=g, dtype=torch.int64).to(device=device, dtype=dtype)


INT_CASES = [
    ((37, 300), [1]),
    ((5000, 70), [0]),
    ((20, 30, 40), [0, 2]),
    ((2, 50000), [1]),
    ((140001, 2), [0]),
    ((7,), None),
    ((), None),
    ((3, 0, 4), [1]),
    ((3, 0, 4), [0]),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", INT_DTYPES)
@pytest.mark.parametrize("shape,dims", INT_CASES)
def test_integer_sums_are_torchs(shape, dims, dtype, device):
    x = _rand_int(shape, dtype, device, seed=len(shape) * 7 + (dims or [0])[0])
    for keepdim in (False, True):
        out = teachcompute_ext.reduce_sum(x, dims, keepdim)
        ref = torch.sum(x, dims, keepdim) if dims is not None else torch.sum(x)
        if dims is None and keepdim:
            ref = ref.reshape([1] * x.dim())
        assert out.dtype == torch.int64 == ref.dtype and torch.equal(out, ref), (shape, dims, keepdim)
    if x.dim() >= 2:
        xt = x.transpose(0, -1)  # strided: COLS and GENERAL plans
        assert torch.equal(teachcompute_ext.reduce_sum(xt, [0]), torch.sum(xt, [0]))
    vs = teachcompute_ext.vector_sum(x)
    assert vs.dtype == torch.int64 and vs.shape == () and vs.item() == x.long().sum().item()


@pytest.mark.parametrize("device", DEVICES)
def test_integer_sum_wraps_around_as_torchs(device):
    x = torch.full((5,), 2**62, dtype=torch.int64, device=device)
    assert teachcompute_ext.vector_sum(x).item() == torch.sum(x).item()
    assert torch.equal(teachcompute_ext.reduce_sum(x.view(5, 1), [0]), torch.sum(x.view(5, 1), [0]))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", INT_DTYPES)
@pytest.mark.parametrize("shape", [(37, 300), (5000, 70), (3, 140001), (4, 5, 6), (1,)])
def test_integer_max_min_are_torchs(shape, dtype, device):
    x = _rand_int(shape, dtype, device, seed=sum(shape), low=-3, high=3)
    for view in (x, x.transpose(0, -1)):
        for dim in range(-view.dim(), view.dim()):
            for ours, theirs in ((teachcompute_ext.reduce_max, torch.max), (teachcompute_ext.reduce_min, torch.min)):
                v, i = ours(view, dim, keepdim=dim == 0)
                ev, ei = theirs(view, dim, keepdim=dim == 0)
                assert v.dtype == dtype and torch.equal(v, ev) and torch.equal(i, ei), (ours.__name__, dim)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.uint8, torch.bool])
def test_integer_reductions_opcheck_and_compile(dtype, device):
    x = _rand_int((6, 9), dtype, device, seed=3)
    ops = torch.ops.teachcompute_ext
    torch.library.opcheck(ops.vector_sum.default, (x,))
    torch.library.opcheck(ops.reduce_sum.default, (x, [1], False))
    torch.library.opcheck(ops.reduce_max.default, (x, 0, False))
    torch.library.opcheck(ops.reduce_min.default, (x, 1, True))
    torch._dynamo.reset()
    f = torch.compile(
        lambda t: (teachcompute_ext.reduce_sum(t, [0]), teachcompute_ext.reduce_max(t, 1)[0]),
        fullgraph=True,
        dynamic=True,
    )
    s, m = f(x)
    assert torch.equal(s, torch.sum(x, [0])) and torch.equal(m, torch.max(x, 1)[0])


@pytest.mark.parametrize("dtype", [torch.int32, torch.bool])
def test_floating_only_reductions_refuse_integers_clearly(dtype):
    x = _rand_int((4, 5), dtype, "cpu", seed=1)
    for op, call in (
        ("reduce_mean", lambda: teachcompute_ext.reduce_mean(x, [1])),
        ("logsumexp", lambda: teachcompute_ext.logsumexp(x, [1])),
        ("softmax", lambda: teachcompute_ext.softmax(x, 1)),
        ("log_softmax", lambda: teachcompute_ext.log_softmax(x, 1)),
    ):
        with pytest.raises(TypeError, match=f"teachcompute_ext.{op}: unsupported dtype {dtype} for argument 'x'"):
            call()
    with pytest.raises(TypeError, match="teachcompute_ext.vector_sum: unsupported dtype torch.complex64"):
        teachcompute_ext.vector_sum(torch.ones(3, dtype=torch.complex64))


# ---- torch.func transforms: the autograd Nodes are hand-built (no torch::autograd::Function) ----------
_ops = torch.ops.teachcompute_ext
FUNC_CASES = {
    "vector_sum": lambda x: _ops.vector_sum(x.reshape(-1)),
    "reduce_sum": lambda x: _ops.reduce_sum(x, [1], False),
    "reduce_mean": lambda x: _ops.reduce_mean(x, [0, 2], True),
    "reduce_max": lambda x: _ops.reduce_max(x, 1, False)[0],
    "reduce_min": lambda x: _ops.reduce_min(x, -1, True)[0],
    "logsumexp": lambda x: _ops.logsumexp(x, [1], False),
    "softmax": lambda x: _ops.softmax(x, 1),
    "log_softmax": lambda x: _ops.log_softmax(x, -1),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", list(FUNC_CASES))
def test_torch_func_grad_matches_autograd(case, device):
    fn = FUNC_CASES[case]
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(3, 4, 5, generator=gen, dtype=torch.float64).to(device)
    g = torch.randn(fn(x).shape, generator=gen, dtype=torch.float64).to(device)
    loss = lambda t: (fn(t * t) * g).sum()  # noqa: E731  (x * x: the gradient is not the op's alone)
    got = torch.func.grad(loss)(x)
    p = x.clone().requires_grad_()
    (want,) = torch.autograd.grad(loss(p), p)
    torch.testing.assert_close(got, want)
    # the whole Jacobian too (reverse mode, one vjp per output element)
    torch.testing.assert_close(torch.func.jacrev(fn)(x).sum(), torch.autograd.functional.jacobian(fn, x).sum())
