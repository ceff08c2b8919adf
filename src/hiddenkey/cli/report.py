"""``hiddenkey report DIR [--output FILE.md]``: tables and plots of a stored study; nothing is retrained.

    hiddenkey report sweeps/study                          # DIR/study.db -> DIR/report.md + PNGs beside it
    hiddenkey report docs/results/encoder/study.db --output docs/results/encoder/report.md
    hiddenkey report --storage postgresql://... --study_name NAME --output report.md

Per task, one row per configuration (the grid values without the seed): the primary metric as median ±
std over seeds (the paper's NLU tables) and mean ± std (its NLG tables), the number of seeds, the mean
paired difference to the baseline row with a paired t-test and a Wilcoxon signed-rank test over the
seeds both rows ran (scipy), and the best row marked. The metric is the test split's where it was
recorded, else the validation split's. Runs that selected their best validation checkpoint
(``load_best_model_at_end``) get a second table with the end-of-training result.

A row's baseline is the configuration with ``method: baseline`` that agrees with it on every argument
that is not a dropout setting (``lora_r``, ``max_train_samples``, the model, ...). Plots are drawn only
for the axes the study varied: metric against drop rate per position and pattern (the paper's Fig. 4),
against LoRA rank (Fig. 5), and training loss and validation metric over steps averaged over seeds (Fig. 6).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import POSITION_NAMES, POSITIONS, DropoutConfig
from .errors import CLIError

REPORT_FILE = "report.md"
SEED = "seed"
DROPOUT_KEYS = {f.name for f in dataclasses.fields(DropoutConfig)} | {"rate"}
MAX_CURVES = 6
_MISSING = object()


@dataclass
class Record:
    """One completed trial."""

    number: int
    config: dict[str, Any]
    task: str
    primary: str
    value: float | None  # the saved model on the report's split
    final: float | None  # end of training, where a best checkpoint was selected
    curves: dict[str, Any]
    dropout: dict[str, Any]
    lora_r: int | None
    argv: list[str]
    threads: int | None

    @property
    def seed(self) -> Any:
        return self.config.get(SEED)


@dataclass
class Row:
    """One configuration: its records over seeds."""

    config: dict[str, Any]
    records: list[Record] = field(default_factory=list)
    baseline: Row | None = None

    @property
    def label(self) -> str:
        return " ".join(f"{k}={_short(v)}" for k, v in self.config.items()) or "(shared settings)"

    @property
    def is_baseline(self) -> bool:
        return (self.records[0].dropout.get("method") or self.config.get("method")) == "baseline"

    def values(self, which: str) -> dict[Any, float]:
        return {r.seed: getattr(r, which) for r in self.records if getattr(r, which) is not None}


def _short(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


# ------------------------------------------------------------------------------------------- loading
def open_source(source: str | None, storage: str | None):
    from .studies import STUDY_FILE, open_storage

    if storage:
        return open_storage(storage), None
    if source is None:
        raise CLIError("give a sweep folder, a study .db file, or --storage URL")
    path = Path(source)
    db = path / STUDY_FILE if path.is_dir() else path
    if not db.is_file():
        raise CLIError(f"no study found: {db} does not exist")
    return open_storage(f"sqlite:///{db.resolve()}"), path if path.is_dir() else path.parent


def load_records(ref, split: str) -> list[Record]:
    import optuna

    shared = _shared_arguments(ref)
    records = []
    for trial in ref.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        attrs = trial.user_attrs
        primary = attrs.get("primary_metric")
        config = dict(attrs.get("config") or trial.params)
        config.setdefault(SEED, shared.get(SEED))
        final = attrs.get("final", {})
        records.append(
            Record(
                number=trial.number,
                config=config,
                task=attrs.get("task") or "?",
                primary=primary,
                value=_pick(attrs, split, primary),
                final=_pick(final, split, primary) if final else None,
                curves=attrs.get("curves", {}),
                dropout=attrs.get("dropout", {}),
                lora_r=attrs.get("lora_r"),
                argv=list(attrs.get("argv", [])),
                threads=attrs.get("threads"),
            )
        )
    return records


def _pick(metrics: dict[str, Any], split: str, primary: str | None) -> float | None:
    for name in (split, "validation"):
        value = metrics.get(name, {}).get(primary)
        if value is not None:
            return float(value)
    return None


def _shared_arguments(ref) -> dict[str, Any]:
    for key in ("sweep", "tune"):
        if key in ref.study.user_attrs:
            return dict(ref.study.user_attrs[key].get("train", {}))
    return {}


def group_rows(records: list[Record], shared: dict[str, Any]) -> dict[str, list[Row]]:
    """Rows per task, in the order configurations first appear; each row linked to its baseline."""
    tasks: dict[str, dict[str, Row]] = {}
    for record in sorted(records, key=lambda r: r.number):
        config = {k: v for k, v in record.config.items() if k != SEED}
        key = json.dumps(config, sort_keys=True, default=str)
        tasks.setdefault(record.task, {}).setdefault(key, Row(config)).records.append(record)
    out = {}
    for task, rows in tasks.items():
        ordered = list(rows.values())
        baselines = [r for r in ordered if r.is_baseline]
        for row in ordered:
            matches = [b for b in baselines if b is not row and _same_setting(row.config, b.config, shared)]
            row.baseline = matches[0] if len(matches) == 1 else None
        out[task] = ordered
    return out


def _same_setting(a: dict[str, Any], b: dict[str, Any], shared: dict[str, Any]) -> bool:
    """Equal on every argument that is not a dropout setting (a missing one takes the shared value)."""
    keys = (set(a) | set(b)) - DROPOUT_KEYS - {SEED}
    return all(a.get(k, shared.get(k, _MISSING)) == b.get(k, shared.get(k, _MISSING)) for k in keys)


# ------------------------------------------------------------------------------------------- statistics
@dataclass
class Summary:
    n: int
    median: float
    mean: float
    std: float
    delta: float | None = None
    pairs: int = 0
    p_t: float | None = None
    p_wilcoxon: float | None = None


def summarise(values: dict[Any, float], baseline: dict[Any, float] | None) -> Summary | None:
    if not values:
        return None
    data = np.array(list(values.values()), dtype=float)
    out = Summary(
        n=len(data), median=float(np.median(data)), mean=float(data.mean()), std=float(data.std(ddof=1)) if len(data) > 1 else 0.0
    )
    if baseline:
        seeds = [s for s in values if s in baseline]
        out.pairs = len(seeds)
        if seeds:
            mine = np.array([values[s] for s in seeds])
            theirs = np.array([baseline[s] for s in seeds])
            out.delta = float((mine - theirs).mean())
            out.p_t, out.p_wilcoxon = paired_tests(mine, theirs)
    return out


def paired_tests(x: np.ndarray, y: np.ndarray) -> tuple[float | None, float | None]:
    """Two-sided p-values of the paired t-test and the Wilcoxon signed-rank test (None where undefined)."""
    from scipy import stats

    diffs = x - y
    if len(diffs) < 2 or np.allclose(diffs, 0):
        return None, None
    p_t = float(stats.ttest_rel(x, y).pvalue) if np.std(diffs) > 0 else None
    p_w = float(stats.wilcoxon(x, y).pvalue)
    return (None if p_t is None or math.isnan(p_t) else p_t), (None if math.isnan(p_w) else p_w)


# ------------------------------------------------------------------------------------------- markdown
def _num(value: float | None, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _p(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}"


def metric_table(rows: list[Row], which: str) -> list[str]:
    summaries = [(row, summarise(row.values(which), row.baseline.values(which) if row.baseline else None)) for row in rows]
    summaries = [(row, s) for row, s in summaries if s is not None]
    if not summaries:
        return []
    best = max(summaries, key=lambda item: (item[1].median, item[1].mean))[0]
    lines = [
        "| configuration | seeds | median ± std | mean ± std | Δ vs baseline (paired mean) | p (paired t) | p (Wilcoxon) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row, s in summaries:
        label = f"**{row.label}** ★" if row is best else row.label
        median = f"**{s.median:.4f}**" if row is best else f"{s.median:.4f}"
        delta = "(baseline)" if row.is_baseline else (f"{s.delta:+.4f} (n={s.pairs})" if s.delta is not None else "—")
        spread = f" ± {s.std:.4f}" if s.n > 1 else ""  # one seed has no spread to show
        lines.append(
            f"| {label} | {s.n} | {median}{spread} | {s.mean:.4f}{spread} | {delta} | {_p(s.p_t)} | {_p(s.p_wilcoxon)} |"
        )
    return lines


def unfinished_runs(ref) -> list[tuple[dict[str, Any], str]]:
    """Configurations whose run ended in an error and gave no result (a divergence, a crash), with the
    error: every seed that ran is part of the record. A trial without an error of its own (a killed
    worker, reclaimed by the sweep) is not a run that failed, and a configuration that completed or
    waits to be retried has no missing result."""
    trials = ref.study.get_trials(deepcopy=False)
    settled = {t.user_attrs.get("config_key") for t in trials if t.state.name in ("COMPLETE", "WAITING", "RUNNING")}
    failed: dict[str, tuple[dict[str, Any], str]] = {}
    for t in trials:
        key = t.user_attrs.get("config_key")
        if t.state.name == "FAIL" and "failure" in t.user_attrs and key not in settled:
            failed[key] = (t.user_attrs.get("config", {}), str(t.user_attrs["failure"]))
    return list(failed.values())


def render(name: str, rows_by_task: dict[str, list[Row]], split: str, figures: dict[str, list[Path]], out_dir: Path, counts: dict[str, int], shared: dict[str, Any], unfinished: list[tuple[dict[str, Any], str]] = ()) -> str:
    lines = [f"## Study `{name}`", ""]
    state = ", ".join(f"{v} {k.lower()}" for k, v in sorted(counts.items()))
    lines += [f"Trials: {state}. Every completed trial is a row entry below; a failure that was retried to "
              "completion (a killed worker) is not a result. Runs that failed and never completed are listed "
              "under *Runs without a result*.", ""]
    if unfinished:
        lines += ["### Runs without a result", "", "| configuration | failure |", "|---|---|"]
        for config, failure in unfinished:
            label = " ".join(f"{k}={v}" for k, v in config.items())
            lines.append(f"| {label} | {' '.join(failure.split())[:400].replace('|', '/')} |")
        lines.append("")
    if shared:
        lines += ["Shared arguments: " + ", ".join(f"`{k}={_short(v)}`" for k, v in shared.items()), ""]
    for task, rows in rows_by_task.items():
        primary = rows[0].records[0].primary
        lines += [f"### Task `{task}`: {split} {primary}", ""]
        has_final = any(r.final is not None for row in rows for r in row.records)
        title = "at the best validation checkpoint" if has_final else "of the trained model"
        lines += [f"{split.capitalize()} {primary} {title}. ★ marks the best median.", ""]
        lines += metric_table(rows, "value") + [""]
        if has_final:
            lines += [f"{split.capitalize()} {primary} at the end of training (no checkpoint selection):", ""]
            lines += metric_table(rows, "final") + [""]
        for figure in figures.get(task, []):
            lines += [f"![{figure.stem}]({_relative(figure, out_dir)})", ""]
        lines += ["Commands (one seed shown; every seed ran the same command with its own `--seed`):", "", "```"]
        for row in rows:
            lines.append(command_line(row.records[0]))
        lines += ["```", ""]
    return "\n".join(lines)


def command_line(record: Record) -> str:
    prefix = f"OMP_NUM_THREADS={record.threads} " if record.threads else ""
    return prefix + shlex.join(["hiddenkey", "train", *record.argv, "--output_dir", f"runs/trial-{record.number}"])


def _relative(path: Path, start: Path) -> str:
    import os

    return os.path.relpath(path, start).replace(os.sep, "/")


# ------------------------------------------------------------------------------------------- figures
def dropout_signature(dropout: dict[str, Any], with_rates: bool) -> str:
    """A readable name of a dropout setting: its positions and patterns, and the consistency loss."""
    parts = []
    for position in POSITIONS:
        rate = dropout.get(f"{position}_rate", 0) or 0
        if rate > 0:
            text = f"{POSITION_NAMES[position]} {dropout.get(f'{position}_pattern')}"
            parts.append(f"{text} p={rate:g}" if with_rates else text)
    if dropout.get("consistency", "none") != "none" and dropout.get("consistency_weight", 0) > 0:
        parts.append(f"{dropout['consistency'].upper()} w={dropout['consistency_weight']:g}")
    return " + ".join(parts) or "no dropout"


def _setting_key(row: Row, shared: dict[str, Any]) -> str:
    keys = sorted(set(row.config) - DROPOUT_KEYS)
    return json.dumps({k: row.config.get(k, shared.get(k)) for k in keys}, default=str)


def draw_figures(task: str, rows: list[Row], stem: Path, shared: dict[str, Any]) -> list[Path]:
    from .plots import plot_mean_curves, plot_metric_against

    figures = []
    primary = rows[0].records[0].primary

    rate_rows = [r for r in rows if not r.is_baseline and len(_active_rates(r)) == 1]
    several_settings = len({_setting_key(r, shared) for r in rate_rows}) > 1
    rate_series: dict[str, dict[float, list[float]]] = {}
    for row in rate_rows:
        name = dropout_signature(row.records[0].dropout, with_rates=False)
        if several_settings:
            name += f" [{_setting_key(row, shared)}]"
        rate_series.setdefault(name, {}).setdefault(_active_rates(row).pop(), []).extend(row.values("value").values())
    rate_series = {k: v for k, v in rate_series.items() if len(v) > 1}
    if rate_series:
        baselines = {id(r.baseline): r.baseline for r in rate_rows if r.baseline is not None}
        reference = ("baseline", list(next(iter(baselines.values())).values("value").values())) if len(baselines) == 1 else None
        figures.append(plot_metric_against(
            rate_series, Path(f"{stem}-{task}-rate.png"), "drop rate", primary,
            f"{task}: {primary} against drop rate (median, IQR)", reference,
        ))

    rank_series: dict[str, dict[float, list[float]]] = {}
    for row in rows:
        if row.records[0].lora_r is None:
            continue
        name = dropout_signature(row.records[0].dropout, with_rates=True)
        rank_series.setdefault(name, {}).setdefault(row.records[0].lora_r, []).extend(row.values("value").values())
    rank_series = {k: v for k, v in rank_series.items() if len(v) > 1}
    if rank_series:
        figures.append(plot_metric_against(
            rank_series, Path(f"{stem}-{task}-rank.png"), "LoRA rank r", primary,
            f"{task}: {primary} against LoRA rank (median, IQR)", log_x=True,
        ))

    chosen = curve_rows(rows, shared)
    curves = {row.label: [r.curves for r in row.records if r.curves.get("loss")] for row in chosen}
    curves = {k: v for k, v in curves.items() if v}
    if curves:
        key = next(iter(curves.values()))[0].get("metric_key", f"eval_{primary}")
        figures.append(plot_mean_curves(
            curves, Path(f"{stem}-{task}-curves.png"), key.removeprefix("eval_"),
            f"{task}: mean over seeds, band = min..max",
        ))
    return figures


def _active_rates(row: Row) -> set[float]:
    return {row.records[0].dropout.get(f"{p}_rate", 0) or 0 for p in POSITIONS} - {0}


def curve_rows(rows: list[Row], shared: dict[str, Any]) -> list[Row]:
    """Fig. 6's selection: baseline, HiddenKey⁻ and HiddenKey of one setting; else all rows (at most
    six); else the baseline and the best rows by median."""
    for base in (r for r in rows if r.is_baseline):
        peers = [r for r in rows if _setting_key(r, shared) == _setting_key(base, shared)]
        named = [r for r in peers if r.config.get("method") in ("baseline", "hiddenkey-", "hiddenkey") and len(r.config) <= 2]
        if len(named) >= 2:
            return named
    if len(rows) <= MAX_CURVES:
        return rows
    ranked = sorted(rows, key=lambda r: -float(np.median(list(r.values("value").values()) or [-math.inf])))
    base = [r for r in rows if r.is_baseline][:1]
    return base + [r for r in ranked if r not in base][: MAX_CURVES - len(base)]


# ------------------------------------------------------------------------------------------- command
def write_report(storage, study_names: list[str], output: Path, split: str) -> Path:
    from .studies import counts, load_study

    output.parent.mkdir(parents=True, exist_ok=True)
    stem = output.with_suffix("")
    sections = ["# hiddenkey report", "", "Generated by `hiddenkey report` from the stored study; nothing was retrained.", ""]
    for name in study_names:
        ref = load_study(storage, name)
        shared = _shared_arguments(ref)
        records = load_records(ref, split)
        rows = group_rows(records, shared)
        prefix = stem if len(study_names) == 1 else Path(f"{stem}-{name}")
        figures = {task: draw_figures(task, task_rows, prefix, shared) for task, task_rows in rows.items()}
        sections.append(render(name, rows, split, figures, output.parent, counts(ref), shared, unfinished_runs(ref)))
    tmp = output.with_name(f".{output.name}.tmp")
    tmp.write_text("\n".join(sections).rstrip() + "\n", encoding="utf-8")
    tmp.replace(output)
    return output


def cmd_report(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="hiddenkey report", description="Markdown tables and PNG plots of a stored sweep or tune study.")
    parser.add_argument("source", nargs="?", help="A sweep/tune folder (holding study.db) or a study .db file.")
    parser.add_argument("--output", default=None, help=f"Markdown file (default: SOURCE/{REPORT_FILE}); plots are written beside it.")
    parser.add_argument("--storage", default=None, help="Optuna storage URL instead of a folder.")
    parser.add_argument("--study_name", "--study-name", default=None, help="Report only this study (default: every study in the storage).")
    parser.add_argument("--split", choices=("test", "validation"), default="test", help="Split whose metric the tables show (default: test where recorded).")
    ns = parser.parse_args(argv)
    from .studies import study_names

    storage, folder = open_source(ns.source, ns.storage)
    names = [ns.study_name] if ns.study_name else study_names(storage)
    if not names:
        raise CLIError("the storage holds no study")
    if ns.output is None and folder is None:
        raise CLIError("--output is needed with --storage")
    output = Path(ns.output) if ns.output else folder / REPORT_FILE
    path = write_report(storage, names, output, ns.split)
    print(f"report: {path}")
    return 0
