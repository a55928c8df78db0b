"""Every kernel once, on small inputs that reach each of its code paths,
forward and backward, against torch; exits non-zero when a result disagrees.

- On CUDA (the default), the workload benchmarks/gpu_check.sh runs under
  compute-sanitizer --tool memcheck (out-of-bounds and misaligned accesses,
  illegal addresses): small, because the sanitizer slows every kernel down by
  orders of magnitude.
- On the CPU (TCE_SANITIZE_DEVICE=cpu), tests/test_devices.py runs it under each
  ATEN_CPU_CAPABILITY: every per-ISA build holds the launch code and kernels.
"""
import os

import torch
import torch.nn.functional as F

import teachcompute_ext as t

torch.manual_seed(0)
d = os.environ.get("TCE_SANITIZE_DEVICE", "cuda")  # "cpu" checks this script itself on a machine without a GPU
checks = []


def check(name, ours, ref, **tol):
    ok = torch.allclose(ours.double().cpu(), ref.double().cpu(), equal_nan=True, **(tol or dict(rtol=1e-4, atol=1e-4)))
    checks.append((name, ok))


for dtype in (torch.float32, torch.bfloat16):
    tol = dict(rtol=2e-2, atol=2e-2) if dtype == torch.bfloat16 else {}
    # vector_sum: dense (aligned and not), strided
    x = torch.randn(10007, device=d, dtype=dtype)
    check("vector_sum", t.vector_sum(x[1:]), x[1:].double().sum(), **tol)
    check("vector_sum strided", t.vector_sum(x[::3]), x[::3].double().sum(), **tol)
    # reductions: ROWS short and long, COLS wide and narrow, GENERAL, split pieces
    for shape, dims in (((37, 300), [1]), ((3, 5000), [1]), ((5000, 70), [0]), ((9000, 3), [0]),
                        ((20, 30, 40), [0, 2]), ((2, 50000), [1])):
        x = torch.randn(shape, device=d, dtype=dtype)
        check(f"reduce_sum {shape} {dims}", t.reduce_sum(x, dims), x.double().sum(dims), **tol)
        check(f"logsumexp {shape} {dims}", t.logsumexp(x, dims), x.double().logsumexp(dims), **tol)
        if len(dims) == 1:
            v, i = t.reduce_max(x, dims[0])
            check(f"reduce_max {shape}", v, x.max(dims[0]).values)
    # softmax: warp rows, block rows, columns; backward
    for shape, dim in (((33, 100), 1), ((3, 3000), 1), ((50, 7, 9), 1)):
        x = torch.randn(shape, device=d, dtype=dtype, requires_grad=True)
        y = t.softmax(x, dim)
        (g,) = torch.autograd.grad(y, x, torch.ones_like(y))
        check(f"softmax {shape}", y, torch.softmax(x.double(), dim), **tol)
        check(f"log_softmax {shape}", t.log_softmax(x, dim), torch.log_softmax(x.double(), dim), **tol)

# scatter_nd: every reduction, half types in float, masked
data = torch.randn(50, 16, device=d)
idx = torch.randint(-50, 50, (300, 1), device=d)
upd = torch.randn(300, 16, device=d)
for red in ("none", "add", "mul", "max", "min"):
    check(f"scatter_nd {red}", t.scatter_nd(data, idx, upd, red), t.scatter_nd(data.cpu(), idx.cpu(), upd.cpu(), red))
check("scatter_nd_of_shape bf16", t.scatter_nd_of_shape([50, 16], idx, upd.bfloat16()),
      t.scatter_nd_of_shape([50, 16], idx.cpu(), upd.bfloat16().cpu()), rtol=2e-2, atol=2e-2)
check("masked", t.masked_scatter_nd_of_shape([50, 16], (idx % 50), upd, 3),
      t.masked_scatter_nd_of_shape([50, 16], (idx % 50).cpu(), upd.cpu(), 3))
torch.use_deterministic_algorithms(True)
check("scatter_nd deterministic", t.scatter_nd(data, idx, upd, "add"), t.scatter_nd(data.cpu(), idx.cpu(), upd.cpu(), "add"))
torch.use_deterministic_algorithms(False)

# embedding and embedding_bag, forward and backward, every mode, padding, weights
w = torch.randn(100, 24, device=d, requires_grad=True)
ind = torch.randint(0, 100, (90,), device=d)
off = torch.tensor([0, 3, 3, 40, 89], device=d)
wc = w.detach().cpu().requires_grad_()
check("embedding", t.embedding(w, ind), F.embedding(ind, w))
(gw,) = torch.autograd.grad(t.embedding(w, ind, 7).sum(), w)
(gr,) = torch.autograd.grad(F.embedding(ind.cpu(), wc, 7).sum(), wc)
check("embedding backward", gw, gr)
for mode in ("sum", "mean", "max"):
    for pad in (None, 5):
        out = t.embedding_bag(w, ind, off, mode, None, pad)
        (gw,) = torch.autograd.grad(out.sum(), w)
        ref = F.embedding_bag(ind.cpu(), wc, off.cpu(), mode=mode, padding_idx=pad)
        (gr,) = torch.autograd.grad(ref.sum(), wc)
        check(f"embedding_bag {mode} {pad}", out, ref)
        check(f"embedding_bag backward {mode} {pad}", gw, gr)
