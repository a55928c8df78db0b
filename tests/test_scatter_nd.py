"""ScatterND family: scatter_nd, scatter_nd_, scatter_nd_of_shape, masked_scatter_nd_of_shape.

The oracle is ONNX's reference implementation (onnx.reference.ReferenceEvaluator
on a one-node model), and onnxruntime's ScatterND where it supports the case.
"""

import numpy as np
import pytest
import torch

import teachcompute_ext

from conftest import DEVICES, assert_func_grad_matches_autograd

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

REDUCTIONS = ["none", "add", "mul", "max", "min"]
NP_TYPES = {torch.float32: TensorProto.FLOAT, torch.float64: TensorProto.DOUBLE, torch.float16: TensorProto.FLOAT16}


def _model(reduction, elem):
    attrs = {} if reduction == "none" else {"reduction": reduction}
    node = helper.make_node("ScatterND", ["data", "indices", "updates"], ["out"], **attrs)
    graph = helper.make_graph(
        [node],
        "scatter",
        [
            helper.make_tensor_value_info("data", elem, None),
            helper.make_tensor_value_info("indices", TensorProto.INT64, None),
            helper.make_tensor_value_info("updates", elem, None),
        ],
        [helper.make_tensor_value_info("out", elem, None)],
    )
    # IR version 10: what onnxruntime reads (the onnx package writes a newer one by default).
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def onnx_reference(data, indices, updates, reduction):
    """ONNX's own ScatterND on float64 copies (bfloat16 has no numpy type)."""
    ref = ReferenceEvaluator(_model(reduction, TensorProto.DOUBLE))
    feeds = {
        "data": data.double().cpu().numpy(),
        "indices": indices.long().cpu().numpy(),
        "updates": updates.double().cpu().numpy(),
    }
    return torch.from_numpy(ref.run(None, feeds)[0])


def _case(shape, k, n, seed, dtype=torch.float32, device="cpu", duplicates=True):
    g = torch.Generator().manual_seed(seed)
    data = torch.randn(shape, generator=g, dtype=torch.float64)
    if duplicates:
        idx = torch.stack([torch.randint(-s, s, (n,), generator=g) for s in shape[:k]], dim=-1)
    else:
        n_rows = int(np.prod(shape[:k]))
        flat = torch.randperm(n_rows, generator=g)[:n]
        idx = torch.stack(torch.unravel_index(flat, shape[:k]), dim=-1)
    updates = torch.randn((n,) + tuple(shape[k:]), generator=g, dtype=torch.float64)
    return data.to(device, dtype), idx.to(device), updates.to(device, dtype)


def _tol(dtype):
    return {
        torch.float32: dict(rtol=1e-5, atol=1e-5),
        torch.float64: dict(rtol=1e-12, atol=1e-12),
        torch.float16: dict(rtol=2e-3, atol=2e-3),
        torch.bfloat16: dict(rtol=2e-2, atol=2e-2),
    }[dtype]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_scatter_nd_matches_onnx_reference(reduction, k, dtype, device):
    # Many random cases, duplicates included (none: the last one wins, as in ONNX's reference loop).
    for seed in range(4):
        data, idx, upd = _case((6, 5, 4), k, 9, seed * 10 + k, dtype, device)
        if reduction == "mul":  # keep products of half types in range
            upd = upd.clamp(-2, 2)
        ref = onnx_reference(data, idx, upd, reduction)
        out = teachcompute_ext.scatter_nd(data, idx, upd, reduction)
        assert out.shape == data.shape and out.dtype == dtype
        torch.testing.assert_close(out.double().cpu(), ref, **_tol(dtype))


