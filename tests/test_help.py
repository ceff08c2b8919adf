"""``hiddenkey train --help``: hiddenkey's own flags first with every method listed, then LoRA, data and
the most-used training flags; everything else behind ``--help-all``."""

from __future__ import annotations

import re

import pytest

from hiddenkey.cli.arguments import train_parser
from hiddenkey.cli.help import MOST_USED_TRAINING
from hiddenkey.cli.main import main
from hiddenkey.config import PRESET_SUMMARIES, PRESETS


def _run(capsys, *argv: str) -> str:
    assert main(["train", *argv]) == 0
    return capsys.readouterr().out


@pytest.fixture(scope="module")
def parser_flags() -> set[str]:
    return {flag for action in train_parser()._actions for flag in action.option_strings}


def test_every_preset_has_a_one_line_summary():
    assert set(PRESET_SUMMARIES) == set(PRESETS)
    assert all("\n" not in line for line in PRESET_SUMMARIES.values())


def test_help_is_short_ordered_and_lists_the_methods(capsys, parser_flags):
    text = _run(capsys, "--help")
    assert text.startswith("usage: hiddenkey train")
    assert len(text.splitlines()) < 300
    for name, summary in PRESET_SUMMARIES.items():
        assert re.search(rf"^\s+{re.escape(name)}\s+{re.escape(summary)}$", text, re.M), name
    order = ["hiddenkey: method and dropout", "--logits_rate", "LoRA (peft)", "--lora_r", "model and data",
             "--task_name", "training (the most used TrainingArguments)", "--learning_rate", "--help-all"]
    positions = [text.index(marker) for marker in order]
    assert positions == sorted(positions)
    shown = set(re.findall(r"^  (--[a-z0-9_]+)", text, re.M))
    assert shown <= parser_flags  # every flag the short help shows is a real one
    assert {f"--{name}" for name in MOST_USED_TRAINING} <= shown
    assert "--push_to_hub" not in shown and "--fsdp" not in shown
    assert "(default: hiddenkey)" in text and "gloo for several CPU processes" in text


def test_help_all_is_the_full_parser(capsys, parser_flags):
    text = _run(capsys, "--help-all")
    assert text.startswith("usage: hiddenkey train")
    assert {"--push_to_hub", "--fsdp", "--logits_rate", "--lora_r", "--num_beams"} <= parser_flags
    for flag in ("--push_to_hub", "--fsdp", "--logits_rate", "--lora_r", "--num_beams"):
        assert flag in text
    assert len(text.splitlines()) > 2 * len(_run(capsys, "-h").splitlines())
