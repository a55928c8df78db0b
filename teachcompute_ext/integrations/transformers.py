"""Runs a transformers Llama model on this package's ops, in place:

    from teachcompute_ext.integrations.transformers import patch_llama
    model = patch_llama(transformers.LlamaForCausalLM(config))

- every ``LlamaRMSNorm`` becomes ``teachcompute_ext.nn.RMSNorm`` (rms_norm);
- every ``LlamaMLP`` whose activation is silu, gelu or gelu_pytorch_tanh becomes
  ``teachcompute_ext.nn.GatedMLP`` (swiglu / geglu), holding the same three Linear modules;
- every ``LlamaAttention`` applies rotary embedding with ``rotary_embedding``.

The parameters stay the same objects under the same names, so the state_dict keys,
an optimizer built before the patch and ``from_pretrained`` weights are unaffected.
What changes in the numbers: transformers' RMSNorm computes in float32 and rounds
twice for half types (normalized, then times the weight) where ``rms_norm`` rounds
once, and it rounds float64 inputs to float32 where ``rms_norm`` stays in float64.
The residual adds stay where transformers' decoder layer does them (its forward is
kept), so ``add_rms_norm`` is not used here; ``teachcompute_ext.models`` fuses them.

How the rotary is swapped: ``LlamaAttention.forward`` calls the module-level function
``apply_rotary_pos_emb`` of ``transformers.models.llama.modeling_llama``. Replacing that
global would change every Llama model of the process, patched or not. Instead each
patched attention module gets a subclass of ``LlamaAttention`` whose ``forward`` is
transformers' own code object, run with a copy of its module's globals where that one
name is ours (the decorators' wrappers around it are rebuilt around the new function).
The scope is the patched model's attention modules only; the forward's code is
transformers' code, whatever the installed version's body is.
"""

import functools
import types

import torch

from ..nn.llama import GatedMLP, RMSNorm
from ..ops.llama import rotary_embedding

# transformers' hidden_act names -> GatedMLP's activation names (the same functions)
_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh"}


def apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1):
    """transformers' ``apply_rotary_pos_emb`` (same arguments) on rotary_embedding."""
    # transformers' cos/sin are [batch, seq, head_dim] made of two equal halves
    # (cat(freqs, freqs)); the op takes one half, broadcast over the heads' dim.
    half = cos.shape[-1] // 2
    cos = cos[..., :half].unsqueeze(unsqueeze_dim)
    sin = sin[..., :half].unsqueeze(unsqueeze_dim)
    return rotary_embedding(q, cos, sin), rotary_embedding(k, cos, sin)


def _cell_holds(cell, obj):
    try:
        return cell.cell_contents is obj
    except ValueError:  # an empty cell
        return False


def _with_global(fn, name, value):
    """A copy of ``fn`` whose global ``name`` is ``value``, the wrappers that
    ``functools.wraps`` chained around it (``__wrapped__``) rebuilt around the copy."""
    inner = getattr(fn, "__wrapped__", None)
    if inner is None:
        scope = dict(fn.__globals__)
        scope[name] = value
        new = types.FunctionType(fn.__code__, scope, fn.__name__, fn.__defaults__, fn.__closure__)
        new.__kwdefaults__ = fn.__kwdefaults__
        return functools.update_wrapper(new, fn, updated=())
    new_inner = _with_global(inner, name, value)
    closure = fn.__closure__ or ()
    if not any(_cell_holds(c, inner) for c in closure):
        raise NotImplementedError(
            f"teachcompute_ext.integrations.transformers: cannot rebuild the wrapper "
            f"{fn.__qualname__} around {inner.__qualname__} (the wrapped function is not "
            "in its closure)"
        )
    cells = tuple(types.CellType(new_inner) if _cell_holds(c, inner) else c for c in closure)
    new = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, cells)
    new.__kwdefaults__ = fn.__kwdefaults__
    new = functools.update_wrapper(new, fn, updated=())
    new.__wrapped__ = new_inner
    return new


@functools.cache
def _patched_attention_class(cls):
    forward = _with_global(cls.forward, "apply_rotary_pos_emb", apply_rotary_pos_emb)
    patched = type(
        cls.__name__, (cls,), {"forward": forward, "__module__": __name__, "__qualname__": f"_Patched{cls.__name__}"}
    )
    # pickle finds a class by module and qualified name
    globals()[patched.__qualname__] = patched
    return patched


def _set(model, name, module):
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


def patch_llama(model: torch.nn.Module) -> torch.nn.Module:
    """Swaps the RMSNorm, MLP and rotary application of a transformers Llama model
    (``LlamaForCausalLM``, ``LlamaModel`` or any module holding their layers) for
    this package's ops, in place; returns the model. See the module's docstring."""
    from transformers.models.llama import modeling_llama as ml

    for name, module in list(model.named_modules()):
        if isinstance(module, ml.LlamaRMSNorm):
            norm = RMSNorm(module.weight.shape[0], eps=module.variance_epsilon, device="meta")
            norm.weight = module.weight
            _set(model, name, norm)
        elif isinstance(module, ml.LlamaMLP):
            act = _ACTIVATIONS.get(getattr(module.config, "hidden_act", None))
            if act is None:
                continue  # an activation the gate ops do not have: transformers' MLP stays
            mlp = GatedMLP(module.hidden_size, module.intermediate_size, act, device="meta")
            mlp.gate_proj, mlp.up_proj, mlp.down_proj = module.gate_proj, module.up_proj, module.down_proj
            _set(model, name, mlp)
        elif type(module) is ml.LlamaAttention:
            module.__class__ = _patched_attention_class(ml.LlamaAttention)
    return model
