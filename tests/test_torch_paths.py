"""The paths a user of torch's own ops takes, beyond those of test_users_paths.py:
CUDA graphs (every op forward and backward captured and replayed,
torch.compile(mode="reduce-overhead")) and what makes them possible on every
device (no host read of tensor data on any forward or backward path, checked on
the CPU), AOTInductor packages, activation checkpointing (plain and selective,
eager and compiled) and FSDP2 (fully_shard, 2 gloo processes on the CPU)."""

import functools
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.fx.experimental.proxy_tensor import make_fx
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

import teachcompute_ext as t

import op_db
from conftest import CUDA_OK
from test_users_paths import TinyModel, _free_port, _train

ops = torch.ops.teachcompute_ext
ROOT = Path(__file__).resolve().parent.parent
cuda_only = pytest.mark.skipif(not CUDA_OK, reason="no CUDA device or CUDA not compiled")


# ---- every op, forward and backward, on small inputs ------------------------------------------
# name -> (fn(*tensors) -> output(s), make(seed) -> the CPU tensors, differentiable): each of the
# op table's small samples (tests/op_db.py), its tensors the arguments and the rest fixed. The
# floating inputs of a differentiable case are the leaves the backward differentiates.
def _case(op, k):
    template = op.small("cpu", torch.float32)[k]
    where = [i for i, a in enumerate(template.args) if isinstance(a, torch.Tensor)]

    def fn(*tensors):
        args = list(template.args)
        for i, x in zip(where, tensors):
            args[i] = x
        return op_db.call(op, op_db.Sample(tuple(args)))

    def make(seed):
        return [a for a in op.small("cpu", torch.float32, seed)[k].args if isinstance(a, torch.Tensor)]

    return fn, make, op.differentiable and template.grad


CASES = {
    f"{op.name}-{s.name}" if s.name else op.name: _case(op, k)
    for op in op_db.PUBLIC
    for k, s in enumerate(op.small("cpu", torch.float32))
}


@pytest.mark.parametrize("name", [n for n, case in CASES.items() if case[2]])
def test_double_backward_gradgradcheck(name):
    # create_graph=True (gradient penalties, Hessian-vector products): the
    # backward records a graph of aten ops that a second backward differentiates.
    # The fused backward ops have no derivative: their second-order terms were
    # silently dropped (softmax, rms_norm, swiglu...) or raised (fused_linear).
    fn, make, _ = CASES[name]
    xs = [x.double() if x.is_floating_point() else x for x in make(3)]
    where = [i for i, x in enumerate(xs) if x.is_floating_point()]

    def f(*leaves):
        args = list(xs)
        for i, leaf in zip(where, leaves):
            args[i] = leaf
        outs = fn(*args)
        return tuple(o for o in (outs if isinstance(outs, tuple) else (outs,)) if o.is_floating_point())

    leaves = [xs[i].clone().requires_grad_() for i in where]
    assert torch.autograd.gradgradcheck(f, leaves)
    _graph_backward_matches_fused_backward(f, leaves)


def _graph_backward_matches_fused_backward(f, leaves):
    """The first-order gradients of the graph-recording backward (create_graph)
    are those of the fused one: gradgradcheck alone would pass a consistently wrong one."""

    def grads(create_graph):
        outs = f(*leaves)
        loss = sum((o * torch.linspace(-1, 2, o.numel(), dtype=o.dtype).view(o.shape)).sum() for o in outs)
        return torch.autograd.grad(loss, leaves, create_graph=create_graph, allow_unused=True)

    for a, b in zip(grads(True), grads(False)):
        if b is None:
            assert a is None
        else:
            torch.testing.assert_close(a, b)


def _inputs(name, device, seed):
    _, make, differentiable = CASES[name]
    xs = [x.to(device) for x in make(seed)]
    return [x.requires_grad_() if differentiable and x.is_floating_point() else x for x in xs]


