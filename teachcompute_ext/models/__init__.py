"""Models built from the package's ops, each with a pure-torch twin of the same state_dict."""

from .llama import ALL, PIECES, LlamaConfig, LlamaForCausalLM, LlamaModel

__all__ = ["ALL", "PIECES", "LlamaConfig", "LlamaForCausalLM", "LlamaModel"]
