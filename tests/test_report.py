"""`hiddenkey report` on a stored study with known numbers, and `hiddenkey tune`'s search on a cheap
synthetic objective (TPE + pruning), without training anything."""

from __future__ import annotations

import math
import re

import numpy as np
import optuna
import pytest
from scipy import stats

from hiddenkey.cli.main import main
from hiddenkey.cli.report import group_rows, load_records, paired_tests
from hiddenkey.cli.studies import create_or_load_study, open_storage
from hiddenkey.config import DropoutConfig

SEEDS = [1, 2, 3, 4, 5]
BASELINE = [0.80, 0.78, 0.81, 0.79, 0.77]
DROPKEY = {0.05: [0.81, 0.80, 0.82, 0.80, 0.79], 0.1: [0.83, 0.81, 0.82, 0.82, 0.80]}
RANKS = {2: [0.76, 0.75, 0.77, 0.76, 0.75], 32: [0.74, 0.73, 0.75, 0.76, 0.72]}
SHARED = {"task_name": "rotten_tomatoes", "lora_r": 8, "seed": 42}


def _curves(seed, final):
    return {"loss": [[10, 0.7], [20, 0.4 - 0.01 * seed]], "metric": [[10, 0.7], [20, final]], "metric_key": "eval_accuracy"}


def _trial(config, value, dropout, lora_r=8, final=None):
    attrs = {
        "config": config, "task": "rotten_tomatoes", "primary_metric": "accuracy", "method": dropout.method,
        "validation": {"accuracy": value - 0.01}, "test": {"accuracy": value},
        "dropout": dropout.to_dict(), "lora_r": lora_r, "curves": _curves(config["seed"], value),
        "argv": ["--task_name", "rotten_tomatoes", *[t for k, v in config.items() for t in (f"--{k}", str(v))]], "threads": 1,
    }
    if final is not None:
        attrs["final"] = {"test": {"accuracy": final}, "validation": {"accuracy": final}}
    return optuna.create_trial(value=value - 0.01, user_attrs=attrs)


@pytest.fixture
def study_db(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path / 'study.db'}")
    ref, _ = create_or_load_study(storage, "known")
    ref.study.set_user_attr("sweep", {"train": SHARED})
    for i, seed in enumerate(SEEDS):
        ref.study.add_trial(_trial({"method": "baseline", "seed": seed}, BASELINE[i], DropoutConfig.preset("baseline"), final=BASELINE[i] - 0.05))
        for rate, values in DROPKEY.items():
            cfg = DropoutConfig.preset("dropkey", rate=rate)
            ref.study.add_trial(_trial({"method": "dropkey", "rate": rate, "seed": seed}, values[i], cfg, final=values[i] - 0.01))
        for rank, values in RANKS.items():
            ref.study.add_trial(_trial({"method": "baseline", "lora_r": rank, "seed": seed}, values[i], DropoutConfig.preset("baseline"), lora_r=rank))
    ref.study.add_trial(optuna.create_trial(state=optuna.trial.TrialState.FAIL, user_attrs={"config": {"seed": 9}}))
    return tmp_path


def _table_row(text: str, label: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith("|") and label in line.split("|")[1])
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_report_tables_match_the_known_numbers_and_scipy(study_db, capsys):
    assert main(["report", str(study_db)]) == 0
    text = (study_db / "report.md").read_text()
    dropkey = DROPKEY[0.1]
    row = _table_row(text, "method=dropkey rate=0.1")
    assert row[1] == "5"
    assert row[2].replace("*", "") == f"{np.median(dropkey):.4f} ± {np.std(dropkey, ddof=1):.4f}"
    assert row[3] == f"{np.mean(dropkey):.4f} ± {np.std(dropkey, ddof=1):.4f}"
    assert row[4] == f"{np.mean(np.subtract(dropkey, BASELINE)):+.4f} (n=5)"
    assert float(row[5]) == pytest.approx(stats.ttest_rel(dropkey, BASELINE).pvalue, abs=5e-4)
    assert float(row[6]) == pytest.approx(stats.wilcoxon(dropkey, BASELINE).pvalue, abs=5e-4)
    assert "★" in row[0]  # the best median of the table
    assert "(baseline)" in _table_row(text, "method=baseline")[4]
    assert _table_row(text, "method=baseline lora_r=32")[4] == "(baseline)"  # a baseline of its own setting
    # the end-of-training table exists because the runs selected their best checkpoint
    assert "at the end of training" in text
    final_rows = text.split("at the end of training")[1]
    assert f"{np.median(BASELINE) - 0.05:.4f}" in _table_row(final_rows, "method=baseline")[2]
    assert "Trials: 25 complete, 1 fail." in text
    for figure in ("rate", "rank", "curves"):
        path = study_db / f"report-rotten_tomatoes-{figure}.png"
        assert path.is_file() and path.stat().st_size > 5000
        assert f"](report-rotten_tomatoes-{figure}.png)" in text  # relative, so it renders on GitHub
    assert re.search(r"OMP_NUM_THREADS=1 hiddenkey train --task_name rotten_tomatoes --method dropkey --rate 0.1 --seed 1", text)


def test_rows_pair_with_the_baseline_of_their_own_setting(study_db):
    storage = open_storage(f"sqlite:///{study_db / 'study.db'}")
    ref, _ = create_or_load_study(storage, "known")
    rows = group_rows(load_records(ref, "test"), SHARED)["rotten_tomatoes"]
    by_label = {r.label: r for r in rows}
    assert by_label["method=dropkey rate=0.05"].baseline is by_label["method=baseline"]
    assert by_label["method=baseline lora_r=2"].baseline is None


