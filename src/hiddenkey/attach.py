"""attach / detach: put a :class:`DropoutConfig` onto a Hugging Face model, and take it off again."""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import nn

from . import attention
from .attention import PLAN_ATTR, AttentionPlan
from .config import ConfigError, DropoutConfig, DropSpec
from .hidden import FLAT_TOKEN_SITES, SiteDrop, ffn_output_site, output_head

STATE_ATTR = "_hiddenkey_state"


class AttachError(ValueError):
    """The model cannot take the requested drops; raised before anything is changed."""


class ConsistencyIgnoredWarning(UserWarning):
    """A model attached with a consistency loss is trained by code that does not compute it."""


@dataclass(frozen=True, eq=False)
class DropSite:
    """One installed drop: its layer (``None`` for the embeddings and the head), spec and module."""

    layer: int | None
    spec: DropSpec
    module: nn.Module


@dataclass(eq=False)
class AttachState:
    config: DropoutConfig
    num_layers: int
    layer_indices: list[int]
    decoder_only: bool
    original_attn_implementation: str | None = None
    enabled: bool = True
    attached: bool = True
    in_consistency_loss: bool = False
    warned_consistency_ignored: bool = False
    handles: list[Any] = field(default_factory=list)
    planned: list[nn.Module] = field(default_factory=list)
    restore: list[tuple[Any, str, Any]] = field(default_factory=list)
    sites: list[DropSite] = field(default_factory=list)
    meter: Any = None  # a hiddenkey.meter.DropMeter while the drops are measured

    @property
    def active(self) -> bool:
        return self.enabled and self.attached


def base_model(model: nn.Module) -> nn.Module:
    """The transformers ``PreTrainedModel`` inside a peft ``PeftModel`` (or the model itself)."""
    from transformers import PreTrainedModel

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not isinstance(inner, PreTrainedModel):
        raise AttachError(f"expected a transformers PreTrainedModel or a peft PeftModel, got {type(model).__name__}")
    return inner


def find_layers(model: nn.Module) -> nn.ModuleList:
    """The stack of transformer blocks: the longest ModuleList whose every block holds an attention module."""
    stacks = [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.ModuleList) and len(m) > 0 and all(_attention_like(block) for block in m)
    ]
    if not stacks:
        raise AttachError(f"{type(model).__name__}: found no stack of transformer layers with attention modules")
    longest = max(len(m) for _, m in stacks)
    top = [(n, m) for n, m in stacks if len(m) == longest]
    if len(top) > 1:
        names = ", ".join(n for n, _ in top)
        raise AttachError(
            f"{type(model).__name__} has several layer stacks ({names}); encoder-decoder and multi-tower "
            "models are not supported yet"
        )
    return top[0][1]


def _attention_like(block: nn.Module) -> bool:
    return any("Attention" in type(m).__name__ for m in block.modules())


def _routing_modules(layer: nn.Module) -> list[nn.Module]:
    return [m for m in layer.modules() if "Attention" in type(m).__name__ and attention.routes_through_registry(m)]


def is_decoder_only(model: nn.Module, layers: nn.ModuleList) -> bool:
    """True if every self-attention module of the stack is causal.

    Read from the modules' own ``is_causal`` flags, whether or not their attention routes through
    transformers' registry (Falcon computes attention itself and is still a decoder); a family
    whose modules carry no such flag falls back to ``config.is_decoder``.
    """
    if getattr(model.config, "is_encoder_decoder", False):
        return False
    flags = [
        m.is_causal
        for layer in layers
        for m in layer.modules()
        if "Attention" in type(m).__name__ and isinstance(getattr(m, "is_causal", None), bool)
    ]
    if not flags:
        return bool(getattr(model.config, "is_decoder", False))
    return all(flags)


def is_attached(model: nn.Module) -> bool:
    try:
        return getattr(base_model(model), STATE_ATTR, None) is not None
    except AttachError:
        return False


def get_state(model: nn.Module) -> AttachState:
    state = getattr(base_model(model), STATE_ATTR, None)
    if state is None:
        raise AttachError("hiddenkey is not attached to this model; call hiddenkey.attach(model, config)")
    return state


