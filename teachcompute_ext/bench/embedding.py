"""Embedding family benchmarks against torch.nn.functional, same process.

python -m teachcompute_ext.bench --family embedding [--device cpu|cuda] [--quick] [--out DIR]
"""

import torch
import torch.nn.functional as F

import teachcompute_ext

from . import harness, sweep


def zipf_indices(n, num, generator, device, a=1.2):
    """Zipf-like ids (rank r drawn with weight 1/r^a): frequent duplicates, like real token/item ids."""
    ranks = torch.arange(1, num + 1, dtype=torch.float64)
    probs = ranks.pow(-a)
    ids = torch.multinomial(probs / probs.sum(), n, replacement=True, generator=generator)
    perm = torch.randperm(num, generator=generator)  # popular ids spread over the table
    return perm[ids].to(device)


def cases(device, quick):
    g = torch.Generator().manual_seed(4)
    num, dim, bags, per_bag = (20000, 64, 2048, 32) if quick else (100000, 128, 16384, 32)
    weight = torch.randn(num, dim, generator=g).to(device)
    idx = zipf_indices(bags * per_bag, num, g, device)
    offsets = torch.arange(0, bags * per_bag, per_bag, device=device)
    grad_bag = torch.randn(bags, dim, generator=g).to(device)
    out = []
    shape = f"{num}x{dim}, {bags} bags x {per_bag}"
    # No torch.compile baseline for embedding_bag: inductor emits the very
    # aten::_embedding_bag call eager torch makes (TORCH_LOGS=output_code, torch
    # 2.15), so it would time eager torch plus Dynamo's guards.
    for mode in ("sum", "mean"):
        out.append(
            harness.Case(
                op=f"embedding_bag {mode}",
                shape=shape,
                dtype=torch.float32,
                device=device,
                ours=lambda m=mode: teachcompute_ext.embedding_bag(weight, idx, offsets, m),
                baselines={"F.embedding_bag": lambda m=mode: F.embedding_bag(idx, weight, offsets, mode=m)},
                bytes_moved=idx.numel() * dim * 4 + bags * dim * 4,
            )
        )
        wr = weight.clone().requires_grad_()

        def fwd_bwd(fn, m=mode, wr=wr):
            (gw,) = torch.autograd.grad(fn(wr, m), wr, grad_bag)
            return gw

        def exact_grad(m=mode):
            wd = weight.double().requires_grad_()
            (gw,) = torch.autograd.grad(F.embedding_bag(idx, wd, offsets, mode=m), wd, grad_bag.double())
            return gw

        # The weight gradient of a popular Zipf row sums thousands of float32
        # terms, in another order than torch's (CUDA: 1.19e-5 apart in the first
        # GPU run): checked against the float64 gradient when the two differ.
        out.append(
            harness.Case(
                op=f"embedding_bag {mode} fwd+bwd",
                shape=shape,
                dtype=torch.float32,
                device=device,
                ours=lambda fb=fwd_bwd: fb(lambda w, m: teachcompute_ext.embedding_bag(w, idx, offsets, m)),
                baselines={
                    "F.embedding_bag": lambda fb=fwd_bwd: fb(lambda w, m: F.embedding_bag(idx, w, offsets, mode=m))
                },
                check=lambda a, b, ex=exact_grad: harness.check_near_exact(a, b, ex, torch.float32),
                bytes_moved=2 * idx.numel() * dim * 4 + 2 * num * dim * 4,
            )
        )
    num2, dim2, ishape = (20000, 64, (16, 256)) if quick else (100000, 256, (64, 1024))
    w2 = torch.randn(num2, dim2, generator=g).to(device).requires_grad_()
    idx2 = zipf_indices(ishape[0] * ishape[1], num2, g, device).view(ishape)
    g2 = torch.randn(*ishape, dim2, generator=g).to(device)

    def emb_fwd_bwd(fn):
        (gw,) = torch.autograd.grad(fn(), w2, g2)
        return gw

    out.append(
        harness.Case(
            op="embedding",
            shape=f"{num2}x{dim2}[{ishape[0]}x{ishape[1]}]",
            dtype=torch.float32,
            device=device,
            ours=lambda: teachcompute_ext.embedding(w2.detach(), idx2),
            baselines={
                "F.embedding": lambda: F.embedding(idx2, w2.detach()),
                **harness.compiled_baseline(lambda i, w: F.embedding(i, w), idx2, w2.detach()),
            },
            bytes_moved=2 * idx2.numel() * dim2 * 4,
        )
    )
    fwd_bwd_baselines = {"F.embedding": lambda: emb_fwd_bwd(lambda: F.embedding(idx2, w2))}
    compiled = harness.compile_fn(lambda i, w: F.embedding(i, w))
    if compiled is not None:  # the compiled forward brings its compiled backward (AOTAutograd)
        fwd_bwd_baselines[harness.COMPILED] = lambda: emb_fwd_bwd(lambda: compiled(idx2, w2))
    out.append(
        harness.Case(
            op="embedding fwd+bwd",
            shape=f"{num2}x{dim2}[{ishape[0]}x{ishape[1]}]",
            dtype=torch.float32,
            device=device,
            ours=lambda: emb_fwd_bwd(lambda: teachcompute_ext.embedding(w2, idx2)),
            baselines=fwd_bwd_baselines,
            bytes_moved=4 * idx2.numel() * dim2 * 4 + 2 * num2 * dim2 * 4,
        )
    )
    return out


