"""E2E and WebNLG: causal-LM LoRA training with the loss on the target only, then generation and metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..tasks import DataError, NLGExample
from .arguments import GenerationSettings, ModelArguments
from .distributed import is_main_process
from .models import load_causal_lm, with_lora
from .trials import trial_reporter
from .runs import (
    eval_dir,
    prepare_output_dir,
    read_task,
    resolved_arguments,
    route_tensorboard_logs,
    run_folder,
    train_and_save,
    write_args,
    write_curves,
    write_metrics,
    write_predictions,
    write_task,
)


def load_nlg_examples(data_args) -> tuple[str, dict[str, list[NLGExample]]]:
    from .. import tasks

    name = data_args.task_name.strip().lower()
    loader = tasks.load_e2e if name == "e2e" else tasks.load_webnlg
    splits = loader(
        data_dir=data_args.data_dir,
        train_file=data_args.train_file,
        validation_file=data_args.validation_file,
        test_file=data_args.test_file,
    )
    return name, splits


def _limit(items: list, n: int | None) -> list:
    return items if n is None else items[:n]


def _encode(tokenizer, examples: list[NLGExample], max_length: int):
    from datasets import Dataset

    from ..tasks import to_training_pairs
    from .decoding import encode_training_pairs

    features = encode_training_pairs(tokenizer, to_training_pairs(examples), max_length)
    return Dataset.from_list(features)


def train_generation(
    model_args, data_args, lora_args, dropout_config, run_args, training_args, generation_args=None
) -> dict:
    from transformers import set_seed

    from .. import tasks
    from ..attach import attach
    from ..trainer import Trainer
    from .decoding import CausalLMCollator

    name, splits = load_nlg_examples(data_args)
    out = prepare_output_dir(training_args, run_args, f"{name}-{dropout_config.method}")
    if not splits.get("train"):
        raise DataError(f"task {name!r} has no training examples")
    set_seed(training_args.seed)
    model, tokenizer, model_path = load_causal_lm(model_args)
    train = _encode(tokenizer, _limit(splits["train"], data_args.max_train_samples), data_args.max_seq_length)
    validation = splits.get("validation") or []
    eval_dataset = _encode(tokenizer, _limit(validation, data_args.max_eval_samples), data_args.max_seq_length) if validation else None
    model = with_lora(model, lora_args, "CAUSAL_LM")
    attach(model, dropout_config)
    if eval_dataset is None:
        training_args.eval_strategy = "no"
        training_args.load_best_model_at_end = False
    elif training_args.load_best_model_at_end:
        training_args.metric_for_best_model = "eval_loss"
        training_args.greater_is_better = False

    arguments = resolved_arguments(
        model_args, data_args, lora_args, dropout_config, run_args, training_args, model_path,
        generation=generation_args,
    )
    seen = sorted({ex.meta.get("category", "") for ex in splits["train"]}) if name == "webnlg" else None
    main = is_main_process(training_args)
    with run_folder(out, run_args, training_args):
        if main:
            write_task(out, tasks.get_task(name), **({"seen_categories": seen} if seen is not None else {}))
            write_args(out, arguments)
        reporter = trial_reporter("eval_loss", negate=True) if eval_dataset is not None else None
        trainer = Trainer(
            model=model,
            args=training_args,
            train_dataset=train,
            eval_dataset=eval_dataset,
            data_collator=CausalLMCollator(tokenizer.pad_token_id),
            processing_class=tokenizer,
            callbacks=[reporter] if reporter else None,
        )
        route_tensorboard_logs(trainer, out)
        train_output = train_and_save(trainer, out, run_args)

        results: dict[str, Any] = {"task": name, "method": dropout_config.method, "dropout": dropout_config.describe()}
        results["primary_metric"] = "bleu" if name == "e2e" else "all_bleu"
        results["train"] = dict(train_output.metrics)
        if reporter is not None and reporter.pruned_at is not None:
            results["pruned_at_step"] = reporter.pruned_at
        if eval_dataset is not None:
            results["validation"] = {k.removeprefix("eval_"): v for k, v in trainer.evaluate().items()}
        if not main:
            return results  # generation, scoring and the run files are the main process's
        test = _limit(splits.get("test") or [], data_args.max_predict_samples)
        if test and any(example.references for example in test):
            results["test"] = generate_and_score(model, tokenizer, name, test, generation_args, out)
        write_args(out, arguments)
        write_metrics(out, results)
        if run_args.plot:
            write_curves(out, trainer.state.log_history, "eval_loss", title=f"{name}-{dropout_config.method}")
    return results


def generate_and_score(model, tokenizer, task_name: str, examples: list[NLGExample], generation_args, out: Path) -> dict:
    from .decoding import evaluate_generation, generate_texts, resolve

    settings = resolve(generation_args or GenerationSettings(), task_name, model.config.model_type)
    hypotheses = generate_texts(model, tokenizer, [e.source for e in examples], settings)
    write_predictions(out, examples, hypotheses)
    scored = [(e, h) for e, h in zip(examples, hypotheses) if e.references]
    return evaluate_generation(task_name, [e for e, _ in scored], [h for _, h in scored])


def evaluate_run(run: Path, saved: dict, data_args) -> dict:
    """Reload an NLG run's adapter with plain peft, regenerate the test outputs and score them.

    Reads only the test split (``--test_file``, or the run's own test data), never its training file.
    """
    from peft import PeftModel

    from .. import tasks

    model_args = ModelArguments(**saved["model"])
    name = data_args.task_name.strip().lower()
    recorded = read_task(run) or {}
    test = tasks.load_nlg_split(
        name, "test", data_dir=None if data_args.test_file else data_args.data_dir, file=data_args.test_file,
        seen_categories=recorded.get("seen_categories"),
    )  # fmt: skip
    test = _limit(test, data_args.max_predict_samples)
    if not test:
        raise DataError(f"task {name!r} has no test examples to evaluate")
    model, tokenizer, _ = load_causal_lm(model_args, adapter_dir=run)
    model = PeftModel.from_pretrained(model, str(run)).eval()
    settings = GenerationSettings(**saved["generation"]) if saved.get("generation") else None
    return {"split": "test", **generate_and_score(model, tokenizer, name, test, settings, eval_dir(run))}
