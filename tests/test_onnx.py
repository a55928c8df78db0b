"""ONNX export (torch.onnx.export(dynamo=True) with teachcompute_ext.onnx.custom_translation_table):
each op becomes standard ONNX operators, and onnxruntime, on fresh random inputs (not
those of the export), gives what the model gives in eager mode (the ops themselves are
checked against torch in the other test files)."""

import pytest
import torch

import teachcompute_ext

import op_db

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import teachcompute_ext.onnx  # noqa: E402  (needs onnxscript)

_ops = torch.ops.teachcompute_ext
TABLE = teachcompute_ext.onnx.custom_translation_table
REDUCTIONS = ["none", "add", "mul", "max", "min"]


class Fn(torch.nn.Module):
    """A module around a function of the inputs (and of optional parameters)."""

    def __init__(self, fn, **params):
        super().__init__()
        self.fn = fn
        for name, p in params.items():
            self.register_parameter(name, torch.nn.Parameter(p, requires_grad=False))

    def forward(self, *args):
        return self.fn(self, *args)


def session(proto):
    """onnxruntime on one CPU thread, after checking the model holds standard ops only."""
    onnx.checker.check_model(proto)
    domains = {n.domain for n in proto.graph.node}
    assert domains <= {"", "ai.onnx"}, f"non-standard nodes: {sorted(domains)}"
    assert not proto.functions, [f.name for f in proto.functions]
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])


def export(model, args, dynamic_shapes=None):
    program = torch.onnx.export(
        model.eval(), args, dynamo=True, custom_translation_table=TABLE, dynamic_shapes=dynamic_shapes, verbose=False
    )
    return program.model_proto, session(program.model_proto)


def check(session, model, args, rtol=1e-5, atol=1e-5):
    """onnxruntime against the eager op on the same (fresh) inputs."""
    feeds = {i.name: a.numpy() for i, a in zip(session.get_inputs(), args)}
    got = session.run(None, feeds)
    with torch.no_grad():
        expected = model(*args)
    if isinstance(expected, torch.Tensor):
        expected = (expected,)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        torch.testing.assert_close(torch.from_numpy(g), e, rtol=rtol, atol=atol, equal_nan=True)


def op_types(proto):
    return {n.op_type for n in proto.graph.node}


# ---- reduce ----------------------------------------------------------------------------------
# One export per op; each model returns the op with and without keepdim, or on two dims.
REDUCE_CASES = {
    "vector_sum": (lambda m, x: teachcompute_ext.vector_sum(x), "ReduceSum"),
    "reduce_sum": (
        lambda m, x: (teachcompute_ext.reduce_sum(x, [0, 2]), teachcompute_ext.reduce_sum(x, None, True)),
        "ReduceSum",
    ),
    "reduce_mean": (
        lambda m, x: (teachcompute_ext.reduce_mean(x, [-1], True), teachcompute_ext.reduce_mean(x)),
        "ReduceMean",
    ),
    "reduce_max": (
        lambda m, x: (*teachcompute_ext.reduce_max(x, 1), *teachcompute_ext.reduce_max(x, -1, True)),
        "ArgMax",
    ),
    "reduce_min": (
        lambda m, x: (*teachcompute_ext.reduce_min(x, 0), *teachcompute_ext.reduce_min(x, 2, True)),
        "ArgMin",
    ),
    "logsumexp": (
        lambda m, x: (teachcompute_ext.logsumexp(x, [1]), teachcompute_ext.logsumexp(x, [0, 2], True)),
        "Exp",
    ),
    "softmax": (lambda m, x: (teachcompute_ext.softmax(x, -1), teachcompute_ext.softmax(x, 0)), "Softmax"),
    "log_softmax": (lambda m, x: teachcompute_ext.log_softmax(x, 1), "LogSoftmax"),
}


