"""DropoutConfig: presets, validation, JSON/YAML round trips, CLI parsing."""

import pytest
from transformers import HfArgumentParser

import hiddenkey
from hiddenkey import ConfigError, DropoutConfig


def test_hiddenkey_preset_is_the_papers_recipe():
    cfg = DropoutConfig.preset("hiddenkey", rate=0.1, kl_weight=2.0)
    assert (cfg.logits_rate, cfg.logits_pattern) == (0.1, "column")
    assert (cfg.hidden_rate, cfg.hidden_pattern) == (0.1, "element")
    assert (cfg.consistency, cfg.consistency_weight, cfg.backprop) == ("kl", 2.0, "one")
    assert cfg.weights_rate == cfg.input_rate == cfg.output_rate == 0.0
    minus = DropoutConfig.preset("HiddenKey⁻", rate=0.1)
    assert minus.method == "hiddenkey-" and minus.consistency == "none" and minus.logits_rate == 0.1


def test_single_method_presets_take_a_pattern():
    assert DropoutConfig.preset("dropkey", rate=0.2, pattern="span").active_specs()["logits"].pattern == "span"
    assert DropoutConfig.preset("hiddencut", pattern="column").hidden_pattern == "column"
    da = DropoutConfig.preset("dropattention", weights_stop_gradient=False)
    assert da.weights_rate == 0.1 and not da.weights_stop_gradient
    assert DropoutConfig.preset("baseline").active_specs() == {}
    assert DropoutConfig.preset("baseline").disable_model_dropout


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"logits_rate": 1.0}, "logits_rate must be in"),
        ({"hidden_rate": -0.1}, "hidden_rate must be in"),
        ({"hidden_pattern": "row"}, "hidden_pattern must be one of"),
        ({"consistency": "mse"}, "consistency must be one of"),
        ({"layers": "first"}, "layers must be one of"),
        ({"span_ratio": 0.0}, "span_ratio"),
        ({"consistency_weight": -1.0}, "consistency_weight"),
        ({"consistency_chunk_size": -1}, "consistency_chunk_size must be an integer >= 0"),
        ({"consistency_chunk_size": 2.5}, "consistency_chunk_size must be an integer >= 0"),
    ],
)
def test_invalid_values_are_refused(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        DropoutConfig(**kwargs)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown method 'dropconnect'"):
        DropoutConfig.preset("dropconnect")


def test_layer_selection():
    cfg = DropoutConfig(layers="auto")
    assert cfg.layer_indices(5, decoder_only=True) == [2, 3, 4]
    assert cfg.layer_indices(4, decoder_only=False) == [0, 1, 2, 3]
    assert DropoutConfig(layers="latter_half").layer_indices(6, False) == [3, 4, 5]
    assert DropoutConfig(layers="0, 2,-1").layer_indices(6, True) == [0, 2, 5]
    with pytest.raises(ConfigError, match="out of range"):
        DropoutConfig(layers="7").layer_indices(6, True)


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_round_trip(tmp_path, suffix):
    cfg = DropoutConfig.preset("hiddenkey", rate=0.05, kl_weight=0.5, layers="1,3", span_ratio=0.2)
    path = cfg.save(tmp_path / f"cfg{suffix}")
    assert DropoutConfig.load(path) == cfg
    assert DropoutConfig.load(cfg.save(tmp_path)) == cfg
    assert (tmp_path / hiddenkey.CONFIG_NAME).is_file()
    assert not list(tmp_path.glob("*.tmp"))


def test_unknown_fields_in_a_file_are_refused(tmp_path):
    (tmp_path / "c.json").write_text('{"logits_rate": 0.1, "dropkey_rate": 0.2}')
    with pytest.raises(ConfigError, match="dropkey_rate"):
        DropoutConfig.load(tmp_path / "c.json")


def test_the_dataclass_is_its_own_cli():
    parser = HfArgumentParser(DropoutConfig)
    (cfg,) = parser.parse_args_into_dataclasses(["--logits_rate", "0.2", "--hidden-pattern", "span", "--consistency", "kl"])
    assert cfg.logits_rate == 0.2 and cfg.hidden_pattern == "span" and cfg.consistency == "kl"
    assert "DropKey rate on attention logits" in parser.format_help()


def test_describe():
    assert DropoutConfig.preset("hiddenkey", rate=0.1).describe() == (
        "DropKey(column, p=0.1) + HiddenCut(element, p=0.1) + KL(w=1, backprop=one)"
    )
