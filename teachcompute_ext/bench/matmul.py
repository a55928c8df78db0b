"""Matmul family benchmarks: fused_linear against torch eager F.gelu(F.linear(x, W, b))
(and relu, none) and torch.compile of the same function, forward and forward+backward;
fused_matmul against alpha * torch.matmul. Same process; the bound is torch.matmul's
FLOP rate measured in the same run. Memory kept for the backward is reported too
(autograd's saved tensors on the CPU, the allocator's peak on CUDA).

    python -m teachcompute_ext.bench --family matmul [--device cpu|cuda] [--quick] [--out DIR]
"""

import os

import torch
import torch.nn.functional as F

import teachcompute_ext

from . import harness, sweep

ACTS = {"gelu": F.gelu, "relu": F.relu, "none": lambda v: v}


def saved_bytes(fn):
    """Bytes autograd keeps for the backward of fn() (distinct storages), the
    activation memory a training step holds between forward and backward."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(storages.values()), out


def peak_bytes(fn, device):
    """Memory a forward+backward step needs beyond what is already allocated:
    the allocator's peak on CUDA; on the CPU (no allocator statistics) the
    bytes autograd saves between forward and backward, the part that differs."""
    if device.startswith("cuda"):
        return harness.cuda_peak_bytes(fn), "peak memory"
    return saved_bytes(fn)[0], "saved for backward"


def cases(device, quick):
    g = torch.Generator().manual_seed(5)
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    if device == "cpu":
        shapes = [(256, 256, 512)] if quick else [(2048, 1024, 4096)]  # (M, K, N)
    else:
        shapes = [(1024, 1024, 1024)] if quick else [(8192, 4096, 4096), (8192, 4096, 16384)]
    out = []
    for m, k, n in shapes:
        x = torch.randn(m, k, generator=g).to(device, dtype)
        w = (torch.randn(n, k, generator=g) / k**0.5).to(device, dtype)
        b = torch.randn(n, generator=g).to(device, dtype)
        grad = torch.randn(m, n, generator=g).to(device, dtype)
        shape = f"x{m}x{k} W{n}x{k}"
        flops = 2.0 * m * n * k
        for act, f in ACTS.items():
            if quick and act != "gelu":
                continue

            def eager(x, w, b, f=f):
                return f(F.linear(x, w, b))

            compiled = harness.compile_fn(eager)

            def fwd(fn, act=act):
                with torch.no_grad():
                    return fn(x, w, b)

            out.append(
                harness.Case(
                    op=f"fused_linear {act}",
                    shape=shape,
                    dtype=dtype,
                    device=device,
                    flops=flops,
                    ours=lambda act=act: fwd(lambda *a: teachcompute_ext.fused_linear(*a, act)),
                    baselines={
                        "eager": lambda eager=eager: fwd(eager),
                        **({} if compiled is None else {harness.COMPILED: lambda c=compiled: fwd(c)}),
                    },
                )
            )
            params = [t.clone().requires_grad_() for t in (x, w, b)]

            def fwd_bwd(fn, params=params):
                return torch.autograd.grad(fn(*params), params, grad)

            def check(ours, theirs, dtype=dtype):
                for a, e in zip(ours, theirs):
                    harness.default_check(a, e, dtype)

            ours_fb = lambda act=act: fwd_bwd(lambda *a: teachcompute_ext.fused_linear(*a, act))  # noqa: E731
            eager_fb = lambda eager=eager: fwd_bwd(eager)  # noqa: E731
            ours_mem, what = peak_bytes(ours_fb, device)
            eager_mem, _ = peak_bytes(eager_fb, device)
            out.append(
                harness.Case(
                    op=f"fused_linear {act} fwd+bwd",
                    shape=shape,
                    dtype=dtype,
                    device=device,
                    flops=3 * flops,
                    ours=ours_fb,
                    baselines={
                        "eager": eager_fb,
                        **({} if compiled is None else {harness.COMPILED: lambda c=compiled: fwd_bwd(c)}),
                    },
                    check=check,
                    note=f"{what}: ours {ours_mem / 2**20:.0f} MiB, eager {eager_mem / 2**20:.0f} MiB",
                )
            )
        # fused_matmul: alpha and the transpose of b inside the GEMM call
        out.append(
            harness.Case(
                op="fused_matmul trans_b",
                shape=f"a{m}x{k} b{n}x{k}",
                dtype=dtype,
                device=device,
                flops=flops,
                ours=lambda x=x, w=w: teachcompute_ext.fused_matmul(x, w, 0.5, False, True),
                baselines={"alpha*torch.matmul": lambda x=x, w=w: 0.5 * torch.matmul(x, w.mT)},
            )
        )
    return out


def run(device, quick, out_dir, progress=None):
    selected = harness.select(cases(device, quick))
    if not selected:
        return [], None, None
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    # The compute bound: torch.matmul's rate on square matrices, this run.
    n = 1024 if quick else (2048 if device == "cpu" else 8192)
    bound = harness.shared_bound(
        ("matmul", device, str(dtype), n),
        lambda: harness.matmul_rate(device, dtype=dtype, n=n, rounds=3 if quick else 10),
    )
    rounds, min_batch_s = (3, 0.01) if quick else (11, 0.05)
    results = harness.run_cases(
        selected, bound_flops_per_s=bound, rounds=rounds, min_batch_s=min_batch_s, progress=progress
    )
    path = harness.write_json(
        os.path.join(out_dir, f"matmul-{device}.json"),
        "matmul",
        device,
        results,
        {f"matmul_{str(dtype).replace('torch.', '')}_TFLOP_per_s": bound / 1e12},
        {"quick": quick, "rounds": rounds, "min_batch_s": min_batch_s},
    )
    return results, bound, path


# The sweep (sweep.py): the x-axis is the forward's FLOPs.
SWEEP_SIZE = "FLOPs of the forward (2 M N K)"


def _linear_cases(cases, device, dtype, m, k, n, g, unscaled=False):
    """fused_linear's fwd and fwd+bwd points for every activation at [M, K] x [N, K] (W scaled by
    1/sqrt(K), or unscaled: pre-activations of standard deviation ~ sqrt(K), as an untrained
    layer's outliers); returns x and w."""
    x = torch.randn(m, k, generator=g).to(device, dtype)
    w = (torch.randn(n, k, generator=g) / (1.0 if unscaled else k**0.5)).to(device, dtype)
    b = torch.randn(n, generator=g).to(device, dtype)
    grad = torch.randn(m, n, generator=g).to(device, dtype)
    params = {"M": m, "K": k, "N": n}
    values = "unscaled layer" if unscaled else "normal"
    flops = 2.0 * m * n * k
    params_r = [t.clone().requires_grad_() for t in (x, w, b)]
    for act, f in ACTS.items():

        def eager(x, w, b, f=f):
            return f(F.linear(x, w, b))

        compiled = sweep.compiled(("matmul", act), eager)

        def fwd(fn, x=x, w=w, b=b):
            with torch.no_grad():
                return fn(x, w, b)

        base = {"eager": lambda fw=fwd, e=eager: fw(e)}
        if compiled is not None:
            base[harness.COMPILED] = lambda fw=fwd, c=compiled: fw(c)
        cases.append(
            sweep.point(
                f"fused_linear {act}",
                "fwd",
                params,
                flops,
                values=values,
                dtype=dtype,
                device=device,
                ours=lambda fw=fwd, a=act: fw(lambda *t: teachcompute_ext.fused_linear(*t, a)),
                baselines=base,
            )
        )

        def fwd_bwd(fn, p=params_r, grad=grad):
            return torch.autograd.grad(fn(*p), p, grad)

        def exact(e=eager, p=params_r, grad=grad):
            p64 = [t.detach().double().requires_grad_() for t in p]
            return torch.autograd.grad(e(*p64), p64, grad.double())

        check = sweep.near_exact(dtype, exact)
        base = {"eager": lambda fb=fwd_bwd, e=eager: fb(e)}
        if compiled is not None:
            base[harness.COMPILED] = lambda fb=fwd_bwd, c=compiled: fb(c)
        cases.append(
            sweep.point(
                f"fused_linear {act}",
                "fwd+bwd",
                params,
                flops,
                values=values,
                dtype=dtype,
                device=device,
                check=check,
                ours=lambda fb=fwd_bwd, a=act: fb(lambda *t: teachcompute_ext.fused_linear(*t, a)),
                baselines=base,
            )
        )
    return x, w


