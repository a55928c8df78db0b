"""Reduce family benchmarks against torch, same process: vector_sum; reduce_sum,
reduce_mean, reduce_max, reduce_min, logsumexp over dim 0 and dim 1; softmax and
log_softmax (forward, and forward+backward).

    python -m teachcompute_ext.bench --family reduce [--device cpu|cuda] [--quick] [--out DIR]
"""
import torch

import teachcompute_ext

from . import harness


def vector_sum_cases(device, quick):
    cases = []
    if device == "cpu":
        sizes = [("1e6", 10**6), ("1e7", 10**7)] + ([] if quick else [("1e8", 10**8)])
        dtypes = [torch.float32] if quick else [torch.float32, torch.bfloat16]
    else:
        sizes = [("2^20", 2**20), ("2^24", 2**24)] + ([] if quick else [("2^28", 2**28)])
        dtypes = [torch.float32, torch.bfloat16]
    g = torch.Generator(device=device).manual_seed(0)
    for dtype in dtypes:
        for label, n in sizes:
            x = torch.rand(n, device=device, generator=g).to(dtype)
            baselines = {"torch.sum": lambda x=x: torch.sum(x), **harness.compiled_baseline(lambda t: torch.sum(t), x)}
            cases.append(harness.Case(
                op="vector_sum", shape=label, dtype=dtype, device=device,
                ours=lambda x=x: teachcompute_ext.vector_sum(x), baselines=baselines,
                bytes_moved=x.numel() * x.element_size(),
            ))
    return cases


def softmax_cases(device, quick):
    """softmax / log_softmax along the last dim, forward and forward+backward."""
    cases = []
    shapes = [(4096, 4096), (256, 32000)] if device == "cpu" else [(8192, 8192), (4096, 50257)]
    if quick:
        shapes = [(512, 1024)]
    dtypes = [torch.float32] if device == "cpu" else [torch.float32, torch.bfloat16]
    g = torch.Generator(device=device).manual_seed(1)
    for dtype in dtypes:
        for shape in shapes:
            x = torch.randn(shape, device=device, generator=g).to(dtype)
            grad = torch.randn(shape, device=device, generator=g).to(dtype)
            label = "x".join(map(str, shape))
            nbytes = x.numel() * x.element_size()
            for name, torch_fn in (("softmax", torch.softmax), ("log_softmax", torch.log_softmax)):
                ours_fn = getattr(teachcompute_ext, name)
                cases.append(harness.Case(
                    op=name, shape=label, dtype=dtype, device=device,
                    ours=lambda f=ours_fn, x=x: f(x, -1),
                    baselines={f"torch.{name}": lambda f=torch_fn, x=x: f(x, -1),
                               **harness.compiled_baseline(lambda t, d, f=torch_fn: f(t, d), x, -1)},
                    bytes_moved=2 * nbytes,  # read x, write y
                ))
                xr = x.clone().requires_grad_()

                def fwd_bwd(f, xr=xr, grad=grad):
                    y = f(xr, -1)
                    (gx,) = torch.autograd.grad(y, xr, grad)
                    return gx

                # fb=fwd_bwd binds this iteration's function (and so its xr and grad):
                # a bare fwd_bwd would be looked up at call time, i.e. the last one defined.
                baselines = {f"torch.{name}": lambda f=torch_fn, fb=fwd_bwd: fb(f)}
                # The compiled forward brings its compiled backward (AOTAutograd).
                compiled = harness.compile_fn(lambda t, d, f=torch_fn: f(t, d))
                if compiled is not None:
                    baselines[harness.COMPILED] = lambda f=compiled, fb=fwd_bwd: fb(f)
                cases.append(harness.Case(
                    op=f"{name} fwd+bwd", shape=label, dtype=dtype, device=device,
                    ours=lambda f=ours_fn, fb=fwd_bwd: fb(f),
                    baselines=baselines,
                    bytes_moved=5 * nbytes,  # fwd: read x, write y; bwd: read grad and y, write gx
                ))
    return cases


def dim_reduction_cases(device, quick):
    """reduce_sum / reduce_mean / reduce_max / reduce_min / logsumexp over the inner and the outer dim."""
    cases = []
    shapes = [(4096, 4096)] if device == "cpu" else [(8192, 8192), (4096, 50257)]
    if quick:
        shapes = [(512, 1024)]
    dtypes = [torch.float32] if device == "cpu" else [torch.float32, torch.bfloat16]
    g = torch.Generator(device=device).manual_seed(2)
    ops = [
        ("reduce_sum", lambda x, d: teachcompute_ext.reduce_sum(x, d), "torch.sum", lambda x, d: torch.sum(x, d)),
        ("reduce_mean", lambda x, d: teachcompute_ext.reduce_mean(x, d), "torch.mean", lambda x, d: torch.mean(x, d)),
        ("reduce_max", lambda x, d: teachcompute_ext.reduce_max(x, d), "torch.max", lambda x, d: torch.max(x, d)),
        ("reduce_min", lambda x, d: teachcompute_ext.reduce_min(x, d), "torch.min", lambda x, d: torch.min(x, d)),
        ("logsumexp", lambda x, d: teachcompute_ext.logsumexp(x, [d]), "torch.logsumexp",
         lambda x, d: torch.logsumexp(x, d)),
    ]

    def check_pair(ours, theirs, dtype):
        if isinstance(ours, tuple):  # max/min: values and indices must both match
            harness.default_check(ours[0], theirs[0], dtype)
            if not torch.equal(ours[1], theirs[1]):
                raise AssertionError("indices differ from torch's")
        else:
            harness.default_check(ours, theirs, dtype)

    for dtype in dtypes:
        for shape in shapes:
            x = torch.randn(shape, device=device, generator=g).to(dtype)
            for dim in (0, 1):
                for name, ours, tname, theirs in ops:
                    cases.append(harness.Case(
                        op=f"{name} dim{dim}", shape="x".join(map(str, shape)), dtype=dtype, device=device,
                        ours=lambda f=ours, x=x, d=dim: f(x, d),
                        baselines={tname: lambda f=theirs, x=x, d=dim: f(x, d),
                                   **harness.compiled_baseline(theirs, x, dim)},
                        bytes_moved=x.numel() * x.element_size(),
                        check=lambda a, b, dt=dtype: check_pair(a, b, dt),
                    ))
    return cases


def run(device, quick, out_dir, progress=None):
    cases = vector_sum_cases(device, quick) + dim_reduction_cases(device, quick) + softmax_cases(device, quick)
    return harness.run_family("reduce", cases, device, quick, out_dir, progress, rounds=None if quick else 21)

