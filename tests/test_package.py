"""The package itself: loading, build information, error messages of the loader."""

import os

import pytest
import torch

import teachcompute_ext
from teachcompute_ext import _loader


def test_version_and_backends():
    assert isinstance(teachcompute_ext.__version__, str) and teachcompute_ext.__version__
    backends = teachcompute_ext.compiled_backends()
    assert "CPU" in backends
    assert teachcompute_ext.build_info()["torch"] == torch.__version__.split("+")[0]


def test_every_schema_in_one_namespace():
    assert hasattr(torch.ops.teachcompute_ext, "vector_sum")
    assert torch._C._dispatch_has_kernel_for_dispatch_key("teachcompute_ext::vector_sum", "CPU")


@pytest.mark.skipif(
    os.environ.get("TEACHCOMPUTE_EXT_EXPECT_CUDA") != "1",
    reason="only where the build was asked to compile CUDA (CI sets it)",
)
def test_cuda_kernels_registered_when_compiled():
    assert "CUDA" in teachcompute_ext.compiled_backends()
    assert torch._C._dispatch_has_kernel_for_dispatch_key("teachcompute_ext::vector_sum", "CUDA")


def test_missing_library_says_how_to_rebuild(monkeypatch):
    monkeypatch.setattr(_loader.glob, "glob", lambda pattern: [])
    with pytest.raises(ImportError, match=r"compiled library .* is missing.*pip install --no-build-isolation"):
        _loader._library_path()


def test_library_for_another_torch_is_refused():
    info = {"torch": "1.13.1", "backends": ("CPU",)}
    with pytest.raises(ImportError, match=r"built for torch 1.13.1 but torch 2\.\d+\.\d+ is installed.*rebuild"):
        _loader.check_torch_version(info, "2.15.0+cu132", "/x/_C.so")
    _loader.check_torch_version({"torch": "2.15.0"}, "2.15.0+cu132", "/x/_C.so")  # same: accepted


def test_readme_training_example_runs():
    """The README's "use it in your training script" example, run as written."""
    import pathlib
    import re

    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"## Use it in your training script\n\n```python\n(.*?)```", readme, re.S)
    assert block, "README lost its training example"
    torch._dynamo.reset()
    scope = {}
    exec(compile(block.group(1), "README.md", "exec"), scope)
    assert scope["loss"].isfinite()
    assert all(p.grad is not None for p in scope["model"].parameters())


# ---- the public functions: teachcompute_ext._fastcall (csrc/python/fastcall.cpp) ----------------
def _fast_and_entry(name):
    return getattr(teachcompute_ext, name), getattr(torch.ops.teachcompute_ext, name).default._op


def test_public_functions_parse_their_arguments_in_cpp():
    from teachcompute_ext import _fastcall  # noqa: F401  (built with the package)

    for name in teachcompute_ext.ops.__all__:
        fn = getattr(teachcompute_ext, name)
        assert type(fn).__name__ == "builtin_function_or_method", name
        assert (fn.__name__, fn.__module__) == (name, "teachcompute_ext") and fn.__doc__.startswith(name + "("), name


@pytest.mark.parametrize("case", range(11))
def test_public_function_equals_the_ops_entry_point(case):
    g = torch.Generator().manual_seed(case)
    x = torch.randn(4, 6, generator=g)
    w = torch.nn.Parameter(torch.randn(6, generator=g))
    lw = torch.randn(5, 6, generator=g)
    idx, off = torch.tensor([0, 3, 1, 1, 2]), torch.tensor([0, 2])
    name, args = [
        ("scatter_nd_of_shape", ([5, 6], idx[:2, None], x[:2])),  # SymInt[]
        ("reduce_sum", (x, 1)),  # int[1]? given an int
        ("reduce_sum", (x, [0, 1], True)),  # a list, a bool
        ("reduce_sum", (x, (0,))),  # a tuple
        ("reduce_sum", (x, None)),  # None for an optional list
        ("reduce_max", (x, -1)),  # two returns
        ("softmax", (x, 0)),
        ("rms_norm", (x, w, 1)),  # a Parameter; an int for a float
        ("rms_norm", (x,)),  # the defaults
        ("fused_linear", (x, lw, None, "gelu")),  # an optional tensor, a string
        ("embedding_bag", (lw, idx, off, "sum")),
    ][case]
    fast, entry = _fast_and_entry(name)
    got, want = fast(*args), entry(*args)
    assert type(got) is type(want)
    for a, b in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_public_functions_pickle_by_name():
    # As torch.softmax: torch.save of a module holding one, functools.partial in
    # spawned workers. (Their __self__ was a capsule, which pickle refused.)
    import functools
    import io
    import pickle

    for name in teachcompute_ext.ops.__all__:
        fn = getattr(teachcompute_ext, name)
        assert pickle.loads(pickle.dumps(fn)) is fn, name
    part = pickle.loads(pickle.dumps(functools.partial(teachcompute_ext.softmax, dim=-1)))
    x = torch.randn(2, 5)
    torch.testing.assert_close(part(x), torch.softmax(x, -1))
    module = torch.nn.Module()
    module.act = teachcompute_ext.swiglu
    buf = io.BytesIO()
    torch.save(module, buf)
    buf.seek(0)
    assert torch.load(buf, weights_only=False).act is teachcompute_ext.swiglu


