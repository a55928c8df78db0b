"""One entry per op of the package, in the spirit of torch's OpInfo (torch/testing/_internal/opinfo).

Each entry says, once, what every cross-cutting test needs to know of an op:

- ``samples(device, dtype)``: inputs that reach each of its code paths (short and long rows,
  aligned and odd widths, strided views, empty tensors, every mode and reduction);
- ``ref``: the same computation with torch's own ops (applied to float64 copies of the inputs
  for the correctness checks, to the inputs themselves under autocast);
- ``bad(device)``: bad inputs, the exception type and the words the error must contain;
- the dtypes it takes, whether it is differentiable, its autocast policy, its layout
  contract for Inductor, whether it has an ONNX translation.

The tensor arguments and their names come from the schema (``tensor_args``). The
tests that loop over the table: test_op_db.py (coverage, correctness, the fake kernels'
refusals against the real kernels', compiled autograd), test_devices.py (device mixes),
test_vmap.py, test_autocast.py, test_torch_paths.py (double backward, host reads, CUDA
graphs, forward AD, layout tags), test_users_paths.py (the users' model calls every op),
test_onnx.py, and every_op.py (the compute-sanitizer workload). A public op with no entry
fails test_op_db.py: adding an op means adding its entry here.
"""

import dataclasses
from typing import Any, Callable

import torch
import torch.nn.functional as F

import teachcompute_ext as tce

_ops = torch.ops.teachcompute_ext
FLOAT = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
INTS = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.bool)


@dataclasses.dataclass
class Sample:
    """One call: op(*args, **kwargs). ``grad``: whether its floating tensors get gradients."""

    args: tuple
    kwargs: dict = dataclasses.field(default_factory=dict)
    name: str = ""
    grad: bool = True

    def map(self, fn):
        """The sample with fn applied to each tensor argument (lists of tensors too)."""

        def one(a):
            if isinstance(a, torch.Tensor):
                return fn(a)
            if isinstance(a, (list, tuple)) and a and all(isinstance(v, torch.Tensor) for v in a):
                return type(a)(fn(v) for v in a)
            return a

        return Sample(
            tuple(one(a) for a in self.args), {k: one(v) for k, v in self.kwargs.items()}, self.name, self.grad
        )

    def float_positions(self):
        return [i for i, a in enumerate(self.args) if isinstance(a, torch.Tensor) and a.is_floating_point()]


@dataclasses.dataclass
class Bad:
    """A call the op refuses: exception type and the words of its message (a regex).
    ``values``: the refusal reads tensor values (an index out of range), which a fake
    kernel cannot see; the others are refused by the fake kernel with the same words."""

    args: tuple
    error: type
    words: str
    values: bool = False


@dataclasses.dataclass
class OpInfo:
    name: str
    family: str
    samples: Callable[..., list]
    ref: Any = None
    dtypes: tuple = FLOAT
    differentiable: bool = True
    # torch's policy for the op's counterpart (csrc/common/autocast.h): "lower" (the autocast
    # dtype, as matmul), "float32" (float32 on CUDA, the input dtype on the CPU, as softmax),
    # "promote" (mixed dtypes promote, as x + r), None (no autocast kernel: the input dtype).
    autocast: str = None
    layout: str = "contiguous"  # "any" (flexible_layout), "contiguous" (needs_contiguous_strides), "composite"
    onnx: bool = True
    bad: Callable[..., list] = lambda device: []
    public: bool = True
    inplace: bool = False  # writes arguments (call it on copies; the copies are its result)
    vmap: bool = True  # False: vmap is refused by name
    tol: dict = dataclasses.field(default_factory=dict)  # dtype -> (rtol, atol) over the defaults
    # small(device, dtype, seed): a few tiny samples, one per mode, for the costly paths (gradgradcheck,
    # CUDA graphs, host-read tracing, vmap, autocast, ONNX); the first is the op's plain call
    small: Callable[..., list] = None

    @property
    def overload(self):
        return getattr(_ops, self.name).default

    @property
    def op(self):
        """The function a user calls: the public one, or the op itself for an internal op."""
        return getattr(tce, self.name) if self.public else self.overload

    @property
    def mutated(self):
        """Positions of the arguments the op writes (Tensor(a!) in its schema)."""
        return [i for i, a in enumerate(self.schema.arguments) if a.alias_info is not None and a.alias_info.is_write]

    @property
    def error_name(self):
        """The op its error messages name: a *_forward op speaks for its public op."""
        return self.name.removesuffix("_forward")

    @property
    def schema(self):
        return self.overload._schema

    def tensor_args(self):
        """{position: name} of the schema's tensor arguments (optional ones included)."""
        out = {}
        for i, a in enumerate(self.schema.arguments):
            t = a.type
            if isinstance(t, torch.OptionalType):
                t = t.getElementType()
            if isinstance(t, torch.TensorType):
                out[i] = a.name
        return out

    def tolerance(self, dtype):
        default = {
            torch.float64: (1e-7, 1e-7),
            torch.float32: (1e-4, 1e-4),
            torch.float16: (1e-2, 1e-2),
            torch.bfloat16: (2e-2, 2e-2),
        }
        return self.tol.get(dtype, default.get(dtype, (0, 0)))


# ---- input makers ----------------------------------------------------------------------------------
def _gen(k, seed):
    """The generator of sample set k; another seed gives other values of the same shapes."""
    return torch.Generator().manual_seed(k + 1000 * seed)


def _r(g, *shape, dtype=torch.float32, device="cpu", scale=1.0):
    shape = () if shape == ((),) else shape
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(device=device, dtype=dtype)


def _i(g, low, high, *shape, device="cpu", dtype=torch.int64):
    return torch.randint(low, high, tuple(shape), generator=g).to(device=device, dtype=dtype)


def _strided(t):
    """t's values in a non-contiguous view (every other column of a wider tensor)."""
    wide = torch.empty(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)
    wide[..., ::2] = t
    return wide[..., ::2]


def _float_ref(dtype):
    # the reference's inputs: float64 for floating dtypes, exact for integers
    return dtype if dtype in INTS else torch.float64


# ---- reduce ----------------------------------------------------------------------------------------
def _reduce_shapes(g, dtype, device):
    """The plans of the reduce kernels: rows short and long, columns wide and narrow, general, split."""

    def x(*s):
        s = () if s == ((),) else s
        if dtype == torch.bool:
            return _i(g, 0, 2, *s, device=device).bool()
        if dtype in INTS:
            return _i(g, -5 if dtype != torch.uint8 else 0, 6, *s, device=device, dtype=dtype)
        return _r(g, *s, dtype=dtype, device=device)

    return x


def _vector_sum_samples(device, dtype, seed=0):
    g = _gen(1, seed)
    x = _reduce_shapes(g, dtype, device)
    big = x(10007)
    return [
        Sample((x(7, 9),), name="small"),
        Sample((big[1:],), name="unaligned"),
        Sample((big[::3],), name="strided"),
        Sample((x(0, 4),), name="empty", grad=False),
        Sample((x(()),), name="0-d"),
    ]


def _sum_mean_samples(op):
    def samples(device, dtype, seed=0):
        g = _gen(2, seed)
        x = _reduce_shapes(g, dtype, device)
        out = [
            Sample((x(37, 300), [1]), name="rows"),
            Sample((x(3, 5000), [-1], True), name="long rows keepdim"),
            Sample((x(500, 70), [0]), name="columns"),
            Sample((x(9000, 3), [0]), name="tall narrow columns"),
            Sample((x(2, 50000), [1]), name="long rows split over tasks"),
            Sample((x(20, 30, 40), [0, 2]), name="general"),
            Sample((x(6, 9), None), name="all dims"),
            Sample((x(40, 30).t(), [1]), name="transposed"),
            Sample((x(3, 0, 4), [0]), name="empty", grad=False),
        ]
        if op == "reduce_mean":
            out = [s for s in out if s.name != "empty"]  # NaN over an empty dim: tested in test_reduce
        return out

    return samples


def _maxmin_samples(device, dtype, seed=0):
    g = _gen(3, seed)
    x = _reduce_shapes(g, dtype, device)
    return [
        Sample((x(37, 300), 1), name="rows"),
        Sample((x(500, 7), 0, True), name="columns keepdim"),
        Sample((x(4, 5, 6), -2), name="middle"),
        Sample((x(40, 30).t(), 1), name="transposed"),
        Sample((x(0, 4), 1), name="empty", grad=False),
    ]


