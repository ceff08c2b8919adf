"""The run folder: its checks, its creation, and every file the tool writes into it.

Each file name the application writes is spelled here and nowhere else (the adapter files are
peft's, ``hiddenkey_config.json`` is the library's :data:`hiddenkey.CONFIG_NAME`, the checkpoints
and TensorBoard logs are the Trainer's).

==========================  ==========================================================
``args.json``               every resolved argument of the run (:func:`write_args`)
``task.json``               the task spec (labels, text columns) ``hiddenkey eval`` needs
``metrics.json``            validation / test metrics and baselines (:func:`write_metrics`)
``training_curves.png``     training loss and validation metric over steps
``predictions.jsonl``       generated texts of an NLG run, one JSON object per line
``eval/``                   what ``hiddenkey eval`` regenerates for an NLG run
``.hiddenkey.lock``         held while a process trains or evaluates in the folder
``.saving/``                the final adapter and state while they are written (then moved in)
==========================  ==========================================================

Every file is written whole or not at all (a temporary name, then a rename), so a killed process
never leaves a half-written JSON file or adapter behind. Faults: a run folder is locked while it is used (a second process gets a clear error); ``--resume``
continues from the last *complete* checkpoint (one whose save was interrupted is removed); Ctrl-C
becomes :class:`RunInterrupted` naming the last checkpoint; a non-finite loss or gradient norm stops
training (:class:`TrainingDiverged`) and the last finite checkpoint becomes the run's result.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .errors import CLIError

logger = logging.getLogger("hiddenkey")

ARGS_FILE = "args.json"
TASK_FILE = "task.json"
LOCK_FILE = ".hiddenkey.lock"
METRICS_FILE = "metrics.json"
PLOT_FILE = "training_curves.png"
PREDICTIONS_FILE = "predictions.jsonl"
EVAL_DIR = "eval"
EVAL_SCRATCH_DIR = "eval_tmp"
RUNS_ROOT = "runs"
SAVING_DIR = ".saving"


# ------------------------------------------------------------------------------------------- faults
class RunInterrupted(Exception):
    """Ctrl-C while the run folder was in use; ``checkpoint`` is the last complete one (or None)."""

    def __init__(self, out: Path, checkpoint: Path | None) -> None:
        super().__init__(f"interrupted: {out}")
        self.out, self.checkpoint = out, checkpoint


class TrainingDiverged(Exception):
    """Training stopped at a non-finite loss or gradient norm; ``kept`` is the checkpoint kept as the result."""

    def __init__(self, out: Path, divergence, kept: Path | None) -> None:
        super().__init__(str(divergence))
        self.out, self.divergence, self.kept = out, divergence, kept


# ------------------------------------------------------------------------------------------- folder
def prepare_output_dir(training_args, run_args, default_name: str) -> Path:
    """Check (not yet create) the run folder; returns its path."""
    from .validation import check_output_dir

    if training_args.output_dir in (None, "trainer_output"):
        training_args.output_dir = str(Path(RUNS_ROOT) / default_name)
    out = Path(training_args.output_dir)
    check_output_dir(str(out))
    if training_args.process_index != 0:
        return out  # the main process checks, locks and prepares the folder; the others only train
    if (out / LOCK_FILE).exists():
        lock_run_dir(out).release()  # another process training here is an error now, before the model loads
    if run_args.resume:
        if not out.is_dir():
            raise CLIError(f"--resume: no checkpoint to resume from: run folder {out} not found")
        if last_complete_checkpoint(out) is None:
            found = ", ".join(p.name for p in checkpoints(out))
            detail = f" ({found}: its save was interrupted)" if found else ""
            raise CLIError(f"--resume: no checkpoint to resume from in {out}{detail}; start again with --overwrite")
    elif _has_content(out) and not run_args.overwrite:
        raise CLIError(f"run folder {out} already exists; pass --overwrite to replace it or --resume to continue")
    return out


def _has_content(out: Path) -> bool:
    return out.is_dir() and any(p.name != LOCK_FILE for p in out.iterdir())


def lock_run_dir(out: Path):
    """Take the run folder's lock (creating the folder if needed), or a CLIError if another process holds it.

    Call it only in the process that writes the run folder (the main process under torchrun). The lock
    is an OS file lock: it dies with its process, so a killed run never leaves the folder locked.
    """
    from filelock import FileLock, Timeout

    out.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(out / LOCK_FILE), blocking=False, thread_local=False)
    try:
        lock.acquire()
    except Timeout:
        raise CLIError(
            f"run folder {out} is in use by another hiddenkey process (it holds {out / LOCK_FILE}); "
            "wait for it to finish, or choose another --output_dir"
        ) from None
    return lock


@contextlib.contextmanager
def run_folder(out: Path, run_args, training_args=None) -> Iterator[Path]:
    """Lock the run folder, then create it, replace its contents (--overwrite) or tidy it (--resume).

    Called once every check has passed: only now does the run folder appear or change. Inside the
    block, Ctrl-C becomes :class:`RunInterrupted`; the lock is released when the block ends. Under
    several processes (``training_args`` given) only the main one locks and prepares the folder, and
    the others wait for it before they go on.
    """
    main = training_args is None or training_args.process_index == 0
    first = training_args.main_process_first(local=False, desc="run folder") if training_args else contextlib.nullcontext()
    lock = None
    try:
        with first:
            if main:
                lock = lock_run_dir(out)
                _prepare_run_folder(out, run_args)
        try:
            yield out
        except KeyboardInterrupt:
            raise RunInterrupted(out, last_complete_checkpoint(out)) from None
    finally:
        if lock is not None:
            lock.release()


def _prepare_run_folder(out: Path, run_args) -> None:
    if run_args.resume:
        _remove_incomplete_checkpoints(out)
    elif run_args.overwrite:
        for path in out.iterdir():
            if path.name != LOCK_FILE:
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    elif _has_content(out):  # filled by another process since prepare_output_dir looked
        raise CLIError(f"run folder {out} already exists; pass --overwrite to replace it or --resume to continue")


def is_run_folder(run: Path) -> bool:
    return (run / ARGS_FILE).is_file()


# ------------------------------------------------------------------------------------------- checkpoints
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
#: Files the Trainer writes into a checkpoint besides the model's own (not copied when a checkpoint is kept).
_TRAINER_FILES = re.compile(r"^(optimizer\.pt|scheduler\.pt|scaler\.pt|trainer_state\.json|training_args\.bin|rng_state.*\.pth)$")
_WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin", "model.safetensors", "pytorch_model.bin",
                 "model.safetensors.index.json")  # fmt: skip


def checkpoints(out: Path) -> list[Path]:
    """The ``checkpoint-N`` folders of a run, newest (highest N) first."""
    if not out.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in out.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def checkpoint_problem(checkpoint: Path) -> str | None:
    """Why a checkpoint is incomplete (an interrupted save), or None when it is complete.

    The Trainer writes ``trainer_state.json`` last, so a complete one that names the checkpoint's step,
    next to complete weights, means the whole save finished.
    """
    from .validation import safetensors_problem

    step = int(_CHECKPOINT.match(checkpoint.name).group(1))
    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text())
    except FileNotFoundError:
        return "no trainer_state.json"
    except (ValueError, OSError):
        return "trainer_state.json is truncated"
    if not isinstance(state, dict) or state.get("global_step") != step:
        return f"trainer_state.json does not describe step {step}"
    weights = [checkpoint / name for name in _WEIGHT_FILES if (checkpoint / name).is_file()]
    if not weights:
        return "no weights"
    for path in weights:
        if path.suffix == ".safetensors" and (problem := safetensors_problem(path)):
            return problem
    return None


def last_complete_checkpoint(out: Path) -> Path | None:
    return next((p for p in checkpoints(out) if checkpoint_problem(p) is None), None)


def _remove_incomplete_checkpoints(out: Path) -> None:
    shutil.rmtree(out / SAVING_DIR, ignore_errors=True)  # a final save that was killed
    for checkpoint in checkpoints(out):
        problem = checkpoint_problem(checkpoint)
        if problem is not None:
            logger.warning("removing %s: its save was interrupted (%s)", checkpoint, problem)
            shutil.rmtree(checkpoint)


def checkpoint_step(checkpoint: Path) -> int:
    return int(_CHECKPOINT.match(checkpoint.name).group(1))


def _finite(checkpoint: Path) -> bool:
    """Finite weights, and no NaN/inf evaluation loss logged at its step (finite weights can still overflow)."""
    from safetensors.torch import load_file

    for path in checkpoint.glob("*.safetensors"):
        if any(not bool(t.isfinite().all()) for t in load_file(str(path)).values() if t.is_floating_point()):
            return False
    step = checkpoint_step(checkpoint)
    history = json.loads((checkpoint / "trainer_state.json").read_text()).get("log_history", [])
    return all(math.isfinite(e["eval_loss"]) for e in history if e.get("step") == step and "eval_loss" in e)


def keep_checkpoint_as_result(checkpoint: Path, out: Path) -> None:
    """Copy a checkpoint's model files (adapter, configs, tokenizer) into the run folder as its result."""
    for path in checkpoint.iterdir():
        if path.is_file() and not _TRAINER_FILES.match(path.name):
            tmp = out / f".{path.name}.tmp"
            shutil.copy2(path, tmp)
            os.replace(tmp, out / path.name)


