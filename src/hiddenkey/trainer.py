"""Training with a consistency loss: a plain-PyTorch step function and an HF ``Trainer`` subclass.

Two ways to get the second stochastic pass (``DropoutConfig.backprop``):

* ``one`` (the paper's choice): the second pass runs under ``no_grad``; it costs one forward, and the
  KL still sends gradients into the first pass through both directions of Eq. 11.
* ``both`` (R-Drop): the batch is duplicated into one ``2B`` forward so both copies carry gradients
  (masks differ per copy since they are drawn per sample); the task loss is the mean over both copies.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch
import transformers
from torch import nn

from . import losses
from .attach import attach, base_model, drops_disabled, get_state, is_attached
from .config import DropoutConfig
from .meter import measure_drops
from .prefix import shared_prefix

TaskLossFn = Callable[[dict[str, Any], int], tuple[torch.Tensor, Any]]


def _logits(outputs: Any) -> torch.Tensor:
    return outputs["logits"] if isinstance(outputs, dict) else outputs[1]


def is_causal_lm(model: nn.Module) -> bool:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return type(base_model(model)).__name__ in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()


def _is_regression(model: nn.Module) -> bool:
    config = base_model(model).config
    return getattr(config, "problem_type", None) == "regression" or (
        getattr(config, "num_labels", 2) == 1 and getattr(config, "problem_type", None) is None
    )


def duplicate_batch(inputs: dict[str, Any]) -> dict[str, Any]:
    """Concatenate every batch-first tensor with itself: ``B -> 2B`` (R-Drop's one-forward trick)."""
    batch = next((v.shape[0] for v in inputs.values() if isinstance(v, torch.Tensor) and v.dim() > 0), None)
    return {
        k: torch.cat([v, v], dim=0) if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == batch else v
        for k, v in inputs.items()
    }


def consistency_term(
    config: DropoutConfig,
    logits1: torch.Tensor,
    logits2: torch.Tensor,
    inputs: dict[str, Any],
    causal_lm: bool,
    hidden: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """The compensation loss between two passes' outputs (``logits2`` is the reference pass)."""
    attention_mask = inputs.get("attention_mask")
    mask = None
    if logits1.dim() == 3:
        labels = inputs.get("labels")
        if causal_lm:
            mask = losses.lm_token_mask(labels, attention_mask, logits1.shape[1])
        elif labels is not None:
            mask = labels != -100
        elif attention_mask is not None:
            mask = attention_mask.bool()
    elif logits1.shape[-1] == 1:
        if config.regression_consistency == "mse" or hidden is None:
            return losses.regression_mse(logits1, logits2)
        logits1, logits2 = hidden
        mask = attention_mask.bool() if attention_mask is not None else None
    chunk = config.consistency_chunk_size
    if config.consistency == "kl":
        return losses.symmetric_kl(logits1, logits2, mask, chunk)
    if config.js_reference == "inference":
        return losses.kl_divergence(logits1, logits2, mask, chunk)
    return losses.js_divergence(logits1, logits2, mask, chunk)


def _model_task_loss(model: nn.Module) -> TaskLossFn:
    def task_loss(inputs: dict[str, Any], copies: int) -> tuple[torch.Tensor, Any]:
        outputs = model(**inputs)
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs[0]
        return loss, outputs

    return task_loss


def hiddenkey_loss(
    model: nn.Module,
    inputs: dict[str, Any],
    config: DropoutConfig | None = None,
    task_loss: TaskLossFn | None = None,
) -> tuple[torch.Tensor, Any, dict[str, torch.Tensor]]:
    """Task loss plus the configured consistency loss for one batch.

    ``model`` may be wrapped (DDP, peft); it must carry an attachment. ``task_loss(inputs, copies)``
    returns ``(loss, outputs)`` for a batch (``copies`` is 2 for a duplicated batch); by default the
    model's own loss. Returns ``(loss, outputs of the gradient-carrying pass, parts)``.
    """
    unwrapped = _unwrap(model)
    config = config or get_state(unwrapped).config
    task_loss = task_loss or _model_task_loss(model)
    if not config.uses_consistency:
        loss, outputs = task_loss(inputs, 1)
        return loss, outputs, {"task_loss": loss.detach()}

    want_hidden = config.regression_consistency == "hidden_kl" and _is_regression(unwrapped)
    extra = {"output_hidden_states": True} if want_hidden else {}
    causal_lm = is_causal_lm(unwrapped)
    if config.backprop == "both":
        loss, outputs = task_loss({**duplicate_batch(inputs), **extra}, 2)
        logits1, logits2 = _logits(outputs).chunk(2, dim=0)
        hidden = outputs["hidden_states"][-1].chunk(2, dim=0) if want_hidden else None
    else:
        prefix = shared_prefix(unwrapped, config)
        with prefix.capture():
            loss, outputs = task_loss({**inputs, **extra}, 1)
        reference = {k: v for k, v in inputs.items() if k != "labels"}
        inference_reference = config.consistency == "js" and config.js_reference == "inference"
        disabled = drops_disabled(unwrapped) if inference_reference else contextlib.nullcontext()
        with torch.no_grad(), disabled, prefix.replay():
            second = model(**reference, **extra)
        logits1, logits2 = _logits(outputs), _logits(second).detach()
        hidden = (outputs["hidden_states"][-1], second["hidden_states"][-1].detach()) if want_hidden else None
    consistency = consistency_term(config, logits1, logits2, inputs, causal_lm, hidden)
    total = loss + config.consistency_weight * consistency
    return total, outputs, {"task_loss": loss.detach(), "consistency": consistency.detach()}


def _unwrap(model: nn.Module) -> nn.Module:
    while hasattr(model, "module") and isinstance(model.module, nn.Module) and not is_attached(model):
        model = model.module
    return model


class Trainer(transformers.Trainer):
    """``transformers.Trainer`` that trains with a :class:`DropoutConfig`.

    Pass ``dropout_config=`` to attach it (after peft's ``get_peft_model``), or give a model that is
    already attached. The config is saved as ``hiddenkey_config.json`` beside every saved adapter.
    Each training log carries ``drop_fraction_<position>``: the fraction of mask entries dropped at that
    position since the previous log (measured on the device, read only when logging).
    """

    def __init__(self, *args: Any, dropout_config: DropoutConfig | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if dropout_config is not None and not is_attached(self.model):
            attach(self.model, dropout_config)
        self.dropout_config = get_state(self.model).config if is_attached(self.model) else dropout_config
        self._drop_meter = measure_drops(self.model) if is_attached(self.model) else None
        self._consistency_sum = 0.0
        self._consistency_count = 0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        config = self.dropout_config
        if config is None or not config.uses_consistency or not model.training:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

        def task_loss(batch: dict[str, Any], copies: int) -> tuple[torch.Tensor, Any]:
            items = None if num_items_in_batch is None else num_items_in_batch * copies
            return super(Trainer, self).compute_loss(model, batch, True, items)

        loss, outputs, parts = hiddenkey_loss(model, inputs, config, task_loss)
        consistency = parts["consistency"]
        if self._task_loss_is_scaled(num_items_in_batch):
            # The task loss is normalised over the accumulated batch; bring the per-batch-mean term in line.
            correction = self.current_gradient_accumulation_steps
            if self.args.average_tokens_across_devices:
                correction /= self.accelerator.num_processes
            loss = loss - config.consistency_weight * consistency * (1 - 1 / correction)
        self._consistency_sum += float(consistency)
        self._consistency_count += 1
        return (loss, outputs) if return_outputs else loss

    def _task_loss_is_scaled(self, num_items_in_batch) -> bool:
        if self.loss_is_scaled_for_ga is not None:
            return self.loss_is_scaled_for_ga
        return bool(self.model_accepts_loss_kwargs and num_items_in_batch is not None) or self.compute_loss_func is not None

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if self._consistency_count and "loss" in logs:
            logs["consistency_loss"] = self._consistency_sum / self._consistency_count
            self._consistency_sum, self._consistency_count = 0.0, 0
        if self._drop_meter is not None and "loss" in logs:
            logs.update({f"drop_fraction_{p}": f for p, f in self._drop_meter.read().items()})
        super().log(logs, *args, **kwargs)

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        super()._save(output_dir, state_dict)
        if self.dropout_config is not None and self.args.should_save:
            self.dropout_config.save(output_dir or self.args.output_dir)
