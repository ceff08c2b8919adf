"""``transformers`` Trainer callbacks that keep a run honest.

* :class:`StopOnNonFinite` stops training at the first optimizer step whose loss or gradient norm is
  NaN or infinite, without applying that step's update and without saving or evaluating after it, and
  names the step. (HF's Trainer would log such a loss as a finite average and train on.)
* :class:`LogAtEverySave` logs the training loss at every checkpoint and at the last step, so that the
  log history saved with each checkpoint covers every step, and :func:`mean_train_loss` can give the
  training loss of all the steps of a run that was resumed (HF's ``train_loss`` averages only the steps
  run since the resume).

Both work with any ``transformers.Trainer``; they are plain callbacks (``callbacks=[...]`` or
``trainer.add_callback``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from transformers import TrainerCallback


@dataclass(frozen=True)
class Divergence:
    """Where training stopped: the optimizer step (1-based, as in the logs), what was non-finite, its value."""

    step: int
    what: str
    value: float

    def __str__(self) -> str:
        return f"the {self.what} is {self.value} at step {self.step}"


class StopOnNonFinite(TrainerCallback):
    """Stop at the first optimizer step with a NaN/inf loss or gradient norm; see :attr:`divergence`.

    The loss checked is the ``loss`` of every model forward that runs in train mode with gradients
    enabled; the gradient norm is the 2-norm of all gradients just before the optimizer step (after
    clipping, which turns a non-finite norm into non-finite gradients). The offending step's gradients
    are dropped, so the optimizer leaves the weights as they were; no checkpoint is saved and no
    evaluation runs after it. With ``fp16`` mixed precision, non-finite gradients are the loss scaler's
    normal signal to skip a step and lower its scale, so only the loss is checked there.
    """

    def __init__(self) -> None:
        self.divergence: Divergence | None = None
        self._bad_loss: float | None = None
        self._handle: Any = None

    # ------------------------------------------------------------------------------------- hooks
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.divergence, self._bad_loss = None, None
        if model is not None and self._handle is None:
            self._handle = model.register_forward_hook(self._check_loss)

    def on_train_end(self, args, state, control, **kwargs):
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def on_step_begin(self, args, state, control, **kwargs):
        self._bad_loss = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self.divergence is not None or model is None:
            return
        step = state.global_step + 1
        if self._bad_loss is not None:
            self.divergence = Divergence(step, "training loss", self._bad_loss)
        elif not args.fp16:
            norm = gradient_norm(model)
            if norm is not None and not math.isfinite(norm):
                self.divergence = Divergence(step, "gradient norm", norm)
        if self.divergence is not None:
            for parameter in model.parameters():
                parameter.grad = None  # the optimizer skips parameters without a gradient

    def on_step_end(self, args, state, control, **kwargs):
        return self._stop(control)

    def on_epoch_end(self, args, state, control, **kwargs):
        return self._stop(control)

    # ------------------------------------------------------------------------------------- helpers
    def _stop(self, control):
        if self.divergence is not None:
            control.should_training_stop = True
            control.should_save = control.should_evaluate = control.should_log = False
        return control

    def _check_loss(self, module, inputs, outputs) -> None:
        if self._bad_loss is not None or not module.training or not torch.is_grad_enabled():
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else getattr(outputs, "loss", None)
        if isinstance(loss, torch.Tensor) and not bool(torch.isfinite(loss.detach()).all()):
            self._bad_loss = float(loss.detach().float().reshape(-1)[0])


def gradient_norm(model: torch.nn.Module) -> float | None:
    """The 2-norm of all gradients of ``model`` in float32 (``None`` when no parameter has one)."""
    grads = [p.grad.detach() for p in model.parameters() if p.grad is not None]
    if not grads:
        return None
    device = grads[0].device
    norms = [torch.linalg.vector_norm(g, dtype=torch.float32).to(device) for g in grads]
    return float(torch.linalg.vector_norm(torch.stack(norms)))


class LogAtEverySave(TrainerCallback):
    """Log the training loss whenever a checkpoint is saved and at the last step.

    The Trainer only logs every ``logging_steps``; losses of the steps between the last log and a
    checkpoint are otherwise never recorded, and a run resumed from that checkpoint cannot know them.
    """

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_save or control.should_training_stop:
            control.should_log = True
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        if control.should_save or state.global_step >= state.max_steps:
            control.should_log = True
        return control


def mean_train_loss(log_history: list[dict[str, Any]], last_step: int, resumed_from: int | None = None) -> float | None:
    """Mean training loss over steps ``1..last_step`` from the logged losses, or ``None`` if they do not cover them.

    Each logged ``loss`` is the mean over the steps since the previous log, so it is weighted by their
    number. Coverage needs a log at ``last_step`` and, for a resumed run, one at ``resumed_from`` (what
    :class:`LogAtEverySave` guarantees).
    """
    steps = {entry["step"]: entry["loss"] for entry in log_history if "loss" in entry and "step" in entry}
    if last_step not in steps or (resumed_from and resumed_from not in steps):
        return None
    total, previous = 0.0, 0
    for step in sorted(s for s in steps if s <= last_step):
        total += steps[step] * (step - previous)
        previous = step
    return total / last_step
