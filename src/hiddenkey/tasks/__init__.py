"""Task specifications and data loaders: GLUE / custom classification, E2E, WebNLG, Rotten Tomatoes."""

from __future__ import annotations

from ..suggest import did_you_mean
from .base import DataError, TaskSpec, check_file, decode_text, read_text
from .glue import (
    GLUE_TASKS,
    REGRESSION_RANGES,
    glue_task,
    load_glue,
    load_split_file,
    load_text_classification,
    normalize_task_name,
    read_table,
)
from .nlg import (
    E2E_TASK,
    WEBNLG_SEEN_CATEGORIES,
    WEBNLG_TASK,
    WEBNLG_UNSEEN_CATEGORIES,
    NLGExample,
    linearize_e2e,
    linearize_triples,
    load_e2e,
    load_nlg_split,
    load_webnlg,
    parse_mr,
    parse_triple,
    read_e2e_file,
    read_webnlg,
    select_webnlg,
    to_training_pairs,
)
from .reviews import ROTTEN_TOMATOES_TASK, load_rotten_tomatoes, rotten_tomatoes_path

#: Every built-in task by name.
TASKS: dict[str, TaskSpec] = {
    **GLUE_TASKS,
    E2E_TASK.name: E2E_TASK,
    WEBNLG_TASK.name: WEBNLG_TASK,
    ROTTEN_TOMATOES_TASK.name: ROTTEN_TOMATOES_TASK,
}


def get_task(name: str) -> TaskSpec:
    """Look up a built-in task (GLUE names are normalised: ``SST-2`` -> ``sst2``)."""
    key = name.strip().lower()
    if key in TASKS:
        return TASKS[key]
    compact = key.replace("-", "").replace("_", "")
    if compact in GLUE_TASKS:
        return GLUE_TASKS[compact]
    raise DataError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}" + did_you_mean(name, TASKS))


__all__ = [
    "E2E_TASK",
    "GLUE_TASKS",
    "REGRESSION_RANGES",
    "ROTTEN_TOMATOES_TASK",
    "TASKS",
    "WEBNLG_SEEN_CATEGORIES",
    "WEBNLG_TASK",
    "WEBNLG_UNSEEN_CATEGORIES",
    "DataError",
    "NLGExample",
    "TaskSpec",
    "check_file",
    "decode_text",
    "get_task",
    "glue_task",
    "linearize_e2e",
    "linearize_triples",
    "load_e2e",
    "load_glue",
    "load_nlg_split",
    "load_rotten_tomatoes",
    "load_split_file",
    "load_text_classification",
    "load_webnlg",
    "normalize_task_name",
    "parse_mr",
    "parse_triple",
    "read_e2e_file",
    "read_table",
    "read_text",
    "read_webnlg",
    "rotten_tomatoes_path",
    "select_webnlg",
    "to_training_pairs",
]
