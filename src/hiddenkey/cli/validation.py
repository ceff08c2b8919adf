"""Every check of ``hiddenkey train`` arguments that needs no model weights, run by ``parse_train_args``.

A bad argument is a one-line :class:`CLIError` / :class:`ConfigError` / :class:`DataError` that names
the bad value and what is allowed, raised before any model is loaded and before the run folder exists.
Checks that belong to a library are that library's own: ``TrainingArguments.__post_init__`` runs here
(its exception becomes the one-line error), and peft injects the LoRA settings into a stand-in module
so that peft's own checks run before the real model loads.

Kinds of checks, in the order ``parse_train_args`` runs them:

* the command line itself: unknown flags (with "did you mean"), values of the wrong type, a config
  file that is missing, not UTF-8, not valid JSON/YAML, not a mapping, or holds unknown keys;
* every number against its range (:data:`NUMBER_RULES`; DropoutConfig checks its own fields);
* flags that contradict each other or would be ignored (a preset with a drop added or removed, a rate
  that no drop uses, settings of a drop or loss that is off, ``--resume`` with ``--overwrite``, data
  files given to a task that does not read them, ...);
* the data files (exist, are files, non-empty, UTF-8, a supported format), the output folder (not
  below a file, writable), the attention implementation (known, installed, fit for the drops), the
  reporting integrations (known, installed), and the model's config (found, layer indices and
  ``max_seq_length`` within the model's size).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import POSITION_NAMES, POSITIONS, PRESETS, ConfigError, DropoutConfig, preset_key
from ..suggest import did_you_mean
from ..tasks import DataError, decode_text, read_text
from .errors import CLIError

NLU_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl")
NLG_SUFFIXES = {"e2e": (".csv", ".txt"), "webnlg": (".xml", ".json")}
GENERATION_TASKS = ("e2e", "webnlg")
DATA_FILES = ("train_file", "validation_file", "test_file")


def one_line(err: BaseException) -> str:
    """An exception's message with its line breaks and runs of spaces collapsed."""
    text = " ".join(str(err).split())
    return text or type(err).__name__


# ------------------------------------------------------------------------------------------- the command line
def parse_known(parser: argparse.ArgumentParser, argv: list[str], command: str) -> argparse.Namespace:
    """argparse without its two-line usage errors, prefix matching, or silently ignored leftovers."""
    parser.allow_abbrev = False  # --max_step must not quietly mean --max_steps
    parser.prog = command

    def error(message: str):
        raise CLIError(_explain_argparse_error(parser, message))

    parser.error = error  # type: ignore[method-assign]
    namespace, remaining = parser.parse_known_args(argv)
    if remaining:
        raise CLIError(_explain_leftovers(parser, remaining))
    return namespace


def option_names(parser: argparse.ArgumentParser) -> list[str]:
    """Every ``--flag`` in its underscore spelling (the dashed aliases are the same flags)."""
    return sorted({s for action in parser._actions for s in action.option_strings if s.startswith("--") and "-" not in s[2:]})


def _explain_leftovers(parser: argparse.ArgumentParser, remaining: list[str]) -> str:
    flags = [tok.split("=")[0] for tok in remaining if tok.startswith("-")]
    if flags:
        names = option_names(parser)
        return (
            f"unknown flag {flags[0]}" + did_you_mean(flags[0].lstrip("-"), [n[2:] for n in names], prefix="--")
            + f"; {parser.prog} --help lists every flag"
        )
    first = remaining[0]
    if first.endswith((".json", ".yaml", ".yml")):
        return f"unexpected argument {first!r}: a config file must come first ({parser.prog} {first} --flag value ...)"
    return f"unexpected argument {first!r}: every value follows its --flag"


