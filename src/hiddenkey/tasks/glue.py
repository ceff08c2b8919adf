"""GLUE tasks and custom text-classification data, following run_glue.py conventions.

Three sources are accepted, all returning a :class:`datasets.DatasetDict` whose columns are the
task's text columns plus ``label`` (``int64`` for classification, ``float32`` for regression):

1. the Hugging Face hub (``nyu-mll/glue``) when no local files are given;
2. a folder in the original GLUE TSV layout (``train.tsv``, ``dev.tsv``, ``test.tsv``), parsed
   per task the way the HF ``glue`` dataset script does it (``QUOTE_NONE``, CoLA train/dev
   without header, RTE/QNLI string labels ``entailment``->0 / ``not_entailment``->1, unlabelled
   test files get label -1);
3. CSV / TSV / JSON / JSONL files with named columns (``train_file`` etc.), with the same column
   inference as run_glue.py for custom data (:func:`load_text_classification`).

All problems are reported as one-line :class:`DataError` messages before any training starts.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from datasets import Dataset, DatasetDict, Features, Value

from ..suggest import did_you_mean
from .base import DataError, TaskSpec, check_file, csv_rows, read_text

GLUE_HUB_PATH = "nyu-mll/glue"
NO_LABEL = -1  # label used by HF's glue dataset for the unlabelled test splits
MAX_CLASSIFICATION_VALUES = 20  # more distinct numeric labels than this -> regression (auto mode)

LabelType = Literal["auto", "classification", "regression"]


def _glue(name: str, text_columns: tuple[str, ...], label_names: tuple[str, ...] | None) -> TaskSpec:
    if label_names is None:
        return TaskSpec(name, "regression", text_columns, 1, (), "glue", GLUE_HUB_PATH, name)
    return TaskSpec(name, "classification", text_columns, len(label_names), label_names, "glue", GLUE_HUB_PATH, name)


#: The GLUE tasks used in the paper; label names (and so label ids) as in HF's ``nyu-mll/glue``.
GLUE_TASKS: dict[str, TaskSpec] = {
    "rte": _glue("rte", ("sentence1", "sentence2"), ("entailment", "not_entailment")),
    "mrpc": _glue("mrpc", ("sentence1", "sentence2"), ("not_equivalent", "equivalent")),
    "stsb": _glue("stsb", ("sentence1", "sentence2"), None),
    "sst2": _glue("sst2", ("sentence",), ("negative", "positive")),
    "cola": _glue("cola", ("sentence",), ("unacceptable", "acceptable")),
    "qnli": _glue("qnli", ("question", "sentence"), ("entailment", "not_entailment")),
}

#: Valid label range of the regression tasks.
REGRESSION_RANGES: dict[str, tuple[float, float]] = {"stsb": (0.0, 5.0)}


@dataclass(frozen=True)
class _TsvLayout:
    """Where a task's fields live in the original GLUE TSV files.

    ``text_fields`` maps each canonical column to the header names accepted for it (the GLUE
    name first). ``headerless`` gives (text positions, label position) for files without a
    header (CoLA train/dev only).
    """

    text_fields: dict[str, tuple[str, ...]]
    label_fields: tuple[str, ...]
    headerless: tuple[tuple[int, ...], int] | None = None
    folder_names: tuple[str, ...] = field(default=())


_TSV_LAYOUTS: dict[str, _TsvLayout] = {
    "sst2": _TsvLayout({"sentence": ("sentence",)}, ("label",), folder_names=("SST-2", "sst2")),
    "cola": _TsvLayout({"sentence": ("sentence",)}, ("label",), headerless=((3,), 1), folder_names=("CoLA", "cola")),
    "mrpc": _TsvLayout(
        {"sentence1": ("#1 String", "sentence1"), "sentence2": ("#2 String", "sentence2")},
        ("Quality", "label"),
        folder_names=("MRPC", "mrpc"),
    ),
    "rte": _TsvLayout(
        {"sentence1": ("sentence1",), "sentence2": ("sentence2",)}, ("label",), folder_names=("RTE", "rte")
    ),
    "qnli": _TsvLayout(
        {"question": ("question",), "sentence": ("sentence",)}, ("label",), folder_names=("QNLI", "qnli")
    ),
    "stsb": _TsvLayout(
        {"sentence1": ("sentence1",), "sentence2": ("sentence2",)}, ("score", "label"), folder_names=("STS-B", "stsb")
    ),
}

_SPLIT_FILES = {"train": ("train.tsv",), "validation": ("dev.tsv", "validation.tsv"), "test": ("test.tsv",)}


# --------------------------------------------------------------------------------------------
# public API


def normalize_task_name(task_name: str) -> str:
    """``"SST-2"`` -> ``"sst2"``, ``"STS_B"`` -> ``"stsb"``; raise DataError for unknown tasks."""
    key = task_name.strip().lower().replace("-", "").replace("_", "")
    if key not in GLUE_TASKS:
        raise DataError(f"unknown GLUE task {task_name!r}; known tasks: {', '.join(sorted(GLUE_TASKS))}")
    return key


def glue_task(task_name: str) -> TaskSpec:
    """The :class:`TaskSpec` of a GLUE task (name normalised as in :func:`normalize_task_name`)."""
    return GLUE_TASKS[normalize_task_name(task_name)]


def load_glue(
    task_name: str | None,
    data_dir: str | Path | None = None,
    train_file: str | Path | None = None,
    validation_file: str | Path | None = None,
    test_file: str | Path | None = None,
    cache_dir: str | Path | None = None,
    text_column: str | None = None,
    text_pair_column: str | None = None,
    label_column: str = "label",
) -> DatasetDict:
    """Load a GLUE task (or custom data when ``task_name`` is None) as a DatasetDict.

    Splits are ``train``/``validation``/``test`` (those available); columns are the task's
    ``text_columns`` plus ``label``. With ``data_dir`` the original GLUE TSV layout is read
    (``data_dir`` may also be the GLUE root holding ``SST-2/``, ``CoLA/``, ...); with
    ``*_file`` arguments CSV/TSV/JSON/JSONL files with named columns are read; with neither
    the task is downloaded from the hub.
    """
    files = {"train": train_file, "validation": validation_file, "test": test_file}
    given = {split: Path(p) for split, p in files.items() if p is not None}
    if task_name is None:
        if data_dir is not None or train_file is None:
            raise DataError("custom data (no task_name) needs --train_file (and optionally validation/test files)")
        data, _ = load_text_classification(
            train_file, validation_file, test_file, text_column, text_pair_column, label_column
        )
        return data
    spec = glue_task(task_name)
    if data_dir is not None and given:
        raise DataError("give either data_dir (GLUE TSV folder) or train/validation/test files, not both")
    if data_dir is not None:
        return _load_glue_tsv_dir(spec, Path(data_dir))
    if given:
        return DatasetDict(
            {
                split: _load_task_file(spec, path, split, text_column, text_pair_column, label_column)
                for split, path in given.items()
            }
        )
    return _load_glue_hub(spec, cache_dir)


def load_text_classification(
    train_file: str | Path,
    validation_file: str | Path | None = None,
    test_file: str | Path | None = None,
    text_column: str | None = None,
    text_pair_column: str | None = None,
    label_column: str = "label",
    label_type: LabelType = "auto",
    split_seed: int = 42,
    validation_fraction: float = 0.1,
    name: str = "custom",
) -> tuple[DatasetDict, TaskSpec]:
    """Load custom single-sentence or sentence-pair classification/regression data.

    Text columns are taken from ``text_column``/``text_pair_column`` or inferred as in
    run_glue.py (``sentence1``+``sentence2`` if present, else the first two non-label columns,
    else the only one) and renamed to ``sentence`` or ``sentence1``/``sentence2``.
    With ``label_type="auto"``, numeric labels with a non-integer value or more than
    20 distinct values mean regression, anything else classification. Classification labels
    are mapped to ids in sorted order of the distinct training labels (as run_glue.py does);
    their string forms become ``TaskSpec.label_names``. Without a validation file, a
    ``validation_fraction`` of train chosen with ``numpy.random.default_rng(split_seed)``
    becomes the validation split.
    """
    if label_type not in ("auto", "classification", "regression"):
        raise DataError(f"label_type must be auto, classification or regression, got {label_type!r}")
    train_cols, train_rows = read_table(train_file)
    src_cols = _infer_text_columns(train_cols, text_column, text_pair_column, label_column)
    out_cols = ("sentence",) if len(src_cols) == 1 else ("sentence1", "sentence2")
    _require_columns(train_file, train_cols, [*src_cols, label_column])
    tables: dict[str, list[dict[str, Any]]] = {"train": train_rows}
    for split, path in (("validation", validation_file), ("test", test_file)):
        if path is not None:
            cols, rows = read_table(path)
            _require_columns(path, cols, [*src_cols, label_column] if split == "validation" else list(src_cols))
            tables[split] = rows
    paths = {"train": train_file, "validation": validation_file, "test": test_file}

    raw_labels = {split: [row.get(label_column) for row in rows] for split, rows in tables.items()}
    for split, values in raw_labels.items():
        _check_finite_labels(values, paths[split])
    kind = _infer_label_kind(raw_labels["train"], label_type, paths["train"])
    if kind == "regression":
        label_names: tuple[str, ...] = ()
        labels = {s: _regression_labels(v, paths[s], s, None) for s, v in raw_labels.items()}
        spec = TaskSpec(name, "regression", out_cols, 1, (), "glue")
    else:
        keys = [_class_key(v, paths["train"]) for v in raw_labels["train"]]
        if any(isinstance(k, str) for k in keys):  # string labels: compare everything as strings
            keys = [str(v).strip() for v in raw_labels["train"]]
        classes = sorted(set(keys))
        if len(classes) < 2:
            raise DataError(f"{paths['train']}: classification needs at least 2 distinct labels, found {classes}")
        label_names = tuple(str(c) for c in classes)
        to_id = {c: i for i, c in enumerate(classes)}
        labels = {s: _map_class_labels(v, to_id, paths[s], s) for s, v in raw_labels.items()}
        spec = TaskSpec(name, "classification", out_cols, len(classes), label_names, "glue")

    columns = {
        split: {
            out: _text_values(rows, src, paths[split]) for out, src in zip(out_cols, src_cols, strict=True)
        }
        for split, rows in tables.items()
    }
    for split in columns:
        columns[split]["label"] = labels[split]
    if "validation" not in columns:
        columns["train"], columns["validation"] = _split_off(columns["train"], validation_fraction, split_seed)
    ordered = {s: columns[s] for s in ("train", "validation", "test") if s in columns}
    return DatasetDict({s: _to_dataset(c, spec) for s, c in ordered.items()}), spec


def load_split_file(
    spec: TaskSpec,
    path: str | Path,
    split: str = "test",
    text_column: str | None = None,
    text_pair_column: str | None = None,
    label_column: str = "label",
) -> Dataset:
    """One file of a task whose spec is already known (e.g. recorded with a trained run), as a Dataset.

    Built-in tasks read it as :func:`load_glue` does; a custom task maps labels through the spec's
    ``label_names`` (the training labels), so no training file is needed.
    """
    path = Path(path)
    if spec.name != "custom":
        return _load_task_file(spec, path, split, text_column, text_pair_column, label_column)
    columns, rows = read_table(path)
    src_cols = _infer_text_columns(columns, text_column, text_pair_column, label_column)
    if len(src_cols) != len(spec.text_columns):
        raise DataError(
            f"{path}: {len(src_cols)} text column(s) {list(src_cols)}, but the task has {len(spec.text_columns)} "
            f"{list(spec.text_columns)}"
        )
    _require_columns(path, columns, [*src_cols, label_column] if split != "test" else list(src_cols))
    data = {out: _text_values(rows, src, path) for out, src in zip(spec.text_columns, src_cols, strict=True)}
    raw = [row.get(label_column) for row in rows]
    _check_finite_labels(raw, path)
    if spec.is_regression:
        data["label"] = _regression_labels(raw, path, split, None)
    else:
        data["label"] = _labels_by_name(raw, spec, path, split)
    return _to_dataset(data, spec)


def _labels_by_name(raw: list[Any], spec: TaskSpec, path: str | Path, split: str) -> list[int]:
    """Class ids of custom labels via the training label names (their text, or their number)."""
    to_id = spec.label2id
    out = []
    for i, value in enumerate(raw):
        if _is_missing(value):
            if split != "test":
                raise DataError(f"{path}: row {i + 1} has no label")
            out.append(NO_LABEL)
            continue
        key = str(value).strip()
        if key not in to_id and _as_number(value) is not None:
            key = str(_class_key(value, path))
        if key not in to_id:
            if split == "test" and _as_int(value) == NO_LABEL:
                out.append(NO_LABEL)
                continue
            raise DataError(f"{path}: row {i + 1}: label {value!r} not among the training labels {list(spec.label_names)}")
        out.append(to_id[key])
    return out


def read_table(path: str | Path) -> tuple[list[str], list[dict[str, Any]]]:
    """Read a CSV (``,``), TSV (tab, no quoting), JSON or JSON-lines file into (columns, rows).

    Columns come in header order (CSV/TSV) or first-appearance order (JSON). JSON files may be
    a list of records, ``{"data": [records]}``, a dict of column lists, or JSON lines.
    """
    p = check_file(path)
    suffix = p.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return _read_delimited(p, "\t" if suffix == ".tsv" else ",")
    if suffix in (".json", ".jsonl"):
        return _read_json(p)
    raise DataError(f"unsupported file type {p.suffix!r} for {p}; use .csv, .tsv, .json or .jsonl")


# --------------------------------------------------------------------------------------------
# GLUE TSV layout


def _load_glue_tsv_dir(spec: TaskSpec, data_dir: Path) -> DatasetDict:
    folder = _find_task_folder(spec, data_dir)
    splits: dict[str, Dataset] = {}
    for split, names in _SPLIT_FILES.items():
        path = next((folder / n for n in names if (folder / n).exists()), None)
        if path is None:
            if split == "test":
                continue
            raise DataError(f"GLUE {spec.name}: {names[0]} not found in {folder}")
        splits[split] = _to_dataset(_parse_glue_tsv(spec, path, split), spec)
    return DatasetDict(splits)


def _find_task_folder(spec: TaskSpec, data_dir: Path) -> Path:
    if not data_dir.is_dir():
        raise DataError(f"GLUE data_dir not found or not a directory: {data_dir}")
    if (data_dir / "train.tsv").exists():
        return data_dir
    for name in _TSV_LAYOUTS[spec.name].folder_names:
        if (data_dir / name / "train.tsv").exists():
            return data_dir / name
    raise DataError(f"GLUE {spec.name}: train.tsv not found in {data_dir} (nor in a task subfolder)")


def _parse_glue_tsv(spec: TaskSpec, path: Path, split: str) -> dict[str, list[Any]]:
    """Parse one GLUE TSV file into column lists (text columns + label)."""
    rows = _read_tsv_rows(check_file(path, f"GLUE {spec.name} {split} file"))
    layout = _TSV_LAYOUTS[spec.name]
    first = rows[0]
    headerless = layout.headerless is not None and not any(
        name in first for names in layout.text_fields.values() for name in names
    )
    if headerless:
        assert layout.headerless is not None
        text_pos, label_pos = layout.headerless
        positions = dict(zip(spec.text_columns, text_pos, strict=True))
        label_at: int | None = label_pos
        body, first_line = rows, 1
    else:
        header = [h.strip() for h in first]
        positions = {col: _header_index(header, names, col, path) for col, names in layout.text_fields.items()}
        label_at = next((header.index(n) for n in layout.label_fields if n in header), None)
        body, first_line = rows[1:], 2
        if label_at is None and split != "test":
            raise DataError(
                f"{path}: missing label column (one of {list(layout.label_fields)}); available columns: {header}"
            )
    if not body:
        raise DataError(f"{path}: no data rows")
    needed = max([*positions.values(), label_at if label_at is not None else 0])
    out: dict[str, list[Any]] = {col: [] for col in spec.text_columns}
    raw_labels: list[Any] = []
    for line, row in enumerate(body, start=first_line):
        if len(row) <= needed:
            raise DataError(f"{path}:{line}: expected at least {needed + 1} tab-separated fields, got {len(row)}")
        for col, pos in positions.items():
            out[col].append(row[pos])
        raw_labels.append(row[label_at] if label_at is not None else None)
    out["label"] = _task_labels(spec, raw_labels, path, split)
    return out


def _read_tsv_rows(path: Path) -> list[list[str]]:
    rows = [row for _, row in csv_rows(read_text(path), path, delimiter="\t")]
    if not rows:
        raise DataError(f"data file is empty: {path}")
    return rows


def _header_index(header: list[str], names: Sequence[str], col: str, path: Path) -> int:
    for name in names:
        if name in header:
            return header.index(name)
    raise DataError(f"{path}: missing column {names[0]!r} (for {col}); available columns: {header}")


# --------------------------------------------------------------------------------------------
# named-column files for a known task


def _load_task_file(
    spec: TaskSpec,
    path: Path,
    split: str,
    text_column: str | None,
    text_pair_column: str | None,
    label_column: str,
) -> Dataset:
    if path.suffix.lower() == ".tsv" and text_column is None and label_column == "label":
        return _to_dataset(_parse_glue_tsv(spec, path, split), spec)
    columns, rows = read_table(path)
    overrides = [c for c in (text_column, text_pair_column) if c is not None]
    if overrides and len(overrides) != len(spec.text_columns):
        raise DataError(
            f"task {spec.name} has {len(spec.text_columns)} text column(s) {list(spec.text_columns)}, "
            f"got overrides {overrides}"
        )
    src_cols = tuple(overrides) if overrides else spec.text_columns
    needed = [*src_cols, label_column] if split != "test" else list(src_cols)
    _require_columns(path, columns, needed)
    data = {out: _text_values(rows, src, path) for out, src in zip(spec.text_columns, src_cols, strict=True)}
    data["label"] = _task_labels(spec, [row.get(label_column) for row in rows], path, split)
    return _to_dataset(data, spec)


def _task_labels(spec: TaskSpec, raw: list[Any], path: str | Path, split: str) -> list[Any]:
    """Convert raw label values of a known task, enforcing the task's label range."""
    _check_finite_labels(raw, path)
    if spec.is_regression:
        return _regression_labels(raw, path, split, REGRESSION_RANGES.get(spec.name))
    to_id = spec.label2id
    labels: list[int] = []
    for i, value in enumerate(raw):
        if _is_missing(value):
            if split != "test":
                raise DataError(f"{path}: row {i + 1} has no label")
            labels.append(NO_LABEL)
            continue
        if isinstance(value, str) and value.strip() in to_id:
            labels.append(to_id[value.strip()])
            continue
        label = _as_int(value)
        if label is None:
            raise DataError(
                f"{path}: row {i + 1}: label {value!r} is neither an integer nor one of {list(spec.label_names)}"
            )
        if not (0 <= label < spec.num_labels or (label == NO_LABEL and split == "test")):  # type: ignore[operator]
            raise DataError(
                f"{path}: row {i + 1}: label {label} out of range for {spec.name} "
                f"({spec.num_labels} classes: 0..{spec.num_labels - 1})"  # type: ignore[operator]
            )
        labels.append(label)
    return labels


