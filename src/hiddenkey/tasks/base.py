"""Task descriptions shared by the NLU and NLG loaders, and the single data-error type.

A :class:`TaskSpec` says everything the rest of the library needs to know about a task
without loading it: which text columns feed the model, whether the head is a classifier,
a regressor or a language model, how many labels there are, and which metric family
scores it. Every problem with user-supplied data is reported as a :class:`DataError`
carrying a one-line message, raised before any model is built.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

TaskKind = Literal["classification", "regression", "generation"]
MetricFamily = Literal["glue", "e2e", "webnlg"]

_KINDS = ("classification", "regression", "generation")
_METRIC_FAMILIES = ("glue", "e2e", "webnlg")


class DataError(ValueError):
    """Bad or missing input data (missing file, empty file, wrong columns, bad labels, ...)."""


@dataclass(frozen=True)
class TaskSpec:
    """Static description of a finetuning task.

    ``num_labels`` is the size of the classification head: the number of classes for
    classification, 1 for regression and ``None`` for generation. ``label_names[i]`` is the
    human-readable name of label id ``i`` (empty for regression and generation).
    ``hub_path``/``hub_config`` are the ``datasets.load_dataset`` arguments used when no
    local files are given (``None`` for data that only exists locally).
    """

    name: str
    kind: TaskKind
    text_columns: tuple[str, ...]
    num_labels: int | None
    label_names: tuple[str, ...] = ()
    metric_family: MetricFamily = "glue"
    hub_path: str | None = None
    hub_config: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"TaskSpec {self.name!r}: kind must be one of {_KINDS}, got {self.kind!r}")
        if self.metric_family not in _METRIC_FAMILIES:
            raise ValueError(
                f"TaskSpec {self.name!r}: metric_family must be one of {_METRIC_FAMILIES}, got {self.metric_family!r}"
            )
        if not self.text_columns:
            raise ValueError(f"TaskSpec {self.name!r}: text_columns must not be empty")
        if self.kind == "classification":
            if self.num_labels is None or self.num_labels < 2:
                raise ValueError(f"TaskSpec {self.name!r}: classification needs num_labels >= 2")
            if self.label_names and len(self.label_names) != self.num_labels:
                raise ValueError(
                    f"TaskSpec {self.name!r}: {len(self.label_names)} label_names for {self.num_labels} labels"
                )
        elif self.kind == "regression" and self.num_labels != 1:
            raise ValueError(f"TaskSpec {self.name!r}: regression needs num_labels == 1")
        elif self.kind == "generation" and self.num_labels is not None:
            raise ValueError(f"TaskSpec {self.name!r}: generation needs num_labels None")

    @property
    def is_regression(self) -> bool:
        return self.kind == "regression"

    @property
    def is_generation(self) -> bool:
        return self.kind == "generation"

    @property
    def is_pair(self) -> bool:
        """True for sentence-pair NLU tasks (two text columns)."""
        return len(self.text_columns) == 2

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.label_names)}

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.label_names))


def check_file(path: str | Path, what: str = "data file") -> Path:
    """Return ``path`` as a :class:`Path` after checking it is an existing, non-empty file."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{what} not found: {p}")
    if p.is_dir():
        raise DataError(f"{what} is a directory, expected a file: {p}")
    if p.stat().st_size == 0 or not _has_non_whitespace(p):
        raise DataError(f"{what} is empty: {p}")
    return p


def _has_non_whitespace(p: Path, chunk_size: int = 1 << 16) -> bool:
    with p.open("rb") as f:
        while chunk := f.read(chunk_size):
            if chunk.strip(b" \t\r\n\xef\xbb\xbf"):
                return True
    return False


def read_text(path: str | Path, what: str = "data file") -> str:
    """The text of a checked (:func:`check_file`) UTF-8 file; a one-line DataError for anything else."""
    p = check_file(path, what)
    return decode_text(p.read_bytes(), p, what)


def decode_text(data: bytes, p: Path, what: str = "data file") -> str:
    """Decode UTF-8 (a BOM is dropped); UTF-16, binary and other encodings are refused by name and place."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataError(f"{what} {p} is UTF-16 text; save it as UTF-8")
    if b"\x00" in data:
        offset = data.index(b"\x00")
        raise DataError(
            f"{what} {p} is not a text file (a NUL byte at offset {offset}; binary, or UTF-16 without a BOM); "
            "expected UTF-8 text"
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataError(
            f"{what} {p} is not UTF-8 text (byte 0x{data[err.start]:02x} at line {line}); save it as UTF-8"
        ) from None


def csv_rows(text: str, p: Path, delimiter: str = ",") -> Iterator[tuple[int, list[str]]]:
    """``(line, fields)`` of each non-blank CSV/TSV record, ``line`` being where the record starts.

    A malformed quote is a DataError naming the line where its record starts.

    CSV uses ``"`` quoting with ``strict`` parsing (an unbalanced quote would otherwise swallow every
    following line into one field); TSV has no quoting, as in GLUE.
    """
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting, strict=True)
    start = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            raise DataError(
                f"{p}:{start}: malformed CSV ({err}); a quote (\") opened at or after line {start} is never closed "
                "or is followed by text: quote whole fields and double quotes inside them"
            ) from None
        if row:
            yield start, row
        start = reader.line_num + 1
