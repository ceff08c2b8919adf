"""attach / detach on every supported family, with peft LoRA."""

import pytest
import torch
import transformers

import hiddenkey
from hiddenkey.attach import base_model
from hiddenkey.attention import PLAN_ATTR

from .conftest import DECODERS, ENCODERS, FAMILIES, batch, build_model, lora

ALL = ENCODERS + DECODERS
PRESETS = ["baseline", "dropkey", "dropattention", "hiddencut", "hiddenkey-", "hiddenkey"]
PATTERNS = ["element", "column", "span"]
METHODS_WITH_PATTERN = ["dropkey", "dropattention", "hiddencut"]


def _model(family, seed=0, lora_init=False, **kw):
    model = build_model(family, seed=seed, **kw)
    return lora(model, family, init_lora_weights=lora_init)


def _inputs(family, pad=True, **kw):
    labels = "cls" if family in ENCODERS else "lm"
    return batch(pad=pad, labels=labels, **kw)


def _logits(model, inputs):
    return model(**{k: v for k, v in inputs.items() if k != "labels"}).logits


@pytest.mark.parametrize("family", ALL)
@pytest.mark.parametrize("preset", PRESETS)
def test_eval_outputs_are_bit_identical_to_the_unattached_model(family, preset):
    model = _model(family).eval()
    inputs = _inputs(family)
    with torch.no_grad():
        before = _logits(model, inputs)
        hiddenkey.attach(model, hiddenkey.DropoutConfig.preset(preset, rate=0.3, layers="all"))
        after = _logits(model, inputs)
    assert torch.equal(before, after)


@pytest.mark.parametrize("family", ALL)
def test_train_mode_drops_change_outputs_and_differ_between_passes(family):
    model = _model(family)
    hiddenkey.attach(model, hiddenkey.DropoutConfig.preset("hiddenkey", rate=0.3, layers="all"))
    model.train()
    inputs = _inputs(family)
    torch.manual_seed(0)
    a = _logits(model, inputs)
    b = _logits(model, inputs)
    model.eval()
    c = _logits(model, inputs)
    assert not torch.allclose(a, b)
    assert not torch.allclose(a, c)


def _loss_and_grads(model, inputs, seed=3):
    model.zero_grad()
    torch.manual_seed(seed)
    out = model(**inputs)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    return out.logits.detach(), grads


@pytest.mark.parametrize("family", ALL)
@pytest.mark.parametrize("method", METHODS_WITH_PATTERN + ["hiddenkey-"])
@pytest.mark.parametrize("pattern", PATTERNS)
def test_rate_zero_is_the_identity(family, method, pattern):
    if method == "hiddenkey-" and pattern != "element":
        pytest.skip("hiddenkey- has fixed patterns")
    reference = _model(family, dropout=0.0).train()
    inputs = _inputs(family)
    want_logits, want_grads = _loss_and_grads(reference, inputs)

    model = _model(family, dropout=0.0).train()
    cfg = hiddenkey.DropoutConfig.preset(method, rate=0.0, pattern=None if method == "hiddenkey-" else pattern)
    hiddenkey.attach(model, cfg)
    _force_zero_rate_sites(model, cfg, pattern)
    got_logits, got_grads = _loss_and_grads(model, inputs)
    torch.testing.assert_close(got_logits, want_logits, rtol=1e-5, atol=1e-6)
    assert want_grads.keys() == got_grads.keys()
    for name in want_grads:
        torch.testing.assert_close(got_grads[name], want_grads[name], rtol=1e-4, atol=1e-6)


def _force_zero_rate_sites(model, cfg, pattern):
    """A rate-0 config installs nothing; install rate-0 sites by hand so the drop code itself runs."""
    from hiddenkey.attach import _routing_modules, find_layers
    from hiddenkey.attention import AttentionPlan, implementation_name, register
    from hiddenkey.config import DropSpec
    from hiddenkey.hidden import SiteDrop, ffn_output_site

    base = base_model(model)
    state = hiddenkey.get_state(model)
    register()
    original = base.config._attn_implementation
    if not original.startswith("hiddenkey_"):
        state.original_attn_implementation = original
        base.set_attn_implementation(implementation_name(original))
    for layer in find_layers(base):
        for module in _routing_modules(layer):
            plan = AttentionPlan(
                DropSpec("logits", 0.0, pattern), DropSpec("weights", 0.0, pattern), state, 1e4, True
            )
            setattr(module, PLAN_ATTR, plan)
            state.planned.append(module)
        site, _ = ffn_output_site(layer)
        state.handles.append(site.register_forward_hook(SiteDrop(DropSpec("hidden", 0.0, pattern), state).forward_hook))


