"""``hiddenkey train`` and ``hiddenkey eval``: LoRA finetuning with the unified dropout framework.

    hiddenkey train                                   # offline default: MiniLM on Rotten Tomatoes, HiddenKey
    hiddenkey train --task_name rte --model roberta-large --method hiddenkey --rate 0.1 --output_dir runs/rte
    hiddenkey eval runs/rotten_tomatoes-hiddenkey      # reload the adapter, recompute the test metrics
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from .arguments import (
    DataArguments,
    LoraArguments,
    ModelArguments,
    RunArguments,
    default_target_modules,
    minilm_path,
    parse_train_args,
)
from .attach import AttachError
from .config import ConfigError, DropoutConfig
from .tasks import DataError

ARGS_FILE = "args.json"
METRICS_FILE = "metrics.json"
PLOT_FILE = "training_curves.png"
logger = logging.getLogger("hiddenkey")


class CLIError(ValueError):
    """A usage error reported as one line before anything is written."""


USER_ERRORS = (CLIError, DataError, ConfigError, AttachError)


# ------------------------------------------------------------------------------------------- data
def load_task_data(data_args: DataArguments, seed: int):
    """(DatasetDict, TaskSpec) for an NLU task: the offline reviews, a GLUE task, or custom files."""
    from . import tasks

    name = (data_args.task_name or "custom").strip().lower()
    if name == "rotten_tomatoes":
        return tasks.load_rotten_tomatoes(seed=seed, max_train=data_args.max_train_samples)
    if name == "custom":
        if not data_args.train_file:
            raise CLIError("task 'custom' needs --train_file")
        return tasks.load_text_classification(
            data_args.train_file,
            data_args.validation_file,
            data_args.test_file,
            text_column=data_args.text_column,
            text_pair_column=data_args.text_pair_column,
            label_column=data_args.label_column,
            label_type=data_args.label_type,
            split_seed=seed,
        )
    spec = tasks.get_task(name)
    if spec.is_generation:
        raise CLIError(f"task {name!r} is a generation task")
    data = tasks.load_glue(
        spec.name,
        data_dir=data_args.data_dir,
        train_file=data_args.train_file,
        validation_file=data_args.validation_file,
        test_file=data_args.test_file,
        text_column=data_args.text_column,
        text_pair_column=data_args.text_pair_column,
        label_column=data_args.label_column,
    )
    return data, spec


def _limit(dataset, n: int | None):
    return dataset if n is None or n >= len(dataset) else dataset.select(range(n))


def tokenize_splits(data, spec, tokenizer, data_args: DataArguments):
    columns = list(spec.text_columns)

    def encode(batch):
        texts = [batch[c] for c in columns]
        return tokenizer(*texts, truncation=True, max_length=data_args.max_seq_length)

    limits = {
        "train": data_args.max_train_samples,
        "validation": data_args.max_eval_samples,
        "test": data_args.max_predict_samples,
    }
    out = {}
    for split, dataset in data.items():
        dataset = _limit(dataset, limits.get(split))
        keep = {"label"}
        out[split] = dataset.map(
            encode, batched=True, remove_columns=[c for c in dataset.column_names if c not in keep], desc=split
        )
    return out


def has_labels(dataset) -> bool:
    return "label" in dataset.column_names and any(label != -1 for label in dataset["label"])


# ------------------------------------------------------------------------------------------- model
def load_model_and_tokenizer(model_args: ModelArguments, spec, adapter_dir: str | Path | None = None):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = model_args.model_name_or_path or str(minilm_path())
    try:
        tokenizer = AutoTokenizer.from_pretrained(adapter_dir or path, cache_dir=model_args.cache_dir)
        kwargs: dict[str, Any] = {"num_labels": spec.num_labels}
        if spec.is_regression:
            kwargs["problem_type"] = "regression"
        elif spec.label_names:
            kwargs["id2label"] = dict(enumerate(spec.label_names))
            kwargs["label2id"] = {n: i for i, n in enumerate(spec.label_names)}
        model = AutoModelForSequenceClassification.from_pretrained(
            path,
            cache_dir=model_args.cache_dir,
            attn_implementation=model_args.attn_implementation,
            ignore_mismatched_sizes=True,
            **kwargs,
        )
    except (OSError, ValueError) as err:
        raise model_load_error(path, err) from None
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise CLIError(f"the tokenizer of {path!r} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer, path


def lora_config(lora_args: LoraArguments, model, task_type: str):
    from peft import LoraConfig

    targets = lora_args.lora_target_modules
    modules = [t.strip() for t in targets.split(",")] if targets else default_target_modules(model.config.model_type)
    return LoraConfig(
        r=lora_args.lora_r,
        lora_alpha=lora_args.lora_alpha,
        lora_dropout=lora_args.lora_dropout,
        target_modules=modules,
        bias=lora_args.lora_bias,
        use_rslora=lora_args.use_rslora,
        use_dora=lora_args.use_dora,
        task_type=task_type,
        fan_in_fan_out=model.config.model_type == "gpt2",
    )


# ------------------------------------------------------------------------------------------- train
def prepare_output_dir(training_args, run_args: RunArguments, default_name: str) -> Path:
    """Check (not yet create) the run folder; returns its path."""
    if training_args.output_dir in (None, "trainer_output"):
        training_args.output_dir = str(Path("runs") / default_name)
    out = Path(training_args.output_dir)
    if run_args.resume:
        from transformers.trainer_utils import get_last_checkpoint

        if not out.is_dir() or get_last_checkpoint(str(out)) is None:
            raise CLIError(f"--resume: no checkpoint found in {out}")
    elif out.exists() and any(out.iterdir()) and not run_args.overwrite:
        raise CLIError(f"run folder {out} already exists; pass --overwrite to replace it or --resume to continue")
    return out


def model_load_error(path: str, err: Exception) -> CLIError:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return CLIError(f"cannot load model {path!r}: {first}")


def create_run_dir(out: Path, run_args: RunArguments) -> None:
    """Called once every check has passed: only now does the run folder appear (or get replaced)."""
    if out.exists() and run_args.overwrite and not run_args.resume:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def train_and_save(trainer, out: Path, run_args: RunArguments):
    """Train (from the last checkpoint with --resume), then save the adapter, its config and the state."""
    last = None
    if run_args.resume:
        from transformers.trainer_utils import get_last_checkpoint

        last = get_last_checkpoint(str(out))
    train_output = trainer.train(resume_from_checkpoint=last)
    trainer.save_model(str(out))
    trainer.save_state()
    return train_output


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_json_safe(data), indent=2) + "\n")
    tmp.replace(path)


def resolved_arguments(model_args, data_args, lora_args, dropout_config, run_args, training_args, model_path):
    return {
        "model": {**dataclasses.asdict(model_args), "model_name_or_path": str(model_path)},
        "data": dataclasses.asdict(data_args),
        "lora": dataclasses.asdict(lora_args),
        "dropout": dropout_config.to_dict(),
        "run": dataclasses.asdict(run_args),
        "training": training_args.to_dict(),
    }


def train_classification(model_args, data_args, lora_args, dropout_config, run_args, training_args) -> dict:
    from peft import get_peft_model
    from transformers import DataCollatorWithPadding, set_seed

    from . import attach
    from .metrics import compute_classification_metrics, majority_class_baseline, primary_metric
    from .trainer import Trainer

    data, spec = load_task_data(data_args, training_args.seed)
    name = f"{spec.name}-{dropout_config.method}"
    out = prepare_output_dir(training_args, run_args, name)
    for split in ("train", "validation"):
        if split not in data or len(data[split]) == 0:
            raise DataError(f"task {spec.name!r} has no {split} examples")

    set_seed(training_args.seed)
    model, tokenizer, model_path = load_model_and_tokenizer(model_args, spec)
    splits = tokenize_splits(data, spec, tokenizer, data_args)
    model = get_peft_model(model, lora_config(lora_args, model, "SEQ_CLS"))
    attach(model, dropout_config)

    metric = primary_metric(spec.name, spec.is_regression)
    if training_args.load_best_model_at_end and training_args.metric_for_best_model in (None, "loss"):
        training_args.metric_for_best_model = f"eval_{metric}"
        training_args.greater_is_better = True

    def compute_metrics(prediction):
        return compute_classification_metrics(spec.name, prediction.predictions, prediction.label_ids, spec.is_regression)

    create_run_dir(out, run_args)
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=splits["train"],
        eval_dataset=splits["validation"],
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
        compute_metrics=compute_metrics,
    )
    test = splits.get("test")
    test = test if test is not None and has_labels(test) else None
    results: dict[str, Any] = {"task": spec.name, "method": dropout_config.method, "primary_metric": metric}
    results["dropout"] = dropout_config.describe()
    results["untrained"] = _evaluate(trainer, splits["validation"], test)

    train_output = train_and_save(trainer, out, run_args)

    results.update(_evaluate(trainer, splits["validation"], test))
    train_labels = splits["train"]["label"]
    results["majority_class"] = {
        "validation": majority_class_baseline(train_labels, splits["validation"]["label"], spec.name, spec.is_regression),
        **(
            {"test": majority_class_baseline(train_labels, test["label"], spec.name, spec.is_regression)}
            if test is not None
            else {}
        ),
    }
    results["train"] = {k: v for k, v in train_output.metrics.items()}
    results["examples"] = {split: len(ds) for split, ds in splits.items()}
    write_json(out / ARGS_FILE, resolved_arguments(model_args, data_args, lora_args, dropout_config, run_args, training_args, model_path))
    write_json(out / METRICS_FILE, results)
    if run_args.plot:
        from .report import plot_training_curves

        plot_training_curves(trainer.state.log_history, f"eval_{metric}", out / PLOT_FILE, title=f"{name}")
    return results


def _evaluate(trainer, validation, test) -> dict[str, dict[str, float]]:
    out = {"validation": _strip(trainer.evaluate(validation, metric_key_prefix="eval"), "eval_")}
    if test is not None:
        out["test"] = _strip(trainer.predict(test, metric_key_prefix="test").metrics, "test_")
    return out


def _strip(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    return {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in metrics.items()}


# ------------------------------------------------------------------------------------------- eval
def evaluate_run(run_dir: str | Path, test_file: str | None = None) -> dict:
    """Reload a run's adapter with plain peft and recompute its test metrics."""
    from peft import PeftModel
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    from .metrics import compute_classification_metrics

    run = Path(run_dir)
    if not (run / ARGS_FILE).is_file():
        raise CLIError(f"{run} is not a hiddenkey run folder (no {ARGS_FILE})")
    saved = json.loads((run / ARGS_FILE).read_text())
    model_args = ModelArguments(**saved["model"])
    data_args = DataArguments(**saved["data"])
    if test_file:
        data_args.test_file = test_file
    if _is_generation_task(data_args.task_name):
        from .nlg import evaluate_nlg_run

        return evaluate_nlg_run(run, saved, data_args)
    data, spec = load_task_data(data_args, saved["training"]["seed"])
    model, tokenizer, _ = load_model_and_tokenizer(model_args, spec, adapter_dir=run)
    model = PeftModel.from_pretrained(model, str(run)).eval()
    splits = tokenize_splits(data, spec, tokenizer, data_args)
    split = "test" if "test" in splits and has_labels(splits["test"]) else "validation"
    args = TrainingArguments(
        output_dir=str(run / "eval_tmp"), per_device_eval_batch_size=128, report_to="none", use_cpu=True
    )
    trainer = Trainer(model=model, args=args, data_collator=DataCollatorWithPadding(tokenizer))
    prediction = trainer.predict(splits[split])
    shutil.rmtree(run / "eval_tmp", ignore_errors=True)
    metrics = compute_classification_metrics(spec.name, prediction.predictions, prediction.label_ids, spec.is_regression)
    return {"split": split, **metrics}


