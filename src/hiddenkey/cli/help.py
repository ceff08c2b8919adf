"""``hiddenkey train --help``: hiddenkey's own flags first, then LoRA, model and data, the most-used
training flags and the generation settings; every other ``TrainingArguments`` flag is listed by
``hiddenkey train --help-all`` (the full parser's help)."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Iterable

from ..config import PRESET_SUMMARIES, DropoutConfig
from .arguments import (
    DEFAULT_TRAINING,
    DataArguments,
    GenerationSettings,
    LoraArguments,
    ModelArguments,
    RunArguments,
    train_parser,
)

USAGE = "hiddenkey train [CONFIG.json|CONFIG.yaml] [--FLAG VALUE ...]"
DESCRIPTION = """LoRA finetuning with the dropout methods of "LoRA Meets Dropout under a Unified Framework".
With no flags: HiddenKey LoRA on all-MiniLM-L6-v2 and 3,000 Rotten Tomatoes reviews, offline.
Flags take dashes or underscores; a single .json/.yaml argument is read as a config file."""

#: The TrainingArguments flags shown by --help, in this order (with hiddenkey's defaults).
MOST_USED_TRAINING = (
    "output_dir", "num_train_epochs", "max_steps", "per_device_train_batch_size", "per_device_eval_batch_size",
    "gradient_accumulation_steps", "learning_rate", "weight_decay", "warmup_steps", "lr_scheduler_type",
    "eval_strategy", "eval_steps", "logging_steps", "save_strategy", "save_steps", "save_total_limit",
    "load_best_model_at_end", "seed", "bf16", "fp16", "activation_checkpointing", "use_cpu", "ddp_backend",
    "report_to",
)
#: Defaults that hiddenkey train decides at run time, as the help shows them.
RUNTIME_DEFAULTS = {
    "output_dir": "runs/TASK-METHOD",
    "report_to": "tensorboard when installed, else none",
    "use_cpu": "true for several processes on a machine without a GPU",
    "ddp_backend": "gloo for several CPU processes",
}
HELP_FLAGS = ("-h", "--help")
HELP_ALL_FLAG = "--help-all"


def methods_text() -> str:
    width = max(map(len, PRESET_SUMMARIES))
    lines = [f"  {name:<{width}}  {summary}" for name, summary in PRESET_SUMMARIES.items()]
    return (
        "--method PRESET picks the drops (default: hiddenkey); explicit flags below override it\n"
        "(the defaults shown are the hiddenkey preset's; --method custom starts from no drops):\n" + "\n".join(lines)
    )


def _metavar(field: dataclasses.Field) -> str:
    kind = str(field.type)
    if "bool" in kind:
        return "[BOOL]"
    if "int" in kind:
        return "INT"
    if "float" in kind:
        return "FLOAT"
    return "VALUE"


def _add(group, fields: Iterable[dataclasses.Field], defaults: dict[str, Any] | None = None) -> None:
    defaults = defaults or {}
    for f in fields:
        default = defaults.get(f.name, f.default)
        help_text = f.metadata.get("help", "").strip()
        if default is not dataclasses.MISSING and default is not None:
            help_text += f" (default: {default})"
        group.add_argument(f"--{f.name}", metavar=_metavar(f), help=help_text.replace("%", "%%"))


def _fields(cls, skip: Iterable[str] = ()) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.name not in skip]


def train_help() -> str:
    from transformers import TrainingArguments

    parser = argparse.ArgumentParser(
        prog="hiddenkey train", usage=USAGE, description=DESCRIPTION, add_help=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    dropout = parser.add_argument_group("hiddenkey: method and dropout", methods_text())
    run = {f.name: f for f in dataclasses.fields(RunArguments)}
    _add(dropout, [run["rate"]])
    _add(dropout, _fields(DropoutConfig, skip=("method",)), DropoutConfig.preset("hiddenkey").to_dict())
    _add(parser.add_argument_group("hiddenkey: run folder"), _fields(RunArguments, skip=("rate",)))
    _add(parser.add_argument_group("LoRA (peft)"), _fields(LoraArguments))
    _add(parser.add_argument_group("model and data"), _fields(ModelArguments) + _fields(DataArguments))
    training = {f.name: f for f in dataclasses.fields(TrainingArguments)}
    rest = len([name for name in training if name not in MOST_USED_TRAINING and training[name].init])
    _add(
        parser.add_argument_group("training (the most used TrainingArguments)"),
        [training[name] for name in MOST_USED_TRAINING],
        {**DEFAULT_TRAINING, **RUNTIME_DEFAULTS},
    )
    _add(parser.add_argument_group("generation (e2e, webnlg)"), _fields(GenerationSettings))
    parser.epilog = (
        f"The other {rest} TrainingArguments flags (optimizer, precision, logging, hub, distributed, ...): "
        f"hiddenkey train {HELP_ALL_FLAG}"
    )
    return parser.format_help()


def full_help() -> str:
    return train_parser().format_help()


def help_request(argv: list[str]) -> str | None:
    """The help text ``argv`` asks for, if it asks for one."""
    if HELP_ALL_FLAG in argv:
        return full_help()
    if any(flag in argv for flag in HELP_FLAGS):
        return train_help()
    return None