@pytest.mark.parametrize("reduction", ["add", "mul", "max", "min", "none"])
def test_scatter_nd_matches_onnxruntime(reduction):
    ort = pytest.importorskip("onnxruntime")
    data, idx, upd = _case((50, 8), 1, 30, 77, duplicates=(reduction != "none"))
    sess = ort.InferenceSession(
        _model(reduction, TensorProto.FLOAT).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    ref = sess.run(None, {"data": data.numpy(), "indices": idx.numpy(), "updates": upd.numpy()})[0]
    torch.testing.assert_close(teachcompute_ext.scatter_nd(data, idx, upd, reduction), torch.from_numpy(ref))


@pytest.mark.parametrize("device", DEVICES)
def test_scatter_nd_int32_indices_and_non_contiguous_inputs(device):
    data, idx, upd = _case((7, 6, 5), 2, 11, 3, device=device)
    ref = onnx_reference(data, idx, upd, "add")
    torch.testing.assert_close(teachcompute_ext.scatter_nd(data, idx.int(), upd, "add").double().cpu(), ref)
    dt = data.transpose(0, 2).contiguous().transpose(0, 2)  # same values, other strides
    it = idx.t().contiguous().t()
    ut = upd.t().contiguous().t()
    assert not dt.is_contiguous() and not it.is_contiguous() and not ut.is_contiguous()
    torch.testing.assert_close(teachcompute_ext.scatter_nd(dt, it, ut, "add").double().cpu(), ref)


@pytest.mark.parametrize("device", DEVICES)
def test_scatter_nd_in_place(device):
    data, idx, upd = _case((8, 3), 1, 5, 4, device=device)
    ref = onnx_reference(data, idx, upd, "max")
    d = data.clone()
    assert teachcompute_ext.scatter_nd_(d, idx, upd, "max") is d
    torch.testing.assert_close(d.double().cpu(), ref)
    dn = data.t().contiguous().t()  # non-contiguous data, updated in place
    teachcompute_ext.scatter_nd_(dn, idx, upd, "max")
    torch.testing.assert_close(dn.double().cpu(), ref)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", ["add", "none", "max"])
def test_scatter_nd_of_shape_and_masked(reduction, device):
    _, idx, upd = _case((20, 6), 1, 40, 5, device=device)
    zeros = torch.zeros(20, 6, device=device)
    ref = onnx_reference(zeros, idx, upd, reduction)
    out = teachcompute_ext.scatter_nd_of_shape([20, 6], idx, upd, reduction)
    torch.testing.assert_close(out.double().cpu(), ref)
    masked_idx = idx.clone()
    masked_idx[::3] = -1  # padding: skipped, although -1 would be a valid (wrapped) index
    keep = masked_idx[:, 0] != -1
    ref_m = onnx_reference(zeros, masked_idx[keep], upd[keep], reduction)
    out_m = teachcompute_ext.masked_scatter_nd_of_shape([20, 6], masked_idx, upd, -1, reduction)
    torch.testing.assert_close(out_m.double().cpu(), ref_m)
    # masked_value far outside the valid range is accepted
    out_far = teachcompute_ext.masked_scatter_nd_of_shape([20, 6], idx, upd, 10**12, reduction)
    torch.testing.assert_close(out_far, out)


@pytest.mark.parametrize("device", DEVICES)
def test_scatter_nd_empty(device):
    data, idx, upd = _case((5, 3), 1, 4, 6, device=device)
    out = teachcompute_ext.scatter_nd(data, idx[:0], upd[:0], "add")
    assert torch.equal(out, data)
    e = torch.empty(0, 3, device=device)
    assert teachcompute_ext.scatter_nd(
        e, torch.empty(0, 1, dtype=torch.long, device=device), torch.empty(0, 3, device=device)
    ).shape == (0, 3)
    assert teachcompute_ext.scatter_nd_of_shape([4, 0], idx[:2], torch.empty(2, 0, device=device)).shape == (4, 0)


@pytest.mark.parametrize("bad", [5, -6, 7, 2**62, 2**63 - 1, -(2**63), 2**62 + 3])
def test_scatter_nd_cpu_out_of_range_is_an_error_whatever_its_size(bad):
    data = torch.randn(5, 3)
    idx = torch.tensor([[0], [bad], [1]])
    with pytest.raises(
        IndexError,
        match=rf"teachcompute_ext.scatter_nd: index {bad} out of range for dim 0 of size 5 "
        r"\(argument 'indices', entry 1\)",
    ):
        teachcompute_ext.scatter_nd(data, idx, torch.randn(3, 3), "add")
    # k = 2: the second dim's size is the one named
    with pytest.raises(IndexError, match=rf"index {bad} out of range for dim 1 of size 3"):
        teachcompute_ext.scatter_nd(data, torch.tensor([[0, bad]]), torch.randn(1), "add")
    with pytest.raises(IndexError, match="out of range"):
        teachcompute_ext.scatter_nd_of_shape([5, 3], idx, torch.randn(3, 3))
    with pytest.raises(IndexError, match="out of range"):
        teachcompute_ext.masked_scatter_nd_of_shape([5, 3], idx, torch.randn(3, 3), -1)


def test_scatter_nd_bad_input():
    data = torch.randn(5, 4)
    idx = torch.tensor([[1], [2]])
    with pytest.raises(
        RuntimeError,
        match=r"teachcompute_ext.scatter_nd: 'updates' has shape \[2, 3\] but indices "
        r"\[2, 1\] and data \[5, 4\] need \[2, 4\]",
    ):
        teachcompute_ext.scatter_nd(data, idx, torch.randn(2, 3))
    with pytest.raises(RuntimeError, match=r"the last dim of 'indices' \(k = 3\) must be in \[1, rank of data = 2\]"):
        teachcompute_ext.scatter_nd(data, torch.zeros(2, 3, dtype=torch.long), torch.randn(2))
    with pytest.raises(TypeError, match=r"'updates' has dtype torch.float64 but 'data' has dtype torch.float32"):
        teachcompute_ext.scatter_nd(data, idx, torch.randn(2, 4, dtype=torch.float64))
    with pytest.raises(
        TypeError, match=r"unsupported dtype torch.float32 for argument 'indices' \(expected int64 or int32\)"
    ):
        teachcompute_ext.scatter_nd(data, idx.float(), torch.randn(2, 4))
    with pytest.raises(
        ValueError,
        match=r"unknown reduction 'sum' for argument 'reduction' \(expected one of none, add, "
        r"mul, max, min\)",
    ):
        teachcompute_ext.scatter_nd(data, idx, torch.randn(2, 4), "sum")
    with pytest.raises(RuntimeError, match=r"masked_scatter_nd_of_shape: 'indices' must end in a dim of 1"):
        teachcompute_ext.masked_scatter_nd_of_shape([5, 4], torch.zeros(2, 2, dtype=torch.long), torch.randn(2), -1)
    # The fake kernels say the same under torch.compile.
    with pytest.raises(Exception, match=r"'updates' has shape \[2, 3\]"):
        torch.compile(teachcompute_ext.scatter_nd, fullgraph=True, backend="eager")(data, idx, torch.randn(2, 3))
    with pytest.raises(Exception, match=r"unknown reduction 'sum'"):
        torch.compile(lambda d, i, u: teachcompute_ext.scatter_nd(d, i, u, "sum"), fullgraph=True, backend="eager")(
            data, idx, torch.randn(2, 4)
        )


def test_scatter_nd_cpu_deterministic_across_thread_counts():
    data, idx, upd = _case((300, 64), 1, 20000, 8)
    saved = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 2, saved):
            torch.set_num_threads(threads)
            outs.append(teachcompute_ext.scatter_nd(data, idx, upd, "add"))
            outs.append(teachcompute_ext.scatter_nd(data, idx, upd, "add"))
    finally:
        torch.set_num_threads(saved)
    assert all(torch.equal(o, outs[0]) for o in outs)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", ["none", "add"])