@pytest.mark.parametrize("case", list(REDUCE_CASES))
def test_reduce(case):
    fn, onnx_op = REDUCE_CASES[case]
    model = Fn(fn)
    proto, sess = export(model, (torch.randn(3, 5, 7),))
    assert onnx_op in op_types(proto)
    check(sess, model, (torch.randn(3, 5, 7),))
    if case == "logsumexp":
        # exp(100) overflows float32: the graph must shift by the max, as torch does; a
        # slice of -inf gives -inf (not NaN), a +inf gives +inf.
        x = torch.randn(3, 5, 7) * 30 + 100
        x[1, :, 2] = -torch.inf
        x[2, 3, 4] = torch.inf
        check(sess, model, (x,))
    if case in ("reduce_max", "reduce_min"):
        # NaN wins with the index of the first NaN, as torch.max / torch.min
        # (onnxruntime's ReduceMax / ArgMax skip it).
        x = torch.randn(3, 5, 7)
        x[0, 2, 3] = x[0, 4, 3] = x[1, 1, 0] = x[2, 0, 6] = torch.nan
        check(sess, model, (x,))


def test_half_inputs():
    # float16 in, float16 out, accumulated in float32 in between as the kernels do.
    def fn(m, x):
        return (
            teachcompute_ext.vector_sum(x),
            teachcompute_ext.reduce_mean(x, [1]),
            teachcompute_ext.logsumexp(x, [1]),
            teachcompute_ext.softmax(x, -1),
        )

    model = Fn(fn)
    _, sess = export(model, (torch.randn(4, 64, dtype=torch.float16),))
    check(sess, model, (torch.randn(4, 64, dtype=torch.float16),), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_half_scatters_and_bags(mode):
    # ScatterND with a reduction in float32 between the casts, as the kernels
    # accumulate (onnxruntime's CPU ScatterND refuses float16 with a reduction).
    idx, off = torch.tensor([3, 0, 7, 7, 1, 9, 2]), torch.tensor([0, 3, 3])

    def fn(m, w, u):
        return (
            teachcompute_ext.embedding_bag(w, idx, off, mode),
            teachcompute_ext.embedding_bag(w, idx.view(7, 1), None, mode),
            teachcompute_ext.scatter_nd(w, idx[:, None], u, "add"),
            teachcompute_ext.scatter_nd_of_shape([10, 4], idx[:, None], u),
            teachcompute_ext.masked_scatter_nd_of_shape([10, 4], idx[:, None], u, 7),
        )

    model = Fn(fn)
    args = (torch.randn(10, 4, dtype=torch.float16), torch.randn(7, 4, dtype=torch.float16))
    _, sess = export(model, args)
    check(sess, model, args, rtol=1e-3, atol=1e-3)


# ---- scatter_nd ------------------------------------------------------------------------------
def _scatter_args(k=1, index_dtype=torch.int64):
    data = torch.randn(6, 4, 3)
    # Duplicates (9 updates into 6 or 24 rows) and negative indices.
    indices = torch.stack([torch.randint(-s, s, (9,)) for s in data.shape[:k]], dim=-1).to(index_dtype)
    updates = torch.randn(9, *data.shape[k:])
    return data, indices, updates


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_scatter_nd(reduction):
    def fn(m, d, i, u, i2, u2):  # index tuples of 1 (int64) and 2 (int32) dims
        return teachcompute_ext.scatter_nd(d, i, u, reduction), teachcompute_ext.scatter_nd(d, i2, u2, reduction)

    def inputs():
        return (*_scatter_args(), *_scatter_args(2, torch.int32)[1:])

    model = Fn(fn)
    proto, sess = export(model, inputs())
    assert "ScatterND" in op_types(proto)
    check(sess, model, inputs())


def test_scatter_nd_constant_indices_covering_the_first_dim():
    # Indices [[0], ..., [n-1]] known at export time: onnxscript's optimizer (0.7.2) turns
    # such a ScatterND into its updates whatever the reduction, dropping data.
    def fn(m, d, u):
        rows = torch.arange(d.shape[0]).unsqueeze(1)
        return tuple(
            out
            for r in REDUCTIONS[1:]
            for out in (
                teachcompute_ext.scatter_nd(d, rows, u, r),
                teachcompute_ext.scatter_nd_of_shape(d.shape, rows, u, r),
            )
        )

    model = Fn(fn)
    _, sess = export(model, (torch.randn(6, 4), torch.randn(6, 4)))
    check(sess, model, (torch.randn(6, 4), torch.randn(6, 4)))


def test_scatter_nd_inplace():
    # torch.export makes an auto_functionalized_v2 node of scatter_nd_, which torch.onnx
    # cannot translate: teachcompute_ext.onnx.export rewrites it first.
    def fn(m, d, i, u):
        out = d * 2
        teachcompute_ext.scatter_nd_(out, i, u, "add")
        return out + 1

    model = Fn(fn).eval()
    proto = teachcompute_ext.onnx.export(model, _scatter_args(), verbose=False).model_proto
    sess = session(proto)
    assert "ScatterND" in op_types(proto)
    check(sess, model, _scatter_args())


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_scatter_nd_of_shape(reduction):
    model = Fn(lambda m, i, u: teachcompute_ext.scatter_nd_of_shape((6, 4, 3), i, u, reduction))
    proto, sess = export(model, _scatter_args()[1:])
    assert {"ConstantOfShape", "ScatterND"} <= op_types(proto)
    check(sess, model, _scatter_args()[1:])


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_masked_scatter_nd_of_shape(reduction):
    # masked_value 2 is a row (the usual padding index); 6 is past the end, which the
    # skipped updates may hold too.
    def fn(m, i, i_past, u):
        return (
            teachcompute_ext.masked_scatter_nd_of_shape((6, 4, 3), i, u, 2, reduction),
            teachcompute_ext.masked_scatter_nd_of_shape((6, 4, 3), i_past, u, 6, reduction),
        )

    def inputs():
        _, indices, updates = _scatter_args()
        indices[:3] = 2  # some masked for sure
        past = indices.clone()
        past[-3:] = 6
        return indices, past, updates

    model = Fn(fn)
    _, sess = export(model, inputs())
    check(sess, model, inputs())


# ---- embedding -------------------------------------------------------------------------------
def test_embedding():
    def fn(m, i64, i32):
        return teachcompute_ext.embedding(m.weight, i64, 0), teachcompute_ext.embedding(m.weight, i32)

    def inputs():
        return torch.randint(0, 20, (3, 4)), torch.randint(0, 20, (7,), dtype=torch.int32)

    model = Fn(fn, weight=torch.randn(20, 5))
    proto, sess = export(model, inputs())
    assert "Gather" in op_types(proto)
    check(sess, model, inputs())


ROWS, DIM, N, BAGS, PAD = 10, 6, 17, 5, 3


def _bag_inputs(layout):
    """Random indices with duplicates and padding, a bag of padding only; for 1-D layouts
    offsets with an empty bag."""
    if layout == "2d":
        indices = torch.randint(0, ROWS, (BAGS, 4))
        indices[1] = PAD
        return (indices,)
    end = N - 3 if layout == "1d_last" else N  # include_last_offset: indices past end are in no bag
    cuts = torch.sort(torch.randint(0, end + 1, (BAGS - 2,))).values
    last = [end] if layout == "1d_last" else []
    offsets = torch.tensor([0, cuts[0].item(), *cuts.tolist(), *last])  # bag 1 is empty
    indices = torch.randint(0, ROWS, (N,))
    indices[offsets[2] : offsets[3]] = PAD
    return indices, offsets


@pytest.mark.parametrize("layout", ["2d", "1d", "1d_last"])
@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_embedding_bag(mode, layout):
    # float64 in one layout: the translation's constants must follow the weight's dtype.
    dtype = torch.float64 if layout == "1d" else torch.float32

    def fn(m, indices, offsets=None):
        def bag(padding_idx, weights=None):
            return teachcompute_ext.embedding_bag(
                m.weight, indices, offsets, mode, weights, padding_idx, layout == "1d_last"
            )

        outs = (bag(None), bag(PAD))
        if mode == "sum":  # per_sample_weights
            outs += (bag(None, torch.cos(indices.to(dtype))), bag(PAD, torch.cos(indices.to(dtype))))
        return outs

    model = Fn(fn, weight=torch.randn(ROWS, DIM, dtype=dtype))
    proto, sess = export(model, _bag_inputs(layout))
    assert "Gather" in op_types(proto)
    for _ in range(3):
        check(sess, model, _bag_inputs(layout))


def test_embedding_bag_forward_max_indices():
    # The argmax rows that max mode keeps for its backward (-1 for an empty bag).
    def fn(m, indices, offsets):
        return (
            *_ops.embedding_bag_forward(m.weight, indices, offsets, "max", None, PAD, False),
            *_ops.embedding_bag_forward(
                m.weight, indices.reshape(-1, 1)[:15].reshape(5, 3), None, "max", None, PAD, False
            ),
        )

    model = Fn(fn, weight=torch.randn(ROWS, DIM))
    _, sess = export(model, _bag_inputs("1d"))
    for _ in range(3):
        check(sess, model, _bag_inputs("1d"))


# ---- a dynamic batch -------------------------------------------------------------------------
class BagModel(torch.nn.Module):
    """Several op families on a [batch, length] token tensor; the batch stays separable."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(30, 8), requires_grad=False)

    def forward(self, tokens):
        b, n = tokens.shape
        h = teachcompute_ext.embedding_bag(self.weight, tokens.reshape(-1), torch.arange(0, b * n, n), "mean")
        h = h + teachcompute_ext.reduce_mean(teachcompute_ext.embedding(self.weight, tokens), [1])
        rows = torch.arange(b).unsqueeze(1)
        h = teachcompute_ext.scatter_nd_of_shape(h.shape, rows, h, "add") + teachcompute_ext.scatter_nd(
            h, rows, h, "add"
        )
        return teachcompute_ext.softmax(h, -1), teachcompute_ext.logsumexp(h, [1])


def test_dynamic_batch():
    model = BagModel()
    batch = torch.export.Dim("batch", min=2, max=64)
    proto, sess = export(model, (torch.randint(0, 30, (6, 5)),), dynamic_shapes={"tokens": {0: batch}})
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic, not 6
    for b in (2, 9, 33):
        check(sess, model, (torch.randint(0, 30, (b, 5)),))


# ---- matmul family ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "trans_a,trans_b,alpha", [(False, False, 1.0), (True, False, 0.5), (False, True, 2.0), (True, True, -1.5)]
)
def test_fused_matmul(trans_a, trans_b, alpha):
    def fn(m, a, b):
        return _ops.fused_matmul(a, b, alpha, trans_a, trans_b)

    def inputs():
        a = torch.randn(2, 3, 4, 5) if not trans_a else torch.randn(2, 3, 5, 4)
        b = torch.randn(3, 5, 6) if not trans_b else torch.randn(3, 6, 5)  # batch dims broadcast
        return a, b

    model = Fn(fn)
    proto, sess = export(model, inputs())
    assert "MatMul" in op_types(proto)
    check(sess, model, inputs(), rtol=1e-5, atol=1e-4)  # float32 dot products of 5 to 16 unit normals


@pytest.mark.parametrize("activation", ["none", "relu", "gelu", "gelu_tanh", "silu"])
def test_fused_linear(activation):
    def fn(m, x2, x3):  # Gemm for 2-D x, MatMul + Add above; with and without bias
        return (
            _ops.fused_linear(x2, m.weight, m.bias, activation),
            _ops.fused_linear(x3, m.weight, m.bias, activation),
            _ops.fused_linear(x3, m.weight, None, activation),
        )

    def inputs():
        return torch.randn(7, 16), torch.randn(2, 5, 16)

    model = Fn(fn, weight=torch.randn(12, 16), bias=torch.randn(12))
    _, sess = export(model, inputs())
    check(sess, model, inputs(), rtol=1e-5, atol=1e-4)


def test_model_calling_every_op():
    """The users' model (tests/test_users_paths.py: every op, the in-place scatter_nd_ too)
    through teachcompute_ext.onnx.export, with a dynamic batch."""
    from test_users_paths import TinyModel

    torch.manual_seed(0)
    model = TinyModel().eval()
    batch = torch.export.Dim("batch", min=2, max=64)
    program = teachcompute_ext.onnx.export(
        model, (torch.randint(0, 100, (6, 5)),), dynamic_shapes={"tokens": {0: batch}}
    )
    sess = session(program.model_proto)
    for b in (3, 17):
        check(sess, model, (torch.randint(0, 100, (b, 5)),), rtol=1e-4, atol=1e-4)


# ---- integer and bool dtypes, torch.matmul's 1-D rules (issue 14) ---------------------------
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.uint8, torch.int8, torch.int16, torch.bool])
def test_integer_reductions(dtype):
    def fn(m, x):
        return (
            teachcompute_ext.vector_sum(x),
            teachcompute_ext.reduce_sum(x, [1]),
            *teachcompute_ext.reduce_max(x, 0),
            *teachcompute_ext.reduce_min(x, 1, True),
        )

    def inputs():
        if dtype == torch.bool:
            return (torch.rand(6, 9) > 0.5,)
        return (torch.randint(0, 5, (6, 9)).to(dtype),)  # ties: the first index of the extremum

    model = Fn(fn)
    _, sess = export(model, inputs())
    check(sess, model, inputs())  # int64 sums, as torch's


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_scatter_nd_integer_data(reduction, dtype):
    def fn(m, data, indices, updates):
        return teachcompute_ext.scatter_nd(data, indices, updates, reduction)

    def inputs():
        return (
            torch.randint(-9, 9, (5, 3)).to(dtype),
            torch.randint(0, 5, (7, 1)),
            torch.randint(-9, 9, (7, 3)).to(dtype),
        )

    model = Fn(fn)
    _, sess = export(model, inputs())
    check(sess, model, inputs())


def test_fused_matmul_and_linear_vectors():
    def fn(m, a, v, x):
        return (
            _ops.fused_matmul(a, v, 0.5, True, True),  # matrix @ vector, trans_b ignored on a vector
            _ops.fused_matmul(v, a, 1.0, False, True),  # vector @ matrix
            _ops.fused_matmul(v, v),  # dot product
            _ops.fused_linear(x, m.w1, m.b0, "silu"),
        )  # F.linear with a 1-D weight and a 0-d bias

    def inputs():
        return torch.randn(6, 6), torch.randn(6), torch.randn(2, 3, 6)

    model = Fn(fn, w1=torch.randn(6), b0=torch.randn(()))
    _, sess = export(model, inputs())
    check(sess, model, inputs(), rtol=1e-5, atol=1e-4)


# ---- llama: rms_norm, add_rms_norm, rotary_embedding, swiglu, geglu (issue 13) ---------------
def _angles(*shape, dtype=torch.float32):
    """cos and sin of random angles, as a rotary table holds."""
    theta = torch.rand(*shape) * 6.3
    return theta.cos().to(dtype), theta.sin().to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rms_norm(dtype):
    # The public ops and their *_forward ops (the composites' decomposition: rstd too), with
    # and without weight, on an odd width; float64: the eps constant follows x's dtype.
    def fn(m, x, r):
        return (
            teachcompute_ext.rms_norm(x, m.weight, 1e-5),
            teachcompute_ext.rms_norm(x),
            *teachcompute_ext.add_rms_norm(x, r, m.weight),
            *_ops.rms_norm_forward(x, m.weight, 1e-6),
            *_ops.rms_norm_forward(x, None, 0.1),
            *_ops.add_rms_norm_forward(x, r, m.weight, 1e-6),
            *_ops.add_rms_norm_forward(x, r, None, 1e-6),
        )

    def inputs():
        return torch.randn(3, 5, 33, dtype=dtype), torch.randn(3, 5, 33, dtype=dtype)

    model = Fn(fn, weight=torch.randn(33, dtype=dtype))
    proto, sess = export(model, inputs())
    assert {"ReduceMean", "Sqrt"} <= op_types(proto)
    check(sess, model, inputs())


@pytest.mark.parametrize("interleaved", [False, True])
def test_rotary_embedding(interleaved):
    # q and k as [batch, heads, seq, head_dim] with cos/sin [seq, rd/2] and [batch, 1, seq, rd/2],
    # and as [batch, seq, heads, head_dim] with [seq, 1, rd/2]; rotary_dim 16 = head_dim and
    # rotary_dim 6 < head_dim (the last 10 lanes pass through).
    def fn(m, q, k, cos, sin, cos_b, sin_b, cos_p, sin_p):
        rope = teachcompute_ext.rotary_embedding
        return (
            rope(q, cos, sin, interleaved),
            rope(k, cos_b, sin_b, interleaved),
            rope(q.transpose(1, 2), cos.unsqueeze(1), sin.unsqueeze(1), interleaved),
            rope(q, cos_p, sin_p, interleaved),
        )

    def inputs():
        return (
            torch.randn(2, 3, 5, 16),
            torch.randn(2, 3, 5, 16),
            *_angles(5, 8),
            *_angles(2, 1, 5, 8),
            *_angles(5, 3),
        )

    model = Fn(fn)
    _, sess = export(model, inputs())
    check(sess, model, inputs())


@pytest.mark.parametrize("activation", ["silu", "gelu", "gelu_tanh"])
def test_glu(activation):
    # gate and up separate, and the one-tensor form [..., 2 I] (the halves of one GEMM's output).
    def glu(gate, up=None):
        if activation == "silu":
            return teachcompute_ext.swiglu(gate, up)
        return teachcompute_ext.geglu(gate, up, "tanh" if activation == "gelu_tanh" else "none")

    def fn(m, gate, up, both):
        return glu(gate, up), glu(both)

    def inputs():
        return torch.randn(2, 5, 11), torch.randn(2, 5, 11), torch.randn(3, 4, 22)

    model = Fn(fn)
    _, sess = export(model, inputs())
    check(sess, model, inputs())


def test_llama_half_inputs():
    # float16 in and out, computed in float32 in between as the kernels do; a float32 weight
    # on a float16 x, which F.rms_norm allows.
    def fn(m, x, r, q, cos, sin, both):
        return (
            teachcompute_ext.rms_norm(x, m.weight),
            teachcompute_ext.rms_norm(x, m.weight32),
            *_ops.add_rms_norm_forward(x, r, m.weight, 1e-6),
            teachcompute_ext.rotary_embedding(q, cos, sin),
            teachcompute_ext.rotary_embedding(q, cos, sin, True),
            teachcompute_ext.swiglu(both),
            teachcompute_ext.geglu(both[..., :8], both[..., 8:]),
        )

    def inputs():
        h = torch.float16
        return (
            torch.randn(4, 64, dtype=h),
            torch.randn(4, 64, dtype=h),
            torch.randn(2, 3, 5, 16, dtype=h),
            *_angles(5, 8, dtype=h),
            torch.randn(4, 16, dtype=h),
        )

    model = Fn(fn, weight=torch.randn(64, dtype=torch.float16), weight32=torch.randn(64))
    _, sess = export(model, inputs())
    check(sess, model, inputs(), rtol=1e-3, atol=1e-3)


class LlamaBlock(torch.nn.Module):
    """The ops as a Llama decoder layer chains them: add_rms_norm, q and k rotated with a table
    sliced to the sequence, attention, add_rms_norm, a SwiGLU MLP from one GEMM."""

    def __init__(self, hidden=32, heads=4, inter=48, max_seq=64):
        super().__init__()
        self.heads = heads
        self.norm1 = torch.nn.Parameter(torch.randn(hidden), requires_grad=False)
        self.norm2 = torch.nn.Parameter(torch.randn(hidden), requires_grad=False)
        self.qkv = torch.nn.Parameter(torch.randn(3 * hidden, hidden) / hidden**0.5, requires_grad=False)
        self.gate_up = torch.nn.Parameter(torch.randn(2 * inter, hidden) / hidden**0.5, requires_grad=False)
        self.down = torch.nn.Parameter(torch.randn(hidden, inter) / inter**0.5, requires_grad=False)
        head_dim = hidden // heads
        inv = 1.0 / 10000 ** (torch.arange(0, head_dim, 2).float() / head_dim)
        angles = torch.outer(torch.arange(max_seq).float(), inv)
        self.register_buffer("cos", angles.cos())
        self.register_buffer("sin", angles.sin())

    def forward(self, x, residual):
        b, s, d = x.shape
        h, residual = teachcompute_ext.add_rms_norm(x, residual, self.norm1)
        q, k, v = torch.nn.functional.linear(h, self.qkv).view(b, s, 3, self.heads, -1).unbind(2)
        cos, sin = self.cos[:s], self.sin[:s]
        q = teachcompute_ext.rotary_embedding(q.transpose(1, 2), cos, sin)
        k = teachcompute_ext.rotary_embedding(k.transpose(1, 2), cos, sin)
        a = torch.nn.functional.scaled_dot_product_attention(q, k, v.transpose(1, 2), is_causal=True)
        h, residual = teachcompute_ext.add_rms_norm(a.transpose(1, 2).reshape(b, s, d), residual, self.norm2)
        y = teachcompute_ext.swiglu(torch.nn.functional.linear(h, self.gate_up))
        return torch.nn.functional.linear(y, self.down), residual


def test_llama_block_dynamic_batch_and_sequence():
    torch.manual_seed(0)
    model = LlamaBlock()
    batch, seq = torch.export.Dim("batch", min=2, max=16), torch.export.Dim("seq", min=2, max=64)
    shapes = {"x": {0: batch, 1: seq}, "residual": {0: batch, 1: seq}}
    proto, sess = export(model, (torch.randn(3, 7, 32), torch.randn(3, 7, 32)), dynamic_shapes=shapes)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and dims[1].dim_param  # symbolic, not 3 and 7
    for b, s in ((2, 5), (5, 33)):
        check(sess, model, (torch.randn(b, s, 32), torch.randn(b, s, 32)), rtol=1e-4, atol=1e-4)


# ---- every op of the table ---------------------------------------------------------------------
ONNX_CASES = [(op, k) for op in op_db.PUBLIC if op.onnx for k in range(len(op.small("cpu", torch.float32)))]


@pytest.mark.parametrize("op,k", ONNX_CASES, ids=lambda v: v.name if hasattr(v, "name") else str(v))
def test_every_op_of_the_table(op, k):
    """Each small sample of the op table (tests/op_db.py), exported on one draw of its inputs and run
    by onnxruntime on another (the in-place op through teachcompute_ext.onnx.export)."""

    def tensors(seed):
        return [a for a in op.small("cpu", torch.float32, seed)[k].args if isinstance(a, torch.Tensor)]

    template = op.small("cpu", torch.float32, 0)[k]
    where = [i for i, a in enumerate(template.args) if isinstance(a, torch.Tensor)]

    def fn(m, *ts):
        args = list(template.args)
        for i, x in zip(where, ts):
            args[i] = x
        return op_db.call(op, op_db.Sample(tuple(args)))

    model = Fn(fn)
    if op.inplace:
        program = teachcompute_ext.onnx.export(model.eval(), tuple(tensors(0)))
        sess = session(program.model_proto)
    else:
        _, sess = export(model, tuple(tensors(0)))
    check(sess, model, tuple(tensors(1)), rtol=1e-4, atol=1e-4)


def test_every_op_of_the_table_has_a_translation():
    assert {op.name for op in op_db.PUBLIC if op.onnx} <= set(k.name().split("::")[1].split(".")[0] for k in TABLE) | {
        "scatter_nd_"
    }
