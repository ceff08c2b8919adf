"""Attention sinks: ``keep_first_keys`` never drops the first k visible keys of a sequence.

Pretrained decoders park much of their attention on the first token; a column drop of its key moves
that mass onto the other keys at once. The protection is a property of the keep masks, so it is
tested on the masks (which keys, under which padding) and through the dropped attention itself: with
every other key dropped, each query reads exactly the value of the protected key.
"""

from __future__ import annotations

import pytest
import torch

from hiddenkey import ops
from hiddenkey.attention import AttentionPlan, dropped_attention
from hiddenkey.config import ConfigError, DropoutConfig, DropSpec

from .conftest import build_model

LENGTH, PAD = 6, 2  # sample 1 is left-padded by PAD positions


def _causal_mask(dtype=torch.float32, left_pad=(0, PAD)):
    """Additive causal mask ``(B, 1, L, L)`` with the given left padding per sample."""
    future = torch.ones(LENGTH, LENGTH, dtype=torch.bool).triu(1)
    blocked = future.expand(len(left_pad), 1, LENGTH, LENGTH).clone()
    for b, pad in enumerate(left_pad):
        blocked[b, :, :, :pad] = True
    return torch.zeros(blocked.shape, dtype=dtype).masked_fill(blocked, torch.finfo(dtype).min)


def test_first_visible_keys_follow_the_padding():
    mask = _causal_mask()
    got = ops.first_visible_keys(mask, LENGTH, 2)
    assert got.shape == (2, 1, 1, LENGTH)
    assert got[0, 0, 0].tolist() == [True, True, False, False, False, False]
    assert got[1, 0, 0].tolist() == [False, False, True, True, False, False]  # the first real tokens
    as_bool = ops.first_visible_keys(mask == 0, LENGTH, 2)  # boolean masks: True = visible
    assert torch.equal(as_bool, got)
    no_mask = ops.first_visible_keys(None, LENGTH, 1)
    assert no_mask.flatten().tolist() == [True] + [False] * (LENGTH - 1)
    right_padded = torch.zeros(1, 1, LENGTH, LENGTH).masked_fill(
        torch.ones(LENGTH, LENGTH, dtype=torch.bool).triu(1) | (torch.arange(LENGTH) >= 4), torch.finfo(torch.float32).min
    )
    assert ops.first_visible_keys(right_padded, LENGTH, 1).flatten().tolist() == [True] + [False] * (LENGTH - 1)


def test_protection_overrides_drops_and_never_shifts_the_random_stream():
    torch.manual_seed(3)
    keep = ops.attention_keep_mask("column", 2, 4, 1, LENGTH, 0.9)
    after_plain = torch.rand(4)
    torch.manual_seed(3)
    protected = ops.protect_first_keys(ops.attention_keep_mask("column", 2, 4, 1, LENGTH, 0.9), _causal_mask(), 1)
    after_protected = torch.rand(4)
    assert torch.equal(after_plain, after_protected)
    assert protected[0, :, :, 0].all() and protected[1, :, :, PAD].all()
    others = torch.ones_like(keep)
    others[0, :, :, 0] = False
    others[1, :, :, PAD] = False
    assert torch.equal(protected[others], keep[others])  # every other key keeps its own draw
    assert ops.protect_first_keys(keep, _causal_mask(), 0) is keep


CASES = [("logits", "column"), ("logits", "element"), ("logits", "span"), ("weights", "column"), ("weights", "element")]


