"""After the search: re-run each method's best and default configurations with new seeds, evaluate them on the
test split, and write what the tune found into the tune folder.

Selection is on the holdout split only (the trials' `spec.metric`, last epoch); the re-runs report the test
split (`val/*`, last epoch) with n = `--seeds` seeds, numbered 1..seeds so none repeats a trial's seed 0.

Files: comparison.{md,csv,json,png} (the best re-runs, one row per method), tuned_vs_default.csv (the test
accuracy of the tuned and the default configuration), expected_max.{csv,png} (Dodge et al.: the expected best
holdout score against the number of trials), best_params.json, and tune.md with all of it.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table
from scipy import stats

from runner import launch, run_folder
from runner.tune import expected_max
from runner.tune.spec import Method, Spec
from runner.tune.study import FINISHED, LOG_FILE, open_study, run_overrides

KINDS = ("best", "default")
TEST_KEY, HOLDOUT_KEY = "final_val_acc1", "final_holdout_acc1"


def best_trial(spec: Spec, method: Method, storage):
    """The method's best finished trial by the holdout metric (a diverged one never beats a finished one)."""
    trials = [t for t in open_study(spec, method, storage).get_trials(deepcopy=False)
              if t.state in FINISHED and t.value is not None]
    pick = max if spec.higher_is_better else min
    return pick(trials, key=lambda t: t.value) if trials else None


def reruns(spec: Spec, storage) -> list[tuple[Method, str, int, list[str], Path]]:
    """(method, kind, seed, overrides, run folder) of every re-run: the best and the default, seeds 1..S."""
    out = []
    for method in spec.methods:
        best = best_trial(spec, method, storage)
        values = {"best": best.user_attrs["values"] if best else None, "default": {}}
        for kind in KINDS:
            if values[kind] is None:
                continue
            for seed in range(1, spec.seeds + 1):
                run_dir = Path(spec.dir) / method.name / kind / f"seed{seed}"
                out.append((method, kind, seed, run_overrides(spec, method, values[kind], seed), run_dir))
    return out


def rerun_all(spec: Spec, storage, slots: list[dict], console: Console) -> None:
    """Run the re-runs not finished yet, in parallel over `slots`."""
    import queue
    from concurrent.futures import ThreadPoolExecutor

    todo = [r for r in reruns(spec, storage) if (run_folder.read_summary(r[4]) or {}).get("status") not in ("finished", "diverged")]
    free: queue.Queue = queue.Queue()
    for slot in slots:
        free.put(slot)

    def one(item):
        method, kind, seed, overrides, run_dir = item
        slot = free.get()
        try:
            status, detail = launch.run(overrides, run_dir, slot, LOG_FILE, env={"WANDB_RUN_GROUP": spec.tune_id})
        finally:
            free.put(slot)
        console.print(f"divrun-tune: re-run {method.name}/{kind}/seed{seed}: {status}"
                      + (f" ({detail})" if detail and status != "finished" else ""), highlight=False)

    with ThreadPoolExecutor(max_workers=len(slots)) as pool:
        list(pool.map(one, todo))


def summary_value(run_dir: Path, key: str) -> float | None:
    summary = run_folder.read_summary(run_dir) or {}
    value = summary.get(key) if summary.get("status") == "finished" else None
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def interval(values: list[float]) -> tuple[float, float, float, float]:
    """(mean, sample std, 95% CI low, high) by Student's t; std and CI are NaN for one value."""
    mean = float(np.mean(values))
    if len(values) < 2:
        return mean, math.nan, math.nan, math.nan
    std = float(np.std(values, ddof=1))
    low, high = stats.t.interval(0.95, len(values) - 1, loc=mean, scale=std / math.sqrt(len(values)))
    return mean, std, float(low), float(high)