def _forward_backward(fn):
    """fn's outputs, then the gradients of sum(out * out) for every input that requires grad."""

    def run(*inputs):
        outs = fn(*inputs)
        outs = outs if isinstance(outs, tuple) else (outs,)
        leaves = [x for x in inputs if x.requires_grad]
        if not leaves:
            return outs
        loss = sum((o * o).sum() for o in outs if o.is_floating_point())
        return outs + torch.autograd.grad(loss, leaves)

    return run


def test_every_public_op_has_a_case():
    covered = {name.split("-")[0] for name in CASES}
    assert covered == set(t.ops.__all__), set(t.ops.__all__) ^ covered


# ---- item 5: no host read of tensor data (what a CUDA graph capture needs) ----------------------
HOST_READS = (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.item.default)


def traced_host_reads(fn, inputs):
    """Host reads in fn's forward and backward as torch.compile and torch.export see them: .item(),
    .tolist(), float(t) trace to aten._local_scalar_dense (the Python wrappers, the C++ autograd
    Functions and the fake kernels all run under make_fx; the C++ frontends do not, see below)."""
    gm = make_fx(_forward_backward(fn), tracing_mode="symbolic")(*inputs)
    return [n.format_node() for n in gm.graph.nodes if n.op == "call_function" and n.target in HOST_READS]


class HostReadOnCpu:
    """While active, a CPU tensor's .item() (from Python or C++: at::Tensor::item goes through the
    dispatcher's aten::_local_scalar_dense) raises: the C++ frontends are device-generic, so a host
    read there on the CPU is a synchronization on CUDA."""

    def __enter__(self):
        def refuse(x):
            raise AssertionError(f"host read of tensor data (.item() of a {list(x.shape)} tensor)")

        self.lib = torch.library.Library("aten", "IMPL")
        self.lib.impl("_local_scalar_dense", refuse, "CPU")
        return self

    def __exit__(self, *exc):
        self.lib._destroy()  # puts aten's own kernel back


class _ReadsInBackward(torch.autograd.Function):
    """A deliberately broken op: its backward reads a value on the host."""

    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, g):
        return g * g.abs().max().item()


def test_host_read_detectors_catch_a_host_read():
    x = torch.randn(4, 5, requires_grad=True)
    assert traced_host_reads(lambda x: t.softmax(x * x.sum().item(), -1), [x])
    assert traced_host_reads(lambda x: t.softmax(_ReadsInBackward.apply(x), -1), [x])
    assert traced_host_reads(lambda x: t.softmax(x, -1) * sum(x[0].tolist()), [x])
    with HostReadOnCpu(), pytest.raises(AssertionError, match="host read"):
        _forward_backward(lambda x: t.softmax(_ReadsInBackward.apply(x), -1))(x)
    assert torch.tensor(3.0).item() == 3.0  # aten's kernel is back


@pytest.mark.parametrize("name", list(CASES))
def test_no_host_read_in_forward_or_backward(name):
    fn = CASES[name][0]
    assert traced_host_reads(fn, _inputs(name, "cpu", 0)) == []
    with HostReadOnCpu():
        _forward_backward(fn)(*_inputs(name, "cpu", 0))


# Text patterns of a host read or transfer; comments are stripped first.
HOST_SYNC_PATTERNS = [
    r"\.item\s*[<(]",
    r"\bitem<",
    r"\.cpu\s*\(",
    r"\.to\s*\([^;)]*kCPU",
    r"device\s*\(\s*(at::|c10::)?kCPU",
    r"_local_scalar_dense",
    r"\.equal\s*\(",
    r"is_nonzero",
    r"\.nonzero\s*\(",
    r"[Ss]ynchronize",
]
CUDA_FORBIDDEN = [
    r"\bcudaMalloc\w*\s*\(",
    r"\bcudaFree\s*\(",
    r"\bcudaMemcpy\s*\(",
    r"\bcudaMemset\s*\(",
    r"[Ss]ynchronize",
    r"getDefaultCUDAStream",
    r"cudaStreamLegacy",
    r"\.item\s*[<(]",
    r"\.cpu\s*\(",
]


