"""After the search: re-run each method's best and default configurations with new seeds, evaluate them on the
test split, and write what the tune found into the tune folder.

Selection is on the holdout split only (the trials' `spec.metric`, last epoch); the re-runs report the test
split (`val/*`, last epoch) with n = `--seeds` seeds, numbered 1..seeds so none repeats a trial's seed 0.

The comparison is runner.comparison's (the one mechanism behind every sweep and divrun-compare), over the
best re-runs grouped by method: comparison.{md,csv,json,png}, one row per method, each method against the
first on the test and holdout top-1. Its extra sections: the best hyperparameters, tuned against default (a
second comparison, each method's best against its default paired by seed; also tuned_vs_default.csv) and
the expected best holdout score against the number of trials (Dodge et al. 2019; also expected_max.{csv,png}).
best_params.json holds each method's best trial.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from rich.console import Console

from runner import comparison, launch, results, run_folder
from runner.comparison.report import interval, number, p_value
from runner.tune import expected_max
from runner.tune.spec import Method, Spec
from runner.tune.study import FINISHED, LOG_FILE, open_study, run_overrides

KINDS = ("best", "default")
TEST_KEY, HOLDOUT_KEY = "final_val_acc1", "final_holdout_acc1"
METHOD, CONFIGURATION = "method", "configuration"  # the columns the re-runs are grouped by


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


def rerun_frame(spec: Spec, storage) -> pd.DataFrame:
    """The re-runs' folders (runner.results.load) with their method and configuration (best or default)."""
    labels = {str(run_dir.resolve()): (method.name, kind) for method, kind, _, _, run_dir in reruns(spec, storage)
              if run_dir.is_dir()}
    runs = results.load(list(labels))
    return runs.assign(**{METHOD: [labels[f][0] for f in runs["folder"]],
                          CONFIGURATION: [labels[f][1] for f in runs["folder"]]})


def render(spec: Spec, storage, console: Console) -> Path:
    """Write every result file of the tune into its folder and print the comparison; returns comparison.md."""
    out = Path(spec.dir)
    runs = rerun_frame(spec, storage)
    best_runs = runs[runs[CONFIGURATION] == "best"]
    c = comparison.compare(best_runs, by=[METHOD], metrics=[TEST_KEY, HOLDOUT_KEY],
                           baseline={METHOD: spec.methods[0].name})
    best = {m.name: best_summary(spec, m, storage) for m in spec.methods}
    (out / "best_params.json").write_text(json.dumps(best, indent=2))
    c.add_section("Best hyperparameters (selected on the holdout split)", best_table(spec, best), selection_note(spec))
    versus = tuned_vs_default(runs)
    versus.to_csv(out / "tuned_vs_default.csv", index=False)
    c.add_section("Tuned against default (test top-1, paired by seed)", versus)
    curve = expected_max.curves({m.name: trial_scores(spec, m, storage) for m in spec.methods}, spec.higher_is_better)
    curve.to_csv(out / "expected_max.csv", index=False)
    expected_max.plot(curve, out / "expected_max.png", spec.metric)
    c.add_section(f"Expected best {spec.metric} against trials per method (Dodge et al. 2019)",
                  curve.pivot(index="k", columns="method", values="expected_best").reset_index(),
                  "the expected maximum over k trials drawn from the method's trials (expected_max.png)")
    paths = c.write(out)
    c.print(console)
    return paths[0]


def best_table(spec: Spec, best: dict) -> pd.DataFrame:
    rows = [{"method": name, "trial": entry.get("trial"), spec.metric: entry.get(spec.metric),
             "values": ", ".join(f"{k}={number(v) if isinstance(v, float) else v}"
                                 for k, v in (entry.get("values") or {}).items()) or "none finished",
             "space": ", ".join(f"{k} {v}" for k, v in spec.method(name).parsed_space().describe().items())}
            for name, entry in best.items()]
    return pd.DataFrame(rows)


def tuned_vs_default(runs: pd.DataFrame) -> pd.DataFrame:
    """Each method's best against its own default on the test top-1: runner.comparison's difference, paired by
    seed (both ran seeds 1..S)."""
    c = comparison.compare(runs, by=[METHOD, CONFIGURATION], metrics=[TEST_KEY], baseline=f"{CONFIGURATION}=default")
    rows = []
    for method, groups in c.runs.drop_duplicates("group").groupby(METHOD, sort=False):
        label = dict(zip(groups[CONFIGURATION], groups["group"]))
        default, tuned = (c.summary(label.get(kind), TEST_KEY) for kind in ("default", "best"))
        gain = c.difference(label.get("best"), TEST_KEY) or {}
        rows.append({"method": method, "default_test_acc1": default.mean if default else None,
                     "tuned_test_acc1": tuned.mean if tuned else None, "n": gain.get("n"),
                     "gain": gain.get("mean"), "gain_ci95": interval(gain.get("ci_low"), gain.get("ci_high")),
                     "p": p_value(gain.get("p_t")), "note": gain.get("note") or ""})
    return pd.DataFrame(rows)


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


def selection_note(spec: Spec) -> str:
    return (f"Selected on the holdout split ({spec.metric}, last epoch) over {spec.trials} trials per method "
            f"({'quasi-random Halton' if spec.sampler == 'qmc' else 'TPE'} sampling"
            f"{', median pruning' if spec.prune else ''}); reported on the test split (val/acc1, last epoch) "
            f"over {spec.seeds} new seeds (1..{spec.seeds}; the trials ran seed 0).")