def _is_generation_task(task_name: str | None) -> bool:
    return (task_name or "").strip().lower() in ("e2e", "webnlg")


# ------------------------------------------------------------------------------------------- main
def _configure_logging() -> None:
    import transformers

    logging.basicConfig(format="%(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity_warning()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def cmd_train(argv: list[str]) -> int:
    *args, generation_args = parse_train_args(argv)
    data_args, training_args = args[1], args[5]
    if _is_generation_task(data_args.task_name):
        from .nlg import train_nlg

        results = train_nlg(*args, generation_args)
    else:
        results = train_classification(*args)
    _print_summary(results, training_args.output_dir)
    return 0


def _print_summary(results: dict, output_dir: str) -> None:
    metric = results.get("primary_metric")
    lines = [f"run folder: {output_dir}", f"dropout: {results.get('dropout')}"]
    for split in ("validation", "test"):
        if split in results and metric in results[split]:
            row = f"{split}: {metric} {results[split][metric]:.4f}"
            if split in results.get("majority_class", {}):
                row += f" (majority class {results['majority_class'][split].get(metric, float('nan')):.4f}"
                row += f", untrained {results['untrained'][split].get(metric, float('nan')):.4f})"
            lines.append(row)
    print("\n".join(lines))


def cmd_eval(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="hiddenkey eval", description="Reload a run's adapter and recompute its metrics.")
    parser.add_argument("run_dir")
    parser.add_argument("--test_file", "--test-file", default=None, help="Evaluate on this file instead.")
    ns = parser.parse_args(argv)
    metrics = evaluate_run(ns.run_dir, ns.test_file)
    print(json.dumps(_json_safe(metrics), indent=2))
    saved = Path(ns.run_dir) / METRICS_FILE
    if saved.is_file() and not ns.test_file:
        recorded = json.loads(saved.read_text()).get(metrics["split"], {})
        shared = [k for k in metrics if k in recorded and isinstance(recorded[k], (int, float))]
        if shared:
            print("recorded in metrics.json: " + ", ".join(f"{k} {recorded[k]:.4f}" for k in shared))
    return 0


COMMANDS = {"train": cmd_train, "eval": cmd_eval}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        print("\ncommands: " + ", ".join(COMMANDS) + "   (hiddenkey COMMAND --help)")
        return 0 if argv else 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        if command.startswith("-"):
            command, rest = "train", argv
        else:
            print(f"hiddenkey: error: unknown command {command!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
            return 2
    _configure_logging()
    try:
        return COMMANDS[command](rest)
    except USER_ERRORS as err:
        print(f"hiddenkey: error: {err}", file=sys.stderr)
        return 2
    except FileNotFoundError as err:
        print(f"hiddenkey: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