def route_tensorboard_logs(trainer, out: Path) -> None:
    """TensorBoard logs go inside the run folder, also for evaluations before training starts.

    (HF's TensorBoardCallback otherwise opens its writer on the first log, which may come before
    ``on_train_begin`` sets its folder, and then writes into ``./runs`` of the working directory.)
    """
    from transformers.integrations import TensorBoardCallback
    from transformers.integrations.integration_utils import default_logdir

    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, TensorBoardCallback) and callback.logging_dir is None:
            callback.logging_dir = str(out / default_logdir())


def train_and_save(trainer, out: Path, run_args):
    """Train (from the last complete checkpoint with --resume), then save the adapter, its config and the state.

    Training stops at the first non-finite loss or gradient norm: the last finite checkpoint is then
    kept as the run's result and :class:`TrainingDiverged` is raised. ``train_loss`` covers every
    step, also after a resume.
    """
    from ..callbacks import LogAtEverySave, StopOnNonFinite, mean_train_loss

    last = last_complete_checkpoint(out) if run_args.resume else None
    guard = StopOnNonFinite()
    trainer.add_callback(LogAtEverySave())
    trainer.add_callback(guard)  # last: after a divergence nothing is logged, evaluated or saved
    train_output = trainer.train(resume_from_checkpoint=str(last) if last else None)
    if guard.divergence is not None:
        kept = _keep_last_finite(trainer, out)
        write_metrics(out, {"diverged": {"step": guard.divergence.step, "reason": str(guard.divergence),
                                         "kept_checkpoint": kept.name if kept else None}})  # fmt: skip
        raise TrainingDiverged(out, guard.divergence, kept)
    save_result(trainer, out)
    state = trainer.state
    full = mean_train_loss(state.log_history, state.global_step, checkpoint_step(last) if last else None)
    if full is not None:
        train_output.metrics["train_loss"] = full
        train_output = train_output._replace(training_loss=full)
    if last is not None:
        train_output.metrics["resumed_from_step"] = checkpoint_step(last)
    return train_output


