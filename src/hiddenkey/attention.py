"""The attention function registered in transformers' ``AttentionInterface``.

It is registered twice, once per base implementation, each paired with that base's mask function in
``AttentionMaskInterface`` (without the mask registration transformers would silently drop the
causal and padding masks):

* ``hiddenkey_sdpa``  -> base ``sdpa_attention_forward``, masks from ``sdpa_mask``
* ``hiddenkey_eager`` -> the model file's own ``eager_attention_forward``, masks from ``eager_mask``

Outside training, with no plan on the module (an unselected layer), or with drops disabled, the call
goes to the base function with exactly the arguments it received, so eval outputs are bit-identical
to the un-attached model. In training it applies the module's :class:`AttentionPlan`:

* DropKey (logits): a finite additive bias on dropped logits merged with the structural mask, then
  SDPA. Column and span masks stay ``(B, H, 1, Lk)`` when the structural mask is padding-only.
* DropAttention (weights), column/span: exact through SDPA with a value channel appended. With
  ``m`` the key keep mask and ``A`` the undropped softmax, ``A (m*V) / NoGrad(A m)`` is Eq. 1-2;
  ``A m`` comes from the extra channel ``[m*V, m]`` in the same kernel call. No L x L tensor.
* DropAttention, element: explicit weights (:func:`hiddenkey.ops.dropattention_softmax`).
* Logit softcapping (Gemma2's ``softcap``): explicit weights as in the model's own eager function,
  ``softcap * tanh(logits / softcap)``, then DropKey's bias and the mask, then the softmax and
  DropAttention. SDPA cannot softcap, so this path is taken for every pattern.
"""

from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

from . import ops
from .config import DropSpec

PLAN_ATTR = "_hiddenkey_plan"
BASE_IMPLEMENTATIONS = ("sdpa", "eager")
#: Attention arguments the dropped path cannot honour (attention sinks, T5's relative position bias).
UNSUPPORTED_KWARGS = ("s_aux", "position_bias")


def implementation_name(base: str) -> str:
    return f"hiddenkey_{base}"


@dataclass
class AttentionPlan:
    """What one attention module drops. ``state`` is shared by every site of one attachment."""

    logits: DropSpec | None
    weights: DropSpec | None
    state: Any
    dropkey_bias: float
    disable_model_dropout: bool


def routes_through_registry(module: torch.nn.Module) -> bool:
    """True if the module's forward asks ``ALL_ATTENTION_FUNCTIONS`` for its attention function."""
    cls = type(module)
    cached = cls.__dict__.get("_hiddenkey_routes")
    if cached is None:
        try:
            cached = "get_interface(" in inspect.getsource(cls.forward)
        except (OSError, TypeError):
            cached = False
        setattr(cls, "_hiddenkey_routes", cached)
    return cached


def _model_eager_function(module: torch.nn.Module) -> Callable:
    fn = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    if fn is None:
        raise RuntimeError(f"{type(module).__name__}'s module defines no eager_attention_forward")
    return fn


def _base_function(base: str, module: torch.nn.Module) -> Callable:
    if base == "sdpa":
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward
    return _model_eager_function(module)


