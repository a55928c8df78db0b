"""The paths a user's model takes, with one model that calls every op: torch.export
with a dynamic batch, DistributedDataParallel (2 CPU processes, gloo), and
torch.compile(fullgraph=True, dynamic=True) with no graph break and no recompile."""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import teachcompute_ext

import op_db


class TinyModel(torch.nn.Module):
    """A bag-of-embeddings classifier that calls every op of the package (each
    per sample, so a batch split across DDP ranks computes the same thing)."""

    def __init__(self, vocab=100, dim=16, hidden=24, classes=4):
        super().__init__()
        self.bag = teachcompute_ext.nn.EmbeddingBag(vocab, dim, mode="mean")
        self.emb = teachcompute_ext.nn.Embedding(vocab, dim, padding_idx=0)
        self.mix = torch.nn.Parameter(torch.randn(dim, dim) / dim**0.5)
        self.hidden = teachcompute_ext.nn.FusedLinear(dim, hidden, activation="gelu")
        self.proj = teachcompute_ext.nn.FusedLinear(hidden, classes)
        self.norm = torch.nn.Parameter(1 + 0.1 * torch.randn(dim))
        self.freq = torch.nn.Parameter(torch.tensor([0.3]))  # 1-D: FSDP shards no 0-d parameter

    def forward(self, tokens):  # tokens: [batch, length], 0 is padding
        b, n = tokens.shape
        offsets = torch.arange(0, b * n, n, device=tokens.device)
        e = self.emb(tokens)
        h = self.bag(tokens.reshape(-1), offsets) + teachcompute_ext.reduce_mean(e, [1])
        h = h + teachcompute_ext.embedding_bag(self.emb.weight, tokens, None, "max")
        # per sample, the sum of its non-padding token vectors (padding rows masked out)
        rows = torch.arange(b, device=h.device).unsqueeze(1)
        token_rows = torch.where(tokens == 0, -1, rows.expand(b, n)).reshape(-1, 1)
        h = (
            h
            + teachcompute_ext.masked_scatter_nd_of_shape([b, h.shape[1]], token_rows, e.reshape(b * n, -1), -1, "add")
            / n
        )
        h = teachcompute_ext.scatter_nd(h, rows, h * 0.5, "add") + teachcompute_ext.scatter_nd_of_shape(
            h.shape, rows, h, "add"
        )
        z = h.clone()
        teachcompute_ext.scatter_nd_(z, rows, h * 0.25, "add")  # in place, under autograd
        # a weight normalized by its own squared sum, applied transposed
        mix = self.mix / (1 + teachcompute_ext.vector_sum(self.mix * self.mix))
        h = z + teachcompute_ext.fused_matmul(z, mix, 0.5, False, True)
        h = h - teachcompute_ext.reduce_sum(h, [1], True) / h.shape[1]
        # the Llama pieces: a residual norm, a rotation of each row's halves, gated units
        n, h = teachcompute_ext.add_rms_norm(h, z, self.norm)
        ang = self.freq * torch.arange(1, h.shape[1] // 2 + 1, device=h.device, dtype=h.dtype)
        h = teachcompute_ext.rotary_embedding(teachcompute_ext.rms_norm(h, None, 1e-5) + n, ang.cos(), ang.sin())
        h = h + teachcompute_ext.swiglu(torch.cat((h, n), -1)) - teachcompute_ext.geglu(n, h, "tanh")
        logits = self.proj(self.hidden(h))
        p = teachcompute_ext.softmax(logits, -1)
        top, _ = teachcompute_ext.reduce_max(p, 1, keepdim=True)
        low, _ = teachcompute_ext.reduce_min(p, 1, keepdim=True)
        lse = teachcompute_ext.logsumexp(logits, [1], True)
        return teachcompute_ext.log_softmax(logits, -1) + (top - low) * 0.1 + (lse - lse.detach())


def test_torch_export_dynamic_batch_matches_eager():
    torch.manual_seed(0)
    model = TinyModel().eval()
    tokens = torch.randint(0, 100, (6, 5))
    batch = torch.export.Dim("batch", min=2, max=64)
    ep = torch.export.export(model, (tokens,), dynamic_shapes={"tokens": {0: batch}})
    # the model really calls every op (a composite op may show as the *_forward op it calls)
    called = {
        n.target.name().split("::")[1].split(".")[0].removesuffix("_forward")
        for n in ep.graph.nodes
        if n.op == "call_function" and hasattr(n.target, "name") and "teachcompute_ext" in n.target.name()
    }
    public = {op.name for op in op_db.PUBLIC}  # the op table: a new op joins the model
    assert public <= called, public - called
    for b in (3, 6, 17):
        t = torch.randint(0, 100, (b, 5))
        torch.testing.assert_close(ep.module()(t), model(t))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(model, batches, lr=0.1):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for tokens, labels in batches:
        opt.zero_grad()
        loss = torch.nn.functional.nll_loss(model(tokens), labels)
        loss.backward()
        opt.step()


def _ddp_worker(rank, world, port, init_state, batches, out_path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    model = TinyModel()
    model.load_state_dict(init_state)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    # Each rank trains on its half of every global batch; DDP averages the gradients.
    local = [(t.chunk(world)[rank], y.chunk(world)[rank]) for t, y in batches]
    _train(ddp, local)
    if rank == 0:
        torch.save(model.state_dict(), out_path)
    # Both ranks done before teardown: tearing gloo down while the peer still
    # talks aborted rank 0 about one run in four ("terminate called without an
    # active exception").
    dist.barrier()
    dist.destroy_process_group()


def test_ddp_two_cpu_processes_match_a_single_process(tmp_path):
    torch.manual_seed(1)
    model = TinyModel()
    init_state = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(2)
    batches = [(torch.randint(0, 100, (8, 5), generator=g), torch.randint(0, 4, (8,), generator=g)) for _ in range(4)]
    out = str(tmp_path / "ddp.pt")
    mp.spawn(_ddp_worker, args=(2, _free_port(), init_state, batches, out), nprocs=2, join=True)
    _train(model, batches)  # single process on the same global batches
    ddp_state = torch.load(out)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(ddp_state[k], v, rtol=1e-5, atol=1e-6, msg=k)


# The caches of the inductor cache dir are off (the automatic-dynamic profile, compiled graphs):
# with it, a machine that had run this test before passed it even when a backward
# specialized the batch (indices.size() in a C++ autograd backward), and a fresh one failed.
@torch._dynamo.config.patch(automatic_dynamic_local_pgo=False)
@torch._inductor.config.patch(force_disable_caches=True)
def test_whole_model_compiles_with_no_graph_break_and_no_recompile():
    torch.manual_seed(3)
    model = TinyModel()
    tokens = torch.randint(0, 100, (6, 5))
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model)(tokens)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, dynamic=True)
    compiled(tokens)  # compiles once, for a symbolic batch
    with torch.compiler.set_stance("fail_on_recompile"):
        for b in (3, 11, 20):
            t = torch.randint(0, 100, (b, 5))
            out = compiled(t)
            torch.testing.assert_close(out, model(t))
            gc = torch.autograd.grad(out.sum(), list(model.parameters()))
            ge = torch.autograd.grad(model(t).sum(), list(model.parameters()))
            for a, e in zip(gc, ge):
                torch.testing.assert_close(a, e)
