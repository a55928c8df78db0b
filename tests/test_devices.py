"""One frontend per op for every device: the same refusals on CPU and CUDA.

Every tensor argument must be on the device of the op's reference argument, with
torch's words plus the op and argument names. Without a GPU, the CPU frontend is
reached directly (redispatch to the CPU key) with one argument on the meta
device, which exercises the very check a CUDA call runs; the fake kernels
(dispatched for the meta tensor) must refuse the same way. With a GPU, real CPU
arguments beside CUDA tensors are refused, and the values only the device reads
(indices, offsets) stop the kernel with a device-side assert naming the op and
the argument, as torch's own CUDA index ops do (checked in a subprocess, since
such an assert loses the process's CUDA context).
"""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import teachcompute_ext  # noqa: F401
from conftest import CUDA_OK

ops = torch.ops.teachcompute_ext
CPU_KEYS = torch._C.DispatchKeySet(torch._C.DispatchKey.CPU)


def _cases():
    """(op, name in messages, args builder, {position: argument name}) for every op with several tensors."""
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    w, idx, off = r(10, 4), torch.tensor([1, 2, 3, 1]), torch.tensor([0, 2])
    yield ops.softmax_backward.default, "softmax_backward", lambda: [r(3, 5), r(3, 5).softmax(1), 1], {0: "grad",
                                                                                                      1: "out"}
    for op, name in ((ops.scatter_nd.default, "scatter_nd"), (ops.scatter_nd_.default, "scatter_nd_")):
        yield op, name, lambda: [r(5, 3), torch.tensor([[1], [3]]), r(2, 3), "add"], {0: "data", 1: "indices",
                                                                                    2: "updates"}
    yield (ops.scatter_nd_of_shape.default, "scatter_nd_of_shape",
           lambda: [[5, 3], torch.tensor([[1], [3]]), r(2, 3), "add"], {1: "indices", 2: "updates"})
    yield (ops.masked_scatter_nd_of_shape.default, "masked_scatter_nd_of_shape",
           lambda: [[5, 3], torch.tensor([[1], [3]]), r(2, 3), 3, "add"], {1: "indices", 2: "updates"})
    yield ops.embedding.default, "embedding", lambda: [w, idx, None], {0: "weight", 1: "indices"}
    yield (ops.embedding_backward.default, "embedding_backward", lambda: [r(4, 4), idx, 10, None],
           {0: "grad", 1: "indices"})
    yield (ops.embedding_bag_forward.default, "embedding_bag",
           lambda: [w, idx, off, "sum", r(4), None, False], {0: "weight", 1: "indices", 2: "offsets",
                                                            4: "per_sample_weights"})
    yield (ops.embedding_bag_backward.default, "embedding_bag_backward",
           lambda: [r(2, 4), w, idx, off, torch.full((2, 4), 1), "max", None, None, False],
           {0: "grad", 1: "weight", 2: "indices", 3: "offsets", 4: "max_indices"})
    yield (ops.embedding_bag_backward.default, "embedding_bag_backward",
           lambda: [r(2, 4), w, idx, off, torch.empty(0, dtype=torch.long), "sum", r(4), None, False],
           {6: "per_sample_weights"})
    yield ops.fused_matmul.default, "fused_matmul", lambda: [r(3, 4), r(4, 5), 1.0, False, False], {0: "a", 1: "b"}
    yield (ops.fused_linear_forward.default, "fused_linear", lambda: [r(3, 4), r(5, 4), r(5), "gelu", True],
           {0: "x", 1: "weight", 2: "bias"})
    yield (ops.fused_linear_backward.default, "fused_linear_backward",
           lambda: [r(3, 5), r(3, 4), r(5, 4), r(3, 5), "gelu", True, [True, True, True]],
           {0: "grad", 1: "x", 2: "weight", 3: "aux"})
    yield ops.rms_norm_forward.default, "rms_norm", lambda: [r(3, 4), r(4), 1e-6], {0: "x", 1: "weight"}
    yield (ops.add_rms_norm_forward.default, "add_rms_norm", lambda: [r(3, 4), r(3, 4), r(4), 1e-6],
           {0: "x", 1: "residual", 2: "weight"})
    yield (ops.rms_norm_backward.default, "rms_norm_backward",
           lambda: [r(3, 4), r(3, 4), r(4), r(3).abs(), r(3, 4), [True, True]],
           {0: "grad", 1: "x", 2: "weight", 3: "rstd", 4: "grad_add"})
    yield (ops.rotary_embedding.default, "rotary_embedding", lambda: [r(2, 3, 8), r(3, 2), r(3, 2), False],
           {0: "x", 1: "cos", 2: "sin"})
    yield (ops.rotary_embedding_backward.default, "rotary_embedding_backward",
           lambda: [r(2, 3, 8), r(3, 2), r(3, 2), False], {0: "grad", 1: "cos", 2: "sin"})
    yield ops.swiglu.default, "swiglu", lambda: [r(3, 4), r(3, 4)], {0: "gate", 1: "up"}
    yield ops.geglu.default, "geglu", lambda: [r(3, 4), r(3, 4), "none"], {0: "gate", 1: "up"}
    yield (ops.glu_backward.default, "glu_backward", lambda: [r(3, 4), r(3, 4), r(3, 4), "silu"],
           {0: "grad", 1: "gate", 2: "up"})