psw = torch.rand(90, device=d, requires_grad=True)
out = t.embedding_bag(w, ind, off, "sum", psw)
gw, gp = torch.autograd.grad(out.sum(), (w, psw))
pswc = psw.detach().cpu().requires_grad_()
ref = F.embedding_bag(ind.cpu(), wc, off.cpu(), mode="sum", per_sample_weights=pswc)
gr, gpr = torch.autograd.grad(ref.sum(), (wc, pswc))
check("embedding_bag psw", out, ref)
check("embedding_bag psw grads", gp, gpr)

# fused_matmul and fused_linear: every activation, odd sizes, one row
a, b = torch.randn(3, 17, 33, device=d), torch.randn(33, 9, device=d)
check("fused_matmul", t.fused_matmul(a, b, 0.5), 0.5 * (a.double() @ b.double()), rtol=1e-2, atol=1e-2)
for act, fn in (("none", lambda v: v), ("relu", torch.relu), ("gelu", F.gelu),
                ("gelu_tanh", lambda v: F.gelu(v, approximate="tanh")), ("silu", F.silu)):
    for rows in ((5, 40), (40,)):
        x = torch.randn(*rows, device=d, requires_grad=True)
        lw = torch.randn(24, 40, device=d, requires_grad=True)
        lb = torch.randn(24, device=d, requires_grad=True)
        out = t.fused_linear(x, lw, lb, act)
        grads = torch.autograd.grad(out.sum(), (x, lw, lb))
        ref = fn(F.linear(x.double(), lw.double(), lb.double()))
        refs = torch.autograd.grad(ref.sum(), (x, lw, lb))
        check(f"fused_linear {act} {rows}", out, ref, rtol=1e-2, atol=1e-2)
        for name, g, r in zip(("x", "w", "b"), grads, refs):
            check(f"fused_linear {act} {rows} grad {name}", g, r, rtol=1e-2, atol=1e-2)

# the Llama ops: odd widths, weight grads, interleaved and partial rotary, one-tensor glu
for dtype in (torch.float32, torch.bfloat16):
    tol = dict(rtol=2e-2, atol=2e-2) if dtype == torch.bfloat16 else dict(rtol=1e-4, atol=1e-4)
    for rows, width in ((37, 300), (3, 4096), (200, 7)):
        x = torch.randn(rows, width, device=d, dtype=dtype, requires_grad=True)
        rr = torch.randn(rows, width, device=d, dtype=dtype, requires_grad=True)
        nw = torch.randn(width, device=d, dtype=dtype, requires_grad=True)
        out, h = t.add_rms_norm(x, rr, nw)
        grads = torch.autograd.grad((out * 1.5).sum() + h.sum(), (x, rr, nw))
        xc, rc, wc = (v.detach().cpu().double().requires_grad_() for v in (x, rr, nw))
        hc = xc + rc
        hc = hc + (hc.to(dtype).double() - hc).detach()  # h rounded to dtype as the op stores it; gradient 1
        ref = F.rms_norm(hc, (width,), wc, 1e-6)
        refs = torch.autograd.grad((ref * 1.5).sum() + hc.sum(), (xc, rc, wc))
        check(f"add_rms_norm {dtype} {rows}x{width}", out, ref, **tol)
        for name, g, r in zip(("x", "residual", "weight"), grads, refs):
            check(f"add_rms_norm {dtype} {rows}x{width} grad {name}", g, r, **tol)
        check(f"rms_norm {dtype} {rows}x{width}", t.rms_norm(x, None), F.rms_norm(xc, (width,)), **tol)
    for interleaved in (False, True):
        q = torch.randn(2, 5, 3, 64, device=d, dtype=dtype).transpose(1, 2)
        ang = torch.randn(5, 24, device=d)
        c, s = ang.cos().to(dtype), ang.sin().to(dtype)
        out = t.rotary_embedding(q, c, s, interleaved)
        back = t.rotary_embedding(out, c, -s, interleaved)  # the inverse rotation gives q back
        check(f"rotary {dtype} interleaved={interleaved}", back, q, **tol)
        check(f"rotary pass-through {dtype}", out[..., 48:], q[..., 48:], rtol=0, atol=0)
    for form in ("two", "one"):
        gate = torch.randn(33, 2 * 501, device=d, dtype=dtype, requires_grad=True)
        up = torch.randn(33, 501, device=d, dtype=dtype, requires_grad=True) if form == "two" else None
        g_ = gate if form == "one" else gate[:, :501]
        out = t.swiglu(g_, up)
        ins = (gate,) if form == "one" else (gate, up)
        grads = torch.autograd.grad(out.sum(), ins)
        cg = gate.detach().cpu().double().requires_grad_()
        cu = up.detach().cpu().double().requires_grad_() if up is not None else None
        gg, uu = (cg.chunk(2, -1) if form == "one" else (cg[:, :501], cu))
        ref = F.silu(gg) * uu
        refs = torch.autograd.grad(ref.sum(), (cg,) if form == "one" else (cg, cu))
        check(f"swiglu {form} {dtype}", out, ref, **tol)
        for g, r in zip(grads, refs):
            check(f"swiglu {form} {dtype} grad", g, r, **tol)

if d == "cuda":
    torch.cuda.synchronize()
bad = [name for name, ok in checks if not ok]
print(f"{len(checks)} checks, {len(bad)} wrong: {bad}")
raise SystemExit(1 if bad else 0)
