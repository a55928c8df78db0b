"""The embedding backward fused with the optimizer step: embedding_bag_update_ and
embedding_update_, and the modules that train a table with them
(teachcompute_ext.nn.EmbeddingBag / Embedding with optimizer=).

The updated rows equal torch's (nn.EmbeddingBag(sparse=True) with SGD, Adagrad and
SparseAdam) over several steps, and the row-wise Adagrad, AdamW and the weight decays a
float64 reference (op_db.row_update_reference); untouched rows are bitwise unchanged;
the result has the same bits for any thread count; bad input is refused by name with
nothing written; the state is in the state_dict; DDP keeps the table identical on every
rank and equal to one process training on the whole batch."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from teachcompute_ext.nn import Embedding, EmbeddingBag, RowOptimizer

from conftest import DEVICES
from op_db import BY_NAME, bag_gradient, row_update_reference
from test_users_paths import _free_port

ops = torch.ops.teachcompute_ext

TORCH_SPARSE = {
    "sgd": lambda p, lr: torch.optim.SGD(p, lr=lr),
    "adagrad": lambda p, lr: torch.optim.Adagrad(p, lr=lr, eps=1e-10),
    "adam": lambda p, lr: torch.optim.SparseAdam(p, lr=lr),
}
HYPER = {"sgd": dict(lr=0.5), "adagrad": dict(lr=0.1, eps=1e-10), "adam": dict(lr=0.05)}


def _batches(n, vocab, bags, per_bag, seed, device, weights=False):
    """Bags of random rows: duplicates inside a bag and across bags, an empty bag in each batch."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        lengths = torch.randint(0, 2 * per_bag, (bags,), generator=g)
        lengths[1] = 0
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)[:-1]])
        idx = torch.randint(0, vocab, (int(lengths.sum()),), generator=g)
        idx[: min(4, idx.numel())] = 3  # a row several times
        psw = torch.rand(idx.numel(), generator=g) if weights else None
        target = torch.randn(bags, generator=g)
        out.append([t.to(device) if t is not None else None for t in (idx, offsets, psw, target)])
    return out


def _loss(out, target):
    return ((out.sum(1) - target) ** 2).mean()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(TORCH_SPARSE))
@pytest.mark.parametrize("mode", ["sum", "mean"])
@pytest.mark.parametrize("padding", [None, 3])
def test_bag_module_matches_torchs_sparse_optimizer_over_steps(padding, mode, name, device):
    torch.manual_seed(0)
    ours = EmbeddingBag(50, 6, mode=mode, padding_idx=padding, optimizer=dict(name=name, **HYPER[name])).to(device)
    ref = torch.nn.EmbeddingBag(50, 6, mode=mode, padding_idx=padding, sparse=True).to(device)
    ref.load_state_dict(ours.state_dict(), strict=False)
    opt = TORCH_SPARSE[name](list(ref.parameters()), HYPER[name]["lr"])
    start = ours.weight.detach().clone()
    used = set()
    for idx, off, _, target in _batches(4, 50, 7, 3, seed=1, device=device):
        _loss(ours(idx, off), target).backward()
        opt.zero_grad()
        _loss(ref(idx, off), target).backward()
        opt.step()
        used |= set(idx.tolist())
    assert ours.weight.grad is None
    torch.testing.assert_close(ours.weight, ref.weight.detach(), rtol=1e-5, atol=1e-6)
    untouched = [r for r in range(50) if r not in used or r == padding]
    assert torch.equal(ours.weight.detach()[untouched], start[untouched])  # bitwise


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(TORCH_SPARSE))
def test_bag_module_with_per_sample_weights_and_their_gradient(name, device):
    torch.manual_seed(1)
    ours = EmbeddingBag(40, 5, mode="sum", optimizer=dict(name=name, **HYPER[name])).to(device)
    ref = torch.nn.EmbeddingBag(40, 5, mode="sum", sparse=True).to(device)
    ref.load_state_dict(ours.state_dict(), strict=False)
    opt = TORCH_SPARSE[name](list(ref.parameters()), HYPER[name]["lr"])
    for idx, off, psw, target in _batches(3, 40, 6, 3, seed=2, device=device, weights=True):
        p1, p2 = psw.clone().requires_grad_(), psw.clone().requires_grad_()
        _loss(ours(idx, off, p1), target).backward()
        opt.zero_grad()
        _loss(ref(idx, off, p2), target).backward()
        torch.testing.assert_close(p1.grad, p2.grad)  # from the weight before its update
        opt.step()
    torch.testing.assert_close(ours.weight, ref.weight.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["sgd", "rowwise_adagrad", "adagrad", "adam", "adamw"])