def run(device, quick, out_dir, progress=None):
    return harness.run_family("embedding", cases(device, quick), device, quick, out_dir, progress)


# The sweep (sweep.py): the x-axis is the count of elements gathered (rows looked up x dim).
SWEEP_SIZE = "elements gathered (indices x dim)"


def _bag_points(cases, device, dtype, weight, idx, offsets, grad, params, size, values="normal"):
    """embedding_bag sum and mean, fwd and fwd+bwd (the table's dense gradient), against
    F.embedding_bag. No torch.compile baseline: inductor emits eager torch's own
    aten::_embedding_bag call (see cases())."""
    wr = weight.clone().requires_grad_()
    for mode in ("sum", "mean"):
        cases.append(
            sweep.point(
                f"embedding_bag {mode}",
                "fwd",
                params,
                size,
                values=values,
                dtype=dtype,
                device=device,
                ours=lambda w=weight, i=idx, o=offsets, m=mode: teachcompute_ext.embedding_bag(w, i, o, m),
                baselines={
                    "F.embedding_bag": lambda w=weight, i=idx, o=offsets, m=mode: F.embedding_bag(i, w, o, mode=m)
                },
            )
        )

        def fwd_bwd(fn, wr=wr, grad=grad):
            (gw,) = torch.autograd.grad(fn(wr), wr, grad)
            return gw

        def exact(w=weight, i=idx, o=offsets, m=mode, grad=grad):
            w64 = w.double().requires_grad_()
            return torch.autograd.grad(F.embedding_bag(i, w64, o, mode=m), w64, grad.double())[0]

        cases.append(
            sweep.point(
                f"embedding_bag {mode}",
                "fwd+bwd",
                params,
                size,
                values=values,
                dtype=dtype,
                device=device,
                check=sweep.near_exact(dtype, exact),
                ours=lambda fb=fwd_bwd, i=idx, o=offsets, m=mode: fb(
                    lambda w: teachcompute_ext.embedding_bag(w, i, o, m)
                ),
                baselines={
                    "F.embedding_bag": lambda fb=fwd_bwd, i=idx, o=offsets, m=mode: fb(
                        lambda w: F.embedding_bag(i, w, o, mode=m)
                    )
                },
            )
        )


def _embedding_points(cases, device, dtype, weight, idx, grad, params, values="normal"):
    """embedding fwd and fwd+bwd (the table's dense gradient) against F.embedding (and torch.compile)."""
    n, dim = idx.numel(), weight.shape[1]
    compiled = sweep.compiled(("embedding",), lambda i, w: F.embedding(i, w))
    base = {"F.embedding": lambda w=weight, i=idx: F.embedding(i, w)}
    if compiled is not None:
        base[harness.COMPILED] = lambda w=weight, i=idx, c=compiled: c(i, w)
    cases.append(
        sweep.point(
            "embedding",
            "fwd",
            params,
            n * dim,
            values=values,
            dtype=dtype,
            device=device,
            ours=lambda w=weight, i=idx: teachcompute_ext.embedding(w, i),
            baselines=base,
        )
    )
    wr = weight.clone().requires_grad_()

    def emb_fwd_bwd(fn, wr=wr, idx=idx, grad=grad):
        (gw,) = torch.autograd.grad(fn(idx, wr), wr, grad)
        return gw

    base = {"F.embedding": lambda fb=emb_fwd_bwd: fb(F.embedding)}
    if compiled is not None:
        base[harness.COMPILED] = lambda fb=emb_fwd_bwd, c=compiled: fb(c)

    def exact(w=weight, i=idx, grad=grad):
        w64 = w.double().requires_grad_()
        return torch.autograd.grad(F.embedding(i, w64), w64, grad.double())[0]

    cases.append(
        sweep.point(
            "embedding",
            "fwd+bwd",
            params,
            n * dim,
            values=values,
            dtype=dtype,
            device=device,
            check=sweep.near_exact(dtype, exact),
            ours=lambda fb=emb_fwd_bwd: fb(lambda i, w: teachcompute_ext.embedding(w, i)),
            baselines=base,
        )
    )