def _code(path):
    text = re.sub(r"/\*.*?\*/", "", Path(path).read_text(), flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def host_syncs(code, patterns):
    return [(code.count("\n", 0, m.start()) + 1, m.group()) for p in patterns for m in re.finditer(p, code)]


def launches_off_the_current_stream(code):
    """<<<grid, block, shared, stream>>> launches whose stream is not named (the default stream
    is outside a graph capture and outside the caller's stream order)."""
    bad = []
    for m in re.finditer(r"<<<(.*?)>>>", code, flags=re.S):
        args = m.group(1)
        while re.search(r"\([^()]*\)", args):  # drop nested calls so only top-level commas remain
            args = re.sub(r"\([^()]*\)", "", args)
        parts = [a.strip() for a in args.split(",")]
        if len(parts) < 4 or "stream" not in parts[3].lower():
            bad.append((code.count("\n", 0, m.start()) + 1, m.group()))
    return bad


def test_source_check_catches_host_syncs():
    assert host_syncs("auto n = offsets.max().item<int64_t>(); // .item()", HOST_SYNC_PATTERNS)
    assert host_syncs("x.to(at::kCPU)", HOST_SYNC_PATTERNS)
    assert host_syncs("at::empty({n}, x.options().device(at::kCPU))", HOST_SYNC_PATTERNS)
    assert not host_syncs("const auto idx = indices.to(at::kLong);", HOST_SYNC_PATTERNS)
    assert host_syncs("cudaMemcpy(a, b, n, cudaMemcpyDeviceToHost);", CUDA_FORBIDDEN)
    assert launches_off_the_current_stream("k<<<grid_for(n), 256>>>(p);")
    assert not launches_off_the_current_stream("k<<<grid_for(n), dim3(32, 8), 0, stream>>>(p);")


def test_device_generic_sources_have_no_host_sync():
    frontends = [p for p in ROOT.glob("csrc/*/*.cpp") if p.stem == p.parent.name or p.stem.endswith("_autograd")]
    assert len(frontends) >= 8, frontends  # every family's frontend and autograd file
    bad = {str(p.relative_to(ROOT)): host_syncs(_code(p), HOST_SYNC_PATTERNS) for p in frontends}
    cuda = sorted(ROOT.glob("csrc/*/*.cu")) + sorted(ROOT.glob("csrc/*/*.cuh"))
    for p in cuda:
        bad[str(p.relative_to(ROOT))] = host_syncs(_code(p), CUDA_FORBIDDEN) + launches_off_the_current_stream(_code(p))
    assert {k: v for k, v in bad.items() if v} == {}


# ---- item 5: CUDA graphs --------------------------------------------------------------------------
@cuda_only
@pytest.mark.parametrize("name", list(CASES))
def test_cuda_graph_capture_and_replay_matches_eager(name):
    run = _forward_backward(CASES[name][0])
    static = _inputs(name, "cuda", 0)
    # Warm-up on a side stream first, as torch.cuda.graph's documentation says: lazy
    # initializations (cuBLASLt handle, workspace) must not happen during the capture.
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            run(*static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = run(*static)
    for seed in (1, 2):
        fresh = _inputs(name, "cuda", seed)
        with torch.no_grad():
            for s, f in zip(static, fresh):
                s.copy_(f)
        graph.replay()
        expected = run(*fresh)
        torch.testing.assert_close(captured, expected)


@cuda_only
@torch._inductor.config.patch(force_disable_caches=True)
def test_compile_reduce_overhead_matches_eager_on_cuda():
    from torch._dynamo.utils import counters
    from torch._inductor import cudagraph_trees

    torch.manual_seed(5)
    model = TinyModel().cuda()
    params = list(model.parameters())
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(model, mode="reduce-overhead")
    for step in range(4):  # cudagraph trees warm up, record, then replay
        torch.compiler.cudagraph_mark_step_begin()
        tokens = torch.randint(0, 100, (8, 5), device="cuda")
        out = compiled(tokens)
        grads = torch.autograd.grad(out.sin().sum(), params)
        ref = model(tokens)
        torch.testing.assert_close(out, ref)
        for a, e in zip(grads, torch.autograd.grad(ref.sin().sum(), params)):
            torch.testing.assert_close(a, e)
    # Inductor falls back to no graph, silently but for this counter and a log line, when it
    # finds something it cannot capture.
    assert counters["inductor"]["cudagraph_skips"] == 0, dict(counters["inductor"])
    manager = cudagraph_trees.get_manager(torch.cuda.current_device(), create_if_none_exists=False)
    assert manager is not None and any(manager.roots.values()), "no CUDA graph was recorded"


# ---- item 6: AOTInductor ------------------------------------------------------------------------
_DEPLOYED = """
import sys, torch
if sys.argv[1] != "-":
    torch.ops.load_library(sys.argv[1])  # the op library alone: no teachcompute_ext Python
runner = torch._inductor.aoti_load_package(sys.argv[2])
for tokens, expected in torch.load(sys.argv[3]):
    torch.testing.assert_close(runner(tokens), expected)
print("deployed ok")
"""


@torch._inductor.config.patch(force_disable_caches=True)
def test_aoti_package_matches_eager_and_needs_only_the_op_library(tmp_path):
    torch.manual_seed(4)
    model = TinyModel().eval()
    batch = torch.export.Dim("batch", min=2, max=64)
    ep = torch.export.export(model, (torch.randint(0, 100, (6, 5)),), dynamic_shapes={"tokens": {0: batch}})
    path = torch._inductor.aoti_compile_and_package(ep, package_path=str(tmp_path / "tiny.pt2"))
    runner = torch._inductor.aoti_load_package(path)
    cases = []
    for b in (2, 3, 17, 64):
        tokens = torch.randint(0, 100, (b, 5))
        with torch.no_grad():
            expected = model(tokens)
        torch.testing.assert_close(runner(tokens), expected)
        cases.append((tokens, expected))
    torch.save(cases, tmp_path / "cases.pt")
    script = tmp_path / "deployed.py"
    script.write_text(_DEPLOYED)
    so = t._loader._library_path()
    env = {**os.environ, "PYTHONPATH": ""}
    ok = subprocess.run(
        [sys.executable, str(script), so, path, str(tmp_path / "cases.pt")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ok.returncode == 0 and "deployed ok" in ok.stdout, ok.stderr[-3000:]
    # Without the op library the package cannot even load: the schemas come from the .so.
    missing = subprocess.run(
        [sys.executable, str(script), "-", path, str(tmp_path / "cases.pt")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert missing.returncode != 0 and "Could not find schema for teachcompute_ext::" in missing.stderr, missing.stderr[
        -3000:
    ]


# ---- item 7: activation checkpointing ------------------------------------------------------------
class OpCounter(TorchDispatchMode):
    """Counts every op that reaches the dispatcher below autograd (recomputed ops included; an op
    whose output selective checkpointing saved is answered from the cache without reaching it)."""

    def __init__(self):
        super().__init__()
        self.counts = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func] += 1
        return func(*args, **(kwargs or {}))


def _loss(out):
    return out.sin().sum()  # not linear in out, so the backward reads the saved activations


def _checkpoint_setup(seed):
    torch.manual_seed(seed)
    model = TinyModel()
    tokens = torch.randint(0, 100, (6, 5))
    params = list(model.parameters())
    return model, tokens, params, torch.autograd.grad(_loss(model(tokens)), params)


def _grads_and_backward_counts(model, tokens, params, **kwargs):
    out = checkpoint(model, tokens, use_reentrant=False, **kwargs)
    with OpCounter() as counter:
        grads = torch.autograd.grad(_loss(out), params)
    return grads, counter.counts


def _sac(policy_ops, rest=CheckpointPolicy.PREFER_RECOMPUTE, chosen=CheckpointPolicy.MUST_SAVE):
    def policy(ctx, op, *args, **kwargs):
        return chosen if op in policy_ops else rest

    return functools.partial(create_selective_checkpoint_contexts, policy)


def test_checkpoint_recomputes_and_gives_the_same_gradients():
    model, tokens, params, ref = _checkpoint_setup(6)
    grads, counts = _grads_and_backward_counts(model, tokens, params)
    for a, e in zip(grads, ref):
        torch.testing.assert_close(a, e)
    # the whole forward ran again in the backward: both FusedLinear layers, every op
    assert counts[ops.fused_linear_forward.default] == 2
    assert counts[ops.softmax.default] == 1 and counts[ops.embedding_bag_forward.default] == 2


SAVED = (ops.fused_linear_forward.default, ops.fused_matmul.default)


def test_selective_checkpoint_saves_the_matmuls_and_recomputes_the_rest():
    model, tokens, params, ref = _checkpoint_setup(7)
    grads, counts = _grads_and_backward_counts(model, tokens, params, context_fn=_sac(SAVED))
    for a, e in zip(grads, ref):
        torch.testing.assert_close(a, e)
    assert counts[ops.fused_linear_forward.default] == 0  # saved
    assert counts[ops.softmax.default] == 1 and counts[ops.embedding_bag_forward.default] == 2  # recomputed


def _compiled_backward_graph(fn, *args):
    """fn compiled by AOTAutograd with inductor's partitioner (the one that applies the SAC
    policy), run eagerly on the graphs it produces; returns fn's result and the backward graph."""
    from functorch.compile import make_boxed_func, min_cut_rematerialization_partition
    from torch._dynamo.backends.common import aot_autograd

    graphs = {}

    def keep(name):
        def compiler(gm, example_inputs):
            graphs[name] = gm
            return make_boxed_func(gm.forward)

        return compiler

    backend = aot_autograd(
        fw_compiler=keep("forward"), bw_compiler=keep("backward"), partition_fn=min_cut_rematerialization_partition
    )
    torch._dynamo.reset()
    out = torch.compile(fn, backend=backend, fullgraph=True)(*args)
    return out, graphs


def test_selective_checkpoint_under_compile():
    model, tokens, params, ref = _checkpoint_setup(8)
    for chosen, in_backward in ((CheckpointPolicy.MUST_SAVE, 0), (CheckpointPolicy.MUST_RECOMPUTE, 2)):
        ctx = _sac((ops.fused_linear_forward.default,), chosen=chosen)
        out, graphs = _compiled_backward_graph(
            lambda tok: checkpoint(model, tok, use_reentrant=False, context_fn=ctx), tokens
        )
        grads = torch.autograd.grad(_loss(out), params)
        for a, e in zip(grads, ref):
            torch.testing.assert_close(a, e)
        targets = [n.target for n in graphs["backward"].graph.nodes if n.op == "call_function"]
        assert targets.count(ops.fused_linear_forward.default) == in_backward, (chosen, targets)


# ---- item 8: FSDP2 --------------------------------------------------------------------------------
class Layers(torch.nn.Module):
    """The package's standalone layers, each sharded on its own."""

    def __init__(self):
        super().__init__()
        self.bag = t.nn.EmbeddingBag(100, 16, mode="sum")
        self.hidden = t.nn.FusedLinear(16, 24, activation="silu")
        self.out = t.nn.FusedLinear(24, 4)

    def forward(self, tokens):
        return torch.log_softmax(self.out(self.hidden(self.bag(tokens))), -1)


def _fsdp_worker(rank, world, port, states, batches, out_path):
    from torch.distributed.fsdp import fully_shard

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    local = [(x.chunk(world)[rank], y.chunk(world)[rank]) for x, y in batches]
    trained = {}
    for cls, children in ((TinyModel, ("bag", "hidden", "proj")), (Layers, ("bag", "hidden", "out"))):
        model = cls()
        model.load_state_dict(states[cls.__name__])
        # TinyModel.emb stays in the root's group: forward reads emb.weight outside emb's own
        # forward, where a separately sharded parameter is a DTensor (as with torch's ops).
        for name in children:
            fully_shard(getattr(model, name))
        fully_shard(model)
        _train(model, local)
        trained[cls.__name__] = {k: v.full_tensor() for k, v in model.state_dict().items()}
    if rank == 0:
        torch.save(trained, out_path)
    dist.barrier()  # both ranks done before teardown (see test_users_paths._ddp_worker)
    dist.destroy_process_group()


def test_fsdp2_two_cpu_processes_match_a_single_process(tmp_path):
    torch.manual_seed(9)
    models = {"TinyModel": TinyModel(), "Layers": Layers()}
    states = {k: {n: v.clone() for n, v in m.state_dict().items()} for k, m in models.items()}
    g = torch.Generator().manual_seed(10)
    batches = [(torch.randint(0, 100, (8, 5), generator=g), torch.randint(0, 4, (8,), generator=g)) for _ in range(4)]
    out = str(tmp_path / "fsdp.pt")
    mp.spawn(_fsdp_worker, args=(2, _free_port(), states, batches, out), nprocs=2, join=True)
    trained = torch.load(out)
    for name, model in models.items():
        _train(model, batches)  # one process, the same global batches
        for k, v in model.state_dict().items():
            torch.testing.assert_close(trained[name][k], v, rtol=1e-5, atol=1e-6, msg=f"{name}.{k}")


# ---- stride tags: Inductor hands each op the layout it really needs --------------------------
def _arg_layouts(code, name):
    """(sizes, strides) of each buffer the generated code passes to teachcompute_ext.<name>: read
    from the empty_strided_cpu(...) that allocates it, or from the reinterpret_tensor(...) around it.
    Graph inputs (arg*) are skipped: their layout is the caller's."""
    shapes = {m[1]: (m[2], m[3]) for m in re.finditer(r"(buf\d+) = empty_strided_cpu\(\(([^)]*)\), \(([^)]*)\)", code)}
    layouts = []
    for call in re.finditer(rf"torch\.ops\.teachcompute_ext\.{name}\.default\((.*)\)$", code, flags=re.M):
        args = call[1]
        for m in re.finditer(r"reinterpret_tensor\((buf\d+), \(([^)]*)\), \(([^)]*)\)", args):
            layouts.append((m[2], m[3]))
        args = re.sub(r"reinterpret_tensor\([^()]*(\([^)]*\)[^()]*)*\)", "", args)
        layouts += [shapes[b] for b in re.findall(r"\b(buf\d+)\b", args) if b in shapes]
    return [
        ([int(v) for v in a.split(",") if v.strip()], [int(v) for v in b.split(",") if v.strip()]) for a, b in layouts
    ]


def _contiguous(sizes, strides):
    expected = 1
    for size, stride in reversed(list(zip(sizes, strides))):
        if size != 1 and stride != expected:
            return False
        expected *= size
    return True


# A transposed producer: torch's default contract (fixed stride order) keeps its
# transposed strides, and then the op's own .contiguous() copies it a second time.
LAYOUT_CASES = {
    "softmax": lambda x, i: t.softmax(torch.relu(x).t() * 2, 1),
    "log_softmax": lambda x, i: t.log_softmax(torch.relu(x).t(), 0),
    "embedding": lambda x, i: t.embedding(torch.relu(x).t(), i),
    "embedding_bag_forward": lambda x, i: t.embedding_bag(torch.relu(x).t(), i.view(2, 2), None, "sum"),
    "scatter_nd": lambda x, i: t.scatter_nd(x.t() + 1, i.view(-1, 1), torch.relu(x[:, :4]).t(), "add"),
    # flexible: any strides are read in place, whatever Inductor picks
    "reduce_sum": lambda x, i: t.reduce_sum(torch.relu(x).t(), [1]),
    "fused_matmul": lambda x, i: t.fused_matmul(torch.relu(x).t(), x),
}


@pytest.mark.parametrize("name", sorted(LAYOUT_CASES))
@torch._inductor.config.patch(force_disable_caches=True)  # the FX graph cache does not key on op tags
def test_compiled_graph_adds_no_copy_around_our_ops(name):
    from torch._inductor.utils import run_and_get_code

    fn = LAYOUT_CASES[name]
    x, i = torch.randn(64, 32), torch.tensor([1, 2, 5, 0])
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True)
    out, (code, *_) = run_and_get_code(compiled, x, i)
    torch.testing.assert_close(out, fn(x, i))
    # One kernel at most: the producer (relu, mul...) writes the op's input in its final layout, no copy kernel.
    assert len(re.findall(r"^cpp_fused_\w+ = ", code, flags=re.M)) <= 1, code
    layouts = _arg_layouts(code, name)
    assert layouts or name in ("reduce_sum", "fused_matmul"), code
    if torch.Tag.needs_contiguous_strides in getattr(ops, name).default.tags:
        # contiguous inputs: the frontend's .contiguous() is a no-op, the only copy is gone
        assert all(_contiguous(*lay) for lay in layouts), (layouts, code)


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("layout", ["offsets", "last_offset", "2d"])
def test_embedding_bag_double_backward_every_layout(mode, layout):
    # The graph-recording backward finds each position's bag itself: offsets with
    # an empty bag, include_last_offset with positions past the last offset,
    # fixed-length bags of 2-D indices; padding rows count for nothing.
    g = torch.Generator().manual_seed(8)
    w = torch.randn(12, 4, generator=g, dtype=torch.float64, requires_grad=True)
    idx = torch.randint(0, 12, (10,), generator=g)
    idx[[2, 7]] = 5  # padding_idx
    if layout == "2d":
        args = (idx.view(5, 2), None)
    else:
        args = (idx, torch.tensor([0, 3, 3, 8]))
    psw = None
    if mode == "sum":
        psw = torch.randn(10, generator=g, dtype=torch.float64).view(args[0].shape).requires_grad_()

    def f(w, *p):
        return t.embedding_bag(w, args[0], args[1], mode, p[0] if p else None, 5, layout == "last_offset")

    leaves = (w, psw) if psw is not None else (w,)
    assert torch.autograd.gradgradcheck(f, leaves)
    _graph_backward_matches_fused_backward(lambda *a: (f(*a),), leaves)


@pytest.mark.parametrize("act", ["gelu", "silu", "gelu_tanh"])
def test_fused_linear_double_backward_through_the_bias_alone(act):
    # Only the bias needs a gradient: its second derivative goes through act''.
    g = torch.Generator().manual_seed(9)
    x, w = torch.randn(5, 8, generator=g, dtype=torch.float64), torch.randn(6, 8, generator=g, dtype=torch.float64)
    b = torch.randn(6, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda b: t.fused_linear(x, w, b, act), (b,))
    # The Hessian of a sum: the incoming gradient (ones) needs none, the bias does.
    approx = "tanh" if act == "gelu_tanh" else "none"
    ref = {"gelu": lambda y: F.gelu(y), "gelu_tanh": lambda y: F.gelu(y, approximate=approx), "silu": F.silu}[act]
    got = torch.autograd.functional.hessian(lambda b: t.fused_linear(x, w, b, act).sum(), b)
    want = torch.autograd.functional.hessian(lambda b: ref(F.linear(x, w, b)).sum(), b)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("name", [n for n, case in CASES.items() if case[2]])
def test_forward_mode_ad_is_refused_not_dropped(name):
    # No tangent rule: a dual input is refused, as torch refuses its ops that
    # have no forward formula. The tangent was silently dropped (torch.func.jvp
    # gave a zero JVP, jacfwd a zero Jacobian, hessian a wrong Hessian).
    import torch.autograd.forward_ad as fwAD

    fn, make, _ = CASES[name]
    xs = make(4)
    i = next(k for k, x in enumerate(xs) if x.is_floating_point())
    with fwAD.dual_level():
        args = list(xs)
        args[i] = fwAD.make_dual(xs[i], torch.randn_like(xs[i]))
        with pytest.raises(NotImplementedError, match=r"teachcompute_ext\.\w+: forward-mode AD is not supported"):
            fn(*args)

    def f(x):
        args = list(xs)
        args[i] = x
        out = fn(*args)
        return out[0] if isinstance(out, tuple) else out

    with pytest.raises(NotImplementedError, match="forward-mode AD"):
        torch.func.jvp(f, (xs[i],), (torch.randn_like(xs[i]),))
