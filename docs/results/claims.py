"""The paper's claims, tested on the committed study stores: writes docs/results/claims.md.

    python docs/results/claims.py

Reads only the committed ``study.db`` files (nothing is retrained). Every comparison is paired by
seed: two cells are compared on the seeds both completed. A claim is *supported* when the paired mean
difference has the claimed sign and the paired t-test gives p < 0.05, *not significant* when the sign
is right but p >= 0.05, *opposite sign* when the sign is wrong but p >= 0.05, and *contradicted* when
the sign is wrong with p < 0.05. Fewer than 3 paired seeds give *too few seeds*.
"""

from __future__ import annotations

import json
import sqlite3
import statistics
from pathlib import Path

from scipy import stats

HERE = Path(__file__).resolve().parent
ALPHA = 0.05


def load(db: Path, study_like: str = "%") -> dict[str, dict[int, dict]]:
    """``{cell label: {seed: user attrs}}`` of the completed trials of the store's studies named like ``study_like``."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    rows = con.execute(
        "select t.trial_id, a.key, a.value_json from trials t join trial_user_attributes a on a.trial_id = t.trial_id "
        "join studies s on s.study_id = t.study_id where t.state = 'COMPLETE' and s.study_name like ?",
        (study_like,),
    ).fetchall()
    con.close()
    trials: dict[int, dict] = {}
    for trial_id, key, value in rows:
        trials.setdefault(trial_id, {})[key] = json.loads(value)
    cells: dict[str, dict[int, dict]] = {}
    for attrs in trials.values():
        config = dict(attrs["config"])
        seed = config.pop("seed")
        cells.setdefault(label(config), {})[seed] = attrs
    return cells


def label(config: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in config.items())


def test_accuracy(attrs: dict) -> float:
    return attrs["test"]["accuracy"]


def paired(cells, a: str, b: str, metric=test_accuracy) -> tuple[float, float, int]:
    """Mean of ``a - b`` over the shared seeds, the paired t-test's p, and the number of pairs."""
    seeds = sorted(set(cells[a]) & set(cells[b]))
    diffs = [metric(cells[a][s]) - metric(cells[b][s]) for s in seeds]
    if len(diffs) < 2:
        return statistics.fmean(diffs) if diffs else float("nan"), float("nan"), len(diffs)
    if all(d == diffs[0] for d in diffs):
        return diffs[0], float("nan"), len(diffs)
    return statistics.fmean(diffs), stats.ttest_rel([metric(cells[a][s]) for s in seeds], [metric(cells[b][s]) for s in seeds]).pvalue, len(diffs)


def verdict(delta: float, p: float, n: int, sign: int = 1) -> str:
    if n < 3:
        return "too few seeds"
    if delta == 0:
        return "no difference"
    if delta * sign < 0:
        return "contradicted" if p < ALPHA else "opposite sign, not significant"
    return "supported" if p < ALPHA else "not significant"


def row(claim: str, cells, a: str, b: str, sign: int = 1, metric=test_accuracy) -> str:
    delta, p, n = paired(cells, a, b, metric)
    return f"| {claim} | {delta:+.4f} | {p:.3g} | {n} | {verdict(delta, p, n, sign)} |"


HEADER = ["| claim (a vs b) | paired mean a − b | p (paired t) | seeds | verdict |", "|---|---:|---:|---:|---|"]

BASE = "method=baseline"
DROPKEY = "method=dropkey rate=0.1"
DROPATTENTION = "method=dropattention rate=0.1"
HIDDENCUT = "method=hiddencut rate=0.1"
MINUS = "method=hiddenkey- rate=0.1"
FULL = "method=hiddenkey rate=0.1"