def attach(model: nn.Module, config: DropoutConfig) -> nn.Module:
    """Install the drops of ``config`` on ``model`` (a PreTrainedModel or PeftModel) and return it.

    Attach after ``get_peft_model`` so that hooks sit on the modules peft will call. Everything is
    checked before the model is touched; a failure leaves the model unchanged.
    """
    _check_config(config)
    config.validate()
    base = base_model(model)
    if getattr(base, STATE_ATTR, None) is not None:
        raise AttachError("hiddenkey is already attached to this model; call hiddenkey.detach(model) first")

    layers = find_layers(base)
    decoder_only = is_decoder_only(base, layers)
    indices = config.layer_indices(len(layers), decoder_only)
    specs = config.active_specs()
    state = AttachState(config, len(layers), indices, decoder_only)

    attention_plans: list[tuple[nn.Module, AttentionPlan]] = []
    if config.uses_attention:
        original = base.config._attn_implementation
        _check_attention_support(base, layers, original)
        for i in indices:
            for module in _routing_modules(layers[i]):
                plan = AttentionPlan(
                    logits=specs.get("logits"),
                    weights=specs.get("weights"),
                    state=state,
                    dropkey_bias=config.dropkey_bias,
                    disable_model_dropout=config.disable_model_dropout,
                )
                attention_plans.append((module, plan))
                state.sites += [DropSite(i, s, module) for s in (plan.logits, plan.weights) if s is not None]
        state.original_attn_implementation = original

    hidden_sites = []
    if "hidden" in specs:
        for i in indices:
            try:
                hidden_sites.append((i, layers[i], *ffn_output_site(layers[i])))
            except LookupError as err:
                raise AttachError(f"HiddenCut: {err} (layer {i} of {type(base).__name__})") from None
    head = None
    if "output" in specs:
        try:
            head = output_head(base)[0]
        except LookupError as err:
            raise AttachError(f"output dropout: {err}") from None
    embeddings = base.get_input_embeddings() if "input" in specs else None
    if "input" in specs and embeddings is None:
        raise AttachError(f"input cutoff: {type(base).__name__} has no input embeddings")

    # Nothing below can fail on a supported model: the checks are done.
    if attention_plans:
        attention.register()
        for module, plan in attention_plans:
            setattr(module, PLAN_ATTR, plan)
            state.planned.append(module)
        base.set_attn_implementation(attention.implementation_name(state.original_attn_implementation))
    for i, layer, module, path in hidden_sites:
        state.sites.append(DropSite(i, specs["hidden"], module))
        drop = SiteDrop(specs["hidden"], state)
        state.handles.append(module.register_forward_hook(drop.forward_hook))
        if path in FLAT_TOKEN_SITES and drop.spec.pattern != "element":
            state.handles.append(layer.register_forward_pre_hook(drop.remember_token_shape, with_kwargs=True))
        if isinstance(module, nn.Dropout):
            _set(state, module, "p", 0.0)  # the cut replaces the standard dropout at this slot
    if head is not None:
        state.sites.append(DropSite(None, specs["output"], head))
        state.handles.append(head.register_forward_pre_hook(SiteDrop(specs["output"], state).forward_pre_hook))
    if embeddings is not None:
        state.sites.append(DropSite(None, specs["input"], embeddings))
        state.handles.append(embeddings.register_forward_hook(SiteDrop(specs["input"], state).forward_hook))
    if config.disable_model_dropout:
        _disable_model_dropout(base, layers, state)
    if config.uses_consistency:
        state.handles.append(base.register_forward_pre_hook(ConsistencyWatch(state)))
    setattr(base, STATE_ATTR, state)
    return model


def _check_config(config: Any) -> None:
    if not isinstance(config, DropoutConfig):
        hint = "; build one with DropoutConfig.from_dict(...)" if isinstance(config, dict) else ""
        raise ConfigError(f"expected a hiddenkey.DropoutConfig, got {type(config).__name__}{hint}")


@dataclass(eq=False)
class ConsistencyWatch:
    """Warns once when a training forward runs outside :func:`hiddenkey.hiddenkey_loss`.

    A plain ``transformers.Trainer`` or ``trl.SFTTrainer`` trains an attached model with its drops
    but never computes the configured KL / JS loss; this makes that visible at the first step.
    """

    state: AttachState

    def __call__(self, module: nn.Module, args: tuple) -> None:
        state = self.state
        if state.warned_consistency_ignored or state.in_consistency_loss or not state.active:
            return
        if module.training and torch.is_grad_enabled():
            state.warned_consistency_ignored = True
            warnings.warn(
                f"hiddenkey: this model is attached with a {state.config.consistency.upper()} consistency loss, "
                "but it is being trained without it (only the task loss is computed, the drops still apply). "
                "Train with hiddenkey.Trainer or hiddenkey.SFTTrainer, add hiddenkey.TrainerMixin to your "
                "Trainer class, or call hiddenkey.hiddenkey_loss in your own loop.",
                ConsistencyIgnoredWarning,
                stacklevel=2,
            )


