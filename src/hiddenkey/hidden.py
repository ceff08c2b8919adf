"""Drops on hidden states: input cutoff, HiddenCut on the FFN output, output dropout before the head.

Each site is a forward hook (or pre-hook, for the head) holding a :class:`SiteDrop`. Hooks keep the
module graph unchanged (what ZeRO-3 and FSDP expect), run inside gradient-checkpointed layers (so the
recomputation redraws the same mask from the restored RNG), and come off with ``detach``.

Where HiddenCut sits in each family (the FFN output, before the residual add, HiddenCut's own slot):

* BERT / RoBERTa / ELECTRA / XLM-R: ``layer.output.dropout`` (after ``output.dense``)
* GPT-2: ``layer.mlp.dropout`` (after ``c_proj``)
* DistilBERT: ``layer.ffn.dropout``
* Llama, Qwen2/3, Mistral, Gemma/2, Phi-3, ModernBERT, ... (no dropout module there): the output of ``layer.mlp``
* OPT (functional dropout, no MLP module): the output of ``layer.fc2``. OPT flattens the tokens to
  ``(B*L, D)`` before its FFN, so for column and span patterns a pre-hook on the layer records
  ``(B, L)`` and the drop sees the ``(B, L, D)`` view.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from . import ops
from .config import DropSpec


@dataclass(eq=False)
class SiteDrop:
    """A drop applied to a hooked module's output (or, with ``on_input``, its first input)."""

    spec: DropSpec
    state: Any
    on_input: bool = False
    token_shape: tuple[int, ...] | None = None

    def remember_token_shape(self, layer: nn.Module, args: tuple, kwargs: dict) -> None:
        """Forward pre-hook on the layer of a site that flattens tokens: record its input's ``(B, L)``."""
        hidden = args[0] if args else kwargs.get("hidden_states")
        self.token_shape = tuple(hidden.shape[:-1]) if isinstance(hidden, torch.Tensor) else None

    def __deepcopy__(self, memo: dict) -> SiteDrop:
        # peft's modules_to_save deep-copies the head with its hooks; the copy must follow this attachment.
        return self

    def _drop(self, x: torch.Tensor) -> torch.Tensor:
        s = self.spec
        shape = self.token_shape
        flat = x.dim() == 2 and shape is not None and len(shape) == 2 and x.shape[0] == math.prod(shape)
        tokens = x.reshape(*shape, x.shape[-1]) if flat else x
        meter = getattr(self.state, "meter", None)
        if meter is None:
            out = ops.drop_hidden(tokens, s.rate, s.pattern, s.span_ratio, s.rescale_structured)
        else:
            out, keep = ops.drop_hidden_and_keep(tokens, s.rate, s.pattern, s.span_ratio, s.rescale_structured)
            meter.record(s.position, keep)
        return out.reshape(x.shape) if flat else out

    def _on(self, module: nn.Module) -> bool:
        return module.training and self.state.active

    def forward_hook(self, module: nn.Module, args: tuple, output: Any) -> Any:
        if not self._on(module):
            return None
        if isinstance(output, torch.Tensor):
            return self._drop(output)
        if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
            return (self._drop(output[0]), *output[1:])
        raise TypeError(f"cannot drop the output of {type(module).__name__} of type {type(output).__name__}")

    def forward_pre_hook(self, module: nn.Module, args: tuple) -> Any:
        if not self._on(module) or not args or not isinstance(args[0], torch.Tensor):
            return None
        return (self._drop(args[0]), *args[1:])


def ffn_output_site(layer: nn.Module) -> tuple[nn.Module, str]:
    """The module whose output is the layer's FFN output before the residual add, and its path."""
    for path in ("output.dropout", "mlp.dropout", "ffn.dropout"):
        module = layer.get_submodule(path) if _has(layer, path) else None
        if isinstance(module, nn.Dropout):
            return module, path
    for path in ("mlp", "feed_forward", "ffn", "fc2"):
        if _has(layer, path):
            return layer.get_submodule(path), path
    raise LookupError(f"no FFN output site found in {type(layer).__name__}")


#: FFN output sites whose output is ``(B*L, D)``: the layer flattens its tokens first (OPT).
FLAT_TOKEN_SITES = ("fc2",)


def _has(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
        return True
    except AttributeError:
        return False


def output_head(model: nn.Module) -> tuple[nn.Module, str]:
    """The head whose input gets output dropout: the LM head, or a classification head."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None:
        return head, "lm_head"
    for name in ("classifier", "score", "qa_outputs"):
        if isinstance(getattr(model, name, None), nn.Module):
            return getattr(model, name), name
    raise LookupError(f"{type(model).__name__} has no recognised head (lm_head, classifier, score, qa_outputs)")