def table1(cells) -> list[str]:
    present = lambda *names: all(n in cells for n in names)  # noqa: E731
    out = HEADER[:]
    claims = [
        ("DropKey (column) beats the baseline", DROPKEY, BASE, 1),
        ("HiddenKey⁻ is at least DropKey (column)", MINUS, DROPKEY, 1),
        ("HiddenKey is at least HiddenKey⁻", FULL, MINUS, 1),
        ("HiddenKey beats the baseline", FULL, BASE, 1),
        ("HiddenKey beats DropKey (column), its attention part", FULL, DROPKEY, 1),
        ("HiddenKey beats HiddenCut (element), its FFN part", FULL, HIDDENCUT, 1),
        ("DropKey prefers column to element", DROPKEY, "method=dropkey rate=0.1 logits_pattern=element", 1),
        ("DropKey prefers column to span", DROPKEY, "method=dropkey rate=0.1 logits_pattern=span", 1),
        ("HiddenCut prefers element to column", HIDDENCUT, "method=hiddencut rate=0.1 hidden_pattern=column", 1),
        ("HiddenCut prefers element to span", HIDDENCUT, "method=hiddencut rate=0.1 hidden_pattern=span", 1),
        ("+input cutoff gives no consistent gain (two-sided)", "method=hiddenkey rate=0.1 input_rate=0.1", FULL, 0),
        ("+output dropout gives no consistent gain (two-sided)", "method=hiddenkey rate=0.1 output_rate=0.1", FULL, 0),
        ("JS instead of KL gives about the same (two-sided)", "method=hiddenkey rate=0.1 consistency=js", FULL, 0),
    ]
    for claim, a, b, sign in claims:
        if not present(a, b):
            continue
        if sign == 0:
            delta, p, n = paired(cells, a, b)
            if n < 3:
                holds = "too few seeds"
            else:
                holds = "supported (no significant difference)" if not p < ALPHA else "contradicted (a significant difference)"
            out.append(f"| {claim} | {delta:+.4f} | {p:.3g} | {n} | {holds} |")
        else:
            out.append(row(claim, cells, a, b, sign))
    return out


def curve_peak(cells, cell: str) -> list[str]:
    """Fig. 6: the mean validation curve over seeds; the peak step's value against the last step's, paired."""
    runs = cells[cell]
    steps = [s for s, _ in next(iter(runs.values()))["curves"]["metric"]]
    by_seed = {seed: dict(map(tuple, r["curves"]["metric"])) for seed, r in runs.items()}
    mean_curve = [statistics.fmean(curve[s] for curve in by_seed.values()) for s in steps]
    peak = steps[max(range(len(steps)), key=mean_curve.__getitem__)]
    at_peak = [curve[peak] for curve in by_seed.values()]
    at_end = [curve[steps[-1]] for curve in by_seed.values()]
    drop = statistics.fmean(at_peak) - statistics.fmean(at_end)
    p = stats.ttest_rel(at_peak, at_end).pvalue if len(runs) > 2 and drop != 0 else float("nan")
    curve = ", ".join(f"{s}: {v:.3f}" for s, v in zip(steps, mean_curve))
    if peak == steps[-1]:
        what = "it never falls (not reproduced)"
    elif len(runs) < 3:
        what = "too few seeds to test"
    else:
        what = "a significant fall (supported)" if p < ALPHA else "the fall is within the noise (not significant)"
    return [
        f"Validation accuracy of `{cell}` by step, mean of {len(runs)} seeds: {curve}.",
        "",
        f"The mean curve peaks at step {peak} of {steps[-1]}; per seed, step {peak} is {drop:+.4f} above the last "
        f"step (paired t p = {p:.3g}): {what}. The peak step is chosen on the same runs, which favours the claim.",
    ]


def rank_sweep(cells) -> list[str]:
    ranks = sorted(int(c.split("lora_r=")[1]) for c in cells if "lora_r=" in c)
    name = lambda r: f"method=baseline lora_r={r}"  # noqa: E731
    out = ["| LoRA rank | " + " | ".join(map(str, ranks)) + " |", "|---" * (len(ranks) + 1) + "|"]
    for split in ("validation", "test"):
        means = [statistics.fmean(a[split]["accuracy"] for a in cells[name(r)].values()) for r in ranks]
        out.append(f"| {split} accuracy, mean of 5 seeds | " + " | ".join(f"{m:.4f}" for m in means) + " |")
    means = [statistics.fmean(a["validation"]["accuracy"] for a in cells[name(r)].values()) for r in ranks]
    top = ranks[max(range(len(ranks)), key=means.__getitem__)]
    out.append("")
    if top == ranks[-1]:
        out.append(f"Validation accuracy is highest at the largest rank ({top}): it does not fall as the rank grows (not reproduced).")
    else:
        delta, p, n = paired(cells, name(top), name(ranks[-1]), lambda a: a["validation"]["accuracy"])
        out.append(
            f"Validation accuracy peaks at rank {top}; rank {ranks[-1]} is {-delta:+.4f} against it "
            f"(paired t p = {p:.3g}, {n} seeds): {'falls (supported)' if p < ALPHA else 'no significant fall (not reproduced)'}."
        )
    return out


