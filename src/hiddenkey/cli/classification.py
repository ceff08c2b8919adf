"""NLU training and evaluation: GLUE tasks, the offline Rotten Tomatoes reviews, custom files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .arguments import DataArguments, ModelArguments
from .distributed import is_main_process, main_process_first
from .errors import CLIError
from .models import load_model_and_tokenizer, lora_config
from .runs import (
    create_run_dir,
    eval_scratch_dir,
    prepare_output_dir,
    resolved_arguments,
    train_and_save,
    write_args,
    write_curves,
    write_metrics,
)


# ------------------------------------------------------------------------------------------- data
def load_task_data(data_args: DataArguments, seed: int):
    """(DatasetDict, TaskSpec) for an NLU task: the offline reviews, a GLUE task, or custom files."""
    from .. import tasks

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


# ------------------------------------------------------------------------------------------- train
def train_classification(model_args, data_args, lora_args, dropout_config, run_args, training_args) -> dict:
    from peft import get_peft_model
    from transformers import DataCollatorWithPadding, set_seed

    from ..attach import attach
    from ..metrics import compute_classification_metrics, majority_class_baseline, primary_metric
    from ..tasks import DataError
    from ..trainer import Trainer

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

    with main_process_first(training_args, "run folder") as main:
        if main:
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
    if is_main_process(training_args):
        write_args(out, resolved_arguments(model_args, data_args, lora_args, dropout_config, run_args, training_args, model_path))
        write_metrics(out, results)
        if run_args.plot:
            write_curves(out, trainer.state.log_history, f"eval_{metric}", title=name)
    return results


def _evaluate(trainer, validation, test) -> dict[str, dict[str, float]]:
    out = {"validation": _strip(trainer.evaluate(validation, metric_key_prefix="eval"), "eval_")}
    if test is not None:
        out["test"] = _strip(trainer.predict(test, metric_key_prefix="test").metrics, "test_")
    return out


def _strip(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    return {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in metrics.items()}


# ------------------------------------------------------------------------------------------- eval
def evaluate_run(run: Path, saved: dict, data_args: DataArguments) -> dict:
    """Reload a run's adapter with plain peft and recompute its test (else validation) metrics."""
    import shutil

    from peft import PeftModel
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    from ..metrics import compute_classification_metrics

    model_args = ModelArguments(**saved["model"])
    data, spec = load_task_data(data_args, saved["training"]["seed"])
    model, tokenizer, _ = load_model_and_tokenizer(model_args, spec, adapter_dir=run)
    model = PeftModel.from_pretrained(model, str(run)).eval()
    splits = tokenize_splits(data, spec, tokenizer, data_args)
    split = "test" if "test" in splits and has_labels(splits["test"]) else "validation"
    scratch = eval_scratch_dir(run)
    args = TrainingArguments(output_dir=str(scratch), per_device_eval_batch_size=128, report_to="none", use_cpu=True)
    trainer = Trainer(model=model, args=args, data_collator=DataCollatorWithPadding(tokenizer))
    prediction = trainer.predict(splits[split])
    shutil.rmtree(scratch, ignore_errors=True)
    metrics = compute_classification_metrics(spec.name, prediction.predictions, prediction.label_ids, spec.is_regression)
    return {"split": split, **metrics}