def _explain_argparse_error(parser: argparse.ArgumentParser, message: str) -> str:
    message = " ".join(message.split())
    choice = re.match(r"argument (--\S+?)(?:/\S+)?: invalid choice: '([^']*)'", message)
    if choice:
        flag, value = choice.groups()
        action = next((a for a in parser._actions if flag in a.option_strings), None)
        choices = [str(c) for c in (action.choices or [])] if action is not None else []
        return f"{flag}: invalid value {value!r}; allowed: {', '.join(choices)}" + did_you_mean(value, choices)
    value = re.match(r"argument (--[^/:\s]+)\S*: (invalid \w+ value: .*)", message)
    if value:
        flag, problem = value.groups()
        rule = NUMBER_RULES.get(flag[2:])
        return f"{flag}: {problem}" + (f"; allowed: {rule.text}" if rule else "")
    return re.sub(r"^argument (--[^/:\s]+)\S*:", r"\1:", message)


def read_config_file(path: Path) -> dict[str, Any]:
    """The settings of a ``.json`` / ``.yaml`` config file: a mapping of flag names to values."""
    if not path.exists():
        raise ConfigError(f"config file {path} not found")
    if not path.is_file():
        raise ConfigError(f"config file {path} is not a file")
    text = decode_text(path.read_bytes(), path, "config file")
    if not text.strip():
        raise ConfigError(f"config file {path} is empty; expected a mapping of settings (learning_rate: 0.001, ...)")
    try:
        if path.suffix == ".json":
            data = json.loads(text, object_pairs_hook=_unique_keys)
        else:
            data = _load_yaml(text)
    except ConfigError as err:
        raise ConfigError(f"config file {path}: {err}") from None
    except ValueError as err:  # json.JSONDecodeError
        raise ConfigError(f"config file {path} is not valid JSON: {one_line(err)}") from None
    except Exception as err:  # yaml.YAMLError
        raise ConfigError(f"config file {path} is not valid YAML: {one_line(err)}") from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path} must hold a mapping of settings (learning_rate: 0.001, ...), "
            f"got {type(data).__name__} {str(data)[:40]!r}"
        )
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise ConfigError(f"config file {path}: setting names must be text, got {bad[0]!r}")
    return data


