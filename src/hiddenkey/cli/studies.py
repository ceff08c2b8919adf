"""The Optuna study behind ``sweep``, ``tune`` and ``report``: storage, the trial queue, liveness.

The study lives in SQLite inside the output folder by default (nothing to start); any RDB URL Optuna
accepts (``postgresql://...``, ``mysql://...``) lets workers on many machines share it. Trials are
the unit of work:

* a sweep enqueues one WAITING trial per configuration; a worker *pops* one by moving it to RUNNING,
  which a server database does atomically (a row lock). SQLite ignores ``SELECT ... FOR UPDATE``, so
  two connections could both pop one trial; pops on a SQLite study are serialised by a file lock beside
  the database file (SQLite is local to one machine anyway), so two workers never get the same trial;
* every running trial records its host, worker pid and a heartbeat (Optuna's ``RDBStorage``);
* a trial whose worker died is failed and re-enqueued as a fresh WAITING copy
  (``RetryHeartbeatStaleTrialCallback``): at once when its worker ran on this host (the pid is gone),
  after the heartbeat grace period when it ran elsewhere;
* of several live trials of one configuration (which only a race between two planners can create)
  the lowest-numbered one runs and the others step aside, so no configuration completes twice.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator

from .errors import CLIError

STUDY_FILE = "study.db"
DEFAULT_HEARTBEAT_S = 20
LIVE_STATES = ("WAITING", "RUNNING", "COMPLETE")


def _optuna():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def storage_url(output_dir: Path, storage: str | None) -> str:
    return storage or f"sqlite:///{(output_dir / STUDY_FILE).resolve()}"


SCHEMA_ATTEMPTS = 5


def open_storage(url: str, heartbeat_interval: int = DEFAULT_HEARTBEAT_S):
    """An RDB storage with heartbeats; failed-by-heartbeat trials are re-enqueued."""
    optuna = _optuna()
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
    for attempt in range(SCHEMA_ATTEMPTS):
        try:
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat_interval,
                grace_period=max(3 * heartbeat_interval, heartbeat_interval + 10),
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(),
            )
        except Exception as err:  # sqlalchemy raises its own types for bad URLs and unreachable servers
            # Workers starting together on a new database race to create its schema; the losers see a
            # unique-constraint error on Optuna's version table and find the schema there on a retry.
            racing = "UNIQUE constraint" in str(err) or "duplicate key" in str(err)
            if racing and attempt + 1 < SCHEMA_ATTEMPTS:
                time.sleep(0.2 * (attempt + 1))
                continue
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise CLIError(f"cannot open the study storage {url!r}: {reason}") from None
    raise AssertionError("unreachable")


@dataclass
class StudyRef:
    """A study together with the storage it was opened on (Optuna keeps its storage private)."""

    study: Any
    storage: Any

    @cached_property
    def study_id(self) -> int:
        return self.storage.get_study_id_from_name(self.study.study_name)

    @cached_property
    def pop_lock(self):
        """Serialises pops where the database cannot (SQLite); a no-op context for server databases."""
        url = str(self.storage.engine.url)
        database = self.storage.engine.url.database
        if not url.startswith("sqlite") or not database or database == ":memory:":
            return _ProcessLock()
        from filelock import FileLock

        return _ProcessLock(FileLock(f"{database}.pop.lock"))


class _ProcessLock:
    """A thread lock, and optionally a file lock for the other processes on this machine."""

    def __init__(self, file_lock=None) -> None:
        self.thread_lock = threading.Lock()
        self.file_lock = file_lock

    def __enter__(self) -> None:
        self.thread_lock.acquire()
        if self.file_lock is not None:
            self.file_lock.acquire()

    def __exit__(self, *exc: object) -> None:
        if self.file_lock is not None:
            self.file_lock.release()
        self.thread_lock.release()


def study_names(storage) -> list[str]:
    optuna = _optuna()
    return [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]


def load_study(storage, name: str, pruner=None) -> StudyRef:
    optuna = _optuna()
    try:
        return StudyRef(optuna.load_study(study_name=name, storage=storage, pruner=pruner), storage)
    except KeyError:
        raise CLIError(f"no study named {name!r} in the storage; studies: {', '.join(study_names(storage)) or 'none'}") from None


def create_or_load_study(storage, name: str, sampler=None, pruner=None) -> tuple[StudyRef, bool]:
    """(study, created): ``created`` is True for exactly one of several processes racing to create it."""
    optuna = _optuna()
    try:
        study = optuna.create_study(storage=storage, study_name=name, direction="maximize", sampler=sampler, pruner=pruner)
        return StudyRef(study, storage), True
    except optuna.exceptions.DuplicatedStudyError:
        return StudyRef(optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner), storage), False


PRUNERS = ("median", "halving", "none")


def make_pruner(name: str | None):
    """Optuna's median rule or asynchronous successive halving on the reported validation metric."""
    optuna = _optuna()
    if name in (None, "none"):
        return optuna.pruners.NopPruner()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=0)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    raise CLIError(f"unknown pruner {name!r}; choose one of {', '.join(PRUNERS)}")


