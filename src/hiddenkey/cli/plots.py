"""Figures: a run's training history, and the plots of a sweep report."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def curves(log_history: list[dict[str, Any]], metric_key: str) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(step, training loss) and (step, validation metric) pairs from ``Trainer.state.log_history``."""
    loss = [(e["step"], e["loss"]) for e in log_history if "loss" in e and "step" in e]
    metric = [(e["step"], e[metric_key]) for e in log_history if metric_key in e and "step" in e]
    return loss, metric


def plot_training_curves(log_history: list[dict[str, Any]], metric_key: str, path: Path, title: str = "") -> Path:
    plt = _pyplot()
    loss, metric = curves(log_history, metric_key)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    if loss:
        left.plot(*zip(*loss), marker=".", color="tab:blue")
    left.set(xlabel="step", ylabel="training loss", title="training loss")
    if metric:
        right.plot(*zip(*metric), marker="o", color="tab:green")
    right.set(xlabel="step", ylabel=metric_key.removeprefix("eval_"), title=f"validation {metric_key.removeprefix('eval_')}")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


# ------------------------------------------------------------------------------------------- reports
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    """Write ``fig`` through a temporary file unique to this writer, then rename it into place."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png", dpi=110, bbox_inches="tight")
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a figure is for reading
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        _pyplot().close(fig)
    return path


def plot_metric_against(
    series: dict[str, dict[float, list[float]]],
    path: Path,
    xlabel: str,
    ylabel: str,
    title: str,
    reference: tuple[str, list[float]] | None = None,
    log_x: bool = False,
) -> Path:
    """One line per series: the median over seeds at each x, with the inter-quartile range as error bars.

    ``reference`` (a label and its values) is drawn as a horizontal median line with its IQR band,
    e.g. the baseline in a drop-rate plot (the paper's Fig. 4) or a rank plot (Fig. 5).
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    if reference is not None and reference[1]:
        q1, med, q3 = np.percentile(reference[1], [25, 50, 75])
        ax.axhline(med, color="black", linestyle="--", linewidth=1, label=f"{reference[0]} (median)")
        ax.axhspan(q1, q3, color="black", alpha=0.08)
    for label, points in series.items():
        xs = sorted(points)
        q1, med, q3 = (np.array([np.percentile(points[x], q) for x in xs]) for q in (25, 50, 75))
        ax.errorbar(xs, med, yerr=[med - q1, q3 - med], marker="o", capsize=3, label=label)
    if log_x:
        ax.set_xscale("log")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_mean_curves(curves: dict[str, list[dict[str, list[list[float]]]]], path: Path, metric_label: str, title: str) -> Path:
    """Training loss and validation metric over steps, averaged over seeds, with a min-max band (Fig. 6)."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for label, runs in curves.items():
        for ax, key in ((left, "loss"), (right, "metric")):
            steps, mean, low, high = _aligned([run.get(key, []) for run in runs])
            if steps.size:
                line = ax.plot(steps, mean, label=f"{label} (n={len(runs)})")[0]
                ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.15)
    left.set(xlabel="step", ylabel="training loss", title="training loss")
    right.set(xlabel="step", ylabel=metric_label, title=f"validation {metric_label}")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    right.legend(fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)


def _aligned(runs: list[list[list[float]]]):
    """Mean, min and max over runs at the steps every run logged."""
    tables = [dict((int(s), v) for s, v in run) for run in runs if run]
    if not tables:
        return np.array([]), np.array([]), np.array([]), np.array([])
    steps = sorted(set.intersection(*(set(t) for t in tables)))
    values = np.array([[t[s] for s in steps] for t in tables])
    return np.array(steps), values.mean(0), values.min(0), values.max(0)