def save_result(trainer, out: Path) -> None:
    """Save the adapter, its configs, the tokenizer and ``trainer_state.json`` into the run folder, each file whole.

    They are written into ``.saving/`` first and then renamed into place: a kill during the save leaves
    the run folder's previous files (or none), never a truncated adapter next to a complete config.
    """
    from transformers.trainer import TRAINER_STATE_NAME

    staging = out / SAVING_DIR
    if trainer.is_world_process_zero():
        shutil.rmtree(staging, ignore_errors=True)
    trainer.save_model(str(staging))  # every process calls it (FSDP/DeepSpeed gather the weights); the main one writes
    if not trainer.is_world_process_zero():
        return
    trainer.state.save_to_json(str(staging / TRAINER_STATE_NAME))
    for path in sorted(staging.iterdir()):
        target = out / path.name
        if target.is_dir() and path.is_dir():
            shutil.rmtree(target)
        os.replace(path, target)
    staging.rmdir()


def _keep_last_finite(trainer, out: Path) -> Path | None:
    best = trainer.state.best_model_checkpoint if trainer.args.load_best_model_at_end else None
    candidates = ([Path(best)] if best else []) + checkpoints(out)
    for checkpoint in candidates:
        if checkpoint.is_dir() and checkpoint_problem(checkpoint) is None and _finite(checkpoint):
            keep_checkpoint_as_result(checkpoint, out)
            return checkpoint
    return None


