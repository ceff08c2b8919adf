"""``hiddenkey sweep SPEC --output_dir DIR``: every configuration of a grid, as an Optuna study.

    hiddenkey sweep docs/results/study.yaml --output_dir sweeps/study            # SQLite in the folder
    hiddenkey sweep spec.yaml --output_dir sweeps/s --workers 2                   # two trials at a time
    hiddenkey sweep spec.yaml --output_dir /scratch/s --storage postgresql://user:pw@host/db   # many machines

The folder holds ``study.db`` (the Optuna study, unless ``--storage`` names another), ``spec.json`` (the
expanded spec, which fixes what the folder is for), ``runs/<configuration>/`` (one ordinary
``hiddenkey train`` run folder per configuration) and ``logs/<configuration>.log``. Killed (even with
SIGKILL) and started again with the same command, a sweep finishes only what is missing: trials that were
running are retried (from their last checkpoint), a run that had finished is recorded without training,
and no configuration completes twice. See :mod:`hiddenkey.cli.studies` for how workers share a study.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import CLIError
from .trials import add_launch_arguments, launch_from
from .specs import (
    GridPoint,
    check_argv,
    check_keys,
    expand_grid,
    normalise_train,
    read_spec,
    slugs,
    spec_digest,
    to_argv,
    train_argument_names,
)

SPEC_RECORD = "spec.json"
RUNS_DIR = "runs"
LOGS_DIR = "logs"
PLAN_LOCK = ".plan.lock"
POLL_S = 3.0


@dataclass
class SweepPlan:
    """A checked spec: the shared arguments and every configuration, with its run-folder name."""

    name: str
    train: dict[str, Any]
    points: list[GridPoint]
    slugs: dict[str, str]
    digest: str

    def arguments(self, point: GridPoint) -> dict[str, Any]:
        return {**self.train, **point.params}

    def argv(self, point: GridPoint) -> list[str]:
        return to_argv(self.arguments(point))

    def record(self) -> dict[str, Any]:
        return {"digest": self.digest, "train": self.train, "grid": [p.params for p in self.points]}

    @property
    def varied(self) -> list[str]:
        """Grid keys that take more than one value."""
        values: dict[str, set[str]] = {}
        for point in self.points:
            for key, value in point.values:
                values.setdefault(key, set()).add(json.dumps(value, sort_keys=True))
        return [k for k, v in values.items() if len(v) > 1]


def load_plan(spec_path: str | Path, study_name: str | None = None) -> SweepPlan:
    """Read and check a sweep spec: every configuration is parsed as ``hiddenkey train`` would parse it."""
    data = read_spec(spec_path)
    check_keys(data, ("train", "grid"), ("grid",), str(spec_path))
    known = train_argument_names()
    train = normalise_train(data.get("train"), known)
    points = expand_grid(data["grid"], known, train)
    for point in points:
        check_argv(to_argv({**train, **point.params}), f"grid point {point.label()}")
    digest = spec_digest({"train": train, "grid": [p.key for p in points]})
    name = study_name or f"{Path(spec_path).stem}-{digest}"
    return SweepPlan(name=name, train=train, points=points, slugs=slugs(points), digest=digest)


# ------------------------------------------------------------------------------------------- folder
def check_folder(out: Path, plan: SweepPlan) -> None:
    """A sweep folder belongs to one spec: refuse to mix runs of another one into it."""
    if out.exists() and not out.is_dir():
        raise CLIError(f"--output_dir {out} exists and is not a folder")
    record = out / SPEC_RECORD
    if record.is_file():
        stored = json.loads(record.read_text())
        if stored.get("digest") != plan.digest:
            raise CLIError(
                f"{out} holds a sweep of another spec (digest {stored.get('digest')}, this one {plan.digest}); "
                "use a new --output_dir"
            )


def write_record(out: Path, plan: SweepPlan) -> None:
    out.mkdir(parents=True, exist_ok=True)
    record = out / SPEC_RECORD
    if not record.is_file():
        tmp = record.with_name(record.name + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(plan.record(), indent=2, default=str) + "\n")
        tmp.replace(record)


def ensure_planned(ref, plan: SweepPlan, out: Path) -> None:
    """Enqueue every configuration that has no live trial (never planned, or failed) exactly once."""
    from filelock import FileLock

    from .studies import LIVE_STATES

    with FileLock(str(out / PLAN_LOCK)):
        stored = ref.study.user_attrs.get("sweep")
        if stored is None:
            ref.study.set_user_attr("sweep", plan.record())
        elif stored.get("digest") != plan.digest:
            raise CLIError(f"study {plan.name!r} holds another sweep (digest {stored.get('digest')}); pick another --study_name")
        live = {t.user_attrs.get("config_key") for t in ref.study.get_trials(deepcopy=False) if t.state.name in LIVE_STATES}
        for point in plan.points:
            if point.key not in live:
                ref.study.enqueue_trial(
                    params={},
                    user_attrs={"config_key": point.key, "config": point.params, "slug": plan.slugs[point.key]},
                )


# ------------------------------------------------------------------------------------------- progress
class Progress:
    """One line per finished trial, with n/N over the whole sweep and an ETA from this run's pace."""

    def __init__(self, total: int, done: int, workers: int) -> None:
        self.total, self.done, self.workers = total, done, workers
        self.durations: list[float] = []
        self.lock = threading.Lock()
        self.failed: list[str] = []

    def finished(self, label: str, outcome, seconds: float) -> None:
        with self.lock:
            if outcome.ok:
                self.done += 1
                if not outcome.attrs.get("reused_run_folder"):
                    self.durations.append(seconds)
            metric = outcome.attrs.get("primary_metric") or "metric"
            if outcome.ok:
                test = outcome.attrs.get("test", {}).get(metric)
                result = f"validation {metric} {outcome.value:.4f}" + (f", test {test:.4f}" if test is not None else "")
                if outcome.pruned:
                    result += f" (pruned at step {outcome.attrs['pruned_at_step']})"
                if outcome.attrs.get("reused_run_folder"):
                    result += " (recorded from its finished run folder)"
            else:
                self.failed.append(label)
                result = f"FAILED: {outcome.error}"
            print(f"[{self.done}/{self.total}] {label}: {result}  ({_clock(seconds)}{self._eta()})", flush=True)

    def _eta(self) -> str:
        if not self.durations or self.done >= self.total:
            return ""
        mean = sum(self.durations) / len(self.durations)
        return f", ETA {_clock(mean * (self.total - self.done) / self.workers)}"


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


