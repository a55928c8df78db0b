"""torch.func.vmap over every op gives what vmap gives over torch's counterpart.

Every op has a batching rule (torch.library.register_vmap, in each family's
module): one call of the op on the whole batch. The references are vmap over
torch's op, or, for the ScatterND family and the backward ops that torch has no
public twin for, the op's own result computed sample by sample.
"""

import pytest
import torch
import torch.nn.functional as F

import teachcompute_ext  # noqa: F401

import op_db
from conftest import DEVICES

ops = torch.ops.teachcompute_ext
vmap = torch.func.vmap
F64 = torch.float64


def _close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def _batched(t, bdim):
    """t (batch first) with its batch dim at bdim, or one sample when bdim is None."""
    return t[0] if bdim is None else t.movedim(0, bdim)


def _randn(*shape, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=F64).to(device)


# ---------------------------------------------------------------------------- reduce
REDUCTIONS = [
    ("reduce_sum", lambda x, d, k: ops.reduce_sum(x, d, k), lambda x, d, k: torch.sum(x, d, keepdim=k)),
    ("reduce_mean", lambda x, d, k: ops.reduce_mean(x, d, k), lambda x, d, k: torch.mean(x, d, keepdim=k)),
    ("logsumexp", lambda x, d, k: ops.logsumexp(x, d, k), lambda x, d, k: torch.logsumexp(x, d, keepdim=k)),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("in_dim", [0, 1, -1])
@pytest.mark.parametrize("dim", [[0], [-1], [0, 2], [-3, 1]])
@pytest.mark.parametrize("keepdim", [False, True])
@pytest.mark.parametrize("name,ours,theirs", REDUCTIONS, ids=[r[0] for r in REDUCTIONS])
def test_sum_mean_logsumexp(name, ours, theirs, keepdim, dim, in_dim, device):
    x = _batched(_randn(4, 3, 5, 2, device=device), in_dim)
    _close(
        vmap(lambda t: ours(t, dim, keepdim), in_dims=in_dim)(x),
        vmap(lambda t: theirs(t, dim, keepdim), in_dims=in_dim)(x),
    )


@pytest.mark.parametrize("device", DEVICES)
def test_sum_mean_every_dim_and_0d_samples(device):
    x = _randn(4, 3, 5, device=device)
    _close(vmap(lambda t: ops.reduce_sum(t))(x), vmap(torch.sum)(x))
    _close(vmap(lambda t: ops.reduce_mean(t, None, True))(x), vmap(lambda t: t.mean((0, 1), keepdim=True))(x))
    # 0-d samples: the op must not reduce the batch dim along with them.
    s = _randn(5, device=device)
    _close(vmap(lambda t: ops.reduce_sum(t))(s), vmap(torch.sum)(s))
    _close(vmap(lambda t: ops.reduce_mean(t, [0], True))(s), vmap(lambda t: t.mean(0, keepdim=True))(s))
    _close(vmap(lambda t: ops.logsumexp(t, [-1]))(s), vmap(lambda t: torch.logsumexp(t, -1))(s))
    _close(vmap(ops.vector_sum)(s), s)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("in_dim", [0, 2, -1])
def test_vector_sum(in_dim, device):
    x = _batched(_randn(4, 3, 5, device=device), in_dim)
    _close(vmap(ops.vector_sum, in_dims=in_dim)(x), vmap(torch.sum, in_dims=in_dim)(x))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("in_dim", [0, 1, -1])
@pytest.mark.parametrize("dim", [0, 1, -1, -2])
@pytest.mark.parametrize("keepdim", [False, True])
@pytest.mark.parametrize("which", ["max", "min"])
def test_reduce_max_min(which, keepdim, dim, in_dim, device):
    x = _batched(_randn(4, 3, 6, device=device), in_dim)
    ours = getattr(ops, f"reduce_{which}")
    got = vmap(lambda t: ours(t, dim, keepdim), in_dims=in_dim)(x)
    ref = vmap(lambda t: getattr(torch, which)(t, dim, keepdim), in_dims=in_dim)(x)
    _close(got[0], ref[0])
    assert torch.equal(got[1], ref[1])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("in_dim", [0, 1, -1])
@pytest.mark.parametrize("dim", [0, 1, -1])
@pytest.mark.parametrize("which", ["softmax", "log_softmax"])
def test_softmax_and_backward(which, dim, in_dim, device):
    x = _batched(_randn(4, 3, 5, device=device), in_dim)
    g = _batched(_randn(4, 3, 5, device=device, seed=1), in_dim)
    out = vmap(lambda t: getattr(ops, which)(t, dim), in_dims=in_dim)(x)
    _close(out, vmap(lambda t: getattr(torch, which)(t, dim), in_dims=in_dim)(x))
    aten_bw = getattr(torch.ops.aten, f"_{which}_backward_data")
    ours_bw = getattr(ops, f"{which}_backward")
    out_b = out.movedim(0, in_dim)  # as batched as its input
    for g_dim, o_dim, g_, o_ in (
        (in_dim, in_dim, g, out_b),
        (None, in_dim, g[(slice(None),) * (in_dim % 3) + (0,)], out_b),
        (in_dim, None, g, out_b.select(in_dim, 0)),
    ):
        got = vmap(lambda a, b: ours_bw(a, b, dim), in_dims=(g_dim, o_dim))(g_, o_)
        ref = vmap(lambda a, b: aten_bw(a, b, dim, F64), in_dims=(g_dim, o_dim))(g_, o_)
        _close(got, ref)


@pytest.mark.parametrize("device", DEVICES)
def test_reduce_dim_errors_are_the_logical_ones(device):
    x = _randn(4, 3, 5, device=device)
    # Logical dim -3 of a 2-d sample: out of range, though the batched tensor has 3 dims.
    with pytest.raises(IndexError, match=r"teachcompute_ext.softmax: dim -3 out of range .* 2-d tensor"):
        vmap(lambda t: ops.softmax(t, -3))(x)
    with pytest.raises(IndexError, match=r"teachcompute_ext.reduce_sum: dim 2 out of range"):
        vmap(lambda t: ops.reduce_sum(t, [2]))(x)
    with pytest.raises(RuntimeError, match=r"teachcompute_ext.reduce_mean: dim 1 appears more than once"):
        vmap(lambda t: ops.reduce_mean(t, [1, -1]))(x)


# ---------------------------------------------------------------------------- scatter_nd
# One sample, the way ONNX ScatterND reads it: updates applied one by one in index order.
_scatter_ref = op_db._scatter_ref_one


def _per_sample(fn, batch, in_dims, *args):
    """torch.stack of fn over the samples: the definition of vmap."""
    samples = []
    for b in range(batch):
        samples.append(fn(*[a if d is None else a.select(d, b) for a, d in zip(args, in_dims)]))
    return torch.stack(samples)


SCATTER_DIMS = [(0, 0, 0), (0, None, 0), (None, 0, 0), (0, 0, None), (1, None, 2), (None, None, 1), (2, 1, None)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("in_dims", SCATTER_DIMS)
@pytest.mark.parametrize("reduction", ["none", "add", "mul", "max", "min"])
@pytest.mark.parametrize("k", [1, 2])
def test_scatter_nd(k, reduction, in_dims, device):
    B = 3
    data = _randn(B, 4, 5, 2, device=device)
    # Duplicates (and negative indices) on purpose: "none" must keep each sample's last one.
    g = torch.Generator().manual_seed(k)
    indices = torch.randint(-4, 4, (B, 6, k), generator=g).to(device)
    updates = _randn(B, 6, *data.shape[1 + k :], device=device, seed=2)
    args = [_batched(t, d) for t, d in zip((data, indices, updates), in_dims)]
    got = vmap(lambda d, i, u: ops.scatter_nd(d, i, u, reduction), in_dims=in_dims)(*args)
    _close(got, _per_sample(lambda d, i, u: _scatter_ref(d, i, u, reduction), B, in_dims, *args))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("in_dims", [(0, 0, 0), (0, None, 0), (1, 0, None), (0, None, None)])
def test_scatter_nd_in_place(in_dims, device):
    B = 3
    data = _randn(B, 4, 5, device=device)
    indices = torch.tensor([[[1], [3], [1]], [[0], [0], [2]], [[3], [2], [1]]], device=device)
    updates = _randn(B, 3, 5, device=device, seed=1)
    args = [_batched(t, d) for t, d in zip((data, indices, updates), in_dims)]
    ref = _per_sample(lambda d, i, u: _scatter_ref(d, i, u, "add"), B, in_dims, *args)
    target = args[0]
    before = target.data_ptr()

    def f(d, i, u):
        ops.scatter_nd_(d, i, u, "add")
        return d

    vmap(f, in_dims=in_dims)(*args)
    assert target.data_ptr() == before
    _close(target.movedim(in_dims[0], 0), ref)


def test_scatter_nd_in_place_refuses_unbatched_data():
    data = _randn(4, 5)
    with pytest.raises(RuntimeError, match=r"teachcompute_ext.scatter_nd_: vmap: argument 'data' is not batched"):
        vmap(lambda d, i, u: ops.scatter_nd_(d, i, u), in_dims=(None, 0, 0))(
            data, torch.zeros(3, 2, 1, dtype=torch.int64), _randn(3, 2, 5)
        )
    # torch says the same of its own in-place ops.
    with pytest.raises(RuntimeError, match="vmap: index_put_.* is not possible"):
        vmap(lambda d, i, u: d.index_put_((i[:, 0],), u), in_dims=(None, 0, 0))(
            data, torch.zeros(3, 2, 1, dtype=torch.int64), _randn(3, 2, 5)
        )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("in_dims", [(0, 0), (None, 0), (0, None), (1, 2)])
@pytest.mark.parametrize("masked", [False, True])
def test_scatter_nd_of_shape_and_masked(masked, in_dims, device):
    B, shape = 3, [5, 4, 2]
    g = torch.Generator().manual_seed(3)
    indices = torch.randint(-5, 5, (B, 7, 1), generator=g).to(device)
    indices[:, 0] = 2  # the masked value, in every sample
    updates = _randn(B, 7, 4, 2, device=device)
    args = [_batched(t, d) for t, d in zip((indices, updates), in_dims)]

    def ref(i, u):
        keep = i[..., 0] != 2 if masked else torch.ones(i.shape[:-1], dtype=torch.bool, device=device)
        return _scatter_ref(torch.zeros(shape, dtype=F64, device=device), i[keep], u[keep], "add")

    if masked:
        got = vmap(lambda i, u: ops.masked_scatter_nd_of_shape(shape, i, u, 2), in_dims=in_dims)(*args)
    else:
        got = vmap(lambda i, u: ops.scatter_nd_of_shape(shape, i, u), in_dims=in_dims)(*args)
    _close(got, _per_sample(ref, B, in_dims, *args))


def test_scatter_bad_index_still_raises_under_vmap():
    indices = torch.tensor([[[1]], [[5]]])  # 5 is out of range for 5 rows, in sample 1 only
    updates = _randn(2, 1, 3)
    with pytest.raises(IndexError, match="teachcompute_ext.masked_scatter_nd_of_shape: index .* out of range"):
        vmap(lambda i, u: ops.masked_scatter_nd_of_shape([5, 3], i, u, 0))(indices, updates)
    with pytest.raises(IndexError, match="teachcompute_ext.scatter_nd: index .* out of range"):
        vmap(lambda d, i, u: ops.scatter_nd(d, i, u))(_randn(2, 5, 3), indices, updates)


def test_scatter_nd_checks_logical_shapes():
    with pytest.raises(
        RuntimeError,
        match=r"teachcompute_ext.scatter_nd: 'updates' has shape \[2, 4\] but indices "
        r"\[2, 1\] and data \[5, 3\] need \[2, 3\]",
    ):
        vmap(lambda d, i, u: ops.scatter_nd(d, i, u))(
            _randn(2, 5, 3), torch.zeros(2, 2, 1, dtype=torch.int64), _randn(2, 2, 4)
        )


# ---------------------------------------------------------------------------- embedding
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("in_dims", [(0, 0), (None, 0), (0, None), (1, 1), (2, None)])
@pytest.mark.parametrize("padding_idx", [None, 2, -1])
def test_embedding(padding_idx, in_dims, device):
    weight = _randn(3, 6, 4, device=device)
    indices = torch.randint(0, 6, (3, 2, 5), generator=torch.Generator().manual_seed(0)).to(device)
    w, i = _batched(weight, in_dims[0]), _batched(indices, in_dims[1])
    got = vmap(lambda w, i: ops.embedding(w, i, padding_idx), in_dims=in_dims)(w, i)
    _close(got, vmap(lambda w, i: F.embedding(i, w, padding_idx), in_dims=in_dims)(w, i))


def test_embedding_index_out_of_range_does_not_read_the_next_sample():
    weight = _randn(2, 4, 3)
    with pytest.raises(IndexError, match="teachcompute_ext.embedding: index .* out of range for argument 'indices'"):
        vmap(ops.embedding)(weight, torch.tensor([[4], [0]]))  # row 4 of sample 0 would be row 0 of sample 1
    with pytest.raises(IndexError, match="teachcompute_ext.embedding: index -1 out of range"):
        vmap(ops.embedding)(weight, torch.tensor([[0], [-1]]))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("in_dims", [(0, 0), (0, None), (None, 0), (2, 1)])
@pytest.mark.parametrize("padding_idx", [None, 1])
def test_embedding_backward(padding_idx, in_dims, device):
    grad = _randn(3, 2, 5, 4, device=device)
    indices = torch.randint(0, 6, (3, 2, 5), generator=torch.Generator().manual_seed(1)).to(device)
    g, i = _batched(grad, in_dims[0]), _batched(indices, in_dims[1])
    got = vmap(lambda g, i: ops.embedding_backward(g, i, 6, padding_idx), in_dims=in_dims)(g, i)
    ref = vmap(
        lambda g, i: torch.ops.aten.embedding_dense_backward(
            g, i, 6, -1 if padding_idx is None else padding_idx, False
        ),
        in_dims=in_dims,
    )(g, i)
    _close(got, ref)


BAG_DIMS = [
    (0, 0, None, 0),
    (None, 0, None, 0),
    (0, None, None, None),
    (None, 0, 0, None),
    (None, None, 0, 0),
    (1, 0, 0, 0),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("in_dims", BAG_DIMS)
@pytest.mark.parametrize("include_last_offset", [False, True])
@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_embedding_bag_offsets(mode, include_last_offset, in_dims, device):
    B, V, N = 3, 6, 8
    weight = _randn(B, V, 4, device=device)
    indices = torch.randint(0, V, (B, N), generator=torch.Generator().manual_seed(2)).to(device)
    indices[:, 1] = 2  # padding
    offsets = torch.tensor([[0, 2, 2, 5], [0, 1, 4, 4], [0, 3, 6, 7]], device=device)
    if include_last_offset:
        offsets = torch.cat([offsets, torch.full((B, 1), N, device=device)], 1)
    psw = _randn(B, N, device=device, seed=5) if mode == "sum" else None
    p_dim = in_dims[3] if psw is not None else None
    args = (
        _batched(weight, in_dims[0]),
        _batched(indices, in_dims[1]),
        _batched(offsets, in_dims[2]),
        None if psw is None else _batched(psw, p_dim),
    )
    dims = in_dims[:3] + (p_dim,)
    for padding_idx in (None, 2):
        got = vmap(
            lambda w, i, o, p: ops.embedding_bag(w, i, o, mode, p, padding_idx, include_last_offset), in_dims=dims
        )(*args)
        ref = vmap(
            lambda w, i, o, p: F.embedding_bag(
                i,
                w,
                o,
                mode=mode,
                per_sample_weights=p,
                padding_idx=padding_idx,
                include_last_offset=include_last_offset,
            ),
            in_dims=dims,
        )(*args)
        _close(got, ref)


@pytest.mark.parametrize("in_dims", [(0, 0, 0), (None, 0, None), (0, None, 0)])
def test_embedding_bag_last_offset_short_of_the_end(in_dims):
    # The tail past the last offset counts for no bag (ours, documented; torch's
    # float64 kernel disagrees), so the reference is our op sample by sample.
    weight, indices = _randn(3, 5, 2), torch.randint(0, 5, (3, 6), generator=torch.Generator().manual_seed(4))
    offsets = torch.tensor([[0, 2, 4], [0, 3, 3], [0, 1, 5]])
    args = [_batched(t, d) for t, d in zip((weight, indices, offsets), in_dims)]
    f = lambda w, i, o: ops.embedding_bag(w, i, o, "sum", None, None, True)  # noqa: E731
    _close(vmap(f, in_dims=in_dims)(*args), _per_sample(f, 3, in_dims, *args))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("in_dims", [(0, 0), (None, 0), (0, None), (1, 2)])
@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_embedding_bag_fixed_length_and_argmax(mode, in_dims, device):
    weight = _randn(3, 7, 4, device=device)
    indices = torch.randint(0, 7, (3, 2, 4), generator=torch.Generator().manual_seed(6)).to(device)
    w, i = _batched(weight, in_dims[0]), _batched(indices, in_dims[1])
    _close(
        vmap(lambda w, i: ops.embedding_bag(w, i, None, mode), in_dims=in_dims)(w, i),
        vmap(lambda w, i: F.embedding_bag(i, w, mode=mode), in_dims=in_dims)(w, i),
    )
    if mode == "max":  # the argmax rows are each sample's own
        f = lambda w, i: ops.embedding_bag_forward(w, i, None, "max", None, None, False)[1]  # noqa: E731
        assert torch.equal(vmap(f, in_dims=in_dims)(w, i), _per_sample(f, 3, in_dims, w, i))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["offsets", "offsets_last", "fixed"])
@pytest.mark.parametrize("in_dims", [(0, None, 0, 0), (0, 0, 0, 0), (0, 0, None, None)])
@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_embedding_bag_backward(mode, in_dims, layout, device):
    """grad, weight, indices (with offsets and psw) batched or not; max_indices from the forward."""
    B, V, D = 3, 6, 4
    g_dim, w_dim, i_dim, p_dim = in_dims
    weight = _randn(B, V, D, device=device)
    ilo = layout == "offsets_last"
    if layout == "fixed":
        indices = torch.randint(0, V, (B, 3, 2), generator=torch.Generator().manual_seed(7)).to(device)
        offsets, bags = None, 3
    else:
        indices = torch.randint(0, V, (B, 7), generator=torch.Generator().manual_seed(7)).to(device)
        offsets = torch.tensor([[0, 2, 2, 5] + ([7] if ilo else [])] * B, device=device)
        bags = 4
    indices[:, 0] = 1  # padding
    psw = _randn(*indices.shape, device=device, seed=8) if mode == "sum" else None
    grad = _randn(B, bags, D, device=device, seed=9)
    w, i = _batched(weight, w_dim), _batched(indices, i_dim)
    o = None if offsets is None else _batched(offsets, i_dim)
    p = None if psw is None else _batched(psw, p_dim)
    p_dim = None if psw is None else p_dim
    o_dim = None if offsets is None else i_dim
    argmax = vmap(
        lambda w, i, o, p: ops.embedding_bag_forward(w, i, o, mode, p, 1, ilo)[1], in_dims=(w_dim, i_dim, o_dim, p_dim)
    )(w, i, o, p)
    m_dim = 0 if mode == "max" else None
    if mode != "max":
        argmax = argmax[0]
    dims = (g_dim, w_dim, i_dim, o_dim, m_dim, p_dim)
    args = (_batched(grad, g_dim), w, i, o, argmax, p)
    f = lambda g, w, i, o, m, p: torch.cat(
        [
            t.reshape(-1)
            for t in ops.embedding_bag_backward(  # noqa: E731
                g, w, i, o, m, mode, p, 1, ilo
            )
        ]
    )
    _close(vmap(f, in_dims=dims)(*args), _per_sample(f, B, dims, *args))


# ---------------------------------------------------------------------------- matmul
MATMUL_DIMS = [(0, 0), (0, None), (None, 0), (2, 1), (-1, -2)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("in_dims", MATMUL_DIMS)
@pytest.mark.parametrize(
    "shapes", [((4, 5), (5, 3)), ((2, 4, 5), (5, 3)), ((4, 5), (2, 5, 3)), ((2, 1, 4, 5), (3, 5, 6))]
)
@pytest.mark.parametrize("trans", [(False, False), (True, False), (False, True), (True, True)])
def test_fused_matmul(trans, shapes, in_dims, device):
    sa, sb = shapes
    ta, tb = trans
    a = _randn(3, *sa, device=device)
    b = _randn(3, *sb, device=device, seed=1)
    if ta:
        a = a.transpose(-1, -2)
    if tb:
        b = b.transpose(-1, -2)
    args = (_batched(a, in_dims[0]), _batched(b, in_dims[1]))
    op = lambda t: t.transpose(-1, -2)  # noqa: E731
    got = vmap(lambda x, y: ops.fused_matmul(x, y, 0.5, ta, tb), in_dims=in_dims)(*args)
    ref = vmap(lambda x, y: 0.5 * torch.matmul(op(x) if ta else x, op(y) if tb else y), in_dims=in_dims)(*args)
    _close(got, ref)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("in_dims", [(0, 0), (0, None), (None, 0)])
@pytest.mark.parametrize("shapes", [((5,), (5, 3)), ((2, 4, 5), (5,)), ((5,), (5,)), ((5,), (2, 5, 3))])
def test_fused_matmul_vector_samples(shapes, in_dims, device):
    """A sample that is a vector is a 2-D tensor to the op under vmap: torch.matmul's 1-D rules still hold."""
    a, b = _randn(3, *shapes[0], device=device), _randn(3, *shapes[1], device=device, seed=1)
    args = (_batched(a, in_dims[0]), _batched(b, in_dims[1]))
    _close(vmap(ops.fused_matmul, in_dims=in_dims)(*args), vmap(torch.matmul, in_dims=in_dims)(*args))


ACTS = {
    "none": lambda t: t,
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"),
    "silu": F.silu,
}
LINEAR_DIMS = [
    (0, None, None),
    (1, None, None),
    (-1, None, None),
    (0, 0, 0),
    (None, 0, None),
    (0, None, 0),
    (None, None, 0),
    (2, 1, None),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("in_dims", LINEAR_DIMS)
@pytest.mark.parametrize("activation", list(ACTS))
def test_fused_linear(activation, in_dims, device):
    x, w, bias = (
        _randn(3, 2, 7, 5, device=device),
        _randn(3, 4, 5, device=device, seed=1),
        _randn(3, 4, device=device, seed=2),
    )
    args = [_batched(t, d) for t, d in zip((x, w, bias), in_dims)]
    act = ACTS[activation]
    _close(
        vmap(lambda x, w, b: ops.fused_linear(x, w, b, activation), in_dims=in_dims)(*args),
        vmap(lambda x, w, b: act(F.linear(x, w, b)), in_dims=in_dims)(*args),
    )
    # fused_linear_forward's pre-activation is F.linear's, where it is kept.
    out, pre = vmap(lambda x, w, b: ops.fused_linear_forward(x, w, b, activation, True), in_dims=in_dims)(*args)
    if activation in ("gelu", "gelu_tanh", "silu"):
        _close(pre, vmap(F.linear, in_dims=in_dims)(*args))
    if in_dims[:2] != (None, None):
        _close(
            vmap(lambda x, w: ops.fused_linear(x, w, None, activation), in_dims=in_dims[:2])(*args[:2]),
            vmap(lambda x, w: act(F.linear(x, w)), in_dims=in_dims[:2])(*args[:2]),
        )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "in_dims", [(0, 0, None, 0), (0, 0, 0, 0), (0, None, 0, 0), (None, 0, None, 0), (1, 1, None, 1)]
)
@pytest.mark.parametrize("activation", list(ACTS))
def test_fused_linear_backward(activation, in_dims, device):
    """Against torch.autograd.grad of act(F.linear) sample by sample."""
    B = 3
    x, w, b = (
        _randn(B, 2, 6, 5, device=device),
        _randn(B, 4, 5, device=device, seed=1),
        _randn(B, 4, device=device, seed=2),
    )
    grad = _randn(B, 2, 6, 4, device=device, seed=3)
    g_dim, x_dim, w_dim, a_dim = in_dims
    pre = torch.stack(
        [F.linear(x[s] if x_dim is not None else x[0], w[s] if w_dim is not None else w[0], b[0]) for s in range(B)]
    )
    out = ACTS[activation](pre)
    aux = out if activation == "relu" else (pre if activation != "none" else torch.empty(B, 0, device=device))
    args = [_batched(t, d) for t, d in zip((grad, x, w, aux), in_dims)]
    got = vmap(
        lambda g, x, w, a: ops.fused_linear_backward(g, x, w, a, activation, True, [True, True, True]), in_dims=in_dims
    )(*args)

    def ref(g, x, w):
        x, w, bb = x.clone().requires_grad_(), w.clone().requires_grad_(), b[0].clone().requires_grad_()
        return torch.autograd.grad(ACTS[activation](F.linear(x, w, bb)), (x, w, bb), g)

    refs = [ref(*[t if d is None else t.select(d, s) for t, d in zip(args[:3], in_dims[:3])]) for s in range(B)]
    for j in range(3):
        _close(got[j], torch.stack([r[j] for r in refs]))
    gx, gw, gb = vmap(
        lambda g, x, w, a: ops.fused_linear_backward(g, x, w, a, activation, False, [False, True, False]),
        in_dims=in_dims,
    )(*args)
    assert gx.numel() == 0 and gb.numel() == 0
    _close(gw, torch.stack([r[1] for r in refs]))


# ---------------------------------------------------------------------------- vmap's own features
def test_nested_vmap():
    x = _randn(2, 3, 4, 5)
    _close(vmap(vmap(lambda t: ops.softmax(t, -1)))(x), torch.softmax(x, -1))
    _close(vmap(vmap(ops.vector_sum), in_dims=1)(x), x.sum((-1, -2)).movedim(1, 0))
    w, idx = _randn(2, 3, 6, 4), torch.randint(0, 6, (2, 3, 5))
    _close(vmap(vmap(ops.embedding))(w, idx), vmap(vmap(lambda w, i: F.embedding(i, w)))(w, idx))
    a, b = _randn(2, 3, 4, 5), _randn(3, 5, 6)
    _close(vmap(vmap(ops.fused_matmul, in_dims=(0, 0)), in_dims=(0, None))(a, b), a @ b)
    data, i, u = _randn(2, 3, 4, 5), torch.randint(0, 4, (2, 3, 2, 1)), _randn(2, 3, 2, 5)
    got = vmap(vmap(lambda d, i, u: ops.scatter_nd(d, i, u, "add")))(data, i, u)
    ref = torch.stack(
        [torch.stack([_scatter_ref(data[p, q], i[p, q], u[p, q], "add") for q in range(3)]) for p in range(2)]
    )
    _close(got, ref)


def test_out_dims():
    x = _randn(3, 4, 5)
    _close(vmap(lambda t: ops.softmax(t, 0), out_dims=1)(x), torch.softmax(x, 1).movedim(0, 1))
    v, i = vmap(lambda t: ops.reduce_max(t, 1), out_dims=(1, 0))(x)
    ref = x.max(2)
    _close(v, ref.values.movedim(0, 1))
    assert torch.equal(i, ref.indices)
    g = _randn(3, 2, 5, 4)
    idx = torch.randint(0, 6, (2, 5))  # unbatched indices: the rule's own out_dim is 1
    _close(
        vmap(lambda g: ops.embedding_backward(g, idx, 6), out_dims=2)(g),
        vmap(lambda g: torch.ops.aten.embedding_dense_backward(g, idx, 6, -1, False), out_dims=2)(g),
    )


@pytest.mark.parametrize("device", DEVICES)
def test_empty_batch(device):
    x = _randn(0, 3, 4, device=device)
    assert vmap(lambda t: ops.softmax(t, -1))(x).shape == (0, 3, 4)
    assert vmap(ops.vector_sum)(x).shape == (0,)
    assert vmap(lambda t: ops.reduce_max(t, 0))(x)[1].shape == (0, 4)
    w = _randn(0, 6, 4, device=device)
    idx = torch.zeros(0, 5, dtype=torch.int64, device=device)
    assert vmap(ops.embedding)(w, idx).shape == (0, 5, 4)
    offs = torch.zeros(0, 2, dtype=torch.int64, device=device)
    assert vmap(lambda w, i, o: ops.embedding_bag(w, i, o, "sum"))(w, idx, offs).shape == (0, 2, 4)
    assert vmap(lambda w, i: ops.embedding_bag(w, i.view(5, 1), None, "max"))(w, idx).shape == (0, 5, 4)
    assert vmap(ops.fused_matmul, in_dims=(0, None))(x, _randn(4, 2, device=device)).shape == (0, 3, 2)
    assert vmap(lambda x, w: ops.fused_linear(x, w, None, "gelu"))(x, _randn(0, 2, 4, device=device)).shape == (0, 3, 2)
    data, i, u = (
        _randn(0, 4, 5, device=device),
        torch.zeros(0, 2, 1, dtype=torch.int64, device=device),
        _randn(0, 2, 5, device=device),
    )
    assert vmap(ops.scatter_nd)(data, i, u).shape == (0, 4, 5)
    assert vmap(lambda i, u: ops.scatter_nd_of_shape([4, 5], i, u))(i, u).shape == (0, 4, 5)


def test_compile_fullgraph_of_vmapped_calls():
    torch._dynamo.reset()
    x, w, b = _randn(3, 2, 5), _randn(4, 5), _randn(3, 4)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(x, w, b):
        y = vmap(lambda x, b: ops.fused_linear(x, w, b, "silu"))(x, b)
        return vmap(lambda t: ops.softmax(t, -1))(y)

    _close(f(x, w, b), torch.softmax(F.silu(F.linear(x, w) + b[:, None]), -1))


# ---------------------------------------------------------------------------- per-sample gradients
# vmap(grad(loss)): the autograd Functions run at the grad level and call the
# backward ops with batched tensors, which their rules take.


def _per_sample_grads(loss, params, *data):
    refs = []
    for s in range(data[0].shape[0]):
        p = [t.detach().clone().requires_grad_() for t in params]
        refs.append(torch.autograd.grad(loss(p, *[d[s] for d in data]), p))
    return [torch.stack([r[j] for r in refs]) for j in range(len(params))]


@pytest.mark.parametrize("activation", list(ACTS))
def test_per_sample_grads_fused_linear(activation):
    w, b = _randn(4, 5), _randn(4, seed=1)
    x, y = _randn(6, 3, 5, seed=2), _randn(6, 3, 4, seed=3)

    def loss(params, x, y, lin):
        return ((lin(x, params[0], params[1]) - y) ** 2).sum()

    ours = lambda x, w, b: ops.fused_linear(x, w, b, activation)  # noqa: E731
    theirs = lambda x, w, b: ACTS[activation](F.linear(x, w, b))  # noqa: E731
    got = vmap(torch.func.grad(lambda p, x, y: loss(p, x, y, ours)), in_dims=(None, 0, 0))([w, b], x, y)
    ref = _per_sample_grads(lambda p, x, y: loss(p, x, y, theirs), [w, b], x, y)
    for g, r in zip(got, ref):
        _close(g, r)


@pytest.mark.parametrize("which", ["softmax", "log_softmax"])
def test_per_sample_grads_softmax(which):
    w = _randn(5, 4)
    x, y = _randn(6, 3, 5, seed=1), _randn(6, 3, 4, seed=2)

    def loss(w, x, y, sm):
        return (sm(ops.fused_matmul(x, w), -1) * y).sum()

    got = vmap(torch.func.grad(lambda w, x, y: loss(w, x, y, getattr(ops, which))), in_dims=(None, 0, 0))(w, x, y)
    ref = _per_sample_grads(lambda p, x, y: (getattr(torch, which)(x @ p[0], -1) * y).sum(), [w], x, y)[0]
    _close(got, ref)


@pytest.mark.parametrize("padding_idx", [None, 2])
def test_per_sample_grads_embedding(padding_idx):
    w = _randn(7, 4)
    idx, y = torch.randint(0, 7, (5, 6), generator=torch.Generator().manual_seed(0)), _randn(5, 6, 4, seed=1)
    idx[:, 0] = 2

    got = vmap(torch.func.grad(lambda w, i, y: (ops.embedding(w, i, padding_idx) * y).sum()), in_dims=(None, 0, 0))(
        w, idx, y
    )
    ref = _per_sample_grads(lambda p, i, y: (F.embedding(i, p[0], padding_idx) * y).sum(), [w], idx, y)[0]
    _close(got, ref)
    got = vmap(
        torch.func.grad(
            lambda w, i, y: (ops.embedding_bag(w, i.view(2, 3), None, "mean", None, padding_idx) * y[:2]).sum()
        ),
        in_dims=(None, 0, 0),
    )(w, idx, y)
    ref = _per_sample_grads(
        lambda p, i, y: (F.embedding_bag(i.view(2, 3), p[0], mode="mean", padding_idx=padding_idx) * y[:2]).sum(),
        [w],
        idx,
        y,
    )[0]
    _close(got, ref)


@pytest.mark.parametrize("padding_idx", [None, 1])
def test_grad_of_vmap_with_batched_weight(padding_idx):
    """grad around vmap: the batched weight's padding rows get no gradient, as with F.embedding
    sample by sample. (torch 2.15's own vmap of F.embedding over a batched weight drops
    padding_idx and gives them one, so the reference is the loop.)"""
    w, idx = _randn(3, 5, 4), torch.tensor([[1, 2, 1], [0, 1, 4], [3, 3, 1]])
    got = torch.func.grad(lambda w: vmap(lambda w, i: ops.embedding(w, i, padding_idx))(w, idx).pow(2).sum())(w)
    wl = w.clone().requires_grad_()
    ref = torch.autograd.grad(sum(F.embedding(idx[b], wl[b], padding_idx).pow(2).sum() for b in range(3)), wl)[0]
    _close(got, ref)


def test_every_op_has_a_batching_rule():
    """No op falls back to vmap's per-sample loop (or refuses): each has a FuncTorchBatched kernel."""
    names = [n for n in dir(ops) if isinstance(getattr(ops, n), torch._ops.OpOverloadPacket)]
    assert len(names) >= 23
    missing = [
        n
        for n in names
        if not torch._C._dispatch_has_kernel_for_dispatch_key(f"teachcompute_ext::{n}", "FuncTorchBatched")
    ]
    assert missing == []


# ---------------------------------------------------------------------------- llama
NORM_DIMS = [(0, None), (1, None), (0, 0), (None, 0), (-1, None)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("in_dims", NORM_DIMS)
def test_rms_norm_and_add(in_dims, device):
    x, r, w = _randn(3, 4, 5, 6, device=device), _randn(3, 4, 5, 6, device=device, seed=1), _randn(3, 6, device=device)
    xb = _batched(x, in_dims[0] if in_dims[0] != -1 else 2)  # -1: the batch dim before the normalized one
    wb = _batched(w, in_dims[1])
    xd = in_dims[0] if in_dims[0] != -1 else 2
    ref = vmap(lambda a, b: F.rms_norm(a, (6,), b, 1e-6), in_dims=(xd, in_dims[1]))(xb, wb)
    _close(vmap(lambda a, b: ops.rms_norm(a, b, 1e-6), in_dims=(xd, in_dims[1]))(xb, wb), ref)
    rb = _batched(r, 0)
    got = vmap(lambda a, c, b: ops.add_rms_norm(a, c, b, 1e-6), in_dims=(xd, 0, in_dims[1]))(xb, rb, wb)
    ref_h = vmap(lambda a, c: a + c, in_dims=(xd, 0))(xb, rb)
    _close(got[1], ref_h)
    _close(got[0], vmap(lambda h, b: F.rms_norm(h, (6,), b, 1e-6), in_dims=(0, in_dims[1]))(ref_h, wb))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("x_dim", [0, 1])
def test_rms_norm_and_add_without_weight_or_eps(x_dim, device):
    # Called with x (and residual) alone: in_dims then has no entry for the
    # weight (it raised IndexError in the batching rule).
    xb, rb = _batched(_randn(3, 4, 6, device=device), x_dim), _batched(_randn(3, 4, 6, device=device, seed=1), 0)
    ref = vmap(lambda a: F.rms_norm(a, (6,), None, 1e-6), in_dims=x_dim)(xb)
    _close(vmap(ops.rms_norm, in_dims=x_dim)(xb), ref)
    out, h = vmap(ops.add_rms_norm, in_dims=(x_dim, 0))(xb, rb)
    ref_h = vmap(lambda a, c: a + c, in_dims=(x_dim, 0))(xb, rb)
    _close(h, ref_h)
    _close(out, vmap(lambda a: F.rms_norm(a, (6,), None, 1e-6))(ref_h))


@pytest.mark.parametrize("in_dims", [(0, None), (0, 0), (None, 0)])
def test_per_sample_grads_rms_norm(in_dims):
    x, w, g = _randn(3, 4, 6), _randn(3, 6, seed=1), _randn(3, 4, 6, seed=2)
    xb, wb = _batched(x, in_dims[0]), _batched(w, in_dims[1])

    def loss(fn):
        return lambda a, b, gg: (fn(a, b) * gg).sum()

    got = vmap(torch.func.grad(loss(lambda a, b: ops.rms_norm(a, b, 1e-6)), argnums=(0, 1)), in_dims=(*in_dims, 0))(
        xb, wb, g
    )
    ref = vmap(torch.func.grad(loss(lambda a, b: F.rms_norm(a, (6,), b, 1e-6)), argnums=(0, 1)), in_dims=(*in_dims, 0))(
        xb, wb, g
    )
    for a, b in zip(got, ref):
        _close(a, b)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("in_dims", [(0, None, None), (1, None, None), (0, 0, 0), (None, 0, 0), (2, 1, 1)])
@pytest.mark.parametrize("interleaved", [False, True])
def test_rotary(interleaved, in_dims, device):
    x, c, s = (
        _randn(3, 2, 5, 8, device=device),
        _randn(3, 5, 3, device=device, seed=1),
        _randn(3, 5, 3, device=device, seed=2),
    )

    def ref(xx, cc, ss):
        rd = 2 * cc.shape[-1]
        x1 = xx[..., 0:rd:2] if interleaved else xx[..., : rd // 2]
        x2 = xx[..., 1:rd:2] if interleaved else xx[..., rd // 2 : rd]
        o1, o2 = x1 * cc - x2 * ss, x2 * cc + x1 * ss
        rot = torch.stack((o1, o2), -1).flatten(-2) if interleaved else torch.cat((o1, o2), -1)
        return torch.cat((rot, xx[..., rd:]), -1)

    args = (_batched(x, in_dims[0]), _batched(c, in_dims[1]), _batched(s, in_dims[2]))
    if all(d is None for d in in_dims):
        return
    _close(
        vmap(lambda a, b, d: ops.rotary_embedding(a, b, d, interleaved), in_dims=in_dims)(*args),
        vmap(ref, in_dims=in_dims)(*args),
    )
    _close(
        vmap(lambda a, b, d: ops.rotary_embedding_backward(a, b, d, interleaved), in_dims=in_dims)(*args),
        vmap(lambda a, b, d: ref(a, b, -d), in_dims=in_dims)(*args),
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("in_dims", [(0, 0), (1, None), (None, 0), (-1, 0)])
def test_swiglu_geglu_and_backward(in_dims, device):
    g, u, d = (
        _randn(3, 4, 6, device=device),
        _randn(3, 4, 6, device=device, seed=1),
        _randn(3, 4, 6, device=device, seed=2),
    )
    gb, ub = _batched(g, in_dims[0]), _batched(u, in_dims[1])
    _close(vmap(ops.swiglu, in_dims=in_dims)(gb, ub), vmap(lambda a, b: F.silu(a) * b, in_dims=in_dims)(gb, ub))
    _close(
        vmap(lambda a, b: ops.geglu(a, b, "tanh"), in_dims=in_dims)(gb, ub),
        vmap(lambda a, b: F.gelu(a, approximate="tanh") * b, in_dims=in_dims)(gb, ub),
    )
    if in_dims[0] is not None:  # the one-tensor form
        _close(
            vmap(ops.swiglu, in_dims=in_dims[:1])(gb),
            vmap(lambda a: F.silu(a[..., :3]) * a[..., 3:], in_dims=in_dims[:1])(gb),
        )
    got = vmap(lambda dd, a, b: ops.glu_backward(dd, a, b, "silu"), in_dims=(0, *in_dims))(d, gb, ub)
    gf = g if in_dims[0] is not None else g[0].expand(3, 4, 6)
    uf = u if in_dims[1] is not None else u[0].expand(3, 4, 6)
    ref = vmap(lambda dd, a, b: ops.glu_backward(dd, a, b, "silu"))(d, gf, uf)
    _close(got[0], ref[0])
    _close(got[1], ref[1])


# ---------------------------------------------------------------------------- every op of the table
def _table_samples(op, seed):
    make = op.small if op.small is not None else op.samples
    return [s for s in make("cpu", F64, seed) if all(a.numel() > 0 for a in s.args if isinstance(a, torch.Tensor))]


VMAP_CASES = [(op, k) for op in op_db.OPS if op.vmap for k in range(len(_table_samples(op, 0)))]


@pytest.mark.parametrize("op", [op for op in op_db.OPS if not op.vmap], ids=lambda op: op.name)
def test_vmap_is_refused_by_name_where_the_table_says_so(op):
    sample = op.samples("cpu", F64)[0]
    where = [i for i, a in enumerate(sample.args) if isinstance(a, torch.Tensor) and a.is_floating_point()]
    args = list(sample.args)
    args[where[0]] = torch.stack([args[where[0]]] * 2)
    with pytest.raises(RuntimeError, match=rf"teachcompute_ext.{op.name}: vmap is not supported"):
        vmap(lambda t: op_db.call(op, op_db.Sample(tuple(args[: where[0]]) + (t,) + tuple(args[where[0] + 1 :]))))(
            args[where[0]]
        )


@pytest.mark.parametrize("op,k", VMAP_CASES, ids=lambda v: v.name if hasattr(v, "name") else str(v))
def test_vmap_over_every_op_of_the_table_is_the_op_per_sample(op, k):
    """vmap over a batch of 3 samples (every tensor argument batched, indices too) equals the op
    called on each sample: every op and backward op has a batching rule, one call for the batch."""
    samples = [_table_samples(op, seed)[k] for seed in range(3)]
    where = [i for i, a in enumerate(samples[0].args) if isinstance(a, torch.Tensor)]

    def fn(*tensors):
        args = list(samples[0].args)
        for i, t in zip(where, tensors):
            args[i] = t
        return op_db.call(op, op_db.Sample(tuple(args), samples[0].kwargs))

    batched = [torch.stack([s.args[i] for s in samples]) for i in where]
    got = vmap(fn)(*batched)
    want = [fn(*[s.args[i] for i in where]) for s in samples]
    got = got if isinstance(got, tuple) else (got,)
    want = [w if isinstance(w, tuple) else (w,) for w in want]
    for j, g in enumerate(got):
        torch.testing.assert_close(g, torch.stack([w[j] for w in want]), rtol=1e-12, atol=1e-12)