def values_cases(device, quick):
    """fused_linear on the pre-activations of an unscaled layer (W from randn: standard
    deviation ~ sqrt(K) = 22 at K = 512): outliers through every activation and its derivative."""
    grid = [(64, 128, 64)] if quick else [(200, 512, 256), (2048, 512, 256)]
    g = torch.Generator().manual_seed(11)
    cases = []
    for dtype in (torch.float32, torch.bfloat16):
        for m, k, n in grid:
            _linear_cases(cases, device, dtype, m, k, n, g, unscaled=True)
    return cases


def sweep_cases(device, quick):
    """fused_linear (none, relu, gelu) forward and forward+backward and
    fused_matmul trans_b, x [M, K] and W [N, K]: one row to the report's
    2048x1024 by 4096, hidden layers of a few hundred units, odd widths."""
    if quick:
        grid = [(1, 128, 64), (32, 96, 300)]  # (M, K, N)
    else:
        grid = [
            (1, 128, 64),
            (32, 128, 64),
            (32, 96, 300),
            (128, 300, 33),
            (64, 256, 256),
            (256, 512, 1000),
            (256, 1024, 1024),
            (512, 1024, 4096),
            (2048, 1024, 4096),
        ]
    g = torch.Generator().manual_seed(10)
    cases = []
    for dtype in (torch.float32, torch.bfloat16):
        for m, k, n in grid:
            x, w = _linear_cases(cases, device, dtype, m, k, n, g)
            params = {"M": m, "K": k, "N": n}
            flops = 2.0 * m * n * k
            cases.append(
                sweep.point(
                    "fused_matmul trans_b",
                    "fwd",
                    params,
                    flops,
                    dtype=dtype,
                    device=device,
                    ours=lambda x=x, w=w: teachcompute_ext.fused_matmul(x, w, 0.5, False, True),
                    baselines={"alpha*torch.matmul": lambda x=x, w=w: 0.5 * torch.matmul(x, w.mT)},
                )
            )
    return cases
