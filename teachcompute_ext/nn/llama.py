"""The pieces of a Llama decoder block as modules: RMSNorm (a drop-in for
torch.nn.RMSNorm that also fuses the residual add), GatedMLP (the Llama MLP's
layout and state_dict keys, its gate fused by swiglu/geglu) and RotaryEmbedding
(the cos/sin tables and their application by rotary_embedding)."""

import torch
import torch.nn.functional as F

from ..ops.llama import add_rms_norm, geglu, rms_norm, rotary_embedding, swiglu


class RMSNorm(torch.nn.RMSNorm):
    """torch.nn.RMSNorm whose forward is teachcompute_ext.rms_norm, or add_rms_norm
    when a residual is given.

    Subclassing torch's module keeps its constructor, ``weight``, initialization,
    ``extra_repr`` and state_dict, so either module loads the other's state_dict.
    ``eps=None`` is torch's default: the epsilon of the type torch's kernel
    computes in (float32 for float16 and bfloat16 inputs, as ``F.rms_norm``;
    the epsilon of bfloat16 itself, 7.8e-3, moved small rows by up to 88%).

    ``forward(x)`` returns the normalized x. ``forward(x, residual)`` is the
    pre-norm residual stream of a Llama block: ``h = x + residual`` and returns
    ``(rms_norm(h), h)`` from one pass over the rows.

    The ops normalize over the last dim only; a ``normalized_shape`` of several
    dims runs ``F.rms_norm`` (and a plain add for the residual) instead.
    """

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        eps = torch.finfo(x.dtype if x.dtype == torch.float64 else torch.float32).eps if self.eps is None else self.eps
        if len(self.normalized_shape) != 1:
            if residual is None:
                return F.rms_norm(x, self.normalized_shape, self.weight, eps)
            h = x + residual
            return F.rms_norm(h, self.normalized_shape, self.weight, eps), h
        if residual is None:
            return rms_norm(x, self.weight, eps)
        return add_rms_norm(x, residual, self.weight, eps)


# activation name -> the `approximate` argument of geglu (None: swiglu)
_GATES = {"silu": None, "gelu": "none", "gelu_tanh": "tanh"}