@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_bag_module_matches_the_float64_reference_over_steps(mode, name, device):
    """Every optimizer and mode, weight decay included, against op_db's float64 reference
    applied to the touched rows of the dense gradient (max mode: at each bag's argmax)."""
    torch.manual_seed(2)
    cfg = dict(name=name, lr=0.05, weight_decay=0.01, betas=(0.8, 0.99), eps=1e-7)
    bag = EmbeddingBag(30, 4, mode=mode, optimizer=cfg).to(device=device, dtype=torch.float64)
    w, s1, s2 = bag.weight.detach().clone(), bag._state1.clone(), bag._state2.clone()
    for step, (idx, off, _, target) in enumerate(_batches(3, 30, 6, 3, seed=3, device=device), start=1):
        target = target.double()
        out, argmax = ops.embedding_bag_forward(w, idx, off, mode, None, None, False)
        leaf = out.detach().requires_grad_()
        (grad,) = torch.autograd.grad(_loss(leaf, target), leaf)
        dense, rows = bag_gradient(w, grad, idx, off, argmax, mode, None, None, False)
        w, s1, s2 = row_update_reference(w, s1, s2, dense, rows, name, 0.05, 0.8, 0.99, 1e-7, 0.01, step)
        _loss(bag(idx, off), target).backward()
        torch.testing.assert_close(bag.weight.detach(), w, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(bag._state1, s1, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(bag._state2, s2, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(TORCH_SPARSE))
def test_embedding_module_matches_torchs_sparse_optimizer(name, device):
    torch.manual_seed(3)
    ours = Embedding(30, 5, padding_idx=2, optimizer=dict(name=name, **HYPER[name])).to(device)
    ref = torch.nn.Embedding(30, 5, padding_idx=2, sparse=True).to(device)
    ref.load_state_dict(ours.state_dict(), strict=False)
    opt = TORCH_SPARSE[name](list(ref.parameters()), HYPER[name]["lr"])
    g = torch.Generator().manual_seed(4)
    for _ in range(3):
        idx = torch.randint(0, 30, (4, 6), generator=g).to(device)
        idx[0, :3] = 2
        target = torch.randn(4, 6, 5, generator=g).to(device)
        ((ours(idx) - target) ** 2).mean().backward()
        opt.zero_grad()
        ((ref(idx) - target) ** 2).mean().backward()
        opt.step()
    torch.testing.assert_close(ours.weight, ref.weight.detach(), rtol=1e-5, atol=1e-6)
    assert ours.weight.grad is None


def test_the_bits_do_not_depend_on_the_thread_count():
    sample = BY_NAME["embedding_bag_update_"].samples("cpu", torch.float32)[3]
    saved = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, saved, 1):
            torch.set_num_threads(threads)
            args = list(sample.args)
            args[:3] = [a.clone() for a in args[:3]]
            ops.embedding_bag_update_(*args)
            results.append(args[:3])
    finally:
        torch.set_num_threads(saved)
    for r in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(r, results[0]))


@pytest.mark.parametrize("bag", [True, False])
def test_a_bad_index_writes_nothing(bag):
    w, s1, s2 = torch.randn(10, 4), torch.rand(10, 4), torch.rand(10, 4)
    before = [t.clone() for t in (w, s1, s2)]
    idx = torch.tensor([1, 2, 3, 4, 5, 6, 7, 11])  # the bad one last: every earlier row would be updated first
    with pytest.raises(IndexError, match="index 11 out of range for argument 'indices'"):
        if bag:
            ops.embedding_bag_update_(
                w,
                s1,
                s2,
                torch.randn(2, 4),
                idx,
                torch.tensor([0, 4]),
                torch.empty(0),
                "sum",
                None,
                None,
                False,
                False,
                "adam",
                0.1,
                0.9,
                0.999,
                1e-8,
                0.0,
                1,
            )
        else:
            ops.embedding_update_(w, s1, s2, torch.randn(8, 4), idx, None, "adam", 0.1, 0.9, 0.999, 1e-8, 0.0, 1)
    assert all(torch.equal(a, b) for a, b in zip((w, s1, s2), before))


