"""Family specifics: Gemma2's logit softcapping in the dropped path, OPT's HiddenCut site, Falcon's
decoder-only detection (its attention does not route through the registry)."""

from __future__ import annotations

import pytest
import torch
import transformers

import hiddenkey
from hiddenkey import ops
from hiddenkey.attach import base_model, find_layers
from hiddenkey.attention import AttentionPlan, dropped_attention
from hiddenkey.config import DropSpec

from .conftest import batch, build_model, lora


def _gemma2_attention(softcap=2.0):
    model = build_model("gemma2")
    module = model.model.layers[1].self_attn
    assert module.attn_logit_softcapping == softcap
    return module.train()


def _qkv(seed=0, batch_size=2, heads=4, kv_heads=2, length=6, head_dim=8):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch_size, heads, length, head_dim, generator=g) * 3  # large logits: the softcap bends them
    k = torch.randn(batch_size, kv_heads, length, head_dim, generator=g) * 3
    v = torch.randn(batch_size, kv_heads, length, head_dim, generator=g)
    return q, k, v


def _causal_additive_mask(batch_size, length, dtype=torch.float32):
    future = torch.ones(length, length, dtype=torch.bool).triu(1)
    mask = torch.zeros(batch_size, 1, length, length, dtype=dtype)
    return mask.masked_fill(future, torch.finfo(dtype).min)


def test_gemma2_dropkey_bias_goes_after_the_softcap():
    """The dropped path equals Gemma2's own eager attention given the DropKey bias inside its mask: the
    model adds the mask after ``softcap * tanh(logits / softcap)``, which is where DropKey's bias belongs."""
    from transformers.models.gemma2.modeling_gemma2 import eager_attention_forward

    module = _gemma2_attention()
    q, k, v = _qkv()
    spec = DropSpec("logits", 0.4, "column")
    plan = AttentionPlan(logits=spec, weights=None, state=None, dropkey_bias=1e4, disable_model_dropout=True)
    mask = _causal_additive_mask(2, 6)

    torch.manual_seed(5)
    got, _ = dropped_attention(module, plan, q, k, v, mask, 0.0, module.scaling, softcap=2.0)
    torch.manual_seed(5)
    keep = ops.attention_keep_mask("column", 2, 4, 6, 6, 0.4)
    assert not keep.all()
    bias = ops.dropkey_bias(keep, torch.float32, 1e4)
    want, _ = eager_attention_forward(module, q, k, v, mask + bias, scaling=module.scaling, softcap=2.0)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    uncapped, _ = eager_attention_forward(module, q, k, v, mask + bias, scaling=module.scaling, softcap=None)
    assert not torch.allclose(got, uncapped, atol=1e-3)


@pytest.mark.parametrize("pattern", ["element", "column"])
def test_gemma2_dropattention_with_softcap_matches_the_reference(pattern):
    module = _gemma2_attention()
    q, k, v = _qkv(seed=1)
    spec = DropSpec("weights", 0.3, pattern)
    plan = AttentionPlan(logits=None, weights=spec, state=None, dropkey_bias=1e4, disable_model_dropout=True)
    mask = _causal_additive_mask(2, 6)
    torch.manual_seed(9)
    got, _ = dropped_attention(module, plan, q, k, v, mask, 0.0, module.scaling, softcap=2.0)

    torch.manual_seed(9)
    keep = ops.attention_keep_mask(pattern, 2, 4, 6, 6, 0.3)
    kk, vv = (x.repeat_interleave(2, dim=1) for x in (k, v))
    logits = 2.0 * torch.tanh(q @ kk.transpose(-1, -2) * module.scaling / 2.0) + mask
    want = (ops.dropattention_softmax(logits, keep) @ vv).transpose(1, 2)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_gemma2_trains_with_hiddenkey():
    model = lora(build_model("gemma2"), "gemma2")
    hiddenkey.attach(model, hiddenkey.DropoutConfig.preset("hiddenkey", rate=0.3))
    assert base_model(model).config._attn_implementation == "hiddenkey_eager"
    model.train()
    loss, _, parts = hiddenkey.hiddenkey_loss(model, batch(labels="lm"))
    loss.backward()
    assert torch.isfinite(loss) and parts["consistency"] > 0
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad)


def _opt_fc2_outputs(model, inputs):
    """The FFN outputs of OPT's latter layers after hiddenkey's drop, viewed as (B, L, D)."""
    captured = []
    layers = find_layers(base_model(model))
    handles = [
        layer.fc2.register_forward_hook(lambda m, a, out: captured.append(out.detach().clone())) for layer in layers
    ]
    model(**inputs)
    for handle in handles:
        handle.remove()
    b, length = inputs["input_ids"].shape
    return [out.reshape(b, length, -1) for out in captured]


@pytest.mark.parametrize("pattern", ["element", "column", "span"])
def test_opt_hiddencut_sits_on_fc2_and_keeps_its_pattern(pattern):
    model = lora(build_model("opt", dropout=0.0), "opt")
    hiddenkey.attach(model, hiddenkey.DropoutConfig.preset("hiddencut", rate=0.5, pattern=pattern, layers="all"))
    model.train()
    torch.manual_seed(0)
    inputs = batch(batch_size=3, length=10, pad=False, labels=None)
    for out in _opt_fc2_outputs(model, inputs):
        zero = out == 0
        assert 0.3 < zero.float().mean() < 0.7
        if pattern == "column":  # whole hidden dimensions, the same for every token of a sample
            assert torch.equal(zero, zero[:, :1, :].expand_as(zero))
        elif pattern == "span":  # whole tokens
            assert torch.equal(zero, zero[:, :, :1].expand_as(zero))
    model.eval()
    assert all((out != 0).float().mean() > 0.99 for out in _opt_fc2_outputs(model, inputs))


def test_opt_functional_dropout_is_switched_off_and_restored():
    model = lora(build_model("opt", dropout=0.1), "opt")
    layers = find_layers(base_model(model))
    hiddenkey.attach(model, hiddenkey.DropoutConfig.preset("baseline"))
    assert all(layer.dropout == 0.0 for layer in layers)
    hiddenkey.detach(model)
    assert all(layer.dropout == 0.1 for layer in layers)


def _falcon():
    cfg = transformers.FalconConfig(
        vocab_size=96, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, max_position_embeddings=64,
        hidden_dropout=0.0, attention_dropout=0.0,
    )
    torch.manual_seed(0)
    return transformers.FalconForCausalLM(cfg)


def test_falcon_auto_layers_are_the_latter_half():
    """Falcon computes attention itself (no registry routing) but is a decoder: drops go to layers 2-3."""
    model = _falcon()
    hiddenkey.attach(model, hiddenkey.DropoutConfig.preset("hiddencut", rate=0.2))
    state = hiddenkey.get_state(model)
    assert state.decoder_only and state.layer_indices == [2, 3]
    hiddenkey.detach(model)
    with pytest.raises(hiddenkey.AttachError, match="does not route through"):
        hiddenkey.attach(model, hiddenkey.DropoutConfig.preset("dropkey"))


def test_encoders_with_bidirectional_attention_drop_everywhere():
    for family in ("distilbert", "electra", "modernbert"):
        model = build_model(family)
        hiddenkey.attach(model, hiddenkey.DropoutConfig.preset("hiddenkey-"))
        assert not hiddenkey.get_state(model).decoder_only and hiddenkey.get_state(model).layer_indices == [0, 1]
