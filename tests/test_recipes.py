"""Every recipe under recipes/ stays runnable: its grid parses as `hiddenkey train` would parse it, and its
fullest configuration (HiddenKey with the KL) trains for one step with the model swapped for a tiny
config-built model of the same family and the data for the fixtures. Everything else comes from the
recipe as written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers

from hiddenkey.cli.main import main
from hiddenkey.cli.specs import check_argv, expand_grid, normalise_train, read_spec, to_argv, train_argument_names

from .cli_helpers import minilm_tokenizer
from .nlg_helpers import tiny_causal_lm_folder

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
RECIPE_FILES = sorted(RECIPES.glob("*/*.yaml"))
FAMILY_OF_MODEL = {"FacebookAI/roberta-large": "roberta", "openai-community/gpt2-medium": "gpt2", "meta-llama/Llama-2-7b-hf": "llama"}
# What a CPU smoke run cannot or need not keep: mixed precision, long sequences, many evaluations.
SMOKE = {
    "max_steps": 1, "per_device_train_batch_size": 2, "per_device_eval_batch_size": 4, "gradient_accumulation_steps": 1,
    "max_seq_length": 64, "max_eval_samples": 4, "max_predict_samples": 4,
    "bf16": False, "fp16": False, "report_to": "none", "disable_tqdm": True, "warmup_steps": 0,
}


def test_every_recipe_is_found_and_covers_the_paper():
    names = {f"{p.parent.name}/{p.stem}" for p in RECIPE_FILES}
    roberta = {f"roberta-large/{t}" for t in ("rte", "mrpc", "stsb", "sst2", "cola", "qnli")}
    assert roberta | {"gpt2-medium/e2e", "gpt2-medium/webnlg", "llama2-7b/rte", "llama2-7b/mrpc", "llama2-7b/e2e"} == names


def covering_points(points):
    """A few grid points in which every (key, value) pair of the grid appears at least once."""
    seen, chosen = set(), []
    for point in points:
        new = set(point.values) - seen
        if new:
            chosen.append(point)
            seen |= new
    return chosen


def _tiny_model(family: str, folder: Path) -> str:
    if family in ("gpt2", "llama"):
        tiny_causal_lm_folder(folder, family=family)
        if family == "llama":  # rotary positions: the recipes' 512-token inputs need only the config to allow them
            config = json.loads((folder / "config.json").read_text())
            (folder / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 1024}))
        return str(folder)
    tokenizer = minilm_tokenizer()
    torch.manual_seed(0)
    config = transformers.RobertaConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=520, type_vocab_size=2, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    transformers.RobertaModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize("recipe", RECIPE_FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_recipe_runs_one_step_on_a_tiny_model_of_its_family(recipe, tmp_path):
    spec = read_spec(recipe)
    known = train_argument_names()
    train = normalise_train(spec["train"], known)
    points = expand_grid(spec["grid"], known, train)
    assert {p.params["seed"] for p in points} == {1, 2, 3, 4, 5}
    methods = {p.params["method"] for p in points}
    assert methods == {"baseline", "dropkey", "dropattention", "hiddencut", "hiddenkey-", "hiddenkey"}
    assert {p.params.get("rate") for p in points if "rate" in p.params} >= {0.01, 0.02, 0.05, 0.1, 0.15, 0.2}
    assert {p.params.get("consistency_weight") for p in points if p.params["method"] == "hiddenkey"} == {
        0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10
    }
    task = train["task_name"]
    family = FAMILY_OF_MODEL[train["model_name_or_path"]]
    data_dir = FIXTURES / ("glue" if task not in ("e2e", "webnlg") else "") / task
    out = tmp_path / "run"
    # Offline, the hub model and dataset become local ones; transformers refuses mixed precision without a GPU.
    offline = {"model_name_or_path": _tiny_model(family, tmp_path / "model"), "data_dir": str(data_dir), "bf16": False, "fp16": False}
    for point in covering_points(points):  # every value the grid holds is accepted by `hiddenkey train`
        check_argv(to_argv({**train, **point.params, **offline}), f"{recipe.name}: {point.label()}")

    fullest = max((p for p in points if p.params["method"] == "hiddenkey"), key=lambda p: (p.params["consistency_weight"], p.params["rate"]))
    short_outputs = {"max_new_tokens": 6} if task in ("e2e", "webnlg") else {}
    argv = to_argv({**train, **fullest.params, **SMOKE, **short_outputs, **offline, "output_dir": str(out)})
    assert main(["train", *argv]) == 0

    config = json.loads((out / "hiddenkey_config.json").read_text())
    assert config["consistency"] == "kl" and config["consistency_weight"] == 10
    assert config["logits_pattern"] == "column" and config["hidden_pattern"] == "element"
    run_args = json.loads((out / "args.json").read_text())
    assert run_args["lora"]["lora_r"] == train["lora_r"] and run_args["lora"]["lora_alpha"] == train["lora_alpha"]
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 1
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["validation"], metrics


SPECS = sorted([*(RECIPES.parent / "examples").glob("*.yaml"), *(RECIPES.parent / "docs" / "results").glob("**/*.yaml")])


@pytest.mark.parametrize("path", SPECS, ids=lambda p: str(p.relative_to(RECIPES.parent)))
def test_committed_example_and_study_specs_parse(path):
    """The specs the README and the study point at stay valid for `hiddenkey sweep` / `hiddenkey tune`."""
    from hiddenkey.cli.sweep import load_plan
    from hiddenkey.cli.tune import parse_search

    spec = read_spec(path)
    model = spec["train"].get("model_name_or_path") or spec["train"].get("model")
    if model and model.startswith("assets/") and not (RECIPES.parent / model).exists():
        pytest.skip(f"{model} is a local copy of a packaged model (the spec's Setup line makes it)")
    if "grid" in spec:
        assert load_plan(path).points
    else:
        space = parse_search(spec.get("search"))
        train = normalise_train(spec["train"], train_argument_names())
        check_argv(to_argv({**train, "method": space.methods[0], "rate": space.rate[0]}), path.name)
