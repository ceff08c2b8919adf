"""The bad-input catalogue: one row per kind of bad input to `hiddenkey train` / `hiddenkey eval` / the API.

Every CLI row asserts exit code 2, one line on stderr that starts with ``hiddenkey: error:`` and names
the bad value and what is allowed, no traceback, and nothing written: the existing run folder given
as ``--output_dir`` (with ``--overwrite``, so only the validation protects it) is untouched and the
working directory stays empty (no ``./runs/``). Most rows fail before any model loads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

import hiddenkey
from hiddenkey import ConfigError, DropoutConfig
from hiddenkey.cli.main import main
from hiddenkey.cli.runs import lock_run_dir

from .test_cli import _train_args, _write_csv, data, tiny_bert  # noqa: F401 - fixtures shared with test_cli

# ------------------------------------------------------------------------------------------- harness


@dataclass
class Row:
    """One kind of bad input: flags to set (``None`` removes a flag, ``""`` adds a bare one), files to make."""

    kind: str
    flags: dict[str, str | None] = field(default_factory=dict)
    expect: tuple[str, ...] = ()
    files: Callable[[Path, str], dict[str, str | None]] | None = None  # (folder, tiny_bert) -> more flags
    extra: tuple[str, ...] = ()  # tokens appended as they are
    config: Callable[[Path], str] | None = None  # the first argument (a config file it writes, or any token)
    overwrite: bool = True
    skip_if: Callable[[], bool] | None = None
    loads_model: bool = False  # fails only after the model loaded (else stderr must be the error line alone)


def _set(args: list[str], flags: dict[str, str | None]) -> list[str]:
    args = list(args)
    for flag, value in flags.items():
        if flag in args:
            i = args.index(flag)
            has_value = i + 1 < len(args) and not args[i + 1].startswith("--")
            del args[i : i + (2 if has_value else 1)]
        if value is None:
            continue
        args += [flag] if value == "" else [flag, value]
    return args


def snapshot(folder: Path) -> dict[str, tuple[int, str]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir")
        for p in sorted(folder.rglob("*"))
    }


def assert_one_line_error(err: str, expect: tuple[str, ...], alone: bool = True) -> None:
    """The error is one line naming ``expect``; with ``alone``, it is all of stderr (nothing loaded before it)."""
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert [i for i, line in enumerate(lines) if "hiddenkey: error:" in line] == [len(lines) - 1], err
    if alone:
        assert len(lines) == 1, err
    line = lines[-1]
    assert line.startswith("hiddenkey: error:"), err
    for text in expect:
        assert text in line, f"{text!r} not in {line!r}"


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """An existing run folder to protect, an empty working directory, a folder for input files."""
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("precious")
    (existing / "metrics.json").write_text('{"accuracy": 0.9}\n')
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    monkeypatch.chdir(cwd)
    return existing, cwd, inputs


def _w(path: Path, content: str | bytes) -> str:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return str(path)


def _csv(folder: Path, name: str, text: str) -> str:
    return _w(folder / name, text)


def _tiny_copy(folder: Path, model: str) -> Path:
    copy = folder / "model"
    shutil.copytree(model, copy)
    return copy


def _truncated_model(folder: Path, model: str) -> dict[str, str]:
    copy = _tiny_copy(folder, model)
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return {"--model": str(copy)}


def _bad_config_json(folder: Path, model: str) -> dict[str, str]:
    copy = _tiny_copy(folder, model)
    (copy / "config.json").write_text("{")
    return {"--model": str(copy)}


def _incomplete_checkpoint(folder: Path, model: str) -> dict[str, str]:
    (folder.parent / "existing" / "checkpoint-4").mkdir()
    return {}


def _unknown_model_type(folder: Path, model: str) -> dict[str, str]:
    copy = _tiny_copy(folder, model)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "model_type": "bertz"}))
    return {"--model": str(copy)}


def _without(*names: str) -> Callable[[Path, str], dict[str, str]]:
    def make(folder: Path, model: str) -> dict[str, str]:
        copy = _tiny_copy(folder, model)
        for name in names:
            (copy / name).unlink()
        return {"--model": str(copy)}

    return make


def _bad_torch_bin(folder: Path, model: str) -> dict[str, str]:
    copy = _tiny_copy(folder, model)
    (copy / "model.safetensors").unlink()
    (copy / "pytorch_model.bin").write_bytes(b"garbage" * 10)
    return {"--model": str(copy)}


def _sharded_without_a_shard(folder: Path, model: str) -> dict[str, str]:
    copy = _tiny_copy(folder, model)
    (copy / "model.safetensors").rename(copy / "model-00001-of-00002.safetensors")
    index = {"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (copy / "model.safetensors.index.json").write_text(json.dumps(index))
    return {"--model": str(copy)}


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


_HELD_LOCKS: list[Any] = []


def _locked(folder: Path, model: str) -> dict[str, str]:
    _HELD_LOCKS.append(lock_run_dir(folder.parent / "existing"))
    return {}


GOOD = "sentence,label\nthe film was great,1\nthe film was dull,0\n"

ROWS = [
    # ---- the command line
    Row("unknown flag", {"--foo_bar": "3"}, ("--foo_bar", "--help lists every flag")),
    Row("misspelled flag", {"--learning_rte": "1e-3"}, ("--learning_rte", "did you mean --learning_rate")),
    Row("abbreviated flag", {"--max_step": "3"}, ("--max_step", "did you mean --max_steps")),
    Row("text for a number", {"--learning_rate": "fast"}, ("'fast'", "a finite number > 0")),
    Row("fraction for an integer", {"--lora_r": "2.5"}, ("'2.5'", ">= 1")),
    Row("not true/false", {"--plot": "maybe"}, ("maybe", "true/false")),
    Row("flag without its value", extra=("--learning_rate",), expect=("--learning_rate", "expected one argument")),
    Row("stray value", config=lambda f: "extra", expect=("'extra'", "every value follows its --flag")),
    Row("invalid choice", {"--lr_scheduler_type": "cosin"}, ("'cosin'", "allowed: linear", "did you mean 'cosine'")),
    Row("config file not first", files=lambda f, m: {"cfg": _w(f / "cfg.yaml", "seed: 1\n")},
        expect=("cfg.yaml", "a config file must come first")),
    # ---- config files
    Row("config file missing", config=lambda f: str(f / "nope.yaml"), expect=("nope.yaml", "not found")),
    Row("config file not JSON", config=lambda f: _w(f / "c.json", "{learning_rate: 1"), expect=("c.json", "not valid JSON")),
    Row("config file not YAML", config=lambda f: _w(f / "c.yaml", "seed: [1, 2\n"), expect=("c.yaml", "not valid YAML")),
    Row("config file a YAML list", config=lambda f: _w(f / "c.yaml", "- 1\n- 2\n"), expect=("c.yaml", "mapping", "list")),
    Row("config file empty", config=lambda f: _w(f / "c.yaml", ""), expect=("c.yaml", "empty", "mapping")),
    Row("config file a scalar", config=lambda f: _w(f / "c.json", "3"), expect=("c.json", "mapping", "int")),
    Row("config file unknown key", config=lambda f: _w(f / "c.yaml", "learning_rte: 0.1\n"),
        expect=("'learning_rte'", "did you mean 'learning_rate'")),
    Row("config file wrong type", config=lambda f: _w(f / "c.yaml", "learning_rate: fast\n"), expect=("'fast'", "a finite number > 0")),
    Row("config file nested value", config=lambda f: _w(f / "c.yaml", "seed: {a: 1}\n"), expect=("seed", "a single value")),
    Row("config file repeated key", config=lambda f: _w(f / "c.yaml", "seed: 1\nseed: 2\n"), expect=("'seed'", "twice")),
    Row("config file null for a required value", config=lambda f: _w(f / "c.yaml", "learning_rate: null\n"),
        expect=("learning_rate", "null", "needs a value")),
    Row("config file not UTF-8", config=lambda f: _w(f / "c.yaml", "task_name: caf\xe9\n".encode("latin-1")),
        expect=("c.yaml", "not UTF-8")),
    # ---- numbers out of range
    Row("batch size 0", {"--per_device_train_batch_size": "0"}, ("--per_device_train_batch_size", ">= 1", "got 0")),
    Row("eval batch size negative", {"--per_device_eval_batch_size": "-4"}, ("--per_device_eval_batch_size", ">= 1", "-4")),
    Row("negative learning rate", {"--learning_rate": "-1"}, ("--learning_rate", "> 0", "-1.0")),
    Row("NaN learning rate", {"--learning_rate": "nan"}, ("--learning_rate", "finite", "nan")),
    Row("zero epochs", {"--num_train_epochs": "0", "--max_steps": "-1"}, ("--num_train_epochs", "> 0", "0.0")),
    Row("negative max_steps", {"--max_steps": "-3"}, ("--max_steps", "-1", ">= 1", "-3")),
    Row("gradient accumulation 0", {"--gradient_accumulation_steps": "0"}, ("--gradient_accumulation_steps", ">= 1")),
    Row("infinite weight decay", {"--weight_decay": "inf"}, ("--weight_decay", ">= 0", "inf")),
    Row("negative warmup", {"--warmup_steps": "-1"}, ("--warmup_steps", ">= 0", "-1.0")),
    Row("NaN max_grad_norm", {"--max_grad_norm": "nan"}, ("--max_grad_norm", ">= 0", "nan")),
    Row("adam beta 1", {"--adam_beta2": "1"}, ("--adam_beta2", "[0, 1)", "1.0")),
    Row("negative seed", {"--seed": "-1"}, ("--seed", "[0, 2**32 - 1]", "-1")),
    Row("save_total_limit 0", {"--save_total_limit": "0"}, ("--save_total_limit", ">= 1", "0")),
    Row("logging_steps 0", {"--logging_steps": "0"}, ("--logging_steps", "> 0", "0.0")),
    Row("eval_steps 0", {"--eval_steps": "0"}, ("--eval_steps", "> 0", "0.0")),
    Row("negative save_steps", {"--save_steps": "-2"}, ("--save_steps", "> 0", "-2.0")),
    Row("negative dataloader workers", {"--dataloader_num_workers": "-1"}, ("--dataloader_num_workers", ">= 0")),
    Row("label smoothing 1", {"--label_smoothing_factor": "1"}, ("--label_smoothing_factor", "[0, 1)")),
    Row("max_seq_length 0", {"--max_seq_length": "0"}, ("--max_seq_length", ">= 1", "got 0")),
    Row("max_seq_length beyond the model", {"--max_seq_length": "4096"}, ("4096", "128 positions")),
    Row("max_train_samples 0", {"--max_train_samples": "0"}, ("--max_train_samples", ">= 1")),
    Row("LoRA rank 0", {"--lora_r": "0"}, ("--lora_r", ">= 1", "got 0")),
    Row("negative LoRA alpha", {"--lora_alpha": "-16"}, ("--lora_alpha", "> 0", "-16.0")),
    Row("LoRA dropout 1", {"--lora_dropout": "1"}, ("--lora_dropout", "[0, 1)", "1.0")),
    Row("rate above 1", {"--rate": "1.5"}, ("1.5", "[0, 1)")),
    Row("NaN rate", {"--rate": "nan"}, ("nan", "[0, 1)")),
    Row("span_ratio 0", {"--method": "dropkey", "--logits_pattern": "span", "--span_ratio": "0"}, ("span_ratio", "(0, 1]", "0.0")),
    Row("infinite consistency weight", {"--consistency_weight": "inf"}, ("consistency_weight", ">= 0", "inf")),
    Row("infinite DropKey bias", {"--dropkey_bias": "inf"}, ("dropkey_bias", "> 0", "inf")),
    Row("negative DropKey bias", {"--dropkey_bias": "-5"}, ("dropkey_bias", "> 0", "-5.0")),
    Row("negative protected keys", {"--method": "dropkey", "--keep_first_keys": "-1"}, ("keep_first_keys", ">= 0", "-1")),
    Row("zero beams", {"--num_beams": "0"}, ("--num_beams", ">= 1", "got 0")),
    Row("zero new tokens", {"--max_new_tokens": "0"}, ("--max_new_tokens", ">= 1", "got 0")),
    # ---- names and choices
    Row("unknown task", {"--task_name": "mnli-x"}, ("'mnli-x'", "known tasks: cola")),
    Row("misspelled task", {"--task_name": "rtee"}, ("'rtee'", "did you mean 'rte'")),
    Row("unknown method", {"--method": "dropconnect"}, ("'dropconnect'", "choose one of: custom, baseline")),
    Row("misspelled method", {"--method": "hidenkey"}, ("'hidenkey'", "did you mean 'hiddenkey'")),
    Row("misspelled pattern", {"--method": "dropkey", "--logits_pattern": "colum"}, ("'colum'", "did you mean 'column'")),
    Row("unknown consistency loss", {"--consistency": "mse"}, ("'mse'", "('none', 'kl', 'js')")),
    Row("layers as a word", {"--layers": "first"}, ("'first'", "'auto', 'all', 'latter_half'")),
    Row("a layer twice", {"--layers": "1,1"}, ("'1,1'", "twice")),
    Row("layer beyond the model", {"--layers": "5"}, ("[5]", "0..1")),
    Row("misspelled label type", {"--label_type": "regresion"}, ("'regresion'", "did you mean 'regression'")),
    Row("unknown LoRA bias", {"--lora_bias": "some"}, ("'some'", "none, all or lora_only")),
    Row("unknown attention", {"--attn_implementation": "flashy"}, ("'flashy'", "allowed: eager")),
    Row("flash attention not installed", {"--method": "hiddencut", "--attn_implementation": "flash_attention_2"},
        ("flash_attention_2", "not installed", "sdpa or eager"), skip_if=lambda: _installed("flash_attn")),
    Row("flash attention with DropKey", {"--attn_implementation": "flash_attention_2"}, ("flash_attention_2", "sdpa or eager")),
    Row("unknown integration", {"--report_to": "wandbb"}, ("'wandbb'", "did you mean 'wandb'")),
    Row("integration not installed", {"--report_to": "wandb"}, ("wandb", "not installed"), skip_if=lambda: _installed("wandb")),
    Row("unknown optimizer", {"--optim": "adamw_torc"}, ("'adamw_torc'", "allowed: adamw_torch")),
    Row("TrainingArguments' own check", {"--eval_strategy": "no"}, ("invalid training arguments", "load_best_model_at_end")),
    Row("metric the task lacks", {"--metric_for_best_model": "bleu"}, ("'bleu'", "allowed: loss, accuracy")),
    Row("LoRA target the model lacks", {"--lora_target_modules": "qurey"}, ("qurey", "did you mean 'query'"), loads_model=True),
    # ---- flags that contradict each other or would be ignored
    Row("baseline with a rate", {"--method": "baseline", "--rate": "0.3"}, ("--rate 0.3", "ignored", "no dropout")),
    Row("baseline plus a drop", {"--method": "baseline", "--logits_rate": "0.5"}, ("--logits_rate 0.5", "--method custom")),
    Row("a preset's drop turned off", {"--method": "dropkey", "--logits_rate": "0"}, ("--logits_rate 0", "--method baseline")),
    Row("a preset at rate 0", {"--method": "dropkey", "--rate": "0"}, ("--rate 0", "turns off DropKey")),
    Row("custom with a rate", {"--method": "custom", "--rate": "0.3"}, ("--rate 0.3", "--logits_rate")),
    Row("rate nothing uses", {"--method": "dropkey", "--logits_rate": "0.2", "--rate": "0.3"}, ("--rate 0.3", "ignored")),
    Row("pattern of a drop that is off", {"--method": "dropkey", "--hidden_pattern": "span"}, ("--hidden_pattern 'span'", "no effect", "HiddenCut is off")),
    Row("protected keys without an attention drop", {"--method": "hiddencut", "--keep_first_keys": "1"}, ("--keep_first_keys 1", "no effect", "no attention drop")),
    Row("weight of a loss that is off", {"--method": "dropkey", "--consistency_weight": "2"}, ("--consistency_weight 2.0", "no effect")),
    Row("span ratio without spans", {"--method": "dropkey", "--span_ratio": "0.2"}, ("--span_ratio 0.2", "span pattern")),
    Row("JS setting with KL", {"--js_reference": "mixture"}, ("--js_reference 'mixture'", "not js")),
    Row("resume and overwrite", {"--resume": ""}, ("--resume", "--overwrite", "one of them")),
    Row("bundled task with files", {"--task_name": "rotten_tomatoes"}, ("--train_file", "rotten_tomatoes", "--task_name custom")),
    Row("custom task without train file", {"--train_file": None}, ("task custom", "needs --train_file")),
    Row("data folder and files", files=lambda f, m: {"--task_name": "rte", "--data_dir": str(f)}, expect=("--data_dir", "not both")),
    Row("data folder for the custom task", files=lambda f, m: {"--task_name": None, "--data_dir": str(f)},
        expect=("--data_dir", "--train_file")),
    Row("second text column alone", {"--text_pair_column": "other"}, ("--text_pair_column", "needs --text_column")),
    Row("decoding flag for classification", {"--num_beams": "3"}, ("--num_beams", "no effect", "e2e/webnlg")),
    Row("label type for a GLUE task", {"--task_name": "rte", "--label_type": "regression"}, ("--label_type", "custom")),
    # ---- data files
    Row("train file missing", {"--train_file": "/nonexistent/train.csv"}, ("/nonexistent/train.csv", "not found")),
    Row("train file is a folder", files=lambda f, m: {"--train_file": str(f)}, expect=("is a directory", "expected a file")),
    Row("train file empty", files=lambda f, m: {"--train_file": _w(f / "t.csv", "")}, expect=("t.csv", "empty")),
    Row("unsupported file type", files=lambda f, m: {"--train_file": _w(f / "t.xlsx", "x")}, expect=("'.xlsx'", ".csv, .tsv")),
    Row("binary train file", files=lambda f, m: {"--train_file": _w(f / "t.csv", b"PK\x03\x04\x00\x00binary")},
        expect=("t.csv", "not a text file", "UTF-8")),
    Row("UTF-16 train file", files=lambda f, m: {"--train_file": _w(f / "t.csv", GOOD.encode("utf-16"))}, expect=("t.csv", "UTF-16", "UTF-8")),
    Row("Latin-1 train file", files=lambda f, m: {"--train_file": _w(f / "t.csv", "sentence,label\ncaf\xe9 good,1\n".encode("latin-1"))},
        expect=("t.csv", "not UTF-8", "line 2")),
    Row("unbalanced quote", files=lambda f, m: {"--train_file": _csv(f, "t.csv", 'sentence,label\n"great film,1\ndull film,0\n')},
        expect=("t.csv:2", "quote")),
    Row("repeated header column", files=lambda f, m: {"--train_file": _csv(f, "t.csv", "sentence,label,label\na,1,0\nb,0,1\n")},
        expect=("'label'", "2 times", "unique")),
    Row("header only", files=lambda f, m: {"--train_file": _csv(f, "t.csv", "sentence,label\n")}, expect=("t.csv", "header only")),
    Row("unquoted comma in a text", files=lambda f, m: {"--train_file": _csv(f, "t.csv", "sentence,label\ngreat, really,1\ndull,0\n")},
        expect=("t.csv:2", "3 field(s)", "2 columns", "quote")),
    Row("no label column", files=lambda f, m: {"--train_file": _csv(f, "t.csv", "sentence,score\na,1\nb,0\n")},
        expect=("['label']", "available columns")),
    Row("misspelled text column", {"--text_column": "sentense"}, ("['sentense']", "did you mean 'sentence'")),
    Row("NaN label", files=lambda f, m: {"--train_file": _csv(f, "t.csv", "sentence,label\na,0.5\nb,nan\nc,1.5\n")},
        expect=("row 2", "'nan'", "finite number")),
    Row("NaN class label", files=lambda f, m: {"--train_file": _csv(f, "t.csv", "sentence,label\na,1\nb,nan\nc,0\n")},
        expect=("row 2", "'nan'")),
    Row("rows without labels", files=lambda f, m: {"--train_file": _csv(f, "t.csv", "sentence,label\na,1\nb,\nc,0\n")},
        expect=("row 2", "no label")),
    Row("one class only", files=lambda f, m: {"--train_file": _csv(f, "t.csv", "sentence,label\na,1\nb,1\n")},
        expect=("at least 2 distinct labels", "[1]")),
    Row("validation label not in training", files=lambda f, m: {"--validation_file": _csv(f, "v.csv", "sentence,label\na,7\n")},
        expect=("row 1", "'7'", "training labels")),
    Row("GLUE label out of range", files=lambda f, m: {
        "--task_name": "rte", "--train_file": _csv(f, "t.csv", "sentence1,sentence2,label\na,b,2\n"),
        "--validation_file": _csv(f, "v.csv", "sentence1,sentence2,label\na,b,0\n"), "--test_file": None},
        expect=("label 2", "0..1")),
    Row("bad JSON line", files=lambda f, m: {"--train_file": _w(f / "t.jsonl", '{"sentence": "a", "label": 1}\n{"sentence": "b",\n')},
        expect=("t.jsonl:2", "invalid JSON")),
    Row("repeated JSON key", files=lambda f, m: {"--train_file": _w(f / "t.json", '[{"sentence": "a", "label": 1, "label": 0}]')},
        expect=("'label'", "twice", "unique")),
    Row("regression label not a number", {"--label_type": "regression"}, ("regression label", "not a number"),
        files=lambda f, m: {"--train_file": _csv(f, "t.csv", "sentence,label\na,0.5\nb,high\n")}),
    Row("E2E file without its columns", {"--task_name": "e2e", "--validation_file": None, "--test_file": None}, ("'mr'", "mr,ref")),
    # ---- the run folder
    Row("output folder below a file", files=lambda f, m: {"--output_dir": str(Path(_w(f / "file", "x")) / "run")},
        expect=("is a file", "no folder can be created below it")),
    Row("output folder is a file", files=lambda f, m: {"--output_dir": _w(f / "file", "x")}, expect=("is a file", "must be a folder")),
    Row("existing run folder without --overwrite", overwrite=False, expect=("already exists", "--overwrite", "--resume")),
    Row("resume without a checkpoint", {"--resume": ""}, ("--resume", "no checkpoint"), overwrite=False),
    Row("resume with only an interrupted save", {"--resume": ""}, ("checkpoint-4", "interrupted"), files=_incomplete_checkpoint,
        overwrite=False),
    Row("run folder in use", files=_locked, expect=("in use by another hiddenkey process",)),
    # ---- the model
    Row("model path not found", {"--model": "/nonexistent/model"}, ("'/nonexistent/model'", "not found")),
    Row("model folder without config", files=lambda f, m: {"--model": str(f)}, expect=("no config.json",)),
    Row("model path is a file", files=lambda f, m: {"--model": _w(f / "weights.bin", "x")}, expect=("is a file", "model folder")),
    Row("truncated model weights", files=_truncated_model, expect=("model.safetensors", "truncated")),
    Row("broken model config", files=_bad_config_json, expect=("config.json", "cannot read the model config")),
    Row("unknown model type", files=_unknown_model_type, expect=("`bertz`", "does not recognize this architecture")),
    Row("model folder without weights", files=_without("model.safetensors"), expect=("no weights", "model.safetensors")),
    Row("model folder without tokenizer", files=_without("tokenizer.json"), expect=("no tokenizer", "tokenizer.json, vocab.txt")),
    Row("damaged pytorch_model.bin", files=_bad_torch_bin, expect=("pytorch_model.bin", "not a PyTorch weights file")),
    Row("missing weight shard", files=_sharded_without_a_shard, expect=("lacks 1 weight shard", "model-00002-of-00002")),
    Row("hub id not cached offline", {"--model": "nobody/no-such-model"},
        ("'nobody/no-such-model'", "not in the Hugging Face cache", "HF_HUB_OFFLINE"), skip_if=lambda: not _offline()),
    Row("layer beyond the model from the end", {"--layers": "-3"}, ("[-3]", "-2..-1")),
    Row("a layer twice counting from the end", {"--layers": "1,-1"}, ("layer 1 twice", "-1 and 1")),
]


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def test_the_catalogue_is_large_and_its_kinds_unique():
    kinds = [row.kind for row in ROWS] + [kind for kind, *_ in EVAL_ROWS] + [kind for kind, *_ in API_ROWS]
    assert len(kinds) == len(set(kinds))
    assert len(kinds) >= 50


@pytest.mark.parametrize("row", ROWS, ids=[r.kind for r in ROWS])
def test_bad_train_input(row, tiny_bert, data, workspace, capsys):
    if row.skip_if is not None and row.skip_if():
        pytest.skip("the package this row expects to be missing is installed")
    existing, cwd, inputs = workspace
    args = _train_args(tiny_bert, data, existing) + (["--overwrite"] if row.overwrite else [])
    args = _set(args, row.flags)
    try:
        if row.files is not None:
            made = row.files(inputs, tiny_bert)
            stray = [made.pop("cfg")] if "cfg" in made else []
            args = _set(args, made)
            args[3:3] = stray  # after "train --model PATH": a value where a flag should be
        args += list(row.extra)
        if row.config is not None:
            args = ["train", row.config(inputs), *args[1:]]
        before = snapshot(existing)
        assert main(args) == 2
    finally:
        while _HELD_LOCKS:
            _HELD_LOCKS.pop().release()
    assert_one_line_error(capsys.readouterr().err, row.expect, alone=not row.loads_model)
    assert snapshot(existing) == before
    assert list(cwd.iterdir()) == []


# ------------------------------------------------------------------------------------------- hiddenkey eval
@pytest.fixture(scope="module")
def trained_run(tiny_bert, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained") / "run"
    args = _train_args(tiny_bert, data, out, "--method", "hiddenkey-", "--plot", "false", "--max_steps", "2", "--save_steps", "2")
    assert main(args) == 0
    return out


def _damage(name: str, run: Path, folder: Path) -> list[str]:
    if name == "no adapter weights":
        (run / "adapter_model.safetensors").unlink()
    elif name == "no adapter at all":
        (run / "adapter_config.json").unlink()
    elif name == "truncated adapter":
        weights = run / "adapter_model.safetensors"
        weights.write_bytes(weights.read_bytes()[:100])
    elif name == "args.json not JSON":
        (run / "args.json").write_text('{"model": ')
    elif name == "args.json not an object":
        (run / "args.json").write_text("[1, 2]")
    elif name == "args.json without its data":
        saved = json.loads((run / "args.json").read_text())
        del saved["data"]
        (run / "args.json").write_text(json.dumps(saved))
    elif name == "task.json damaged":
        (run / "task.json").write_text('{"name": "custom", "kind": "poetry", "text_columns": ["sentence"], "num_labels": 2}')
    elif name == "eval in a folder in use":
        _HELD_LOCKS.append(lock_run_dir(run))
    return []


EVAL_ROWS = [
    ("eval: run folder missing", lambda run, f: [str(f / "nothing")], ("nothing", "not found")),
    ("eval: not a run folder", lambda run, f: [str(f)], ("not a hiddenkey run folder", "args.json")),
    ("eval: no adapter weights", None, ("adapter_model.safetensors missing",)),
    ("eval: no adapter at all", None, ("no trained adapter", "--resume")),
    ("eval: truncated adapter", None, ("adapter_model.safetensors", "truncated")),
    ("eval: args.json not JSON", None, ("args.json is damaged", "cannot be used")),
    ("eval: args.json not an object", None, ("args.json is damaged", "list")),
    ("eval: args.json without its data", None, ("args.json is damaged", "'data'")),
    ("eval: task.json damaged", None, ("task.json is damaged", "poetry")),
    ("eval: unknown flag", lambda run, f: [str(run), "--tets_file", "x.csv"], ("--tets_file", "did you mean --test_file")),
    ("eval: test file missing", lambda run, f: [str(run), "--test_file", str(f / "none.csv")], ("none.csv", "not found")),
    ("eval: test label not in training", lambda run, f: [str(run), "--test_file", _csv(f, "t.csv", "sentence,label\na,7\n")],
     ("'7'", "training labels")),
    ("eval: folder in use", None, ("in use by another hiddenkey process",)),
]


@pytest.mark.parametrize("kind,argv,expect", EVAL_ROWS, ids=[r[0] for r in EVAL_ROWS])
def test_bad_eval_input(kind, argv, expect, trained_run, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    try:
        if argv is None:
            _damage(kind.removeprefix("eval: ").replace("folder in use", "eval in a folder in use"), run, inputs)
            args = [str(run)]
        else:
            args = argv(run, inputs)
        before = snapshot(run)
        assert main(["eval", *args]) == 2
    finally:
        while _HELD_LOCKS:
            _HELD_LOCKS.pop().release()
    assert_one_line_error(capsys.readouterr().err, expect)
    assert snapshot(run) == before
    assert list(cwd.iterdir()) == []


# ------------------------------------------------------------------------------------------- the Python API
def _tiny_attached(config: DropoutConfig):
    from .conftest import build_model, lora

    model = lora(build_model("bert"), "bert")
    return hiddenkey.attach(model, config)


def _trainer(**kwargs):
    from transformers import TrainingArguments

    model = kwargs.pop("model")
    args = TrainingArguments(output_dir=kwargs.pop("out"), report_to="none", use_cpu=True)
    return hiddenkey.Trainer(model=model, args=args, **kwargs)


API_ROWS = [
    ("API: layers as an integer", lambda t: DropoutConfig(layers=3), ("layers must be a string", "int 3")),
    ("API: span_ratio as text", lambda t: DropoutConfig(span_ratio="0.1"), ("span_ratio must be a finite number", "str '0.1'")),
    ("API: a rate as a bool", lambda t: DropoutConfig(logits_rate=True), ("logits_rate", "bool True")),
    ("API: consistency None", lambda t: DropoutConfig(consistency=None), ("consistency must be a string", "None")),
    ("API: infinite consistency weight", lambda t: DropoutConfig(consistency_weight=math.inf), ("consistency_weight", "inf")),
    ("API: infinite DropKey bias", lambda t: DropoutConfig(dropkey_bias=math.inf), ("dropkey_bias", "> 0", "inf")),
    ("API: protected keys as a float", lambda t: DropoutConfig(keep_first_keys=1.5), ("keep_first_keys", "integer >= 0", "1.5")),
    ("API: protected keys as a bool", lambda t: DropoutConfig(keep_first_keys=True), ("keep_first_keys", "integer >= 0", "True")),
    ("API: a flag as text", lambda t: DropoutConfig(weights_stop_gradient="no"), ("weights_stop_gradient", "true or false")),
    ("API: unknown method name", lambda t: DropoutConfig(method="dropconect"), ("'dropconect'", "custom, baseline")),
    ("API: preset name not text", lambda t: DropoutConfig.preset(3), ("method must be a preset name", "int 3")),
    ("API: preset rate as text", lambda t: DropoutConfig.preset("dropkey", rate="0.1"), ("rate must be", "str '0.1'")),
    ("API: preset unknown field", lambda t: DropoutConfig.preset("dropkey", logit_rate=0.1), ("'logit_rate'", "did you mean 'logits_rate'")),
    ("API: preset unknown pattern", lambda t: DropoutConfig.preset("dropkey", pattern="row"), ("'row'", "element")),
    ("API: from_dict of a list", lambda t: DropoutConfig.from_dict([1]), ("mapping", "list")),
    ("API: load of broken JSON", lambda t: DropoutConfig.load(_w(t / "c.json", "{")), ("c.json", "not a valid dropout config")),
    ("API: attach a dict", lambda t: hiddenkey.attach(_tiny_attached_model(), {"logits_rate": 0.1}), ("DropoutConfig", "dict")),
    ("API: Trainer given a dict", lambda t: _trainer(model=_tiny_attached_model(), out=str(t), dropout_config={"a": 1}),
     ("dropout_config must be a hiddenkey.DropoutConfig", "dict")),
    ("API: Trainer given another config", lambda t: _trainer(
        model=_tiny_attached(DropoutConfig.preset("dropkey")), out=str(t), dropout_config=DropoutConfig.preset("hiddencut")),
     ("already attached with a different DropoutConfig", "DropKey", "HiddenCut")),
    ("API: hiddenkey_loss given a dict", lambda t: hiddenkey.hiddenkey_loss(
        _tiny_attached(DropoutConfig.preset("dropkey")), {}, config={"a": 1}), ("config must be a hiddenkey.DropoutConfig",)),
]


def _tiny_attached_model():
    from .conftest import build_model, lora

    return lora(build_model("bert"), "bert")


@pytest.mark.parametrize("kind,call,expect", API_ROWS, ids=[r[0] for r in API_ROWS])
def test_bad_api_input(kind, call, expect, tmp_path):
    with pytest.raises(ConfigError) as info:
        call(tmp_path)
    for text in expect:
        assert text in str(info.value), f"{text!r} not in {info.value}"


# ------------------------------------------------------------------------------------------- coverage of the rules
def test_every_number_flag_has_a_range():
    """A new int/float flag cannot slip in unchecked: each has a rule (DropoutConfig's in NUMBER_RANGES)."""
    import typing

    from transformers import TrainingArguments

    from hiddenkey.cli import arguments
    from hiddenkey.cli.validation import NUMBER_RULES
    from hiddenkey.config import NUMBER_RANGES

    classes = [arguments.ModelArguments, arguments.DataArguments, arguments.LoraArguments, arguments.RunArguments,
               arguments.GenerationSettings, TrainingArguments]  # fmt: skip
    missing = []
    for cls in classes:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            kind = str(hints[f.name])
            if f.init and ("int" in kind or "float" in kind) and f.name not in NUMBER_RULES:
                missing.append(f"{cls.__name__}.{f.name}")
    assert not missing
    numbers = [f.name for f in dataclasses.fields(DropoutConfig) if f.type == "float"]
    assert set(numbers) <= set(NUMBER_RANGES)


def test_a_huge_dropkey_bias_stays_finite_in_half_precision():
    from hiddenkey import ops

    keep = torch.tensor([[True, False, False]])
    bias = ops.dropkey_bias(keep, torch.float16, 1e9)
    assert torch.isfinite(bias).all() and bias[0, 0] == 0 and bias[0, 1] == torch.finfo(torch.float16).min


def test_data_files_without_a_task_are_the_custom_task(data):
    from hiddenkey.cli.arguments import parse_train_args

    _, data_args, *_ = parse_train_args(["--train_file", data["train"], "--validation_file", data["validation"]])
    assert data_args.task_name == "custom" and data_args.max_train_samples is None


def test_describe_names_the_loss_that_runs_on_a_regression_head():
    cfg = DropoutConfig.preset("hiddenkey", rate=0.1)
    assert cfg.describe(regression=True).endswith("MSE(w=1, backprop=one)")
    assert "KL" in cfg.describe()


def test_negative_layers_count_from_the_last_with_a_warning(tiny_bert, caplog):
    from hiddenkey.cli.arguments import parse_train_args

    with caplog.at_level("WARNING", logger="hiddenkey"):
        _, _, _, dropout_config, *_ = parse_train_args(["--model", tiny_bert, "--method", "dropkey", "--layers", "-1"])
    assert dropout_config.layer_indices(2, decoder_only=False) == [1]
    assert "--layers -1 counts negative indices from the last layer: layers [1] of 0..1" in caplog.text