def test_scatter_nd_gradcheck(reduction, device):
    data, idx, upd = _case((6, 4), 1, 8, 9, torch.float64, device)  # duplicates included
    data.requires_grad_()
    upd.requires_grad_()
    assert torch.autograd.gradcheck(lambda d, u: teachcompute_ext.scatter_nd(d, idx, u, reduction), (data, upd))
    _, idx2, upd2 = _case((5, 3, 2), 2, 6, 10, torch.float64, device)
    upd2.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda u: teachcompute_ext.scatter_nd_of_shape([5, 3, 2], idx2, u, reduction), (upd2,)
    )
    midx = idx.clone()
    midx[1::3] = -1
    assert torch.autograd.gradcheck(
        lambda u: teachcompute_ext.masked_scatter_nd_of_shape([6, 4], midx, u, -1, reduction), (upd,)
    )


def test_scatter_nd_none_gradient_goes_to_the_winning_duplicate():
    data = torch.zeros(3, 2, requires_grad=True)
    upd = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], requires_grad=True)
    idx = torch.tensor([[1], [1], [2]])
    out = teachcompute_ext.scatter_nd(data, idx, upd)
    out.backward(torch.ones(3, 2))
    assert torch.equal(upd.grad, torch.tensor([[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]]))
    assert torch.equal(data.grad, torch.tensor([[1.0, 1.0], [0.0, 0.0], [0.0, 0.0]]))


