"""Loads the compiled library (teachcompute_ext/_C*.so) exactly once.

The library holds only C++ (no Python bindings): loading it runs its
TORCH_LIBRARY static initializers, which register the schemas and kernels under
torch.ops.teachcompute_ext. It also exports a C function describing what it was
built with, read here through ctypes to refuse a library built for another torch.
"""

import ctypes
import glob
import os

import torch

REBUILD_HINT = (
    "rebuild it against the installed torch from the source tree with "
    "`pip install --no-build-isolation -e .` (add TEACHCOMPUTE_EXT_CUDA=1 to force the CUDA kernels)"
)

_build_info = None


def _library_path():
    here = os.path.dirname(os.path.abspath(__file__))
    candidates = sorted(glob.glob(os.path.join(here, "_C*.so")))
    if not candidates:
        raise ImportError(f"teachcompute_ext: the compiled library (_C*.so) is missing from {here}; " + REBUILD_HINT)
    return candidates[0]


def _parse(info):
    out = {}
    for item in info.split(";"):
        key, _, value = item.partition("=")
        out[key] = value
    out["backends"] = tuple(b for b in out.get("backends", "").split(",") if b)
    return out


def load():
    """Loads the library once and returns its build information."""
    global _build_info
    if _build_info is not None:
        return _build_info
    path = _library_path()
    try:
        torch.ops.load_library(path)
    except OSError as e:
        raise ImportError(
            f"teachcompute_ext: cannot load {path} with torch {torch.__version__}: {e}. "
            "It was probably built for another torch version; " + REBUILD_HINT
        ) from e
    lib = ctypes.CDLL(path)
    lib.teachcompute_ext_build_info.restype = ctypes.c_char_p
    info = _parse(lib.teachcompute_ext_build_info().decode())
    check_torch_version(info, torch.__version__, path)
    _build_info = info
    return info


def check_torch_version(info, running, path):
    """Refuses a library whose torch (major.minor.patch) differs from the running one."""
    running = running.split("+")[0]
    if info.get("torch") != running:
        raise ImportError(
            f"teachcompute_ext: {path} was built for torch {info.get('torch')} but torch "
            f"{running} is installed; " + REBUILD_HINT
        )
