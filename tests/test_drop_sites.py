"""Visible dropout: the table of drop sites, and the measured fraction dropped per position."""

import pytest
import torch
import torch.nn.functional as F
from transformers import TrainerCallback, TrainingArguments

import hiddenkey
from hiddenkey import ops

from .conftest import VOCAB, batch, build_model, lora


def _attached(family, config, **kwargs):
    model = lora(build_model(family, **kwargs), family)
    hiddenkey.attach(model, config)
    return model


# ------------------------------------------------------------------------------------------------ table
def test_decoder_table_lists_every_site_with_its_module_path_and_the_quiet_layers(capsys):
    config = hiddenkey.DropoutConfig.preset("hiddenkey", rate=0.1, output_rate=0.2)
    model = _attached("llama", config)
    hiddenkey.print_drop_sites(model)
    text = capsys.readouterr().out
    rows = hiddenkey.drop_sites(model)
    assert [(r["layer"], r["position"], r["pattern"], r["rate"]) for r in rows] == [
        ("2", "logits", "column", "0.1"),
        ("2", "hidden", "element", "0.1"),
        ("3", "logits", "column", "0.1"),
        ("3", "hidden", "element", "0.1"),
        ("-", "output", "element", "0.2"),
    ]
    for row in rows:
        model.get_submodule(row["module"])  # a real path in the model as given
        assert row["module"] in text
    assert rows[0]["module"].endswith("layers.2.self_attn") and rows[1]["module"].endswith("layers.2.mlp")
    assert rows[-1]["module"].endswith("lm_head")
    assert "layers without drops: 0-1" in text
    assert "DropKey" in text and "HiddenCut" in text


def test_encoder_table_with_input_and_weights_drops():
    config = hiddenkey.DropoutConfig(input_rate=0.05, weights_rate=0.1, weights_pattern="column", hidden_rate=0.1,
                                     hidden_pattern="span")
    model = _attached("bert", config)
    rows = hiddenkey.drop_sites(model)
    assert rows[0]["position"] == "input" and rows[0]["pattern"] == "span"
    assert rows[0]["module"].endswith("embeddings.word_embeddings")
    assert [(r["layer"], r["position"]) for r in rows[1:]] == [
        ("0", "weights"), ("0", "hidden"), ("1", "weights"), ("1", "hidden")
    ]
    assert rows[2]["module"].endswith("layer.0.output.dropout")
    table = hiddenkey.drop_sites_table(model)
    assert "every layer drops" in table
    with hiddenkey.drops_disabled(model):
        assert "switched off" in hiddenkey.drop_sites_table(model)


def test_table_of_explicit_layers_and_of_a_detached_model():
    model = _attached("gpt2", hiddenkey.DropoutConfig(logits_rate=0.1, layers="0,3"))
    rows = hiddenkey.drop_sites(model)
    assert [r["layer"] for r in rows] == ["0", "3"]
    assert "layers without drops: 1-2" in hiddenkey.drop_sites_table(model)
    hiddenkey.detach(model)
    with pytest.raises(hiddenkey.AttachError):
        hiddenkey.print_drop_sites(model)


# ------------------------------------------------------------------------------------------------ meter
def test_drop_hidden_and_keep_draws_what_drop_hidden_draws():
    x = torch.randn(3, 7, 16)
    for pattern in ("element", "column", "span"):
        torch.manual_seed(5)
        expected = ops.drop_hidden(x, 0.3, pattern, 0.3)
        torch.manual_seed(5)
        out, keep = ops.drop_hidden_and_keep(x, 0.3, pattern, 0.3)
        assert keep.dtype == torch.bool
        torch.testing.assert_close(out, expected)
        assert torch.equal(out == 0, (~keep).expand_as(x))
    torch.manual_seed(5)
    reference = F.dropout(x, 0.3, training=True)
    torch.manual_seed(5)
    torch.testing.assert_close(ops.drop_hidden_and_keep(x, 0.3)[0], reference)


CASES = {
    "hiddenkey": (dict(logits_rate=0.3, logits_pattern="column", hidden_rate=0.15, hidden_pattern="element",
                       consistency="kl"), "llama"),
    "dropattention-element": (dict(weights_rate=0.25, weights_pattern="element"), "bert"),
    "dropattention-span": (dict(weights_rate=0.2, weights_pattern="span", span_ratio=0.25), "qwen2"),
    "structured-hidden": (dict(input_rate=0.1, input_pattern="span", hidden_rate=0.3, hidden_pattern="column",
                               output_rate=0.4), "gpt2"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_measured_fraction_matches_the_configured_rate_over_many_steps(case):
    fields, family = CASES[case]
    config = hiddenkey.DropoutConfig(**fields)
    torch.manual_seed(0)
    model = _attached(family, config)
    meter = hiddenkey.measure_drops(model)
    model.train()
    data = batch(batch_size=4, length=16, labels="lm" if family != "bert" else "cls")
    for _ in range(30):
        loss, _, _ = hiddenkey.hiddenkey_loss(model, data)
        loss.backward()
    assert all(isinstance(v, torch.Tensor) for v in meter.dropped.values())  # accumulated, never read per step
    measured = meter.read()
    expected = {p: s.rate for p, s in config.active_specs().items()}
    assert measured.keys() == expected.keys()
    for position, rate in expected.items():
        assert measured[position] == pytest.approx(rate, abs=0.03), (position, measured)
    assert meter.read() == {}  # reset by the read


def test_meter_counts_nothing_in_eval_mode_or_with_drops_disabled_and_can_stop():
    model = _attached("llama", hiddenkey.DropoutConfig.preset("hiddenkey-", rate=0.2))
    meter = hiddenkey.measure_drops(model)
    assert hiddenkey.measure_drops(model) is meter
    data = batch(labels="lm")
    model.eval()
    model(**data)
    model.train()
    with hiddenkey.drops_disabled(model):
        model(**data)
    assert meter.read() == {}
    hiddenkey.stop_measuring(model)
    model(**data)
    assert meter.read() == {}


# ------------------------------------------------------------------------------------------------ Trainer
class _Rows(torch.utils.data.Dataset):
    def __init__(self, n=48, length=12):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(2, VOCAB, (n, length), generator=g)

    def __len__(self):
        return self.ids.shape[0]

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]), "labels": self.ids[i]}


class _Logs(TrainerCallback):
    """What every reporting callback (TensorBoard included) receives."""

    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs or {}))


def test_trainer_logs_the_fraction_dropped_per_position_at_each_logging_step(tmp_path):
    torch.manual_seed(0)
    model = lora(build_model("llama"), "llama")
    config = hiddenkey.DropoutConfig.preset("hiddenkey", rate=0.25)
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=12, per_device_train_batch_size=8, learning_rate=1e-3,
        logging_steps=6, save_strategy="no", report_to=[], use_cpu=True, seed=0, disable_tqdm=True,
    )
    callback = _Logs()
    trainer = hiddenkey.Trainer(
        model=model, args=args, train_dataset=_Rows(), dropout_config=config, callbacks=[callback]
    )
    trainer.train()
    logged = [entry for entry in callback.logs if "loss" in entry]
    assert len(logged) == 2
    for entry in logged:
        assert entry["drop_fraction_logits"] == pytest.approx(0.25, abs=0.04)
        assert entry["drop_fraction_hidden"] == pytest.approx(0.25, abs=0.02)
        assert not any(key.startswith("drop_fraction_") and key not in (
            "drop_fraction_logits", "drop_fraction_hidden") for key in entry)
