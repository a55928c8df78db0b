"""Reduce family benchmarks against torch, same process: vector_sum; reduce_sum,
reduce_mean, reduce_max, reduce_min, logsumexp over dim 0 and dim 1; softmax and
log_softmax (forward, and forward+backward).

    python -m teachcompute_ext.bench --family reduce [--device cpu|cuda] [--quick] [--out DIR]
"""

import torch

import teachcompute_ext

from . import harness, sweep


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
            cases.append(
                harness.Case(
                    op="vector_sum",
                    shape=label,
                    dtype=dtype,
                    device=device,
                    ours=lambda x=x: teachcompute_ext.vector_sum(x),
                    baselines=baselines,
                    bytes_moved=x.numel() * x.element_size(),
                )
            )
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
                cases.append(
                    harness.Case(
                        op=name,
                        shape=label,
                        dtype=dtype,
                        device=device,
                        ours=lambda f=ours_fn, x=x: f(x, -1),
                        baselines={
                            f"torch.{name}": lambda f=torch_fn, x=x: f(x, -1),
                            **harness.compiled_baseline(lambda t, d, f=torch_fn: f(t, d), x, -1),
                        },
                        bytes_moved=2 * nbytes,  # read x, write y
                    )
                )
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
                cases.append(
                    harness.Case(
                        op=f"{name} fwd+bwd",
                        shape=label,
                        dtype=dtype,
                        device=device,
                        ours=lambda f=ours_fn, fb=fwd_bwd: fb(f),
                        baselines=baselines,
                        bytes_moved=5 * nbytes,  # fwd: read x, write y; bwd: read grad and y, write gx
                    )
                )
    return cases


# The dim reductions: (name, ours(x, dim), torch's name, torch's(x, dim)), for the report and the sweep.
_DIM_OPS = [
    ("reduce_sum", lambda x, d: teachcompute_ext.reduce_sum(x, d), "torch.sum", lambda x, d: torch.sum(x, d)),
    ("reduce_mean", lambda x, d: teachcompute_ext.reduce_mean(x, d), "torch.mean", lambda x, d: torch.mean(x, d)),
    ("reduce_max", lambda x, d: teachcompute_ext.reduce_max(x, d), "torch.max", lambda x, d: torch.max(x, d)),
    ("reduce_min", lambda x, d: teachcompute_ext.reduce_min(x, d), "torch.min", lambda x, d: torch.min(x, d)),
    (
        "logsumexp",
        lambda x, d: teachcompute_ext.logsumexp(x, [d]),
        "torch.logsumexp",
        lambda x, d: torch.logsumexp(x, d),
    ),
]


def _check_outputs(ours, theirs, dtype):
    if isinstance(ours, tuple):  # max/min: values and indices must both match
        harness.default_check(ours[0], theirs[0], dtype)
        if not torch.equal(ours[1], theirs[1]):
            raise AssertionError("indices differ from torch's")
    else:
        harness.default_check(ours, theirs, dtype)


def dim_reduction_cases(device, quick):
    """reduce_sum / reduce_mean / reduce_max / reduce_min / logsumexp over the inner and the outer dim."""
    cases = []
    shapes = [(4096, 4096)] if device == "cpu" else [(8192, 8192), (4096, 50257)]
    if quick:
        shapes = [(512, 1024)]
    dtypes = [torch.float32] if device == "cpu" else [torch.float32, torch.bfloat16]
    g = torch.Generator(device=device).manual_seed(2)
    for dtype in dtypes:
        for shape in shapes:
            x = torch.randn(shape, device=device, generator=g).to(dtype)
            for dim in (0, 1):
                for name, ours, tname, theirs in _DIM_OPS:
                    cases.append(
                        harness.Case(
                            op=f"{name} dim{dim}",
                            shape="x".join(map(str, shape)),
                            dtype=dtype,
                            device=device,
                            ours=lambda f=ours, x=x, d=dim: f(x, d),
                            baselines={
                                tname: lambda f=theirs, x=x, d=dim: f(x, d),
                                **harness.compiled_baseline(theirs, x, dim),
                            },
                            bytes_moved=x.numel() * x.element_size(),
                            check=lambda a, b, dt=dtype: _check_outputs(a, b, dt),
                        )
                    )
    return cases


def run(device, quick, out_dir, progress=None):
    cases = vector_sum_cases(device, quick) + dim_reduction_cases(device, quick) + softmax_cases(device, quick)
    return harness.run_family("reduce", cases, device, quick, out_dir, progress, rounds=None if quick else 21)