@pytest.mark.parametrize("name", ["embedding_bag_update_", "embedding_update_"])
def test_opcheck_and_compile_fullgraph(name):
    info = BY_NAME[name]
    for sample in info.samples("cpu", torch.float32):
        args = [a.clone() if isinstance(a, torch.Tensor) else a for a in sample.args]
        torch.library.opcheck(info.overload, tuple(args))
    sample = info.samples("cpu", torch.float32)[0]
    args = [a.clone() if isinstance(a, torch.Tensor) else a for a in sample.args]
    want = [a.clone() for a in args[:3]]
    info.overload(*want, *args[3:])

    def step(*a):
        info.overload(*a)
        return a[0].sum()

    torch._dynamo.reset()
    torch.compile(step, fullgraph=True, dynamic=True)(*args)
    for got, exp in zip(args[:3], want):
        torch.testing.assert_close(got, exp)


def test_state_dict_resume_gives_the_same_next_step():
    torch.manual_seed(5)
    batches = _batches(4, 40, 5, 3, seed=6, device="cpu")
    a = EmbeddingBag(40, 4, optimizer=dict(name="adamw", lr=0.05, weight_decay=0.1))
    for idx, off, _, target in batches[:2]:
        _loss(a(idx, off), target).backward()
    saved = a.state_dict()
    assert set(saved) == {"weight", "_extra_state"} and saved["_extra_state"]["step"] == 2
    b = EmbeddingBag(40, 4, optimizer=dict(name="adamw", lr=0.05, weight_decay=0.1))
    b.load_state_dict(saved)
    for idx, off, _, target in batches[2:]:
        _loss(a(idx, off), target).backward()
        _loss(b(idx, off), target).backward()
    assert torch.equal(a.weight, b.weight) and torch.equal(a._state1, b._state1) and torch.equal(a._state2, b._state2)
    # Without optimizer= the state_dict is torch.nn's, and loads into torch.nn's module.
    assert list(EmbeddingBag(40, 4).state_dict()) == ["weight"]
    torch.nn.EmbeddingBag(40, 4).load_state_dict(EmbeddingBag(40, 4).state_dict())
    with pytest.raises(RuntimeError, match="state of optimizer 'adamw', this module's is 'adam'"):
        EmbeddingBag(40, 4, optimizer="adam").load_state_dict(saved)


def test_the_learning_rate_follows_a_scheduler():
    bag = EmbeddingBag(20, 3, mode="sum", optimizer=dict(name="sgd", lr=1.0))
    assert isinstance(bag.optimizer, RowOptimizer)
    sched = torch.optim.lr_scheduler.StepLR(bag.optimizer, step_size=1, gamma=0.5)
    idx, off = torch.tensor([4]), torch.tensor([0])
    moves = []
    for _ in range(3):
        before = bag.weight[4].clone()
        bag(idx, off).sum().backward()  # gradient 1 on row 4
        moves.append(float((before - bag.weight[4]).mean()))
        bag.optimizer.step()
        sched.step()
    assert moves == pytest.approx([1.0, 0.5, 0.25])


def test_the_rest_of_the_model_keeps_its_optimizer():
    torch.manual_seed(7)
    bag = EmbeddingBag(30, 4, optimizer=dict(name="adam", lr=0.01))
    head = torch.nn.Linear(4, 1)
    model = torch.nn.Sequential()
    opt = torch.optim.AdamW(list(bag.parameters()) + list(head.parameters()), lr=0.01)
    w0, h0 = bag.weight.detach().clone(), head.weight.detach().clone()
    idx, off = torch.tensor([1, 2, 3]), torch.tensor([0, 1])
    head(bag(idx, off)).sum().backward()
    opt.step()  # skips the table (no .grad), trains the head
    assert bag.weight.grad is None and head.weight.grad is not None
    assert not torch.equal(head.weight, h0)
    assert not torch.equal(bag.weight[1:4], w0[1:4]) and torch.equal(bag.weight[4:], w0[4:])
    del model


