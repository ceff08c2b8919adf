"""One trial of a sweep or tune: a ``hiddenkey train`` subprocess writing an ordinary run folder.

* A run folder that already holds its final ``metrics.json`` (written last, atomically) is recorded as
  it is: the kill came after the run finished and before the study heard of it.
* A run folder with a checkpoint continues from it (``--resume``); anything else starts afresh
  (``--overwrite``).
* The child dies with its worker (``PR_SET_PDEATHSIG`` on Linux), so a killed sweep never leaves a
  trainer behind that a restarted sweep would race in the same folder.

While it trains, ``hiddenkey train`` reports each validation metric to its Optuna trial when the
environment variable :data:`TRIAL_ENV` names one (:class:`OptunaReporter`); a pruned run stops early and
says so in ``metrics.json`` (``pruned_at_step``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import CLIError
from .runs import read_metrics, read_run_arguments, read_trainer_log

TRIAL_ENV = "HIDDENKEY_OPTUNA_TRIAL"
LOG_TAIL_LINES = 12


@dataclass
class TrialOutcome:
    """What the study records of a finished run."""

    ok: bool
    value: float | None = None
    pruned: bool = False
    attrs: dict[str, Any] = field(default_factory=dict)
    error: str = ""


@dataclass
class Launch:
    """How each trial's ``hiddenkey train`` process starts: CPU threads, a launcher, the GPUs to share out.

    ``gpus`` are ``CUDA_VISIBLE_DEVICES`` values; a running trial holds one of them (``"0"``, or ``"0,1"``
    for a two-GPU trial under a launcher) and gives it back when it ends.
    """

    threads: int | None = None
    launcher: tuple[str, ...] = ()
    gpus: tuple[str, ...] = ()
    _free: queue.Queue = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._free = queue.Queue()
        for gpu in self.gpus:
            self._free.put(gpu)

    def command(self, argv: list[str]) -> list[str]:
        return [*(self.launcher or (sys.executable,)), "-m", "hiddenkey.cli", *argv]

    @contextlib.contextmanager
    def environment(self, extra: dict[str, str] | None = None):
        env = {**os.environ, **(extra or {})}
        if self.threads:
            env["OMP_NUM_THREADS"] = str(self.threads)
            env["MKL_NUM_THREADS"] = str(self.threads)
        gpu = self._free.get() if self.gpus else None
        try:
            if gpu is not None:
                env["CUDA_VISIBLE_DEVICES"] = gpu
            yield env
        finally:
            if gpu is not None:
                self._free.put(gpu)


def add_launch_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, default=None, help="Trials run at the same time by this process (default: the number of --gpus, else 1).")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads per trial (default: cores / workers).")
    parser.add_argument("--gpus", nargs="+", default=[], help="CUDA_VISIBLE_DEVICES values handed out one per running trial: "
                        "--gpus 0 1 2 3 runs four one-GPU trials at once; --gpus 0,1 2,3 with a two-process --launcher.")
    parser.add_argument("--launcher", default=None, help="Command that starts each trial in place of python, followed by "
                        "'-m hiddenkey.cli train ...': e.g. 'accelerate launch --num_processes 2' or 'torchrun --nproc_per_node 2'.")


def launch_from(ns: argparse.Namespace) -> Launch:
    """Check the launch flags and fill ``ns.workers``; one-line errors for bad values."""
    gpus = tuple(g.strip() for g in ns.gpus)
    if any(not g or not all(part.strip().isdigit() for part in g.split(",")) for g in gpus):
        raise CLIError(f"--gpus takes device numbers such as 0 1 or 0,1 2,3; got {' '.join(ns.gpus)}")
    ns.workers = ns.workers if ns.workers is not None else max(1, len(gpus))
    if ns.workers < 1:
        raise CLIError(f"--workers must be >= 1, got {ns.workers}")
    if gpus and ns.workers > len(gpus):
        raise CLIError(f"--workers {ns.workers} is more than the {len(gpus)} GPU group(s) given to --gpus")
    if ns.threads is not None and ns.threads < 1:
        raise CLIError(f"--threads must be >= 1, got {ns.threads}")
    launcher = tuple(shlex.split(ns.launcher)) if ns.launcher else ()
    if ns.launcher is not None and not launcher:
        raise CLIError("--launcher is empty")
    threads = ns.threads or max(1, (os.cpu_count() or 1) // ns.workers)
    return Launch(threads=threads, launcher=launcher, gpus=gpus)


def train_command(argv: list[str], run_dir: Path) -> list[str]:
    """The exact command a trial runs (also what the report prints to reproduce a cell)."""
    from transformers.trainer_utils import get_last_checkpoint

    resume = run_dir.is_dir() and get_last_checkpoint(str(run_dir)) is not None
    return ["hiddenkey", "train", *argv, "--output_dir", str(run_dir), "--resume" if resume else "--overwrite"]


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_trial(
    argv: list[str], run_dir: Path, log_path: Path, launch: Launch | None = None, env: dict[str, str] | None = None
) -> TrialOutcome:
    """Train (unless the run folder already holds final metrics) and read the outcome."""
    launch = launch or Launch()
    started = time.time()
    reused = read_metrics(run_dir) is not None
    if not reused:
        command = train_command(argv, run_dir)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log, launch.environment(env) as child_env:
            log.write(f"\n$ {' '.join(command)}\n".encode())
            log.flush()
            code = subprocess.call(
                launch.command(command[1:]),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=child_env,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
        if code != 0 or read_metrics(run_dir) is None:
            return TrialOutcome(ok=False, error=f"hiddenkey train exited with {code}: {_tail(log_path)}")
    outcome = read_outcome(run_dir)
    outcome.attrs["reused_run_folder"] = reused
    outcome.attrs["duration_s"] = round(time.time() - started, 1)
    if launch.threads:
        outcome.attrs["threads"] = launch.threads
    return outcome


def read_outcome(run_dir: Path) -> TrialOutcome:
    """The study's record of a finished run folder: the validation metric as value, the rest as attributes."""
    metrics = read_metrics(run_dir) or {}
    primary = metrics.get("primary_metric")
    validation = _numbers(metrics.get("validation", {}))
    value = objective_value(validation, primary)
    arguments = read_run_arguments(run_dir)
    attrs = {
        "task": metrics.get("task"),
        "method": metrics.get("method"),
        "primary_metric": primary,
        "validation": validation,
        "test": _numbers(metrics.get("test", {})),
        "train": _numbers(metrics.get("train", {})),
        "dropout": (arguments or {}).get("dropout", {}),
        "lora_r": (arguments or {}).get("lora", {}).get("lora_r"),
        "curves": training_curves(read_trainer_log(run_dir), primary),
    }
    if "final" in metrics:  # the end-of-training result beside the best checkpoint's
        attrs["final"] = {split: _numbers(values) for split, values in metrics["final"].items()}
        attrs["best_step"] = metrics.get("best_step")
    if metrics.get("pruned_at_step") is not None:
        attrs["pruned_at_step"] = metrics["pruned_at_step"]
    if value is None:
        return TrialOutcome(ok=False, attrs=attrs, error=f"{run_dir}: no validation {primary!r} or loss in metrics.json")
    return TrialOutcome(ok=True, value=float(value), pruned="pruned_at_step" in attrs, attrs=attrs)