# The sweep (sweep.py): the x-axis is the input's element count.
SWEEP_SIZE = "elements of the input"


def _first(y):
    return y[0] if isinstance(y, tuple) else y  # max/min: the gradient flows through the values


def _distinct(shape, dim, dtype, device, g):
    """Values without ties along dim, even in bfloat16 (8 mantissa bits): which
    index max/min return on a tie is not what the sweep measures. A shuffled
    ramp of small integers (exact in bfloat16 up to 256) per reduced line,
    plus noise below the spacing of the ramp where the line is longer."""
    n = shape[dim] if len(shape) > 1 else shape[0]
    if n <= 256:
        line = torch.randperm(n, generator=g).float() - n / 2
    else:
        line = torch.randn(n, generator=g)
    other = 1
    for i, s in enumerate(shape):
        if i != dim:
            other *= s
    x = torch.stack([line[torch.randperm(n, generator=g)] for _ in range(min(other, 4))])
    x = x.repeat((other + x.shape[0] - 1) // x.shape[0], 1)[:other]  # (other, n)
    x = x.movedim(1, dim) if len(shape) > 1 else x[0]
    return x.reshape(shape).contiguous().to(device, dtype)


def _sweep_pair(variant, dim_label, x, ours, theirs, dim, dtype, device, size, params, values="normal"):
    """Forward and forward+backward points of one reduction of x along dim.
    Our compiled baseline: theirs through torch.compile, its backward compiled too.
    values: the distribution of x (sweep.VALUES); fully masked rows are compared with their NaN."""
    cases = []
    out_shape = _first(theirs(x, dim)).shape
    g = torch.Generator().manual_seed(7)
    grad = torch.randn(out_shape, generator=g).to(device, dtype)
    name = f"{variant}{dim_label}"
    cfn = sweep.compiled(("reduce", name, dim), lambda t, f=theirs, d=dim: f(t, d))
    compiled = None if cfn is None else (lambda t, d: cfn(t))
    base = {"torch": lambda: theirs(x, dim)}
    if compiled is not None:
        base[harness.COMPILED] = lambda: compiled(x, dim)
    cases.append(
        sweep.point(
            name,
            "fwd",
            params,
            size,
            dtype=dtype,
            device=device,
            ours=lambda: ours(x, dim),
            baselines=base,
            values=values,
            check=sweep.masked_check(dtype) if "masked" in values else lambda a, b: _check_outputs(a, b, dtype),
        )
    )
    xr = x.clone().requires_grad_()

    def fwd_bwd(f):
        (gx,) = torch.autograd.grad(_first(f(xr, dim)), xr, grad)
        return gx

    base = {"torch": lambda: fwd_bwd(theirs)}
    if compiled is not None:
        base[harness.COMPILED] = lambda: fwd_bwd(compiled)

    def exact():
        x64 = x.double().requires_grad_()
        (gx,) = torch.autograd.grad(_first(theirs(x64, dim)), x64, grad.double())
        return gx

    cases.append(
        sweep.point(
            name,
            "fwd+bwd",
            params,
            size,
            dtype=dtype,
            device=device,
            ours=lambda: fwd_bwd(ours),
            baselines=base,
            values=values,
            check=sweep.masked_check(dtype, exact)
            if "masked" in values
            else lambda a, b: harness.check_near_exact(a, b, exact, dtype),
        )
    )
    return cases


def sweep_cases(device, quick):
    """vector_sum over a vector of n; the dim reductions, softmax and
    log_softmax over the last dim of [rows, cols], one row to 4096x4096,
    widths 1 to 4096 including ones that are no multiple of a vector; the dim
    reductions over the outer dim of tall-narrow [rows, cols] (few outputs,
    long reductions)."""
    if quick:
        vector = [1, 1000, 10**5]
        rows = [(1, 7), (16, 1024), (256, 300)]
        tall = [(1000, 1), (4096, 33)]
    else:
        vector = [1, 7, 33, 300, 1000, 4096, 33000, 10**5, 10**6, 10**7, 10**8]
        rows = [
            (1, 1),
            (1, 7),
            (1, 33),
            (1, 96),
            (1, 1000),
            (4, 1024),
            (16, 1024),
            (64, 96),
            (256, 300),
            (1024, 1000),
            (4096, 4096),
        ]
        tall = [(33, 1), (1000, 7), (4096, 33), (100000, 1), (100000, 7), (16384, 96), (4096, 300), (4096, 4096)]
    g = torch.Generator().manual_seed(6)
    cases = []
    for dtype in (torch.float32, torch.bfloat16):
        for n in vector:
            x = torch.rand(n, generator=g).to(device, dtype)
            params = {"n": n}
            compiled = sweep.compiled(("reduce", "vector_sum"), lambda t: torch.sum(t))
            base = {"torch": lambda x=x: torch.sum(x)}
            if compiled is not None:
                base[harness.COMPILED] = lambda x=x, c=compiled: c(x)
            cases.append(
                sweep.point(
                    "vector_sum",
                    "fwd",
                    params,
                    n,
                    dtype=dtype,
                    device=device,
                    ours=lambda x=x: teachcompute_ext.vector_sum(x),
                    baselines=base,
                )
            )
            xr = x.clone().requires_grad_()
            gs = torch.tensor(0.5, dtype=dtype, device=device)

            def fwd_bwd(f, xr=xr, gs=gs):
                (gx,) = torch.autograd.grad(f(xr), xr, gs)
                return gx

            base = {"torch": lambda fb=fwd_bwd: fb(torch.sum)}
            if compiled is not None:
                base[harness.COMPILED] = lambda fb=fwd_bwd, c=compiled: fb(c)
            cases.append(
                sweep.point(
                    "vector_sum",
                    "fwd+bwd",
                    params,
                    n,
                    dtype=dtype,
                    device=device,
                    ours=lambda fb=fwd_bwd: fb(teachcompute_ext.vector_sum),
                    baselines=base,
                )
            )
        for shape in rows:
            params = {"rows": shape[0], "cols": shape[1]}
            size = shape[0] * shape[1]
            x = _distinct(shape, 1, dtype, device, g)
            for variant, ours, _, theirs in _DIM_OPS:
                cases += _sweep_pair(variant, " dim1", x, ours, theirs, 1, dtype, device, size, params)
            for variant in ("softmax", "log_softmax"):
                cases += _sweep_pair(
                    variant,
                    "",
                    x,
                    getattr(teachcompute_ext, variant),
                    getattr(torch, variant),
                    -1,
                    dtype,
                    device,
                    size,
                    params,
                )
        for shape in tall:
            params = {"rows": shape[0], "cols": shape[1]}
            x = _distinct(shape, 0, dtype, device, g)
            for variant, ours, _, theirs in _DIM_OPS:
                cases += _sweep_pair(variant, " dim0", x, ours, theirs, 0, dtype, device, shape[0] * shape[1], params)
    return cases


def values_cases(device, quick):
    """The distributions users feed (sweep.VALUES), at a few sizes of the grid: values of scale
    30 for every reduction over the last dim and the softmaxes; rows half -inf (causal masks)
    and one row in 8 entirely -inf (fully masked) for the softmaxes and logsumexp."""
    shapes = [(64, 1000)] if quick else [(256, 1000), (1024, 4096)]
    g = torch.Generator().manual_seed(61)
    softmaxes = [(v, getattr(teachcompute_ext, v), getattr(torch, v)) for v in ("softmax", "log_softmax")]
    lse = [op for op in _DIM_OPS if op[0] == "logsumexp"]
    cases = []
    for dtype in (torch.float32, torch.bfloat16):
        for rows, cols in shapes:
            params, size = {"rows": rows, "cols": cols}, rows * cols
            x = (torch.randn(rows, cols, generator=g) * 30).to(device, dtype)
            for variant, ours, _, theirs in _DIM_OPS:
                cases += _sweep_pair(variant, " dim1", x, ours, theirs, 1, dtype, device, size, params, "outliers")
            for variant, ours, theirs in softmaxes:
                cases += _sweep_pair(variant, "", x, ours, theirs, -1, dtype, device, size, params, "outliers")
            half = torch.randn(rows, cols, generator=g)
            half[torch.rand(rows, cols, generator=g) < 0.5] = -float("inf")
            half[:, 0] = 0.0  # every row keeps a finite entry
            full = torch.randn(rows, cols, generator=g)
            full[::8] = -float("inf")
            for values, xm in (("half masked", half.to(device, dtype)), ("masked rows", full.to(device, dtype))):
                for variant, ours, theirs in softmaxes:
                    cases += _sweep_pair(variant, "", xm, ours, theirs, -1, dtype, device, size, params, values)
                for variant, ours, _, theirs in lse:
                    cases += _sweep_pair(variant, " dim1", xm, ours, theirs, 1, dtype, device, size, params, values)
    return cases