class GatedMLP(torch.nn.Module):
    """``down_proj(act(gate_proj(x)) * up_proj(x))``, the Llama MLP, with
    ``act(g) * u`` computed by swiglu (silu) or geglu (gelu, gelu_tanh) in one pass.

    Three ``torch.nn.Linear`` named as in transformers' LlamaMLP, so its state_dict
    keys are ``gate_proj.weight``, ``up_proj.weight``, ``down_proj.weight`` (and
    ``.bias`` with ``bias=True``), and a LlamaMLP's state_dict loads as is.
    """

    def __init__(
        self, hidden: int, intermediate: int, activation: str = "silu", bias: bool = False, device=None, dtype=None
    ):
        if activation not in _GATES:
            raise ValueError(
                f"teachcompute_ext.nn.GatedMLP: unknown activation '{activation}' (expected one of {', '.join(_GATES)})"
            )
        super().__init__()
        kw = {"bias": bias, "device": device, "dtype": dtype}
        self.hidden = hidden
        self.intermediate = intermediate
        self.activation = activation
        self.gate_proj = torch.nn.Linear(hidden, intermediate, **kw)
        self.up_proj = torch.nn.Linear(hidden, intermediate, **kw)
        self.down_proj = torch.nn.Linear(intermediate, hidden, **kw)

    def gate(self, g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        approximate = _GATES[self.activation]
        return swiglu(g, u) if approximate is None else geglu(g, u, approximate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.gate(self.gate_proj(x), self.up_proj(x)))

    def extra_repr(self) -> str:
        return f"hidden={self.hidden}, intermediate={self.intermediate}, activation={self.activation}"


class RotaryEmbedding(torch.nn.Module):
    """Rotary position embedding: the cos/sin tables and their application.

    Buffers ``cos`` and ``sin`` ``[max_position, rotary_dim // 2]`` hold the angles
    ``position * base ** (-2i / rotary_dim)``; they are not persistent (not in the
    state_dict, as transformers' ``inv_freq``), and are computed in float32 as
    transformers computes them (so the tables are bitwise its own), or in float64
    when ``dtype=torch.float64``.

    Layout: ``forward(x, position_ids)`` takes ``x [..., seq, head_dim]``, for
    instance ``[batch, heads, seq, head_dim]``. A tensor laid out ``[batch, seq,
    heads, head_dim]`` (a projection's output viewed per head) is passed as its
    ``transpose(1, 2)`` view: the op reads any strides, nothing is copied.
    ``position_ids`` is ``[seq]`` or ``[batch, seq]`` (default ``arange(seq)``).

    ``interleaved=False`` rotates the two halves of the first ``rotary_dim``
    channels (Llama, GPT-NeoX, transformers' ``rotate_half``); ``True`` rotates
    the pairs ``(x[2i], x[2i+1])`` (GPT-J). Channels past ``rotary_dim`` pass
    through.
    """

    def __init__(
        self,
        head_dim: int,
        max_position: int,
        base: float = 10000.0,
        rotary_dim: int | None = None,
        interleaved: bool = False,
        device=None,
        dtype=None,
    ):
        super().__init__()
        rotary_dim = head_dim if rotary_dim is None else rotary_dim
        if rotary_dim <= 0 or rotary_dim % 2 or rotary_dim > head_dim:
            raise ValueError(
                f"teachcompute_ext.nn.RotaryEmbedding: rotary_dim must be even, positive and at most "
                f"head_dim={head_dim}, got {rotary_dim}"
            )
        if max_position <= 0:
            raise ValueError(f"teachcompute_ext.nn.RotaryEmbedding: max_position must be positive, got {max_position}")
        self.head_dim = head_dim
        self.rotary_dim = rotary_dim
        self.max_position = max_position
        self.base = base
        self.interleaved = interleaved
        # Angles lose precision when they grow with the position: float32 at least,
        # whatever dtype the activations have; the cast to x's dtype happens at use.
        table_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        empty = torch.empty(max_position, rotary_dim // 2, device=device, dtype=table_dtype)
        self.register_buffer("cos", empty, persistent=False)
        self.register_buffer("sin", empty.clone(), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Recomputes the tables (after ``to_empty``: they are not in the state_dict)."""
        dt, dev = self.cos.dtype, self.cos.device
        inv_freq = 1.0 / (self.base ** (torch.arange(0, self.rotary_dim, 2, device=dev, dtype=dt) / self.rotary_dim))
        angles = torch.arange(self.max_position, device=dev, dtype=dt)[:, None] * inv_freq
        with torch.no_grad():
            self.cos.copy_(angles.cos())
            self.sin.copy_(angles.sin())

    def cos_sin(
        self, position_ids: torch.Tensor | None = None, dtype: torch.dtype | None = None, seq_len: int | None = None
    ):
        """cos and sin for ``rotary_embedding``: ``[seq_len, rotary_dim // 2]`` (positions
        ``0..seq_len-1``) when ``position_ids`` is None, else ``[*position_ids.shape,
        rotary_dim // 2]``; cast to ``dtype`` (the op wants x's dtype)."""
        if position_ids is None:
            if seq_len is None:
                raise ValueError("teachcompute_ext.nn.RotaryEmbedding.cos_sin: give position_ids or seq_len")
            cos, sin = self.cos[:seq_len], self.sin[:seq_len]
        else:
            # An embedding lookup, not indexing: a negative position is an error
            # (indexing wrapped -1 to max_position - 1, a wrong angle).
            cos, sin = F.embedding(position_ids, self.cos), F.embedding(position_ids, self.sin)
        if dtype is not None:
            cos, sin = cos.to(dtype), sin.to(dtype)
        return cos, sin

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        cos, sin = self.cos_sin(position_ids, x.dtype, x.shape[-2])
        if position_ids is not None and position_ids.dim() > 1:
            # [batch, seq, r] -> [batch, 1, seq, r]: one table per sample, shared by the heads
            cos, sin = cos.unsqueeze(-3), sin.unsqueeze(-3)
        return rotary_embedding(x, cos, sin, self.interleaved)

    def extra_repr(self) -> str:
        return (
            f"head_dim={self.head_dim}, max_position={self.max_position}, base={self.base}, "
            f"rotary_dim={self.rotary_dim}, interleaved={self.interleaved}"
        )
