"""``--model`` given a GGUF file (or a folder holding one): the dequantised model is a plain trainable
one, the tokenizer comes from the file, ``hiddenkey train`` and ``hiddenkey eval`` run on it, and
load errors keep their whole reason."""

from __future__ import annotations

import json

import pytest
import torch

from hiddenkey.cli.arguments import ModelArguments
from hiddenkey.cli.errors import CLIError
from hiddenkey.cli.main import main
from hiddenkey.cli.models import load_causal_lm, model_load_error, resolve_checkpoint

pytest.importorskip("gguf", reason="the [gguf] extra is installed by scripts/setup.sh")

from .gguf_helpers import tiny_llama, write_llama_gguf  # noqa: E402

IDS = torch.tensor([[5, 60, 200, 10, 3, 99, 257]])


@pytest.fixture(scope="module")
def reference():
    return tiny_llama()


@pytest.fixture(scope="module")
def gguf_file(reference, tmp_path_factory):
    return write_llama_gguf(reference, tmp_path_factory.mktemp("gguf") / "tiny-llama.Q8_0.gguf")


def test_resolve_checkpoint(tmp_path):
    model = tmp_path / "m.Q4_1.gguf"
    model.write_bytes(b"GGUF")
    assert resolve_checkpoint(str(model)) == (str(tmp_path), {"gguf_file": "m.Q4_1.gguf"})
    assert resolve_checkpoint(str(tmp_path)) == (str(tmp_path), {"gguf_file": "m.Q4_1.gguf"})
    (tmp_path / "other.gguf").write_bytes(b"GGUF")
    with pytest.raises(CLIError, match="several GGUF files"):
        resolve_checkpoint(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")  # a transformers folder wins over stray GGUF files
    assert resolve_checkpoint(str(tmp_path)) == (str(tmp_path), {})
    assert resolve_checkpoint("gpt2-medium") == ("gpt2-medium", {})


def test_missing_gguf_package_is_a_clear_error(tmp_path, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else find_spec(name, *a))
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    with pytest.raises(CLIError, match=r"pip install 'hiddenkey\[gguf\]'"):
        resolve_checkpoint(str(tmp_path / "m.gguf"))


@pytest.mark.parametrize("how", ["file", "folder"])
def test_gguf_loads_as_a_plain_float_model(reference, gguf_file, how):
    path = gguf_file if how == "file" else gguf_file.parent
    model, tokenizer, returned = load_causal_lm(ModelArguments(model_name_or_path=str(path)))
    assert returned == str(path)
    assert getattr(model, "hf_quantizer", None) is None and getattr(model.config, "quantization_config", None) is None
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with torch.no_grad():
        torch.testing.assert_close(model(IDS).logits, reference(IDS).logits, atol=0.02, rtol=0)  # Q8_0
    assert tokenizer.eos_token == "<|endoftext|>" and tokenizer.pad_token is not None
    assert tokenizer("the the").input_ids == [ord("t"), 257, 256, 257]  # the file's merges "Ġt" and "he"


@pytest.mark.parametrize(
    "quantization,atol", [("F16", 0.01), ("BF16", 0.01), ("Q8_0", 0.02), ("Q5_1", 0.1), ("Q5_0", 0.1), ("Q4_1", 0.2), ("Q4_0", 0.2)]
)
def test_quantisations_that_load(reference, tmp_path, quantization, atol):
    """The block quantisations the gguf package writes at any row width; K-quants need rows of 256."""
    write_llama_gguf(reference, tmp_path / f"m.{quantization}.gguf", quantization)
    model, _, _ = load_causal_lm(ModelArguments(model_name_or_path=str(tmp_path)))
    with torch.no_grad():
        error = (model(IDS).logits - reference(IDS).logits).abs().max().item()
    assert 0 < error < atol if quantization != "F16" else error < atol


def test_train_and_eval_a_gguf_model(gguf_file, tmp_path, capsys):
    out = tmp_path / "run"
    args = [
        "train", "--model", str(gguf_file), "--task_name", "e2e", "--data_dir", "tests/fixtures/e2e",
        "--output_dir", str(out), "--max_steps", "2", "--eval_steps", "2", "--save_steps", "2",
        "--logging_steps", "1", "--per_device_train_batch_size", "2", "--max_eval_samples", "2",
        "--max_predict_samples", "2", "--report_to", "none", "--disable_tqdm", "true", "--max_new_tokens", "4",
        "--num_beams", "1", "--lora_r", "4", "--no_repeat_ngram_size", "0",
    ]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["train_loss"] > 0 and "bleu" in metrics["test"]
    assert (out / "adapter_model.safetensors").is_file()
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] and not adapter.get("quantization_config")
    capsys.readouterr()
    assert main(["eval", str(out)]) == 0
    printed = capsys.readouterr().out
    assert json.loads(printed[: printed.rindex("}") + 1])["bleu"] == pytest.approx(metrics["test"]["bleu"])


def test_load_errors_keep_the_whole_reason():
    err = OSError("Can't load tokenizer for 'x'.\nIf you were trying to load it from the hub, make sure\n  you don't have a local folder.")
    message = str(model_load_error("x", err))
    assert "make sure you don't have a local folder." in message and "\n" not in message


def test_a_broken_gguf_file_reports_its_reason(tmp_path, capsys):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"not a gguf file at all")
    with pytest.raises(CLIError, match="cannot load model") as info:
        load_causal_lm(ModelArguments(model_name_or_path=str(broken)))
    assert len(str(info.value)) > len(f"cannot load model {str(broken)!r}: ") + 10
