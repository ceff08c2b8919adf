"""``hiddenkey train`` and ``hiddenkey eval``: LoRA finetuning with the unified dropout framework.

    hiddenkey train                                   # offline default: MiniLM on Rotten Tomatoes, HiddenKey
    hiddenkey train --task_name rte --model roberta-large --method hiddenkey --rate 0.1 --output_dir runs/rte
    hiddenkey eval runs/rotten_tomatoes-hiddenkey      # reload the adapter, recompute the test metrics
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from .arguments import DataArguments, parse_train_args
from .distributed import is_main_process
from .errors import USER_ERRORS
from .runs import read_args, read_metrics, to_json

logger = logging.getLogger("hiddenkey")
GENERATION_TASKS = ("e2e", "webnlg")


def is_generation_task(task_name: str | None) -> bool:
    return (task_name or "").strip().lower() in GENERATION_TASKS


def _configure_logging() -> None:
    import transformers

    logging.basicConfig(format="%(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity_warning()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# ------------------------------------------------------------------------------------------- train
def cmd_train(argv: list[str]) -> int:
    from .help import help_request

    text = help_request(argv)
    if text is not None:
        print(text, end="")
        return 0
    *args, generation_args = parse_train_args(argv)
    data_args, training_args = args[1], args[5]
    if is_generation_task(data_args.task_name):
        from .generation import train_generation

        results = train_generation(*args, generation_args)
    else:
        from .classification import train_classification

        results = train_classification(*args)
    if is_main_process(training_args):
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


# ------------------------------------------------------------------------------------------- eval
def evaluate_run(run_dir: str | Path, test_file: str | None = None) -> dict:
    """Reload a run's adapter with plain peft and recompute its test metrics."""
    run = Path(run_dir)
    saved = read_args(run)
    data_args = DataArguments(**saved["data"])
    if test_file:
        data_args.test_file = test_file
    if is_generation_task(data_args.task_name):
        from .generation import evaluate_run as evaluate
    else:
        from .classification import evaluate_run as evaluate
    return evaluate(run, saved, data_args)


def cmd_eval(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="hiddenkey eval", description="Reload a run's adapter and recompute its metrics.")
    parser.add_argument("run_dir")
    parser.add_argument("--test_file", "--test-file", default=None, help="Evaluate on this file instead.")
    ns = parser.parse_args(argv)
    metrics = evaluate_run(ns.run_dir, ns.test_file)
    print(to_json(metrics))
    recorded = read_metrics(Path(ns.run_dir))
    if recorded is not None and not ns.test_file:
        recorded = recorded.get(metrics["split"], {})
        shared = [k for k in metrics if k in recorded and isinstance(recorded[k], (int, float))]
        if shared:
            print("recorded in metrics.json: " + ", ".join(f"{k} {recorded[k]:.4f}" for k in shared))
    return 0


# ------------------------------------------------------------------------------------------- main
COMMANDS = {"train": cmd_train, "eval": cmd_eval}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        print("\ncommands: " + ", ".join(COMMANDS) + "   (hiddenkey COMMAND --help)")
        return 0
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


if __name__ == "__main__":
    sys.exit(main())
