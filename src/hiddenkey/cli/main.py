"""``hiddenkey``: LoRA finetuning with the unified dropout framework.

    hiddenkey train                                   # offline default: MiniLM on Rotten Tomatoes, HiddenKey
    hiddenkey train --task_name rte --model roberta-large --method hiddenkey --rate 0.1 --output_dir runs/rte
    hiddenkey eval runs/rotten_tomatoes-hiddenkey      # reload the adapter, recompute the test metrics
    hiddenkey sweep spec.yaml --output_dir sweeps/s    # every configuration of a grid, resumable (Optuna)
    hiddenkey tune spec.yaml --output_dir sweeps/t     # search rate and KL weight, then retrain best vs baseline
    hiddenkey report sweeps/s                          # tables (median ± std, paired tests) and plots
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
from pathlib import Path

from .arguments import DataArguments, parse_train_args
from .distributed import is_main_process
from .errors import USER_ERRORS, CLIError
from .runs import (
    RunInterrupted,
    TrainingDiverged,
    check_adapter,
    checkpoint_step,
    lock_run_dir,
    read_args,
    read_metrics,
    to_json,
)

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
EXIT_DIVERGED = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell's code for Ctrl-C


def cmd_train(argv: list[str]) -> int:
    from .help import help_request

    text = help_request(argv)
    if text is not None:
        print(text, end="")
        return 0
    *args, generation_args = parse_train_args(argv)
    data_args, training_args = args[1], args[5]
    try:
        if is_generation_task(data_args.task_name):
            from .generation import train_generation

            results = train_generation(*args, generation_args)
        else:
            from .classification import train_classification

            results = train_classification(*args)
    except RunInterrupted as stop:
        step = f" (step {checkpoint_step(stop.checkpoint)})" if stop.checkpoint else ""
        if stop.checkpoint is None:
            print(f"hiddenkey: interrupted before the first checkpoint of {stop.out}; nothing to resume "
                  f"(start again with: {resume_command(argv, stop.out, restart=True)})", file=sys.stderr)  # fmt: skip
        else:
            print(f"hiddenkey: interrupted; last checkpoint {stop.checkpoint}{step}; resume with: "
                  f"{resume_command(argv, stop.out)}", file=sys.stderr)  # fmt: skip
        return EXIT_INTERRUPTED
    except TrainingDiverged as stop:
        kept = (f"kept {stop.kept.name}, the last finite checkpoint, as the result in {stop.out}"
                if stop.kept else f"no checkpoint was saved before it, so {stop.out} holds no adapter")  # fmt: skip
        print(f"hiddenkey: error: training diverged: {stop.divergence}; stopped there and {kept}; "
              "try a lower --learning_rate", file=sys.stderr)  # fmt: skip
        return EXIT_DIVERGED
    if is_main_process(training_args):
        _print_summary(results, training_args.output_dir)
    return 0


def resume_command(argv: list[str], out: Path, restart: bool = False) -> str:
    """The exact ``hiddenkey train`` command that continues (or, with ``restart``, replaces) this run."""
    def flag(token: str) -> str:
        return "--" + token[2:].split("=")[0].replace("-", "_") if token.startswith("--") else ""

    tokens: list[str] = []
    skip = False
    for i, token in enumerate(argv):
        if skip:
            skip = False
            continue
        if flag(token) in ("--overwrite", "--resume"):
            following = argv[i + 1] if i + 1 < len(argv) else ""
            skip = "=" not in token and following.lower() in ("true", "false", "yes", "no", "1", "0", "t", "f", "y", "n")
            continue
        tokens.append(token)
    if not any(flag(t) == "--output_dir" for t in tokens):
        tokens += ["--output_dir", str(out)]
    if tokens and not tokens[0].startswith("-"):  # a config file may set overwrite/resume itself
        tokens += ["--resume", "false"] if restart else ["--overwrite", "false"]
    return shlex.join(["hiddenkey", "train", *tokens, "--overwrite" if restart else "--resume"])


def _print_summary(results: dict, output_dir: str) -> None:
    metric = results.get("primary_metric")
    lines = [f"run folder: {output_dir}", f"dropout: {results.get('dropout')}"]
    for split in ("validation", "test"):
        if split in results and metric in results[split]:
            references = []
            if metric in results.get("final", {}).get(split, {}):
                references.append(f"end of training {results['final'][split][metric]:.4f}")
            if split in results.get("majority_class", {}):
                references.append(f"majority class {results['majority_class'][split].get(metric, float('nan')):.4f}")
            if split in results.get("untrained", {}):
                references.append(f"untrained {results['untrained'][split].get(metric, float('nan')):.4f}")
            note = f" ({', '.join(references)})" if references else ""
            lines.append(f"{split}: {metric} {results[split][metric]:.4f}{note}")
    print("\n".join(lines))


# ------------------------------------------------------------------------------------------- eval
def evaluate_run(run_dir: str | Path, test_file: str | None = None) -> dict:
    """Reload a run's adapter with plain peft and recompute its test metrics.

    Needs only the run folder (and the evaluation data: ``test_file`` or the run's own test data);
    the run folder is locked meanwhile.
    """
    run = Path(run_dir)
    saved = read_args(run)
    check_adapter(run)
    try:
        data_args = DataArguments(**saved["data"])
    except TypeError as err:
        raise CLIError(f"{run}/args.json is damaged: its data section does not fit ({err})") from None
    if test_file:
        from .validation import check_data_files

        data_args.test_file = test_file
        data_args.validation_file = None
        check_data_files(DataArguments(task_name=data_args.task_name, test_file=test_file), (data_args.task_name or "custom").lower())
    if is_generation_task(data_args.task_name):
        from .generation import evaluate_run as evaluate
    else:
        from .classification import evaluate_run as evaluate
    lock = lock_run_dir(run)
    try:
        return evaluate(run, saved, data_args)
    finally:
        lock.release()


def cmd_eval(argv: list[str]) -> int:
    import argparse

    from .validation import parse_known

    parser = argparse.ArgumentParser(prog="hiddenkey eval", description="Reload a run's adapter and recompute its metrics.")
    parser.add_argument("run_dir")
    parser.add_argument("--test_file", "--test-file", default=None, help="Evaluate on this file instead.")
    ns = parse_known(parser, argv, "hiddenkey eval")
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
def cmd_sweep(argv: list[str]) -> int:
    from .sweep import cmd_sweep as run

    return run(argv)


def cmd_report(argv: list[str]) -> int:
    from .report import cmd_report as run

    return run(argv)


def cmd_tune(argv: list[str]) -> int:
    from .tune import cmd_tune as run

    return run(argv)


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "sweep": cmd_sweep, "tune": cmd_tune, "report": cmd_report}


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
        print(f"hiddenkey: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        done = "before the run folder was created; nothing was written" if command == "train" else "(nothing was recorded)"
        print(f"hiddenkey: interrupted {done}", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
