"""Training with a consistency loss: a plain-PyTorch step function, a mixin for any HF ``Trainer``
subclass, and ``hiddenkey.Trainer`` (the mixin on ``transformers.Trainer``).

Two ways to get the second stochastic pass (``DropoutConfig.backprop``):

* ``one`` (the paper's choice): the second pass runs under ``no_grad``; it costs one forward, and the
  KL still sends gradients into the first pass through both directions of Eq. 11.
* ``both`` (R-Drop): the batch is duplicated into one ``2B`` forward so both copies carry gradients
  (masks differ per copy since they are drawn per sample); the task loss is the mean over both copies.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Callable

import torch
import transformers
from torch import nn

from . import losses
from .attach import AttachError, attach, base_model, consistency_loss_step, drops_disabled, get_state, is_attached
from .config import ConfigError, DropoutConfig
from .distributed import seed_rank_mask_stream
from .meter import measure_drops
from .prefix import shared_prefix

TaskLossFn = Callable[[dict[str, Any], int], tuple[torch.Tensor, Any]]


def _logits(outputs: Any) -> torch.Tensor:
    return outputs["logits"] if isinstance(outputs, dict) else outputs[1]


def is_causal_lm(model: nn.Module) -> bool:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return type(base_model(model)).__name__ in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()


def is_sequence_classifier(model: nn.Module) -> bool:
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

    try:
        name = type(base_model(model)).__name__
    except AttachError:  # not a transformers model
        return False
    return name in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES.values()


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
    if config is not None and not isinstance(config, DropoutConfig):
        raise ConfigError(f"config must be a hiddenkey.DropoutConfig, got {type(config).__name__}")
    config = config or get_state(unwrapped).config
    task_loss = task_loss or _model_task_loss(model)
    if not config.uses_consistency:
        loss, outputs = task_loss(inputs, 1)
        return loss, outputs, {"task_loss": loss.detach()}

    with consistency_loss_step(unwrapped):
        return _two_pass_loss(model, unwrapped, inputs, config, task_loss)


def _two_pass_loss(model, unwrapped, inputs, config: DropoutConfig, task_loss: TaskLossFn):
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
    if loss.requires_grad and not logits1.requires_grad:
        raise RuntimeError(
            "the task loss's outputs carry no gradient (their logits were computed under no_grad), so the "
            "consistency loss would train nothing; return the logits of the forward that gives the loss"
        )
    consistency = consistency_term(config, logits1, logits2, inputs, causal_lm, hidden)
    total = loss + config.consistency_weight * consistency
    return total, outputs, {"task_loss": loss.detach(), "consistency": consistency.detach()}


def resolve_dropout_config(model: nn.Module, dropout_config: DropoutConfig | None) -> DropoutConfig | None:
    """The config a Trainer trains with: ``dropout_config`` attached now, or the one already attached.

    A model attached with a *different* config is an error rather than a silent choice of one of them.
    """
    if dropout_config is not None and not isinstance(dropout_config, DropoutConfig):
        hint = "; build one with DropoutConfig.from_dict(...)" if isinstance(dropout_config, dict) else ""
        raise ConfigError(f"dropout_config must be a hiddenkey.DropoutConfig, got {type(dropout_config).__name__}{hint}")
    if not is_attached(model):
        if dropout_config is not None:
            attach(model, dropout_config)
        return dropout_config
    attached = get_state(model).config
    if dropout_config is not None and dropout_config != attached:
        raise ConfigError(
            f"the model is already attached with a different DropoutConfig ({attached.describe()}) than "
            f"dropout_config ({dropout_config.describe()}); call hiddenkey.detach(model) first, or omit dropout_config"
        )
    return attached


def _unwrap(model: nn.Module) -> nn.Module:
    while hasattr(model, "module") and isinstance(model.module, nn.Module) and not is_attached(model):
        model = model.module
    return model


class RankMaskStream(transformers.TrainerCallback):
    """Gives each rank its own mask stream when training starts (see :mod:`hiddenkey.distributed`)."""

    def __init__(self, offset: int) -> None:
        self.offset = offset

    def on_train_begin(self, args, state, control, **kwargs):
        seed_rank_mask_stream(self.offset, args.process_index)


class TrainerMixin:
    """Adds the configured consistency loss to any ``transformers.Trainer`` subclass.

    ``class MyTrainer(hiddenkey.TrainerMixin, SomeTrainer)``: put the mixin first. Pass
    ``dropout_config=`` to attach it (after peft's ``get_peft_model``), or give a model that is already
    attached. In training, each step runs :func:`hiddenkey_loss`: the parent's task loss on a forward
    that carries gradient (:meth:`hiddenkey_task_loss`, by default the parent's ``compute_loss``), the
    second stochastic pass, and the weighted KL / JS. Evaluation is the parent's own. Also: the
    consistency loss is logged as ``consistency_loss``; each rank gets its own mask stream
    (``rank_seed_offset``); ``hiddenkey_config.json`` is saved beside every adapter. Each training log
    carries ``drop_fraction_<position>``: the fraction of mask entries dropped at that position since
    the previous log (measured on the device, read only when logging).
    """

    def __init__(self, *args: Any, dropout_config: DropoutConfig | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if is_sequence_classifier(self.model):
            # transformers counts every model whose forward takes **kwargs as normalising its loss by
            # num_items_in_batch; a sequence classifier returns a per-batch mean and ignores it, so the
            # Trainer would neither divide it by the accumulation steps nor keep it right across processes.
            self.model_accepts_loss_kwargs = False
        self.dropout_config = resolve_dropout_config(self.model, dropout_config)
        self._drop_meter = measure_drops(self.model) if is_attached(self.model) else None
        self._consistency_sum = 0.0
        self._consistency_count = 0
        if self.dropout_config is not None:
            self.add_callback(RankMaskStream(self.dropout_config.rank_seed_offset))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        config = self.dropout_config
        if config is None or not config.uses_consistency or not model.training:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

        def task_loss(batch: dict[str, Any], copies: int) -> tuple[torch.Tensor, Any]:
            items = None if num_items_in_batch is None else num_items_in_batch * copies
            return self.hiddenkey_task_loss(model, batch, items)

        if self._task_loss_is_scaled(num_items_in_batch):
            # The task loss is normalised over the whole accumulated batch, so the Trainer will not divide it
            # by the accumulation steps; the consistency loss is a per-micro-batch mean: divide it here.
            # (Across processes DDP averages the gradients, which already averages the consistency loss.)
            steps = self.current_gradient_accumulation_steps
            config = dataclasses.replace(config, consistency_weight=config.consistency_weight / steps)
        loss, outputs, parts = hiddenkey_loss(model, inputs, config, task_loss)
        self._consistency_sum += float(parts["consistency"])
        self._consistency_count += 1
        return (loss, outputs) if return_outputs else loss

    def hiddenkey_task_loss(self, model, inputs, num_items_in_batch=None) -> tuple[torch.Tensor, Any]:
        """``(task loss, outputs)`` of one forward whose logits carry gradient: the parent's ``compute_loss``.

        Override it for a parent whose ``compute_loss`` does not return such outputs (see
        :class:`hiddenkey.SFTTrainer`).
        """
        return super().compute_loss(model, inputs, True, num_items_in_batch)

    def _task_loss_is_scaled(self, num_items_in_batch) -> bool:
        """Whether ``Trainer.training_step`` will leave the loss undivided by the accumulation steps."""
        if self.loss_is_scaled_for_ga is not None:
            return self.loss_is_scaled_for_ga
        return bool(self.model_accepts_loss_kwargs and num_items_in_batch is not None) or self.compute_loss_func is not None

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if self._consistency_count and "loss" in logs:
            mean = torch.tensor(self._consistency_sum / self._consistency_count, device=self.args.device)
            # Every process logs the training loss at the same step; average over them like the loss.
            logs["consistency_loss"] = float(self.accelerator.reduce(mean, reduction="mean"))
            self._consistency_sum, self._consistency_count = 0.0, 0
        if self._drop_meter is not None and "loss" in logs:
            logs.update({f"drop_fraction_{p}": f for p, f in self._drop_meter.read().items()})
        super().log(logs, *args, **kwargs)

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        super()._save(output_dir, state_dict)
        if self.dropout_config is not None and self.args.should_save:
            self.dropout_config.save(output_dir or self.args.output_dir)


class Trainer(TrainerMixin, transformers.Trainer):
    """``transformers.Trainer`` that trains with a :class:`DropoutConfig` (see :class:`TrainerMixin`).

    Pass ``dropout_config=`` to attach it (after peft's ``get_peft_model``), or give a model that is
    already attached. The config is saved as ``hiddenkey_config.json`` beside every saved adapter.
    """