def _forward(base: str, module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    plan: AttentionPlan | None = getattr(module, PLAN_ATTR, None)
    if plan is None or not module.training or not plan.state.active:
        return _base_function(base, module)(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    unsupported = [name for name in UNSUPPORTED_KWARGS if kwargs.get(name) is not None]
    if unsupported:
        raise NotImplementedError(
            f"hiddenkey's DropKey/DropAttention do not support the attention argument(s) {unsupported} "
            f"of {type(module).__name__}"
        )
    if plan.disable_model_dropout:
        dropout = 0.0
    return dropped_attention(
        module, plan, query, key, value, attention_mask, dropout, scaling, kwargs.get("is_causal"), kwargs.get("softcap")
    )


def hiddenkey_sdpa_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    return _forward("sdpa", module, query, key, value, attention_mask, dropout, scaling, **kwargs)


def hiddenkey_eager_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    return _forward("eager", module, query, key, value, attention_mask, dropout, scaling, **kwargs)


def register() -> None:
    """Register both implementations and their mask functions (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask

    AttentionInterface.register(implementation_name("sdpa"), hiddenkey_sdpa_attention)
    AttentionInterface.register(implementation_name("eager"), hiddenkey_eager_attention)
    AttentionMaskInterface.register(implementation_name("sdpa"), sdpa_mask)
    AttentionMaskInterface.register(implementation_name("eager"), eager_mask)


def _repeat_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    groups = heads // x.shape[1]
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


def dropped_attention(
    module: torch.nn.Module,
    plan: AttentionPlan,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float,
    scaling: float | None,
    is_causal: bool | None = None,
    softcap: float | None = None,
) -> tuple[torch.Tensor, None]:
    """Training-mode attention with the plan's drops. Returns ``((B, Lq, H, D), None)`` like HF's functions."""
    batch, heads, q_len, head_dim = query.shape
    k_len = key.shape[2]
    causal = bool(getattr(module, "is_causal", False) if is_causal is None else is_causal) and q_len > 1
    mask = attention_mask
    if mask is not None:
        mask = mask[..., :k_len]
        if not causal:
            mask = ops.compact_padding_mask(mask)
    key = _repeat_heads(key, heads)
    value = _repeat_heads(value, heads)

    bias = None
    if plan.logits is not None:
        spec = plan.logits
        keep = ops.attention_keep_mask(
            spec.pattern, batch, heads, q_len, k_len, spec.rate, spec.span_ratio, query.device
        )
        keep = ops.protect_first_keys(keep, mask, spec.keep_first_keys)
        _record(plan, spec, keep)
        bias = ops.dropkey_bias(keep, query.dtype, plan.dropkey_bias)

    weights_spec = plan.weights
    if softcap is not None or (weights_spec is not None and weights_spec.pattern == "element"):
        return _explicit_weights_attention(
            plan, query, key, value, bias, mask, causal, dropout, scaling, weights_spec, softcap
        ), None

    if bias is not None:
        attn_mask, sdpa_causal = ops.apply_structure(bias, mask, causal, q_len, k_len), False
    elif mask is not None and mask.dtype != torch.bool:
        attn_mask, sdpa_causal = mask.to(query.dtype), False
    else:
        attn_mask, sdpa_causal = mask, causal and mask is None

    if weights_spec is None:
        out = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attn_mask, dropout_p=dropout, is_causal=sdpa_causal, scale=scaling
        )
        return out.transpose(1, 2).contiguous(), None

    keep_keys = ops.attention_keep_mask(
        weights_spec.pattern, batch, heads, 1, k_len, weights_spec.rate, weights_spec.span_ratio, query.device
    )
    keep_keys = ops.protect_first_keys(keep_keys, mask, weights_spec.keep_first_keys)
    _record(plan, weights_spec, keep_keys)
    m = keep_keys.transpose(-1, -2).to(value.dtype)
    augmented = torch.cat([value * m, m], dim=-1)
    out = F.scaled_dot_product_attention(
        query, key, augmented, attn_mask=attn_mask, dropout_p=dropout, is_causal=sdpa_causal, scale=scaling
    )
    numerator, kept_mass = out[..., :-1], out[..., -1:]
    out = ops.normalise_kept(numerator, kept_mass, weights_spec.stop_gradient)
    return out.transpose(1, 2).contiguous(), None


def _record(plan: AttentionPlan, spec: DropSpec, keep: torch.Tensor) -> None:
    meter = getattr(plan.state, "meter", None)  # a plan may carry any object with ``active``
    if meter is not None:
        meter.record(spec.position, keep)


def _explicit_weights_attention(
    plan, query, key, value, bias, mask, causal, dropout, scaling, spec: DropSpec | None, softcap: float | None = None
):
    """Attention on explicit weights: (softcapped) logits + DropKey bias + mask, softmax, DropAttention."""
    batch, heads, q_len, head_dim = query.shape
    k_len = key.shape[2]
    scale = head_dim**-0.5 if scaling is None else scaling
    compute_dtype = torch.promote_types(query.dtype, torch.float32)
    logits = torch.matmul(query, key.transpose(-1, -2)).to(compute_dtype) * scale
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    zero = torch.zeros((), dtype=compute_dtype, device=query.device)
    structure = zero if bias is None else bias.to(compute_dtype)
    logits = logits + ops.apply_structure(structure, mask, causal, q_len, k_len)
    if spec is None:
        weights = torch.softmax(logits, dim=-1).to(value.dtype)
    else:
        keep = ops.attention_keep_mask(spec.pattern, batch, heads, q_len, k_len, spec.rate, spec.span_ratio, query.device)
        keep = ops.protect_first_keys(keep, mask, spec.keep_first_keys)
        _record(plan, spec, keep)
        weights = ops.dropattention_softmax(logits, keep, spec.stop_gradient).to(value.dtype)
    if dropout > 0:
        weights = F.dropout(weights, dropout, training=True)
    return torch.matmul(weights, value).transpose(1, 2).contiguous()
