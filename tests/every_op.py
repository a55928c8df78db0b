"""Every kernel once: each sample of the op table (tests/op_db.py, inputs that reach each
code path), forward and backward, against the reference; exits non-zero when a result
disagrees.

- On CUDA (the default), the workload benchmarks/gpu_check.sh runs under
  compute-sanitizer (memcheck: out-of-bounds and misaligned accesses, illegal
  addresses; racecheck): small inputs, since the sanitizer slows every kernel down by
  orders of magnitude.
- On the CPU (TCE_SANITIZE_DEVICE=cpu), tests/test_devices.py runs it under each
  ATEN_CPU_CAPABILITY: every per-ISA build holds the launch code and kernels.

The forward is compared with the op's reference in float64 (or, for an internal op
with none, with the op on the CPU); the gradients with those of the op itself on the
CPU in float64 (gradcheck proves those in the family tests).
"""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
import op_db  # noqa: E402
from op_db import INTS, call, outputs  # noqa: E402

d = os.environ.get("TCE_SANITIZE_DEVICE", "cuda")  # "cpu" checks this script itself on a machine without a GPU
checks = []


def close(op, got, want, dtype):
    rtol, atol = op.tolerance(dtype)
    for g, w in zip(outputs(got), outputs(want)):
        g, w = g.cpu(), w.cpu()
        if g.is_floating_point():
            ok = g.shape == w.shape and torch.allclose(g.double(), w.double(), rtol=rtol, atol=atol, equal_nan=True)
        else:
            ok = torch.equal(g, w.to(g.dtype))
        if not ok:
            return False
    return True


def to_cpu64(sample):
    return sample.map(lambda t: t.cpu().double() if t.is_floating_point() else t.cpu())


def gradients(op, sample):
    """The gradients of a weighted sum of op's floating outputs for its floating tensors."""
    leaves, loss = op_db.leaves_and_loss(op, sample)
    return torch.autograd.grad(loss(), leaves, allow_unused=True)


for op in op_db.OPS:
    dtypes = [torch.float32, torch.bfloat16] + ([torch.int32] if any(t in INTS for t in op.dtypes) else [])
    for dtype in dtypes:
        for sample in op.samples(d, dtype):
            name = f"{op.name} {dtype} '{sample.name}'"
            out = call(op, sample)
            if op.ref is not None:
                want = call(op, to_cpu64(sample) if dtype not in INTS else sample.map(torch.Tensor.cpu), op.ref)
            else:
                want = call(op, sample.map(torch.Tensor.cpu))
            if op.name in ("reduce_max", "reduce_min"):
                out, want = out[0], want[0]  # the values; the indices are checked against torch's in test_reduce
            checks.append((name, close(op, out, want, dtype)))
            if (
                op.public
                and op.differentiable
                and sample.grad
                and dtype.is_floating_point
                and all(a.numel() > 0 for a in sample.args if isinstance(a, torch.Tensor))
            ):
                got = gradients(op, sample)
                ref = gradients(op, to_cpu64(sample))
                ok = all((g is None) == (r is None) and (g is None or close(op, g, r, dtype)) for g, r in zip(got, ref))
                checks.append((f"{name} backward", ok))

if d == "cuda":
    torch.cuda.synchronize()
bad = [name for name, ok in checks if not ok]
print(f"{len(checks)} checks, {len(bad)} wrong: {bad}")
raise SystemExit(1 if bad else 0)
