"""`hiddenkey sweep`: spec parsing and its errors; a real sweep on a tiny model that is killed with SIGKILL
mid-way and resumes to exactly the planned trials; finished run folders recorded without training; two
worker processes sharing one study."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from hiddenkey.cli.errors import CLIError
from hiddenkey.cli.main import main
from hiddenkey.cli.studies import open_storage
from hiddenkey.cli.sweep import load_plan

from .cli_helpers import save_tiny_bert, write_review_files

STEPS = dict(max_steps=4, eval_steps=2, save_steps=2, logging_steps=2, per_device_train_batch_size=8,
             learning_rate=0.005, report_to="none", untrained_baseline=False, plot=False, disable_tqdm=True)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep-assets")
    return {"model": save_tiny_bert(folder / "tiny-bert"), "task_name": "custom", **write_review_files(folder)}


def write_spec(path: Path, train: dict, grid) -> Path:
    path.write_text(yaml.safe_dump({"train": train, "grid": grid}, sort_keys=False))
    return path


# ------------------------------------------------------------------------------------------- parsing
def test_grid_mapping_is_a_cartesian_product_and_a_list_is_a_union(tmp_path, assets):
    spec = write_spec(tmp_path / "s.yaml", assets, {"method": ["baseline", "hiddenkey"], "seed": [1, 2, 3]})
    plan = load_plan(spec)
    assert [p.params for p in plan.points][:2] == [{"method": "baseline", "seed": 1}, {"method": "baseline", "seed": 2}]
    assert len(plan.points) == 6 and plan.varied == ["method", "seed"]

    union = [
        {"method": ["baseline"], "seed": [1, 2]},
        {"method": ["dropkey"], "logits_pattern": ["element", "column"], "seed": [1, 2]},
        {"method": ["baseline"], "seed": [2]},  # already planned: counted once
    ]
    plan = load_plan(write_spec(tmp_path / "u.yaml", assets, union))
    assert len(plan.points) == 6
    assert {p.key for p in plan.points} == {json.dumps(p.params, sort_keys=True, separators=(",", ":")) for p in plan.points}
    assert len(set(plan.slugs.values())) == 6
    assert plan.argv(plan.points[2])[-6:] == ["--method", "dropkey", "--logits_pattern", "element", "--seed", "1"]


def test_same_spec_same_study_name_and_digest(tmp_path, assets):
    a = load_plan(write_spec(tmp_path / "a.yaml", assets, {"seed": [1, 2]}))
    b = load_plan(write_spec(tmp_path / "a.yaml", assets, {"seed": [1, 2]}))
    c = load_plan(write_spec(tmp_path / "a.yaml", assets, {"seed": [1, 3]}))
    assert (a.name, a.digest) == (b.name, b.digest) and a.digest != c.digest


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"train": {}, "grid": {"seed": [1]}, "extra": 1}, "unknown key(s) ['extra']"),
        ({"train": {}}, "missing key(s) ['grid']"),
        ({"grid": {}}, "grid is empty"),
        ({"grid": []}, "'grid' must be a mapping"),
        ({"grid": {"seed": []}}, "'seed' needs a non-empty list"),
        ({"grid": {"seed": 3}}, "'seed' needs a non-empty list"),
        ({"grid": {"lora_rank": [4, 8]}}, "'lora_rank' is not a hiddenkey train argument; did you mean 'local_rank' or 'lora_r'"),
        ({"grid": {"output_dir": ["x"]}}, "'output_dir' is set by the sweep"),
        ({"train": {"resume": True}, "grid": {"seed": [1]}}, "'resume' is set by the sweep"),
        ({"train": {"seed": 1}, "grid": {"seed": [1, 2]}}, "'seed' is set both in 'train' and in the grid"),
        ({"grid": {"method": ["baseline", "dropkeyy"]}}, "grid point method=dropkeyy: unknown method 'dropkeyy'"),
        ({"grid": {"rate": [0.1, 1.5]}}, "grid point rate=1.5"),
        ({"grid": {"num_train_epochs": ["many"]}}, "grid point num_train_epochs=many: --num_train_epochs: invalid float value"),
        ({"train": "rte", "grid": {"seed": [1]}}, "'train' must be a mapping"),
    ],
)
def test_bad_specs_are_one_line_errors_before_anything_runs(tmp_path, assets, spec, message):
    path = tmp_path / "bad.yaml"
    spec = dict(spec)
    if isinstance(spec.get("train"), dict):
        spec["train"] = {**assets, **spec["train"]}
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(CLIError) as err:
        load_plan(path)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_bad_spec_files(tmp_path, capsys):
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    (tmp_path / "broken.yaml").write_text("train: {a: [1, 2\n")
    (tmp_path / "broken.json").write_text("{\"train\": ")
    cases = {
        "missing.yaml": "spec file not found",
        "list.yaml": "a spec is a mapping",
        "broken.yaml": "not valid YAML",
        "broken.json": "not valid JSON",
    }
    for name, message in cases.items():
        assert main(["sweep", str(tmp_path / name), "--output_dir", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("hiddenkey: error:") and message in err and "\n" not in err, err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------- running
def _sweep(spec: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "hiddenkey.cli", "sweep", str(spec), "--output_dir", str(out), "--heartbeat_interval", "2", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )


def _trials(out: Path):
    url = f"sqlite:///{out / 'study.db'}"
    if not (out / "study.db").is_file():
        return []
    storage = open_storage(url)  # as a worker opens it: safe while the sweep is still creating the database
    names = optuna.get_all_study_names(storage)
    return optuna.load_study(study_name=names[0], storage=storage).get_trials(deepcopy=False) if names else []


def _wait(predicate, timeout=240, what=""):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _complete_keys(out: Path) -> list[str]:
    return [t.user_attrs["config_key"] for t in _trials(out) if t.state.name == "COMPLETE"]


def test_sigkill_mid_sweep_then_resume_gives_exactly_the_planned_trials(tmp_path, assets):
    spec = write_spec(tmp_path / "s.yaml", {**assets, **STEPS}, {"method": ["baseline", "hiddenkey"], "seed": [1, 2]})
    out = tmp_path / "out"
    planned = {p.key for p in load_plan(spec).points}

    first = _sweep(spec, out)
    _wait(lambda: len(_complete_keys(out)) >= 1 and any(t.state.name == "RUNNING" for t in _trials(out)),
          what="one complete trial and one running")
    os.killpg(first.pid, signal.SIGKILL)  # the sweep and its training subprocess
    first.wait()
    killed = [t for t in _trials(out) if t.state.name == "RUNNING"]
    assert killed and len(_complete_keys(out)) < len(planned)

    second = _sweep(spec, out)
    output, _ = second.communicate(timeout=300)
    assert second.returncode == 0, output
    keys = _complete_keys(out)
    assert sorted(keys) == sorted(planned), output  # every configuration, each exactly once
    # the killed trial failed (its pid was gone, or its heartbeat stopped), and a retry copy completed it
    by_number = {t.number: t for t in _trials(out)}
    assert by_number[killed[0].number].state.name == "FAIL"
    assert any(
        t.state.name == "COMPLETE" and killed[0].number in t.system_attrs.get("retry_history", [])
        for t in by_number.values()
    )
    assert f"[{len(planned)}/{len(planned)}]" in output and "ETA" in output
    for slug in load_plan(spec).slugs.values():
        metrics = json.loads((out / "runs" / slug / "metrics.json").read_text())
        assert metrics["validation"]["accuracy"] >= 0

    # a finished sweep started again does nothing; a lost study is rebuilt from the finished run folders
    assert _sweep(spec, out).communicate(timeout=120)[0].count("configurations complete") == 1
    (out / "study.db").unlink()
    third = _sweep(spec, out)
    output, _ = third.communicate(timeout=300)
    assert third.returncode == 0, output
    assert output.count("recorded from its finished run folder") == len(planned), output
    assert all(t.user_attrs["reused_run_folder"] for t in _trials(out) if t.state.name == "COMPLETE")


def test_two_workers_share_one_study_and_never_run_one_configuration_twice(tmp_path, assets):
    spec = write_spec(tmp_path / "s.yaml", {**assets, **STEPS}, {"seed": [1, 2, 3, 4]})
    out = tmp_path / "out"
    first = _sweep(spec, out)
    _wait(lambda: any(t.state.name == "RUNNING" for t in _trials(out)), what="the first worker's trial")
    second = _sweep(spec, out)
    outputs = [p.communicate(timeout=300)[0] for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outputs
    trials = [t for t in _trials(out) if t.state.name == "COMPLETE"]
    keys = [t.user_attrs["config_key"] for t in trials]
    assert sorted(keys) == sorted({p.key for p in load_plan(spec).points})
    assert len({t.user_attrs["pid"] for t in trials}) == 2, outputs  # both workers trained
    spans = sorted((t.datetime_start, t.datetime_complete, t.user_attrs["config_key"]) for t in _trials(out))
    for i, (start, end, key) in enumerate(spans):
        assert not any(k == key and s < end for s, _, k in spans[i + 1 :])


def test_a_folder_belongs_to_one_spec(tmp_path, assets):
    out = tmp_path / "out"
    out.mkdir()
    (out / "spec.json").write_text(json.dumps({"digest": "someotherspec"}))
    spec = write_spec(tmp_path / "s.yaml", {**assets, **STEPS}, {"seed": [1]})
    with pytest.raises(CLIError, match="holds a sweep of another spec"):
        from hiddenkey.cli.sweep import check_folder

        check_folder(out, load_plan(spec))


# ------------------------------------------------------------------------------------------- launching
def test_launch_flags_hand_out_gpus_and_start_trials_through_the_launcher(tmp_path):
    import argparse
    import threading

    from hiddenkey.cli.trials import Launch, add_launch_arguments, launch_from, run_trial

    parser = argparse.ArgumentParser()
    add_launch_arguments(parser)
    ns = parser.parse_args(["--gpus", "0", "1,2", "--launcher", "torchrun --nproc_per_node 2"])
    launch = launch_from(ns)
    assert ns.workers == 2 and launch.gpus == ("0", "1,2") and launch.threads >= 1
    assert launch.command(["train", "--seed", "1"])[:4] == ["torchrun", "--nproc_per_node", "2", "-m"]
    for bad, message in [(["--gpus", "a"], "--gpus takes device numbers"), (["--gpus", "0", "--workers", "2"], "more than the 1 GPU"),
                         (["--workers", "0"], "--workers must be >= 1"), (["--launcher", " "], "--launcher is empty")]:
        with pytest.raises(CLIError, match=message):
            launch_from(parser.parse_args(bad))

    # Two trials at once never share a GPU group, and each gets its group back when it ends.
    held, seen, lock = [], [], threading.Lock()
    launch = Launch(threads=1, gpus=("0", "1"))

    def trial():
        with launch.environment() as env:
            with lock:
                held.append(env["CUDA_VISIBLE_DEVICES"])
                seen.append(sorted(held))
            time.sleep(0.05)
            with lock:
                held.remove(env["CUDA_VISIBLE_DEVICES"])

    workers = [threading.Thread(target=trial) for _ in range(6)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert all(len(set(s)) == len(s) <= 2 for s in seen) and held == []

    # The launcher really starts the trial: it receives `-m hiddenkey.cli train ...` and the GPU group.
    record = tmp_path / "launched.txt"
    script = f'echo "$CUDA_VISIBLE_DEVICES $OMP_NUM_THREADS $*" > {record}; exit 3'
    outcome = run_trial(["--seed", "1"], tmp_path / "run", tmp_path / "log.txt", Launch(threads=3, launcher=("sh", "-c", script, "sh"), gpus=("5",)))
    assert not outcome.ok and "exited with 3" in outcome.error
    assert record.read_text().split()[:5] == ["5", "3", "-m", "hiddenkey.cli", "train"]