# ------------------------------------------------------------------------------------------- liveness
def _this_process() -> dict[str, Any]:
    import psutil

    me = psutil.Process()
    return {"host": socket.gethostname(), "pid": me.pid, "pid_started": me.create_time()}


def claim(ref: StudyRef, trial_id: int) -> None:
    """Record which process runs the trial (host, pid and the pid's start time, against pid reuse)."""
    for key, value in {**_this_process(), "started_at": time.time()}.items():
        ref.storage.set_trial_user_attr(trial_id, key, value)


def _worker_is_gone(trial) -> bool:
    """True only for a trial whose worker ran on this host and no longer exists."""
    import psutil

    attrs = trial.user_attrs
    if attrs.get("host") != socket.gethostname() or "pid" not in attrs or "pid_started" not in attrs:
        return False  # another host, or a claim still being written
    if attrs["pid"] == os.getpid():
        return False
    try:
        return abs(psutil.Process(attrs["pid"]).create_time() - attrs["pid_started"]) > 1e-3
    except psutil.NoSuchProcess:
        return True


def reclaim_dead_trials(ref: StudyRef) -> int:
    """Fail and re-enqueue trials whose worker died: on this host now, elsewhere after the grace period."""
    optuna = _optuna()
    optuna.storages.fail_stale_trials(ref.study)
    storage = ref.storage
    retry = storage.get_heartbeat_stale_trial_callback()
    reclaimed = 0
    for trial in ref.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if not _worker_is_gone(trial):
            continue
        try:
            storage.set_trial_user_attr(trial._trial_id, "failure", "its worker process died")
            won = storage.set_trial_state_values(trial._trial_id, state=optuna.trial.TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            won = False
        if won:  # only the process that failed it re-enqueues it
            retry(ref.study, storage.get_trial(trial._trial_id))
            reclaimed += 1
    return reclaimed


def pop_waiting(ref: StudyRef) -> int | None:
    """Move the first WAITING trial to RUNNING and return its id (atomic in the storage), or None."""
    optuna = _optuna()
    storage = ref.storage
    with ref.pop_lock:
        for trial in storage.get_all_trials(ref.study_id, deepcopy=False, states=(optuna.trial.TrialState.WAITING,)):
            try:
                if storage.set_trial_state_values(trial._trial_id, state=optuna.trial.TrialState.RUNNING):
                    return trial._trial_id
            except optuna.exceptions.UpdateFinishedTrialError:
                continue
    return None


def owner_of(ref: StudyRef, trial) -> int | None:
    """The number of a lower-numbered live trial of the same configuration, which runs instead of ``trial``."""
    key = trial.user_attrs.get("config_key")
    for other in ref.study.get_trials(deepcopy=False):
        if (
            other.number < trial.number
            and other.user_attrs.get("config_key") == key
            and other.state.name in LIVE_STATES
        ):
            return other.number
    return None


@contextlib.contextmanager
def heartbeat(ref: StudyRef, trial_id: int) -> Iterator[None]:
    """Record the trial's heartbeat from a background thread while the block runs."""
    storage = ref.storage
    interval = storage.get_heartbeat_interval()
    stop = threading.Event()

    def beat() -> None:
        while True:
            with contextlib.suppress(Exception):  # a missed beat is retried at the next interval
                storage.record_heartbeat(trial_id)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def finish(ref: StudyRef, trial_id: int, number: int, attrs: dict[str, Any], value: float | None) -> bool:
    """Record attributes and the result (COMPLETE with ``value``, else FAIL); False if another worker
    finished the trial first (it was reclaimed, and its copy decides)."""
    optuna = _optuna()
    try:
        for key, val in attrs.items():
            ref.storage.set_trial_user_attr(trial_id, key, val)
        if value is None:
            ref.study.tell(number, state=optuna.trial.TrialState.FAIL)
        else:
            ref.study.tell(number, value)
        return True
    except (optuna.exceptions.UpdateFinishedTrialError, ValueError):
        return False  # tell() raises ValueError for a finished trial


def counts(ref: StudyRef) -> dict[str, int]:
    out: dict[str, int] = {}
    for trial in ref.study.get_trials(deepcopy=False):
        out[trial.state.name] = out.get(trial.state.name, 0) + 1
    return out
