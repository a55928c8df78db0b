"""teachcompute_ext: fast PyTorch custom operators in C++ and CUDA, written to teach.

import teachcompute_ext
teachcompute_ext.vector_sum(x)              # functional API
torch.ops.teachcompute_ext.vector_sum(x)    # the same op through the dispatcher
teachcompute_ext.compiled_backends()        # ('CPU',) or ('CPU', 'CUDA')
"""

from ._loader import load as _load
from ._version import __version__

_BUILD_INFO = _load()

from . import nn  # noqa: E402,F401  (drop-in modules)
from .ops import *  # noqa: E402,F401,F403  (wrappers, fake kernels, autograd)
from .ops import __all__ as _ops_all  # noqa: E402


def compiled_backends():
    """The device types this build has kernels for: ('CPU',) or ('CPU', 'CUDA')."""
    return _BUILD_INFO["backends"]


def build_info():
    """What the native library was built with: torch version, backends, CUDA runtime version."""
    return dict(_BUILD_INFO)


__all__ = ["__version__", "compiled_backends", "build_info", *_ops_all]