@pytest.mark.parametrize("reduction", ["mul", "max", "min"])
def test_scatter_nd_not_differentiable_reductions_say_so(reduction):
    data, idx, upd = _case((4, 2), 1, 3, 11)
    upd.requires_grad_()
    out = teachcompute_ext.scatter_nd(data, idx, upd, reduction)
    with pytest.raises(RuntimeError, match=rf"not differentiable for reduction='{reduction}'"):
        out.sum().backward()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_scatter_nd_opcheck(dtype, device):
    data, idx, upd = _case((6, 5), 1, 7, 12, dtype, device)
    grad = dtype in (torch.float32, torch.float64)
    ops = torch.ops.teachcompute_ext
    torch.library.opcheck(ops.scatter_nd.default, (data.requires_grad_(grad), idx, upd.requires_grad_(grad), "add"))
    torch.library.opcheck(ops.scatter_nd.default, (data.detach(), idx, upd.detach(), "none"))
    torch.library.opcheck(ops.scatter_nd_.default, (data.detach().clone(), idx, upd.detach(), "add"))
    torch.library.opcheck(ops.scatter_nd_of_shape.default, ([6, 5], idx, upd.detach().requires_grad_(grad), "add"))
    midx = idx.clone()
    midx[::2] = -1
    torch.library.opcheck(
        ops.masked_scatter_nd_of_shape.default, ([6, 5], midx, upd.detach().requires_grad_(grad), -1, "add")
    )


@pytest.mark.parametrize("device", DEVICES)
def test_scatter_nd_torch_compile_fullgraph_dynamic(device):
    def f(data, idx, upd):
        a = teachcompute_ext.scatter_nd(data * 2, idx, upd, "add")
        b = teachcompute_ext.scatter_nd_of_shape(data.shape, idx, upd * 3, "add")
        return a + b

    compiled = torch.compile(f, fullgraph=True, dynamic=True)
    for n in (5, 9, 17):
        data, idx, upd = _case((10, 4), 1, n, n, device=device)
        upd.requires_grad_()
        out = compiled(data, idx, upd)
        torch.testing.assert_close(out, f(data, idx, upd.detach()))
        (g,) = torch.autograd.grad(out.sum(), upd)
        torch.testing.assert_close(g, torch.full_like(upd, 4.0))


@pytest.mark.skipif(
    not torch.cuda.is_available() or "CUDA" not in teachcompute_ext.compiled_backends(),
    reason="no CUDA device or CUDA not compiled",
)
def test_scatter_nd_cuda_deterministic_mode_is_bitwise_reproducible():
    data, idx, upd = _case((1000, 64), 1, 50000, 13, device="cuda")
    torch.use_deterministic_algorithms(True)
    try:
        for reduction in ("add", "none", "max"):
            outs = [teachcompute_ext.scatter_nd(data, idx, upd, reduction) for _ in range(3)]
            assert all(torch.equal(o, outs[0]) for o in outs)
            torch.testing.assert_close(
                outs[0].cpu(), teachcompute_ext.scatter_nd(data.cpu(), idx.cpu(), upd.cpu(), reduction)
            )
    finally:
        torch.use_deterministic_algorithms(False)


# ---- issue 11 defects ---------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_types_accumulate_in_float_and_round_once(dtype, device):
    # 1024 bfloat16 ones summed into one row gave 256 through half atomics.
    idx = torch.zeros(1024, 1, dtype=torch.long, device=device)
    ones = torch.ones(1024, 8, dtype=dtype, device=device)
    assert (teachcompute_ext.scatter_nd_of_shape([3, 8], idx, ones, "add")[0] == 1024).all()
    data = torch.zeros(3, 8, dtype=dtype, device=device)
    assert (teachcompute_ext.scatter_nd(data, idx, ones, "add")[0] == 1024).all()
    # mul: the product rounded once, not after every factor
    f = torch.full((300, 8), 1.01, dtype=dtype, device=device)
    ref = torch.full((8,), 1.01, dtype=dtype).double().pow(300).to(dtype)
    out = teachcompute_ext.scatter_nd(torch.ones(3, 8, dtype=dtype, device=device), idx[:300], f, "mul")[0]
    torch.testing.assert_close(out.cpu(), ref, rtol=0, atol=0)
    # the embedding backwards share the scatter
    w = torch.randn(5, 8, dtype=dtype, device=device, requires_grad=True)
    teachcompute_ext.embedding(w, torch.zeros(1024, dtype=torch.long, device=device)).sum().backward()
    assert (w.grad[0] == 1024).all() and (w.grad[1:] == 0).all()
    w.grad = None
    bag = teachcompute_ext.embedding_bag(
        w, torch.zeros(1024, dtype=torch.long, device=device), torch.tensor([0, 512], device=device), "sum"
    )
    bag.sum().backward()
    assert (w.grad[0] == 1024).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("deterministic", [False, True])
