"""Several processes: per-rank mask streams, and ``hiddenkey train`` under a real
``torchrun --nproc_per_node 2`` on CPU (gloo chosen automatically): one complete run folder written by
rank 0 only, identical LoRA weights on both ranks, different masks per rank, and with the KL a training
loss close to one process at twice the batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hiddenkey.cli.distributed import distributed_defaults
from hiddenkey.cli.main import main
from hiddenkey.cli.runs import LOCK_FILE
from hiddenkey.distributed import seed_rank_mask_stream

from .test_cli import _reviews, _train_args, _write_csv

WORKER = Path(__file__).with_name("distributed_worker.py")
RUN_FILES = {
    "adapter_model.safetensors", "adapter_config.json", "hiddenkey_config.json", "args.json", "metrics.json",
    "training_curves.png", "tokenizer.json", "tokenizer_config.json", "trainer_state.json",
}


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """test_cli's tiny BERT initialised wide (so is the new classifier head): its logits are O(1), and the
    KL between two dropped passes is large enough for the loss comparison to notice a mis-scaled KL."""
    from .cli_helpers import save_tiny_bert

    return save_tiny_bert(tmp_path_factory.mktemp("wide-bert"), initializer_range=0.5)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """test_cli's reviews with every word one token long: every batch has the same length, so masks from
    the same stream would be identical and only the per-rank stream can make them differ."""
    folder = tmp_path_factory.mktemp("even-data")

    def rows(n, seed):
        return [(text.replace("tedious", "bad"), label) for text, label in _reviews(n, seed)]

    return {
        "train": _write_csv(folder / "train.csv", rows(48, 0)),
        "validation": _write_csv(folder / "dev.csv", rows(12, 1)),
        "test": _write_csv(folder / "test.csv", rows(12, 2)),
    }


def _draw(offset, rank):
    torch.manual_seed(42)
    seed_rank_mask_stream(offset, rank)
    return torch.rand(8)


def test_rank_seed_offset_changes_only_ranks_above_zero():
    assert torch.equal(_draw(1000, 0), _draw(0, 0))  # rank 0 keeps the run's stream
    assert torch.equal(_draw(0, 1), _draw(0, 0))  # offset 0: every rank alike
    assert not torch.equal(_draw(1000, 1), _draw(1000, 0))
    assert not torch.equal(_draw(1000, 1), _draw(1000, 2))
    torch.manual_seed(42)
    assert seed_rank_mask_stream(1000, 0) is None and seed_rank_mask_stream(1000, 3) == 42 + 3000


def test_several_cpu_processes_default_to_cpu_ddp_on_gloo(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert distributed_defaults(set(), None) == {"use_cpu": True, "ddp_backend": "gloo"}
    assert distributed_defaults({"ddp_backend"}, None) == {"use_cpu": True}  # the user's backend stands
    assert distributed_defaults({"use_cpu"}, "--seed") == {"ddp_backend": "gloo"}  # a bare --use_cpu
    assert distributed_defaults({"use_cpu"}, "false") == {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert distributed_defaults(set(), None) == {}  # GPUs: transformers picks nccl
    assert distributed_defaults({"use_cpu"}, "true") == {"ddp_backend": "gloo"}
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert distributed_defaults(set(), None) == {}


def _torchrun(observe: Path, args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node", "2",
        str(WORKER), str(observe), *args,
    ]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def test_torchrun_two_processes(tiny_bert, data, tmp_path, capsys):
    out, observe = tmp_path / "run", tmp_path / "observe"
    observe.mkdir()
    out.mkdir()
    (out / "stale.txt").write_text("from an earlier run")  # --overwrite: replaced once, by rank 0
    steps = ["--max_steps", "12", "--eval_steps", "12", "--save_steps", "12", "--logging_steps", "4"]
    method = ["--method", "hiddenkey", "--rate", "0.2", "--per_device_train_batch_size", "8", "--overwrite", *steps]
    args = _train_args(tiny_bert, data, out, *method)[1:]  # the worker calls main(["train", ...])
    done = _torchrun(observe, ["train", *args])
    assert done.returncode == 0, done.stderr[-3000:]

    assert done.stdout.count(f"run folder: {out}") == 1  # the summary is printed once
    files = {p.name for p in out.iterdir() if p.is_file()}
    assert RUN_FILES <= files and "stale.txt" not in files
    assert not [name for name in files if name.startswith(".") and name != LOCK_FILE], files  # no temporary plot left behind
    run_args = json.loads((out / "args.json").read_text())
    assert run_args["training"]["ddp_backend"] == "gloo" and run_args["training"]["use_cpu"] is True

    ranks = [torch.load(observe / f"rank{r}.pt") for r in (0, 1)]
    assert [r["distributed_type"] for r in ranks] == ["DistributedType.MULTI_CPU"] * 2  # DDP, not two lone runs
    logged = [[entry["loss"] for entry in r["log_history"] if "loss" in entry] for r in ranks]
    assert logged[0] == logged[1] and len(logged[0]) == 3  # the logged loss is the mean over both ranks
    assert ranks[0]["lora"].keys() == ranks[1]["lora"].keys() and ranks[0]["lora"]
    for name, weight in ranks[0]["lora"].items():
        assert torch.equal(weight, ranks[1]["lora"][name]), name
    first = [r["first_keep_mask"] for r in ranks]
    assert first[0].shape == first[1].shape  # same-length batches: only the stream can tell them apart
    assert not torch.equal(first[0], first[1])

    metrics = json.loads((out / "metrics.json").read_text())

    single = tmp_path / "single"
    single_method = ["--method", "hiddenkey", "--rate", "0.2", "--per_device_train_batch_size", "16", *steps]
    assert main(_train_args(tiny_bert, data, single, *single_method)) == 0
    capsys.readouterr()
    one = json.loads((single / "metrics.json").read_text())
    # Different masks, so not equal: over 12 steps, other mask streams move one process's loss by about
    # 10% (the KL is about 40% of it); a KL or loss mis-scaled across processes would be off by far more.
    assert metrics["train"]["train_loss"] == pytest.approx(one["train"]["train_loss"], rel=0.2)
    kl = [_mean_consistency(run) for run in (out, single)]
    assert kl[0] > 0.1 and kl[0] == pytest.approx(kl[1], rel=0.3)


def _mean_consistency(run: Path) -> float:
    history = json.loads((run / "trainer_state.json").read_text())["log_history"]
    values = [entry["consistency_loss"] for entry in history if "consistency_loss" in entry]
    return sum(values) / len(values)
