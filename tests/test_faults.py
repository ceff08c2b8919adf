"""Faults during a run: a kill during a checkpoint save, divergence, Ctrl-C, a second process, a lost training file.

The kill and the lock use real separate processes (SIGKILL cannot be simulated in-process); Ctrl-C is a
KeyboardInterrupt raised at a training step, which is what Python turns SIGINT into.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hiddenkey.cli.main import main
from hiddenkey.cli.runs import LOCK_FILE, SAVING_DIR, checkpoints, last_complete_checkpoint

from .test_bad_input import assert_one_line_error, snapshot
from .test_cli import _train_args, data, tiny_bert  # noqa: F401 - fixtures shared with test_cli

ADAPTER = "adapter_model.safetensors"


@pytest.fixture(autouse=True)
def _one_thread():
    """The in-process runs use one thread like the subprocesses (_env), so their results can be bit-identical."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _env() -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[1] / "src")
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}  # fmt: skip


def _run_args(tiny_bert, data, out, *extra):
    """Six steps, a checkpoint every two, no best-model reload (so a resumed run can be bit-identical)."""
    args = _train_args(tiny_bert, data, out, "--method", "hiddenkey", "--plot", "false",
                       "--load_best_model_at_end", "false", *extra)  # fmt: skip
    args[args.index("--max_steps") + 1] = "6"
    return args


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


# ------------------------------------------------------------------------------------------- kill during a save
KILL_DURING_SAVE = textwrap.dedent(
    """
    import os, signal, sys
    import safetensors.torch as st  # patched before peft and transformers import save_file

    original = st.save_file

    def save_then_die(tensors, filename, metadata=None):
        original(tensors, filename, metadata=metadata)
        if os.path.basename(os.path.dirname(str(filename))) == sys.argv[1]:
            with open(filename, "r+b") as f:  # the kill lands mid-write: half the file is on disk
                f.truncate(os.path.getsize(filename) // 2)
            os.kill(os.getpid(), signal.SIGKILL)

    st.save_file = save_then_die
    from hiddenkey.cli.main import main

    sys.exit(main(sys.argv[2:]))
    """
)


def test_kill_during_a_checkpoint_save_then_resume_ends_bit_identical(tiny_bert, data, tmp_path):
    straight = tmp_path / "straight"
    assert main(_run_args(tiny_bert, data, straight)) == 0

    out = tmp_path / "killed"
    killed = subprocess.run([sys.executable, "-c", KILL_DURING_SAVE, "checkpoint-4", *_run_args(tiny_bert, data, out)[0:]],
                            env=_env(), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert [p.name for p in checkpoints(out)] == ["checkpoint-4", "checkpoint-2"]
    assert last_complete_checkpoint(out).name == "checkpoint-2"  # checkpoint-4 holds half an adapter
    assert not (out / ADAPTER).exists()

    assert main(_run_args(tiny_bert, data, out, "--resume")) == 0
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 6
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["resumed_from_step"] == 2
    want, got = _tensors(straight / ADAPTER), _tensors(out / ADAPTER)
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want)
    # train_loss covers all six steps, not only the four after the resume
    assert metrics["train"]["train_loss"] == pytest.approx(json.loads((straight / "metrics.json").read_text())["train"]["train_loss"])
    assert not (out / SAVING_DIR).exists()


def test_resume_after_a_kill_during_the_final_save(tiny_bert, data, tmp_path):
    out = tmp_path / "run"
    assert main(_run_args(tiny_bert, data, out)) == 0
    (out / ADAPTER).unlink()  # the kill came while the result was staged: nothing was moved in yet
    (out / SAVING_DIR).mkdir()
    (out / SAVING_DIR / ADAPTER).write_bytes(b"half")
    assert main(["eval", str(out)]) == 2  # not a traceback: the adapter is missing
    assert main(_run_args(tiny_bert, data, out, "--resume")) == 0
    assert not (out / SAVING_DIR).exists() and (out / ADAPTER).is_file()
    assert main(["eval", str(out)]) == 0


# ------------------------------------------------------------------------------------------- divergence
def test_divergence_stops_at_the_step_keeps_the_last_finite_checkpoint_and_exits_1(tiny_bert, data, tmp_path, capsys):
    out = tmp_path / "run"
    args = _run_args(tiny_bert, data, out)
    args[args.index("--max_steps") + 1] = "8"
    args[args.index("--learning_rate") + 1] = "1e3"
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    diverged = json.loads((out / "metrics.json").read_text())["diverged"]
    step, kept = diverged["step"], diverged["kept_checkpoint"]
    assert line.startswith("hiddenkey: error: training diverged") and f"at step {step}" in line and "--learning_rate" in line
    assert kept is not None and int(kept.split("-")[1]) < step and kept in line
    assert all(int(p.name.split("-")[1]) < step for p in checkpoints(out))  # nothing saved at or after the NaN
    result = _tensors(out / ADAPTER)
    assert all(torch.isfinite(t).all() for t in result.values())
    kept_weights = _tensors(out / kept / ADAPTER)
    assert all(torch.equal(result[k], kept_weights[k]) for k in result)
    capsys.readouterr()
    assert main(["eval", str(out)]) == 0
    printed = capsys.readouterr().out
    assert math.isfinite(json.loads(printed[: printed.index("}") + 1])["accuracy"])


