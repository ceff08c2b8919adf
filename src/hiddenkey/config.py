"""Configuration of the unified dropout framework: one dataclass, three axes.

* Position: ``input`` (cutoff on input embeddings), ``logits`` (DropKey, before the softmax), ``weights``
  (DropAttention, after the softmax, with normalized rescaling), ``hidden`` (HiddenCut on the FFN output),
  ``output`` (dropout on the representation that enters the head).
* Pattern: ``element``, ``column``, ``span`` (see :mod:`hiddenkey.ops` for the exact mask shapes).
* Compensation: each method's own rescaling, plus an optional consistency loss between two stochastic
  passes: bidirectional KL (R-Drop style, Eq. 11) or a JS-type loss (Eq. 12).

Every field carries ``metadata={"help": ...}`` so the dataclass doubles as command-line help through
``transformers.HfArgumentParser`` (the peft ``LoraConfig`` convention). The config is saved beside the
adapter as ``hiddenkey_config.json``; it never goes into ``LoraConfig``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .suggest import did_you_mean

POSITIONS = ("input", "logits", "weights", "hidden", "output")
PATTERNS = ("element", "column", "span")
CONSISTENCY_LOSSES = ("none", "kl", "js")
BACKPROP_MODES = ("one", "both")
JS_REFERENCES = ("inference", "mixture")
REGRESSION_CONSISTENCY = ("mse", "hidden_kl")
LAYER_CHOICES = ("auto", "all", "latter_half")
CONFIG_NAME = "hiddenkey_config.json"

POSITION_NAMES = {
    "input": "input cutoff",
    "logits": "DropKey",
    "weights": "DropAttention",
    "hidden": "HiddenCut",
    "output": "output dropout",
}


class ConfigError(ValueError):
    """A dropout configuration that cannot be honoured; raised before any training step."""


@dataclass(frozen=True)
class DropSpec:
    """One drop site: where, how structured, how much. Immutable, so modules can share it safely."""

    position: str
    rate: float
    pattern: str = "element"
    span_ratio: float = 0.1
    stop_gradient: bool = True
    rescale_structured: bool = False
    keep_first_keys: int = 0

    @property
    def active(self) -> bool:
        return self.rate > 0.0


def _help(text: str, **extra: Any) -> dict[str, Any]:
    return {"help": text, **extra}


@dataclass
class DropoutConfig:
    """Which dropouts of the unified framework to apply, where, and how to compensate for them."""

    method: str = field(
        default="custom",
        metadata=_help("Name of the preset this config came from (informational; use DropoutConfig.preset)."),
    )
    input_rate: float = field(default=0.0, metadata=_help("Input cutoff rate on the input embeddings (Shen et al., 2020)."))
    input_pattern: str = field(
        default="span", metadata=_help("Input cutoff pattern: element | column (embedding dims) | span (token spans).")
    )
    logits_rate: float = field(default=0.0, metadata=_help("DropKey rate on attention logits (before the softmax)."))
    logits_pattern: str = field(
        default="column", metadata=_help("DropKey pattern: element (query,key) | column (key, all queries) | span.")
    )
    weights_rate: float = field(
        default=0.0, metadata=_help("DropAttention rate on attention weights (after the softmax, normalized rescaling).")
    )
    weights_pattern: str = field(default="element", metadata=_help("DropAttention pattern: element | column | span."))
    weights_stop_gradient: bool = field(
        default=True,
        metadata=_help(
            "Stop the gradient through DropAttention's normaliser (Eq. 2, the paper's 'DropAttention'). "
            "Without it DropAttention equals DropKey in forward and backward."
        ),
    )
    hidden_rate: float = field(default=0.0, metadata=_help("HiddenCut rate on the FFN hidden representations."))
    hidden_pattern: str = field(
        default="element",
        metadata=_help("HiddenCut pattern: element | column (hidden dims, all tokens) | span (token spans)."),
    )
    output_rate: float = field(default=0.0, metadata=_help("Dropout rate on the representation entering the head."))
    output_pattern: str = field(default="element", metadata=_help("Output dropout pattern: element | column | span."))
    span_ratio: float = field(
        default=0.1, metadata=_help("Span length as a fraction of the (padded) sequence length, for span patterns.")
    )
    rescale_structured: bool = field(
        default=False,
        metadata=_help(
            "Rescale column/span drops of hidden states by 1/(1-p) like element drops "
            "(the original HiddenCut and Cutoff zero spans without rescaling)."
        ),
    )
    layers: str = field(
        default="auto",
        metadata=_help(
            "Layers that drop (logits, weights, hidden): auto (latter half for decoder-only models, all otherwise), "
            "all, latter_half, or comma-separated layer indices (0-based; negative ones count from the last layer, "
            "-1 = the last, as in Python)."
        ),
    )
    consistency: str = field(
        default="none", metadata=_help("Consistency loss between two stochastic passes: none | kl | js.")
    )
    consistency_weight: float = field(default=1.0, metadata=_help("Weight of the consistency loss (KL or JS)."))
    backprop: str = field(
        default="one",
        metadata=_help(
            "one: the second pass runs under no_grad (the paper's choice, ~1.5x a step); "
            "both: both passes carry gradients through a duplicated batch (R-Drop)."
        ),
    )
    share_prefix: bool = field(
        default=True,
        metadata=_help(
            "With backprop=one, run the layers before the first dropping layer once: the no-grad pass starts "
            "from the gradient pass's detached hidden state there (decoder-only models drop in the latter half "
            "only). Same loss and gradients as two full passes; models that cannot share run both passes fully."
        ),
    )
    consistency_chunk_size: int = field(
        default=0,
        metadata=_help(
            "Rows (tokens) per chunk of a vocabulary-sized consistency loss, which is reduced chunk by chunk "
            "so no float32 tokens x vocab temporary is built. 0: about 2^18 logits per chunk on CPU, 2^24 on GPU."
        ),
    )
    js_reference: str = field(
        default="inference",
        metadata=_help(
            "JS loss reference: inference (KL(P1||P_inference), Eq. 12 as transcribed) | "
            "mixture (true JS between two stochastic passes, HiddenCut's code)."
        ),
    )
    regression_consistency: str = field(
        default="mse",
        metadata=_help(
            "Consistency for regression heads (STS-B): mse between the two predictions (fairseq R-Drop) | "
            "hidden_kl (symmetric KL of softmax over the last layer's hidden states, the paper's wording)."
        ),
    )
    disable_model_dropout: bool = field(
        default=True,
        metadata=_help("Turn the model's own dropouts off (the paper disables dropout in baselines)."),
    )
    rank_seed_offset: int = field(
        default=1000,
        metadata=_help(
            "Per-rank mask stream: when training starts, rank r > 0 of a multi-process run reseeds torch's default "
            "generator with seed + r * offset, so ranks draw different masks (rank 0 and single-process runs are "
            "unchanged; initialisation and data order are fixed before). 0 = every rank draws the same masks."
        ),
    )
    keep_first_keys: int = field(
        default=0,
        metadata=_help(
            "Never drop the first k visible keys of a sequence (DropKey and DropAttention, every pattern). "
            "Pretrained decoders park much of their attention on the first token (an attention sink); "
            "dropping its key can make the loss spike. 0 treats every key alike (the paper)."
        ),
    )
    dropkey_bias: float = field(
        default=1e4,
        metadata=_help(
            "Finite negative offset added to dropped logits. Structural masks keep finfo.min, so a row whose "
            "visible keys are all dropped falls back to the undropped row instead of NaN."
        ),
    )

    def __post_init__(self) -> None:
        self.validate()

    # ----------------------------------------------------------------------------------------- presets
    @classmethod
    def preset(cls, name: str, rate: float = 0.1, **overrides: Any) -> DropoutConfig:
        """Build a named configuration.

        Names: ``baseline`` (no dropout at all), ``dropkey``, ``dropattention``, ``hiddencut`` (each accepts
        ``pattern=``), ``hiddenkey-`` (column DropKey + element HiddenCut), ``hiddenkey`` (the same plus
        bidirectional KL with one-branch backprop). ``kl_weight=`` is accepted as an alias of
        ``consistency_weight``; ``hidden_rate=``/``logits_rate=`` override the shared ``rate``.
        """
        if not isinstance(name, str):
            raise ConfigError(f"method must be a preset name (a string), got {type(name).__name__} {name!r}")
        key = preset_key(name)
        if key not in PRESETS:
            raise ConfigError(
                f"unknown method {name!r}; choose one of: {', '.join(PRESETS)}" + did_you_mean(name, PRESETS)
            )
        _check_number("rate", rate)
        overrides = dict(overrides)
        known = [f.name for f in dataclasses.fields(cls) if f.name != "method"] + ["kl_weight", "pattern"]
        unknown = sorted(set(overrides) - set(known))
        if unknown:
            raise ConfigError(f"unknown DropoutConfig fields: {unknown}" + did_you_mean(unknown[0], known))
        if "kl_weight" in overrides:
            overrides["consistency_weight"] = overrides.pop("kl_weight")
        pattern = overrides.pop("pattern", None)
        fields = PRESETS[key](rate, pattern)
        fields.update(overrides)
        return cls(method=key, **fields)

    # ----------------------------------------------------------------------------------------- views
    def spec(self, position: str) -> DropSpec:
        return DropSpec(
            position=position,
            rate=getattr(self, f"{position}_rate"),
            pattern=getattr(self, f"{position}_pattern"),
            span_ratio=self.span_ratio,
            stop_gradient=self.weights_stop_gradient,
            rescale_structured=self.rescale_structured,
            keep_first_keys=self.keep_first_keys if position in ("logits", "weights") else 0,
        )

    def active_specs(self) -> dict[str, DropSpec]:
        return {p: s for p in POSITIONS if (s := self.spec(p)).active}

    @property
    def uses_attention(self) -> bool:
        return self.logits_rate > 0 or self.weights_rate > 0

    @property
    def uses_consistency(self) -> bool:
        return self.consistency != "none" and self.consistency_weight > 0

    def layer_indices(self, num_layers: int, decoder_only: bool) -> list[int]:
        """Indices of the layers that drop. 'Latter half' starts at ``num_layers // 2``."""
        choice = self.layers.strip().lower()
        if choice == "all" or (choice == "auto" and not decoder_only):
            return list(range(num_layers))
        if choice in ("latter_half", "auto"):
            return list(range(num_layers // 2, num_layers))
        indices = sorted(set(_layer_list(self.layers)))
        bad = [i for i in indices if not -num_layers <= i < num_layers]
        if bad:
            raise ConfigError(
                f"layers {bad} out of range for a model with {num_layers} layers "
                f"(allowed: 0..{num_layers - 1}, or -{num_layers}..-1 counted from the last)"
            )
        resolved = [i % num_layers for i in indices]
        twice = sorted({i for i in resolved if resolved.count(i) > 1})
        if twice:
            both = [i for i in indices if i % num_layers == twice[0]]
            raise ConfigError(
                f"layers {self.layers!r} names layer {twice[0]} twice ({both[0]} and {both[1]} in a model with "
                f"{num_layers} layers); give each layer once"
            )
        return sorted(resolved)

    # ----------------------------------------------------------------------------------------- checks
    def validate(self) -> None:
        """Raise :class:`ConfigError` for a wrong type or an unusable value of any field."""
        for f in dataclasses.fields(self):
            _check_type(f.name, f.type, getattr(self, f.name))
        if self.method != "custom" and preset_key(self.method) not in PRESETS:
            raise ConfigError(
                f"unknown method {self.method!r}; choose one of: custom, {', '.join(PRESETS)}"
                + did_you_mean(self.method, [*PRESETS, "custom"])
            )
        for position in POSITIONS:
            rate = getattr(self, f"{position}_rate")
            if not 0.0 <= rate < 1.0:
                raise ConfigError(f"{position}_rate must be in [0, 1), got {rate!r}")
            pattern = getattr(self, f"{position}_pattern")
            if pattern not in PATTERNS:
                raise ConfigError(
                    f"{position}_pattern must be one of {PATTERNS}, got {pattern!r}" + did_you_mean(pattern, PATTERNS)
                )
        if not 0.0 < self.span_ratio <= 1.0:
            raise ConfigError(f"span_ratio must be in (0, 1], got {self.span_ratio!r}")
        for name, allowed in (
            ("consistency", CONSISTENCY_LOSSES),
            ("backprop", BACKPROP_MODES),
            ("js_reference", JS_REFERENCES),
            ("regression_consistency", REGRESSION_CONSISTENCY),
        ):
            value = getattr(self, name)
            if value not in allowed:
                raise ConfigError(f"{name} must be one of {allowed}, got {value!r}" + did_you_mean(value, allowed))
        if self.consistency_weight < 0:
            raise ConfigError(f"consistency_weight must be a finite number >= 0, got {self.consistency_weight!r}")
        if not isinstance(self.rank_seed_offset, int) or isinstance(self.rank_seed_offset, bool) or self.rank_seed_offset < 0:
            raise ConfigError(f"rank_seed_offset must be an integer >= 0, got {self.rank_seed_offset!r}")
        for name in ("consistency_chunk_size", "keep_first_keys"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be an integer >= 0, got {value!r}")
        if not self.dropkey_bias > 0:
            raise ConfigError(f"dropkey_bias must be a finite number > 0, got {self.dropkey_bias!r}")
        choice = self.layers.strip().lower()
        if choice not in LAYER_CHOICES:
            _layer_list(self.layers)
        if self.consistency == "js" and self.js_reference == "inference" and self.backprop == "both":
            raise ConfigError("backprop='both' needs two stochastic passes; js_reference='inference' has one")

    # ----------------------------------------------------------------------------------------- io
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DropoutConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"a DropoutConfig needs a mapping of field names to values, got {type(data).__name__}")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(str(k) for k in set(data) - set(known))
        if unknown:
            raise ConfigError(f"unknown DropoutConfig fields: {unknown}" + did_you_mean(unknown[0], known))
        return cls(**data)

    def save(self, path: str | Path) -> Path:
        """Write JSON (or YAML for a .yaml/.yml path). A directory gets ``hiddenkey_config.json``."""
        path = Path(path)
        if path.is_dir():
            path = path / CONFIG_NAME
        if path.suffix in (".yaml", ".yml"):
            import yaml

            text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        else:
            text = json.dumps(self.to_dict(), indent=2) + "\n"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> DropoutConfig:
        path = Path(path)
        if path.is_dir():
            path = path / CONFIG_NAME
        if not path.is_file():
            raise ConfigError(f"no dropout config at {path}")
        try:
            text = path.read_text(encoding="utf-8")
            if path.suffix in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text)
            else:
                data = json.loads(text)
        except (UnicodeDecodeError, ValueError) as err:  # JSONDecodeError is a ValueError
            raise ConfigError(f"{path} is not a valid dropout config file: {' '.join(str(err).split())}") from None
        except Exception as err:  # yaml.YAMLError and friends
            raise ConfigError(f"{path} is not valid YAML: {' '.join(str(err).split())}") from None
        return cls.from_dict(data)

    def consistency_name(self, regression: bool = False) -> str:
        """The consistency loss that actually runs: on a regression head, ``kl``/``js`` become MSE (or hidden KL)."""
        if regression:
            return "MSE" if self.regression_consistency == "mse" else "hidden-state KL"
        return self.consistency.upper()

    def describe(self, regression: bool = False) -> str:
        """One line saying what trains, e.g. ``DropKey(column, p=0.1) + KL(w=1, backprop=one)``.

        ``regression=True`` names the consistency loss used with a regression head (see
        ``regression_consistency``).
        """
        parts = [f"{POSITION_NAMES[p]}({s.pattern}, p={s.rate:g})" for p, s in self.active_specs().items()]
        if self.uses_consistency:
            name = self.consistency_name(regression)
            parts.append(f"{name}(w={self.consistency_weight:g}, backprop={self.backprop})")
        return " + ".join(parts) if parts else "no dropout"


def preset_key(name: str) -> str:
    """``"HiddenKey⁻"`` -> ``"hiddenkey-"``: the key of a preset name in :data:`PRESETS`."""
    return name.lower().replace("_", "-").replace("−", "-").replace("⁻", "-")


#: What each number field allows, for the messages (the checks are in :meth:`DropoutConfig.validate`).
NUMBER_RANGES = {
    **{f"{p}_rate": "in [0, 1)" for p in POSITIONS},
    "rate": "in [0, 1)",
    "span_ratio": "in (0, 1]",
    "consistency_weight": ">= 0",
    "dropkey_bias": "> 0",
}


def _check_number(name: str, value: Any) -> None:
    allowed = f"a finite number {NUMBER_RANGES.get(name, '')}".rstrip()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{name} must be {allowed}, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be {allowed}, got {value!r}")


def _check_type(name: str, annotation: Any, value: Any) -> None:
    """Type check of one field (annotations are strings here: ``float``, ``str`` or ``bool``)."""
    kind = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    if kind == "float":
        _check_number(name, value)
    elif kind == "bool" and not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {type(value).__name__} {value!r}")
    elif kind == "str" and not isinstance(value, str):
        hint = " (e.g. 'auto', 'all', 'latter_half' or '0,3,5')" if name == "layers" else ""
        raise ConfigError(f"{name} must be a string{hint}, got {type(value).__name__} {value!r}")


def _layer_list(layers: str) -> list[int]:
    """``"0, 3,-1"`` -> ``[0, 3, -1]``; ConfigError for anything else (empty, words, repeats)."""
    allowed = f"one of {LAYER_CHOICES} or comma-separated layer indices such as '0,3,5' or '-1'"
    tokens = [tok.strip() for tok in layers.split(",")]
    try:
        indices = [int(tok) for tok in tokens]
    except ValueError:
        raise ConfigError(f"layers must be {allowed}, got {layers!r}" + did_you_mean(layers, LAYER_CHOICES)) from None
    repeated = sorted({i for i in indices if indices.count(i) > 1})
    if repeated:
        raise ConfigError(f"layers {layers!r} names layer {repeated[0]} twice; allowed: {allowed}")
    return indices


def _pattern(pattern: str | None, default: str) -> str:
    if pattern is not None and pattern not in PATTERNS:
        raise ConfigError(f"pattern must be one of {PATTERNS}, got {pattern!r}" + did_you_mean(pattern, PATTERNS))
    return default if pattern is None else pattern


PRESETS = {
    "baseline": lambda rate, pattern: {},
    "dropkey": lambda rate, pattern: {"logits_rate": rate, "logits_pattern": _pattern(pattern, "column")},
    "dropattention": lambda rate, pattern: {"weights_rate": rate, "weights_pattern": _pattern(pattern, "element")},
    "hiddencut": lambda rate, pattern: {"hidden_rate": rate, "hidden_pattern": _pattern(pattern, "element")},
    "hiddenkey-": lambda rate, pattern: {
        "logits_rate": rate,
        "logits_pattern": "column",
        "hidden_rate": rate,
        "hidden_pattern": "element",
    },
    "hiddenkey": lambda rate, pattern: {
        "logits_rate": rate,
        "logits_pattern": "column",
        "hidden_rate": rate,
        "hidden_pattern": "element",
        "consistency": "kl",
        "backprop": "one",
    },
}

#: One line per preset (the CLI's ``--method`` help and the README).
PRESET_SUMMARIES = {
    "baseline": "no dropout at all: the model's own dropouts are switched off (the paper's baseline)",
    "dropkey": "DropKey: drop attention logits before the softmax (pattern: column)",
    "dropattention": "DropAttention: drop attention weights after the softmax, normalised rescaling (pattern: element)",
    "hiddencut": "HiddenCut: drop the FFN output (pattern: element)",
    "hiddenkey-": "column DropKey + element HiddenCut, no consistency loss",
    "hiddenkey": "column DropKey + element HiddenCut + bidirectional KL between two passes (the paper's method)",
}