# --------------------------------------------------------------------------------------------
# hub


def _load_glue_hub(spec: TaskSpec, cache_dir: str | Path | None) -> DatasetDict:
    """Download the task from the hub (``nyu-mll/glue``) and keep text columns + label."""
    from datasets import load_dataset

    try:
        raw = load_dataset(spec.hub_path, spec.hub_config, cache_dir=str(cache_dir) if cache_dir else None)
    except Exception as exc:  # noqa: BLE001 - re-raised as a one-line DataError
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise DataError(
            f"could not load {spec.hub_path}/{spec.hub_config} from the Hugging Face hub "
            f"({type(exc).__name__}: {first_line}); pass data_dir or train_file to use local files"
        ) from exc
    label_type = Value("float32") if spec.is_regression else Value("int64")
    out = {}
    for split in ("train", "validation", "test"):
        if split in raw:
            ds = raw[split].select_columns([*spec.text_columns, "label"])
            out[split] = ds.cast_column("label", label_type)
    return DatasetDict(out)


# --------------------------------------------------------------------------------------------
# shared helpers


def _read_delimited(p: Path, delimiter: str) -> tuple[list[str], list[dict[str, Any]]]:
    records = csv_rows(read_text(p), p, delimiter)
    first = next(records, None)
    if first is None:
        raise DataError(f"data file is empty: {p}")
    header = [h.strip() for h in first[1]]
    _check_header(p, header)
    rows = []
    for line, fields in records:
        if len(fields) != len(header):
            hint = "; quote text fields that contain the delimiter" if len(fields) > len(header) else ""
            raise DataError(f"{p}:{line}: {len(fields)} field(s), but the header has {len(header)} columns {header}{hint}")
        rows.append(dict(zip(header, fields)))
    if not rows:
        raise DataError(f"{p}: header only, no data rows")
    return header, rows