def _unique_keys(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    keys = [k for k, _ in pairs]
    repeated = [k for k in keys if keys.count(k) > 1]
    if repeated:
        raise ConfigError(f"setting {repeated[0]!r} is given twice")
    return dict(pairs)


def _load_yaml(text: str) -> Any:
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        pass

    def mapping(loader, node, deep=False):
        keys = [loader.construct_object(key, deep=deep) for key, _ in node.value]
        repeated = [k for k in keys if keys.count(k) > 1]
        if repeated:
            raise ConfigError(f"setting {repeated[0]!r} is given twice (line {node.start_mark.line + 1})")
        return loader.construct_mapping(node, deep)

    UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def config_tokens(
    values: dict[str, Any], parser: argparse.ArgumentParser, path: Path, dict_fields: set[str]
) -> tuple[list[str], dict[str, None]]:
    """Command-line tokens for a config file's settings, so that argparse checks their types like flags.

    Returns ``(tokens, nulls)``: ``nulls`` are the settings set to null, applied as defaults (allowed
    only where the flag's default is already None).
    """
    actions = {a.dest: a for a in parser._actions if a.option_strings}
    tokens: list[str] = []
    nulls: dict[str, None] = {}
    for key, value in values.items():
        action = actions.get(key)
        if action is None:
            raise ConfigError(
                f"unknown setting {key!r} in {path}" + did_you_mean(key, list(actions)) + "; hiddenkey train --help lists every flag"
            )
        flag = f"--{key}"
        if value is None:
            if action.default is not None:
                raise ConfigError(f"{key} in {path} is null; it needs a value (its default is {action.default!r})")
            nulls[key] = None
        elif isinstance(value, bool):
            tokens.append(f"{flag}={str(value).lower()}")
        elif isinstance(value, (int, float, str)):
            tokens.append(f"{flag}={value}")
        elif isinstance(value, list) and action.nargs in ("+", "*"):
            if not all(isinstance(v, (int, float, str)) and not isinstance(v, bool) for v in value):
                raise ConfigError(f"{key} in {path} must be a list of single values, got {value!r}")
            tokens += [flag, *(str(v) for v in value)]
        elif isinstance(value, dict) and key in dict_fields:
            tokens.append(f"{flag}={json.dumps(value)}")
        else:
            raise ConfigError(f"{key} in {path} must be a single value (a number, text or true/false), got a {type(value).__name__}")
    return tokens, nulls


def build_dataclasses(parser, namespace: argparse.Namespace) -> list[Any]:
    """The parsed values as dataclass instances (as HfArgumentParser does), each dataclass's own checks
    (``DropoutConfig.validate``, ``TrainingArguments.__post_init__``) turned into one-line errors."""
    values = vars(namespace)
    out = []
    for dtype in parser.dataclass_types:
        inputs = {f.name: values[f.name] for f in dataclasses.fields(dtype) if f.init and f.name in values}
        try:
            out.append(dtype(**inputs))
        except (ConfigError, CLIError, DataError):
            raise
        except (ValueError, TypeError, ImportError, RuntimeError, KeyError) as err:
            raise CLIError(f"invalid {_describe(dtype)}: {one_line(err)}") from None
    return out


def _describe(dtype: type) -> str:
    return "training arguments" if dtype.__name__ == "TrainingArguments" else f"{dtype.__name__} settings"


# ------------------------------------------------------------------------------------------- numbers
@dataclass(frozen=True)
class Range:
    """An allowed range: ``low``/``high`` bounds (``None``: open), whether they are included, special values."""

    low: float | None = None
    high: float | None = None
    low_included: bool = True
    high_included: bool = True
    integer: bool = False
    special: tuple[Any, ...] = ()
    text: str = ""

    def allows(self, value: Any) -> bool:
        if value in self.special and not isinstance(value, bool):
            return True
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if not math.isfinite(value) or (self.integer and int(value) != value):
            return False
        if self.low is not None and (value < self.low or (value == self.low and not self.low_included)):
            return False
        return not (self.high is not None and (value > self.high or (value == self.high and not self.high_included)))


def _at_least(low: float, integer: bool = True, optional: bool = False, text: str = "") -> Range:
    special = (None,) if optional else ()
    return Range(low=low, integer=integer, special=special, text=text or f">= {low:g}" + (" (or unset)" if optional else ""))


def _positive(optional: bool = False, text: str = "") -> Range:
    return Range(low=0, low_included=False, special=(None,) if optional else (), text=text or "a finite number > 0")


def _fraction(high_included: bool = False) -> Range:
    return Range(low=0, high=1, high_included=high_included, text=f"in [0, 1{']' if high_included else ')'}")


SEED = Range(low=0, high=2**32 - 1, integer=True, text="an integer in [0, 2**32 - 1]")

#: The allowed range of every number flag of ``hiddenkey train`` except DropoutConfig's (which checks its
#: own fields). ``tests/test_bad_input.py`` checks that no int/float field is missing here.
NUMBER_RULES: dict[str, Range] = {
    # DataArguments
    "max_seq_length": _at_least(1),
    "max_train_samples": _at_least(1, optional=True),
    "max_eval_samples": _at_least(1, optional=True),
    "max_predict_samples": _at_least(1, optional=True),
    # LoraArguments
    "lora_r": _at_least(1),
    "lora_alpha": _positive(),
    "lora_dropout": _fraction(),
    # RunArguments
    "rate": _fraction(),
    # GenerationSettings
    "num_beams": _at_least(1, optional=True),
    "no_repeat_ngram_size": _at_least(0, optional=True, text=">= 0 (0 = off)"),
    "length_penalty": Range(special=(None,), text="a finite number"),
    "repetition_penalty": _positive(optional=True, text="a finite number > 0 (1 = off)"),
    "max_new_tokens": _at_least(1, optional=True),
    "generation_batch_size": _at_least(1, optional=True),
    # TrainingArguments
    "per_device_train_batch_size": _at_least(1),
    "per_device_eval_batch_size": _at_least(1),
    "gradient_accumulation_steps": _at_least(1),
    "eval_accumulation_steps": _at_least(1, optional=True),
    "num_train_epochs": _positive(text="a finite number > 0"),
    "max_steps": Range(low=1, integer=True, special=(-1,), text="-1 (train --num_train_epochs epochs) or an integer >= 1"),
    "learning_rate": _positive(),
    "warmup_steps": Range(low=0, text="a number >= 0 (below 1: a fraction of the training steps)"),
    "weight_decay": Range(low=0, text="a finite number >= 0"),
    "adam_beta1": _fraction(),
    "adam_beta2": _fraction(),
    "adam_epsilon": _positive(),
    "max_grad_norm": Range(low=0, text="a finite number >= 0 (0 = no clipping)"),
    "label_smoothing_factor": _fraction(),
    "neftune_noise_alpha": _positive(optional=True),
    "torch_empty_cache_steps": _at_least(1, optional=True),
    "logging_steps": _positive(text="a number > 0 (below 1: a fraction of the training steps)"),
    "eval_steps": _positive(optional=True, text="a number > 0 (below 1: a fraction of the training steps)"),
    "eval_delay": Range(low=0, text="a number >= 0"),
    "save_steps": _positive(text="a number > 0 (below 1: a fraction of the training steps)"),
    "save_total_limit": _at_least(1, optional=True, text=">= 1 (or null in a config file: keep every checkpoint)"),
    "seed": SEED,
    "data_seed": Range(low=0, high=2**32 - 1, integer=True, special=(None,), text="an integer in [0, 2**32 - 1]"),
    "dataloader_num_workers": _at_least(0),
    "dataloader_prefetch_factor": _at_least(1, optional=True),
    "ddp_bucket_cap_mb": _at_least(1, optional=True),
    "ddp_timeout": _at_least(1),
    "local_rank": _at_least(-1, text=">= -1 (set by the launcher)"),
}


def check_numbers(values: dict[str, Any], given: set[str]) -> None:
    """Every number flag within its range (defaults included: a default can be nonsense for the run too)."""
    for name, rule in NUMBER_RULES.items():
        if name in values and not rule.allows(values[name]):
            raise CLIError(f"--{name} must be {rule.text}, got {values[name]!r}")


# ------------------------------------------------------------------------------------------- dropout flags
def _preset_fields(method: str, rate: float) -> dict[str, Any]:
    return PRESETS[preset_key(method)](rate, None)


def _drops(positions) -> str:
    names = [POSITION_NAMES[p] for p in POSITIONS if p in positions]
    return " + ".join(names) if names else "no dropout"


def check_dropout_flags(method: str, rate: float, overrides: dict[str, Any], given: set[str]) -> None:
    """Flags that contradict ``--method`` or would have no effect are errors (the saved config must say what trained).

    ``overrides`` are the explicitly given DropoutConfig fields (besides ``method``).
    """
    if method == "custom":
        if "rate" in given:
            raise ConfigError(
                f"--rate {rate:g} sets the rate of a preset, but --method custom has none: give each drop's rate "
                "(--logits_rate, --weights_rate, --hidden_rate, --input_rate, --output_rate)"
            )
        return
    fields = _preset_fields(method, rate)
    own = {p for p in POSITIONS if f"{p}_rate" in fields}
    flag = f"--method {preset_key(method)}"
    final = DropoutConfig.preset(method, rate=rate, **overrides)
    for position in POSITIONS:
        key = f"{position}_rate"
        value = getattr(final, key)
        source = f"--{key} {value:g}" if key in overrides else f"--rate {rate:g}"
        # A preset with drops takes extra ones (the paper's "+ input cutoff" / "+ output dropout" rows);
        # the baseline means no dropout at all, so a drop added to it contradicts it.
        if position not in own and value > 0 and not own:
            raise ConfigError(
                f"{source} adds {POSITION_NAMES[position]} to {flag}, which has {_drops(own)}; "
                "use --method custom to combine drops freely, or the preset that has this drop"
            )
        if position in own and value == 0:
            raise ConfigError(
                f"{source} turns off {POSITION_NAMES[position]}, a drop of {flag}; use --method baseline "
                "(no dropout) or --method custom, or give a rate in (0, 1)"
            )
    if "rate" in given and all(f"{p}_rate" in overrides for p in own):
        what = "has no dropout" if not own else "has every rate given explicitly"
        raise ConfigError(f"--rate {rate:g} would be ignored: {flag} {what}")


def check_inert_dropout_flags(config: DropoutConfig, given: set[str]) -> None:
    """An explicitly given DropoutConfig setting that cannot change what trains is an error."""
    active = config.active_specs()
    reasons: dict[str, str] = {}
    for position in POSITIONS:
        if position not in active:
            reasons[f"{position}_pattern"] = f"{POSITION_NAMES[position]} is off ({position}_rate 0)"
    if not any(spec.pattern == "span" for spec in active.values()):
        reasons["span_ratio"] = "no active drop uses the span pattern"
    if "weights" not in active:
        reasons["weights_stop_gradient"] = "DropAttention is off (weights_rate 0)"
    if "logits" not in active:
        reasons["dropkey_bias"] = "DropKey is off (logits_rate 0)"
    if "logits" not in active and "weights" not in active:
        reasons["keep_first_keys"] = "no attention drop (DropKey, DropAttention) is on"
    structured = [p for p in ("input", "hidden", "output") if p in active and active[p].pattern != "element"]
    if not structured:
        reasons["rescale_structured"] = "no input/HiddenCut/output drop uses a column or span pattern"
    if not any(p in active for p in ("logits", "weights", "hidden")):
        reasons["layers"] = "no layer-wise drop (DropKey, DropAttention, HiddenCut) is on"
    if config.consistency == "none":
        for name in ("consistency_weight", "backprop", "js_reference", "regression_consistency"):
            reasons[name] = "no consistency loss is on (--consistency none)"
    elif config.consistency != "js":
        reasons["js_reference"] = f"the consistency loss is {config.consistency}, not js"
    for name, reason in reasons.items():
        if name in given:
            raise ConfigError(f"--{name} {getattr(config, name)!r} would have no effect: {reason}")


# ------------------------------------------------------------------------------------------- combinations
def check_task_and_data(data_args, task: str, given: set[str]) -> None:
    """Which data flags each kind of task reads; a flag it would ignore is an error."""
    from ..tasks import TASKS, get_task

    files = [name for name in DATA_FILES if getattr(data_args, name)]
    column_flags = [n for n in ("text_column", "text_pair_column", "label_column") if n in given]
    if task == "rotten_tomatoes":
        extra = [n for n in (*files, "data_dir") if getattr(data_args, n)] + column_flags
        if "label_type" in given:
            extra.append("label_type")
        if extra:
            raise CLIError(
                f"--{extra[0]}: task rotten_tomatoes is the bundled review data and reads no data flags; "
                "for your own files use --task_name custom --train_file ..."
            )
        return
    if task == "custom":
        if data_args.data_dir:
            raise CLIError("--data_dir is for the GLUE/E2E/WebNLG folder layouts; task custom reads --train_file (and --validation_file, --test_file)")
        if not data_args.train_file:
            raise CLIError("task custom needs --train_file (a CSV/TSV/JSON/JSONL file with a label column)")
    else:
        if task not in TASKS:
            get_task(task)  # raises with the list of tasks and a "did you mean"
        if data_args.data_dir and files:
            raise CLIError(f"give either --data_dir or --{files[0]}, not both")
        if "label_type" in given:
            raise CLIError(f"--label_type applies to task custom; task {task} has fixed labels")
        if column_flags and (task in GENERATION_TASKS or not files):
            where = "E2E/WebNLG inputs have fixed fields" if task in GENERATION_TASKS else "they name columns of --train_file etc."
            raise CLIError(f"--{column_flags[0]} would have no effect for task {task} without data files: {where}")
    if data_args.text_pair_column and not data_args.text_column:
        raise CLIError("--text_pair_column needs --text_column (the first text column)")
    if data_args.label_type not in ("auto", "classification", "regression"):
        raise CLIError(
            f"--label_type must be auto, classification or regression, got {data_args.label_type!r}"
            + did_you_mean(data_args.label_type, ("auto", "classification", "regression"))
        )


def check_data_files(data_args, task: str) -> None:
    """Each data file exists, is a non-empty UTF-8 file of a format the task reads; the data folder exists."""
    if data_args.data_dir:
        folder = Path(data_args.data_dir).expanduser()
        if not folder.exists():
            raise DataError(f"--data_dir not found: {folder}")
        if not folder.is_dir():
            raise DataError(f"--data_dir must be a folder, got a file: {folder}")
    allowed = NLG_SUFFIXES.get(task, NLU_SUFFIXES)
    for name in DATA_FILES:
        value = getattr(data_args, name)
        if not value:
            continue
        path = Path(value).expanduser()
        if task == "webnlg" and path.is_dir():
            continue  # a folder of WebNLG XML files
        if path.exists() and path.is_file() and path.suffix.lower() not in allowed:
            raise DataError(f"--{name} {path}: unsupported file type {path.suffix or '(none)'!r}; task {task} reads {', '.join(allowed)}")
        if path.suffix.lower() == ".xml":
            from ..tasks import check_file

            check_file(path, f"--{name}")  # XML declares its own encoding
        else:
            read_text(path, f"--{name}")


def check_output_dir(output_dir: str | None) -> None:
    """The run folder can be created: it is not a file, nothing above it is a file, and its parent is writable."""
    if not output_dir:
        return
    out = Path(output_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise CLIError(f"--output_dir {out} is a file; the run folder must be a folder")
    parent = out
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise CLIError(f"--output_dir {out}: {parent} is a file, so no folder can be created below it")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CLIError(f"--output_dir {out}: {parent} is not writable")


def check_run_flags(run_args, given: set[str]) -> None:
    if run_args.resume and run_args.overwrite:
        raise CLIError("--resume continues the run in --output_dir and --overwrite replaces it; pass one of them")


def check_generation_flags(generation_args, task: str, given: set[str]) -> None:
    if task in GENERATION_TASKS:
        return
    names = [f.name for f in dataclasses.fields(generation_args) if f.name in given]
    if names:
        raise CLIError(f"--{names[0]} would have no effect: it sets decoding for e2e/webnlg, and task {task} is classification")


def check_attention(model_args, dropout_config: DropoutConfig) -> None:
    """A known attention implementation, installed, and sdpa/eager when DropKey or DropAttention is on."""
    from transformers import AttentionInterface
    from transformers.utils import import_utils

    name = model_args.attn_implementation
    known = ["eager", *(k for k in AttentionInterface._global_mapping if not k.startswith("hiddenkey"))]
    if name not in known and "/" not in name:  # "org/repo" is a hub kernel, transformers' business
        raise CLIError(f"--attn_implementation {name!r} is unknown; allowed: {', '.join(known)}" + did_you_mean(name, known))
    if dropout_config.uses_attention and name not in ("sdpa", "eager"):
        raise CLIError(
            f"--attn_implementation {name} cannot take DropKey/DropAttention's drop bias; they need sdpa or eager "
            "(HiddenCut, input and output drops work with any)"
        )
    needs = {
        "flash_attention_2": ("is_flash_attn_2_available", "flash-attn"),
        "flash_attention_3": ("is_flash_attn_3_available", "flash-attn 3"),
        "flash_attention_4": ("is_flash_attn_4_available", "flash-attn 4"),
        "flex_attention": ("is_torch_flex_attn_available", "a torch with flex attention"),
    }
    if name in needs:
        check, package = needs[name]
        available = getattr(import_utils, check, lambda: False)()
        if not available and not getattr(import_utils, "is_kernels_available", lambda: False)():
            raise CLIError(f"--attn_implementation {name} needs {package}, which is not installed; use sdpa or eager")


def check_lora(lora_args) -> None:
    """LoRA settings, checked by peft itself on a stand-in module with the target names."""
    if lora_args.lora_bias not in ("none", "all", "lora_only"):
        raise CLIError(
            f"--lora_bias must be none, all or lora_only, got {lora_args.lora_bias!r}"
            + did_you_mean(lora_args.lora_bias, ("none", "all", "lora_only"))
        )
    targets = [t.strip() for t in (lora_args.lora_target_modules or "query").split(",")]
    if not all(targets):
        raise CLIError(f"--lora_target_modules {lora_args.lora_target_modules!r} has an empty name; give comma-separated module names")
    import torch
    from peft import LoraConfig, inject_adapter_in_model

    stand_in = torch.nn.ModuleDict({name.replace(".", "_"): torch.nn.Linear(4, 4) for name in targets})
    try:
        config = LoraConfig(
            r=lora_args.lora_r,
            lora_alpha=lora_args.lora_alpha,
            lora_dropout=lora_args.lora_dropout,
            target_modules=[t.replace(".", "_") for t in targets],
            bias=lora_args.lora_bias,
            use_rslora=lora_args.use_rslora,
            use_dora=lora_args.use_dora,
        )
        inject_adapter_in_model(config, stand_in)
    except (ValueError, TypeError, RuntimeError) as err:
        raise CLIError(f"invalid LoRA settings: {one_line(err)}") from None


def check_report_to(training_args) -> None:
    from transformers.integrations import INTEGRATION_TO_CALLBACK, get_available_reporting_integrations

    available = set(get_available_reporting_integrations())
    for name in training_args.report_to or []:
        if name not in INTEGRATION_TO_CALLBACK:
            allowed = ["none", "all", *INTEGRATION_TO_CALLBACK]
            raise CLIError(f"--report_to {name!r} is unknown; allowed: {', '.join(allowed)}" + did_you_mean(name, allowed))
        if name not in available:
            raise CLIError(f"--report_to {name} needs the {name} package, which is not installed; use none or tensorboard")


#: Weight files ``from_pretrained`` reads from a local folder (an index names the shards that must exist too).
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
#: A local folder holds a tokenizer when it has one of these (transformers otherwise builds an empty-vocabulary one).
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "tokenizer.model", "sentencepiece.bpe.model")


def check_model(model_args, data_args, dropout_config: DropoutConfig) -> None:
    """The model exists and its config loads; layer indices and ``max_seq_length`` fit it. (No weights load.)"""
    name = model_args.model_name_or_path
    if not name:
        return  # the bundled default model
    local = Path(name).expanduser()
    looks_local = name.startswith(("/", "./", "../", "~", ".\\")) or name.count("/") > 1 or local.exists()
    if looks_local and not local.exists():
        raise CLIError(f"cannot load model {name!r}: folder not found ({local.absolute()})")
    if local.is_file():
        if local.suffix == ".gguf":
            return
        raise CLIError(f"--model_name_or_path {local} is a file; expected a model folder (with config.json) or a hub id")
    if local.is_dir():
        check_model_folder(local)
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(name, cache_dir=model_args.cache_dir)
    except (OSError, ValueError, KeyError) as err:
        if local.is_dir():
            raise CLIError(f"cannot read the model config {local / 'config.json'}: {first_sentence(err)}") from None
        raise CLIError(hub_model_missing(name, err)) from None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    layers = getattr(text, "num_hidden_layers", None)
    if isinstance(layers, int) and dropout_config.layers.strip().lower() not in ("auto", "all", "latter_half"):
        chosen = dropout_config.layer_indices(layers, decoder_only=False)  # raises ConfigError when out of range
        if any(i.strip().startswith("-") for i in dropout_config.layers.split(",")):
            logging.getLogger("hiddenkey").warning(
                "--layers %s counts negative indices from the last layer: layers %s of 0..%d",
                dropout_config.layers, chosen, layers - 1,
            )
    positions = getattr(text, "max_position_embeddings", None)
    if isinstance(positions, int) and 0 < positions < data_args.max_seq_length:
        raise CLIError(
            f"--max_seq_length {data_args.max_seq_length} is longer than the model's {positions} positions; "
            f"use at most {positions}"
        )


def check_model_folder(local: Path) -> None:
    """A local model folder has a config, complete weights and a tokenizer (read headers only)."""
    if not (local / "config.json").is_file():
        raise CLIError(f"{local} is not a model folder: it has no config.json")
    weights = [local / n for n in WEIGHT_FILES if (local / n).is_file()]
    if not weights:
        raise CLIError(f"model folder {local} has no weights: expected one of {', '.join(WEIGHT_FILES)}")
    for path in weights:
        if path.name.endswith(".index.json"):
            weights += _shards(path)
    for path in weights:
        if path.suffix == ".safetensors" and (problem := safetensors_problem(path)):
            raise CLIError(f"cannot load model {str(local)!r}: {path} is damaged: {problem}")
        if path.suffix == ".bin" and (problem := torch_file_problem(path)):
            raise CLIError(f"cannot load model {str(local)!r}: {path} is damaged: {problem}")
    if not any((local / n).is_file() for n in TOKENIZER_FILES):
        raise CLIError(f"model folder {local} has no tokenizer: expected one of {', '.join(TOKENIZER_FILES)}")


def _shards(index: Path) -> list[Path]:
    try:
        shard_names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise CLIError(f"{index} is damaged: not a JSON index with a weight_map") from None
    missing = [n for n in shard_names if not (index.parent / n).is_file()]
    if missing:
        raise CLIError(f"model folder {index.parent} lacks {len(missing)} weight shard(s) its index names: {', '.join(missing[:3])}")
    return [index.parent / n for n in shard_names]


def hub_model_missing(name: str, err: BaseException) -> str:
    """Why a name that is no local folder could not come from the hub: offline and not cached, or not there."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return (
            f"cannot load model {name!r}: no such local folder, and not in the Hugging Face cache "
            f"({constants.HF_HUB_CACHE}); HF_HUB_OFFLINE is set, so it is not downloaded"
        )
    return f"cannot load model {name!r}: no such local folder, and the hub could not provide it ({first_sentence(err)})"


def first_sentence(err: BaseException) -> str:
    """The first sentence of an exception's message (library messages often go on with install advice)."""
    text = one_line(err)
    match = re.search(r"(?<=[a-z0-9`'\)])\. (?=[A-Z])", text)
    return text[: match.start() + 1] if match else text


def torch_file_problem(path: Path) -> str | None:
    """Why a ``pytorch_model.bin`` cannot be a torch checkpoint (a cut-off zip, not a pickle), or None."""
    import zipfile

    try:
        with path.open("rb") as f:
            head = f.read(2)
    except OSError as err:
        return one_line(err)
    if zipfile.is_zipfile(path):
        return None
    if head[:1] == b"PK":
        return "truncated (a zip archive without its end)"
    if head[:1] != b"\x80":  # torch's legacy format is a pickle (protocol 2 or later)
        return "not a PyTorch weights file"
    return None


def safetensors_problem(path: Path) -> str | None:
    """Why a ``.safetensors`` file cannot be read whole (truncated, not safetensors), or None. Reads the header only."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"truncated ({size} bytes, no header)"
            length = int.from_bytes(head, "little")
            if length > size - 8:
                return f"truncated ({size} bytes; its header alone needs {length + 8})"
            header = json.loads(f.read(length))
        ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError):
        return "not a readable safetensors file"
    need = 8 + length + max(ends, default=0)
    return f"truncated ({size} of {need} bytes)" if size < need else None
