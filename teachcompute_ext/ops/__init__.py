"""One module per op family: Python wrappers, fake kernels and vmap rules
(autograd and autocast are registered in C++).

Importing this package registers the fake kernels and vmap rules of every op, so
torch.compile, torch.export and torch.func work as soon as `import teachcompute_ext`
has run.
"""
from .reduce import (
    log_softmax,
    logsumexp,
    reduce_max,
    reduce_mean,
    reduce_min,
    reduce_sum,
    softmax,
    vector_sum,
)

from .embedding import embedding, embedding_bag
from .matmul import fused_linear, fused_matmul
from .llama import add_rms_norm, geglu, rms_norm, rotary_embedding, swiglu
from .scatter_nd import masked_scatter_nd_of_shape, scatter_nd, scatter_nd_, scatter_nd_of_shape

__all__ = ["fused_matmul", "fused_linear", "embedding", "embedding_bag", "scatter_nd", "scatter_nd_", "scatter_nd_of_shape", "masked_scatter_nd_of_shape", "vector_sum", "reduce_sum", "reduce_mean", "reduce_max", "reduce_min", "logsumexp", "softmax",
           "log_softmax", "rms_norm", "add_rms_norm", "rotary_embedding", "swiglu", "geglu"]
