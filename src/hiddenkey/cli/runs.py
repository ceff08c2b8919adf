"""The run folder: its checks, its creation, and every file the tool writes into it.

Each file name the application writes is spelled here and nowhere else (the adapter files are
peft's, ``hiddenkey_config.json`` is the library's :data:`hiddenkey.CONFIG_NAME`, the checkpoints
and TensorBoard logs are the Trainer's).

==========================  ==========================================================
``args.json``               every resolved argument of the run (:func:`write_args`)
``metrics.json``            validation / test metrics and baselines (:func:`write_metrics`)
``training_curves.png``     training loss and validation metric over steps
``predictions.jsonl``       generated texts of an NLG run, one JSON object per line
``eval/``                   what ``hiddenkey eval`` regenerates for an NLG run
==========================  ==========================================================
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import CLIError

ARGS_FILE = "args.json"
METRICS_FILE = "metrics.json"
PLOT_FILE = "training_curves.png"
PREDICTIONS_FILE = "predictions.jsonl"
EVAL_DIR = "eval"
EVAL_SCRATCH_DIR = "eval_tmp"
RUNS_ROOT = "runs"


# ------------------------------------------------------------------------------------------- folder
def prepare_output_dir(training_args, run_args, default_name: str) -> Path:
    """Check (not yet create) the run folder; returns its path."""
    if training_args.output_dir in (None, "trainer_output"):
        training_args.output_dir = str(Path(RUNS_ROOT) / default_name)
    out = Path(training_args.output_dir)
    if run_args.resume:
        from transformers.trainer_utils import get_last_checkpoint

        if not out.is_dir() or get_last_checkpoint(str(out)) is None:
            raise CLIError(f"--resume: no checkpoint found in {out}")
    elif out.exists() and any(out.iterdir()) and not run_args.overwrite:
        raise CLIError(f"run folder {out} already exists; pass --overwrite to replace it or --resume to continue")
    return out


def create_run_dir(out: Path, run_args) -> None:
    """Called once every check has passed: only now does the run folder appear (or get replaced)."""
    if out.exists() and run_args.overwrite and not run_args.resume:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def is_run_folder(run: Path) -> bool:
    return (run / ARGS_FILE).is_file()


def train_and_save(trainer, out: Path, run_args):
    """Train (from the last checkpoint with --resume), then save the adapter, its config and the state."""
    last = None
    if run_args.resume:
        from transformers.trainer_utils import get_last_checkpoint

        last = get_last_checkpoint(str(out))
    train_output = trainer.train(resume_from_checkpoint=last)
    trainer.save_model(str(out))
    trainer.save_state()
    return train_output


# ------------------------------------------------------------------------------------------- files
def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def to_json(value: Any) -> str:
    return json.dumps(_json_safe(value), indent=2)


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(to_json(data) + "\n")
    tmp.replace(path)


def resolved_arguments(model_args, data_args, lora_args, dropout_config, run_args, training_args, model_path, **extra):
    out = {
        "model": {**dataclasses.asdict(model_args), "model_name_or_path": str(model_path)},
        "data": dataclasses.asdict(data_args),
        "lora": dataclasses.asdict(lora_args),
        "dropout": dropout_config.to_dict(),
        "run": dataclasses.asdict(run_args),
        "training": training_args.to_dict(),
    }
    out.update({name: dataclasses.asdict(value) for name, value in extra.items() if value is not None})
    return out


def write_args(out: Path, arguments: dict[str, Any]) -> None:
    write_json(out / ARGS_FILE, arguments)


def read_args(run: Path) -> dict[str, Any]:
    if not is_run_folder(run):
        raise CLIError(f"{run} is not a hiddenkey run folder (no {ARGS_FILE})")
    return json.loads((run / ARGS_FILE).read_text())


def read_run_arguments(run: Path) -> dict[str, Any] | None:
    path = run / ARGS_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def read_trainer_log(run: Path) -> list[dict[str, Any]]:
    """The Trainer's log history (``trainer_state.json``, written by ``save_state``), or []."""
    from transformers.trainer import TRAINER_STATE_NAME

    path = run / TRAINER_STATE_NAME
    return json.loads(path.read_text()).get("log_history", []) if path.is_file() else []


def write_metrics(out: Path, results: dict[str, Any]) -> None:
    write_json(out / METRICS_FILE, results)


def read_metrics(run: Path) -> dict[str, Any] | None:
    path = run / METRICS_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def write_curves(out: Path, log_history: list[dict[str, Any]], metric_key: str, title: str) -> Path:
    from .plots import plot_training_curves

    return plot_training_curves(log_history, metric_key, out / PLOT_FILE, title=title)


def write_predictions(folder: Path, examples: Sequence, hypotheses: Sequence[str]) -> Path:
    """Write ``{"source", "hypothesis", "references", "meta"}`` per line (JSONL), atomically."""
    if len(examples) != len(hypotheses):
        raise ValueError(f"{len(examples)} examples but {len(hypotheses)} hypotheses")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / PREDICTIONS_FILE
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for ex, hyp in zip(examples, hypotheses):
                row = {"source": ex.source, "hypothesis": hyp, "references": list(ex.references), "meta": ex.meta}
                f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def eval_dir(run: Path) -> Path:
    """Where ``hiddenkey eval`` writes what it regenerates (kept apart from the run's own results)."""
    return run / EVAL_DIR


def eval_scratch_dir(run: Path) -> Path:
    """A scratch folder for the evaluation Trainer; removed after use."""
    return run / EVAL_SCRATCH_DIR