def test_divergence_before_any_checkpoint_leaves_no_adapter_and_eval_says_so(tiny_bert, data, tmp_path, capsys):
    out = tmp_path / "run"
    args = _run_args(tiny_bert, data, out)
    args[args.index("--learning_rate") + 1] = "1e30"
    args[args.index("--save_steps") + 1] = "5"
    assert main(args) == 1
    assert "holds no adapter" in capsys.readouterr().err
    assert not (out / ADAPTER).exists()
    assert main(["eval", str(out)]) == 2
    assert_one_line_error(capsys.readouterr().err, ("training diverged", "before any checkpoint"))


# ------------------------------------------------------------------------------------------- Ctrl-C
@pytest.fixture
def ctrl_c_at_step_3(monkeypatch):
    from transformers.trainer_callback import CallbackHandler

    original = CallbackHandler.on_step_end

    def interrupted(self, args, state, control):
        if state.global_step == 3:
            raise KeyboardInterrupt
        return original(self, args, state, control)

    monkeypatch.setattr(CallbackHandler, "on_step_end", interrupted)
    return monkeypatch


def test_ctrl_c_prints_one_line_naming_the_checkpoint_and_the_resume_command(tiny_bert, data, tmp_path, capsys, ctrl_c_at_step_3):
    out = tmp_path / "run"
    args = _run_args(tiny_bert, data, out)
    assert main(args) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("hiddenkey: interrupted; last checkpoint") and str(out / "checkpoint-2") in line
    command = line.split("resume with: ", 1)[1]
    assert shlex.split(command) == ["hiddenkey", *args, "--resume"]
    assert not (out / LOCK_FILE).exists() or _lock_is_free(out)

    ctrl_c_at_step_3.undo()
    assert main(shlex.split(command)[1:]) == 0
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 6


def test_ctrl_c_before_the_first_checkpoint_says_there_is_nothing_to_resume(tiny_bert, data, tmp_path, capsys, ctrl_c_at_step_3):
    out = tmp_path / "run"
    args = _run_args(tiny_bert, data, out)
    args[args.index("--save_steps") + 1] = "4"
    assert main(args) == 130
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "before the first checkpoint" in line and "nothing to resume" in line
    assert shlex.split(line.split("start again with: ", 1)[1].rstrip(")")) == ["hiddenkey", *args, "--overwrite"]


def _lock_is_free(out: Path) -> bool:
    from hiddenkey.cli.runs import lock_run_dir

    lock_run_dir(out).release()
    return True


# ------------------------------------------------------------------------------------------- the lock
HOLD_LOCK = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from hiddenkey.cli.runs import lock_run_dir

    lock = lock_run_dir(Path(sys.argv[1]))
    print("locked", flush=True)
    time.sleep(300)
    """
)


def test_a_second_process_on_a_run_folder_gets_a_clear_error_until_the_first_dies(tiny_bert, data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_run_args(tiny_bert, data, out)) == 0
    capsys.readouterr()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], env=_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = snapshot(out)
        assert main(_run_args(tiny_bert, data, out, "--overwrite")) == 2
        assert_one_line_error(capsys.readouterr().err, (str(out), "in use by another hiddenkey process"))
        assert main(["eval", str(out)]) == 2
        assert_one_line_error(capsys.readouterr().err, ("in use by another hiddenkey process",))
        assert snapshot(out) == before
    finally:
        holder.send_signal(signal.SIGKILL)  # the lock dies with its process: no stale lock after a kill
        holder.wait(timeout=60)
    assert main(_run_args(tiny_bert, data, out, "--overwrite")) == 0


# ------------------------------------------------------------------------------------------- eval without the training data
def test_eval_needs_only_the_run_folder_and_a_test_file(tiny_bert, data, tmp_path, capsys):
    files = tmp_path / "files"
    files.mkdir()
    copies = {split: str(shutil.copy(data[split], files / Path(data[split]).name)) for split in ("train", "validation", "test")}
    out = tmp_path / "run"
    args = _run_args(tiny_bert, {**data, **copies}, out)
    assert main(args) == 0
    recorded = json.loads((out / "metrics.json").read_text())["test"]["accuracy"]
    test_file = str(shutil.copy(copies["test"], tmp_path / "held_out.csv"))
    shutil.rmtree(files)  # the training, validation and test files are gone

    capsys.readouterr()
    assert main(["eval", str(out), "--test_file", test_file]) == 0
    printed = capsys.readouterr().out
    assert json.loads(printed[: printed.index("}") + 1])["accuracy"] == pytest.approx(recorded)
    assert main(["eval", str(out)]) == 2  # the recorded test file is gone: say so, in one line
    assert_one_line_error(capsys.readouterr().err, (copies["test"], "is gone", "pass --test_file"))


# ------------------------------------------------------------------------------------------- where a run writes
def test_a_run_writes_only_inside_its_run_folder_tensorboard_included(tiny_bert, data, tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    args = _run_args(tiny_bert, data, "run")
    args[args.index("--report_to") + 1] = "tensorboard"
    assert main(args) == 0
    assert [p.name for p in cwd.iterdir()] == ["run"]
    assert list((cwd / "run").rglob("events.out.tfevents.*"))
    assert not list((cwd / "run").glob("*.tmp")) and not (cwd / "run" / SAVING_DIR).exists()