def test_scatter_nd_none_keeps_the_last_duplicate(deterministic, device):
    # ONNX, the docs and the autograd all assume the last update in index order
    # wins; the default CUDA path kept an arbitrary one.
    g = torch.Generator().manual_seed(4)
    n_rows, n = 50, 20000
    idx = torch.randint(0, n_rows, (n, 1), generator=g)
    upd = torch.randn(n, 16, generator=g, dtype=torch.float64)
    data = torch.randn(n_rows, 16, generator=g, dtype=torch.float64)
    ref = data.clone()
    for i in range(n):  # the last write wins
        ref[idx[i, 0]] = upd[i]
    torch.use_deterministic_algorithms(deterministic)
    try:
        out = teachcompute_ext.scatter_nd(data.to(device), idx.to(device), upd.to(device), "none")
        of_shape = teachcompute_ext.scatter_nd_of_shape([n_rows, 16], idx.to(device), upd.to(device), "none")
        masked = teachcompute_ext.masked_scatter_nd_of_shape(
            [n_rows, 16], idx.to(device), upd.to(device), int(idx[-1, 0]), "none"
        )
    finally:
        torch.use_deterministic_algorithms(False)
    assert torch.equal(out.cpu(), ref)
    written = torch.zeros(n_rows, dtype=torch.bool).index_fill(0, idx[:, 0], True)
    assert torch.equal(of_shape.cpu(), torch.where(written.unsqueeze(1), ref, 0.0))
    keep = idx[:, 0] != idx[-1, 0]
    ref_masked = torch.zeros(n_rows, 16, dtype=torch.float64)
    for i in torch.nonzero(keep)[:, 0].tolist():
        ref_masked[idx[i, 0]] = upd[i]
    assert torch.equal(masked.cpu(), ref_masked)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", ["add", "none"])
def test_masked_scatter_backward_skips_masked_indices_out_of_range(reduction, device):
    # A masked index (here past the end) is skipped by the forward; the backward
    # must never index with it either.
    idx = torch.tensor([[1], [1000], [3], [1000], [1]], device=device)
    upd = torch.randn(5, 4, dtype=torch.float64, device=device, requires_grad=True)
    out = teachcompute_ext.masked_scatter_nd_of_shape([6, 4], idx, upd, 1000, reduction)
    g = torch.randn(6, 4, dtype=torch.float64, device=device)
    (gu,) = torch.autograd.grad(out, upd, g)
    keep = {"add": [True, False, True, False, True], "none": [False, False, True, False, True]}[reduction]
    ref = torch.stack(
        [g[r] if k else torch.zeros(4, dtype=torch.float64, device=device) for r, k in zip([1, 0, 3, 0, 1], keep)]
    )
    torch.testing.assert_close(gu, ref)
    torch.autograd.gradcheck(
        lambda u: teachcompute_ext.masked_scatter_nd_of_shape([6, 4], idx, u, 1000, reduction), (upd,)
    )


# ---- integer and bool data ------------------------------------------------------------------
INT_DTYPES = [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64]


def _loop_reference(data, indices, updates, reduction):
    """ScatterND one update at a time in numpy, in data's own integer type (add and mul wrap)."""
    out = data.cpu().numpy().copy()
    idx = indices.cpu().numpy().reshape(-1, indices.shape[-1])
    upd = updates.cpu().numpy().reshape(idx.shape[0], *data.shape[indices.shape[-1] :])
    with np.errstate(over="ignore"):
        for i in range(idx.shape[0]):
            t = tuple(idx[i])
            if reduction == "none":
                out[t] = upd[i]
            elif reduction == "add":
                out[t] = out[t] + upd[i]
            elif reduction == "mul":
                out[t] = out[t] * upd[i]
            elif reduction == "max":
                out[t] = np.maximum(out[t], upd[i])
            else:
                out[t] = np.minimum(out[t], upd[i])
    return torch.from_numpy(out)


