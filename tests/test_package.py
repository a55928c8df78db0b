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


@pytest.mark.skipif(os.environ.get("TEACHCOMPUTE_EXT_EXPECT_CUDA") != "1",
                    reason="only where the build was asked to compile CUDA (CI sets it)")
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