@pytest.mark.parametrize("family", ALL)
def test_detach_restores_the_original_train_mode_behaviour(family):
    inputs = _inputs(family)
    original = _model(family, lora_init=False).train()  # the model's own dropouts (0.1) are on
    want_logits, want_grads = _loss_and_grads(original, inputs)
    implementation = base_model(original).config._attn_implementation

    model = _model(family, lora_init=False).train()
    hiddenkey.attach(model, hiddenkey.DropoutConfig.preset("hiddenkey", rate=0.3, layers="all", output_rate=0.2))
    assert base_model(model).config._attn_implementation.startswith("hiddenkey_")
    hiddenkey.detach(model)
    assert base_model(model).config._attn_implementation == implementation
    assert not any(hasattr(m, PLAN_ATTR) for m in model.modules())
    got_logits, got_grads = _loss_and_grads(model, inputs)
    assert torch.equal(got_logits, want_logits)
    for name in want_grads:
        assert torch.equal(got_grads[name], want_grads[name]), name
    hiddenkey.attach(model, hiddenkey.DropoutConfig.preset("hiddenkey"))  # can attach again


@pytest.mark.parametrize("family", DECODERS)
def test_decoders_drop_in_the_latter_half_only(family):
    model = _model(family)
    hiddenkey.attach(model, hiddenkey.DropoutConfig.preset("hiddenkey-", rate=0.2))
    state = hiddenkey.get_state(model)
    assert state.decoder_only and state.layer_indices == [2, 3]
    from hiddenkey.attach import find_layers

    layers = find_layers(base_model(model))
    planned = [i for i, layer in enumerate(layers) if any(hasattr(m, PLAN_ATTR) for m in layer.modules())]
    assert planned == [2, 3]
    assert len(state.handles) == 2  # one HiddenCut hook in each of the two latter layers


@pytest.mark.parametrize("family", ENCODERS)
def test_encoders_drop_in_every_layer(family):
    model = _model(family)
    hiddenkey.attach(model, hiddenkey.DropoutConfig.preset("hiddenkey", rate=0.2))
    state = hiddenkey.get_state(model)
    assert not state.decoder_only and state.layer_indices == [0, 1]


@pytest.mark.parametrize("family", DECODERS)
@pytest.mark.parametrize("method", ["dropkey", "dropattention"])
@pytest.mark.parametrize("pattern", PATTERNS)
def test_causal_models_never_attend_to_future_tokens(family, method, pattern):
    model = _model(family)
    hiddenkey.attach(model, hiddenkey.DropoutConfig.preset(method, rate=0.5, pattern=pattern, layers="all"))
    model.train()
    inputs = _inputs(family, pad=False)
    changed = {**inputs, "input_ids": inputs["input_ids"].clone()}
    changed["input_ids"][:, 5:] = (changed["input_ids"][:, 5:] + 7) % 90 + 2
    torch.manual_seed(11)
    a = _logits(model, inputs)
    torch.manual_seed(11)
    b = _logits(model, changed)
    torch.testing.assert_close(a[:, :5], b[:, :5])
    assert not torch.allclose(a[:, 5:], b[:, 5:])


