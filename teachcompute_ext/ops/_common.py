"""What every family module shares: the public function of an op (public), and the
checks of the fake kernels (their messages match csrc/common/checks.h)."""

import functools

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


try:
    from .. import _fastcall
except ImportError:  # built without Python's headers: torch.ops' entry points serve
    _fastcall = None


# name -> public function, in the order the families made them: teachcompute_ext.ops.__all__.
PUBLIC = {}


def public(name, doc):
    """The public function of op teachcompute_ext::<name>, with no Python frame in front;
    recorded in PUBLIC, which makes it part of teachcompute_ext's API.

    _fastcall's function parses the arguments itself and calls the op through the
    dispatcher (csrc/python/fastcall.cpp); what it does not parse (keywords, tensor
    subclasses with __torch_function__, other argument types) goes to the op's own
    C++ entry point, the builtin behind ``torch.ops.teachcompute_ext.<name>.default``.
    Measured (CPU, 2 threads, softmax of a 1x96 tensor, median of 30 interleaved rounds
    of 300 calls): torch.softmax 3.1 us, this function 2.7 us, the op's entry point
    4.6 us, a Python wrapper calling the OpOverload about 1.5 us more (the generic
    entry point converts each argument through the schema's type machinery: aten's
    own _softmax through it costs the same 4.6 us). torch.compile traces the function
    as the op (substitute_in_graph); torch.export, vmap and the other paths see the op
    as they do through torch.ops (the same dispatcher call)."""
    overload = getattr(torch.ops.teachcompute_ext, name).default
    entry = overload._op
    schema = overload._schema
    # An in-place op (no return, its first argument written) returns that
    # argument, as torch's x.add_() does: so do the fast function and its fallback.
    first_arg = schema.arguments[0] if schema.arguments else None
    returns_first = (
        not schema.returns
        and first_arg is not None
        and first_arg.alias_info is not None
        and first_arg.alias_info.is_write
    )
    first = first_arg.name if first_arg is not None else None  # a str: dynamo traces it
    if returns_first:
        op_entry = entry

        def entry(*args, **kwargs):
            op_entry(*args, **kwargs)
            return args[0] if args else kwargs[first]

    fn = None
    if _fastcall is not None:
        fn = _fastcall.function(f"teachcompute_ext::{name}", entry, name, doc, "teachcompute_ext")
    if fn is None:
        fn = functools.partial(entry)
        fn.__doc__ = doc
        fn.__name__ = fn.__qualname__ = name
        fn.__module__ = "teachcompute_ext"
        original = entry
    else:
        original = fn
    PUBLIC[name] = fn

    @torch.compiler.substitute_in_graph(original)
    def traced(*args, **kwargs):
        out = overload(*args, **kwargs)
        if returns_first:
            return args[0] if args else kwargs[first]
        return out

    return fn