# ------------------------------------------------------------------------------------------- workers
def work(ref, plan: SweepPlan, out: Path, progress: Progress, stop: threading.Event, launch) -> None:
    """Pop and run trials until none is waiting and none is running anywhere."""
    import optuna

    from .studies import claim, finish, heartbeat, owner_of, pop_waiting, reclaim_dead_trials
    from .trials import run_trial

    points = {p.key: p for p in plan.points}
    while not stop.is_set():
        reclaim_dead_trials(ref)
        trial_id = pop_waiting(ref)
        if trial_id is None:
            running = ref.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
            if not running:
                return
            stop.wait(POLL_S)  # others' trials: finished by them, or reclaimed once their worker is gone
            continue
        claim(ref, trial_id)
        trial = ref.storage.get_trial(trial_id)
        owner = owner_of(ref, trial)
        point = points.get(trial.user_attrs.get("config_key"))
        if owner is not None or point is None:
            reason = f"duplicate of trial {owner}" if owner is not None else "not a configuration of this spec"
            finish(ref, trial_id, trial.number, {"failure": reason}, None)
            continue
        argv = plan.argv(point)
        slug = plan.slugs[point.key]
        finish_attrs = {"argv": argv, "run_dir": str(Path(RUNS_DIR) / slug)}
        record_params(ref, trial_id, point, plan)
        started = time.time()
        with heartbeat(ref, trial_id):
            outcome = run_trial(argv, out / RUNS_DIR / slug, out / LOGS_DIR / f"{slug}.log", launch)
        if stop.is_set() and not outcome.ok:
            return  # interrupted: the trial is reclaimed by the next start
        attrs = {**finish_attrs, **outcome.attrs, **({} if outcome.ok else {"failure": outcome.error})}
        if finish(ref, trial_id, trial.number, attrs, outcome.value if outcome.ok else None):
            progress.finished(point.label(), outcome, time.time() - started)