def rate_sweep(rates_cells, main_cells) -> list[str]:
    """Fig. 4: Δ against the main study's baseline (same regime, seeds 1-5) per rate and the slope per method."""
    methods = ("dropkey", "dropattention", "hiddencut")
    rates = sorted({float(c.split("rate=")[1]) for c in rates_cells})
    out = ["| method (pattern) | " + " | ".join(f"{r:g}" for r in rates) + " | slope per 0.1 of rate (p) |", "|---" * (len(rates) + 2) + "|"]
    slopes = {}
    for method in methods:
        xs, ys, cells = [], [], []
        for r in rates:
            cell = f"method={method} rate={r:g}"
            if cell not in rates_cells:
                cells.append("—")
                continue
            merged = {**main_cells, cell: rates_cells[cell]}
            delta, p, n = paired(merged, cell, BASE)
            cells.append(f"{delta:+.4f}")
            for seed, attrs in rates_cells[cell].items():
                if seed in main_cells[BASE]:
                    xs.append(r)
                    ys.append(test_accuracy(attrs) - test_accuracy(main_cells[BASE][seed]))
        fit = stats.linregress(xs, ys)
        slopes[method] = fit.slope / 10
        pattern = {"dropkey": "column", "dropattention": "element", "hiddencut": "element"}[method]
        out.append(f"| {method} ({pattern}) | " + " | ".join(cells) + f" | {fit.slope / 10:+.4f} ({fit.pvalue:.3g}) |")
    steepest = min(slopes, key=slopes.get)
    out += ["", f"Steepest decline: {steepest} ({slopes[steepest]:+.4f} per 0.1). "
            + ("DropAttention degrades fastest as the rate grows (direction as claimed"
               + ("; its slope is significant)." if steepest == "dropattention" else ").")
               if steepest == "dropattention" else "DropAttention is not the fastest to degrade (not reproduced).")]
    return out


def main() -> None:
    gpu, cpu = HERE / "gpu", HERE / "encoder"
    lines = ["# The paper's claims against the committed studies", "",
             "Generated by `python docs/results/claims.py` from the committed study stores; nothing was retrained. "
             "Test accuracy at the best validation checkpoint unless said otherwise; every comparison is paired by seed. "
             f"Verdicts: *supported* = the claimed sign with paired t p < {ALPHA}; *not significant* = the claimed sign, "
             "p above that; *opposite sign, not significant*; *contradicted* = the opposite sign with p < 0.05; "
             "*too few seeds* = under 3 pairs.", ""]
    main_gpu = load(gpu / "encoder-main" / "study.db")
    lines += ["## MiniLM encoder, 10 seeds, H100 (`gpu/encoder-main`)", "", *table1(main_gpu), ""]
    lines += ["### LoRA overfits as training goes on (Fig. 6)", "", *curve_peak(main_gpu, BASE), ""]
    lines += ["### LoRA overfits as the rank grows (Fig. 5, `gpu/rank`)", "", *rank_sweep(load(gpu / "rank" / "study.db")), ""]
    lines += ["### Rate sweep (Fig. 4, `gpu/rate`): paired Δ test accuracy against the baseline of `gpu/encoder-main` (seeds 1–5)", "",
              *rate_sweep(load(gpu / "rate" / "study.db"), main_gpu), ""]
    decoder = load(gpu / "decoder" / "study.db")
    lines += ["## SmolLM2-135M decoder, 5 seeds, H100 (`gpu/decoder`, Table 5 at small scale)", "", *HEADER]
    for method in ("hiddenkey-", "hiddenkey"):
        for keep in (0, 1):
            cell = f"method={method} rate=0.1 keep_first_keys={keep}"
            lines.append(row(f"{method} (first key {'protected' if keep else 'droppable'}) beats the baseline", decoder, cell, BASE))
        lines.append(row(f"{method}: protecting the first key helps", decoder, f"method={method} rate=0.1 keep_first_keys=1", f"method={method} rate=0.1 keep_first_keys=0"))
    lines.append("")
    tuned = load(cpu / "tune" / "study.db", "%-final-%")
    best = next(c for c in tuned if c != BASE)
    lines += ["## `hiddenkey tune` in the study regime, this machine's CPU (`encoder/tune`)", "",
              f"TPE (12 trials, median pruning) chose `{best}` on validation; against plain LoRA on seeds 1–5:", "",
              *HEADER, row("the tuned setting beats the baseline", tuned, best, BASE), ""]
    cpu_cells = load(cpu / "main" / "study.db")
    seeds = {s for runs in cpu_cells.values() for s in runs}
    lines += [f"## MiniLM encoder on this machine's CPU (`encoder/main`, in progress: seeds {min(seeds)}–{max(seeds)} so far)", "",
              *table1(cpu_cells), "", "### LoRA overfits as training goes on (Fig. 6)", "", *curve_peak(cpu_cells, BASE), ""]
    (HERE / "claims.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