def objective_value(validation: dict[str, float], primary: str | None) -> float | None:
    """What a study maximises: the validation primary metric, or minus the validation loss where the
    primary metric is only computed on the test set (BLEU of generated text)."""
    if primary in validation:
        return validation[primary]
    return -validation["loss"] if "loss" in validation else None


def training_curves(log_history: list[dict[str, Any]], primary: str | None) -> dict[str, Any]:
    """Training loss and the validation metric over steps (the validation loss for NLG runs)."""
    from .plots import curves

    key = f"eval_{primary}" if any(f"eval_{primary}" in e for e in log_history) else "eval_loss"
    loss, metric = curves(log_history, key)
    return {"loss": [list(p) for p in loss], "metric": [list(p) for p in metric], "metric_key": key}


def _numbers(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _tail(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    error_lines = [line for line in lines if "error" in line.lower()]
    return (error_lines or lines or ["(no output)"])[-1].strip()[:300] + f" (log: {path})"


# ------------------------------------------------------------------------------------------- reporting
def reporter_env(storage_url: str, study_name: str, trial_number: int, pruner: str | None) -> dict[str, str]:
    return {TRIAL_ENV: json.dumps({"storage": storage_url, "study": study_name, "trial": trial_number, "pruner": pruner})}


def trial_reporter(metric_key: str, negate: bool = False):
    """An :class:`OptunaReporter` when this process trains for an Optuna trial, else None.

    ``negate`` reports minus the metric (a loss), since studies maximise."""
    spec = os.environ.get(TRIAL_ENV)
    if not spec:
        return None
    return OptunaReporter(json.loads(spec), metric_key, -1.0 if negate else 1.0)


def _callback_base():
    from transformers import TrainerCallback

    return TrainerCallback


class OptunaReporter(_callback_base()):
    """Reports each validation metric to the trial, and stops training when the pruner says so."""

    def __init__(self, spec: dict[str, Any], metric_key: str, sign: float = 1.0) -> None:
        import optuna

        from .studies import load_study, make_pruner, open_storage

        ref = load_study(open_storage(spec["storage"]), spec["study"], pruner=make_pruner(spec.get("pruner")))
        trial_id = ref.storage.get_trial_id_from_study_id_trial_number(ref.study_id, spec["trial"])
        self.trial = optuna.trial.Trial(ref.study, trial_id)
        self.metric_key = metric_key
        self.sign = sign
        self.reported: set[int] = set()
        self.pruned_at: int | None = None

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        value = (metrics or {}).get(self.metric_key)
        step = state.global_step
        if value is None or step == 0 or step in self.reported or self.pruned_at is not None:
            return
        self.reported.add(step)
        self.trial.report(self.sign * float(value), step)
        if self.trial.should_prune():
            self.pruned_at = step
            control.should_training_stop = True
