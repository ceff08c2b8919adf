"""Plots of a run's training history."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any


def curves(log_history: list[dict[str, Any]], metric_key: str) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(step, training loss) and (step, validation metric) pairs from ``Trainer.state.log_history``."""
    loss = [(e["step"], e["loss"]) for e in log_history if "loss" in e and "step" in e]
    metric = [(e["step"], e[metric_key]) for e in log_history if metric_key in e and "step" in e]
    return loss, metric


def plot_training_curves(log_history: list[dict[str, Any]], metric_key: str, path: Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png", dir=path.parent)  # unique per writer
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png", dpi=110)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        plt.close(fig)
    return path
