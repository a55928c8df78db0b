import os

import pytest
import torch

import teachcompute_ext  # noqa: F401  (loads the library, registers the ops)

CUDA_OK = torch.cuda.is_available() and "CUDA" in teachcompute_ext.compiled_backends()


def pytest_configure(config):
    # The GPU proof (benchmarks/gpu_check.sh) sets this: without it every CUDA
    # test would skip silently on a machine whose GPU is not seen.
    if os.environ.get("TEACHCOMPUTE_EXT_REQUIRE_CUDA") == "1" and not CUDA_OK:
        raise pytest.UsageError(
            "TEACHCOMPUTE_EXT_REQUIRE_CUDA=1 but no CUDA test can run: torch.cuda.is_available()="
            f"{torch.cuda.is_available()}, compiled backends {teachcompute_ext.compiled_backends()}"
        )


DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not CUDA_OK, reason="no CUDA device or CUDA not compiled")),
]
FLOAT_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def close_to_reference(out, ref, abs_sum, dtype):
    """|out - ref| within the error a correctly summing kernel can have in `dtype`:
    one rounding of the result plus float32 accumulation error on sum(|x|)."""
    eps_out = torch.finfo(dtype).eps
    eps_acc = torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).eps
    tol = eps_out * abs(ref) + 8 * eps_acc * abs_sum + 1e-300
    return abs(float(out) - ref) <= tol, tol


def assert_func_grad_matches_autograd(fn, ins, g):
    """torch.func.grad of sum(fn(*ins) * g) over every input equals torch.autograd.grad's."""
    loss = lambda *p: (fn(*p) * g).sum()  # noqa: E731
    got = torch.func.grad(loss, argnums=tuple(range(len(ins))))(*ins)
    params = [t.clone().requires_grad_() for t in ins]
    want = torch.autograd.grad(loss(*params), params)
    for p, q in zip(got, want):
        torch.testing.assert_close(p, q)
    return loss