def test_paired_tests_are_undefined_without_variation():
    assert paired_tests(np.array([0.5, 0.5]), np.array([0.5, 0.5])) == (None, None)
    p_t, p_w = paired_tests(np.array([1.0, 2.0, 3.5]), np.array([0.0, 1.0, 2.0]))
    assert p_t == pytest.approx(stats.ttest_rel([1, 2, 3.5], [0, 1, 2]).pvalue) and p_w == pytest.approx(0.25)


def test_report_errors(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "no study found" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- tune
def test_tune_search_finds_the_optimum_of_a_synthetic_objective(tmp_path):
    from hiddenkey.cli.studies import make_pruner
    from hiddenkey.cli.tune import make_sampler, parse_search, search

    space = parse_search({"rate": [0.01, 0.3], "consistency_weight": [0.01, 10]})
    best_rate, best_weight = 0.06, 0.8
    storage = open_storage(f"sqlite:///{tmp_path / 'tune.db'}")
    ref, _ = create_or_load_study(storage, "synthetic", sampler=make_sampler(0, 1), pruner=make_pruner("median"))

    def objective(trial):
        params = space.sample(trial)
        score = -(math.log(params["rate"] / best_rate) ** 2) - 0.5 * math.log(params["consistency_weight"] / best_weight) ** 2
        for step in range(1, 6):  # a learning curve that rises towards the score
            trial.report(score - 1.0 / step, step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return score

    search(ref, objective, n_trials=60, timeout=None)
    best = ref.study.best_params
    assert abs(math.log(best["rate"] / best_rate)) < math.log(1.5), best
    assert abs(math.log(best["consistency_weight"] / best_weight)) < math.log(2.5), best
    states = [t.state.name for t in ref.study.trials]
    assert states.count("PRUNED") > 5 and states.count("COMPLETE") + states.count("PRUNED") == 60
    search(ref, objective, n_trials=60, timeout=None)  # resumed: nothing left to do
    assert len(ref.study.trials) == 60


@pytest.mark.parametrize(
    "search_spec, message",
    [
        ({"rate": [0.3, 0.01]}, "0 < low < high < 1"),
        ({"rate": [0.01, 1.5]}, "0 < low < high < 1"),
        ({"consistency_weight": 3}, "must be a range"),
        ({"method": ["baseline"]}, "presets other than baseline"),
        ({"temperature": [1, 2]}, "unknown key(s) ['temperature']"),
    ],
)
def test_bad_search_spaces(search_spec, message):
    from hiddenkey.cli.errors import CLIError
    from hiddenkey.cli.tune import parse_search

    with pytest.raises(CLIError, match=re.escape(message)):
        parse_search(search_spec)


def test_a_single_seed_shows_no_spread_and_figures_are_readable(tmp_path):
    import stat

    storage = open_storage(f"sqlite:///{tmp_path / 'study.db'}")
    ref, _ = create_or_load_study(storage, "one-seed")
    ref.study.add_trial(_trial({"method": "baseline", "seed": 1}, 0.8, DropoutConfig.preset("baseline")))
    ref.study.add_trial(_trial({"method": "dropkey", "rate": 0.1, "seed": 1}, 0.82, DropoutConfig.preset("dropkey", rate=0.1)))
    assert main(["report", str(tmp_path)]) == 0
    row = _table_row((tmp_path / "report.md").read_text(), "method=dropkey")
    assert row[1] == "1" and "±" not in row[2] and "±" not in row[3]
    figures = list(tmp_path.glob("*.png"))
    assert figures and all(stat.S_IMODE(f.stat().st_mode) & 0o044 for f in figures)


def test_runs_that_failed_and_never_completed_are_listed_with_their_failure(tmp_path):
    """Every seed that ran is part of the record: a divergence is reported, a retried kill is not."""
    storage = open_storage(f"sqlite:///{tmp_path / 'study.db'}")
    ref, _ = create_or_load_study(storage, "failures")
    fail = optuna.trial.TrialState.FAIL
    for seed in (1, 2):
        ref.study.add_trial(_trial({"method": "baseline", "seed": seed}, 0.8, DropoutConfig.preset("baseline")))
    diverged = {"method": "dropattention", "rate": 0.3, "seed": 1}
    ref.study.add_trial(optuna.create_trial(state=fail, user_attrs={
        "config": diverged, "config_key": "diverged", "failure": "training diverged: the gradient norm is nan at step 53"}))
    killed = {"method": "dropkey", "rate": 0.1, "seed": 2}
    ref.study.add_trial(optuna.create_trial(state=fail, user_attrs={"config": killed, "config_key": "killed", "failure": "worker killed"}))
    retried = _trial(killed, 0.81, DropoutConfig.preset("dropkey", rate=0.1))
    retried.user_attrs["config_key"] = "killed"
    ref.study.add_trial(retried)
    reclaimed = {"method": "hiddencut", "rate": 0.1, "seed": 1}  # a worker killed mid-run: no error of its own
    ref.study.add_trial(optuna.create_trial(state=fail, user_attrs={"config": reclaimed, "config_key": "reclaimed"}))
    requeued = {"method": "hiddencut", "rate": 0.1, "seed": 2}  # failed, and waiting to be retried
    ref.study.add_trial(optuna.create_trial(state=fail, user_attrs={"config": requeued, "config_key": "requeued", "failure": "oom"}))
    ref.study.enqueue_trial({}, user_attrs={"config": requeued, "config_key": "requeued"})
    assert main(["report", str(tmp_path)]) == 0
    text = (tmp_path / "report.md").read_text()
    section = text.split("### Runs without a result")[1].split("###")[0]
    assert "method=dropattention rate=0.3 seed=1 | training diverged: the gradient norm is nan at step 53 |" in section
    assert "worker killed" not in text
    assert "method=hiddencut" not in section
