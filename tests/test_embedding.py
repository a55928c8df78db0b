"""Embedding family: embedding, embedding_bag, and the nn drop-ins, against torch.nn.functional."""

import pytest
import torch
import torch.nn.functional as F

import teachcompute_ext

from conftest import DEVICES, FLOAT_DTYPES, assert_func_grad_matches_autograd

TOL = {
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.float64: dict(rtol=1e-12, atol=1e-12),
    torch.float16: dict(rtol=2e-3, atol=2e-3),
    torch.bfloat16: dict(rtol=2e-2, atol=2e-2),
}


def _weight(num, dim, dtype, device, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(num, dim, generator=g, dtype=torch.float64).to(device, dtype)


def _indices(shape, num, device, seed, dtype=torch.int64):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, num, shape, generator=g).to(device, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("padding_idx", [None, 3, -2])
def test_embedding_forward_backward_match_torch(padding_idx, dtype, device):
    w = _weight(20, 7, dtype, device, 1)
    for shape in [(5,), (4, 6), (2, 3, 5), ()]:
        idx = _indices(shape, 20, device, len(shape))
        if idx.dim() > 0:
            idx.view(-1)[0] = 3 if padding_idx == 3 else 18  # make padding rows appear
        wr = w.clone().requires_grad_(dtype in (torch.float32, torch.float64))
        out = teachcompute_ext.embedding(wr, idx, padding_idx)
        torch.testing.assert_close(out, F.embedding(idx, w, padding_idx))
        if wr.requires_grad:
            g = torch.randn(out.shape, dtype=dtype, device=device)
            (gw,) = torch.autograd.grad(out, wr, g)
            wt = w.clone().requires_grad_()
            (ref,) = torch.autograd.grad(F.embedding(idx, wt, padding_idx), wt, g)
            torch.testing.assert_close(gw, ref, **TOL[dtype])
    # the backward op in every dtype against a float64 scatter-add
    idx = _indices((50,), 20, device, 7)
    g = torch.randn(50, 7, dtype=torch.float64, device=device)
    ref = torch.zeros(20, 7, dtype=torch.float64, device=device).index_add_(0, idx, g)
    if padding_idx is not None:
        ref[padding_idx] = 0
    out = torch.ops.teachcompute_ext.embedding_backward(g.to(dtype), idx, 20, padding_idx)
    torch.testing.assert_close(out, ref.to(dtype), **TOL[dtype])


def _bag_cases(device, num):
    idx1 = _indices((40,), num, device, 11)
    return [
        dict(indices=idx1, offsets=torch.tensor([0, 3, 3, 10, 25, 39], device=device)),  # an empty bag
        dict(indices=idx1, offsets=torch.tensor([0, 5, 20, 40], device=device), include_last_offset=True),
        # a last offset short of the end: the tail belongs to no bag (torch's documented meaning)
        dict(indices=idx1, offsets=torch.tensor([0, 5, 20, 30], device=device), include_last_offset=True, end=30),
        dict(indices=_indices((6, 4), num, device, 12)),  # fixed-length bags
        dict(indices=idx1.int(), offsets=torch.tensor([0, 10, 20], device=device, dtype=torch.int32)),
    ]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("padding_idx", [None, 2])
def test_embedding_bag_matches_torch(padding_idx, mode, dtype, device):
    num = 12
    w = _weight(num, 5, dtype, device, 13)
    for case in _bag_cases(device, num):
        case = dict(case)
        kw = dict(mode=mode, padding_idx=padding_idx, include_last_offset=case.pop("include_last_offset", False))
        end = case.pop("end", None)  # the reference gets only the indices that belong to bags
        ref_idx = case["indices"].long()[:end]
        ref = F.embedding_bag(
            ref_idx, w.double(), None if case.get("offsets") is None else case["offsets"].long(), **kw
        )
        out = teachcompute_ext.embedding_bag(
            w, case["indices"], case.get("offsets"), kw["mode"], None, padding_idx, kw["include_last_offset"]
        )
        assert out.dtype == dtype
        torch.testing.assert_close(out.double(), ref, **TOL[dtype])
        if dtype in (torch.float32, torch.float64):
            wr = w.clone().requires_grad_()
            g = torch.randn(ref.shape, dtype=dtype, device=device)
            (gw,) = torch.autograd.grad(
                teachcompute_ext.embedding_bag(
                    wr, case["indices"], case.get("offsets"), mode, None, padding_idx, kw["include_last_offset"]
                ),
                wr,
                g,
            )
            wt = w.clone().requires_grad_()
            (gt,) = torch.autograd.grad(
                F.embedding_bag(ref_idx, wt, None if case.get("offsets") is None else case["offsets"].long(), **kw),
                wt,
                g,
            )
            torch.testing.assert_close(gw, gt, **TOL[dtype])


@pytest.mark.parametrize("device", DEVICES)
def test_embedding_bag_per_sample_weights(device):
    w = _weight(12, 5, torch.float64, device, 14).requires_grad_()
    idx = _indices((30,), 12, device, 15)
    off = torch.tensor([0, 4, 4, 17], device=device)
    psw = torch.rand(30, dtype=torch.float64, device=device).requires_grad_()
    out = teachcompute_ext.embedding_bag(w, idx, off, "sum", psw)
    ref = F.embedding_bag(idx, w, off, mode="sum", per_sample_weights=psw)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(out, (w, psw), g), torch.autograd.grad(ref, (w, psw), g)):
        torch.testing.assert_close(a, b)
    assert torch.autograd.gradcheck(lambda ww, pp: teachcompute_ext.embedding_bag(ww, idx, off, "sum", pp), (w, psw))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_embedding_gradcheck(mode, device):
    w = _weight(9, 4, torch.float64, device, 16).requires_grad_()
    idx = _indices((12,), 9, device, 17)
    # (padding_idx is left out here: its row is read by the forward but gets no gradient, by definition)
    assert torch.autograd.gradcheck(lambda ww: teachcompute_ext.embedding(ww, idx.view(3, 4)), (w,))
    off = torch.tensor([0, 2, 2, 7], device=device)
    assert torch.autograd.gradcheck(lambda ww: teachcompute_ext.embedding_bag(ww, idx, off, mode, None, 1), (w,))


