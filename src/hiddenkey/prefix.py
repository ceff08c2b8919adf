"""Share the deterministic first layers between the two passes of a one-branch consistency loss.

On a decoder-only model the drops act only in the latter half of the layers, so in the paper's
one-branch mode (``backprop="one"``) the layers before the first dropping layer ``k`` compute the same
hidden state in both passes. :func:`shared_prefix` returns a :class:`SharedPrefix` that lets the
second (no-grad) pass start there:

1. ``capture()``, around the gradient pass, records the output of layer ``k-1`` and checks that layer
   ``k`` receives exactly that object: the model's layer loop hands each layer's output to the next
   with nothing in between, so the loop can be entered at ``k``.
2. ``replay()``, around the no-grad pass, makes layers ``0 .. k-1`` return that output, detached,
   without computing. Everything else is the model's own forward (embeddings, masks, rotary tables,
   layers ``k ..``, final norm, head), so no family needs code of its own.

The skipped layers draw no masks, so the second pass draws the same masks in the same order as a
full pass would: loss and gradients are those of two full passes (tested for every supported decoder,
with padding, with and without gradient checkpointing).

Where sharing is impossible both passes run the whole model, and the reason is logged once: the
drops start at layer 0 (an encoder, where every layer drops), input cutoff or an active dropout
(the model's own, or peft's ``lora_dropout``) before layer ``k`` makes the prefix stochastic, or the
layer loop cannot be entered at ``k`` (checked on every step).
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from dataclasses import dataclass, field
from typing import Any, Iterator

from torch import nn

from .attach import AttachState, base_model, find_layers, get_state
from .config import DropoutConfig

logger = logging.getLogger(__name__)

_DROPOUT_ATTRIBUTES = ("attention_dropout", "dropout", "attn_dropout")
# Per attachment: a weak reference to the layer stack, or the reason the model cannot share (computed
# and logged once). The layers hold the state through their attention plans, hence the weak reference.
_structure: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# Attachments whose layer loop turned out not to be enterable (warned once).
_warned: weakref.WeakSet = weakref.WeakSet()


class NoSharing:
    """Both passes run the whole model."""

    @contextlib.contextmanager
    def capture(self) -> Iterator[None]:
        yield

    @contextlib.contextmanager
    def replay(self) -> Iterator[None]:
        yield


NO_SHARING = NoSharing()


def _hidden(output: Any) -> Any:
    """The hidden state in a layer's output: the tensor itself, or the first item of a tuple."""
    return output[0] if isinstance(output, (tuple, list)) and output else output


def _detached(output: Any) -> Any:
    if isinstance(output, (tuple, list)):
        return type(output)(x.detach() if hasattr(x, "detach") else x for x in output)
    return output.detach()


@dataclass(eq=False)
class SharedPrefix:
    """Records the hidden state entering layer ``start`` in one pass and starts the next pass from it."""

    layers: nn.ModuleList = field(repr=False)
    start: int
    state: AttachState = field(repr=False)
    _outputs: list[Any] = field(default_factory=list, repr=False)
    _inputs: list[Any] = field(default_factory=list, repr=False)

    @contextlib.contextmanager
    def capture(self) -> Iterator[None]:
        self._outputs.clear()
        self._inputs.clear()

        def after_last_shared(module, args, output):
            self._outputs.append(output)

        def before_first_dropping(module, args, kwargs):
            self._inputs.append(args[0] if args else kwargs.get("hidden_states"))

        handles = [
            self.layers[self.start - 1].register_forward_hook(after_last_shared),
            self.layers[self.start].register_forward_pre_hook(before_first_dropping, with_kwargs=True),
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _entry(self) -> Any | None:
        """The recorded output of layer ``start - 1`` if the loop handed exactly it to layer ``start``."""
        outputs, inputs = list(self._outputs), list(self._inputs)
        self._outputs.clear()
        self._inputs.clear()
        if len(outputs) == 1 and len(inputs) == 1 and inputs[0] is _hidden(outputs[0]) and inputs[0] is not None:
            return outputs[0]
        return None

    @contextlib.contextmanager
    def replay(self) -> Iterator[None]:
        entry = self._entry()
        if entry is None:
            if self.state not in _warned:
                _warned.add(self.state)
                logger.warning(
                    "hiddenkey: the layer loop does not hand layer %d's output straight to layer %d, so the two "
                    "consistency passes cannot share layers 0-%d; each pass runs the whole model",
                    self.start - 1, self.start, self.start - 1,
                )
            yield
            return
        cached = _detached(entry)

        def shared(*args: Any, **kwargs: Any) -> Any:
            return cached

        skipped = list(self.layers[: self.start])
        # An instance attribute shadows the class's forward; module hooks still run around it. Wrappers
        # that set ``forward`` on the instance themselves (accelerate's hooks) get theirs back afterwards.
        previous = [layer.__dict__.get("forward") for layer in skipped]
        for layer in skipped:
            layer.forward = shared
        try:
            yield
        finally:
            for layer, forward in zip(skipped, previous):
                if forward is None:
                    del layer.forward
                else:
                    layer.forward = forward


def _stochastic_module(base: nn.Module, layers: nn.ModuleList, start: int) -> str | None:
    """The first module outside the dropping layers that would draw random numbers in train mode."""
    late = {id(m) for layer in layers[start:] for m in layer.modules()}
    for name, module in base.named_modules():
        if id(module) in late:
            continue
        if isinstance(module, nn.Dropout) and module.p > 0:
            return f"{name} (dropout p={module.p:g})"
        if "Attention" in type(module).__name__:
            for attr in _DROPOUT_ATTRIBUTES:
                value = getattr(module, attr, None)
                if isinstance(value, float) and value > 0:
                    return f"{name}.{attr}={value:g}"
    return None


def _model_structure(base: nn.Module, state: AttachState) -> weakref.ref | str:
    """A weak reference to the layer stack, or why the passes cannot share its first layers."""
    if not state.layer_indices:
        return "no layer drops"
    start = state.layer_indices[0]
    if start == 0:
        return f"the drops start at layer 0 (layers={state.config.layers!r})"
    if state.config.input_rate > 0:
        return "input cutoff makes the embeddings entering layer 0 stochastic"
    layers = find_layers(base)
    stochastic = _stochastic_module(base, layers, start)
    if stochastic is not None:
        return f"{stochastic} draws random numbers before layer {start}"
    return weakref.ref(layers)


def shared_prefix(model: nn.Module, config: DropoutConfig) -> SharedPrefix | NoSharing:
    """How the two passes of one batch share the layers before the first dropping layer.

    ``model`` carries an attachment; ``config`` is the one the loss runs with. Returns
    :data:`NO_SHARING` unless ``config.backprop == "one"`` and ``config.share_prefix``, and when the
    model cannot share (logged once).
    """
    if config.backprop != "one" or not config.share_prefix:
        return NO_SHARING
    base = base_model(model)
    state = get_state(model)
    if state not in _structure:
        _structure[state] = _model_structure(base, state)
        if isinstance(_structure[state], str):
            logger.info(
                "hiddenkey: the two consistency passes of %s run the whole model each (%s)",
                type(base).__name__, _structure[state],
            )
    structure = _structure[state]
    if isinstance(structure, str):
        return NO_SHARING
    return SharedPrefix(structure(), state.layer_indices[0], state)