@contextlib.contextmanager
def consistency_loss_step(model: nn.Module) -> Iterator[None]:
    """Mark the forwards inside as part of a step that computes the consistency loss."""
    state = get_state(model)
    previous = state.in_consistency_loss
    state.in_consistency_loss = True
    try:
        yield
    finally:
        state.in_consistency_loss = previous


def _check_attention_support(base: nn.Module, layers: nn.ModuleList, original: str) -> None:
    family = type(base).__name__
    routers = [m for layer in layers for m in _routing_modules(layer)]
    if not routers:
        names = sorted({type(m).__name__ for layer in layers for m in layer.modules() if "Attention" in type(m).__name__})
        raise AttachError(
            f"{family}: its attention ({', '.join(names)}) does not route through transformers' AttentionInterface, "
            "so DropKey/DropAttention cannot reach it. HiddenCut, input and output drops still work; "
            "supported attention families include BERT, RoBERTa, GPT-2, Llama, Qwen2, Mistral, Gemma and Phi."
        )
    if not base._can_set_attn_implementation():
        raise AttachError(f"{family} does not allow switching its attention implementation at runtime")
    if original not in attention.BASE_IMPLEMENTATIONS:
        raise AttachError(
            f"DropKey/DropAttention need the model's attention to be 'sdpa' or 'eager', but {family} uses "
            f"{original!r}; load it with attn_implementation='sdpa'"
        )


def _set(state: AttachState, obj: Any, attr: str, value: Any) -> None:
    state.restore.append((obj, attr, getattr(obj, attr)))
    setattr(obj, attr, value)


#: Float rates that modules apply with functional dropout (attention rates, OPT's residual ``dropout``).
DROPOUT_RATE_ATTRIBUTES = ("attention_dropout", "dropout", "attn_dropout", "activation_dropout")


def _disable_model_dropout(base: nn.Module, layers: nn.ModuleList, state: AttachState) -> None:
    """Zero every built-in dropout of the model (not peft's lora_dropout, which LoraConfig controls):
    ``nn.Dropout`` modules and the float rates modules pass to functional dropout."""
    for name, module in base.named_modules():
        if "lora_dropout" in name:
            continue
        if isinstance(module, nn.Dropout) and module.p > 0:
            _set(state, module, "p", 0.0)
        for attr in DROPOUT_RATE_ATTRIBUTES:
            if isinstance(getattr(module, attr, None), float) and getattr(module, attr) > 0:
                _set(state, module, attr, 0.0)


def detach(model: nn.Module) -> nn.Module:
    """Remove every hook, plan and setting that :func:`attach` installed, and return the model."""
    base = base_model(model)
    state = get_state(model)
    state.attached = False
    for handle in state.handles:
        handle.remove()
    for module in state.planned:
        if hasattr(module, PLAN_ATTR):
            delattr(module, PLAN_ATTR)
    for obj, attr, value in reversed(state.restore):
        setattr(obj, attr, value)
    if state.original_attn_implementation is not None:
        base.set_attn_implementation(state.original_attn_implementation)
    delattr(base, STATE_ATTR)
    return model


@contextlib.contextmanager
def drops_disabled(model: nn.Module) -> Iterator[None]:
    """Run the model in train mode without hiddenkey's drops (the JS loss's inference reference)."""
    state = get_state(model)
    previous = state.enabled
    state.enabled = False
    try:
        yield
    finally:
        state.enabled = previous


def drop_summary(model: nn.Module) -> str:
    state = get_state(model)
    layers = state.layer_indices
    span = f"layers {layers[0]}-{layers[-1]}" if layers else "no layers"
    return f"{state.config.describe()} on {span} of {state.num_layers}" + (
        " (decoder-only: latter half)" if state.decoder_only and state.config.layers == "auto" else ""
    )

