"""Matmul family benchmarks: fused_linear against torch eager F.gelu(F.linear(x, W, b))
(and relu, none) and torch.compile of the same function, forward and forward+backward;
fused_matmul against alpha * torch.matmul. Same process; the bound is torch.matmul's
FLOP rate measured in the same run. Memory saved for the backward is reported too.

    python benchmarks/bench_matmul.py [--device cpu|cuda] [--quick] [--out DIR]
"""
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

import teachcompute_ext  # noqa: E402

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

            compiled = torch.compile(eager, fullgraph=True)

            def fwd(fn, act=act):
                with torch.no_grad():
                    return fn(x, w, b)

            out.append(harness.Case(
                op=f"fused_linear {act}", shape=shape, dtype=dtype, device=device, flops=flops,
                ours=lambda act=act: fwd(lambda *a: teachcompute_ext.fused_linear(*a, act)),
                baselines={"eager": lambda eager=eager: fwd(eager),
                           "torch.compile": lambda compiled=compiled: fwd(compiled)},
            ))
            params = [t.clone().requires_grad_() for t in (x, w, b)]

            def fwd_bwd(fn, params=params):
                return torch.autograd.grad(fn(*params), params, grad)

            def check(ours, theirs, dtype=dtype):
                for a, e in zip(ours, theirs):
                    harness.default_check(a, e, dtype)

            ours_fb = lambda act=act: fwd_bwd(lambda *a: teachcompute_ext.fused_linear(*a, act))  # noqa: E731
            eager_fb = lambda eager=eager: fwd_bwd(eager)  # noqa: E731
            ours_saved, _ = saved_bytes(lambda act=act: teachcompute_ext.fused_linear(*params, act))
            eager_saved, _ = saved_bytes(lambda eager=eager: eager(*params))
            out.append(harness.Case(
                op=f"fused_linear {act} fwd+bwd", shape=shape, dtype=dtype, device=device, flops=3 * flops,
                ours=ours_fb,
                baselines={"eager": eager_fb, "torch.compile": lambda compiled=compiled: fwd_bwd(compiled)},
                check=check,
                note=f"saved for backward: ours {ours_saved / 2**20:.0f} MiB, eager {eager_saved / 2**20:.0f} MiB",
            ))
        # fused_matmul: alpha and the transpose of b inside the GEMM call
        out.append(harness.Case(
            op="fused_matmul trans_b", shape=f"a{m}x{k} b{n}x{k}", dtype=dtype, device=device, flops=flops,
            ours=lambda x=x, w=w: teachcompute_ext.fused_matmul(x, w, 0.5, False, True),
            baselines={"alpha*torch.matmul": lambda x=x, w=w: 0.5 * torch.matmul(x, w.mT)},
        ))
    return out


def run(device, quick, out_dir, progress=None):
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    # The compute bound: torch.matmul's rate on square matrices, this run.
    bound = harness.matmul_rate(device, dtype=dtype, n=1024 if quick or device == "cpu" else 8192,
                                rounds=3 if quick else 10)
    results = harness.run_cases(cases(device, quick), bound_flops_per_s=bound, rounds=3 if quick else 11,
                                min_batch_s=0.01 if quick else 0.05, progress=progress)
    path = harness.write_json(os.path.join(out_dir, f"matmul-{device}.json"), "matmul", device, results,
                              {f"matmul_{str(dtype).replace('torch.', '')}_TFLOP_per_s": bound / 1e12})
    return results, bound, path


if __name__ == "__main__":
    harness.family_main(__doc__, run)