def test_embedding_bad_input():
    w = torch.randn(10, 4)
    idx = torch.tensor([1, 2, 3, 4])
    with pytest.raises(
        TypeError, match=r"teachcompute_ext.embedding: unsupported dtype torch.float32 for argument 'indices'"
    ):
        teachcompute_ext.embedding(w, idx.float())
    with pytest.raises(
        RuntimeError,
        match=r"teachcompute_ext.embedding: 'weight' must be 2-D \[num_embeddings, dim\], got shape \[10\]",
    ):
        teachcompute_ext.embedding(torch.randn(10), idx)
    for bad in (10, -1, 2**62, 2**63 - 1, -(2**63)):
        with pytest.raises(
            IndexError,
            match=rf"teachcompute_ext.embedding: index {bad} out of range for argument 'indices' \(weight has 10 rows",
        ):
            teachcompute_ext.embedding(w, torch.tensor([0, bad]))
        with pytest.raises(IndexError, match=rf"teachcompute_ext.embedding_bag: index {bad} out of range"):
            teachcompute_ext.embedding_bag(w, torch.tensor([0, bad]), torch.tensor([0]))
    bag = teachcompute_ext.embedding_bag
    # The sum kernel checks each task's indices inside its parallel loop: a bad index
    # deep in a long input (any task), or past the last bag's end (no task), still raises.
    many = torch.randint(0, 10, (70000,), generator=torch.Generator().manual_seed(5))
    for pos in (0, 34999, 69999):
        bad_idx = many.clone()
        bad_idx[pos] = 10
        with pytest.raises(
            IndexError, match=rf"teachcompute_ext.embedding_bag: index 10 out of range .* entry {pos}\)"
        ):
            bag(w, bad_idx, torch.arange(0, 70000, 7))
    with pytest.raises(IndexError, match=r"teachcompute_ext.embedding_bag: index -3 out of range .* entry 3\)"):
        bag(w, torch.tensor([1, 2, 3, -3]), torch.tensor([0, 1, 3]), include_last_offset=True)
    with pytest.raises(ValueError, match=r"offsets\[0\] must be 0, got 1"):
        bag(w, idx, torch.tensor([1, 2]))
    with pytest.raises(
        ValueError, match=r"'offsets' must be non-decreasing, got offsets\[2\] = 1 after offsets\[1\] = 3"
    ):
        bag(w, idx, torch.tensor([0, 3, 1]))
    with pytest.raises(ValueError, match=r"offsets\[2\] = 9 is past the end of 'indices' \(4 entries\)"):
        bag(w, idx, torch.tensor([0, 2, 9]))
    with pytest.raises(RuntimeError, match=r"'per_sample_weights' is only supported with mode='sum', got mode='mean'"):
        bag(w, idx, torch.tensor([0, 2]), "mean", torch.ones(4))
    with pytest.raises(RuntimeError, match=r"'per_sample_weights' has shape \[3\] but 'indices' has shape \[4\]"):
        bag(w, idx, torch.tensor([0, 2]), "sum", torch.ones(3))
    with pytest.raises(
        ValueError, match=r"unknown mode 'median' for argument 'mode' \(expected one of sum, mean, max\)"
    ):
        bag(w, idx, torch.tensor([0, 2]), "median")
    with pytest.raises(TypeError, match=r"unsupported dtype torch.float32 for argument 'indices'"):
        bag(w, idx.float(), torch.tensor([0, 2]))
    with pytest.raises(RuntimeError, match=r"'weight' must be 2-D"):
        bag(torch.randn(3, 4, 5), idx, torch.tensor([0, 2]))
    # fake kernels: the same words under torch.compile
    with pytest.raises(Exception, match=r"unknown mode 'median'"):
        torch.compile(lambda ww, i: bag(ww, i, torch.tensor([0, 2]), "median"), fullgraph=True, backend="eager")(w, idx)


