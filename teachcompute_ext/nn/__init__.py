"""Drop-in modules: same constructor arguments, initialization and state_dict as torch.nn's."""

from .embedding import Embedding, EmbeddingBag
from .linear import FusedLinear
from .llama import GatedMLP, RMSNorm, RotaryEmbedding

__all__ = ["Embedding", "EmbeddingBag", "FusedLinear", "RMSNorm", "GatedMLP", "RotaryEmbedding"]
