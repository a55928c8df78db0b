"""ScatterND family benchmarks against torch's index_put_ / index_add_ (and
onnxruntime's ScatterND when installed), same process.

    python -m teachcompute_ext.bench --family scatter_nd [--device cpu|cuda] [--quick] [--out DIR]
"""

import torch

import teachcompute_ext

from . import harness, sweep


def _ort_scatter(reduction):
    """onnxruntime's ScatterND as a callable, or None when onnxruntime is missing."""
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper
    except ImportError:
        return None
    attrs = {} if reduction == "none" else {"reduction": reduction}
    node = helper.make_node("ScatterND", ["data", "indices", "updates"], ["out"], **attrs)
    graph = helper.make_graph(
        [node],
        "scatter",
        [
            helper.make_tensor_value_info("data", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("indices", TensorProto.INT64, None),
            helper.make_tensor_value_info("updates", TensorProto.FLOAT, None),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    # Its idle threads would otherwise spin after each run and steal the cores
    # from the calls timed next to it (measured: our op 5x slower beside it).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return lambda d, i, u: sess.run(None, {"data": d, "indices": i, "updates": u})[0]


def cases(device, quick):
    rows, width, n = (10000, 64, 40000) if quick else (100000, 256, 400000)
    g = torch.Generator(device=device).manual_seed(3)
    shape = f"{rows}x{width} <- {n}"
    idx = torch.randint(0, rows, (n, 1), device=device, generator=g)
    upd = torch.randn(n, width, device=device, generator=g)
    unique_idx = torch.randperm(rows, device=device, generator=g)[: min(rows, n)].unsqueeze(1)
    unique_upd = torch.randn(unique_idx.shape[0], width, device=device, generator=g)
    bytes_add = upd.numel() * 4 + 2 * rows * width * 4
    out = []

    # add, in place, many duplicates: against index_put_(accumulate=True) and index_add_
    ours_buf = torch.zeros(rows, width, device=device)
    put_buf = torch.zeros(rows, width, device=device)
    add_buf = torch.zeros(rows, width, device=device)
    compiled_buf = torch.zeros(rows, width, device=device)
    out.append(
        harness.Case(
            op="scatter_nd_ add",
            shape=shape,
            dtype=torch.float32,
            device=device,
            ours=lambda: teachcompute_ext.scatter_nd_(ours_buf, idx, upd, "add"),
            baselines={
                "index_put_(acc=True)": lambda: put_buf.index_put_((idx[:, 0],), upd, accumulate=True),
                "index_add_": lambda: add_buf.index_add_(0, idx[:, 0], upd),
                **harness.compiled_baseline(
                    lambda b, i, u: b.index_put_((i[:, 0],), u, accumulate=True), compiled_buf, idx, upd
                ),
            },
            bytes_moved=bytes_add,
            check=lambda a, b: torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4),
        )
    )
    # scatter_nd_of_shape: against zeros + index_put_(accumulate=True)
    of_shape = dict(
        ours=lambda: teachcompute_ext.scatter_nd_of_shape([rows, width], idx, upd, "add"),
        baselines={
            "zeros.index_put_(acc)": lambda: torch.zeros(rows, width, device=device).index_put_(
                (idx[:, 0],), upd, accumulate=True
            ),
            **harness.compiled_baseline(
                lambda i, u: torch.zeros(rows, width, device=device).index_put_((i[:, 0],), u, accumulate=True),
                idx,
                upd,
            ),
        },
    )
    # onnxruntime's ScatterND add races on duplicate indices with more than one
    # thread (72 wrong results in 1000 runs here, onnxruntime 1.31, 2 threads):
    # when the check catches it, the table says so and leaves it untimed.
    ort_add = _ort_scatter("add") if device == "cpu" else None
    if ort_add is not None:
        zeros_np = torch.zeros(rows, width).numpy()
        idx_np, upd_np = idx.cpu().numpy(), upd.cpu().numpy()
        of_shape["baselines"]["onnxruntime ScatterND"] = lambda: torch.from_numpy(ort_add(zeros_np, idx_np, upd_np))
    out.append(
        harness.Case(
            op="scatter_nd_of_shape add",
            shape=shape,
            dtype=torch.float32,
            device=device,
            bytes_moved=bytes_add,
            check=lambda a, b: torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4),
            **of_shape,
        )
    )
    # none, unique indices, in place: against index_put_
    ours_none = torch.zeros(rows, width, device=device)
    put_none = torch.zeros(rows, width, device=device)
    compiled_none = torch.zeros(rows, width, device=device)
    out.append(
        harness.Case(
            op="scatter_nd_ none (unique)",
            shape=f"{rows}x{width} <- {unique_idx.shape[0]}",
            dtype=torch.float32,
            device=device,
            ours=lambda: teachcompute_ext.scatter_nd_(ours_none, unique_idx, unique_upd, "none"),
            baselines={
                "index_put_": lambda: put_none.index_put_((unique_idx[:, 0],), unique_upd),
                **harness.compiled_baseline(
                    lambda b, i, u: b.index_put_((i[:, 0],), u), compiled_none, unique_idx, unique_upd
                ),
            },
            bytes_moved=2 * unique_upd.numel() * 4,
        )
    )
    return out


def run(device, quick, out_dir, progress=None):
    return harness.run_family("scatter_nd", cases(device, quick), device, quick, out_dir, progress)


# The sweep (sweep.py): the x-axis is the count of update elements (indices x width).
SWEEP_SIZE = "update elements (indices x width)"


def _idx_put(b, i, u, acc):
    return b.index_put_((i[:, 0],), u, accumulate=acc)


def _zeros_put(like, i, u):
    return torch.zeros_like(like).index_put_((i[:, 0],), u, accumulate=True)


def _in_place(device, reduction, params, size, idx, upd, dtype, check, values="normal"):
    """scatter_nd_ against index_put_ (and its compiled form), each on a zero buffer of its own."""
    rows, width = params["rows"], params["width"]
    acc = reduction == "add"
    bufs = [torch.zeros(rows, width, device=device, dtype=dtype) for _ in range(3)]
    compiled = sweep.compiled(("scatter_nd", f"{reduction}_"), lambda b, i, u: _idx_put(b, i, u, acc))
    base = {"torch": lambda b=bufs[1], i=idx, u=upd: _idx_put(b, i, u, acc)}
    if compiled is not None:
        base[harness.COMPILED] = lambda c=compiled, b=bufs[2], i=idx, u=upd: c(b, i, u)
    variant = "scatter_nd_ add" if acc else "scatter_nd_ none (unique)"
    return sweep.point(
        variant,
        "fwd",
        params,
        size,
        values=values,
        dtype=dtype,
        device=device,
        check=check,
        ours=lambda b=bufs[0], i=idx, u=upd: teachcompute_ext.scatter_nd_(b, i, u, reduction),
        baselines=base,
    )


def values_cases(device, quick):
    """scatter_nd_ add with the index distributions users feed (sweep.VALUES): destination rows
    from a Zipf law (a few rows take most updates), unsorted and sorted, and all equal."""
    grid = [(1000, 33, 1000)] if quick else [(10000, 64, 40000), (100000, 33, 100000)]
    g = torch.Generator().manual_seed(18)
    cases = []
    for dtype in (torch.float32, torch.bfloat16):
        for rows, width, n in grid:
            params = {"rows": rows, "width": width, "indices": n}
            z = sweep.zipf(n, rows, g)
            for values, rows_of in (("zipf", z), ("zipf sorted", z.sort().values), ("all equal", torch.full((n,), 7))):
                idx = rows_of.unsqueeze(1).to(device)
                upd = torch.randn(n, width, generator=g).to(device, dtype)

                def exact(i=idx, u=upd, rows=rows, width=width):
                    return torch.zeros(rows, width, dtype=torch.float64, device=u.device).index_put_(
                        (i[:, 0],), u.double(), accumulate=True
                    )

                cases.append(
                    _in_place(device, "add", params, n * width, idx, upd, dtype, sweep.near_exact(dtype, exact), values)
                )
    return cases


def sweep_cases(device, quick):
    """scatter_nd_ add (duplicate indices) and none (unique ones), in place,
    and scatter_nd_of_shape add forward and forward+backward (the gradient
    of the updates), from one index into 16 rows to 400000 into 100000x256;
    widths 1 to 300. The update count is kept near the row count so that
    bfloat16 sums few duplicates (torch's index_put_ rounds after each)."""
    if quick:
        grid = [(16, 1, 1), (1000, 33, 1000)]
    else:
        grid = [
            (16, 1, 1),
            (100, 7, 7),
            (1000, 33, 64),
            (1000, 96, 1000),
            (4096, 300, 1000),
            (10000, 64, 40000),
            (100000, 33, 100000),
            (100000, 256, 400000),
        ]
    g = torch.Generator().manual_seed(8)
    cases = []

    for dtype in (torch.float32, torch.bfloat16):
        for rows, width, n in grid:
            params = {"rows": rows, "width": width, "indices": n}
            size = n * width
            idx = torch.randint(0, rows, (n, 1), generator=g).to(device)
            upd = torch.randn(n, width, generator=g).to(device, dtype)

            def exact(i=idx, u=upd, rows=rows, width=width):
                return torch.zeros(rows, width, dtype=torch.float64, device=u.device).index_put_(
                    (i[:, 0],), u.double(), accumulate=True
                )

            check = sweep.near_exact(dtype, exact)  # add, from zeros: the checked first call
            cases.append(_in_place(device, "add", params, size, idx, upd, dtype, check))

            # The output's shape comes from a tensor, not from int arguments: one
            # compiled function with dynamic sizes then serves every point.
            like = torch.empty(rows, width, device=device, dtype=dtype)
            c_shape = sweep.compiled(("scatter_nd", "of_shape"), _zeros_put)
            base = {"torch": lambda i=idx, u=upd, like=like: _zeros_put(like, i, u)}
            if c_shape is not None:
                base[harness.COMPILED] = lambda c=c_shape, i=idx, u=upd, like=like: c(like, i, u)
            cases.append(
                sweep.point(
                    "scatter_nd_of_shape add",
                    "fwd",
                    params,
                    size,
                    dtype=dtype,
                    device=device,
                    check=check,
                    ours=lambda i=idx, u=upd, r=rows, w=width: teachcompute_ext.scatter_nd_of_shape(
                        [r, w], i, u, "add"
                    ),
                    baselines=base,
                )
            )
            ur = upd.clone().requires_grad_()
            grad = torch.randn(rows, width, generator=g).to(device, dtype)

            def fwd_bwd(f, ur=ur, grad=grad):
                (gu,) = torch.autograd.grad(f(ur), ur, grad)
                return gu

            base = {"torch": lambda fb=fwd_bwd, i=idx, like=like: fb(lambda u: _zeros_put(like, i, u))}
            if c_shape is not None:
                base[harness.COMPILED] = lambda fb=fwd_bwd, i=idx, c=c_shape, like=like: fb(lambda u: c(like, i, u))
            cases.append(
                sweep.point(
                    "scatter_nd_of_shape add",
                    "fwd+bwd",
                    params,
                    size,
                    dtype=dtype,
                    device=device,
                    ours=lambda fb=fwd_bwd, i=idx, r=rows, w=width: fb(
                        lambda u: teachcompute_ext.scatter_nd_of_shape([r, w], i, u, "add")
                    ),
                    baselines=base,
                )
            )
            uidx = torch.randperm(rows, generator=g)[: min(rows, n)].unsqueeze(1).to(device)
            uupd = torch.randn(uidx.shape[0], width, generator=g).to(device, dtype)
            cases.append(
                _in_place(
                    device, "none", {**params, "indices": uidx.shape[0]}, uidx.shape[0] * width, uidx, uupd, dtype, None
                )
            )
    return cases