CASES = [pytest.param(op, name, build, pos, arg, id=f"{name}-{arg}")
         for op, name, build, positions in _cases() for pos, arg in positions.items()]


def _message(name):
    return rf"teachcompute_ext\.{name}: Expected all tensors to be on the same device, but found at least two devices"


@pytest.mark.parametrize("op,name,build,pos,arg", CASES)
def test_every_tensor_argument_on_another_device_is_refused_by_the_frontend(op, name, build, pos, arg):
    args = build()
    args[pos] = args[pos].to("meta")
    with pytest.raises(RuntimeError, match=_message(name)) as err:
        op.redispatch(CPU_KEYS, *args)
    assert "is on meta" in str(err.value) and "is on cpu" in str(err.value)


@pytest.mark.parametrize("op,name,build,pos,arg", CASES)
def test_the_fake_kernels_refuse_the_same_mixes(op, name, build, pos, arg):
    args = build()
    args[pos] = args[pos].to("meta")
    with pytest.raises(RuntimeError, match=_message(name)):
        op(*args)


def test_the_same_args_on_one_device_are_accepted():
    for op, name, build, positions in _cases():
        args = build()
        op.redispatch(CPU_KEYS, *args)  # no error


needs_cuda = pytest.mark.skipif(not CUDA_OK, reason="no CUDA device or CUDA not compiled")


@needs_cuda
@pytest.mark.parametrize("op,name,build,pos,arg", CASES)
def test_cuda_tensors_beside_a_cpu_argument_are_refused(op, name, build, pos, arg):
    args = [a.cuda() if isinstance(a, torch.Tensor) and i != pos else a for i, a in enumerate(build())]
    with pytest.raises(RuntimeError, match=_message(name)):
        op(*args)
    torch.cuda.synchronize()  # the context is intact


