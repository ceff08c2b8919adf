"""Short real training runs: loss goes down with every preset; Trainer integration; plain-peft reload."""

import dataclasses
import json
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import TrainingArguments

import hiddenkey

from .conftest import VOCAB, build_model, lora

PRESETS = ["baseline", "dropkey", "dropattention", "hiddencut", "hiddenkey-", "hiddenkey"]


def _dataset(n=32, length=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    half = (VOCAB - 2) // 2
    ids = 2 + torch.randint(0, half, (n, length), generator=g) + labels[:, None] * half  # low vs high vocabulary
    mask = torch.ones(n, length, dtype=torch.long)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _train(model, data, steps=40, lr=3e-2, batch_size=8):
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)
    model.train()
    history = []
    n = data["labels"].shape[0]
    for step in range(steps):
        idx = torch.arange(step * batch_size, (step + 1) * batch_size) % n
        loss, _, parts = hiddenkey.hiddenkey_loss(model, {k: v[idx] for k, v in data.items()})
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(parts["task_loss"].item())
    return history


@pytest.mark.parametrize("preset", PRESETS)
def test_loss_goes_down_with_each_preset(preset):
    torch.manual_seed(0)
    model = lora(build_model("bert"), "bert")
    hiddenkey.attach(model, hiddenkey.DropoutConfig.preset(preset, rate=0.1))
    history = _train(model, _dataset())
    first, last = sum(history[:4]) / 4, sum(history[-4:]) / 4
    assert last < 0.7 * first, (preset, first, last)


def test_decoder_loss_goes_down_with_hiddenkey():
    # A frozen random LM head cannot sharpen its softmax, so the decoder learns a classification head.
    torch.manual_seed(0)
    model = lora(build_model("qwen2", num_labels=2), "qwen2")
    hiddenkey.attach(model, hiddenkey.DropoutConfig.preset("hiddenkey", rate=0.1))
    assert hiddenkey.get_state(model).layer_indices == [2, 3]
    history = _train(model, _dataset())
    assert sum(history[-4:]) / 4 < 0.7 * sum(history[:4]) / 4


class _Rows(torch.utils.data.Dataset):
    def __init__(self, data):
        self.data = data

    def __len__(self):
        return self.data["labels"].shape[0]

    def __getitem__(self, i):
        return {k: v[i] for k, v in self.data.items()}


def test_trainer_trains_logs_consistency_and_saves_the_config(tmp_path):
    torch.manual_seed(0)
    model = lora(build_model("bert"), "bert")
    cfg = hiddenkey.DropoutConfig.preset("hiddenkey", rate=0.1)
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=6, per_device_train_batch_size=8, learning_rate=1e-2,
        logging_steps=3, save_steps=6, report_to=[], use_cpu=True, seed=0, disable_tqdm=True,
    )
    trainer = hiddenkey.Trainer(model=model, args=args, train_dataset=_Rows(_dataset()), dropout_config=cfg)
    assert hiddenkey.is_attached(model)
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logged and all("consistency_loss" in entry and entry["consistency_loss"] > 0 for entry in logged)
    checkpoint = tmp_path / "checkpoint-6"
    assert hiddenkey.DropoutConfig.load(checkpoint) == cfg
    assert (checkpoint / "adapter_model.safetensors").is_file()
    metrics = trainer.evaluate(_Rows(_dataset(seed=1)))
    assert "eval_loss" in metrics