def sweep_cases(device, quick):
    """embedding_bag sum and mean, forward and forward+backward (the dense
    gradient of the table), from one bag of one index to the report's 16384
    bags of 32 into 100000x128, dims 1 to 1000; embedding likewise from one
    index to 64x1024 into 100000x256. The grid's indices are Zipf-like
    (zipf_indices), unsorted: the other index distributions are values_cases'."""
    if quick:
        bag_grid = [(1000, 7, 1, 1), (20000, 96, 64, 32)]  # (num, dim, bags, per bag)
        emb_grid = [(1000, 32, 1), (20000, 33, 4096)]  # (num, dim, indices)
    else:
        bag_grid = [
            (1000, 7, 1, 1),
            (1000, 33, 1, 32),
            (100000, 128, 1, 32),
            (100000, 128, 64, 32),
            (20000, 96, 512, 32),
            (20000, 300, 512, 32),
            (100000, 128, 4096, 32),
            (20000, 1000, 512, 32),
            (100000, 128, 16384, 32),
        ]
        emb_grid = [
            (1000, 32, 1),
            (1000, 32, 64),
            (1000, 7, 1000),
            (20000, 33, 4096),
            (20000, 96, 4096),
            (100000, 300, 4096),
            (100000, 256, 65536),
        ]
    g = torch.Generator().manual_seed(9)
    cases = []
    for dtype in (torch.float32, torch.bfloat16):
        for num, dim, bags, per_bag in bag_grid:
            weight = torch.randn(num, dim, generator=g).to(device, dtype)
            idx = zipf_indices(bags * per_bag, num, g, device)
            offsets = torch.arange(0, bags * per_bag, per_bag, device=device)
            grad = torch.randn(bags, dim, generator=g).to(device, dtype)
            params = {"table": f"{num}x{dim}", "bags": bags, "per_bag": per_bag}
            _bag_points(cases, device, dtype, weight, idx, offsets, grad, params, bags * per_bag * dim)
        for num, dim, n in emb_grid:
            weight = torch.randn(num, dim, generator=g).to(device, dtype)
            idx = zipf_indices(n, num, g, device)
            grad = torch.randn(n, dim, generator=g).to(device, dtype)
            params = {"table": f"{num}x{dim}", "indices": n}
            _embedding_points(cases, device, dtype, weight, idx, grad, params)
    return cases


def values_cases(device, quick):
    """The index distributions users feed (sweep.VALUES) at a few sizes of the grid: Zipf
    (exponent 1.1) unsorted and sorted, every index the same row, and bag lengths from a Zipf
    law (many short bags, a few very long)."""
    bag_grid = [(20000, 96, 64, 32)] if quick else [(20000, 96, 512, 32), (100000, 128, 4096, 32)]
    emb_grid = [(20000, 33, 4096)] if quick else [(20000, 96, 4096), (100000, 256, 65536)]
    g = torch.Generator().manual_seed(19)
    cases = []
    for dtype in (torch.float32, torch.bfloat16):
        for num, dim, bags, per_bag in bag_grid:
            weight = torch.randn(num, dim, generator=g).to(device, dtype)
            n = bags * per_bag
            z = sweep.zipf(n, num, g)
            lengths = sweep.zipf_lengths(bags, per_bag, g)
            uniform_off = torch.arange(0, n, per_bag)
            for values, idx, offsets in (
                ("zipf", z, uniform_off),
                ("zipf sorted", z.sort().values, uniform_off),
                ("all equal", torch.full((n,), 7), uniform_off),
                (
                    "zipf bags",
                    sweep.zipf(int(lengths.sum()), num, g),
                    torch.cat([lengths.new_zeros(1), lengths.cumsum(0)[:-1]]),
                ),
            ):
                grad = torch.randn(bags, dim, generator=g).to(device, dtype)
                params = {"table": f"{num}x{dim}", "bags": bags, "per_bag": per_bag}
                _bag_points(
                    cases,
                    device,
                    dtype,
                    weight,
                    idx.to(device),
                    offsets.to(device),
                    grad,
                    params,
                    idx.numel() * dim,
                    values,
                )
        for num, dim, n in emb_grid:
            weight = torch.randn(num, dim, generator=g).to(device, dtype)
            z = sweep.zipf(n, num, g)
            for values, idx in (("zipf", z), ("zipf sorted", z.sort().values), ("all equal", torch.full((n,), 7))):
                grad = torch.randn(n, dim, generator=g).to(device, dtype)
                params = {"table": f"{num}x{dim}", "indices": n}
                _embedding_points(cases, device, dtype, weight, idx.to(device), grad, params, values)
    return cases
