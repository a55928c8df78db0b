"""Drop-in modules: same constructor arguments, initialization and state_dict as torch.nn's."""
from .embedding import Embedding, EmbeddingBag
from .linear import FusedLinear

__all__ = ["Embedding", "EmbeddingBag", "FusedLinear"]