def test_in_place_public_function_returns_its_data():
    # scatter_nd_ returns nothing as an op; its public function returns data, as
    # torch's x.op_(), on the fast path and on the fallback (keywords, subclasses).
    data, idx, upd = torch.zeros(5, 3), torch.tensor([[1], [3]]), torch.ones(2, 3)
    assert teachcompute_ext.scatter_nd_(data, idx, upd) is data and data[1].sum() == 3
    assert teachcompute_ext.scatter_nd_(data, idx, upd, reduction="add") is data and data[3].sum() == 6
    assert teachcompute_ext.scatter_nd_(data=data, indices=idx, updates=upd) is data

    class Sub(torch.Tensor):
        pass

    sub = torch.zeros(5, 3).as_subclass(Sub)
    assert teachcompute_ext.scatter_nd_(sub, idx, upd) is sub and sub[1].sum() == 3

    @torch.compile(fullgraph=True, dynamic=True)
    def f(d, u):
        return teachcompute_ext.scatter_nd_(d.clone(), idx, u, "add") * 2

    torch.testing.assert_close(
        f(torch.ones(5, 3), upd), teachcompute_ext.scatter_nd(torch.ones(5, 3), idx, upd, "add") * 2
    )


def test_public_function_leaves_other_calls_to_the_entry_point():
    x = torch.randn(3, 5)
    fast, entry = _fast_and_entry("softmax")
    torch.testing.assert_close(fast(x, dim=1), entry(x, 1), rtol=0, atol=0)  # keywords
    # The same errors, whichever path raised them: a bad value (C++ check), a bool for an
    # int, a wrong type, too many arguments.
    for args in [(x, 2), (x, True), ("x", 1), (x, 1, 2), (x,)]:
        errors = []
        for fn in (fast, entry):
            try:
                fn(*args)
                errors.append(None)
            except Exception as e:  # noqa: BLE001  (compared, not swallowed)
                errors.append((type(e), str(e).split("\n")[0]))
        assert errors[0] == errors[1], args


def test_public_function_honours_torch_function():
    seen = []

    class Logged(torch.Tensor):
        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            seen.append(func)
            return super().__torch_function__(func, types, args, kwargs or {})

    x = torch.randn(2, 3)
    teachcompute_ext.softmax(x.as_subclass(Logged), 1)
    assert seen and "softmax" in str(seen[0])

    class Mode(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            seen.append(func)
            return func(*args, **(kwargs or {}))

    seen.clear()
    with Mode():
        teachcompute_ext.reduce_sum(x, 1)
    assert seen and "reduce_sum" in str(seen[0])


def test_public_function_gradient_through_a_parameter():
    w = torch.nn.Parameter(torch.randn(4))
    x = torch.randn(3, 4, requires_grad=True)
    teachcompute_ext.rms_norm(x, w, 1e-6).sum().backward()
    xe, we = x.detach().requires_grad_(), w.detach().requires_grad_()
    torch.nn.functional.rms_norm(xe, (4,), we, 1e-6).sum().backward()
    torch.testing.assert_close(w.grad, we.grad)
    torch.testing.assert_close(x.grad, xe.grad)
