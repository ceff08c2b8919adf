"""Measured fraction dropped per position, so a run can show that its drops happen at the asked rate.

Every drop site of a metered attachment adds the number of entries its keep mask dropped (a 0-d tensor
on the mask's device, added without reading it) and the number it drew (a Python int, known from the
shape). Nothing is read back until :meth:`DropMeter.read`, which synchronises once for all positions:
on a GPU the steps in between run without any extra host-device synchronisation.

The fraction is over the entries of the mask each pattern draws (see :mod:`hiddenkey.ops`): one per
(sample, head, key) for column DropKey, one per hidden unit for element HiddenCut, one per position
for span patterns. Masks drawn over padding count like any other. A gradient-checkpointed layer draws
its mask again when it is recomputed, and both draws count; the fraction is unchanged in expectation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .attach import get_state
from .config import POSITIONS


@dataclass(eq=False)
class DropMeter:
    """Dropped and drawn mask entries per position since the last :meth:`read`."""

    dropped: dict[str, torch.Tensor] = field(default_factory=dict)
    drawn: dict[str, int] = field(default_factory=dict)

    def record(self, position: str, keep: torch.Tensor) -> None:
        """Count a boolean keep mask (any shape) drawn at ``position``."""
        dropped = keep.numel() - keep.sum()
        previous = self.dropped.get(position)
        # Out of place: the sum may be made under inference mode or no_grad and added to outside them.
        self.dropped[position] = dropped if previous is None else previous + dropped
        self.drawn[position] = self.drawn.get(position, 0) + keep.numel()

    def read(self, reset: bool = True) -> dict[str, float]:
        """Fraction dropped per position (in :data:`POSITIONS` order) since the last reset; one sync."""
        positions = [p for p in POSITIONS if self.drawn.get(p)]
        device = self.dropped[positions[0]].device if positions else None
        counts = torch.stack([self.dropped[p].to(device) for p in positions]).tolist() if positions else []
        fractions = {p: count / self.drawn[p] for p, count in zip(positions, counts)}
        if reset:
            self.dropped.clear()
            self.drawn.clear()
        return fractions


def measure_drops(model: nn.Module) -> DropMeter:
    """Start measuring the drops of an attached ``model`` and return its meter (the same one if already on).

    ``hiddenkey.Trainer`` does this itself and logs ``meter.read()`` as ``drop_fraction_<position>``.
    """
    state = get_state(model)
    if state.meter is None:
        state.meter = DropMeter()
    return state.meter


def stop_measuring(model: nn.Module) -> None:
    get_state(model).meter = None
