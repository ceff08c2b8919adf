"""Where an attachment drops: :func:`print_drop_sites`, the counterpart of peft's ``print_trainable_parameters``."""

from __future__ import annotations

from torch import nn

from .attach import drop_summary, get_state
from .config import POSITION_NAMES, POSITIONS

COLUMNS = ("layer", "position", "method", "pattern", "rate", "module")


def _ranges(indices: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2, 5"``."""
    runs: list[list[int]] = []
    for i in indices:
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return ", ".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs)


def drop_sites(model: nn.Module) -> list[dict[str, str]]:
    """One row per active drop site of an attached ``model``, with :data:`COLUMNS` as keys, in model order.

    ``module`` is the site's path in ``model`` as given (a ``PeftModel`` path for a peft model).
    """
    state = get_state(model)
    paths = {id(m): name for name, m in model.named_modules()}

    def order(site):
        # the embeddings first, then layer by layer in position order, the head last
        layer = -1 if site.spec.position == "input" else state.num_layers if site.layer is None else site.layer
        return layer, POSITIONS.index(site.spec.position)

    return [
        {
            "layer": "-" if site.layer is None else str(site.layer),
            "position": site.spec.position,
            "method": POSITION_NAMES[site.spec.position],
            "pattern": site.spec.pattern,
            "rate": f"{site.spec.rate:g}",
            "module": paths.get(id(site.module), type(site.module).__name__),
        }
        for site in sorted(state.sites, key=order)
    ]


def drop_sites_table(model: nn.Module) -> str:
    """The text :func:`print_drop_sites` prints."""
    state = get_state(model)
    rows = drop_sites(model)
    lines = [f"hiddenkey: {drop_summary(model)}"]
    if rows:
        widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in COLUMNS}
        lines.append("  ".join(c.ljust(widths[c]) for c in COLUMNS).rstrip())
        lines += ["  ".join(r[c].ljust(widths[c]) for c in COLUMNS).rstrip() for r in rows]
    dropping = {s.layer for s in state.sites if s.layer is not None}
    quiet = [i for i in range(state.num_layers) if i not in dropping]
    lines.append(f"layers without drops: {_ranges(quiet)}" if quiet else "every layer drops")
    if not state.enabled:
        lines.append("drops are switched off right now (inside hiddenkey.drops_disabled)")
    if state.config.disable_model_dropout:
        lines.append("the model's own dropouts are set to 0 (disable_model_dropout)")
    return "\n".join(lines)


def print_drop_sites(model: nn.Module) -> None:
    """Print every active drop site of an attached ``model`` (layer, position, pattern, rate, module
    path) and the layers that do not drop."""
    print(drop_sites_table(model))