def test_double_backward_forward_ad_and_vmap_are_refused_by_name():
    bag = EmbeddingBag(20, 3, mode="sum", optimizer="sgd")
    idx, off = torch.tensor([1, 2, 3]), torch.tensor([0, 1])
    psw = torch.rand(3, requires_grad=True)
    out = bag(idx, off, psw)
    with pytest.raises(NotImplementedError, match="optimizer=: double backward"):
        torch.autograd.grad(out.sum(), psw, create_graph=True)
    import torch.autograd.forward_ad as fwAD

    with fwAD.dual_level(), pytest.raises(NotImplementedError, match="optimizer=: forward-mode AD"):
        bag(idx, off, fwAD.make_dual(psw.detach(), torch.ones(3)))
    with pytest.raises(NotImplementedError, match="optimizer=: vmap and the torch.func transforms"):
        torch.func.vmap(lambda p: bag(idx, off, p))(torch.rand(2, 3))
    emb = Embedding(20, 3, optimizer="sgd")
    with pytest.raises(NotImplementedError, match="optimizer=: vmap and the torch.func transforms"):
        torch.func.vmap(lambda i: emb(i))(torch.tensor([[1, 2], [3, 4]]))


def test_no_grad_and_eval_use_the_plain_forward():
    bag = EmbeddingBag(20, 3, optimizer="adam")
    w0 = bag.weight.detach().clone()
    with torch.no_grad():
        out = bag(torch.tensor([1, 2]), torch.tensor([0]))
    torch.testing.assert_close(out, F.embedding_bag(torch.tensor([1, 2]), w0, torch.tensor([0])))
    assert torch.equal(bag.weight, w0) and bag._step == 0


# ---- DDP: 2 gloo processes against one process on the whole batch -----------------------------------
class _Model(torch.nn.Module):
    def __init__(self, optimizer, mode):
        super().__init__()
        self.bag = EmbeddingBag(60, 8, mode=mode, optimizer=optimizer)
        self.emb = Embedding(60, 8, optimizer=optimizer)
        self.head = torch.nn.Linear(8, 1)

    def forward(self, idx, off, tokens):
        return self.head(self.bag(idx, off) + self.emb(tokens).mean(1)).squeeze(1)


def _split(batch, rank, world):
    """Rank's half of the bags: its indices, offsets from 0, tokens and targets."""
    idx, off, tokens, target = batch
    per = off.numel() // world
    bounds = torch.cat([off, torch.tensor([idx.numel()])])
    lo, hi = int(bounds[rank * per]), int(bounds[(rank + 1) * per])
    sel = slice(rank * per, (rank + 1) * per)
    return idx[lo:hi], off[sel] - lo, tokens[sel], target[sel]


def _ddp_batches():
    g = torch.Generator().manual_seed(9)
    out = []
    for _ in range(3):
        lengths = torch.randint(0, 6, (8,), generator=g)
        off = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)[:-1]])
        idx = torch.randint(0, 60, (int(lengths.sum()),), generator=g)
        out.append((idx, off, torch.randint(0, 60, (8, 3), generator=g), torch.randn(8, generator=g)))
    return out


def _ddp_worker(rank, world, port, state, optimizer, mode, out_path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = _Model(optimizer, mode)
    model.load_state_dict(state)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(model.head.parameters(), lr=0.1)
    for batch in _ddp_batches():
        idx, off, tokens, target = _split(batch, rank, world)
        opt.zero_grad()
        ((ddp(idx, off, tokens) - target) ** 2).mean().backward()
        opt.step()
    torch.save(model.state_dict(), f"{out_path}.{rank}")
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("optimizer,mode", [("adam", "mean"), ("rowwise_adagrad", "max")])
def test_ddp_two_processes_keep_one_table_equal_to_one_process(optimizer, mode, tmp_path):
    torch.manual_seed(0)
    model = _Model(optimizer, mode)
    state = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in model.state_dict().items()}
    port = _free_port()
    mp.spawn(_ddp_worker, args=(2, port, state, optimizer, mode, str(tmp_path / "out")), nprocs=2, join=True)
    opt = torch.optim.SGD(model.head.parameters(), lr=0.1)
    for idx, off, tokens, target in _ddp_batches():  # one process, the whole batch
        opt.zero_grad()
        ((model(idx, off, tokens) - target) ** 2).mean().backward()
        opt.step()
    ranks = [torch.load(f"{tmp_path / 'out'}.{r}", weights_only=False) for r in range(2)]
    for key in ("bag.weight", "emb.weight", "head.weight"):
        assert torch.equal(ranks[0][key], ranks[1][key]), key  # replicated: the same bits on every rank
        torch.testing.assert_close(ranks[0][key], model.state_dict()[key], rtol=1e-5, atol=1e-6, msg=key)
    torch.testing.assert_close(ranks[0]["bag._extra_state"]["state1"], model.bag._state1, rtol=1e-5, atol=1e-7)