def _logsumexp_samples(device, dtype, seed=0):
    g = _gen(4, seed)
    return [
        Sample((_r(g, 37, 300, dtype=dtype, device=device), [1]), name="rows"),
        Sample((_r(g, 500, 7, dtype=dtype, device=device, scale=30), [0]), name="columns, large values"),
        Sample((_r(g, 4, 5, 6, dtype=dtype, device=device), [0, 2], True), name="general"),
        Sample((_strided(_r(g, 9, 33, dtype=dtype, device=device)), [1]), name="strided"),
    ]


def _softmax_samples(device, dtype, seed=0):
    g = _gen(5, seed)
    return [
        Sample((_r(g, 33, 100, dtype=dtype, device=device), 1), name="warp rows"),
        Sample((_r(g, 3, 3000, dtype=dtype, device=device), -1), name="block rows"),
        Sample((_r(g, 50, 7, 9, dtype=dtype, device=device), 1), name="inner dim"),
        Sample((_r(g, 6, 9, dtype=dtype, device=device, scale=30), 0), name="columns, large values"),
        Sample((_strided(_r(g, 5, 40, dtype=dtype, device=device)), 1), name="strided"),
        Sample((_r(g, 0, 5, dtype=dtype, device=device), 1), name="empty", grad=False),
    ]


def _softmax_backward_samples(log):
    def samples(device, dtype, seed=0):
        g = _gen(6, seed)
        x = _r(g, 7, 33, dtype=dtype, device=device)
        out = torch.log_softmax(x, 1) if log else torch.softmax(x, 1)
        return [Sample((_r(g, 7, 33, dtype=dtype, device=device), out, 1), grad=False)]

    return samples


def _max_ref(which):
    def ref(x, dim, keepdim=False):
        return getattr(torch, which)(x, dim, keepdim)

    return ref


def _sum_ref(x, dim=None, keepdim=False):
    return torch.sum(x, dim=list(range(x.dim())) if not dim else dim, keepdim=keepdim)


def _mean_ref(x, dim=None, keepdim=False):
    return torch.mean(x, dim=list(range(x.dim())) if not dim else dim, keepdim=keepdim)


def _reduce_bad(name, dims_list):
    def bad(device):
        x = torch.randn(3, 4, device=device)
        dim = [2] if dims_list else 2
        out = [
            Bad((x, dim), IndexError, rf"teachcompute_ext.{name}: dim 2 out of range for argument 'dim'"),
            Bad(
                (torch.ones(3, 4, dtype=torch.complex64, device=device), [0] if dims_list else 0),
                TypeError,
                rf"teachcompute_ext.{name}: unsupported dtype torch.complex64 for argument 'x'",
            ),
        ]
        if dims_list:
            out.append(Bad((x, [1, -1]), RuntimeError, rf"teachcompute_ext.{name}: dim 1 appears more than once"))
        else:
            out.append(
                Bad(
                    (torch.empty(3, 0, device=device), 1),
                    IndexError,
                    rf"teachcompute_ext.{name}: cannot reduce over dim 1 of size 0",
                )
            )
        return out

    return bad


def _softmax_bad(name):
    def bad(device):
        x = torch.randn(3, 4, device=device)
        return [
            Bad((x, 2), IndexError, rf"teachcompute_ext.{name}: dim 2 out of range for argument 'dim'"),
            Bad(
                (torch.ones(3, 4, dtype=torch.int64, device=device), 1),
                TypeError,
                rf"teachcompute_ext.{name}: unsupported dtype torch.int64 for argument 'x'",
            ),
        ]

    return bad


def _softmax_backward_bad(name):
    def bad(device):
        g, y = torch.randn(3, 4, device=device), torch.randn(3, 4, device=device)
        return [
            Bad((g, y[:, :3], 1), RuntimeError, rf"teachcompute_ext.{name}: argument 'grad' has shape"),
            Bad((g, y.double(), 1), RuntimeError, rf"teachcompute_ext.{name}: argument 'grad' has dtype"),
            Bad((g, y, 3), IndexError, rf"teachcompute_ext.{name}: dim 3 out of range"),
        ]

    return bad


# ---- scatter_nd ------------------------------------------------------------------------------------
def _scatter_ref_one(data, indices, updates, reduction):
    """ONNX ScatterND read literally: the updates applied one by one in index order."""
    out = data.clone()
    k = indices.shape[-1]
    flat_i = indices.reshape(-1, k).tolist()
    flat_u = updates.reshape(len(flat_i), *updates.shape[indices.dim() - 1 :])
    for t, u in zip(flat_i, flat_u):
        t = tuple(t)
        if reduction == "none":
            out[t] = u
        elif reduction == "add":
            out[t] = out[t] + u
        elif reduction == "mul":
            out[t] = out[t] * u
        elif reduction == "max":
            out[t] = torch.maximum(out[t], u)
        else:
            out[t] = torch.minimum(out[t], u)
    return out


def _scatter_nd_ref(data, indices, updates, reduction="none"):
    return _scatter_ref_one(data, indices, updates, reduction)


def _of_shape_ref(shape, indices, updates, reduction="add"):
    return _scatter_ref_one(torch.zeros(shape, dtype=updates.dtype, device=updates.device), indices, updates, reduction)


def _masked_ref(shape, indices, updates, masked_value, reduction="add"):
    keep = indices[..., 0] != masked_value
    return _of_shape_ref(shape, indices[keep], updates[keep], reduction)


def _scatter_samples(device, dtype, seed=0):
    g = _gen(7, seed)
    out = []
    for red in ("none", "add", "mul", "max", "min"):
        if dtype == torch.bool and red != "none":
            continue
        data = _reduce_shapes(g, dtype, device)(50, 16)
        upd = _reduce_shapes(g, dtype, device)(30, 16)
        idx = _i(g, -50, 50, 30, 1, device=device)  # duplicates and negative indices
        out.append(Sample((data, idx, upd, red), name=f"{red} rows", grad=red in ("none", "add")))
    x = _reduce_shapes(g, dtype, device)
    add = "none" if dtype == torch.bool else "add"  # bool takes none only
    out += [
        Sample((x(5, 3, 4), _i(g, 0, 3, 6, 2, device=device), x(6, 4), add), name="k=2"),
        Sample((x(4, 5), _i(g, -4, 4, 3, 2, device=device, dtype=torch.int32), x(3), "none"), name="k=rank, int32"),
        Sample((x(10, 33), _i(g, 0, 10, 0, 1, device=device), x(0, 33), add), name="no updates"),
    ]
    return out


def _of_shape_samples(device, dtype, seed=0):
    g = _gen(8, seed)
    x = _reduce_shapes(g, dtype, device)
    add = "none" if dtype == torch.bool else "add"  # bool takes none only
    return [
        Sample(([50, 16], _i(g, -50, 50, 300, 1, device=device), x(300, 16), add), name="add duplicates"),
        Sample(([10, 4], _i(g, 0, 10, 12, 1, device=device), x(12, 4), "none"), name="none duplicates"),
        Sample(([5, 3, 4], _i(g, 0, 3, 12, 2, device=device), x(12, 4), add), name="k=2"),
        Sample(([6, 33], _i(g, 0, 6, 0, 1, device=device), x(0, 33), add), name="no updates"),
    ]


def _masked_samples(device, dtype, seed=0):
    g = _gen(9, seed)
    x = _reduce_shapes(g, dtype, device)
    return [
        Sample(
            ([50, 16], _i(g, 0, 50, 300, 1, device=device), x(300, 16), 3, "none" if dtype == torch.bool else "add"),
            name="add",
        ),
        Sample(([10, 4], _i(g, -1, 10, 12, 1, device=device), x(12, 4), -1, "none"), name="none, padding -1"),
    ]


