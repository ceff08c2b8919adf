"""Sweep and tune specs: a file of ``hiddenkey train`` arguments, turned into checked command lines.

A spec is YAML or JSON with these keys::

    train:                      # hiddenkey train arguments shared by every run (same names as the flags)
      task_name: rotten_tomatoes
      max_train_samples: 1000
    grid:                       # a mapping: the cartesian product of its lists
      method: [baseline, hiddenkey]
      seed: [1, 2, 3]

``grid`` may also be a list of such mappings: the union of their products, in order (the convention of
scikit-learn's ``ParameterGrid``). That expresses cells that are not a product, e.g. each method with its
own pattern flag::

    grid:
      - {method: [baseline], seed: [1, 2, 3]}
      - {method: [dropkey], logits_pattern: [element, column, span], seed: [1, 2, 3]}

``hiddenkey tune`` reads the same ``train`` key and a ``search`` key instead of ``grid``
(see :mod:`hiddenkey.cli.tune`). Every command line a spec yields is parsed by ``hiddenkey train``'s own
parser before anything runs, so a value that command would reject is an error here too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .arguments import parse_train_args, train_parser
from .errors import CLIError

#: Set by the sweep itself for every run, so a spec may not set them.
RESERVED = ("output_dir", "overwrite", "resume")
ALIASES = {"model": "model_name_or_path"}
SLUG_LIMIT = 100


@dataclass(frozen=True)
class GridPoint:
    """One configuration of a sweep: the grid values, in spec order."""

    values: tuple[tuple[str, Any], ...]

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.values)

    @property
    def key(self) -> str:
        """Canonical identity of the configuration (stable across runs and machines)."""
        return json.dumps(self.params, sort_keys=True, separators=(",", ":"))

    def label(self, skip: tuple[str, ...] = ()) -> str:
        return " ".join(f"{k}={_show(v)}" for k, v in self.values if k not in skip) or "(shared settings)"


def _show(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


# ------------------------------------------------------------------------------------------- files
def read_spec(path: str | Path) -> dict[str, Any]:
    """The spec file as a mapping; one-line errors for a missing file or a malformed document."""
    p = Path(path)
    if not p.is_file():
        raise CLIError(f"spec file not found: {p}")
    import yaml

    text = p.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CLIError(f"{p}: not valid {'JSON' if p.suffix == '.json' else 'YAML'}: {reason}") from None
    if not isinstance(data, dict):
        raise CLIError(f"{p}: a spec is a mapping with the keys 'train' and 'grid', got {type(data).__name__}")
    return data


def check_keys(data: dict[str, Any], allowed: tuple[str, ...], required: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise CLIError(f"{where}: unknown key(s) {unknown}; a spec has {', '.join(allowed)}")
    missing = [k for k in required if k not in data]
    if missing:
        raise CLIError(f"{where}: missing key(s) {missing}")


# ------------------------------------------------------------------------------------------- names
def train_argument_names() -> set[str]:
    parser = train_parser()
    return {f.name for dtype in parser.dataclass_types for f in dataclasses.fields(dtype)}


def canonical_name(name: Any, known: set[str], where: str) -> str:
    """A spec key as a ``hiddenkey train`` argument name (dashes or underscores; ``model`` alias)."""
    if not isinstance(name, str):
        raise CLIError(f"{where}: argument names are strings, got {name!r}")
    key = ALIASES.get(name.replace("-", "_"), name.replace("-", "_"))
    if key in RESERVED:
        raise CLIError(f"{where}: '{name}' is set by the sweep for each run; remove it from the spec")
    if key not in known:
        import difflib

        close = difflib.get_close_matches(key, sorted(known), n=3)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise CLIError(f"{where}: '{name}' is not a hiddenkey train argument{hint}")
    return key


def normalise_train(train: Any, known: set[str]) -> dict[str, Any]:
    if train is None:
        return {}
    if not isinstance(train, dict):
        raise CLIError(f"spec 'train' must be a mapping of hiddenkey train arguments, got {type(train).__name__}")
    return {canonical_name(k, known, "train"): v for k, v in train.items()}


# ------------------------------------------------------------------------------------------- grid
def expand_grid(grid: Any, known: set[str], shared: dict[str, Any]) -> list[GridPoint]:
    """Every configuration of ``grid`` (a mapping, or a list of mappings), duplicates removed, in order."""
    if isinstance(grid, dict):
        blocks = [grid]
    elif isinstance(grid, list) and grid and all(isinstance(b, dict) for b in grid):
        blocks = grid
    else:
        raise CLIError("spec 'grid' must be a mapping from argument names to lists of values, or a list of such mappings")
    points: list[GridPoint] = []
    for index, block in enumerate(blocks):
        where = "grid" if isinstance(grid, dict) else f"grid[{index}]"
        if not block:
            raise CLIError(f"{where} is empty")
        axes = []
        for name, values in block.items():
            key = canonical_name(name, known, where)
            if key in shared:
                raise CLIError(f"{where}: '{name}' is set both in 'train' and in the grid")
            if not isinstance(values, list) or not values:
                raise CLIError(f"{where}: '{name}' needs a non-empty list of values, got {values!r}")
            axes.append([(key, v) for v in values])
        points.extend(GridPoint(tuple(combo)) for combo in itertools.product(*axes))
    unique = list(dict.fromkeys(points))
    return unique


# ------------------------------------------------------------------------------------------- argv
def to_argv(arguments: dict[str, Any]) -> list[str]:
    """``--name value`` tokens for ``hiddenkey train``; list values become several tokens (``nargs``)."""
    list_fields = _list_fields()
    argv: list[str] = []
    for name, value in arguments.items():
        if value is None:
            continue
        argv.append(f"--{name}")
        if isinstance(value, bool):
            argv.append("true" if value else "false")
        elif isinstance(value, list):
            argv.extend(str(v) for v in value) if name in list_fields else argv.append(",".join(map(str, value)))
        elif isinstance(value, dict):
            argv.append(json.dumps(value))
        else:
            argv.append(str(value))
    return argv


def _list_fields() -> set[str]:
    parser = train_parser()
    return {a.dest for a in parser._actions if a.nargs in ("+", "*")}


def check_argv(argv: list[str], where: str) -> Any:
    """Parse ``argv`` exactly as ``hiddenkey train`` would; any rejection becomes one line naming ``where``."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return parse_train_args(argv)
    except SystemExit:
        lines = [line for line in stderr.getvalue().strip().splitlines() if line.strip()]
        reason = lines[-1].split("error:", 1)[-1].strip() if lines else "rejected by hiddenkey train"
        raise CLIError(f"{where}: {reason}") from None
    except CLIError as err:
        raise CLIError(f"{where}: {err}") from None
    except ValueError as err:  # ConfigError, DataError and the libraries' own validation
        raise CLIError(f"{where}: {str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__}") from None


def slugs(points: list[GridPoint]) -> dict[str, str]:
    """A readable, unique folder name per configuration (``method-dropkey_seed-1``)."""
    out: dict[str, str] = {}
    for point in points:
        text = "_".join(f"{k}-{_show(v)}" for k, v in point.values) or "default"
        slug = re.sub(r"[^A-Za-z0-9._,=+-]+", "-", text).strip("-")
        if len(slug) > SLUG_LIMIT or slug != text:
            slug = f"{slug[:SLUG_LIMIT]}-{hashlib.sha1(point.key.encode()).hexdigest()[:8]}"
        out[point.key] = slug
    if len(set(out.values())) != len(out):  # two texts mapped to one name: make every name unique
        out = {k: f"{v}-{hashlib.sha1(k.encode()).hexdigest()[:8]}" for k, v in out.items()}
    return out


def spec_digest(payload: Any) -> str:
    return hashlib.sha1(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:10]