def _check_header(p: Path, header: list[str]) -> None:
    blank = [i + 1 for i, h in enumerate(header) if not h]
    if blank:
        raise DataError(f"{p}: header column {blank[0]} has no name; every column needs a unique name")
    repeated = sorted({h for h in header if header.count(h) > 1})
    if repeated:
        raise DataError(
            f"{p}: column {repeated[0]!r} appears {header.count(repeated[0])} times in the header; "
            "column names must be unique"
        )


def _no_duplicate_keys(p: Path, where: str):
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        repeated = sorted({k for k in keys if keys.count(k) > 1})
        if repeated:
            raise DataError(f"{p}{where}: key {repeated[0]!r} appears twice in one object; keys must be unique")
        return dict(pairs)

    return hook


def _read_json(p: Path) -> tuple[list[str], list[dict[str, Any]]]:
    text = read_text(p)
    try:
        obj: Any = json.loads(text, object_pairs_hook=_no_duplicate_keys(p, ""))
    except json.JSONDecodeError:
        obj = None
        records = _parse_json_lines(p, text)
    else:
        records = _json_records(obj, p)
    if not records:
        raise DataError(f"{p}: no records")
    columns: dict[str, None] = {}
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise DataError(f"{p}: record {i + 1} is a {type(rec).__name__}, expected an object with named columns")
        columns.update(dict.fromkeys(rec))
    return list(columns), records


