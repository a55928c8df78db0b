"""A small Llama-style causal language model, built from this package's ops or
from torch's alone.

    from teachcompute_ext.models import LlamaConfig, LlamaForCausalLM
    config = LlamaConfig(vocab_size=1000, hidden_size=256, num_heads=8, num_kv_heads=2,
                         intermediate_size=688, num_layers=4, max_position=512)
    model = LlamaForCausalLM(config)                 # every piece fused
    twin = LlamaForCausalLM(config, fused=())        # pure torch, same parameters
    twin.load_state_dict(model.state_dict())
    logits, loss = model(input_ids, labels=input_ids)

``fused`` names the pieces that run this package's ops (any subset of ``PIECES``):

- ``"embedding"``: ``teachcompute_ext.nn.Embedding`` (``torch.nn.Embedding`` otherwise);
- ``"rms_norm"``: ``teachcompute_ext.nn.RMSNorm``; the residual stream runs
  ``add_rms_norm`` (``h = x + residual; out = rms_norm(h)`` in one pass) instead of
  an add then ``torch.nn.RMSNorm``;
- ``"rotary"``: ``rotary_embedding`` instead of transformers' formula
  ``q * cat(cos, cos) + rotate_half(q) * cat(sin, sin)``;
- ``"mlp"``: ``GatedMLP``'s ``swiglu`` instead of ``F.silu(g) * u``;
- ``"loss"``: ``log_softmax`` then ``F.nll_loss`` instead of ``F.cross_entropy``.
  (torch's cross_entropy is the same two steps; ours differs by the fused
  log_softmax forward and backward.)

The parameter names, and so the state_dict keys, are those of transformers'
LlamaForCausalLM (``model.embed_tokens``, ``model.layers.N.self_attn.q_proj``,
``...input_layernorm``, ``...mlp.gate_proj``, ``model.norm``, ``lm_head``): every
``fused`` set loads every other one's state_dict, and a transformers Llama of the
same shape loads too (without bias, with ``hidden_act="silu"``).

Layout: the activations are ``[batch, seq, hidden]``. A projection's output is
viewed ``[batch, seq, heads, head_dim]`` and transposed to the ``[batch, heads,
seq, head_dim]`` view that ``F.scaled_dot_product_attention`` takes: both are
views of the same memory, and rotary is applied to the transposed view, which
the op reads in place (no copy before attention).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import nn as _nn
from ..ops.llama import rotary_embedding
from ..ops.reduce import log_softmax

PIECES = ("embedding", "rms_norm", "rotary", "mlp", "loss")
ALL = frozenset(PIECES)
IGNORE_INDEX = -100  # labels equal to it do not count in the loss (torch's and transformers' default)


@dataclass
class LlamaConfig:
    """The shape of the model. ``num_kv_heads`` below ``num_heads`` is grouped-query
    attention (``num_heads`` must be a multiple of it); None means ``num_heads``."""

    vocab_size: int = 32000
    hidden_size: int = 512
    num_heads: int = 8
    num_kv_heads: int | None = None
    intermediate_size: int = 1376
    num_layers: int = 4
    max_position: int = 2048
    rope_theta: float = 10000.0
    rms_eps: float = 1e-6
    tie_embeddings: bool = False

    def __post_init__(self):
        if self.num_kv_heads is None:
            self.num_kv_heads = self.num_heads
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"LlamaConfig: hidden_size={self.hidden_size} is not a multiple of num_heads={self.num_heads}"
            )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"LlamaConfig: num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"LlamaConfig: head_dim={self.head_dim} must be even (rotary pairs channels)")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


def _fused_set(fused) -> frozenset:
    names = frozenset((fused,) if isinstance(fused, str) else fused)
    unknown = names - ALL
    if unknown:
        raise ValueError(
            f"LlamaForCausalLM: unknown fused piece(s) {sorted(unknown)} (expected a subset of {list(PIECES)})"
        )
    return names


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``[x1, x2] -> [-x2, x1]`` over the two halves of the last dim (transformers' convention)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class _TorchMLP(_nn.GatedMLP):
    """GatedMLP's parameters, with the gate in plain torch (the twin's)."""

    def gate(self, g, u):
        if self.activation == "silu":
            return F.silu(g) * u
        return F.gelu(g, approximate="tanh" if self.activation == "gelu_tanh" else "none") * u


def _add_norm(norm, fused, x, residual):
    """(norm(x + residual), x + residual); the first block has no residual yet: (norm(x), x)."""
    if residual is None:
        return norm(x), x
    if fused:
        return norm(x, residual)
    h = x + residual
    return norm(h), h


class LlamaAttention(torch.nn.Module):
    def __init__(self, config: LlamaConfig, fused: frozenset, device=None, dtype=None):
        super().__init__()
        kw = {"bias": False, "device": device, "dtype": dtype}
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_heads, config.num_kv_heads, config.head_dim
        self.fused_rotary = "rotary" in fused
        self.q_proj = torch.nn.Linear(config.hidden_size, config.num_heads * config.head_dim, **kw)
        self.k_proj = torch.nn.Linear(config.hidden_size, config.num_kv_heads * config.head_dim, **kw)
        self.v_proj = torch.nn.Linear(config.hidden_size, config.num_kv_heads * config.head_dim, **kw)
        self.o_proj = torch.nn.Linear(config.num_heads * config.head_dim, config.hidden_size, **kw)

    def _heads(self, proj, x, n):
        # [b, s, n*d] -> [b, s, n, d] -> the [b, n, s, d] view: no copy
        return proj(x).unflatten(-1, (n, self.head_dim)).transpose(1, 2)

    def _rotate(self, t, cos, sin):
        if self.fused_rotary:
            return rotary_embedding(t, cos, sin)
        return t * cos + rotate_half(t) * sin  # cos, sin: the full-width tables (LlamaModel.forward)

    def forward(self, x, cos, sin):
        q = self._rotate(self._heads(self.q_proj, x, self.num_heads), cos, sin)
        k = self._rotate(self._heads(self.k_proj, x, self.num_kv_heads), cos, sin)
        v = self._heads(self.v_proj, x, self.num_kv_heads)
        groups = self.num_heads // self.num_kv_heads
        if groups > 1:
            # each kv head serves `groups` consecutive query heads (transformers' repeat_kv);
            # spelled out rather than enable_gqa so every exporter sees plain ops
            k = k.repeat_interleave(groups, dim=1)
            v = v.repeat_interleave(groups, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(out.transpose(1, 2).flatten(-2))


class LlamaDecoderLayer(torch.nn.Module):
    def __init__(self, config: LlamaConfig, fused: frozenset, device=None, dtype=None):
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        norm = _nn.RMSNorm if "rms_norm" in fused else torch.nn.RMSNorm
        mlp = _nn.GatedMLP if "mlp" in fused else _TorchMLP
        self.fused_norm = "rms_norm" in fused
        self.self_attn = LlamaAttention(config, fused, **fk)
        self.mlp = mlp(config.hidden_size, config.intermediate_size, **fk)
        self.input_layernorm = norm(config.hidden_size, eps=config.rms_eps, **fk)
        self.post_attention_layernorm = norm(config.hidden_size, eps=config.rms_eps, **fk)

    def forward(self, x, residual, cos, sin):
        """x: the previous block's output (its MLP's), not yet added to the residual
        stream; returns this block's (mlp output, residual stream) the same way, so
        that each add lands in the norm that follows it."""
        h, residual = _add_norm(self.input_layernorm, self.fused_norm, x, residual)
        h, residual = _add_norm(self.post_attention_layernorm, self.fused_norm, self.self_attn(h, cos, sin), residual)
        return self.mlp(h), residual


class LlamaModel(torch.nn.Module):
    """The decoder stack: embedding, the blocks, the final norm; returns the hidden states."""

    def __init__(self, config: LlamaConfig, fused=ALL, device=None, dtype=None):
        super().__init__()
        fused = _fused_set(fused)
        fk = {"device": device, "dtype": dtype}
        self.config = config
        self.fused = fused
        emb = _nn.Embedding if "embedding" in fused else torch.nn.Embedding
        norm = _nn.RMSNorm if "rms_norm" in fused else torch.nn.RMSNorm
        self.embed_tokens = emb(config.vocab_size, config.hidden_size, **fk)
        self.layers = torch.nn.ModuleList(LlamaDecoderLayer(config, fused, **fk) for _ in range(config.num_layers))
        self.norm = norm(config.hidden_size, eps=config.rms_eps, **fk)
        self.rotary_emb = _nn.RotaryEmbedding(config.head_dim, config.max_position, config.rope_theta, **fk)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        x = self.embed_tokens(input_ids)
        cos, sin = self.rotary_emb.cos_sin(position_ids, x.dtype, input_ids.shape[1])
        if position_ids is not None and position_ids.dim() > 1:
            cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # [b, s, d/2] -> [b, 1, s, d/2], over the heads
        if "rotary" not in self.fused:
            # transformers' formula takes the tables repeated over both halves; built once
            # per forward for every layer, as transformers does
            cos, sin = torch.cat((cos, cos), dim=-1), torch.cat((sin, sin), dim=-1)
        residual = None
        for layer in self.layers:
            x, residual = layer(x, residual, cos, sin)
        h, _ = _add_norm(self.norm, "rms_norm" in self.fused, x, residual)
        return h


class LlamaForCausalLM(torch.nn.Module):
    """LlamaModel and a linear head (tied to the embedding with ``tie_embeddings``).

    ``forward(input_ids [batch, seq], labels=None, position_ids=None)`` returns the
    logits ``[batch, seq, vocab]``, or ``(logits, loss)`` when labels are given: the
    mean cross entropy of each position's logits against the next position's label
    (``labels`` is usually ``input_ids``; ``IGNORE_INDEX`` labels do not count).
    Initialization is each torch module's own (``reset_parameters``).
    """

    def __init__(self, config: LlamaConfig, fused=ALL, device=None, dtype=None):
        super().__init__()
        self.config = config
        self.fused = _fused_set(fused)
        self.model = LlamaModel(config, self.fused, device=device, dtype=dtype)
        self.lm_head = torch.nn.Linear(config.hidden_size, config.vocab_size, bias=False, device=device, dtype=dtype)
        if config.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # Shifting the labels left (padded with IGNORE_INDEX) rather than the logits right
        # keeps the logits a contiguous view: no copy of the largest activation.
        target = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX).flatten()
        flat = logits.flatten(0, -2)
        if "loss" in self.fused:
            return F.nll_loss(log_softmax(flat, -1), target, ignore_index=IGNORE_INDEX)
        return F.cross_entropy(flat, target, ignore_index=IGNORE_INDEX)

    def forward(
        self, input_ids: torch.Tensor, labels: torch.Tensor | None = None, position_ids: torch.Tensor | None = None
    ):
        logits = self.lm_head(self.model(input_ids, position_ids))
        if labels is None:
            return logits
        return logits, self.loss(logits, labels)

    def extra_repr(self) -> str:
        return f"fused={sorted(self.fused)}"
