"""NLU training and evaluation: GLUE tasks, the offline Rotten Tomatoes reviews, custom files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from .arguments import DataArguments, ModelArguments
from .distributed import is_main_process
from .errors import CLIError
from .models import load_model_and_tokenizer, with_lora
from .trials import trial_reporter
from .runs import (
    eval_scratch_dir,
    prepare_output_dir,
    resolved_arguments,
    route_tensorboard_logs,
    run_folder,
    train_and_save,
    write_args,
    write_curves,
    write_metrics,
    write_task,
    read_task,
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
    metric = primary_metric(spec.name, spec.is_regression)
    check_metric_for_best_model(training_args, spec)

    set_seed(training_args.seed)
    model, tokenizer, model_path = load_model_and_tokenizer(model_args, spec)
    splits = tokenize_splits(data, spec, tokenizer, data_args)
    model = with_lora(model, lora_args, "SEQ_CLS")
    attach(model, dropout_config)

    if training_args.load_best_model_at_end and training_args.metric_for_best_model in (None, "loss"):
        training_args.metric_for_best_model = f"eval_{metric}"
        training_args.greater_is_better = True

    def compute_metrics(prediction):
        return compute_classification_metrics(spec.name, prediction.predictions, prediction.label_ids, spec.is_regression)

    main = is_main_process(training_args)
    arguments = resolved_arguments(model_args, data_args, lora_args, dropout_config, run_args, training_args, model_path)
    with run_folder(out, run_args, training_args):
        if main:
            write_task(out, spec)
            write_args(out, arguments)
        reporter = trial_reporter(f"eval_{metric}")
        trainer = Trainer(
            model=model,
            args=training_args,
            train_dataset=splits["train"],
            eval_dataset=splits["validation"],
            data_collator=DataCollatorWithPadding(tokenizer),
            processing_class=tokenizer,
            compute_metrics=compute_metrics,
            callbacks=[reporter] if reporter else None,
        )
        route_tensorboard_logs(trainer, out)
        test = splits.get("test")
        test = test if test is not None and has_labels(test) else None
        final = FinalModelEvaluation(trainer, test) if training_args.load_best_model_at_end else None
        if final is not None:
            trainer.add_callback(final)
        results: dict[str, Any] = {"task": spec.name, "method": dropout_config.method, "primary_metric": metric}
        results["dropout"] = dropout_config.describe(regression=spec.is_regression)
        if run_args.untrained_baseline:
            results["untrained"] = _evaluate(trainer, splits["validation"], test)

        train_output = train_and_save(trainer, out, run_args)

        results.update(_evaluate(trainer, splits["validation"], test))
        if final is not None and final.test is not None and final.metrics is not None:
            results["final"] = {"validation": _final_validation(trainer.state.log_history), "test": final.metrics}
            results["best_step"] = trainer.state.best_global_step
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
        if reporter is not None and reporter.pruned_at is not None:
            results["pruned_at_step"] = reporter.pruned_at
        if not main:
            return results  # the run files are the main process's
        write_args(out, arguments)
        write_metrics(out, results)
        if run_args.plot:
            write_curves(out, trainer.state.log_history, f"eval_{metric}", title=name)
    return results


class FinalModelEvaluation(TrainerCallback):
    """Test metrics of the model as it stands after the last step, before the best checkpoint is loaded.

    With ``load_best_model_at_end`` the saved model is the best validation checkpoint (early stopping);
    this keeps the end-of-training result beside it, so overfitting stays visible. It runs at the last
    ``on_step_end``, before the Trainer's own final evaluation and the switch to the best checkpoint.
    """

    def __init__(self, trainer, test) -> None:
        self.trainer, self.test = trainer, test
        self.metrics: dict[str, float] | None = None

    def on_step_end(self, args, state, control, **kwargs):
        if self.test is not None and state.global_step >= state.max_steps:
            self.metrics = _strip(self.trainer.predict(self.test, metric_key_prefix="test").metrics, "test_")


def _final_validation(log_history: list[dict[str, Any]]) -> dict[str, float]:
    evaluations = [e for e in log_history if any(k.startswith("eval_") for k in e)]
    return _strip({k: v for k, v in evaluations[-1].items() if k.startswith("eval_")}, "eval_") if evaluations else {}


def check_metric_for_best_model(training_args, spec) -> None:
    """``--metric_for_best_model`` must be a metric the task reports (else HF fails after the first evaluation)."""
    wanted = training_args.metric_for_best_model
    if wanted in (None, "loss", "eval_loss"):
        return
    allowed = ["loss", *task_metric_names(spec)]
    if wanted.removeprefix("eval_") not in allowed:
        from ..suggest import did_you_mean

        raise CLIError(
            f"--metric_for_best_model {wanted!r} is not a metric of task {spec.name}; allowed: {', '.join(allowed)}"
            + did_you_mean(wanted.removeprefix("eval_"), allowed)
        )


def task_metric_names(spec) -> list[str]:
    """The names of the metrics computed for ``spec`` (found by scoring a two-example toy prediction)."""
    import numpy as np

    from ..metrics import compute_classification_metrics

    if spec.is_regression:
        predictions, labels = np.array([[0.0], [1.0], [3.0]]), np.array([0.5, 1.0, 2.0])
    else:
        predictions, labels = np.eye(spec.num_labels)[[0, 1]], np.array([0, 1])
    return list(compute_classification_metrics(spec.name, predictions, labels, spec.is_regression))


def _evaluate(trainer, validation, test) -> dict[str, dict[str, float]]:
    out = {"validation": _strip(trainer.evaluate(validation, metric_key_prefix="eval"), "eval_")}
    if test is not None:
        out["test"] = _strip(trainer.predict(test, metric_key_prefix="test").metrics, "test_")
    return out


def _strip(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    return {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in metrics.items()}


# ------------------------------------------------------------------------------------------- eval
def evaluate_run(run: Path, saved: dict, data_args: DataArguments) -> dict:
    """Reload a run's adapter with plain peft and recompute its test (else validation) metrics.

    Needs the run folder and the evaluation data only: labels and text columns come from the run's
    ``task.json``, so the training file is not read.
    """
    import shutil

    from peft import PeftModel
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    from ..metrics import compute_classification_metrics

    model_args = ModelArguments(**saved["model"])
    data, spec = evaluation_data(run, saved, data_args)
    model, tokenizer, _ = load_model_and_tokenizer(model_args, spec, adapter_dir=run)
    model = PeftModel.from_pretrained(model, str(run)).eval()
    splits = tokenize_splits(data, spec, tokenizer, data_args)
    split = "test" if "test" in splits and has_labels(splits["test"]) else "validation"
    if split not in splits:
        raise CLIError(f"the test data of {run} has no labels, and there is no validation split to score instead")
    scratch = eval_scratch_dir(run)
    args = TrainingArguments(output_dir=str(scratch), per_device_eval_batch_size=128, report_to="none", use_cpu=True)
    trainer = Trainer(model=model, args=args, data_collator=DataCollatorWithPadding(tokenizer))
    prediction = trainer.predict(splits[split])
    shutil.rmtree(scratch, ignore_errors=True)
    metrics = compute_classification_metrics(spec.name, prediction.predictions, prediction.label_ids, spec.is_regression)
    return {"split": split, **metrics}


def evaluation_data(run: Path, saved: dict, data_args: DataArguments):
    """(splits, TaskSpec) to evaluate a run on, read without its training file where the task is recorded."""
    from datasets import DatasetDict

    from .. import tasks

    recorded = read_task(run)
    if recorded is None:  # a run from before task.json: the task is rebuilt from its data
        return load_task_data(data_args, saved["training"]["seed"])
    try:
        spec = tasks.TaskSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in recorded.items()})
    except (TypeError, ValueError) as err:
        raise CLIError(f"{run}/task.json is damaged ({err})") from None
    columns = {"text_column": data_args.text_column, "text_pair_column": data_args.text_pair_column,
               "label_column": data_args.label_column}  # fmt: skip
    for split, path in (("test", data_args.test_file), ("validation", data_args.validation_file)):
        if path:
            if not Path(path).exists():
                raise CLIError(f"the {split} file of {run} is gone ({path}); pass --test_file")
            return DatasetDict({split: tasks.load_split_file(spec, path, split, **columns)}), spec
    if spec.name == "custom":
        raise CLIError(
            f"{run} was trained on custom data without a test or validation file (validation came from the "
            "training file); pass --test_file"
        )
    return load_task_data(data_args, saved["training"]["seed"])