def record_params(ref, trial_id: int, point: GridPoint, plan: SweepPlan) -> None:
    """Grid values as Optuna parameters (categorical over the axis' values), so Optuna's tools show them."""
    from optuna.distributions import CategoricalDistribution

    present = ref.storage.get_trial(trial_id).params
    for key, value in point.values:
        if key in present or not isinstance(value, (str, int, float, bool)):
            continue
        choices = tuple(dict.fromkeys(v for p in plan.points for k, v in p.values if k == key and isinstance(v, (str, int, float, bool))))
        distribution = CategoricalDistribution(choices)
        ref.storage.set_trial_param(trial_id, key, distribution.to_internal_repr(value), distribution)


def completed_configurations(ref) -> set[str]:
    import optuna

    return {t.user_attrs.get("config_key") for t in ref.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))}


def run_sweep(
    plan: SweepPlan,
    out: Path,
    storage: str | None,
    workers: int,
    launch,
    heartbeat_s: int = 20,
    report_source: Path | None = None,
):
    """Run every missing configuration; returns (exit code, study)."""
    from .studies import create_or_load_study, open_storage, reclaim_dead_trials, storage_url

    check_folder(out, plan)
    write_record(out, plan)
    ref, _ = create_or_load_study(open_storage(storage_url(out, storage), heartbeat_s), plan.name)
    ensure_planned(ref, plan, out)
    reclaim_dead_trials(ref)
    done = len(completed_configurations(ref) & {p.key for p in plan.points})
    print(f"sweep {plan.name}: {len(plan.points)} configurations, {done} done; {workers} worker(s); folder {out}", flush=True)
    progress = Progress(len(plan.points), done, workers)
    stop = threading.Event()
    pool = [threading.Thread(target=work, args=(ref, plan, out, progress, stop, launch), daemon=True) for _ in range(workers)]
    for thread in pool:
        thread.start()
    try:
        while any(t.is_alive() for t in pool):
            for thread in pool:
                thread.join(timeout=0.5)
    except KeyboardInterrupt:
        stop.set()
        print("\nhiddenkey: sweep interrupted; run the same command to continue where it stopped", file=sys.stderr)
        return 130, ref
    missing = [p.label() for p in plan.points if p.key not in completed_configurations(ref)]
    if missing:
        print(f"{len(missing)} configuration(s) did not complete: {'; '.join(missing[:5])}"
              f"{' ...' if len(missing) > 5 else ''}. Logs in {out / LOGS_DIR}; run the same command to retry them.")
        return 1, ref
    print(f"all {len(plan.points)} configurations complete. Report: hiddenkey report {report_source or out}")
    return 0, ref


def cmd_sweep(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="hiddenkey sweep",
        description="Run every configuration of a grid of `hiddenkey train` arguments as an Optuna study "
        "(resumable; several workers or machines can share it).",
    )
    parser.add_argument("spec", help="YAML or JSON spec with the keys 'train' (shared arguments) and 'grid'.")
    parser.add_argument("--output_dir", "--output-dir", required=True, help="Sweep folder: study, run folders, logs.")
    parser.add_argument("--storage", default=None, help="Optuna storage URL shared by many machines (default: SQLite in the folder).")
    parser.add_argument("--study_name", "--study-name", default=None, help="Study name (default: spec name + digest).")
    add_launch_arguments(parser)
    parser.add_argument("--heartbeat_interval", type=int, default=20, help="Seconds between trial heartbeats.")
    ns = parser.parse_args(argv)
    launch = launch_from(ns)
    if ns.heartbeat_interval < 1:
        raise CLIError(f"--heartbeat_interval must be >= 1 second, got {ns.heartbeat_interval}")
    plan = load_plan(ns.spec, ns.study_name)
    return run_sweep(plan, Path(ns.output_dir), ns.storage, ns.workers, launch, ns.heartbeat_interval)[0]
