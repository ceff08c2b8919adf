"""`hiddenkey train` / `hiddenkey eval` end to end on a tiny BERT, and every bad-input error."""

import json
import shutil

import pytest

from hiddenkey.cli.arguments import parse_train_args
from hiddenkey.cli.main import main
from .cli_helpers import review_rows as _reviews
from .cli_helpers import save_tiny_bert
from .cli_helpers import write_csv as _write_csv


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    return {
        "train": _write_csv(folder / "train.csv", _reviews(48, 0)),
        "validation": _write_csv(folder / "dev.csv", _reviews(12, 1)),
        "test": _write_csv(folder / "test.csv", _reviews(12, 2)),
        "folder": folder,
    }


def _train_args(tiny_bert, data, out, *extra):
    return [
        "train", "--model", tiny_bert, "--task_name", "custom",
        "--train_file", data["train"], "--validation_file", data["validation"], "--test_file", data["test"],
        "--output_dir", str(out), "--max_steps", "4", "--eval_steps", "2", "--logging_steps", "2",
        "--save_steps", "2", "--per_device_train_batch_size", "8", "--learning_rate", "5e-3",
        "--report_to", "none", "--disable_tqdm", "true", *extra,
    ]


def test_end_of_training_metrics_are_those_of_the_last_step_beside_the_best_checkpoint(tiny_bert, data, tmp_path):
    best, last = tmp_path / "best", tmp_path / "last"
    common = ("--method", "hiddenkey-", "--rate", "0.2", "--untrained_baseline", "false", "--plot", "false", "--seed", "3")
    assert main(_train_args(tiny_bert, data, best, *common)) == 0
    assert main(_train_args(tiny_bert, data, last, *common, "--load_best_model_at_end", "false")) == 0
    with_best, without = (json.loads((run / "metrics.json").read_text()) for run in (best, last))
    assert with_best["final"]["test"]["accuracy"] == pytest.approx(without["test"]["accuracy"])
    assert with_best["final"]["validation"]["accuracy"] == pytest.approx(without["validation"]["accuracy"])
    evaluations = [e for e in json.loads((best / "trainer_state.json").read_text())["log_history"] if "eval_accuracy" in e]
    assert with_best["best_step"] in {e["step"] for e in evaluations}
    assert with_best["validation"]["accuracy"] == pytest.approx(max(e["eval_accuracy"] for e in evaluations))
    assert "final" not in without
    assert "untrained" not in with_best and "untrained" not in without  # --untrained_baseline false is honoured


