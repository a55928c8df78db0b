"""teachcompute_ext.integrations.transformers.patch_llama on a transformers Llama built
from a config (random weights, nothing downloaded): the patched model gives the
unpatched one's logits and gradients, runs our ops, keeps its state_dict; and
teachcompute_ext.models loads a transformers Llama's state_dict and gives its logits."""

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")

from teachcompute_ext.integrations.transformers import patch_llama  # noqa: E402
from teachcompute_ext.models import ALL, LlamaConfig, LlamaForCausalLM  # noqa: E402

from test_llama_model import OpsCalled  # noqa: E402


def tiny_llama(dtype=torch.float32, hidden_act="silu", seed=0):
    config = transformers.LlamaConfig(
        vocab_size=100,
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        num_hidden_layers=2,
        max_position_embeddings=64,
        hidden_act=hidden_act,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).to(dtype)
    with torch.no_grad():  # norm weights away from their initial ones, so that a lost weight shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


def inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 100, (2, 11), generator=g)
    position_ids = torch.stack([torch.arange(11), torch.arange(11) + 4])  # per-sample positions
    return ids, position_ids


def logits_and_grads(model, ids, position_ids):
    model.zero_grad(set_to_none=True)
    with OpsCalled() as called:
        out = model(input_ids=ids, labels=ids, position_ids=position_ids)
        (out.loss + out.logits.square().mean()).backward()
    return out.logits, {n: p.grad for n, p in model.named_parameters()}, called.names


# transformers' LlamaRMSNorm computes in float32 whatever the model's dtype, where
# rms_norm keeps float64 in float64: the unpatched float64 model is a float32
# computation, so float32's tolerances are the ones it can be held to.
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("hidden_act", ["silu", "gelu_pytorch_tanh"])
def test_patched_model_equals_the_unpatched_one(dtype, hidden_act):
    model = tiny_llama(dtype, hidden_act)
    patched = patch_llama(copy.deepcopy(model))
    assert list(patched.state_dict()) == list(model.state_dict())
    ids, position_ids = inputs()
    want_logits, want_grads, plain_ops = logits_and_grads(model, ids, position_ids)
    got_logits, got_grads, ops = logits_and_grads(patched, ids, position_ids)
    assert plain_ops == set(), plain_ops  # the patch of a copy leaves the original alone
    gate = "swiglu" if hidden_act == "silu" else "geglu"
    assert {"rms_norm", "rotary_embedding", gate} <= ops, ops
    tol = {"rtol": 1.3e-6, "atol": 1e-5}  # float32's
    torch.testing.assert_close(got_logits, want_logits, **tol)
    for name, g in want_grads.items():
        torch.testing.assert_close(got_grads[name], g, **tol, msg=lambda m: f"{name}: {m}")


def test_patched_model_runs_under_autocast_as_the_unpatched_one():
    # transformers' rotary tables stay float32 while autocast's Linears give
    # bfloat16 q and k: rotary_embedding promotes as q * cos does.
    ref = tiny_llama()
    model = patch_llama(copy.deepcopy(ref))
    ids, position_ids = inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, want = (
            model(input_ids=ids, position_ids=position_ids).logits,
            ref(input_ids=ids, position_ids=position_ids).logits,
        )
    assert got.dtype == want.dtype
    torch.testing.assert_close(got.float(), want.float(), rtol=5e-2, atol=5e-2)


def test_patch_is_in_place_and_keeps_the_parameters():
    model = tiny_llama(hidden_act="relu")  # an activation without a gate op: that MLP stays
    params = dict(model.named_parameters())
    assert patch_llama(model) is model
    assert dict(model.named_parameters()) == params  # same objects, same names
    layer = model.model.layers[0]
    assert type(layer.input_layernorm).__name__ == "RMSNorm" and type(model.model.norm).__name__ == "RMSNorm"
    assert type(layer.mlp).__name__ == "LlamaMLP"
    assert type(layer.self_attn).__mro__[1] is transformers.models.llama.modeling_llama.LlamaAttention
    patch_llama(model)  # again: nothing left to swap
    ids, position_ids = inputs()
    with OpsCalled() as called:
        model(input_ids=ids)
    assert {"rms_norm", "rotary_embedding"} <= called.names


@pytest.mark.parametrize("fused", [ALL, ()], ids=["fused", "twin"])
def test_models_load_a_transformers_llama(fused):
    hf = tiny_llama()
    c = hf.config
    config = LlamaConfig(
        vocab_size=c.vocab_size,
        hidden_size=c.hidden_size,
        num_heads=c.num_attention_heads,
        num_kv_heads=c.num_key_value_heads,
        intermediate_size=c.intermediate_size,
        num_layers=c.num_hidden_layers,
        max_position=c.max_position_embeddings,
        rope_theta=c.rope_parameters["rope_theta"],
        rms_eps=c.rms_norm_eps,
    )
    ours = LlamaForCausalLM(config, fused=fused)
    ours.load_state_dict(hf.state_dict())
    ids, position_ids = inputs()
    want = hf(input_ids=ids, labels=ids, position_ids=position_ids)
    logits, loss = ours(ids, ids, position_ids)
    torch.testing.assert_close(logits, want.logits)
    torch.testing.assert_close(loss, want.loss)