def _int_case(dtype, device, k, seed, shape=(6, 5, 4), n=40):
    g = torch.Generator().manual_seed(seed)
    low = -100 if dtype.is_signed else 0
    data = torch.randint(low, 100, shape, generator=g).to(dtype)
    indices = torch.stack([torch.randint(0, shape[d], (n,), generator=g) for d in range(k)], -1)
    updates = torch.randint(low, 100, (n, *shape[k:]), generator=g).to(dtype)
    return data.to(device), indices.to(device), updates.to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", INT_DTYPES)
@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_scatter_nd_integer_data(reduction, k, dtype, device):
    data, indices, updates = _int_case(dtype, device, k, seed=k * 10 + len(reduction))
    ref = _loop_reference(data, indices, updates, reduction)  # duplicates: many (40 updates, 6 or 30 rows)
    out = teachcompute_ext.scatter_nd(data, indices, updates, reduction)
    assert out.dtype == dtype and torch.equal(out.cpu(), ref)
    inplace = data.clone()
    teachcompute_ext.scatter_nd_(inplace, indices, updates, reduction)
    assert torch.equal(inplace.cpu(), ref)
    zeros = torch.zeros_like(data)
    of_shape = teachcompute_ext.scatter_nd_of_shape(list(data.shape), indices, updates, reduction)
    assert torch.equal(of_shape.cpu(), _loop_reference(zeros, indices, updates, reduction))
    if k == 1:
        masked = teachcompute_ext.masked_scatter_nd_of_shape(list(data.shape), indices, updates, 2, reduction)
        keep = indices[:, 0] != 2
        assert torch.equal(masked.cpu(), _loop_reference(zeros, indices[keep], updates[keep], reduction))


@pytest.mark.parametrize("device", DEVICES)
def test_scatter_nd_bool_data_none_only(device):
    g = torch.Generator().manual_seed(4)
    data = (torch.rand(7, 3, generator=g) > 0.5).to(device)
    indices = torch.randint(0, 7, (12, 1), generator=g).to(device)
    updates = (torch.rand(12, 3, generator=g) > 0.5).to(device)
    out = teachcompute_ext.scatter_nd(data, indices, updates, "none")
    assert out.dtype == torch.bool and torch.equal(out.cpu(), _loop_reference(data, indices, updates, "none"))
    for reduction in ("add", "mul", "max", "min"):
        with pytest.raises(
            TypeError, match=f"teachcompute_ext.scatter_nd: reduction '{reduction}' is not supported for bool data"
        ):
            teachcompute_ext.scatter_nd(data, indices, updates, reduction)


@pytest.mark.parametrize("dtype", [torch.int32, torch.uint8, torch.bool])
def test_scatter_nd_integer_opcheck_and_compile(dtype):
    data, indices, updates = _int_case(torch.int64, "cpu", 1, seed=5)
    data, updates = data.to(dtype), updates.to(dtype)
    ops = torch.ops.teachcompute_ext
    torch.library.opcheck(ops.scatter_nd.default, (data, indices, updates, "none"))
    torch.library.opcheck(ops.scatter_nd_of_shape.default, ([6, 5, 4], indices, updates, "none"))
    if dtype != torch.bool:
        torch.library.opcheck(ops.scatter_nd.default, (data, indices, updates, "add"))
    torch._dynamo.reset()
    f = torch.compile(lambda d, i, u: teachcompute_ext.scatter_nd(d, i, u, "none"), fullgraph=True, dynamic=True)
    assert torch.equal(f(data, indices, updates), _loop_reference(data, indices, updates, "none"))