def _parse_json_lines(p: Path, text: str) -> list[Any]:
    records = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line, object_pairs_hook=_no_duplicate_keys(p, f":{line_no}")))
        except json.JSONDecodeError as exc:
            raise DataError(f"{p}:{line_no}: invalid JSON ({exc.msg})") from exc
    return records


def _json_records(obj: Any, p: Path) -> list[Any]:
    if isinstance(obj, list):
        return obj
    if isinstance(obj, dict) and isinstance(obj.get("data"), list):
        return obj["data"]
    if isinstance(obj, dict) and obj and all(isinstance(v, list) for v in obj.values()):
        lengths = {len(v) for v in obj.values()}
        if len(lengths) != 1:
            raise DataError(f"{p}: columns have different lengths {sorted(lengths)}")
        n = lengths.pop()
        return [{k: v[i] for k, v in obj.items()} for i in range(n)]
    if isinstance(obj, dict):
        return [obj]  # a single JSON-lines record
    raise DataError(f"{p}: expected a list of records, {{'data': [...]}} or JSON lines")


def _require_columns(path: str | Path, available: Sequence[str], needed: Sequence[str]) -> None:
    missing = [c for c in needed if c not in available]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {missing}; available columns: {list(available)}"
            + did_you_mean(missing[0], available)
        )