def _scatter_bad(name):
    def bad(device):
        data, idx = torch.randn(5, 4, device=device), torch.tensor([[1], [2]], device=device)
        upd = torch.randn(2, 4, device=device)
        return [
            Bad(
                (data, idx, torch.randn(2, 3, device=device), "add"),
                RuntimeError,
                rf"teachcompute_ext.{name}: 'updates' has shape \[2, 3\] but indices \[2, 1\] and data \[5, 4\] "
                r"need \[2, 4\]",
            ),
            Bad(
                (data, torch.zeros(2, 3, dtype=torch.long, device=device), torch.randn(2, device=device), "add"),
                RuntimeError,
                rf"teachcompute_ext.{name}: the last dim of 'indices' \(k = 3\) must be in \[1, rank of data = 2\]",
            ),
            Bad(
                (data, idx, upd.double(), "add"),
                TypeError,
                rf"teachcompute_ext.{name}: 'updates' has dtype torch.float64 but 'data' has dtype torch.float32",
            ),
            Bad(
                (data, idx.float(), upd, "add"),
                TypeError,
                rf"teachcompute_ext.{name}: unsupported dtype torch.float32 for argument 'indices'",
            ),
            Bad(
                (data, idx, upd, "sum"),
                ValueError,
                rf"teachcompute_ext.{name}: unknown reduction 'sum' for argument 'reduction'",
            ),
            Bad(
                (data, torch.tensor([[1], [7]], device=device), upd, "add"),
                IndexError,
                rf"teachcompute_ext.{name}: index 7 out of range for dim 0 of size 5",
                values=True,
            ),
        ]

    return bad


def _of_shape_bad(device):
    idx = torch.tensor([[1], [2]], device=device)
    return [
        Bad(
            ([5, 4], idx, torch.randn(2, 3, device=device), "add"),
            RuntimeError,
            r"teachcompute_ext.scatter_nd_of_shape: 'updates' has shape \[2, 3\]",
        ),
        Bad(
            ([5, 4], idx, torch.randn(2, 4, device=device), "sum"),
            ValueError,
            r"teachcompute_ext.scatter_nd_of_shape: unknown reduction 'sum'",
        ),
        Bad(
            ([5, 3], torch.tensor([[-6]], device=device), torch.ones(1, 3, device=device), "add"),
            IndexError,
            r"teachcompute_ext.scatter_nd_of_shape: index -6 out of range for dim 0 of size 5",
            values=True,
        ),
    ]


def _masked_bad(device):
    return [
        Bad(
            ([5, 4], torch.zeros(2, 2, dtype=torch.long, device=device), torch.randn(2, device=device), -1, "add"),
            RuntimeError,
            r"teachcompute_ext.masked_scatter_nd_of_shape: 'indices' must end in a dim of 1",
        ),
        Bad(
            ([5, 3], torch.tensor([[7]], device=device), torch.ones(1, 3, device=device), -1, "add"),
            IndexError,
            r"teachcompute_ext.masked_scatter_nd_of_shape: index 7 out of range",
            values=True,
        ),
    ]


# ---- embedding -------------------------------------------------------------------------------------
_OFFSETS = [0, 3, 3, 40, 89]  # an empty bag and a long last one


def _embedding_samples(device, dtype, seed=0):
    g = _gen(10, seed)
    w = _r(g, 100, 24, dtype=dtype, device=device)
    return [
        Sample((w, _i(g, 0, 100, 90, device=device)), name="1-D"),
        Sample((w, _i(g, 0, 100, 3, 4, device=device), 7), name="2-D, padding_idx"),
        Sample((w, _i(g, 0, 100, 5, device=device, dtype=torch.int32), -1), name="int32, padding -1"),
        Sample((_r(g, 20, 33, dtype=dtype, device=device), _i(g, 0, 20, 0, device=device)), name="empty"),
    ]


def _embedding_ref(weight, indices, padding_idx=None):
    return F.embedding(indices, weight, padding_idx)


