"""teachcompute_ext.models.LlamaForCausalLM against its pure-torch twin (fused=()),
on every path a user's model takes (eager and autograd, torch.compile, torch.export,
ONNX, DDP), and the modules it is made of (nn.RMSNorm, nn.GatedMLP,
nn.RotaryEmbedding) against torch's and transformers' formulas."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import teachcompute_ext
from teachcompute_ext.models import ALL, PIECES, LlamaConfig, LlamaForCausalLM
from teachcompute_ext.models.llama import IGNORE_INDEX, rotate_half

# the ops each piece of `fused` runs (a backward op counts as its forward's)
PIECE_OPS = {
    "embedding": {"embedding"},
    "rms_norm": {"rms_norm", "add_rms_norm"},
    "rotary": {"rotary_embedding"},
    "mlp": {"swiglu"},
    "loss": {"log_softmax"},
}


class OpsCalled(TorchDispatchMode):
    """Records the teachcompute_ext ops that reach the dispatcher, named as their forward."""

    def __init__(self):
        super().__init__()
        self.names = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "teachcompute_ext":
            self.names.add(func._opname.removesuffix("_backward").removesuffix("_forward"))
        return func(*args, **(kwargs or {}))


def random_config(seed, **overrides):
    g = torch.Generator().manual_seed(seed)

    def pick(*choices):
        return choices[int(torch.randint(len(choices), (1,), generator=g))]

    kv = pick(1, 2)
    heads = kv * pick(1, 2)
    head_dim = pick(4, 6, 8)
    fields = dict(
        vocab_size=pick(13, 40),
        hidden_size=heads * head_dim,
        num_heads=heads,
        num_kv_heads=kv,
        intermediate_size=pick(8, 20, 36),
        num_layers=pick(1, 2),
        max_position=32,
        rope_theta=pick(10000.0, 500.0),
        rms_eps=pick(1e-6, 1e-5),
        tie_embeddings=pick(False, True),
    )
    fields.update(overrides)
    return LlamaConfig(**fields)


def model_and_twin(config, fused=ALL, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config, fused=fused, dtype=dtype)
    twin = LlamaForCausalLM(config, fused=(), dtype=dtype)
    twin.load_state_dict(model.state_dict())
    # torch's default init leaves RMSNorm weights at one: move them so that a lost weight shows
    with torch.no_grad():
        for m in (model, twin):
            for name, p in m.named_parameters():
                if name.endswith("layernorm.weight") or name == "model.norm.weight":
                    p.copy_(1 + 0.5 * torch.sin(torch.arange(p.numel(), dtype=dtype) + len(name)))
    return model, twin


def batch(config, b, s, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, config.vocab_size, (b, s), generator=g)
    labels = torch.randint(0, config.vocab_size, (b, s), generator=g)
    labels[0, 1] = IGNORE_INDEX  # an ignored label
    return ids, labels


def run(model, ids, labels):
    """Logits, loss and the gradient of every parameter (by name), and the ops called."""
    model.zero_grad(set_to_none=True)
    with OpsCalled() as called:
        logits, loss = model(ids, labels)
        (loss + logits.square().mean()).backward()  # the logits' own gradient too
    grads = {n: p.grad for n, p in model.named_parameters()}
    return logits, loss, grads, called.names


def assert_same_run(a, b):
    torch.testing.assert_close(a[0], b[0])
    torch.testing.assert_close(a[1], b[1])
    assert a[2].keys() == b[2].keys()
    for name in a[2]:
        assert a[2][name] is not None, name
        torch.testing.assert_close(a[2][name], b[2][name], msg=lambda m: f"{name}: {m}")


# ---- (a), (b): the fused model and its twin ---------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("seed", range(3))
def test_fused_model_equals_twin(dtype, seed):
    config = random_config(seed)
    model, twin = model_and_twin(config, dtype=dtype, seed=seed)
    assert list(model.state_dict()) == list(twin.state_dict())
    ids, labels = batch(config, 2 + seed, 5 + 3 * seed, seed)
    fused, plain = run(model, ids, labels), run(twin, ids, labels)
    assert_same_run(fused, plain)
    assert set().union(*PIECE_OPS.values()) <= fused[3], fused[3]
    assert plain[3] == set(), f"the twin called {plain[3]}"


@pytest.mark.parametrize("piece", PIECES)
def test_each_piece_alone_equals_twin(piece):
    config = random_config(7, num_layers=2)
    model, twin = model_and_twin(config, fused={piece}, dtype=torch.float64)
    ids, labels = batch(config, 3, 9)
    fused = run(model, ids, labels)
    assert_same_run(fused, run(twin, ids, labels))
    others = set().union(*(ops for p, ops in PIECE_OPS.items() if p != piece))
    assert PIECE_OPS[piece] <= fused[3] and not fused[3] & others, fused[3]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fused_model_trains_under_autocast_as_the_twin(dtype):
    # Under autocast the Linears' lower-precision outputs meet float32 rotary
    # tables and residuals: the fused ops promote as the twin's elementwise ops
    # (they refused the mixed dtypes before).
    config = random_config(2)
    model, twin = model_and_twin(config, seed=2)
    ids, labels = batch(config, 2, 7, 2)
    runs = []
    for m in (model, twin):
        with torch.autocast("cpu", dtype=dtype):
            logits, loss = m(ids, labels)
        loss.backward()
        runs.append((logits.float(), loss.float(), {n: p.grad for n, p in m.named_parameters()}))
    (a_logits, a_loss, a_grads), (b_logits, b_loss, b_grads) = runs
    assert a_logits.dtype == b_logits.dtype
    torch.testing.assert_close(a_logits, b_logits, rtol=5e-2, atol=5e-2)
    torch.testing.assert_close(a_loss, b_loss, rtol=2e-2, atol=2e-2)
    for name, g in b_grads.items():
        assert a_grads[name] is not None and a_grads[name].dtype == g.dtype, name
        torch.testing.assert_close(a_grads[name], g, rtol=1e-1, atol=1e-1 * g.abs().max().item(), msg=name)


def test_state_dicts_load_across_fused_sets_and_positions():
    config = random_config(4)
    model, twin = model_and_twin(config, dtype=torch.float64)
    ids, _ = batch(config, 2, 6)
    # the twin's state_dict loads into the fused model too (strict: same keys)
    model.load_state_dict(twin.state_dict())
    # position_ids as [seq] and as [batch, seq]: the default ones, and shifted ones
    pos = torch.arange(6)
    for p in (pos, pos.expand(2, 6), torch.stack([pos, pos + 3])):
        torch.testing.assert_close(model(ids, position_ids=p), twin(ids, position_ids=p))
    torch.testing.assert_close(model(ids, position_ids=pos), model(ids))
    with pytest.raises(ValueError, match="unknown fused piece"):
        LlamaForCausalLM(config, fused={"attention"})


# ---- (c), (d), (e): compile, export, ONNX --------------------------------------------------------
def small_config():
    return LlamaConfig(
        vocab_size=32, hidden_size=16, num_heads=4, num_kv_heads=2, intermediate_size=24, num_layers=1, max_position=64
    )


# The inductor caches are off, as in test_users_paths.py: a warm cache hides a specialization.
@torch._dynamo.config.patch(automatic_dynamic_local_pgo=False)
@torch._inductor.config.patch(force_disable_caches=True)
def test_compiles_with_no_graph_break_and_no_recompile():
    config = small_config()
    model, _ = model_and_twin(config)
    ids, labels = batch(config, 2, 5)
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model)(ids, labels)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, dynamic=True)
    compiled(ids, labels)  # compiles once, for a symbolic batch and seq
    params = list(model.parameters())
    with torch.compiler.set_stance("fail_on_recompile"):
        for b, s in ((3, 7), (5, 12)):
            ids, labels = batch(config, b, s, seed=s)
            logits, loss = compiled(ids, labels)
            ref_logits, ref_loss = model(ids, labels)
            torch.testing.assert_close(logits, ref_logits)
            torch.testing.assert_close(loss, ref_loss)
            for got, want in zip(torch.autograd.grad(loss, params), torch.autograd.grad(ref_loss, params)):
                torch.testing.assert_close(got, want)


def test_torch_export_dynamic_batch_and_seq_matches_eager():
    config = small_config()
    model, _ = model_and_twin(config)
    model.eval()
    ids, _ = batch(config, 2, 5)
    dims = {
        "input_ids": {
            0: torch.export.Dim("batch", min=1, max=64),
            1: torch.export.Dim("seq", min=2, max=config.max_position),
        }
    }
    ep = torch.export.export(model, (ids,), dynamic_shapes=dims)
    called = {
        n.target.name().split("::")[1].split(".")[0].removesuffix("_forward")
        for n in ep.graph.nodes
        if n.op == "call_function" and hasattr(n.target, "name") and "teachcompute_ext" in n.target.name()
    }
    assert {"embedding", "rms_norm", "add_rms_norm", "rotary_embedding", "swiglu"} <= called, called
    for b, s in ((1, 2), (3, 9), (4, config.max_position)):
        ids, _ = batch(config, b, s, seed=s)
        torch.testing.assert_close(ep.module()(ids), model(ids))


def test_onnx_export_runs_in_onnxruntime():
    pytest.importorskip("onnxscript")
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    import teachcompute_ext.onnx

    config = small_config()
    model, _ = model_and_twin(config)
    model.eval()
    ids, _ = batch(config, 2, 5)
    dims = {
        "input_ids": {
            0: torch.export.Dim("batch", min=1, max=64),
            1: torch.export.Dim("seq", min=2, max=config.max_position),
        }
    }
    proto = teachcompute_ext.onnx.export(model, (ids,), dynamic_shapes=dims, verbose=False).model_proto
    onnx.checker.check_model(proto)
    assert {n.domain for n in proto.graph.node} <= {"", "ai.onnx"}
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    for b, s in ((1, 3), (3, 11)):
        ids, _ = batch(config, b, s, seed=s)
        (got,) = sess.run(None, {name: ids.numpy()})
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(got), model(ids), rtol=1e-5, atol=1e-5)


# ---- (f): DDP -------------------------------------------------------------------------------------
def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(model, batches, lr=0.05):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for ids, labels in batches:
        opt.zero_grad()
        model(ids, labels)[1].backward()
        opt.step()


def _ddp_worker(rank, world, port, config, init_state, batches, out_path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    model = LlamaForCausalLM(config)
    model.load_state_dict(init_state)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    # each rank trains on its half of every global batch; with as many labels per
    # rank (none ignored), DDP's mean of the ranks' mean losses is the global mean
    _train(ddp, [(ids.chunk(world)[rank], labels.chunk(world)[rank]) for ids, labels in batches])
    if rank == 0:
        torch.save(model.state_dict(), out_path)
    dist.barrier()  # both ranks done before teardown (see test_users_paths.py)
    dist.destroy_process_group()


def test_ddp_two_cpu_processes_match_a_single_process(tmp_path):
    config = small_config()
    model, _ = model_and_twin(config)
    init_state = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(2)
    batches = []
    for _ in range(3):
        ids = torch.randint(0, config.vocab_size, (4, 6), generator=g)
        batches.append((ids, ids.clone()))
    out = str(tmp_path / "ddp.pt")
    mp.spawn(_ddp_worker, args=(2, _free_port(), config, init_state, batches, out), nprocs=2, join=True)
    _train(model, batches)  # one process, the same global batches
    ddp_state = torch.load(out)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(ddp_state[k], v, rtol=1e-5, atol=1e-6, msg=k)


# ---- (g): the modules -----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "shape,eps,affine", [(12, None, True), ((12,), 1e-5, True), (12, None, False), ((3, 12), 1e-6, True)]
)
def test_rms_norm_is_a_drop_in_for_torch(dtype, shape, eps, affine):
    torch.manual_seed(0)
    ours = teachcompute_ext.nn.RMSNorm(shape, eps=eps, elementwise_affine=affine, dtype=dtype)
    theirs = torch.nn.RMSNorm(shape, eps=eps, elementwise_affine=affine, dtype=dtype)
    assert repr(ours) == repr(theirs)
    if affine:
        theirs.weight.data.uniform_(0.5, 1.5)
        ours.load_state_dict(theirs.state_dict())
        theirs.load_state_dict(ours.state_dict())
        ours.reset_parameters()
        assert torch.equal(ours.weight, torch.ones_like(ours.weight))
        ours.load_state_dict(theirs.state_dict())
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    # rows of mean square near eps (float32's eps is 1.2e-7): a wrong default eps shows
    x = torch.randn(5, 3, 12, dtype=dtype) * torch.tensor([1e-4, 1.0, 10.0], dtype=dtype)[:, None]
    r = torch.randn_like(x)
    x1, x2, r2 = (t.clone().requires_grad_() for t in (x, x, r))
    out, ref = ours(x1), theirs(x2)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(ref)
    params = [ours.weight, theirs.weight] if affine else []
    got = torch.autograd.grad(out, [x1, *params[:1]], g)
    want = torch.autograd.grad(ref, [x2, *params[1:]], g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    # the residual form: (norm(x + residual), x + residual)
    out, h = ours(x1, r2)
    torch.testing.assert_close(h, x + r)
    torch.testing.assert_close(out, theirs(x + r))
    torch.autograd.grad((out * g).sum() + h.sum(), [x1, r2])


@pytest.mark.parametrize("activation", ["silu", "gelu", "gelu_tanh"])
@pytest.mark.parametrize("bias", [False, True])
def test_gated_mlp_matches_the_torch_mlp(activation, bias):
    torch.manual_seed(0)
    mlp = teachcompute_ext.nn.GatedMLP(10, 14, activation, bias=bias, dtype=torch.float64)
    keys = {f"{p}_proj.{w}" for p in ("gate", "up", "down") for w in (("weight", "bias") if bias else ("weight",))}
    assert set(mlp.state_dict()) == keys
    act = {"silu": F.silu, "gelu": F.gelu, "gelu_tanh": lambda t: F.gelu(t, approximate="tanh")}[activation]
    x = torch.randn(2, 3, 10, dtype=torch.float64, requires_grad=True)
    out = mlp(x)
    ref = mlp.down_proj(act(mlp.gate_proj(x)) * mlp.up_proj(x))
    torch.testing.assert_close(out, ref)
    params = [x, *mlp.parameters()]
    for a, b in zip(torch.autograd.grad(out.sum(), params), torch.autograd.grad(ref.sum(), params)):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="unknown activation 'relu'"):
        teachcompute_ext.nn.GatedMLP(10, 14, "relu")


def rotary_reference(x, positions, base, rotary_dim, interleaved):
    """transformers' formula (q * C + rotate_half(q) * S) in float64, its own tables;
    the GPT-J pairing for interleaved; channels past rotary_dim unchanged."""
    inv_freq = base ** (-torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim)
    angles = positions.to(torch.float64)[..., None] * inv_freq
    if positions.dim() > 1:
        angles = angles.unsqueeze(-3)
    xd = x.to(torch.float64)
    rot, rest = xd[..., :rotary_dim], xd[..., rotary_dim:]
    if interleaved:
        c, s = angles.cos().repeat_interleave(2, -1), angles.sin().repeat_interleave(2, -1)
        pairs = torch.stack((-rot[..., 1::2], rot[..., 0::2]), dim=-1).flatten(-2)
        rot = rot * c + pairs * s
    else:
        c, s = torch.cat((angles.cos(),) * 2, -1), torch.cat((angles.sin(),) * 2, -1)
        rot = rot * c + rotate_half(rot) * s
    return torch.cat((rot, rest), -1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
@pytest.mark.parametrize("rotary_dim,interleaved", [(None, False), (6, False), (None, True)])
@pytest.mark.parametrize("positions", ["default", "1d", "2d"])
def test_rotary_embedding_matches_the_transformers_formula(dtype, layout, rotary_dim, interleaved, positions):
    torch.manual_seed(0)
    b, h, s, d = 2, 3, 7, 10
    rope = teachcompute_ext.nn.RotaryEmbedding(
        d, 32, base=500.0, rotary_dim=rotary_dim, interleaved=interleaved, dtype=dtype
    )
    assert rope.cos.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert not rope.state_dict()  # non-persistent tables
    if layout == "bhsd":
        x = torch.randn(b, h, s, d, dtype=dtype)
        view = x
    else:  # [b, s, h, d] memory, seen as [b, h, s, d]: what a projection's output gives
        x = torch.randn(b, s, h, d, dtype=dtype)
        view = x.transpose(1, 2)
    pos = {"default": None, "1d": torch.arange(s) + 5, "2d": torch.stack([torch.arange(s), torch.arange(s) * 2 + 1])}
    position_ids = pos[positions]
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        out = rope(view, position_ids)
    copies = {e.name for e in prof.events()} & {"aten::copy_", "aten::clone", "aten::contiguous"}
    assert not copies, f"the input or the tables were copied: {copies}"
    ref = rotary_reference(
        view, torch.arange(s) if position_ids is None else position_ids, 500.0, rotary_dim or d, interleaved
    )
    torch.testing.assert_close(out, ref.to(dtype))
    # gradient: the rotation is orthogonal, so its backward is the inverse rotation
    xg = view.detach().requires_grad_()
    g = torch.randn_like(out)
    (got,) = torch.autograd.grad(rope(xg, position_ids), xg, g)
    xr = view.detach().to(torch.float64).requires_grad_()
    (want,) = torch.autograd.grad(
        rotary_reference(
            xr, torch.arange(s) if position_ids is None else position_ids, 500.0, rotary_dim or d, interleaved
        ),
        xr,
        g.to(torch.float64),
    )
    torch.testing.assert_close(got, want.to(dtype))


def test_rotary_embedding_cos_sin_and_bad_arguments():
    rope = teachcompute_ext.nn.RotaryEmbedding(8, 16)
    cos, sin = rope.cos_sin(None, torch.float16, seq_len=5)
    assert cos.shape == sin.shape == (5, 4) and cos.dtype == torch.float16
    cos, sin = rope.cos_sin(torch.tensor([[0, 3], [1, 2]]))
    assert cos.shape == (2, 2, 4) and torch.equal(cos[0, 1], rope.cos[3])
    torch.testing.assert_close(cos**2 + sin**2, torch.ones_like(cos))
    for pos in (-1, 16):  # outside the table: an error, not a wrapped (wrong) angle
        with pytest.raises(IndexError):
            rope(torch.randn(1, 2, 8), torch.tensor([0, pos]))
    for bad in (7, 10, 0):
        with pytest.raises(ValueError, match="rotary_dim must be even"):
            teachcompute_ext.nn.RotaryEmbedding(8, 16, rotary_dim=bad)