@pytest.mark.parametrize("position,pattern", CASES)
def test_with_every_other_key_dropped_each_query_reads_the_protected_key(position, pattern):
    """The identity that defines the option: all keys but the protected one dropped, every visible query
    row puts its whole weight on the first real token (DropKey renormalises onto it; DropAttention's
    normaliser is the protected key's own weight)."""
    module = build_model("llama").model.layers[0].self_attn.train()
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, LENGTH, 8, generator=g)
    k = torch.randn(2, 2, LENGTH, 8, generator=g)  # GQA: 2 key/value heads for 4 query heads
    v = torch.randn(2, 2, LENGTH, 8, generator=g)
    spec = DropSpec(position, 0.999999, pattern, span_ratio=0.2, keep_first_keys=1)
    plan = AttentionPlan(
        logits=spec if position == "logits" else None,
        weights=spec if position == "weights" else None,
        state=None,
        dropkey_bias=1e4,
        disable_model_dropout=True,
    )
    torch.manual_seed(0)
    out, _ = dropped_attention(module, plan, q, k, v, _causal_mask(), 0.0, module.scaling)
    values = v.repeat_interleave(2, dim=1).transpose(1, 2)  # (B, L, H, D)
    torch.testing.assert_close(out[0], values[0, :1].expand(LENGTH, -1, -1))
    torch.testing.assert_close(out[1, PAD:], values[1, PAD : PAD + 1].expand(LENGTH - PAD, -1, -1))

    unprotected = DropSpec(position, 0.999999, pattern, span_ratio=0.2)
    plan.logits, plan.weights = (unprotected, None) if position == "logits" else (None, unprotected)
    torch.manual_seed(0)
    plain, _ = dropped_attention(module, plan, q, k, v, _causal_mask(), 0.0, module.scaling)
    assert not torch.allclose(plain[0, 1:], out[0, 1:])  # without protection key 0 is dropped like the rest


def test_the_option_reaches_attention_drops_only():
    config = DropoutConfig.preset("hiddenkey", keep_first_keys=2)
    assert config.spec("logits").keep_first_keys == 2
    assert config.spec("weights").keep_first_keys == 2
    assert config.spec("hidden").keep_first_keys == 0
    assert DropoutConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="keep_first_keys must be an integer >= 0"):
        DropoutConfig(keep_first_keys=-1)


def test_training_a_decoder_with_protected_keys_is_finite_and_eval_is_untouched():
    import hiddenkey

    model = build_model("llama", num_labels=2)
    ids = torch.randint(3, 96, (2, LENGTH))
    attention = torch.ones_like(ids)
    attention[1, :PAD] = 0
    model.eval()
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=attention).logits
    hiddenkey.attach(model, DropoutConfig.preset("hiddenkey-", rate=0.5, keep_first_keys=1, layers="all"))
    model.train()
    torch.manual_seed(1)
    out = model(input_ids=ids, attention_mask=attention, labels=torch.tensor([0, 1]))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids, attention_mask=attention).logits, before, rtol=0, atol=0)


@pytest.mark.parametrize("pattern", ["column", "element"])
def test_dropattention_through_the_attention_function_has_finite_gradients_when_the_sink_is_dropped(pattern, monkeypatch):
    """The real failure behind two diverged study runs: a query that attends almost only to one key,
    and that key dropped. Both DropAttention paths (SDPA with the mass channel, explicit weights)."""
    module = build_model("llama").model.layers[0].self_attn.train()
    q = torch.zeros(1, 4, 1, 8)
    q[..., 0] = 9.5
    k = torch.zeros(1, 2, 4, 8)
    k[0, :, 0, 0] = 9.5  # key 0's logit is ~90 above the others: its weight is 1 - e^-90
    v = torch.randn(1, 2, 4, 8)
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    keep = torch.ones(1, 4, 1, 4, dtype=torch.bool)
    keep[..., 0] = False
    monkeypatch.setattr(ops, "attention_keep_mask", lambda *args, **kwargs: keep)
    spec = DropSpec("weights", 0.5, pattern)
    plan = AttentionPlan(logits=None, weights=spec, state=None, dropkey_bias=1e4, disable_model_dropout=True)
    out, _ = dropped_attention(module, plan, q, k, v, None, 0.0, 1.0)
    assert torch.isfinite(out).all()
    out.sum().backward()
    for x in (q, k, v):
        assert torch.isfinite(x.grad).all()
