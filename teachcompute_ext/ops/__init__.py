"""One module per op family: Python wrappers, fake kernels and vmap rules
(autograd and autocast are registered in C++).

Importing this package registers the fake kernels and vmap rules of every op, so
torch.compile, torch.export and torch.func work as soon as `import teachcompute_ext`
has run. The public functions are not listed here: each family module makes its own
with ``public(name, doc)`` (ops/_common.py), which records it, and ``__all__`` is what
the families recorded. A new family is one more name in FAMILIES.
"""

import importlib

from ._common import PUBLIC

FAMILIES = ("reduce", "scatter_nd", "embedding", "matmul", "llama")

for _family in FAMILIES:
    importlib.import_module(f".{_family}", __name__)

globals().update(PUBLIC)
__all__ = list(PUBLIC)
