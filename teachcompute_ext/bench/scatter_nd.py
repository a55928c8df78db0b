"""ScatterND family benchmarks against torch's index_put_ / index_add_ (and
onnxruntime's ScatterND when installed), same process.

    python -m teachcompute_ext.bench --family scatter_nd [--device cpu|cuda] [--quick] [--out DIR]
"""
import torch

import teachcompute_ext

from . import harness


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
        [node], "scatter",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("indices", TensorProto.INT64, None),
         helper.make_tensor_value_info("updates", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)])
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
    out.append(harness.Case(
        op="scatter_nd_ add", shape=shape, dtype=torch.float32, device=device,
        ours=lambda: teachcompute_ext.scatter_nd_(ours_buf, idx, upd, "add"),
        baselines={"index_put_(acc=True)": lambda: put_buf.index_put_((idx[:, 0],), upd, accumulate=True),
                   "index_add_": lambda: add_buf.index_add_(0, idx[:, 0], upd),
                   **harness.compiled_baseline(lambda b, i, u: b.index_put_((i[:, 0],), u, accumulate=True),
                                               compiled_buf, idx, upd)},
        bytes_moved=bytes_add,
        check=lambda a, b: torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4),
    ))
    # scatter_nd_of_shape: against zeros + index_put_(accumulate=True)
    of_shape = dict(
        ours=lambda: teachcompute_ext.scatter_nd_of_shape([rows, width], idx, upd, "add"),
        baselines={"zeros.index_put_(acc)": lambda: torch.zeros(rows, width, device=device).index_put_(
            (idx[:, 0],), upd, accumulate=True),
            **harness.compiled_baseline(lambda i, u: torch.zeros(rows, width, device=device).index_put_(
                (i[:, 0],), u, accumulate=True), idx, upd)},
    )
    # onnxruntime's ScatterND add races on duplicate indices with more than one
    # thread (72 wrong results in 1000 runs here, onnxruntime 1.31, 2 threads):
    # when the check catches it, the table says so and leaves it untimed.
    ort_add = _ort_scatter("add") if device == "cpu" else None
    if ort_add is not None:
        zeros_np = torch.zeros(rows, width).numpy()
        idx_np, upd_np = idx.cpu().numpy(), upd.cpu().numpy()
        of_shape["baselines"]["onnxruntime ScatterND"] = lambda: torch.from_numpy(ort_add(zeros_np, idx_np, upd_np))
    out.append(harness.Case(op="scatter_nd_of_shape add", shape=shape, dtype=torch.float32, device=device,
                            bytes_moved=bytes_add,
                            check=lambda a, b: torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4), **of_shape))
    # none, unique indices, in place: against index_put_
    ours_none = torch.zeros(rows, width, device=device)
    put_none = torch.zeros(rows, width, device=device)
    compiled_none = torch.zeros(rows, width, device=device)
    out.append(harness.Case(
        op="scatter_nd_ none (unique)", shape=f"{rows}x{width} <- {unique_idx.shape[0]}", dtype=torch.float32,
        device=device,
        ours=lambda: teachcompute_ext.scatter_nd_(ours_none, unique_idx, unique_upd, "none"),
        baselines={"index_put_": lambda: put_none.index_put_((unique_idx[:, 0],), unique_upd),
                   **harness.compiled_baseline(lambda b, i, u: b.index_put_((i[:, 0],), u),
                                               compiled_none, unique_idx, unique_upd)},
        bytes_moved=2 * unique_upd.numel() * 4,
    ))
    return out


def run(device, quick, out_dir, progress=None):
    return harness.run_family("scatter_nd", cases(device, quick), device, quick, out_dir, progress)

