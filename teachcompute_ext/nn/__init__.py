"""Drop-in modules: same constructor arguments, initialization and state_dict as torch.nn's."""

from .embedding import Embedding, EmbeddingBag, RowOptimizer, RowOptimizerConfig
from .linear import FusedLinear
from .llama import GatedMLP, RMSNorm, RotaryEmbedding

__all__ = [
    "Embedding",
    "EmbeddingBag",
    "RowOptimizer",
    "RowOptimizerConfig",
    "FusedLinear",
    "RMSNorm",
    "GatedMLP",
    "RotaryEmbedding",
]
