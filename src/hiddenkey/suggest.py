"""Did you mean ...?" hints for unknown names (flags, tasks, methods, columns, modules)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(name: object, choices: Iterable[object], prefix: str = "") -> str:
    """``"; did you mean 'x'?"`` for the closest of ``choices`` to ``name``, or ``""`` when none is close.

    ``prefix`` is put before the suggestion (e.g. ``"--"`` for flags). Comparison ignores case and
    treats ``-`` and ``_`` alike, as the command line does.
    """
    options = [str(c) for c in choices]
    normal = {_normal(c): c for c in options}
    close = difflib.get_close_matches(_normal(str(name)), list(normal), n=1, cutoff=0.6)
    if not close:
        return ""
    best = normal[close[0]]
    return f"; did you mean {prefix}{best}?" if prefix else f"; did you mean {best!r}?"


def _normal(text: str) -> str:
    return text.strip().lower().replace("-", "_")