def test_embedding_backward_cpu_deterministic_across_threads():
    w = _weight(1000, 32, torch.float32, "cpu", 18).requires_grad_()
    idx = (torch.rand(20000) ** 4 * 1000).long()  # heavy duplicates
    g = torch.randn(20000, 32)
    saved = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 2, saved):
            torch.set_num_threads(threads)
            outs.append(torch.autograd.grad(teachcompute_ext.embedding(w, idx), w, g)[0])
            outs.append(
                torch.autograd.grad(
                    teachcompute_ext.embedding_bag(w, idx, torch.arange(0, 20000, 7), "mean"), w, torch.ones(2858, 32)
                )[0]
            )
    finally:
        torch.set_num_threads(saved)
    assert all(torch.equal(o, outs[i % 2]) for i, o in enumerate(outs))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_embedding_opcheck(dtype, device):
    grad = dtype in (torch.float32, torch.float64)
    w = _weight(15, 6, dtype, device, 19).requires_grad_(grad)
    idx = _indices((4, 5), 15, device, 20)
    ops = torch.ops.teachcompute_ext
    torch.library.opcheck(ops.embedding.default, (w, idx, None))
    torch.library.opcheck(ops.embedding.default, (w, idx, 2))
    torch.library.opcheck(ops.embedding_backward.default, (torch.randn(4, 5, 6, device=device).to(dtype), idx, 15, 2))
    off = torch.tensor([0, 3, 3, 11], device=device)
    for mode in ("sum", "mean", "max"):
        torch.library.opcheck(ops.embedding_bag_forward.default, (w, idx.view(-1), off, mode, None, None, False))
    psw = torch.rand(20, device=device).to(dtype).requires_grad_(grad)
    torch.library.opcheck(ops.embedding_bag_forward.default, (w, idx.view(-1), off, "sum", psw, 1, False))
    out, am = ops.embedding_bag_forward(w.detach(), idx.view(-1), off, "max", None, None, False)
    torch.library.opcheck(
        ops.embedding_bag_backward.default,
        (torch.randn_like(out), w.detach(), idx.view(-1), off, am, "max", None, None, False),
    )