# ---- values only the device reads: CPU exceptions, CUDA device-side asserts -------------------------
BAD_VALUES = {
    "scatter_nd index": ("t.scatter_nd(torch.zeros(5, 3, device=d), torch.tensor([[1], [7]], device=d), "
                         "torch.ones(2, 3, device=d), 'add')",
                         "teachcompute_ext.scatter_nd: index 7 out of range for dim 0 of size 5"),
    "scatter_nd_of_shape index": ("t.scatter_nd_of_shape([5, 3], torch.tensor([[-6]], device=d), "
                                  "torch.ones(1, 3, device=d))",
                                  "teachcompute_ext.scatter_nd_of_shape: index -6 out of range for dim 0 of size 5"),
    "embedding negative index": ("t.embedding(torch.randn(10, 4, device=d), torch.tensor([1, -1], device=d))",
                                 "teachcompute_ext.embedding: index -1 out of range for argument 'indices'"),
    "embedding_backward index": ("torch.ops.teachcompute_ext.embedding_backward(torch.ones(2, 4, device=d), "
                                 "torch.tensor([1, 10], device=d), 10)",
                                 "teachcompute_ext.embedding_backward: index 10 out of range for argument 'indices'"),
    "embedding_bag index": ("t.embedding_bag(torch.randn(10, 4, device=d), torch.tensor([1, 12], device=d), "
                            "torch.tensor([0], device=d), 'sum')",
                            "teachcompute_ext.embedding_bag: index 12 out of range for argument 'indices'"),
    "embedding_bag negative offset": ("t.embedding_bag(torch.randn(10, 4, device=d), torch.tensor([1, 2, 3], "
                                      "device=d), torch.tensor([0, -2], device=d), 'sum')",
                                      "teachcompute_ext.embedding_bag: 'offsets' must be non-decreasing"),
    "embedding_bag decreasing offsets": ("t.embedding_bag(torch.randn(10, 4, device=d), torch.tensor([1, 2, 3], "
                                         "device=d), torch.tensor([0, 2, 1], device=d), 'mean')",
                                         "teachcompute_ext.embedding_bag: 'offsets' must be non-decreasing"),
    "embedding_bag offset past the end": ("t.embedding_bag(torch.randn(10, 4, device=d), torch.tensor([1, 2], "
                                          "device=d), torch.tensor([0, 5], device=d), 'sum')",
                                          "teachcompute_ext.embedding_bag: offsets[1] = 5 is past the end"),
    "embedding_bag_backward decreasing offsets": (
        "torch.ops.teachcompute_ext.embedding_bag_backward(torch.ones(3, 4, device=d), torch.randn(10, 4, device=d), "
        "torch.tensor([1, 2, 3], device=d), torch.tensor([0, 2, 1], device=d), torch.empty(0, dtype=torch.long, "
        "device=d), 'sum', None, None, False)",
        "teachcompute_ext.embedding_bag_backward: 'offsets' must be non-decreasing"),
}


@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_cpu_refuses_bad_indices_and_offsets_with_the_op_and_argument(case):
    expr, message = BAD_VALUES[case]
    with pytest.raises((IndexError, ValueError, RuntimeError)) as err:
        eval(expr, {"torch": torch, "t": teachcompute_ext, "d": "cpu"})
    assert message in str(err.value)


@needs_cuda
@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_cuda_device_side_assert_names_the_op_and_argument(case):
    expr, message = BAD_VALUES[case]
    code = textwrap.dedent(f"""
        import torch, teachcompute_ext as t
        d = "cuda"
        out = {expr}
        torch.cuda.synchronize()
    """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode != 0, "a bad value went through on CUDA"
    assert message in run.stdout + run.stderr, (run.stdout + run.stderr)[-3000:]


@pytest.mark.parametrize("isa", ["default", "avx2", "avx512"])
def test_every_op_on_every_cpu_isa_build(isa):
    # The stubs run the ISA build torch runs (ATEN_CPU_CAPABILITY); each build
    # holds the launches and kernels of every op (tests/every_op.py).
    script = os.path.join(os.path.dirname(__file__), "every_op.py")
    env = dict(os.environ, ATEN_CPU_CAPABILITY=isa, TCE_SANITIZE_DEVICE="cpu")
    run = subprocess.run([sys.executable, script], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    assert ", 0 wrong" in run.stdout


def test_gpu_proof_sees_the_gpu_it_expects():
    """benchmarks/gpu_check.sh sets TEACHCOMPUTE_EXT_REQUIRE_CUDA=1: the suite fails (conftest), and this test
    too, when no GPU is seen, instead of skipping every CUDA test."""
    if os.environ.get("TEACHCOMPUTE_EXT_REQUIRE_CUDA") == "1":
        assert CUDA_OK, "a GPU was expected (TEACHCOMPUTE_EXT_REQUIRE_CUDA=1) but none is visible"