# ------------------------------------------------------------------------------------------- files
def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def to_json(value: Any) -> str:
    return json.dumps(_json_safe(value), indent=2)


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON under a temporary name, then rename: readers see the old file or the new one."""
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
    """The run's resolved arguments; a CLIError when the folder is missing, not a run, or damaged."""
    if not run.exists():
        raise CLIError(f"run folder {run} not found")
    if not run.is_dir():
        raise CLIError(f"{run} is a file, not a run folder")
    if not is_run_folder(run):
        raise CLIError(f"{run} is not a hiddenkey run folder (no {ARGS_FILE})")
    saved = _read_json_record(run / ARGS_FILE)
    missing = [k for k in ("model", "data", "training") if not isinstance(saved.get(k), dict)]
    if missing:
        raise CLIError(f"{run / ARGS_FILE} is damaged: no {missing[0]!r} section")
    return saved


def _read_json_record(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CLIError(f"{path} is damaged ({' '.join(str(err).split())}); the run folder cannot be used") from None
    if not isinstance(data, dict):
        raise CLIError(f"{path} is damaged (a {type(data).__name__}, not a JSON object); the run folder cannot be used")
    return data


def write_task(out: Path, spec, **extra: Any) -> None:
    """What ``hiddenkey eval`` needs to know of the task without the training data (labels, columns)."""
    write_json(out / TASK_FILE, {**dataclasses.asdict(spec), **extra})


def read_task(run: Path) -> dict[str, Any] | None:
    """The recorded task, or None for a run made before ``task.json`` existed."""
    path = run / TASK_FILE
    return _read_json_record(path) if path.is_file() else None


def check_adapter(run: Path) -> None:
    """The run folder holds a complete trained adapter, or a CLIError saying why not."""
    from .validation import safetensors_problem

    if not (run / "adapter_config.json").is_file():
        metrics = read_metrics(run) or {}
        if "diverged" in metrics:
            raise CLIError(f"{run} has no adapter: training diverged ({metrics['diverged'].get('reason')}) before any checkpoint")
        raise CLIError(
            f"{run} has no trained adapter (adapter_config.json missing): the run did not finish "
            "(continue it with hiddenkey train ... --resume) or its files were deleted"
        )
    weights = run / "adapter_model.safetensors"
    if not weights.is_file() and not (run / "adapter_model.bin").is_file():
        raise CLIError(f"{run} has no adapter weights ({weights.name} missing)")
    if weights.is_file() and (problem := safetensors_problem(weights)):
        raise CLIError(f"{weights} is damaged: {problem}")


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
    return _read_json_record(path) if path.is_file() else None


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