def test_scatter_nd_refuses_other_dtypes_clearly():
    data = torch.zeros(4, 2, dtype=torch.complex64)
    with pytest.raises(
        TypeError, match="teachcompute_ext.scatter_nd: unsupported dtype torch.complex64 for argument 'data'"
    ):
        teachcompute_ext.scatter_nd(data, torch.tensor([[1]]), torch.zeros(1, 2, dtype=torch.complex64))
    with pytest.raises(TypeError, match="'updates' has dtype torch.int32 but 'data' has dtype torch.int64"):
        teachcompute_ext.scatter_nd(
            torch.zeros(4, 2, dtype=torch.int64), torch.tensor([[1]]), torch.zeros(1, 2, dtype=torch.int32)
        )


# ---- torch.func transforms: the autograd Nodes are hand-built (no torch::autograd::Function) ----------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", ["none", "add"])
@pytest.mark.parametrize("op", ["scatter_nd", "scatter_nd_of_shape", "masked_scatter_nd_of_shape"])
def test_torch_func_grad_matches_autograd(op, reduction, device):
    data, idx, upd = _case((6, 4), 1, 8, 9, torch.float64, device)  # duplicates included
    midx = idx.clone()
    midx[1::3] = -1
    fns = {
        "scatter_nd": (lambda d, u: teachcompute_ext.scatter_nd(d * d, idx, u * u, reduction), (data, upd)),
        "scatter_nd_of_shape": (lambda u: teachcompute_ext.scatter_nd_of_shape([6, 4], idx, u * u, reduction), (upd,)),
        "masked_scatter_nd_of_shape": (
            lambda u: teachcompute_ext.masked_scatter_nd_of_shape([6, 4], midx, u * u, -1, reduction),
            (upd,),
        ),
    }
    fn, ins = fns[op]
    g = torch.randn(6, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(device)
    assert_func_grad_matches_autograd(fn, ins, g)


# ---- scatter_nd_ under autograd: an in-place op of torch's kind --------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", ["none", "add"])
def test_scatter_nd_in_place_records_its_history(reduction, device):
    # The in-place op becomes data's history: the rows it overwrote pass no
    # gradient back (none), updates get theirs, as torch's index_put_.
    g = torch.Generator().manual_seed(4)
    a = torch.randn(5, 3, generator=g, dtype=torch.float64).to(device).requires_grad_()
    u = torch.randn(3, 3, generator=g, dtype=torch.float64).to(device).requires_grad_()
    idx = torch.tensor([[1], [3], [1]], device=device)
    w = torch.randn(5, 3, generator=g, dtype=torch.float64).to(device)
    b = a * 2
    assert teachcompute_ext.scatter_nd_(b, idx, u, reduction) is b
    got = torch.autograd.grad((b * w).sum(), [a, u])
    a2, u2 = a.detach().clone().requires_grad_(), u.detach().clone().requires_grad_()
    b2 = a2 * 2
    if reduction == "add":
        b2 = b2.index_put((idx[:, 0],), u2, accumulate=True)
    else:
        b2 = b2.index_put((idx[1:, 0],), u2[1:])  # the last update of row 1 wins
    want = torch.autograd.grad((b2 * w).sum(), [a2, u2])
    for x, y in zip(got, want):
        torch.testing.assert_close(x, y)


def test_scatter_nd_in_place_bumps_the_version_and_refuses_leaves():
    a = torch.randn(4, 3, requires_grad=True)
    b = a.exp()  # exp saves its output: rewriting it must make the backward refuse
    teachcompute_ext.scatter_nd_(b, torch.tensor([[1]]), torch.ones(1, 3))
    assert b._version == 1
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        b.sum().backward()
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        teachcompute_ext.scatter_nd_(a, torch.tensor([[1]]), torch.ones(1, 3))
    with torch.no_grad():  # as torch's in-place ops: allowed without grad mode
        teachcompute_ext.scatter_nd_(a, torch.tensor([[1]]), torch.ones(1, 3))
    assert torch.equal(a[1], torch.ones(3)) and a._version == 1


def test_scatter_nd_in_place_on_a_view_reaches_the_base():
    base = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    u = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    y = base * 1
    teachcompute_ext.scatter_nd_(y[2:], torch.tensor([[0], [3]]), u)  # rows 2 and 5 of y
    gb, gu = torch.autograd.grad(y.sum(), [base, u])
    want = torch.ones(6, 3, dtype=torch.float64)
    want[[2, 5]] = 0
    torch.testing.assert_close(gb, want)
    torch.testing.assert_close(gu, torch.ones(2, 3, dtype=torch.float64))