@pytest.mark.parametrize("family", ["bert", "llama", "gpt2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_no_nan_when_every_visible_key_is_dropped(family, dtype):
    model = _model(family).to(dtype)
    cfg = hiddenkey.DropoutConfig(logits_rate=0.999999, logits_pattern="column", layers="all")
    hiddenkey.attach(model, cfg)
    model.train()
    logits = _logits(model, _inputs(family))
    assert torch.isfinite(logits).all()
    hiddenkey.detach(model)
    hiddenkey.attach(model, hiddenkey.DropoutConfig(weights_rate=0.999999, weights_pattern="column", layers="all"))
    assert torch.isfinite(_logits(model, _inputs(family))).all()


@pytest.mark.parametrize("family", ["bert", "llama"])
@pytest.mark.parametrize("preset", ["hiddenkey-", "dropattention"])
def test_gradients_equal_with_and_without_gradient_checkpointing(family, preset):
    inputs = _inputs(family)
    results = []
    for checkpointing in (False, True):
        model = _model(family, lora_init=False)
        if checkpointing:
            base_model(model).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        hiddenkey.attach(model, hiddenkey.DropoutConfig.preset(preset, rate=0.3, layers="all"))
        model.train()
        results.append(_loss_and_grads(model, inputs))
    (logits_a, grads_a), (logits_b, grads_b) = results
    torch.testing.assert_close(logits_a, logits_b)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-5, atol=1e-7)


def test_drops_disabled_gives_the_undropped_train_mode_pass():
    model = _model("bert", dropout=0.0)
    inputs = _inputs("bert")
    model.eval()
    reference = _logits(model, inputs)
    hiddenkey.attach(model, hiddenkey.DropoutConfig.preset("hiddenkey", rate=0.5))
    model.train()
    with hiddenkey.drops_disabled(model):
        torch.testing.assert_close(_logits(model, inputs), reference)
    assert not torch.allclose(_logits(model, inputs), reference)


def test_input_and_output_drops():
    model = _model("bert", dropout=0.0)
    cfg = hiddenkey.DropoutConfig(input_rate=0.3, input_pattern="span", output_rate=0.3)
    hiddenkey.attach(model, cfg)
    assert len(hiddenkey.get_state(model).handles) == 2
    model.train()
    inputs = _inputs("bert")
    assert not torch.allclose(_logits(model, inputs), _logits(model, inputs))
    model.eval()
    reference = _model("bert", dropout=0.0).eval()
    torch.testing.assert_close(_logits(model, inputs), _logits(reference, inputs))


def test_model_dropout_is_disabled_and_restored():
    model = _model("bert")
    dropouts = [m for n, m in model.named_modules() if isinstance(m, torch.nn.Dropout) and "lora" not in n]
    assert dropouts and all(m.p == 0.1 for m in dropouts)
    hiddenkey.attach(model, hiddenkey.DropoutConfig.preset("baseline"))
    assert all(m.p == 0.0 for m in dropouts)
    hiddenkey.detach(model)
    assert all(m.p == 0.1 for m in dropouts)
    llama = _model("llama")
    attention = [m for m in llama.modules() if hasattr(m, "attention_dropout")]
    hiddenkey.attach(llama, hiddenkey.DropoutConfig.preset("baseline"))
    assert attention and all(m.attention_dropout == 0.0 for m in attention)


def test_unsupported_family_gets_a_clear_error():
    cfg = transformers.DebertaV2Config(
        vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
    )
    model = transformers.DebertaV2ForSequenceClassification(cfg)
    with pytest.raises(hiddenkey.AttachError, match="does not route through transformers' AttentionInterface"):
        hiddenkey.attach(model, hiddenkey.DropoutConfig.preset("dropkey"))
    assert not hiddenkey.is_attached(model)
    hiddenkey.attach(model, hiddenkey.DropoutConfig.preset("hiddencut"))  # hidden drops need no attention
    assert len(hiddenkey.get_state(model).handles) == 2


def test_attach_twice_and_detach_unattached_are_errors():
    model = _model("bert")
    with pytest.raises(hiddenkey.AttachError, match="not attached"):
        hiddenkey.detach(model)
    hiddenkey.attach(model, hiddenkey.DropoutConfig.preset("hiddenkey"))
    with pytest.raises(hiddenkey.AttachError, match="already attached"):
        hiddenkey.attach(model, hiddenkey.DropoutConfig.preset("hiddenkey"))


def test_non_sdpa_eager_attention_is_refused_before_any_change():
    model = build_model("llama")
    base_model(model).config._attn_implementation_internal = "flex_attention"
    with pytest.raises(hiddenkey.AttachError, match="'sdpa' or 'eager'"):
        hiddenkey.attach(model, hiddenkey.DropoutConfig.preset("dropkey"))
    assert not any(hasattr(m, PLAN_ATTR) for m in model.modules())


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_eager_base_implementation(family):
    model = build_model(family)
    base_model(model).set_attn_implementation("eager")
    model.eval()
    inputs = _inputs(family)
    before = _logits(model, inputs)
    hiddenkey.attach(model, hiddenkey.DropoutConfig.preset("hiddenkey", layers="all"))
    assert base_model(model).config._attn_implementation == "hiddenkey_eager"
    assert torch.equal(_logits(model, inputs), before)
    model.train()
    assert torch.isfinite(_logits(model, inputs)).all()


def test_every_family_is_in_the_table():
    assert set(FAMILIES) == set(ALL)