def _infer_text_columns(
    columns: Sequence[str], text_column: str | None, text_pair_column: str | None, label_column: str
) -> tuple[str, ...]:
    """Text columns as given, or inferred like run_glue.py from the non-label columns."""
    if text_column is not None:
        return (text_column,) if text_pair_column is None else (text_column, text_pair_column)
    if text_pair_column is not None:
        raise DataError("text_pair_column given without text_column")
    non_label = [c for c in columns if c != label_column]
    if not non_label:
        raise DataError(f"no text column besides the label column {label_column!r}; columns: {list(columns)}")
    if "sentence1" in non_label and "sentence2" in non_label:
        return ("sentence1", "sentence2")
    return tuple(non_label[:2])


def _text_values(rows: list[dict[str, Any]], column: str, path: str | Path | None) -> list[str]:
    values = []
    for i, row in enumerate(rows):
        value = row.get(column)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            raise DataError(f"{path}: row {i + 1} has no value for text column {column!r}")
        values.append(value if isinstance(value, str) else str(value))
    return values


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip() == ""


def _is_non_finite(value: Any) -> bool:
    """True for NaN / infinity, as a float or as text (``nan``, ``-inf``, ``Infinity``, ...)."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, str):
        try:
            return not math.isfinite(float(value.strip()))
        except ValueError:
            return False
    return False


def _check_finite_labels(raw: list[Any], path: str | Path | None) -> None:
    bad = [i for i, v in enumerate(raw) if v is not None and _is_non_finite(v)]
    if bad:
        raise DataError(
            f"{path}: row {bad[0] + 1}: label {raw[bad[0]]!r} is not a finite number ({len(bad)} such row(s)); "
            "a label must be a class name, an integer class or a finite number"
        )


def _as_number(value: Any) -> float | int | None:
    """The numeric value of a label (int when integral-looking), or None if not numeric."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        s = value.strip()
        try:
            return int(s)
        except ValueError:
            pass
        try:
            f = float(s)
        except ValueError:
            return None
        return None if math.isnan(f) or math.isinf(f) else f
    return None


