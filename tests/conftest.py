import pytest
import torch

import teachcompute_ext  # noqa: F401  (loads the library, registers the ops)

CUDA_OK = torch.cuda.is_available() and "CUDA" in teachcompute_ext.compiled_backends()

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