@pytest.mark.parametrize("device", DEVICES)
def test_embedding_torch_compile_fullgraph_dynamic(device):
    emb = teachcompute_ext.nn.Embedding(50, 8, padding_idx=0).to(device)
    bag = teachcompute_ext.nn.EmbeddingBag(50, 8, mode="mean").to(device)

    def f(idx, off):
        return emb(idx).sum(1) * 2 + bag(idx.reshape(-1), off)[: idx.shape[0]]

    compiled = torch.compile(f, fullgraph=True, dynamic=True)
    for batch in (3, 7, 12):
        idx = _indices((batch, 4), 50, device, batch)
        off = torch.arange(0, batch * 4, 4, device=device)
        out = compiled(idx, off)
        torch.testing.assert_close(out, f(idx, off))
        gc = torch.autograd.grad(out.sum(), (emb.weight, bag.weight))
        ge = torch.autograd.grad(f(idx, off).sum(), (emb.weight, bag.weight))
        for a, b in zip(gc, ge):
            torch.testing.assert_close(a, b)


def test_nn_modules_are_drop_ins():
    torch.manual_seed(0)
    ref = torch.nn.Embedding(30, 6, padding_idx=2)
    torch.manual_seed(0)
    ours = teachcompute_ext.nn.Embedding(30, 6, padding_idx=2)
    assert torch.equal(ours.weight, ref.weight)  # same initialization (padding row zeroed)
    ours.load_state_dict(ref.state_dict())
    ref.load_state_dict(ours.state_dict())
    idx = _indices((3, 4), 30, "cpu", 21)
    torch.testing.assert_close(ours(idx), ref(idx))
    pre = teachcompute_ext.nn.Embedding.from_pretrained(torch.randn(5, 3), freeze=False)
    assert isinstance(pre, teachcompute_ext.nn.Embedding) and pre.weight.requires_grad
    torch.manual_seed(1)
    rb = torch.nn.EmbeddingBag(30, 6, mode="sum", include_last_offset=True)
    torch.manual_seed(1)
    ob = teachcompute_ext.nn.EmbeddingBag(30, 6, mode="sum", include_last_offset=True)
    assert torch.equal(ob.weight, rb.weight)
    off = torch.tensor([0, 4, 9, 12])
    flat = idx.reshape(-1)
    torch.testing.assert_close(ob(flat, off), rb(flat, off))
    psw = torch.rand(12)
    torch.testing.assert_close(ob(flat, off, psw), rb(flat, off, per_sample_weights=psw))
    assert isinstance(
        teachcompute_ext.nn.EmbeddingBag.from_pretrained(torch.randn(5, 3)), teachcompute_ext.nn.EmbeddingBag
    )
    with pytest.raises(NotImplementedError, match="max_norm"):
        teachcompute_ext.nn.Embedding(5, 3, max_norm=1.0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_embedding_bag_zero_bags_with_indices(mode, device):
    # include_last_offset=True with offsets=[0]: no bag, though indices is not
    # empty; the backward index-selected rows of an empty gradient.
    w = torch.randn(10, 4, dtype=torch.float64, device=device, requires_grad=True)
    idx = torch.tensor([1, 2, 3], device=device)
    # (No comparison with F.embedding_bag here: torch 2.15 segfaults on this input in max mode.)
    out = teachcompute_ext.embedding_bag(w, idx, torch.tensor([0], device=device), mode, None, None, True)
    assert out.shape == (0, 4)
    out.sum().backward()
    assert torch.equal(w.grad, torch.zeros_like(w))
    gw, gpsw = torch.ops.teachcompute_ext.embedding_bag_backward(
        torch.empty(0, 4, dtype=torch.float64, device=device),
        w,
        idx,
        torch.tensor([0], device=device),
        torch.empty(0, 4, dtype=torch.long, device=device),
        mode,
        None,
        None,
        True,
    )
    assert torch.equal(gw, torch.zeros_like(w)) and gpsw.numel() == 0


@pytest.mark.parametrize("device", DEVICES)
def test_embedding_bag_backward_refuses_what_the_forward_refuses(device):
    w = torch.randn(10, 4, device=device)
    idx = torch.tensor([1, 2, 3], device=device)
    if device == "cpu":  # CUDA: a device-side assert, tests/test_devices.py
        for off in ([0, 2, 1], [1, 2], [0, 4]):
            offsets = torch.tensor(off, device=device)
            with pytest.raises(ValueError) as fwd:
                teachcompute_ext.embedding_bag(w, idx, offsets, "sum")
            with pytest.raises(ValueError) as bwd:
                torch.ops.teachcompute_ext.embedding_bag_backward(
                    torch.ones(len(off), 4, device=device),
                    w,
                    idx,
                    offsets,
                    torch.empty(0, dtype=torch.long),
                    "sum",
                    None,
                    None,
                    False,
                )
            assert str(fwd.value).split(": ", 1)[1] == str(bwd.value).split(": ", 1)[1]


def test_backward_ops_refuse_bad_arguments_by_name():
    ops = torch.ops.teachcompute_ext
    with pytest.raises(RuntimeError, match="embedding_backward: argument 'num_weights' must be non-negative"):
        ops.embedding_backward(torch.ones(3, 4), torch.tensor([0, 1, 2]), -1, None)
    w, idx = torch.randn(3, 4), torch.tensor([0, 1, 2])
    for bad in (-5, 3):  # only -1 (an empty bag) is outside the rows: -5 gave a silent zero gradient
        argmax = torch.full((1, 4), bad)
        with pytest.raises(IndexError, match="embedding_bag_backward: max_indices entry"):
            ops.embedding_bag_backward(torch.ones(1, 4), w, idx, torch.tensor([0]), argmax, "max", None, None, False)


# ---- torch.func transforms: the autograd Nodes are hand-built (no torch::autograd::Function) ----------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", ["embedding", "embedding_padding", "bag_sum_psw", "bag_mean", "bag_max"])
def test_torch_func_grad_matches_autograd(case, device):
    w = _weight(9, 4, torch.float64, device, 16)
    idx = _indices((12,), 9, device, 17)
    off = torch.tensor([0, 2, 2, 7], device=device)
    psw = torch.rand(12, generator=torch.Generator().manual_seed(2), dtype=torch.float64).to(device)
    fns = {
        "embedding": (lambda ww: teachcompute_ext.embedding(ww * ww, idx.view(3, 4)), (w,)),
        "embedding_padding": (lambda ww: teachcompute_ext.embedding(ww * ww, idx.view(3, 4), 1), (w,)),
        "bag_sum_psw": (lambda ww, pp: teachcompute_ext.embedding_bag(ww * ww, idx, off, "sum", pp * pp), (w, psw)),
        "bag_mean": (lambda ww: teachcompute_ext.embedding_bag(ww * ww, idx, off, "mean"), (w,)),
        "bag_max": (lambda ww: teachcompute_ext.embedding_bag(ww * ww, idx, off, "max"), (w,)),
    }
    fn, ins = fns[case]
    g = torch.randn(fn(*ins).shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64).to(device)
    assert_func_grad_matches_autograd(fn, ins, g)