def _as_int(value: Any) -> int | None:
    number = _as_number(value)
    if number is None or float(number) != int(number):
        return None
    return int(number)


def _infer_label_kind(raw: list[Any], label_type: LabelType, path: str | Path) -> str:
    _check_finite_labels(raw, path)
    missing = [i + 1 for i, v in enumerate(raw) if _is_missing(v)]
    if missing:
        rows = ", ".join(map(str, missing[:5])) + (", ..." if len(missing) > 5 else "")
        raise DataError(f"{path}: {len(missing)} row(s) have no label (row {rows}); every training row needs one")
    present = raw
    if label_type != "auto":
        return label_type
    numbers = [_as_number(v) for v in present]
    if any(n is None for n in numbers):
        return "classification"
    non_integer = any(float(n) != int(n) for n in numbers)  # type: ignore[arg-type]
    return "regression" if non_integer or len(set(numbers)) > MAX_CLASSIFICATION_VALUES else "classification"


def _regression_labels(
    raw: list[Any], path: str | Path | None, split: str, value_range: tuple[float, float] | None
) -> list[float]:
    labels = []
    for i, value in enumerate(raw):
        if _is_missing(value):
            if split != "test":
                raise DataError(f"{path}: row {i + 1} has no label")
            labels.append(float(NO_LABEL))
            continue
        number = _as_number(value)
        if number is None:
            raise DataError(f"{path}: row {i + 1}: regression label {value!r} is not a number")
        number = float(number)
        if value_range is not None and not (value_range[0] <= number <= value_range[1]):
            if not (split == "test" and number == NO_LABEL):
                raise DataError(
                    f"{path}: row {i + 1}: label {number} out of range [{value_range[0]}, {value_range[1]}]"
                )
        labels.append(number)
    return labels


