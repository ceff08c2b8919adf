"""``hiddenkey.SFTTrainer``: TRL's ``SFTTrainer`` with hiddenkey's consistency loss.

TRL (>= 1.16) trains through a fused LM head that returns per-token log-probabilities and never
builds the logits; asked for outputs, its ``compute_loss`` recomputes the logits under ``no_grad``.
A KL between two passes needs logits that carry gradient, so with a consistency loss each training
step here runs the model's ordinary forward (full logits, with gradient), takes the task loss from
those logits exactly as TRL would (``loss_type`` ``nll`` or ``dft``, a ``compute_loss_func``, label
smoothing, the MoE router loss), and runs the one ``no_grad`` reference pass: two forwards per step
with ``backprop="one"``. Completion-only and assistant-only training arrive as ``labels == -100``
and are masked out of both losses; packed and padding-free batches keep their ``position_ids``, from
which transformers builds the block-diagonal mask. Without a consistency loss, and in evaluation,
every step is TRL's own.

Refused with a consistency loss: ``use_liger_kernel`` (Liger replaces the model's forward and loss
kernels, which hiddenkey cannot see through) and any ``loss_type`` other than ``nll`` / ``dft``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

try:
    import trl
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError("hiddenkey.SFTTrainer needs TRL: pip install 'hiddenkey[trl]'") from err

from ..attach import get_state, is_attached
from ..config import ConfigError, DropoutConfig
from ..trainer import TrainerMixin

SUPPORTED_LOSS_TYPES = ("nll", "dft")
IGNORE_INDEX = -100


def causal_lm_loss(
    logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch=None, loss_type: str = "nll"
) -> torch.Tensor:
    """TRL's SFT loss from full logits: next-token NLL (or DFT), summed and divided by the target count.

    Position ``t`` predicts ``labels[t + 1]``; ``-100`` labels are ignored. The divisor is
    ``num_items_in_batch`` when given (the whole accumulated batch), else this batch's target count.
    """
    shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    shift_labels = labels[:, 1:].reshape(-1).to(shift_logits.device)
    per_token = F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX, reduction="none")
    if loss_type == "dft":  # https://huggingface.co/papers/2508.05629: weight by the (detached) probability
        per_token = per_token * torch.exp(-per_token).detach()
    count = (shift_labels != IGNORE_INDEX).sum()
    divisor = count.clamp(min=1) if num_items_in_batch is None else num_items_in_batch
    return per_token.sum() / divisor


def refuse_fused_losses(args: Any) -> None:
    """Settings under which TRL computes the loss without logits a consistency loss could use."""
    if getattr(args, "use_liger_kernel", False):
        raise ConfigError(
            "hiddenkey.SFTTrainer: use_liger_kernel=True cannot be combined with a consistency loss: Liger replaces "
            "the model's forward and loss with fused kernels, and the KL needs the full logits of both passes. "
            "Set use_liger_kernel=False, or use a dropout config without consistency."
        )
    loss_type = getattr(args, "loss_type", "nll")
    if loss_type not in SUPPORTED_LOSS_TYPES:
        raise ConfigError(
            f"hiddenkey.SFTTrainer: loss_type={loss_type!r} cannot be combined with a consistency loss "
            f"(supported: {', '.join(SUPPORTED_LOSS_TYPES)})"
        )


class SFTTrainer(TrainerMixin, trl.SFTTrainer):
    """TRL's ``SFTTrainer`` with the consistency loss of a :class:`hiddenkey.DropoutConfig`.

    Takes every argument of ``trl.SFTTrainer`` plus ``dropout_config=`` (or a model already attached
    with :func:`hiddenkey.attach`).
    """

    def __init__(self, model, args=None, *more: Any, dropout_config: DropoutConfig | None = None, **kwargs: Any):
        config = dropout_config or (get_state(model).config if is_attached(model) else None)
        if config is not None and config.uses_consistency:
            refuse_fused_losses(args)
        super().__init__(model, args, *more, dropout_config=dropout_config, **kwargs)

    def hiddenkey_task_loss(self, model, inputs, num_items_in_batch=None):
        labels = inputs["labels"]
        forward = {k: v for k, v in inputs.items() if k != "labels"}
        forward["use_cache"] = False
        if self.aux_loss_enabled:
            forward["output_router_logits"] = True
        outputs = model(**forward)  # the ordinary forward: full logits, with gradient
        if self.compute_loss_func is not None:
            loss = self.compute_loss_func(outputs, labels, num_items_in_batch=num_items_in_batch)
        elif self.label_smoother is not None:
            loss = self.label_smoother(outputs, labels, shift_labels=True, num_items_in_batch=num_items_in_batch)
        else:
            loss = causal_lm_loss(outputs.logits, labels, num_items_in_batch, self.args.loss_type)
        # Like TRL and Trainer: num_items_in_batch counts every rank's tokens and DDP averages the gradients.
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes
        if self.aux_loss_enabled:
            steps = self.current_gradient_accumulation_steps if num_items_in_batch is not None else 1
            loss = loss + self.router_aux_loss_coef * outputs.aux_loss / steps
        self._record_token_metrics(outputs.logits, labels, inputs)
        return loss, outputs

    def _record_token_metrics(self, logits: torch.Tensor, labels: torch.Tensor, inputs: dict[str, Any]) -> None:
        """TRL's training metrics (entropy, mean_token_accuracy, num_tokens) from the logits at hand."""
        with torch.no_grad():
            mask = labels[:, 1:] != IGNORE_INDEX
            rows = logits[:, :-1][mask].float()
            log_p = F.log_softmax(rows, dim=-1)
            entropy = -(log_p.exp() * log_p).sum()
            correct = (rows.argmax(dim=-1) == labels[:, 1:][mask]).sum()
            gather = self.accelerator.gather_for_metrics
            valid = gather(mask.sum()).sum()
            entropy, correct = gather(entropy).sum(), gather(correct).sum()
        metrics = self._metrics["train"]
        metrics["entropy"].append((entropy / valid).item() if valid > 0 else 0.0)
        metrics["mean_token_accuracy"].append((correct / valid).item() if valid > 0 else 0.0)
        if "attention_mask" in inputs:
            local = inputs["attention_mask"].sum()
        else:
            local = torch.tensor(inputs["position_ids"].size(1), device=inputs["position_ids"].device)
        self._total_train_tokens += self.accelerator.gather_for_metrics(local).sum().item() // self._tp_size
        metrics["num_tokens"] = [self._total_train_tokens]