def test_adapter_loads_in_plain_peft_without_hiddenkey(tmp_path):
    torch.manual_seed(0)
    model = lora(build_model("bert", seed=0), "bert")
    hiddenkey.attach(model, hiddenkey.DropoutConfig.preset("hiddenkey", rate=0.1))
    _train(model, _dataset(), steps=5)
    model.save_pretrained(tmp_path / "adapter")
    hiddenkey.get_state(model).config.save(tmp_path / "adapter")
    model.eval()
    probe = _dataset(n=4, seed=3)
    with torch.no_grad():
        want = model(input_ids=probe["input_ids"], attention_mask=probe["attention_mask"]).logits
    torch.save({"probe": probe, "want": want}, tmp_path / "probe.pt")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert not any("hiddenkey" in key or "drop_key" in key for key in config)
    script = textwrap.dedent(
        f"""
        import os, sys, torch
        os.environ["HF_HUB_OFFLINE"] = "1"
        sys.path.insert(0, {str(tmp_path.parent)!r})
        from peft import PeftModel
        from transformers import BertConfig, BertForSequenceClassification
        torch.manual_seed(0)
        cfg = BertConfig(vocab_size={VOCAB}, hidden_size=32, num_attention_heads=4, intermediate_size=64,
                         num_hidden_layers=2, num_labels=2, hidden_dropout_prob=0.1,
                         attention_probs_dropout_prob=0.1, max_position_embeddings=64)
        base = BertForSequenceClassification(cfg)
        model = PeftModel.from_pretrained(base, {str(tmp_path / "adapter")!r}).eval()
        data = torch.load({str(tmp_path / "probe.pt")!r})
        with torch.no_grad():
            got = model(input_ids=data["probe"]["input_ids"], attention_mask=data["probe"]["attention_mask"]).logits
        assert "hiddenkey" not in sys.modules, "hiddenkey was imported"
        assert torch.equal(got, data["want"]), (got, data["want"])
        print("OK")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-2000:]


def _grads(model, loss_fn, seed=7):
    model.zero_grad()
    torch.manual_seed(seed)
    loss = loss_fn()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if "lora_" in n and p.grad is not None}


def test_trainer_kl_gradient_reaches_lora_and_equals_hiddenkey_loss(tmp_path):
    torch.manual_seed(0)
    model = lora(build_model("bert"), "bert", init_lora_weights=False)
    trainer = hiddenkey.Trainer(
        model=model, args=TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True),
        dropout_config=hiddenkey.DropoutConfig.preset("hiddenkey", rate=0.2, kl_weight=5.0),
    )
    batch = {k: v[:8] for k, v in _dataset().items()}
    model.train()
    loss, grads = _grads(model, lambda: trainer.compute_loss(model, dict(batch)))
    want_loss, want = _grads(model, lambda: hiddenkey.hiddenkey_loss(model, dict(batch))[0])
    no_kl = hiddenkey.DropoutConfig.preset("hiddenkey-", rate=0.2)
    _, task = _grads(model, lambda: hiddenkey.hiddenkey_loss(model, dict(batch), no_kl)[0])
    torch.testing.assert_close(loss, want_loss)
    assert grads.keys() == want.keys() and len(grads) == 8  # A and B of query and value in 2 layers
    for name in grads:
        torch.testing.assert_close(grads[name], want[name], rtol=1e-5, atol=1e-7)
        assert (grads[name] - task[name]).abs().sum() > 0, f"no KL gradient in {name}"


def test_gradient_accumulation_divides_the_kl_like_the_task_loss(tmp_path):
    """A causal LM's task loss is normalised over the accumulated batch (num_items_in_batch) and the Trainer
    does not divide it; the per-micro-batch KL must then be divided by the accumulation steps, in its gradient."""
    model = lora(build_model("llama"), "llama", init_lora_weights=False)
    cfg = hiddenkey.DropoutConfig.preset("hiddenkey", rate=0.2, kl_weight=5.0)
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, gradient_accumulation_steps=2)
    trainer = hiddenkey.Trainer(model=model, args=args, dropout_config=cfg)
    trainer.current_gradient_accumulation_steps = 2
    batch = {k: v[:4] for k, v in _dataset().items()}
    batch["labels"] = batch["input_ids"].clone()
    items = 2 * (batch["labels"][:, 1:] != -100).sum()  # this micro-batch is half of the accumulated batch
    model.train()
    _, got = _grads(model, lambda: trainer.compute_loss(model, dict(batch), num_items_in_batch=items))

    def library(config):
        task_loss = lambda b, copies: trainer.hiddenkey_task_loss(model, b, items)  # noqa: E731
        return _grads(model, lambda: hiddenkey.hiddenkey_loss(model, dict(batch), config, task_loss)[0])[1]

    want = library(dataclasses.replace(cfg, consistency_weight=cfg.consistency_weight / 2))
    full = library(cfg)
    for name in got:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-7)
    assert any(not torch.allclose(got[n], full[n]) for n in got)


def test_sequence_classifier_loss_is_divided_by_gradient_accumulation(tmp_path):
    """transformers 5.23 takes a BERT classifier's per-batch-mean loss for a num_items-normalised one and
    skips the division by the accumulation steps; hiddenkey.Trainer trains it like one larger batch."""
    logged = {}
    for accumulation, batch_size in [(1, 8), (2, 4)]:
        torch.manual_seed(0)
        model = lora(build_model("bert", dropout=0.0), "bert")
        args = TrainingArguments(
            output_dir=str(tmp_path / str(accumulation)), max_steps=1, per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=accumulation, logging_steps=1, learning_rate=0.0, report_to=[],
            use_cpu=True, save_strategy="no", disable_tqdm=True,
        )
        trainer = hiddenkey.Trainer(
            model=model, args=args, train_dataset=_Rows(_dataset()), dropout_config=hiddenkey.DropoutConfig.preset("baseline")
        )
        trainer.train()
        logged[accumulation] = trainer.state.log_history[0]["loss"]
    assert logged[2] == pytest.approx(logged[1], rel=1e-5)
