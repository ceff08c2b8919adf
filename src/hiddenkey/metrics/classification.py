"""GLUE-style classification and regression metrics.

The metric names and conventions follow Hugging Face's ``run_glue.py`` example and the
``glue`` metric of the ``evaluate`` library:

=============================  ===========================================
task                           metrics
=============================  ===========================================
sst2, rte, qnli, mnli*, wnli   ``accuracy``
mrpc, qqp                      ``accuracy``, ``f1`` (binary F1, positive class 1)
stsb                           ``pearson``, ``spearmanr``, ``combined`` (their mean)
cola                           ``matthews_correlation``
other / ``None``               ``accuracy``, ``macro_f1`` (classification);
                               ``pearson``, ``spearmanr``, ``mse`` (regression)
=============================  ===========================================

All values are plain Python floats on a 0..1 scale (correlations in -1..1).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

_ACCURACY_TASKS = frozenset({"sst2", "rte", "qnli", "mnli", "wnli"})
_ACCURACY_F1_TASKS = frozenset({"mrpc", "qqp"})
_REGRESSION_TASKS = frozenset({"stsb"})
_MCC_TASKS = frozenset({"cola"})


def _normalise_task(task_name: str | None) -> str | None:
    """Map spellings such as ``"SST-2"``, ``"sts-b"`` or ``"mnli_mismatched"`` to GLUE ids."""
    if task_name is None:
        return None
    name = task_name.strip().lower().replace("-", "").replace("_", "")
    if name.startswith("mnli"):
        return "mnli"
    if name.startswith("glue"):
        name = name[len("glue") :]
    return name


def _to_numpy(values: Any) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values)


def _as_class_ids(predictions: Any) -> np.ndarray:
    """Turn logits ``(N, C)`` or class ids ``(N,)`` / ``(N, 1)`` into integer class ids."""
    preds = _to_numpy(predictions)
    if preds.ndim == 2 and preds.shape[1] > 1:
        return preds.argmax(axis=-1)
    if preds.ndim == 2:
        preds = preds[:, 0]
    if preds.ndim != 1:
        raise ValueError(f"predictions must have shape (N,) or (N, C), got {preds.shape}")
    if preds.dtype.kind == "f":
        if not np.all(np.isfinite(preds)) or not np.all(preds == np.round(preds)):
            raise ValueError(
                "1-D classification predictions must be integer class ids; "
                "pass logits of shape (N, C) to have them argmaxed"
            )
        preds = preds.astype(np.int64)
    return preds


def _as_scores(predictions: Any) -> np.ndarray:
    """Squeeze regression outputs of shape ``(N,)`` or ``(N, 1)`` to ``(N,)`` floats."""
    preds = _to_numpy(predictions).astype(np.float64)
    if preds.ndim == 2 and preds.shape[1] == 1:
        preds = preds[:, 0]
    if preds.ndim != 1:
        raise ValueError(f"regression predictions must have shape (N,) or (N, 1), got {preds.shape}")
    return preds


def _check_lengths(predictions: np.ndarray, labels: np.ndarray) -> None:
    if labels.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {labels.shape}")
    if len(labels) == 0:
        raise ValueError("cannot compute metrics on empty input")
    if len(predictions) != len(labels):
        raise ValueError(
            f"predictions and labels differ in length: {len(predictions)} != {len(labels)}"
        )


def _correlation(kind: str, predictions: np.ndarray, labels: np.ndarray) -> float:
    """Pearson or Spearman correlation; ``nan`` when either side is constant (undefined)."""
    if len(labels) < 2 or np.ptp(predictions) == 0 or np.ptp(labels) == 0:
        return math.nan
    fn = pearsonr if kind == "pearson" else spearmanr
    return float(fn(predictions, labels)[0])


def _regression_metrics(task: str | None, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    pearson = _correlation("pearson", predictions, labels)
    spearman = _correlation("spearman", predictions, labels)
    if task == "stsb":
        return {"pearson": pearson, "spearmanr": spearman, "combined": (pearson + spearman) / 2}
    return {
        "pearson": pearson,
        "spearmanr": spearman,
        "mse": float(np.mean((predictions - labels) ** 2)),
    }


def _classification_metrics(task: str | None, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    accuracy = float(accuracy_score(labels, predictions))
    if task in _ACCURACY_TASKS:
        return {"accuracy": accuracy}
    if task in _ACCURACY_F1_TASKS:
        f1 = f1_score(labels, predictions, average="binary", pos_label=1, zero_division=0)
        return {"accuracy": accuracy, "f1": float(f1)}
    if task in _MCC_TASKS:
        return {"matthews_correlation": float(matthews_corrcoef(labels, predictions))}
    macro_f1 = f1_score(labels, predictions, average="macro", zero_division=0)
    return {"accuracy": accuracy, "macro_f1": float(macro_f1)}


def _is_regression(task: str | None, is_regression: bool) -> bool:
    return is_regression or task in _REGRESSION_TASKS


def compute_classification_metrics(
    task_name: str | None,
    predictions: Any,
    labels: Any,
    is_regression: bool = False,
) -> dict[str, float]:
    """Compute the GLUE metrics of ``task_name`` (see the module docstring).

    ``predictions`` may be logits of shape ``(N, C)`` (argmaxed), class ids of shape ``(N,)``,
    or, for regression (``is_regression=True`` or ``task_name="stsb"``), scores of shape
    ``(N,)`` / ``(N, 1)``. Numpy arrays, lists and CPU torch tensors are accepted.
    Raises ``ValueError`` on empty input or a length mismatch.
    """
    task = _normalise_task(task_name)
    label_array = _to_numpy(labels)
    if _is_regression(task, is_regression):
        preds = _as_scores(predictions)
        _check_lengths(preds, label_array)
        return _regression_metrics(task, preds, label_array.astype(np.float64))
    preds = _as_class_ids(predictions)
    _check_lengths(preds, label_array)
    return _classification_metrics(task, preds, label_array)


def primary_metric(task_name: str | None, is_regression: bool = False) -> str:
    """Name of the metric to report and select checkpoints on.

    Matches what the paper reports: Matthews correlation for CoLA, Pearson for STS-B,
    accuracy for every other GLUE task (MRPC included), Pearson for other regression tasks.
    """
    task = _normalise_task(task_name)
    if _is_regression(task, is_regression):
        return "pearson"
    if task in _MCC_TASKS:
        return "matthews_correlation"
    return "accuracy"


def majority_class_baseline(
    train_labels: Any,
    eval_labels: Any,
    task_name: str | None,
    is_regression: bool = False,
) -> dict[str, float]:
    """Metrics obtained by always predicting the most frequent training label.

    Ties are broken towards the smallest label. For regression the constant prediction is
    the training mean: correlations are undefined for a constant and returned as ``nan``,
    and ``mse`` is always included.
    """
    train = _to_numpy(train_labels)
    evaluation = _to_numpy(eval_labels)
    if train.size == 0:
        raise ValueError("cannot compute a majority baseline from empty training labels")
    task = _normalise_task(task_name)
    if _is_regression(task, is_regression):
        constant = np.full(len(evaluation), float(np.mean(train.astype(np.float64))))
        metrics = compute_classification_metrics(task_name, constant, evaluation, is_regression=True)
        metrics["mse"] = float(np.mean((constant - evaluation.astype(np.float64)) ** 2))
        return metrics
    values, counts = np.unique(train, return_counts=True)
    constant_ids = np.full(len(evaluation), values[np.argmax(counts)])
    return compute_classification_metrics(task_name, constant_ids, evaluation)