def comparison(folders: dict[str, list[Path]], out_dir: Path, metrics: dict[str, str]) -> pd.DataFrame:
    """comparison.{md,csv,json,png}: per method, n, mean, std and 95% CI of each metric over its runs."""
    rows = []
    for method, runs in folders.items():
        row = {"method": method, "runs": len(runs)}
        for name, key in metrics.items():
            values = [v for v in (summary_value(r, key) for r in runs) if v is not None]
            row[f"{name}_n"] = len(values)
            if values:
                row |= dict(zip((f"{name}_mean", f"{name}_std", f"{name}_ci95_low", f"{name}_ci95_high"), interval(values)))
        rows.append(row)
    table = pd.DataFrame(rows)
    table.to_csv(out_dir / "comparison.csv", index=False)
    (out_dir / "comparison.json").write_text(table.to_json(orient="records", indent=2))
    (out_dir / "comparison.md").write_text(markdown_table(table) + "\n")
    plot_comparison(table, folders, metrics, out_dir / "comparison.png")
    return table


def plot_comparison(table: pd.DataFrame, folders: dict[str, list[Path]], metrics: dict[str, str], path: Path) -> None:
    """Each seed's value as a dot and the mean with its 95% CI, per method and metric."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics) + 1, 3.2), squeeze=False)
    for ax, (name, key) in zip(axes[0], metrics.items()):
        for x, (method, runs) in enumerate(folders.items()):
            values = [v for v in (summary_value(r, key) for r in runs) if v is not None]
            ax.plot([x] * len(values), values, "o", alpha=0.5, color="gray")
            row = table[table.method == method].iloc[0]
            if f"{name}_mean" in row and not pd.isna(row[f"{name}_mean"]):
                low, high = row.get(f"{name}_ci95_low"), row.get(f"{name}_ci95_high")
                error = None if pd.isna(low) else [[row[f"{name}_mean"] - low], [high - row[f"{name}_mean"]]]
                ax.errorbar([x + 0.15], [row[f"{name}_mean"]], yerr=error, fmt="s", capsize=4)
        ax.set_xticks(range(len(folders)), list(folders), rotation=30, ha="right")
        ax.set_title(name, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def render(spec: Spec, storage, console: Console) -> Path:
    """Write every result file of the tune into its folder, print the table; returns tune.md."""
    out = Path(spec.dir)
    runs = {(m.name, kind): [r[4] for r in reruns(spec, storage) if r[0] is m and r[1] == kind]
            for m in spec.methods for kind in KINDS}
    metrics = {"test_acc1": TEST_KEY, "holdout_acc1": HOLDOUT_KEY}
    table = comparison({m.name: runs[(m.name, "best")] for m in spec.methods}, out, metrics)
    versus = tuned_vs_default(spec, runs, out)
    scores = {m.name: trial_scores(spec, m, storage) for m in spec.methods}
    curve = expected_max.curves(scores, spec.higher_is_better)
    curve.to_csv(out / "expected_max.csv", index=False)
    expected_max.plot(curve, out / "expected_max.png", spec.metric)
    best = {m.name: best_summary(spec, m, storage) for m in spec.methods}
    (out / "best_params.json").write_text(json.dumps(best, indent=2))
    path = out / "tune.md"
    path.write_text(markdown(spec, table, versus, curve, best))
    console.print(console_table(spec, table, versus, best))
    return path


def trial_scores(spec: Spec, method: Method, storage) -> list[float]:
    trials = open_study(spec, method, storage).get_trials(deepcopy=False)
    return [t.value if t.value is not None else t.intermediate_values[max(t.intermediate_values)]
            for t in trials if t.state in FINISHED and (t.value is not None or t.intermediate_values)]


def best_summary(spec: Spec, method: Method, storage) -> dict:
    best = best_trial(spec, method, storage)
    if best is None:
        return {"trial": None}
    return {"trial": best.number, "run_dir": best.user_attrs.get("run_dir"), spec.metric: best.value,
            "values": best.user_attrs.get("values"), "space": method.space}


def tuned_vs_default(spec: Spec, runs: dict, out: Path) -> pd.DataFrame:
    """Test accuracy of the default and the tuned configuration per method, the gain paired by seed."""
    rows = []
    for method in spec.methods:
        pairs = [(summary_value(d, TEST_KEY), summary_value(b, TEST_KEY))
                 for d, b in zip(runs[(method.name, "default")], runs[(method.name, "best")])]
        pairs = [(d, b) for d, b in pairs if d is not None and b is not None]
        defaults = [v for v in (summary_value(r, TEST_KEY) for r in runs[(method.name, "default")]) if v is not None]
        tuned = [v for v in (summary_value(r, TEST_KEY) for r in runs[(method.name, "best")]) if v is not None]
        gain = interval([b - d for d, b in pairs]) if pairs else (math.nan,) * 4
        rows.append({"method": method.name, "default_test_acc1": np.mean(defaults) if defaults else math.nan,
                     "tuned_test_acc1": np.mean(tuned) if tuned else math.nan, "n_pairs": len(pairs),
                     "gain_mean": gain[0], "gain_ci95_low": gain[2], "gain_ci95_high": gain[3]})
    table = pd.DataFrame(rows)
    table.to_csv(out / "tuned_vs_default.csv", index=False)
    return table


def selection_note(spec: Spec) -> str:
    return (f"Selected on the holdout split ({spec.metric}, last epoch) over {spec.trials} trials per method "
            f"({'quasi-random Halton' if spec.sampler == 'qmc' else 'TPE'} sampling"
            f"{', median pruning' if spec.prune else ''}); reported on the test split (val/acc1, last epoch) "
            f"over {spec.seeds} new seeds (1..{spec.seeds}; the trials ran seed 0).")


def markdown_table(frame: pd.DataFrame) -> str:
    """A DataFrame as a GitHub markdown table, floats to 4 decimals."""
    text = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    return "\n".join(lines + ["| " + " | ".join(text(v) for v in row) + " |" for row in frame.itertuples(index=False)])


def markdown(spec: Spec, table: pd.DataFrame, versus: pd.DataFrame, curve: pd.DataFrame, best: dict) -> str:
    lines = [f"# divrun-tune {spec.tune_id}", "", selection_note(spec), "",
             "Shared overrides: `" + " ".join(spec.base) + "`", "", "## Comparison (best configuration, re-runs)", "",
             markdown_table(table), "", "## Best hyperparameters", ""]
    for name, entry in best.items():
        values = ", ".join(f"{k}={v}" for k, v in (entry.get("values") or {}).items())
        lines.append(f"- **{name}**: {values or 'none finished'} (trial {entry.get('trial')}, "
                     f"{spec.metric} {entry.get(spec.metric)}); space: "
                     + ", ".join(f"{k} {v}" for k, v in spec.method(name).parsed_space().describe().items()))
    lines += ["", "## Tuned against default (test top-1, paired by seed)", "",
              markdown_table(versus), "",
              "## Expected best holdout score against trials (Dodge et al. 2019)", "",
              markdown_table(curve.pivot(index="k", columns="method", values="expected_best").reset_index()), "",
              "![expected max](expected_max.png) ![comparison](comparison.png)", ""]
    return "\n".join(lines)


def console_table(spec: Spec, table: pd.DataFrame, versus: pd.DataFrame, best: dict) -> Table:
    out = Table(title=f"divrun-tune: {spec.tune_id}", caption=selection_note(spec))
    for column in ("method", "test top-1 (95% CI)", "holdout top-1", "default test top-1", "best values"):
        out.add_column(column, overflow="fold")
    for _, row in table.iterrows():
        ci = "" if pd.isna(row.get("test_acc1_ci95_low")) else \
            f" [{row['test_acc1_ci95_low']:.4f}, {row['test_acc1_ci95_high']:.4f}]"
        test = "-" if pd.isna(row.get("test_acc1_mean")) else f"{row['test_acc1_mean']:.4f}{ci} (n={row['test_acc1_n']})"
        holdout = "-" if pd.isna(row.get("holdout_acc1_mean")) else f"{row['holdout_acc1_mean']:.4f}"
        default = versus[versus.method == row.method].iloc[0]["default_test_acc1"]
        values = ", ".join(f"{k.split('.', 1)[-1]}={v:.3g}" if isinstance(v, float) else f"{k.split('.', 1)[-1]}={v}"
                           for k, v in (best[row.method].get("values") or {}).items())
        out.add_row(row.method, test, holdout, "-" if pd.isna(default) else f"{default:.4f}", values)
    return out
