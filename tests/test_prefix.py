"""The shared prefix: the no-grad pass of the one-branch KL starts at the first dropping layer, and gives
the loss and gradients of two full passes with the same masks."""

import logging

import pytest
import torch
from peft import LoraConfig, get_peft_model

import hiddenkey
from hiddenkey.attach import base_model, find_layers
from hiddenkey.prefix import NO_SHARING, SharedPrefix, shared_prefix

from .conftest import DECODERS, FAMILIES, batch, build_model, lora


def _attached(family, checkpointing=False, **cfg):
    model = lora(build_model(family, dropout=0.0), family, init_lora_weights=False)
    if checkpointing:
        base_model(model).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    hiddenkey.attach(model, hiddenkey.DropoutConfig.preset("hiddenkey", rate=0.3, **cfg))
    return model.train()


class _Calls:
    """Counts forward calls of the attention of layer 0 (a computation inside the first, shared layer)."""

    def __init__(self, model):
        self.count = 0
        layer = find_layers(base_model(model))[0]
        attention = next(getattr(layer, name) for name in ("self_attn", "attn", "self_attention", "attention") if hasattr(layer, name))
        self.handle = attention.register_forward_hook(self._hook)

    def _hook(self, *args):
        self.count += 1


def _step(model, inputs, seed, **cfg):
    config = hiddenkey.DropoutConfig.preset("hiddenkey", rate=0.3, **cfg)
    model.zero_grad()
    calls = _Calls(model)
    torch.manual_seed(seed)
    loss, _, parts = hiddenkey.hiddenkey_loss(model, inputs, config)
    forward_calls = calls.count
    loss.backward()
    calls.handle.remove()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), parts["consistency"], grads, forward_calls


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointing"])
@pytest.mark.parametrize("family", DECODERS)
def test_shared_prefix_gives_the_loss_and_gradients_of_two_full_passes(family, checkpointing):
    model = _attached(family, checkpointing)
    assert isinstance(shared_prefix(model, hiddenkey.get_state(model).config), SharedPrefix)
    inputs = batch(labels="lm", pad=True)
    loss, consistency, grads, calls = _step(model, inputs, seed=7)
    full_loss, full_consistency, full_grads, full_calls = _step(model, inputs, seed=7, share_prefix=False)
    assert (calls, full_calls) == (1, 2)  # the second pass did not compute layer 0
    assert consistency > 0  # the two passes differ
    torch.testing.assert_close(consistency, full_consistency, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(loss, full_loss, rtol=1e-6, atol=1e-9)
    assert grads.keys() == full_grads.keys() and len(grads) >= 8  # LoRA A and B of q and v in every layer
    for name in grads:
        torch.testing.assert_close(grads[name], full_grads[name], rtol=1e-5, atol=1e-8)
    _, other_consistency, _, _ = _step(model, inputs, seed=8)
    assert abs(other_consistency / consistency - 1) > 1e-3  # other masks, another loss: the comparison can fail


def test_a_decoder_classifier_shares_too():
    model = lora(build_model("llama", num_labels=2, dropout=0.0), "llama", init_lora_weights=False)
    hiddenkey.attach(model, hiddenkey.DropoutConfig.preset("hiddenkey", rate=0.3))
    model.train()
    inputs = batch(labels="cls")
    loss, consistency, grads, calls = _step(model, inputs, seed=3)
    full_loss, full_consistency, full_grads, full_calls = _step(model, inputs, seed=3, share_prefix=False)
    assert (calls, full_calls) == (1, 2)
    torch.testing.assert_close(loss, full_loss, rtol=1e-6, atol=1e-9)
    for name in grads:
        torch.testing.assert_close(grads[name], full_grads[name], rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize(
    "family,cfg,lora_dropout,reason",
    [
        ("bert", {}, 0.0, "the drops start at layer 0"),  # an encoder: every layer drops
        ("llama", {"layers": "0,3"}, 0.0, "the drops start at layer 0"),
        ("llama", {"input_rate": 0.1}, 0.0, "input cutoff"),
        ("qwen2", {}, 0.1, "lora_dropout"),
        ("gpt2", {"disable_model_dropout": False}, 0.0, "dropout p=0.1"),
    ],
)
def test_models_that_cannot_share_run_two_full_passes_and_say_why_once(family, cfg, lora_dropout, reason, caplog):
    build = build_model(family, dropout=0.1 if family == "gpt2" else 0.0)
    if lora_dropout:
        config = LoraConfig(r=4, target_modules=FAMILIES[family][1], lora_dropout=lora_dropout, task_type="CAUSAL_LM")
        model = get_peft_model(build, config)
    else:
        model = lora(build, family, init_lora_weights=False)
    hiddenkey.attach(model, hiddenkey.DropoutConfig.preset("hiddenkey", rate=0.3, **cfg))
    model.train()
    inputs = batch(labels="cls" if family == "bert" else "lm")
    with caplog.at_level(logging.INFO, logger="hiddenkey.prefix"):
        assert shared_prefix(model, hiddenkey.get_state(model).config) is NO_SHARING
        *_, calls = _step(model, inputs, seed=0, **cfg)
        _step(model, inputs, seed=1, **cfg)
    assert calls == 2
    said = [r.getMessage() for r in caplog.records if r.name == "hiddenkey.prefix"]
    assert len(said) == 1 and reason in said[0] and "run the whole model" in said[0], said


def test_backprop_both_and_opting_out_share_nothing_silently(caplog):
    model = _attached("llama")
    with caplog.at_level(logging.INFO, logger="hiddenkey.prefix"):
        for cfg in ({"backprop": "both"}, {"share_prefix": False}):
            assert shared_prefix(model, hiddenkey.DropoutConfig.preset("hiddenkey", **cfg)) is NO_SHARING
    assert not [r for r in caplog.records if r.name == "hiddenkey.prefix"]


def test_a_layer_loop_that_cannot_be_entered_midway_falls_back_with_a_warning(caplog):
    model = _attached("mistral")
    inputs = batch(labels="lm")
    want = _step(model, inputs, seed=4, share_prefix=False)
    # Something between layer 1 and layer 2 (the first dropping layer): layer 2 no longer receives
    # layer 1's output object, so the loop cannot be entered at layer 2.
    layer = find_layers(base_model(model))[2]
    handle = layer.register_forward_pre_hook(lambda module, args: (args[0] * 1.0, *args[1:]))
    try:
        with caplog.at_level(logging.INFO, logger="hiddenkey.prefix"):
            got = _step(model, inputs, seed=4, share_prefix=False)  # the same hook in both runs
            shared = _step(model, inputs, seed=4)
            _step(model, inputs, seed=5)
    finally:
        handle.remove()
    assert shared[3] == 2  # fell back to two full passes
    torch.testing.assert_close(shared[0], got[0])
    torch.testing.assert_close(got[0], want[0])
    said = [r for r in caplog.records if r.name == "hiddenkey.prefix"]
    assert len(said) == 1 and said[0].levelno == logging.WARNING and "cannot share layers 0-1" in said[0].getMessage()


def test_the_prefix_layers_get_their_own_forward_back():
    model = _attached("gemma")
    layers = find_layers(base_model(model))
    marker = layers[0].forward
    layers[1].forward = layers[1].forward  # an instance-level forward (as accelerate's hooks set)
    own = layers[1].__dict__["forward"]
    _step(model, batch(labels="lm"), seed=0)
    assert "forward" not in layers[0].__dict__ and layers[0].forward == marker
    assert layers[1].__dict__["forward"] is own