def test_train_writes_a_complete_run_folder_and_eval_reproduces_it(tiny_bert, data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_train_args(tiny_bert, data, out, "--method", "hiddenkey", "--rate", "0.2")) == 0
    for name in ("adapter_model.safetensors", "adapter_config.json", "hiddenkey_config.json", "args.json",
                 "metrics.json", "training_curves.png", "tokenizer.json"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "hiddenkey" and metrics["primary_metric"] == "accuracy"
    for block in (metrics["validation"], metrics["test"], metrics["untrained"]["validation"], metrics["untrained"]["test"]):
        assert 0.0 <= block["accuracy"] <= 1.0
    assert metrics["majority_class"]["test"]["accuracy"] == pytest.approx(0.5)
    saved_cfg = json.loads((out / "hiddenkey_config.json").read_text())
    assert saved_cfg["logits_rate"] == 0.2 and saved_cfg["consistency"] == "kl"
    args = json.loads((out / "args.json").read_text())
    assert args["model"]["model_name_or_path"] == tiny_bert and args["training"]["max_steps"] == 4
    capsys.readouterr()

    assert main(["eval", str(out)]) == 0
    printed = capsys.readouterr().out
    reproduced = json.loads(printed[: printed.rindex("}") + 1])
    assert reproduced["split"] == "test"
    assert reproduced["accuracy"] == pytest.approx(metrics["test"]["accuracy"])


def test_resume_continues_from_the_last_checkpoint(tiny_bert, data, tmp_path):
    out = tmp_path / "run"
    assert main(_train_args(tiny_bert, data, out, "--method", "hiddenkey-", "--plot", "false")) == 0
    args = _train_args(tiny_bert, data, out, "--method", "hiddenkey-", "--resume", "--plot", "false")
    args[args.index("--max_steps") + 1] = "6"
    assert main(args) == 0
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 6
    steps = [e["step"] for e in state["log_history"] if "loss" in e]
    assert steps == [2, 4, 6]


def test_glue_tsv_layout(tiny_bert, tmp_path):
    glue = tmp_path / "RTE"
    shutil.copytree("tests/fixtures/glue/rte", glue)
    out = tmp_path / "run"
    args = [
        "train", "--model", tiny_bert, "--task_name", "rte", "--data_dir", str(glue), "--output_dir", str(out),
        "--max_steps", "1", "--report_to", "none", "--plot", "false", "--disable_tqdm", "true",
        "--method", "dropkey", "--logits_pattern", "span",
    ]
    assert main(args) == 0
    assert json.loads((out / "hiddenkey_config.json").read_text())["logits_pattern"] == "span"
    assert "test" not in json.loads((out / "metrics.json").read_text())  # GLUE test labels are hidden


@pytest.mark.parametrize(
    "change,message",
    [
        ({"--task_name": "mnli-x"}, "unknown task 'mnli-x'"),
        ({"--method": "dropconnect"}, "unknown method 'dropconnect'"),
        ({"--rate": "1.5"}, "must be in [0, 1)"),
        ({"--logits_rate": "-0.1", "--method": "custom"}, "logits_rate must be in [0, 1)"),
        ({"--train_file": "/nonexistent/train.csv"}, "not found"),
        ({"--model": "/nonexistent/model"}, "cannot load model"),
        ({"--layers": "first"}, "layers must be one of"),
    ],
)
def test_bad_input_is_one_line_error_and_no_run_folder(tiny_bert, data, tmp_path, capsys, change, message):
    out = tmp_path / "run"
    args = _train_args(tiny_bert, data, out)
    for flag, value in change.items():
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hiddenkey: error:") and message in err and "\n" not in err
    assert not out.exists()


def test_data_errors(tiny_bert, data, tmp_path, capsys):
    folder = tmp_path
    cases = {
        "empty": (folder / "empty.csv", ""),
        "no label column": (folder / "nolabel.csv", "sentence,score\nfine,1\n"),
    }
    for name, (path, text) in cases.items():
        path.write_text(text)
        args = _train_args(tiny_bert, data, tmp_path / "run")
        args[args.index("--train_file") + 1] = str(path)
        assert main(args) == 2, name
        assert "hiddenkey: error:" in capsys.readouterr().err
    bad_labels = _write_csv(folder / "rte_bad.csv", [("a", "b", 2)], header=("sentence1", "sentence2", "label"))
    args = _train_args(tiny_bert, data, tmp_path / "run", "--task_name", "rte")
    args[args.index("--train_file") + 1] = bad_labels
    assert main(args) == 2
    assert "label" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_existing_run_folder_needs_overwrite(tiny_bert, data, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    assert main(_train_args(tiny_bert, data, out)) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "precious"
    assert main(_train_args(tiny_bert, data, out, "--overwrite", "--plot", "false")) == 0
    assert not (out / "keep.txt").exists() and (out / "metrics.json").is_file()


def test_resume_without_checkpoint_is_an_error(tiny_bert, data, tmp_path, capsys):
    assert main(_train_args(tiny_bert, data, tmp_path / "none", "--resume")) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_parsing_presets_overrides_and_config_files(tmp_path):
    _, data_args, lora_args, cfg, run, training, _ = parse_train_args(
        ["--method", "hiddenkey", "--rate", "0.05", "--hidden-rate", "0.2", "--consistency_weight", "2"]
    )
    assert (cfg.logits_rate, cfg.hidden_rate, cfg.consistency_weight) == (0.05, 0.2, 2.0)
    assert data_args.task_name == "rotten_tomatoes" and data_args.max_train_samples == 3000
    assert lora_args.lora_r == 8 and lora_args.lora_alpha == 16
    config_file = tmp_path / "run.yaml"
    config_file.write_text("method: dropkey\nlogits_pattern: element\nlearning_rate: 0.0004\ntask_name: rte\n")
    _, data_args, _, cfg, _, training, _ = parse_train_args([str(config_file), "--rate", "0.2"])
    assert (cfg.method, cfg.logits_rate, cfg.logits_pattern) == ("dropkey", 0.2, "element")
    assert training.learning_rate == 0.0004 and data_args.task_name == "rte" and data_args.max_train_samples is None
    config_file.write_text("dropkey_rate: 0.1\n")
    with pytest.raises(ValueError, match="dropkey_rate"):
        parse_train_args([str(config_file)])


@pytest.mark.parametrize("task,data_dir", [("e2e", "tests/fixtures/e2e"), ("webnlg", "tests/fixtures/webnlg")])
def test_nlg_train_generates_scores_and_eval_reproduces(tmp_path, capsys, task, data_dir):
    from .nlg_helpers import tiny_causal_lm_folder

    model = tiny_causal_lm_folder(tmp_path / "gpt2", family="gpt2")
    out = tmp_path / "run"
    args = [
        "train", "--model", str(model), "--task_name", task, "--data_dir", data_dir, "--output_dir", str(out),
        "--max_steps", "3", "--eval_steps", "3", "--save_steps", "3", "--logging_steps", "1",
        "--per_device_train_batch_size", "4", "--report_to", "none", "--disable_tqdm", "true",
        "--max_new_tokens", "8", "--num_beams", "2", "--lora_r", "4", "--lora_alpha", "32",
    ]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    expected = {"bleu", "nist", "meteor", "rouge_l", "cider"} if task == "e2e" else {"all_bleu", "all_meteor", "all_ter"}
    assert expected <= set(metrics["test"])
    assert (out / "predictions.jsonl").is_file() and (out / "adapter_model.safetensors").is_file()
    assert json.loads((out / "args.json").read_text())["generation"]["num_beams"] == 2
    assert hiddenkey_layers(out) == "auto"
    capsys.readouterr()
    assert main(["eval", str(out)]) == 0
    printed = capsys.readouterr().out
    reproduced = json.loads(printed[: printed.rindex("}") + 1])
    for key in expected:
        assert reproduced[key] == pytest.approx(metrics["test"][key])


def hiddenkey_layers(run) -> str:
    return json.loads((run / "hiddenkey_config.json").read_text())["layers"]


def test_a_preset_takes_extra_drops_but_the_baseline_does_not():
    from hiddenkey.cli.arguments import parse_train_args

    config = parse_train_args(["--method", "hiddenkey", "--rate", "0.1", "--input_rate", "0.05", "--output_dir", "/tmp/unused"])[3]
    assert (config.logits_rate, config.hidden_rate, config.input_rate, config.consistency) == (0.1, 0.1, 0.05, "kl")
    assert "input" in config.active_specs() and config.logits_pattern == "column"
    with pytest.raises(ValueError, match="--method custom"):
        parse_train_args(["--method", "baseline", "--output_rate", "0.1", "--output_dir", "/tmp/unused"])
