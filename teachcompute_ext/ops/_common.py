"""Checks shared by the fake kernels; the messages match csrc/common/checks.h."""
import torch

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def check_float_dtype(op, arg, t):
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"teachcompute_ext.{op}: unsupported dtype {t.dtype} for argument '{arg}' "
            "(expected float32, float64, float16 or bfloat16)"
        )


INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.bool)


def check_float_or_int_dtype(op, arg, t):
    """The message of check_float_or_int_dtype in csrc/common/checks.h."""
    if t.dtype not in FLOAT_DTYPES and t.dtype not in INT_DTYPES:
        raise TypeError(
            f"teachcompute_ext.{op}: unsupported dtype {t.dtype} for argument '{arg}' "
            "(expected float32, float64, float16, bfloat16, uint8, int8, int16, int32, int64 or bool)"
        )


def check_same_device(op, arg, t, ref_arg, ref):
    """The message of check_same_device in csrc/common/checks.h: torch's words, then ours."""
    if t.device != ref.device:
        raise RuntimeError(
            f"teachcompute_ext.{op}: Expected all tensors to be on the same device, but found at least two devices, "
            f"{ref.device} and {t.device}! (argument '{arg}' is on {t.device}, '{ref_arg}' is on {ref.device})"
        )


def check_dim(op, x, dim):
    """The message of csrc/reduce/reduce.h for a dim out of range (IndexError, as torch's)."""
    ndim = max(x.dim(), 1)
    if not -ndim <= dim < ndim:
        raise IndexError(
            f"teachcompute_ext.{op}: dim {dim} out of range for argument 'dim' of a {x.dim()}-d tensor "
            f"(expected in [{-ndim}, {ndim - 1}])"
        )
