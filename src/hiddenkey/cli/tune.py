"""``hiddenkey tune SPEC --output_dir DIR``: find the drop rate and KL weight that help, then prove it.

    hiddenkey tune docs/results/encoder/tune.yaml --output_dir sweeps/tune --n_trials 24 --pruner median

The spec has the ``train`` key of a sweep spec and an optional ``search`` key (defaults shown)::

    search:
      rate: [0.01, 0.3]                 # log-uniform; the paper's grid spans 0.01 ... 0.3
      consistency_weight: [0.01, 10]    # log-uniform; the paper's KL-weight grid spans 0.01 ... 10
      method: [hiddenkey]               # categorical; the weight is searched only for methods with a KL

Phase 1 searches with Optuna's TPE sampler; each trial is a ``hiddenkey train`` run that reports its
validation metric to Optuna at every evaluation, so a pruner (median rule or successive halving) stops
hopeless trials early. Phase 2 retrains the best setting and the baseline with the same seeds
(``--seeds``, at least 3) as a sweep, and prints their test metrics side by side with a paired t-test
and a Wilcoxon signed-rank test. Both phases are studies in the same storage; ``hiddenkey report DIR``
renders them. Killed and started again, tune continues: completed trials count toward ``--n_trials``.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .errors import CLIError
from .trials import add_launch_arguments, launch_from
from .specs import check_argv, check_keys, normalise_train, read_spec, spec_digest, to_argv, train_argument_names

DEFAULT_SEARCH = {"rate": [0.01, 0.3], "consistency_weight": [0.01, 10.0], "method": ["hiddenkey"]}
RANGE_KEYS = ("rate", "consistency_weight")
KL_METHODS = ("hiddenkey",)
SEARCH_DIR = "search"
FINAL_DIR = "final"


@dataclass
class SearchSpace:
    rate: tuple[float, float]
    consistency_weight: tuple[float, float]
    methods: tuple[str, ...]

    def sample(self, trial) -> dict[str, Any]:
        """Suggest one setting: the method, its drop rate, and the KL weight where the method has a KL."""
        method = trial.suggest_categorical("method", list(self.methods)) if len(self.methods) > 1 else self.methods[0]
        params: dict[str, Any] = {"method": method, "rate": trial.suggest_float("rate", *self.rate, log=True)}
        if method in KL_METHODS:
            params["consistency_weight"] = trial.suggest_float("consistency_weight", *self.consistency_weight, log=True)
        return params


def parse_search(search: Any) -> SearchSpace:
    from ..config import PRESETS

    merged = {**DEFAULT_SEARCH, **(search or {})}
    if not isinstance(search or {}, dict):
        raise CLIError("spec 'search' must be a mapping (rate, consistency_weight, method)")
    unknown = sorted(set(merged) - set(DEFAULT_SEARCH))
    if unknown:
        raise CLIError(f"search: unknown key(s) {unknown}; tune searches {', '.join(DEFAULT_SEARCH)}")
    ranges = {}
    for key in RANGE_KEYS:
        value = merged[key]
        if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value)):
            raise CLIError(f"search: {key} must be a range [low, high], got {value!r}")
        low, high = float(value[0]), float(value[1])
        if not 0 < low < high or (key == "rate" and high >= 1):
            raise CLIError(f"search: {key} range must satisfy 0 < low < high{' < 1' if key == 'rate' else ''}, got {value!r}")
        ranges[key] = (low, high)
    methods = merged["method"] if isinstance(merged["method"], list) else [merged["method"]]
    bad = [m for m in methods if m not in PRESETS or m == "baseline"]
    if not methods or bad:
        raise CLIError(f"search: method must list presets other than baseline ({', '.join(p for p in PRESETS if p != 'baseline')}), got {methods!r}")
    return SearchSpace(ranges["rate"], ranges["consistency_weight"], tuple(methods))


# ------------------------------------------------------------------------------------------- search
def search(
    ref,
    objective: Callable[[Any], float],
    n_trials: int,
    timeout: float | None,
    workers: int = 1,
) -> None:
    """Run TPE trials until ``n_trials`` have finished (COMPLETE or PRUNED, counting earlier sessions) or
    ``timeout`` seconds pass. ``objective(trial)`` trains, reports intermediate values, raises TrialPruned."""
    import optuna

    from .studies import reclaim_dead_trials

    reclaim_dead_trials(ref)
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    remaining = n_trials - len(ref.study.get_trials(deepcopy=False, states=finished))
    if remaining <= 0:
        return
    ref.study.optimize(
        objective,
        n_trials=remaining,
        timeout=timeout,
        n_jobs=workers,
        callbacks=[optuna.study.MaxTrialsCallback(n_trials, states=finished)],
        catch=(RuntimeError,),
    )


def make_sampler(seed: int | None, workers: int):
    import optuna

    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=5, multivariate=True, constant_liar=workers > 1)


def training_objective(ref, storage_url: str, train: dict[str, Any], space: SearchSpace, out: Path, pruner: str, launch):
    """The objective of a tuning trial: a ``hiddenkey train`` run reporting to Optuna as it trains."""
    import optuna

    from .studies import claim
    from .trials import reporter_env, run_trial

    def objective(trial) -> float:
        claim(ref, ref.storage.get_trial_id_from_study_id_trial_number(ref.study_id, trial.number))
        params = space.sample(trial)
        arguments = {**train, **params}
        argv = to_argv(arguments)
        check_argv(argv, f"trial {trial.number}")
        run_dir = out / SEARCH_DIR / f"trial-{trial.number}"
        trial.set_user_attr("config", params)
        trial.set_user_attr("argv", argv)
        trial.set_user_attr("run_dir", str(run_dir.relative_to(out)))
        env = reporter_env(storage_url, ref.study.study_name, trial.number, pruner)
        outcome = run_trial(argv, run_dir, out / "logs" / f"trial-{trial.number}.log", launch, env=env)
        for key, value in outcome.attrs.items():
            trial.set_user_attr(key, value)
        if not outcome.ok:
            raise RuntimeError(outcome.error)
        label = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
        print(f"trial {trial.number}: {label}: validation {outcome.attrs.get('primary_metric')} {outcome.value:.4f}"
              + (f" (pruned at step {outcome.attrs['pruned_at_step']})" if outcome.pruned else ""), flush=True)
        if outcome.pruned:
            raise optuna.TrialPruned(f"pruned at step {outcome.attrs['pruned_at_step']}")
        return outcome.value

    return objective


# ------------------------------------------------------------------------------------------- final
def best_setting(ref) -> dict[str, Any]:
    """The best trial's setting, floats rounded to 3 significant digits (readable, and as good: the
    metric cannot resolve differences that small)."""
    try:
        best = ref.study.best_trial
    except ValueError:
        raise CLIError("no tuning trial completed; nothing to retrain") from None
    setting = dict(best.user_attrs.get("config") or best.params)
    return {k: float(f"{v:.3g}") if isinstance(v, float) else v for k, v in setting.items()}


def final_comparison(ref, seeds: list[int]) -> tuple[str, list[tuple[int, float, float]]]:
    """(metric name, [(seed, best setting's test metric, baseline's test metric)]) from the final sweep."""
    import optuna

    values: dict[str, dict[int, float]] = {"best": {}, "baseline": {}}
    metric = "metric"
    for trial in ref.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        config = trial.user_attrs.get("config", {})
        metric = trial.user_attrs.get("primary_metric") or metric
        test = trial.user_attrs.get("test", {}).get(metric)
        value = test if test is not None else trial.value
        values["baseline" if config.get("method") == "baseline" else "best"][config.get("seed")] = value
    rows = [(s, values["best"][s], values["baseline"][s]) for s in seeds if s in values["best"] and s in values["baseline"]]
    return metric, rows


def print_comparison(setting: dict[str, Any], metric: str, rows: list[tuple[int, float, float]]) -> None:
    import numpy as np

    from .report import paired_tests

    label = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in setting.items())
    print(f"\ntest {metric}: best setting ({label}) against the baseline, same seeds")
    print(f"{'seed':>6} {'best':>9} {'baseline':>9} {'diff':>9}")
    for seed, best, base in rows:
        print(f"{seed:>6} {best:>9.4f} {base:>9.4f} {best - base:>+9.4f}")
    if not rows:
        print("no seed finished for both settings")
        return
    best = np.array([r[1] for r in rows])
    base = np.array([r[2] for r in rows])
    p_t, p_w = paired_tests(best, base)
    fmt = lambda p: "n/a" if p is None else f"{p:.3g}"  # noqa: E731
    print(f"{'mean':>6} {best.mean():>9.4f} {base.mean():>9.4f} {(best - base).mean():>+9.4f}")
    print(f"paired t-test p = {fmt(p_t)}, Wilcoxon signed-rank p = {fmt(p_w)} (two-sided, n = {len(rows)})")


# ------------------------------------------------------------------------------------------- command
def cmd_tune(argv: list[str]) -> int:
    from .studies import PRUNERS, create_or_load_study, make_pruner, open_storage, storage_url
    from .sweep import SweepPlan, run_sweep
    from .specs import GridPoint, slugs

    parser = argparse.ArgumentParser(
        prog="hiddenkey tune",
        description="Search the drop rate and KL weight with Optuna (TPE + pruning), then retrain the best "
        "setting and the baseline with the same seeds and compare their test metrics.",
    )
    parser.add_argument("spec", help="YAML or JSON spec with 'train' (shared arguments) and optional 'search'.")
    parser.add_argument("--output_dir", "--output-dir", required=True)
    parser.add_argument("--n_trials", "--n-trials", type=int, default=20, help="Search trials in total (default 20).")
    parser.add_argument("--timeout", type=float, default=None, help="Stop starting search trials after this many seconds.")
    parser.add_argument("--pruner", choices=PRUNERS, default="median", help="Stop hopeless trials early (default: median).")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="Seeds of the final comparison (>= 3).")
    parser.add_argument("--storage", default=None, help="Optuna storage URL (default: SQLite in the folder).")
    add_launch_arguments(parser)
    parser.add_argument("--sampler_seed", "--sampler-seed", type=int, default=0, help="Seed of the TPE sampler.")
    ns = parser.parse_args(argv)
    if ns.n_trials < 1:
        raise CLIError(f"--n_trials must be >= 1, got {ns.n_trials}")
    if len(set(ns.seeds)) < 3:
        raise CLIError(f"--seeds needs at least 3 different seeds for a paired comparison, got {ns.seeds}")
    launch = launch_from(ns)

    data = read_spec(ns.spec)
    check_keys(data, ("train", "search"), (), ns.spec)
    known = train_argument_names()
    train = normalise_train(data.get("train"), known)
    for key in ("method", "rate", "consistency_weight"):
        if key in train:
            raise CLIError(f"train: '{key}' is what tune searches; remove it from 'train'")
    space = parse_search(data.get("search"))
    check_argv(to_argv({**train, "method": space.methods[0], "rate": space.rate[0]}), "train")
    digest = spec_digest({"train": train, "search": data.get("search")})
    name = f"{Path(ns.spec).stem}-tune-{digest}"
    out = Path(ns.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    url = storage_url(out, ns.storage)
    storage = open_storage(url)

    ref, _ = create_or_load_study(storage, name, sampler=make_sampler(ns.sampler_seed, ns.workers), pruner=make_pruner(ns.pruner))
    ref.study.set_user_attr("tune", {"train": train, "search": data.get("search") or {}, "n_trials": ns.n_trials})
    print(f"tune {name}: searching rate in {space.rate}, consistency_weight in {space.consistency_weight}, "
          f"method in {list(space.methods)} "
          f"({ns.n_trials} trials, pruner {ns.pruner}); folder {out}", flush=True)
    started = time.time()
    search(ref, training_objective(ref, url, train, space, out, ns.pruner, launch), ns.n_trials, ns.timeout, ns.workers)
    setting = best_setting(ref)
    print(f"best setting after {len(ref.study.trials)} trials ({time.time() - started:.0f}s): {setting} "
          f"(validation {ref.study.best_value:.4f})", flush=True)

    points = [GridPoint(tuple({**setting, "seed": s}.items())) for s in ns.seeds]
    points += [GridPoint((("method", "baseline"), ("seed", s))) for s in ns.seeds]
    final_train = {k: v for k, v in train.items() if k != "seed"}
    plan = SweepPlan(
        name=f"{name}-final-{spec_digest([p.key for p in points])}",
        train=final_train,
        points=points,
        slugs=slugs(points),
        digest=spec_digest({"train": final_train, "grid": [p.key for p in points]}),
    )
    for point in points:
        check_argv(plan.argv(point), f"final run {point.label()}")
    code, final_ref = run_sweep(plan, out / FINAL_DIR, url, ns.workers, launch, report_source=out)
    metric, rows = final_comparison(final_ref, ns.seeds)
    print_comparison(setting, metric, rows)
    return code