def _class_key(value: Any, path: str | Path | None) -> Any:
    """Sortable key of a classification label: its integer value, or its stripped string."""
    if _is_missing(value):
        raise DataError(f"{path}: a row has no label")
    number = _as_int(value)
    if number is not None:
        return number
    if _as_number(value) is not None:
        return float(_as_number(value))  # type: ignore[arg-type]
    return str(value).strip()


def _map_class_labels(raw: list[Any], to_id: dict[Any, int], path: str | Path | None, split: str) -> list[int]:
    """Map custom labels to ids; numeric and string keys must not be mixed when sorting."""
    out = []
    keys_are_str = any(isinstance(k, str) for k in to_id)
    for i, value in enumerate(raw):
        if _is_missing(value):
            if split != "test":
                raise DataError(f"{path}: row {i + 1} has no label")
            out.append(NO_LABEL)
            continue
        if split == "test" and _as_int(value) == NO_LABEL and NO_LABEL not in to_id:
            out.append(NO_LABEL)  # unlabelled test rows, as in GLUE
            continue
        key = str(value).strip() if keys_are_str else _class_key(value, path)
        if key not in to_id:
            raise DataError(
                f"{path}: row {i + 1}: label {value!r} not among the training labels {[str(k) for k in to_id]}"
            )
        out.append(to_id[key])
    return out


def _split_off(
    columns: dict[str, list[Any]], fraction: float, seed: int
) -> tuple[dict[str, list[Any]], dict[str, list[Any]]]:
    """Split a seeded random ``fraction`` of rows off as validation (row order kept in each part)."""
    n = len(columns["label"])
    if not 0.0 < fraction < 1.0:
        raise DataError(f"validation_fraction must be in (0, 1), got {fraction}")
    n_val = max(1, round(fraction * n))
    if n - n_val < 1:
        raise DataError(f"too few training rows ({n}) to split off a validation set; pass a validation file")
    perm = np.random.default_rng(seed).permutation(n)
    val_idx, train_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    pick = lambda idx: {k: [v[i] for i in idx] for k, v in columns.items()}  # noqa: E731
    return pick(train_idx), pick(val_idx)


def _to_dataset(columns: dict[str, list[Any]], spec: TaskSpec) -> Dataset:
    features = {col: Value("string") for col in spec.text_columns}
    features["label"] = Value("float32") if spec.is_regression else Value("int64")
    return Dataset.from_dict({k: columns[k] for k in features}, features=Features(features))