def _bag_samples(device, dtype, seed=0):
    g = _gen(11, seed)
    w = _r(g, 100, 24, dtype=dtype, device=device)
    idx = _i(g, 0, 100, 90, device=device)
    off = torch.tensor(_OFFSETS, device=device)
    out = []
    for mode in ("sum", "mean", "max"):
        out.append(Sample((w, idx, off, mode), name=f"{mode} offsets"))
        out.append(Sample((w, idx[:60].view(12, 5), None, mode, None, 5), name=f"{mode} 2-D, padding_idx"))
    psw = torch.rand(90, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    out += [
        Sample((w, idx, off, "sum", psw), name="per_sample_weights"),
        Sample(
            (w, idx, torch.tensor(_OFFSETS[:-1] + [90], device=device), "mean", None, None, True),
            name="include_last_offset",
        ),
        Sample((w, idx[:0], torch.zeros(3, dtype=torch.long, device=device), "sum"), name="empty bags"),
    ]
    return out


def _bag_ref(weight, indices, offsets=None, mode="mean", psw=None, padding_idx=None, include_last_offset=False):
    return F.embedding_bag(
        indices,
        weight,
        offsets,
        mode=mode,
        per_sample_weights=psw,
        padding_idx=padding_idx,
        include_last_offset=include_last_offset,
    )


def _embedding_bad(device):
    w, idx = torch.randn(10, 4, device=device), torch.tensor([1, 2, 3, 4], device=device)
    return [
        Bad(
            (w, idx.float()),
            TypeError,
            r"teachcompute_ext.embedding: unsupported dtype torch.float32 for argument 'indices'",
        ),
        Bad(
            (torch.randn(10, device=device), idx),
            RuntimeError,
            r"teachcompute_ext.embedding: 'weight' must be 2-D \[num_embeddings, dim\], got shape \[10\]",
        ),
        Bad(
            (w, torch.tensor([0, 10], device=device)),
            IndexError,
            r"teachcompute_ext.embedding: index 10 out of range for argument 'indices' \(weight has 10 rows",
            values=True,
        ),
    ]


def _bag_bad(device):
    w, idx = torch.randn(10, 4, device=device), torch.tensor([1, 2, 3, 4], device=device)
    off = torch.tensor([0, 2], device=device)
    return [
        Bad((w, idx, off, "median"), ValueError, r"teachcompute_ext.embedding_bag: unknown mode 'median'"),
        Bad((w, idx, None, "sum"), RuntimeError, r"teachcompute_ext.embedding_bag: 'offsets' is required"),
        Bad(
            (w, idx, off, "max", torch.rand(4, device=device)),
            RuntimeError,
            r"teachcompute_ext.embedding_bag: 'per_sample_weights' is only supported with mode='sum'",
        ),
        Bad(
            (w, idx, off, "sum", torch.rand(3, device=device)),
            RuntimeError,
            r"teachcompute_ext.embedding_bag: 'per_sample_weights' has shape",
        ),
        Bad(
            (w, idx, off, "sum", None, 12),
            IndexError,
            r"teachcompute_ext.embedding_bag: padding_idx 12 out of range for argument 'padding_idx'",
        ),
        Bad(
            (w, torch.tensor([1, 12], device=device), torch.tensor([0], device=device), "sum"),
            IndexError,
            r"teachcompute_ext.embedding_bag: index 12 out of range for argument 'indices'",
            values=True,
        ),
        Bad(
            (w, idx, torch.tensor([0, 3, 1], device=device), "mean"),
            ValueError,
            r"teachcompute_ext.embedding_bag: 'offsets' must be non-decreasing",
            values=True,
        ),
    ]


def _embedding_backward_samples(device, dtype, seed=0):
    g = _gen(12, seed)
    idx = _i(g, 0, 20, 3, 4, device=device)
    return [
        Sample((_r(g, 3, 4, 5, dtype=dtype, device=device), idx, 20, None), grad=False),
        Sample((_r(g, 3, 4, 5, dtype=dtype, device=device), idx, 20, 3), name="padding_idx", grad=False),
    ]


def _embedding_backward_ref(grad, indices, num_weights, padding_idx=None):
    return torch.ops.aten.embedding_dense_backward(
        grad, indices, num_weights, -1 if padding_idx is None else padding_idx, False
    )


def _bag_forward_samples(device, dtype, seed=0):
    samples = _bag_samples(device, dtype, seed)
    return [
        Sample(s.args + (None,) * (6 - len(s.args)) + (False,), name=s.name, grad=s.grad)
        for s in samples
        if s.name in ("sum offsets", "max 2-D, padding_idx", "per_sample_weights")
    ]


def _bag_backward_samples(device, dtype, seed=0):
    g = _gen(13, seed)
    w = _r(g, 10, 4, dtype=dtype, device=device)
    idx, off = torch.tensor([1, 2, 3, 1], device=device), torch.tensor([0, 2], device=device)
    empty = torch.empty(0, dtype=torch.long, device=device)
    return [
        Sample((_r(g, 2, 4, dtype=dtype, device=device), w, idx, off, empty, "sum", None, None, False), grad=False),
        Sample(
            (
                _r(g, 2, 4, dtype=dtype, device=device),
                w,
                idx,
                off,
                torch.full((2, 4), 1, device=device),
                "max",
                None,
                None,
                False,
            ),
            name="max",
            grad=False,
        ),
        Sample(
            (
                _r(g, 2, 4, dtype=dtype, device=device),
                w,
                idx,
                off,
                empty,
                "sum",
                torch.rand(4, generator=g, dtype=torch.float64).to(device, dtype),
                None,
                False,
            ),
            name="per_sample_weights",
            grad=False,
        ),
    ]


# ---- matmul ----------------------------------------------------------------------------------------
def _matmul_samples(device, dtype, seed=0):
    g = _gen(14, seed)

    def r(*s):
        return _r(g, *s, dtype=dtype, device=device)

    return [
        Sample((r(3, 17, 33), r(33, 9), 0.5), name="batch @ matrix"),
        Sample((r(2, 5, 6), r(7, 6), 1.0, False, True), name="trans_b"),
        Sample((r(6, 5), r(6, 7), 2.0, True, False), name="trans_a"),
        Sample((r(2, 1, 4, 5), r(3, 5, 2)), name="broadcast batch"),
        Sample((r(5), r(5, 3)), name="vector @ matrix"),
        Sample((r(4, 5), r(5)), name="matrix @ vector"),
        Sample((_strided(r(8, 6)), r(6, 4)), name="strided"),
        Sample((r(4, 0), r(0, 3)), name="empty inner dim"),
    ]


def _matmul_ref(a, b, alpha=1.0, trans_a=False, trans_b=False):
    a = a.transpose(-1, -2) if trans_a and a.dim() > 1 else a
    b = b.transpose(-1, -2) if trans_b and b.dim() > 1 else b
    return alpha * torch.matmul(a, b)


_ACT = {
    "none": lambda y: y,
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_tanh": lambda y: F.gelu(y, approximate="tanh"),
    "silu": F.silu,
}


def _linear_samples(device, dtype, seed=0):
    g = _gen(15, seed)

    def r(*s, scale=1.0):
        return _r(g, *s, dtype=dtype, device=device, scale=scale)

    out = []
    for act in _ACT:
        out.append(Sample((r(5, 40), r(24, 40, scale=0.2), r(24), act), name=f"{act} rows"))
    out += [
        Sample((r(2, 3, 40), r(24, 40, scale=0.2), None, "gelu"), name="batch, no bias"),
        Sample((r(40), r(24, 40, scale=0.2), r(24), "silu"), name="one row"),
        Sample((r(5, 8), r(8), r(()), "relu"), name="1-D weight"),
        Sample((r(0, 8), r(6, 8), r(6), "gelu"), name="no rows"),
    ]
    return out


def _linear_ref(x, weight, bias=None, activation="none"):
    if weight.dim() == 1:  # F.linear's 1-D weight; its addmm refuses a bias with it
        return _ACT[activation](F.linear(x, weight) + (0 if bias is None else bias))
    return _ACT[activation](F.linear(x, weight, bias))


def _matmul_bad(device):
    x = torch.randn(4, 5, device=device)
    return [
        Bad((x, x), RuntimeError, r"teachcompute_ext.fused_matmul: inner dims do not match: op\(a\) is 4x5"),
        Bad(
            (torch.randn(2, 3, 4, device=device), torch.randn(3, 4, 5, device=device)),
            RuntimeError,
            r"teachcompute_ext.fused_matmul: batch dims do not broadcast",
        ),
        Bad(
            (x, torch.randn((), device=device)),
            RuntimeError,
            r"teachcompute_ext.fused_matmul: argument 'b' must have at least 1 dim",
        ),
    ]


def _linear_bad(device):
    x, w, b = torch.randn(4, 5, device=device), torch.randn(3, 5, device=device), torch.randn(3, device=device)
    return [
        Bad((x, w[:, :4], b), RuntimeError, r"teachcompute_ext.fused_linear: in_features mismatch"),
        Bad((x, w, b[:2]), RuntimeError, r"teachcompute_ext.fused_linear: argument 'bias' must have shape \[3\]"),
        Bad((x, w.double(), b), RuntimeError, r"teachcompute_ext.fused_linear: argument 'weight' has dtype"),
        Bad((x, w, b, "tanh"), ValueError, r"teachcompute_ext.fused_linear: unknown activation 'tanh'"),
        Bad((x, w[None], b), RuntimeError, r"teachcompute_ext.fused_linear: argument 'weight' must be 1-D"),
        Bad((x.long(), w.long()), TypeError, r"teachcompute_ext.fused_linear: unsupported dtype torch.int64"),
    ]


def _linear_forward_samples(device, dtype, seed=0):
    return [
        Sample(s.args + (True,), name=s.name)
        for s in _linear_samples(device, dtype, seed)
        if s.args[2] is not None and s.args[1].dim() == 2
    ][:3]


def _linear_backward_samples(device, dtype, seed=0):
    g = _gen(16, seed)

    def r(*s):
        return _r(g, *s, dtype=dtype, device=device)

    return [
        Sample((r(3, 5), r(3, 4), r(5, 4), r(3, 5), "gelu", True, [True, True, True]), grad=False),
        Sample(
            (r(3, 5), r(3, 4), r(5, 4), torch.empty(0, dtype=dtype, device=device), "none", False, [True, True, False]),
            name="none",
            grad=False,
        ),
    ]


# ---- llama -----------------------------------------------------------------------------------------
def _rms_samples(device, dtype, seed=0):
    g = _gen(17, seed)

    def r(*s):
        return _r(g, *s, dtype=dtype, device=device)

    return [
        Sample((r(37, 300), r(300)), name="rows"),
        Sample((r(3, 4096), r(4096), 1e-5), name="long rows"),
        Sample((r(2, 5, 7),), name="odd width, no weight"),
        Sample((_strided(r(9, 33)), r(33)), name="strided"),
        Sample((r(0, 16), r(16)), name="empty"),
    ]


def _rms_ref(x, weight=None, eps=1e-6):
    return F.rms_norm(x, (x.shape[-1],), weight, eps)


def _add_rms_samples(device, dtype, seed=0):
    g = _gen(18, seed)

    def r(*s):
        return _r(g, *s, dtype=dtype, device=device)

    return [
        Sample((r(37, 300), r(37, 300), r(300)), name="rows"),
        Sample((r(3, 4096), r(3, 4096), r(4096), 1e-5), name="long rows"),
        Sample((r(2, 5, 7), r(2, 5, 7)), name="odd width, no weight"),
        Sample((r(0, 16), r(0, 16), r(16)), name="empty"),
    ]


def _add_rms_ref(x, residual, weight=None, eps=1e-6):
    h = x + residual
    return F.rms_norm(h, (h.shape[-1],), weight, eps), h


def _rotary_samples(device, dtype, seed=0):
    g = _gen(19, seed)
    out = []
    for il in (False, True):
        q = _r(g, 2, 5, 3, 64, dtype=dtype, device=device).transpose(1, 2)  # [b, h, s, d] read through strides
        ang = _r(g, 5, 24)
        out.append(
            Sample(
                (q, ang.cos().to(device, dtype), ang.sin().to(device, dtype), il),
                name=f"partial rotary, interleaved={il}",
            )
        )
    ang = _r(g, 3, 4)
    out += [
        Sample(
            (_r(g, 2, 3, 8, dtype=dtype, device=device), ang.cos().to(device, dtype), ang.sin().to(device, dtype)),
            name="full rotary",
        ),
        Sample(
            (
                _r(g, 0, 8, dtype=dtype, device=device),
                _r(g, 0, 4, dtype=dtype, device=device),
                _r(g, 0, 4, dtype=dtype, device=device),
            ),
            name="empty",
        ),
    ]
    return out


def _rotary_ref(x, cos, sin, interleaved=False):
    """transformers' rotate-half (or GPT-J's pairs), written with elementwise ops and pads only
    (torch.cat and torch.roll refuse float16 under a bfloat16 autocast): under autocast they give
    the dtypes torch's elementwise ops give."""
    h = cos.shape[-1]
    rd, d = 2 * h, x.shape[-1]
    if interleaved:
        pairs = x[..., :rd].unflatten(-1, (h, 2))
        x1, x2 = pairs[..., 0], pairs[..., 1]
        out = (x1 * cos - x2 * sin).unsqueeze(-1) * torch.tensor([1.0, 0.0], device=x.device, dtype=x.dtype) + (
            x2 * cos + x1 * sin
        ).unsqueeze(-1) * torch.tensor([0.0, 1.0], device=x.device, dtype=x.dtype)
        return F.pad(out.flatten(-2), (0, d - rd)) + F.pad(x[..., rd:], (rd, 0))
    x1, x2 = x[..., :h], x[..., h:rd]
    return (
        F.pad(x1 * cos - x2 * sin, (0, d - h)) + F.pad(x2 * cos + x1 * sin, (h, d - rd)) + F.pad(x[..., rd:], (rd, 0))
    )


def _glu_samples(device, dtype, act=None, seed=0):
    g = _gen(20, seed)

    def r(*s):
        return _r(g, *s, dtype=dtype, device=device)

    extra = () if act is None else (act,)
    out = [
        Sample((r(33, 501), r(33, 501)) + extra, name="two tensors"),
        Sample((r(33, 1002), None) + extra, name="one tensor"),
        Sample((_strided(r(5, 300)), r(5, 300)) + extra, name="strided"),
        Sample((r(0, 8), r(0, 8)) + extra, name="empty"),
    ]
    return out


def _swiglu_ref(gate, up=None):
    if up is None:
        gate, up = gate.chunk(2, -1)
    return F.silu(gate) * up


def _geglu_ref(gate, up=None, approximate="none"):
    if up is None:
        gate, up = gate.chunk(2, -1)
    return F.gelu(gate, approximate=approximate) * up


def _llama_bad_rms(device):
    x, w = torch.randn(4, 8, device=device), torch.randn(8, device=device)
    return [
        Bad(
            (x, torch.randn(7, device=device)), RuntimeError, r"teachcompute_ext.rms_norm: argument 'weight' has shape"
        ),
        Bad((x, w, 0.0), ValueError, r"teachcompute_ext.rms_norm: argument 'eps' must be > 0"),
        Bad((x.long(),), TypeError, r"teachcompute_ext.rms_norm: unsupported dtype torch.int64 for argument 'x'"),
        Bad((torch.tensor(1.0, device=device),), RuntimeError, r"teachcompute_ext.rms_norm: argument 'x' must have"),
    ]


def _llama_bad_add_rms(device):
    x, w = torch.randn(4, 8, device=device), torch.randn(8, device=device)
    return [
        Bad(
            (x, torch.randn(4, 7, device=device), w),
            RuntimeError,
            r"teachcompute_ext.add_rms_norm: argument 'residual' has shape",
        ),
        Bad((x, x.double(), w), TypeError, r"teachcompute_ext.add_rms_norm: argument 'residual' has dtype"),
        Bad((x, x, w, 0.0), ValueError, r"teachcompute_ext.add_rms_norm: argument 'eps'"),
    ]


def _llama_bad_rotary(device):
    x = torch.randn(4, 8, device=device)
    c = torch.randn(4, 2, device=device)
    return [
        Bad(
            (x, torch.randn(4, 5, device=device), torch.randn(4, 5, device=device)),
            RuntimeError,
            r"teachcompute_ext.rotary_embedding: rotary_dim 10 .* larger than head_dim 8",
        ),
        Bad(
            (x, torch.randn(3, 2, device=device), torch.randn(3, 2, device=device)),
            RuntimeError,
            r"teachcompute_ext.rotary_embedding: argument 'cos' has shape \[3, 2\], which cannot broadcast",
        ),
        Bad((x, c, c[:, :1]), RuntimeError, r"teachcompute_ext.rotary_embedding: argument 'sin' has shape"),
        Bad((x, c.double(), c.double()), TypeError, r"teachcompute_ext.rotary_embedding: argument 'cos' has dtype"),
    ]


def _llama_bad_glu(name):
    def bad(device):
        x = torch.randn(4, 8, device=device)
        extra = () if name == "swiglu" else ("none",)
        out = [
            Bad(
                (x, torch.randn(4, 7, device=device)) + extra,
                RuntimeError,
                rf"teachcompute_ext.{name}: argument 'up' has shape",
            ),
            Bad((x, x.double()) + extra, TypeError, rf"teachcompute_ext.{name}: argument 'up' has dtype"),
            Bad(
                (torch.randn(4, 7, device=device), None) + extra,
                RuntimeError,
                rf"teachcompute_ext.{name}: argument 'gate' has an odd last dim 7",
            ),
        ]
        if name == "geglu":
            out.append(Bad((x, x, "fast"), ValueError, r"teachcompute_ext.geglu: unknown value 'fast'"))
        return out

    return bad


def _rms_forward_samples(device, dtype, seed=0):
    return [Sample(s.args + (1e-6,) * (3 - len(s.args)), name=s.name) for s in _rms_samples(device, dtype, seed)[:2]]


def _add_rms_forward_samples(device, dtype, seed=0):
    return [
        Sample(s.args + (1e-6,) * (4 - len(s.args)), name=s.name) for s in _add_rms_samples(device, dtype, seed)[:2]
    ]


def _rms_backward_samples(device, dtype, seed=0):
    g = _gen(21, seed)

    def r(*s):
        return _r(g, *s, dtype=dtype, device=device)

    rstd_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    rstd = torch.rand(3, generator=g, dtype=torch.float64).add(0.5).to(device, rstd_dtype)
    return [
        Sample((r(3, 4), r(3, 4), r(4), rstd, r(3, 4), [True, True]), grad=False),
        Sample((r(3, 4), r(3, 4), None, rstd, None, [True, False]), name="no weight", grad=False),
    ]


def _rotary_backward_samples(device, dtype, seed=0):
    return [
        Sample((s.args[0].contiguous(),) + s.args[1:], name=s.name, grad=False)
        for s in _rotary_samples(device, dtype, seed)[:2]
    ]


def _rotary_backward_ref(grad, cos, sin, interleaved):
    return _rotary_ref(grad, cos, -sin, interleaved)


def _glu_backward_samples(device, dtype, seed=0):
    g = _gen(22, seed)

    def r(*s):
        return _r(g, *s, dtype=dtype, device=device)

    return [Sample((r(3, 4), r(3, 4), r(3, 4), act), name=act, grad=False) for act in ("silu", "gelu", "gelu_tanh")] + [
        Sample((r(3, 4), r(3, 8), None, "silu"), name="one tensor", grad=False)
    ]


# ---- the backward fused with an optimizer step ------------------------------------------------------
_UPDATE_HYPER = {  # optimizer -> (lr, beta1, beta2, eps, weight_decay, step)
    "sgd": (0.1, 0.0, 0.0, 0.0, 0.01, 1),
    "rowwise_adagrad": (0.1, 0.0, 0.0, 1e-8, 0.01, 1),
    "adagrad": (0.1, 0.0, 0.0, 1e-10, 0.0, 1),
    "adam": (0.01, 0.9, 0.999, 1e-8, 0.01, 3),
    "adamw": (0.01, 0.8, 0.99, 1e-6, 0.1, 5),
}


def _states(optimizer, w, g, filled):
    """(state1, state2) for optimizer and table w; filled: positive values as after some steps."""
    from teachcompute_ext.ops.embedding import state_dtype, state_shapes

    s1, s2 = state_shapes(optimizer, w.shape[0], w.shape[1])
    dt = state_dtype(w.dtype)

    def make(shape, square):
        if shape == (0,):
            return torch.zeros(0, dtype=dt, device=w.device)
        t = torch.rand(shape, generator=g, dtype=torch.float64) * 0.1 if filled else torch.zeros(shape)
        if not square and optimizer in ("adam", "adamw"):
            t = t - 0.05  # a first moment has either sign
        return t.to(device=w.device, dtype=dt)

    return make(s1, optimizer != "adam" and optimizer != "adamw"), make(s2, True)


def _update_samples(bag):
    def samples(device, dtype, seed=0):
        g = _gen(23 if bag else 24, seed)
        out = []
        for k, opt in enumerate(_UPDATE_HYPER):
            w = _r(g, 30, 7, dtype=dtype, device=device)
            s1, s2 = _states(opt, w, g, filled=k % 2 == 0)
            hyper = _UPDATE_HYPER[opt]
            if bag:
                mode = ("sum", "mean", "max", "sum", "mean")[k]
                idx = _i(g, 0, 30, 40, device=device)
                idx[5] = idx[6] = idx[7]  # a row used three times
                off = torch.tensor([0, 3, 3, 10, 25], device=device)  # an empty bag
                grad = _r(g, 5, 7, dtype=dtype, device=device)
                argmax = torch.empty(0, dtype=torch.int64, device=device)
                if mode == "max":
                    argmax = _ops.embedding_bag_forward.default(w, idx, off, "max", None, None, False)[1]
                psw = torch.rand(40, generator=g, dtype=torch.float64).to(device, dtype) if k == 3 else None
                pad = 4 if k == 4 else None
                out.append(
                    Sample(
                        (w, s1, s2, grad, idx, off, argmax, mode, psw, pad, False, False, opt) + hyper,
                        name=f"{opt} {mode}",
                        grad=False,
                    )
                )
            else:
                idx = _i(g, 0, 30, 6, 5, device=device)
                pad = 2 if k == 1 else None
                out.append(
                    Sample(
                        (w, s1, s2, _r(g, 6, 5, 7, dtype=dtype, device=device), idx, pad, opt) + hyper,
                        name=opt,
                        grad=False,
                    )
                )
        return out

    return samples


def row_update_reference(
    weight, state1, state2, dense_grad, touched, optimizer, lr, beta1, beta2, eps, weight_decay, step
):
    """One step of optimizer (csrc/embedding/embedding.h's formulas) on the touched rows, in float64:
    (weight, state1, state2) after it, in their dtypes; untouched rows as they were."""
    w, s1, s2 = weight.clone(), state1.clone(), state2.clone()
    r = touched
    if r.numel() == 0:
        return w, s1, s2
    w64, g = weight.double()[r], dense_grad.double()[r]
    if optimizer == "sgd":
        new = w64 - lr * (g + weight_decay * w64)
    elif optimizer == "rowwise_adagrad":
        g = g + weight_decay * w64
        acc = state1.double()[r] + (g * g).mean(1)
        s1[r] = acc.to(s1.dtype)
        new = w64 - lr * g / (acc.sqrt() + eps).unsqueeze(1)
    elif optimizer == "adagrad":
        g = g + weight_decay * w64
        acc = state1.double()[r] + g * g
        s1[r] = acc.to(s1.dtype)
        new = w64 - lr * g / (acc.sqrt() + eps)
    else:
        decoupled = optimizer == "adamw"
        if not decoupled:
            g = g + weight_decay * w64
        m = beta1 * state1.double()[r] + (1 - beta1) * g
        v = beta2 * state2.double()[r] + (1 - beta2) * g * g
        s1[r], s2[r] = m.to(s1.dtype), v.to(s2.dtype)
        step_size = lr * (1 - beta2**step) ** 0.5 / (1 - beta1**step)
        new = w64 * (1 - lr * weight_decay if decoupled else 1) - step_size * m / (v.sqrt() + eps)
    w[r] = new.to(w.dtype)
    return w, s1, s2


def bag_gradient(weight, grad, indices, offsets, max_indices, mode, psw, padding_idx, include_last_offset):
    """The dense gradient of embedding_bag (float64) and the rows it touches (sorted)."""
    w = weight.detach().double().requires_grad_()
    if mode == "max":
        dense = torch.zeros_like(w.detach())
        m = max_indices.reshape(-1)
        ok = m >= 0
        cols = torch.arange(w.shape[1], device=w.device).repeat(grad.shape[0])
        dense.index_put_((m[ok], cols[ok]), grad.double().reshape(-1)[ok], accumulate=True)
        return dense, torch.unique(m[ok])
    kw = dict(mode=mode, padding_idx=padding_idx, include_last_offset=include_last_offset)
    out = F.embedding_bag(indices, w, offsets, per_sample_weights=None if psw is None else psw.double(), **kw)
    (dense,) = torch.autograd.grad(out, w, grad.double())
    ones = torch.ones_like(w.detach(), requires_grad=True)
    count = F.embedding_bag(indices, ones, offsets, **kw)
    (hits,) = torch.autograd.grad(count, ones, torch.ones_like(count))
    return dense, torch.nonzero(hits[:, 0] > 0).reshape(-1)


def _bag_update_ref(
    weight,
    state1,
    state2,
    grad,
    indices,
    offsets,
    max_indices,
    mode,
    psw,
    padding_idx,
    include_last_offset,
    psw_grad,
    optimizer,
    lr,
    beta1,
    beta2,
    eps,
    weight_decay,
    step,
):
    dense, rows = bag_gradient(weight, grad, indices, offsets, max_indices, mode, psw, padding_idx, include_last_offset)
    return row_update_reference(
        weight, state1, state2, dense, rows, optimizer, lr, beta1, beta2, eps, weight_decay, step
    )


def _update_ref(
    weight, state1, state2, grad, indices, padding_idx, optimizer, lr, beta1, beta2, eps, weight_decay, step
):
    flat = indices.reshape(-1)
    g = grad.double().reshape(flat.numel(), -1)
    keep = flat != (padding_idx % weight.shape[0] if padding_idx is not None else -1)
    dense = torch.zeros(weight.shape, dtype=torch.float64, device=weight.device).index_add_(0, flat[keep], g[keep])
    return row_update_reference(
        weight, state1, state2, dense, torch.unique(flat[keep]), optimizer, lr, beta1, beta2, eps, weight_decay, step
    )


def _update_bad(bag):
    op = "embedding_bag_update_" if bag else "embedding_update_"

    def bad(device):
        w = torch.randn(10, 4, device=device)
        s = torch.zeros(10, 4, device=device)
        if bag:
            idx, off = torch.tensor([1, 2, 3, 4], device=device), torch.tensor([0, 2], device=device)

            def args(w=w, s1=s, s2=s, opt="adam", lr=0.1, idx=idx, eps=1e-8, step=1, grad=None):
                g = torch.randn(2, 4, device=device) if grad is None else grad
                return (
                    w,
                    s1,
                    s2,
                    g,
                    idx,
                    off,
                    torch.empty(0, dtype=torch.long, device=device),
                    "sum",
                    None,
                    None,
                    False,
                    False,
                    opt,
                    lr,
                    0.9,
                    0.999,
                    eps,
                    0.0,
                    step,
                )
        else:
            idx = torch.tensor([1, 2, 3, 4], device=device)

            def args(w=w, s1=s, s2=s, opt="adam", lr=0.1, idx=idx, eps=1e-8, step=1, grad=None):
                g = torch.randn(4, 4, device=device) if grad is None else grad
                return (w, s1, s2, g, idx, None, opt, lr, 0.9, 0.999, eps, 0.0, step)

        return [
            Bad(
                args(s1=torch.zeros(10, 3, device=device)),
                RuntimeError,
                rf"teachcompute_ext.{op}: argument 'state1' must have shape \[10, 4\] for optimizer 'adam'",
            ),
            Bad(
                args(s2=torch.zeros(10, 4, device=device, dtype=torch.float64)),
                TypeError,
                rf"teachcompute_ext.{op}: argument 'state2' must be torch.float32 for a torch.float32 weight",
            ),
            Bad(
                args(opt="rowwise_adagrad"),
                RuntimeError,
                rf"teachcompute_ext.{op}: argument 'state1' must have shape \[10\] for optimizer 'rowwise_adagrad'",
            ),
            Bad(args(lr=float("nan")), ValueError, rf"teachcompute_ext.{op}: argument 'lr' must be finite"),
            Bad(args(lr=float("inf")), ValueError, rf"teachcompute_ext.{op}: argument 'lr' must be finite"),
            Bad(args(eps=0.0), ValueError, rf"teachcompute_ext.{op}: argument 'eps' must be finite and > 0"),
            Bad(args(step=0), ValueError, rf"teachcompute_ext.{op}: argument 'step' must be >= 1"),
            Bad(args(opt="lamb"), ValueError, rf"teachcompute_ext.{op}: unknown optimizer 'lamb'"),
            Bad(
                args(w=torch.randn(4, 10, device=device).t(), s1=s, s2=s),
                RuntimeError,
                rf"teachcompute_ext.{op}: argument 'weight' must be contiguous",
            ),
            Bad(
                args(grad=torch.randn(2, 4, 1, device=device)),
                RuntimeError,
                rf"teachcompute_ext.{op}: argument 'grad' has shape",
            ),
            Bad(
                args(idx=torch.tensor([1, 2, 3, 10], device=device)),
                IndexError,
                rf"teachcompute_ext.{op}: index 10 out of range for argument 'indices'",
                values=True,
            ),
        ]

    return bad


def _reduce_tol(dtype):
    # sums of thousands of elements: the accumulation error on sum(|x|), not the output's rounding
    return {torch.float32: (1e-4, 2e-3), torch.float16: (1e-2, 3e-1), torch.bfloat16: (2e-2, 1.0)}


def _half_tol():
    return {torch.float16: (2e-2, 2e-2), torch.bfloat16: (4e-2, 4e-2)}


_LLAMA_TOL = {torch.float16: (2e-2, 2e-2), torch.bfloat16: (3e-2, 4e-2)}
_MATMUL_TOL = {torch.float32: (1e-3, 1e-3), torch.float16: (2e-2, 5e-2), torch.bfloat16: (4e-2, 2e-1)}

OPS = [
    # ---- reduce
    OpInfo(
        "vector_sum",
        "reduce",
        _vector_sum_samples,
        torch.sum,
        FLOAT + INTS,
        autocast="float32",
        layout="any",
        bad=lambda d: [
            Bad(
                (torch.ones(3, dtype=torch.complex64, device=d),),
                TypeError,
                r"teachcompute_ext.vector_sum: unsupported dtype torch.complex64 for argument 'x'",
            )
        ],
        tol=_reduce_tol(None),
    ),
    OpInfo(
        "reduce_sum",
        "reduce",
        _sum_mean_samples("reduce_sum"),
        _sum_ref,
        FLOAT + INTS,
        autocast="float32",
        layout="any",
        bad=_reduce_bad("reduce_sum", True),
        tol=_reduce_tol(None),
    ),
    OpInfo(
        "reduce_mean",
        "reduce",
        _sum_mean_samples("reduce_mean"),
        _mean_ref,
        layout="any",
        bad=_reduce_bad("reduce_mean", True),
    ),
    OpInfo(
        "reduce_max",
        "reduce",
        _maxmin_samples,
        _max_ref("max"),
        FLOAT + INTS,
        layout="any",
        bad=_reduce_bad("reduce_max", False),
    ),
    OpInfo(
        "reduce_min",
        "reduce",
        _maxmin_samples,
        _max_ref("min"),
        FLOAT + INTS,
        layout="any",
        bad=_reduce_bad("reduce_min", False),
    ),
    OpInfo(
        "logsumexp",
        "reduce",
        _logsumexp_samples,
        torch.logsumexp,
        autocast="float32",
        layout="any",
        bad=_reduce_bad("logsumexp", True),
        tol={torch.float32: (1e-4, 1e-4), **_half_tol()},
    ),
    OpInfo(
        "softmax",
        "reduce",
        _softmax_samples,
        torch.softmax,
        autocast="float32",
        bad=_softmax_bad("softmax"),
        tol=_half_tol(),
    ),
    OpInfo(
        "log_softmax",
        "reduce",
        _softmax_samples,
        torch.log_softmax,
        autocast="float32",
        bad=_softmax_bad("log_softmax"),
        tol={torch.float16: (2e-2, 5e-2), torch.bfloat16: (4e-2, 2e-1)},
    ),
    OpInfo(
        "softmax_backward",
        "reduce",
        _softmax_backward_samples(False),
        lambda g, y, d: y * (g - (g * y).sum(d, keepdim=True)),
        public=False,
        differentiable=False,
        onnx=False,
        bad=_softmax_backward_bad("softmax_backward"),
        tol=_half_tol(),
    ),
    OpInfo(
        "log_softmax_backward",
        "reduce",
        _softmax_backward_samples(True),
        lambda g, y, d: g - y.exp() * g.sum(d, keepdim=True),
        public=False,
        differentiable=False,
        onnx=False,
        bad=_softmax_backward_bad("log_softmax_backward"),
        tol={torch.bfloat16: (4e-2, 1e-1), torch.float16: (2e-2, 2e-2)},
    ),
    # ---- scatter_nd
    OpInfo(
        "scatter_nd",
        "scatter_nd",
        _scatter_samples,
        _scatter_nd_ref,
        FLOAT + INTS,
        bad=_scatter_bad("scatter_nd"),
        tol=_half_tol(),
    ),
    OpInfo(
        "scatter_nd_",
        "scatter_nd",
        _scatter_samples,
        _scatter_nd_ref,
        FLOAT + INTS,
        layout="any",
        inplace=True,
        bad=_scatter_bad("scatter_nd_"),
        tol=_half_tol(),
    ),
    OpInfo(
        "scatter_nd_of_shape",
        "scatter_nd",
        _of_shape_samples,
        _of_shape_ref,
        FLOAT + INTS,
        bad=_of_shape_bad,
        tol={torch.float16: (2e-2, 5e-2), torch.bfloat16: (3e-2, 2e-1)},
    ),
    OpInfo(
        "masked_scatter_nd_of_shape",
        "scatter_nd",
        _masked_samples,
        _masked_ref,
        FLOAT + INTS,
        bad=_masked_bad,
        tol={torch.float16: (2e-2, 5e-2), torch.bfloat16: (3e-2, 2e-1)},
    ),
    # ---- embedding
    OpInfo("embedding", "embedding", _embedding_samples, _embedding_ref, bad=_embedding_bad),
    OpInfo("embedding_bag", "embedding", _bag_samples, _bag_ref, layout="composite", bad=_bag_bad, tol=_half_tol()),
    OpInfo(
        "embedding_backward",
        "embedding",
        _embedding_backward_samples,
        _embedding_backward_ref,
        public=False,
        differentiable=False,
        onnx=False,
        tol=_half_tol(),
        bad=lambda d: [
            Bad(
                (torch.ones(3, 4, device=d), torch.tensor([0, 1, 2], device=d), -1, None),
                RuntimeError,
                r"teachcompute_ext.embedding_backward: argument 'num_weights' must be non-negative",
            )
        ],
    ),
    OpInfo("embedding_bag_forward", "embedding", _bag_forward_samples, None, public=False, onnx=False),
    OpInfo(
        "embedding_bag_backward",
        "embedding",
        _bag_backward_samples,
        None,
        public=False,
        differentiable=False,
        onnx=False,
    ),
    OpInfo(
        "embedding_update_",
        "embedding",
        _update_samples(False),
        _update_ref,
        public=False,
        differentiable=False,
        onnx=False,
        inplace=True,
        vmap=False,
        bad=_update_bad(False),
        tol=_half_tol(),
    ),
    OpInfo(
        "embedding_bag_update_",
        "embedding",
        _update_samples(True),
        _bag_update_ref,
        public=False,
        differentiable=False,
        onnx=False,
        inplace=True,
        vmap=False,
        bad=_update_bad(True),
        tol=_half_tol(),
    ),
    # ---- matmul
    OpInfo(
        "fused_matmul",
        "matmul",
        _matmul_samples,
        _matmul_ref,
        autocast="lower",
        layout="any",
        bad=_matmul_bad,
        tol=_MATMUL_TOL,
    ),
    OpInfo(
        "fused_linear",
        "matmul",
        _linear_samples,
        _linear_ref,
        autocast="lower",
        layout="composite",
        bad=_linear_bad,
        tol=_MATMUL_TOL,
    ),
    OpInfo(
        "fused_linear_forward",
        "matmul",
        _linear_forward_samples,
        None,
        autocast="lower",
        layout="any",
        public=False,
        onnx=False,
    ),
    OpInfo(
        "fused_linear_backward",
        "matmul",
        _linear_backward_samples,
        None,
        public=False,
        differentiable=False,
        onnx=False,
    ),
    # ---- llama
    OpInfo("rms_norm", "llama", _rms_samples, _rms_ref, layout="composite", bad=_llama_bad_rms, tol=_LLAMA_TOL),
    OpInfo(
        "add_rms_norm",
        "llama",
        _add_rms_samples,
        _add_rms_ref,
        autocast="promote",
        layout="composite",
        bad=_llama_bad_add_rms,
        tol=_LLAMA_TOL,
    ),
    OpInfo("rms_norm_forward", "llama", _rms_forward_samples, None, layout="any", public=False, onnx=False),
    OpInfo(
        "add_rms_norm_forward",
        "llama",
        _add_rms_forward_samples,
        None,
        autocast="promote",
        layout="any",
        public=False,
        onnx=False,
    ),
    OpInfo(
        "rms_norm_backward",
        "llama",
        _rms_backward_samples,
        None,
        layout="any",
        public=False,
        differentiable=False,
        onnx=False,
    ),
    OpInfo(
        "rotary_embedding",
        "llama",
        _rotary_samples,
        _rotary_ref,
        autocast="promote",
        layout="any",
        bad=_llama_bad_rotary,
        tol=_LLAMA_TOL,
    ),
    OpInfo(
        "rotary_embedding_backward",
        "llama",
        _rotary_backward_samples,
        _rotary_backward_ref,
        layout="any",
        public=False,
        differentiable=False,
        onnx=False,
        tol=_LLAMA_TOL,
    ),
    OpInfo(
        "swiglu",
        "llama",
        lambda d, t, seed=0: _glu_samples(d, t, None, seed),
        _swiglu_ref,
        autocast="promote",
        layout="any",
        bad=_llama_bad_glu("swiglu"),
        tol=_LLAMA_TOL,
    ),
    OpInfo(
        "geglu",
        "llama",
        lambda d, t, seed=0: _glu_samples(d, t, "none", seed) + _glu_samples(d, t, "tanh", seed)[:2],
        _geglu_ref,
        autocast="promote",
        layout="any",
        bad=_llama_bad_glu("geglu"),
        tol=_LLAMA_TOL,
    ),
    OpInfo(
        "glu_backward",
        "llama",
        _glu_backward_samples,
        None,
        layout="any",
        public=False,
        differentiable=False,
        onnx=False,
    ),
]


# ---- small samples: one per mode, tiny (the costly paths) -----------------------------------------
def _small(build):
    """small(device, dtype, seed) from build(r, i) -> [Sample]: r(*shape) floats, i(low, high, *shape) indices."""

    def small(device, dtype, seed=0):
        g = _gen(100, seed)

        def r(*shape):
            return _r(g, *shape, dtype=dtype, device=device)

        def i(low, high, *shape):
            return _i(g, low, high, *shape, device=device)

        return build(r, i)

    return small


def _small_offsets(device):
    return torch.tensor([0, 4, 4, 9], device=device)  # an empty bag and a long last one


SMALL = {
    "vector_sum": _small(lambda r, i: [Sample((r(7, 9),))]),
    "reduce_sum": _small(lambda r, i: [Sample((r(6, 9), [1]))]),
    "reduce_mean": _small(lambda r, i: [Sample((r(6, 9), [0], True))]),
    "reduce_max": _small(lambda r, i: [Sample((r(6, 9), 1))]),
    "reduce_min": _small(lambda r, i: [Sample((r(6, 9), 0, True))]),
    "logsumexp": _small(lambda r, i: [Sample((r(6, 9), [1]))]),
    "softmax": _small(lambda r, i: [Sample((r(6, 9), -1))]),
    "log_softmax": _small(lambda r, i: [Sample((r(6, 9), 0))]),
    "scatter_nd": _small(
        lambda r, i: [Sample((r(10, 4), i(-10, 10, 12, 1), r(12, 4), red), name=red) for red in ("none", "add")]
    ),
    # in place; max has no gradient: forward only
    "scatter_nd_": _small(
        lambda r, i: [
            Sample((r(10, 4), i(-10, 10, 12, 1), r(12, 4), "add"), name="add"),
            Sample((r(10, 4), i(-10, 10, 12, 1), r(12, 4), "max"), name="max", grad=False),
        ]
    ),
    "scatter_nd_of_shape": _small(
        lambda r, i: [
            Sample(([5, 3, 4], i(0, 3, 12, 2), r(12, 4), "add"), name="add"),
            Sample(([10, 4], i(0, 10, 12, 1), r(12, 4), "none"), name="none"),
        ]
    ),
    "masked_scatter_nd_of_shape": _small(lambda r, i: [Sample(([10, 4], i(0, 10, 12, 1), r(12, 4), 3))]),
    "embedding": _small(lambda r, i: [Sample((r(20, 5), i(0, 20, 3, 4), 0))]),
    "embedding_bag": _small(
        lambda r, i: [
            Sample((r(20, 5), i(0, 20, 15), _small_offsets(r(1).device), "mean", None, 1), name="mean"),
            Sample((r(20, 5), i(0, 20, 4, 3), None, "max"), name="max"),
            Sample((r(20, 5), i(0, 20, 15), _small_offsets(r(1).device), "sum", r(15)), name="sum-weights"),
        ]
    ),
    "fused_matmul": _small(lambda r, i: [Sample((r(2, 5, 6), r(7, 6), 0.5, False, True))]),
    "fused_linear": _small(lambda r, i: [Sample((r(5, 8), r(6, 8), r(6), act), name=act) for act in _ACT]),
    "rms_norm": _small(lambda r, i: [Sample((r(2, 5, 12), r(12)))]),
    "add_rms_norm": _small(lambda r, i: [Sample((r(5, 12), r(5, 12), r(12)))]),
    "rotary_embedding": _small(
        lambda r, i: [
            Sample((r(2, 5, 3, 8).transpose(1, 2), r(5, 3), r(5, 3), il), name=f"interleaved={il}")
            for il in (False, True)
        ]
    ),
    "swiglu": _small(lambda r, i: [Sample((r(4, 9), r(4, 9)), name="two"), Sample((r(4, 18),), name="one-tensor")]),
    "geglu": _small(lambda r, i: [Sample((r(4, 9), r(4, 9), "tanh"))]),
}
for _op in OPS:
    if _op.public:
        _op.small = SMALL[_op.name]


BY_NAME = {op.name: op for op in OPS}
PUBLIC = [op for op in OPS if op.public]
INTERNAL = [op for op in OPS if not op.public]
DIFFERENTIABLE = [op for op in PUBLIC if op.differentiable]


def differentiable_samples(op, device="cpu", dtype=torch.float64, seed=0):
    """The samples of op whose floating tensors all get gradients (non-empty ones)."""
    return [
        s
        for s in op.samples(device, dtype, seed)
        if s.grad and all(a.numel() > 0 for a in s.args if isinstance(a, torch.Tensor))
    ]


def call(op, sample, fn=None):
    """op on sample (an in-place op writes copies of the arguments it writes, which are
    returned), or fn, an out-of-place function of the same arguments (the reference)."""
    args = list(sample.args)
    if fn is not None:
        return fn(*args, **sample.kwargs)
    fn = op.op
    if op.inplace:
        written = op.mutated
        for i in written:
            args[i] = args[i].clone()
        fn(*args, **sample.kwargs)
        return args[written[0]] if len(written) == 1 else tuple(args[i] for i in written)
    return fn(*args, **sample.kwargs)


def outputs(result):
    return result if isinstance(result, tuple) else (result,)


def leaves_and_loss(op, sample):
    """The sample's floating tensors as fresh leaves, and a loss of op's floating outputs weighted
    so that every output element's gradient differs."""
    leaves = []

    def leaf(t):
        if t.is_floating_point():
            t = t.detach().clone().requires_grad_()
            leaves.append(t)
        return t

    s = sample.map(leaf)

    def loss():
        outs = [o for o in outputs(call(op, s)) if o.is_floating_point()]
        return sum(
            (o * torch.linspace(-1, 2, o.numel(), device=o.device).view(o.shape).to(o.dtype)).sum() for o in outs
        )

    return leaves, loss
