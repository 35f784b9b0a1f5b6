"""Comparisons on hand-written run folders (no training): the loader, the grouping rule and its refusal to pool,
failed and running runs, the statistics against scipy and hand-computed values, time to target, the files."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from conftest import write_run_folder
from runner import comparison, results, stats
from runner.comparison import cli, report
from runner.comparison.grouping import group_runs
from runner.comparison.measures import Target
from runner.errors import ConfigError

STEPS_PER_EPOCH, BATCH = 10, 32


def config(optimizer="sgd", seed=0, lr=0.1, momentum=0.9, dataset="digits", device="cpu", **top) -> dict:
    return {"optimizer": {"_target_": f"torch.optim.{optimizer.upper()}", "lr": lr, "momentum": momentum},
            "dataset": {"_target_": f"runner.data.{dataset}", "root": f"/data/{device}"},
            "trainer": {"epochs": 3, "batch_size": BATCH, "device": device}, "seed": seed, **top}


def curve(accuracies, losses=None, img_per_s=640.0) -> list[dict]:
    """A train record and an eval record per epoch, as divrun writes them."""
    losses = losses or [1.0 / (i + 1) for i in range(len(accuracies))]
    records = []
    for epoch, (acc, loss) in enumerate(zip(accuracies, losses), 1):
        step = epoch * STEPS_PER_EPOCH
        records += [{"step": step, "epoch": float(epoch), "train/loss": loss + 0.5, "train/img_per_s": img_per_s},
                    {"step": step, "epoch": epoch, "val/acc1": acc, "val/loss": loss}]
    return records


def run(root, job, optimizer="sgd", seed=0, status="finished", accuracies=(0.5, 0.7, 0.9), overrides=None,
        **config_keys):
    summary = None if status is None else {"status": status, "final_val_acc1": accuracies[-1],
                                           "best_val_acc1": max(accuracies), "wall_time_s": 10.0 + seed}
    return write_run_folder(root / f"{job}-optimizer={optimizer},seed={seed}", config(optimizer, seed, **config_keys),
                            summary, curve(list(accuracies)),
                            overrides if overrides is not None else [f"optimizer={optimizer}", f"seed={seed}"],
                            {"optimizer": optimizer, "dataset": config_keys.get("dataset", "digits")})


@pytest.fixture
def sweep(tmp_path):
    """sgd and adamw with seeds 0, 1, 2: adamw's final accuracies are sgd's plus known differences."""
    sgd, adamw = [0.90, 0.92, 0.91], [0.93, 0.94, 0.90]
    for seed, (a, b) in enumerate(zip(sgd, adamw)):
        run(tmp_path, seed, "sgd", seed, accuracies=(0.5, 0.7, a))
        run(tmp_path, 3 + seed, "adamw", seed, accuracies=(0.6, 0.8, b), lr=0.001)
    return tmp_path, np.array(sgd), np.array(adamw)


# ---- the loader -----------------------------------------------------------------------------------------------

def test_load_gives_one_row_per_run_with_config_choices_overrides_summary_and_status(tmp_path):
    run(tmp_path, 10, "sgd", 1)
    run(tmp_path, 2, "sgd", 0, lr=0.3, overrides=["optimizer=sgd", "optimizer.lr=0.3", "seed=0"])
    run(tmp_path, 3, "adamw", 0, status="failed")
    run(tmp_path, 4, "adamw", 1, status=None)  # a config, no summary.json yet
    (run(tmp_path, 5, "adamw", 2) / "summary.json").write_text('{"status": "fini')  # cut short by a kill
    (tmp_path / "not_a_run" / "checkpoints").mkdir(parents=True)
    runs = results.load(str(tmp_path / "**"))
    assert [r.split("/")[-1] for r in runs["folder"]] == [
        "2-optimizer=sgd,seed=0", "3-optimizer=adamw,seed=0", "4-optimizer=adamw,seed=1",
        "5-optimizer=adamw,seed=2", "10-optimizer=sgd,seed=1"]  # natural order: job 2 before job 10
    assert list(runs["status"]) == ["finished", "failed", "not started", "unreadable", "finished"]
    first = runs.iloc[0]
    assert first["optimizer.lr"] == 0.3 and first["optimizer"] == "sgd" and first["seed"] == 0
    assert first["overrides"] == ("optimizer=sgd", "optimizer.lr=0.3", "seed=0")
    assert first["final_val_acc1"] == 0.9 and first["wall_time_s"] == 10.0
    assert "hydra/launcher" not in runs.columns  # Hydra's own choices are not the experiment's


def test_folders_that_tie_in_natural_order_load_in_one_order(tmp_path):
    """lr=0.001 and lr=0.01 both read as 0 . 1 to the natural key: the tie breaks on the name, not on set order
    (which changes with PYTHONHASHSEED, so a comparison's ties changed from one process to the next)."""
    for name in ("lr=0.01", "lr=0.001", "lr=0.0001"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text("{}")
    assert [p.name for p in results.find_runs(str(tmp_path))] == ["lr=0.0001", "lr=0.001", "lr=0.01"]


def test_load_records_in_long_form_skipping_a_line_cut_short(tmp_path):
    folder = run(tmp_path, 0)
    with open(folder / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 40, "epoch": 4.0, "train/lo')
    records = results.load_records(results.load(tmp_path))
    assert list(records.columns) == ["folder", "record", "step", "epoch", "metric", "value"]
    assert len(records) == 3 * (2 + 2)
    acc = records[records["metric"] == "val/acc1"]
    assert list(acc["value"]) == [0.5, 0.7, 0.9] and list(acc["step"]) == [10, 20, 30]


def test_a_path_without_run_folders_is_one_line_naming_the_fix(tmp_path):
    with pytest.raises(ConfigError, match=r"no run folders there .*pass a run or sweep folder"):
        results.load(tmp_path)


# ---- grouping ---------------------------------------------------------------------------------------------------

def test_default_grouping_is_the_choice_the_user_named_not_the_leaves_it_changes(sweep):
    root, _, _ = sweep
    runs = results.load(root)
    grouping = group_runs(runs)
    assert grouping.keys == ["optimizer"]  # optimizer.lr and optimizer._target_ differ too: they follow from it
    assert grouping.groups == ["optimizer=sgd", "optimizer=adamw"]


def test_a_difference_nobody_named_joins_the_grouping_and_execution_keys_never_do(tmp_path):
    """Two checkouts whose sgd.yaml differ in momentum: the same override, another run; device and the data
    folder say where a run executed, not what it computed."""
    for seed in range(2):
        run(tmp_path, seed, "sgd", seed, device="cpu")
        run(tmp_path, 2 + seed, "sgd", seed, momentum=0.0, device="cuda")
    grouping = group_runs(results.load(tmp_path))
    assert grouping.keys == ["optimizer.momentum"]
    assert grouping.groups == ["optimizer.momentum=0.9", "optimizer.momentum=0"]


def test_a_path_that_follows_the_seed_is_not_a_group(tmp_path):
    """A per-seed teacher run folder (a table's ${cell:...}) follows from the seed; two fixed teachers do not."""
    for seed in range(2):
        for job, optimizer in enumerate(("sgd", "adamw")):
            run(tmp_path, 2 * seed + job, optimizer, seed, distill={"teacher": f"/runs/teacher/seed{seed}"},
                overrides=[f"optimizer={optimizer}", f"distill.teacher=/runs/teacher/seed{seed}"])
    assert group_runs(results.load(tmp_path)).keys == ["optimizer"]
    for seed in range(2):
        run(tmp_path / "two", seed, "sgd", seed, distill={"teacher": "/runs/r56"})
        run(tmp_path / "two", 2 + seed, "sgd", seed, distill={"teacher": "/runs/r110"})
    assert group_runs(results.load(tmp_path / "two")).keys == ["distill.teacher"]


def test_runs_differing_outside_the_grouping_are_not_pooled(sweep):
    root, _, _ = sweep
    for seed in range(3):
        run(root, 6 + seed, "sgd", seed, dataset="synthetic")
    runs = results.load(root)
    with pytest.raises(ConfigError) as error:
        group_runs(runs, by=["optimizer"])
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("the runs differ in dataset (digits, synthetic)")
    assert "--by optimizer,dataset" in message and "--pool dataset" in message
    assert group_runs(runs, by=["optimizer"], pool=["dataset"]).groups == ["optimizer=sgd", "optimizer=adamw"]
    assert group_runs(runs).keys == ["optimizer", "dataset"]
    with pytest.raises(ConfigError, match="--by optimzer: the runs have no such key; did you mean optimizer"):
        group_runs(runs, by=["optimzer"])


# ---- statistics -------------------------------------------------------------------------------------------------

def test_group_statistics_are_scipys_and_differences_paired_by_seed_equal_scipys(sweep):
    root, sgd, adamw = sweep
    c = comparison.compare(results.load(root), baseline="optimizer=sgd")
    s = c.summary("optimizer=adamw", "final_val_acc1")
    low, high = scipy_stats.t.interval(0.95, 2, loc=adamw.mean(), scale=scipy_stats.sem(adamw))
    assert (s.n, s.median, s.min, s.max) == (3, 0.93, 0.90, 0.94)
    assert s.mean == pytest.approx(adamw.mean(), abs=1e-15) and s.std == pytest.approx(adamw.std(ddof=1), abs=1e-15)
    assert (s.ci_low, s.ci_high) == pytest.approx((low, high), abs=1e-12)
    d = c.difference("optimizer=adamw", "final_val_acc1")
    test = scipy_stats.ttest_rel(adamw, sgd)
    assert d["kind"] == "paired" and d["baseline"] == "optimizer=sgd" and d["n"] == 3
    assert d["mean"] == pytest.approx((adamw - sgd).mean(), abs=1e-12)
    assert (d["ci_low"], d["ci_high"]) == pytest.approx(tuple(test.confidence_interval(0.95)), abs=1e-12)
    assert d["p_t"] == pytest.approx(test.pvalue, abs=1e-12)
    assert d["p_wilcoxon"] == pytest.approx(scipy_stats.wilcoxon(adamw, sgd).pvalue, abs=1e-12)
    assert d["p_holm"] == pytest.approx(test.pvalue, abs=1e-12)  # one comparison: Holm changes nothing
    assert c.difference("optimizer=sgd", "final_val_acc1") is None  # the baseline itself


def test_welch_when_the_seeds_do_not_match(sweep):
    root, sgd, adamw = sweep
    run(root, 9, "adamw", 7, accuracies=(0.5, 0.6, 0.95), lr=0.001)
    c = comparison.compare(results.load(root), baseline="optimizer=sgd")
    d = c.difference("optimizer=adamw", "final_val_acc1")
    treatment = np.append(adamw, 0.95)
    test = scipy_stats.ttest_ind(treatment, sgd, equal_var=False)
    assert d["kind"] == "welch" and pd.isna(d["p_wilcoxon"])
    assert d["mean"] == pytest.approx(treatment.mean() - sgd.mean(), abs=1e-12)
    assert d["p_t"] == pytest.approx(test.pvalue, abs=1e-12)
    assert (d["ci_low"], d["ci_high"]) == pytest.approx(tuple(test.confidence_interval(0.95)), abs=1e-12)


@pytest.mark.parametrize("treatment, baseline", [
    ([0.91, 0.93, 0.92, 0.95, 0.90], [0.90, 0.92, 0.93, 0.91, 0.89]),     # no ties: scipy's exact distribution
    ([3, 4, 4, 5, 2, 3, 6, 4], [3, 3, 2, 3, 3, 2, 3, 3]),                   # a zero difference and ties (epochs)
    ([0.5, 0.7, 0.7, 0.9, 0.6, 0.8], [0.4, 0.6, 0.6, 0.6, 0.7, 0.7]),
])
def test_wilcoxon_p_values_are_scipys_with_ties_and_zeros(treatment, baseline):
    d = stats.difference(treatment, baseline, paired=True)
    assert d.p_wilcoxon == pytest.approx(scipy_stats.wilcoxon(treatment, baseline).pvalue, abs=1e-12)


def test_holm_on_hand_computed_values():
    # m = 4 tests (None is no test): sorted 0.01, 0.02, 0.03, 0.04 -> x4, x3, x2, x1, then the running maximum
    assert stats.holm([0.04, None, 0.01, 0.03, 0.02]) == pytest.approx([0.06, None, 0.04, 0.06, 0.06])
    assert stats.holm([0.5, 0.9]) == [1.0, 1.0]


def test_fewer_than_three_seeds_are_too_few_to_test():
    d = stats.difference([0.9, 0.95], [0.8, 0.82], paired=True)
    assert d.note == "too few seeds to test (n=2)" and d.p_t is None and d.p_wilcoxon is None
    assert d.mean == pytest.approx(0.115)
    assert stats.describe([0.9]).std is None and stats.describe([0.9]).ci_low is None


def test_summary_from_moments_is_the_t_interval_by_hand():
    s = stats.Summary.from_moments(91.85, 0.05, 3)
    half = 4.302652729911275 * 0.05 / math.sqrt(3)  # t(0.975, 2 degrees of freedom)
    assert (s.ci_low, s.ci_high) == pytest.approx((91.85 - half, 91.85 + half), abs=1e-9)


def test_failed_and_running_runs_are_listed_and_never_counted(sweep):
    root, sgd, _ = sweep
    run(root, 20, "sgd", 3, status="failed", accuracies=(0.1, 0.1, 0.1))
    run(root, 21, "sgd", 4, status="running", accuracies=(0.2, 0.2, 0.2))
    run(root, 22, "sgd", 5, status="diverged", accuracies=(0.1, 0.1, 0.1))
    c = comparison.compare(results.load(root))
    assert c.summary("optimizer=sgd", "final_val_acc1").mean == pytest.approx(sgd.mean())
    groups = c.group_table().set_index("group")
    assert groups.at["optimizer=sgd", "runs"] == "3 finished, 1 failed, 1 running, 1 diverged"
    assert groups.at["optimizer=sgd", "n"] == 3
    assert c.difference("optimizer=adamw", "final_val_acc1")["kind"] == "paired"  # on the finished seeds 0, 1, 2


# ---- measures ---------------------------------------------------------------------------------------------------

def test_time_to_target_in_steps_epochs_and_seconds_on_hand_written_records(tmp_path):
    records = [  # img/s changes, so seconds are not steps x a constant
        {"step": 10, "epoch": 0.5, "train/loss": 2.0, "train/img_per_s": 320.0},
        {"step": 20, "epoch": 1.0, "train/loss": 1.5, "train/img_per_s": 640.0},
        {"step": 20, "epoch": 1, "val/acc1": 0.6, "val/loss": 1.2},
        {"step": 30, "epoch": 1.5, "train/loss": 1.0, "train/img_per_s": 160.0},
        {"step": 40, "epoch": 2.0, "train/loss": 0.8, "train/img_per_s": 640.0},
        {"step": 40, "epoch": 2, "val/acc1": 0.91, "val/loss": 0.4},
        {"step": 60, "epoch": 3.0, "train/loss": 0.7, "train/img_per_s": 640.0},
        {"step": 60, "epoch": 3, "val/acc1": 0.95, "val/loss": 0.5}]
    choice = {"optimizer": "sgd"}
    folder = write_run_folder(tmp_path / "run", config(), {"status": "finished", "world_size": 2}, records,
                              choices=choice)
    write_run_folder(tmp_path / "slow", config(seed=1), {"status": "finished"}, records[:3], choices=choice)
    c = comparison.compare(results.load(tmp_path), by=["optimizer"],
                           targets=["val/acc1=0.9", "val/loss=1.2", "val/acc1=0.99"])
    measured = c.runs.set_index("folder").loc[str(folder)]
    # 40 steps: intervals of 10 steps x 32 images x 2 processes at 320, 640, 160 and 640 images/s
    seconds = 640 / 320 + 640 / 640 + 640 / 160 + 640 / 640
    assert (measured["steps_to_val_acc1>=0.9"], measured["epochs_to_val_acc1>=0.9"]) == (40, 2)
    assert measured["seconds_to_val_acc1>=0.9"] == pytest.approx(seconds)
    assert measured["steps_to_val_loss<=1.2"] == 20  # losses count down
    assert math.isnan(measured["steps_to_val_acc1>=0.99"])
    assert report.target_text(c, "optimizer=sgd", "epochs_to_val_acc1>=0.99") == "not reached"
    assert report.target_text(c, "optimizer=sgd", "epochs_to_val_acc1>=0.9").endswith("(1/2 reached)")
    # final and best (labelled) of every eval metric, final train loss and images/s after the first interval
    assert measured["final_val_acc1"] == 0.95 and measured["best_val_loss"] == 0.4
    assert measured["best_val_loss_epoch"] == 2 and measured["final_val_loss"] == 0.5
    assert measured["final_train_loss"] == 0.7
    assert measured["train_img_per_s"] == pytest.approx((640 + 160 + 640 * 2) / 4)  # after the first record
    assert report.metric_label("best_val_loss") == "best_val_loss (best epoch)"


# ---- baselines and bad input ------------------------------------------------------------------------------------

def test_a_partial_baseline_pairs_groups_that_share_the_other_keys(tmp_path):
    for seed in range(3):
        for job, (optimizer, loss) in enumerate([("sgd", "ce"), ("adamw", "ce"), ("sgd", "kl"), ("adamw", "kl")]):
            run(tmp_path, 4 * seed + job, optimizer, seed, overrides=[f"optimizer={optimizer}", f"loss={loss}",
                                                                       f"seed={seed}"], loss={"_target_": loss})
    runs = results.load(tmp_path)
    runs["loss"] = runs["loss._target_"]  # the choice Hydra would record
    c = comparison.compare(runs, by=["optimizer", "loss"], baseline="optimizer=sgd")
    assert c.difference("optimizer=adamw,loss=kl", "final_val_acc1")["baseline"] == "optimizer=sgd,loss=kl"
    assert c.difference("optimizer=adamw,loss=ce", "final_val_acc1")["baseline"] == "optimizer=sgd,loss=ce"


@pytest.mark.parametrize("options, message", [
    ({"baseline": "optimizer=sdg"}, "--baseline optimizer=sdg matches no group; choose one of: optimizer=sgd; "
                                    "optimizer=adamw"),
    ({"baseline": "sgd"}, "--baseline sgd: write KEY=VALUE[,KEY=VALUE], e.g. --baseline optimizer=sgd"),
    ({"baseline": "loss=ce"}, "--baseline loss=ce: loss is not a grouping key (optimizer)"),
    ({"metrics": ["final_val_acc"]}, "--metric final_val_acc: the runs have no such measure; did you mean "
                                     "final_val_acc1?"),
    ({"targets": ["val/acc=0.9"]}, "--target val/acc=0.9: the runs record no metric val/acc; did you mean val/acc1?"),
    ({"targets": ["val/acc1"]}, "--target val/acc1: write METRIC=VALUE"),
])
def test_bad_options_are_one_line_naming_the_fix(sweep, options, message):
    root, _, _ = sweep
    with pytest.raises(ConfigError) as error:
        comparison.compare(results.load(root), **options)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_divrun_compare_writes_the_files_and_prints_unwrapped_tables(sweep, capsys):
    root, sgd, adamw = sweep
    run(root, 30, "sgd", 3, status="failed")
    cli.main([str(root), "--baseline", "optimizer=sgd", "--target", "val/acc1=0.92"])
    out = capsys.readouterr().out
    assert "optimizer=adamw │ 3 finished" in out and "1 failed" in out  # one line per group, nothing folded
    table = pd.read_csv(root / "comparison.csv")
    assert list(table["group"]) == ["optimizer=sgd", "optimizer=adamw"] and list(table["n"]) == [3, 3]
    assert table["final_val_acc1.mean"].tolist() == pytest.approx([sgd.mean(), adamw.mean()], abs=1e-12)
    data = json.loads((root / "comparison.json").read_text())  # strict JSON: no NaN
    assert data["grouping"]["keys"] == ["optimizer"] and data["baseline"] == {"optimizer": "sgd"}
    assert {r["folder"] for r in data["runs"]} >= {"0-optimizer=sgd,seed=0", "30-optimizer=sgd,seed=3"}
    markdown = (root / "comparison.md").read_text()
    assert "## final_val_acc1 (last epoch)" in markdown and "paired" in markdown and "![comparison]" in markdown
    assert (root / "comparison.png").stat().st_size > 10_000
    with pytest.raises(SystemExit) as stop:
        cli.main([str(root / "nowhere")])
    assert stop.value.code == 2
    assert capsys.readouterr().err.startswith("divrun-compare: error: ")


def test_a_runs_curves_png(tmp_path):
    from runner.curves import write_run_curves

    folder = run(tmp_path, 0)
    assert write_run_curves(folder) == folder / "curves.png" and (folder / "curves.png").stat().st_size > 10_000
    assert write_run_curves(tmp_path / "empty") is None


# ---- console output that a person can read and a pipe can grep -------------------------------------------------

def test_the_end_of_run_table_never_cuts_the_run_folder_on_an_80_column_terminal(monkeypatch):
    import io
    from types import SimpleNamespace

    from rich.console import Console

    from runner import logger

    out = io.StringIO()
    monkeypatch.setattr(logger, "console", Console(file=out, width=80, force_terminal=True, color_system=None))
    folder = "/home/someone/outputs/multirun/2026-12-01/08-54-27-01234abcd/3-optimizer=adamw,seed=2,trainer.epochs=30"
    logger.RunLogger.summary_table(SimpleNamespace(enabled=True), {"name": "n", "status": "finished",
                                                                   "final_val_acc1": 0.9, "run_dir": folder})
    assert f"run folder: {folder}\n" in out.getvalue() and "…" not in out.getvalue()


def test_the_tables_list_never_wraps_names_when_stdout_is_not_a_terminal(tmp_path, capsys, monkeypatch):
    from runner.tables import cli as tables_cli, recipe

    monkeypatch.setattr(recipe, "available", lambda: ["digits_demo", "adahessian_cifar10"])  # two are enough
    tables_cli.list_tables(tmp_path)
    lines = capsys.readouterr().out.splitlines()
    for name in recipe.available():
        [line] = [line for line in lines if line.startswith(f"│ {name} ")]
        assert recipe.load(name).title in line  # the whole title on the same line, wider than 80 columns


# ---- sweeps: resuming a job folder, comparing after an abort ----------------------------------------------------

def test_a_sweep_job_folder_is_skipped_continued_or_refused_by_its_config(tmp_path):
    from omegaconf import OmegaConf

    from conftest import compose
    from runner import sweep
    from runner.run_folder import save_config

    cfg = compose("optimizer=adamw", "trainer.device=cpu")
    assert sweep.previous_run(tmp_path / "empty", cfg) == ("new", {})
    folder = tmp_path / "job"
    folder.mkdir()
    save_config(cfg, folder)
    (folder / "summary.json").write_text(json.dumps({"status": "running"}))
    assert sweep.previous_run(folder, cfg) == ("started", {})
    (folder / "summary.json").write_text(json.dumps({"status": "finished", "final_val_acc1": 0.9}))
    elsewhere = OmegaConf.merge(cfg, {"trainer": {"device": "cuda"}, "logger": {"progress": False}})
    assert sweep.previous_run(folder, elsewhere)[0] == "done"  # where it runs may change
    with pytest.raises(ConfigError, match=r"holds a run of another config \(optimizer.lr: 0.001 there, 0.01 now\)"):
        sweep.previous_run(folder, OmegaConf.merge(cfg, {"optimizer": {"lr": 0.01}}))


def test_a_sweep_aborted_by_its_launcher_is_compared_unless_it_will_be_resumed(sweep, capsys):
    from runner import sweep as sweeps

    root, _, _ = sweep
    callback = sweeps.CompareAtEnd(baseline="optimizer=sgd")
    for code, compared in ((75, False), (130, False), (1, True)):
        sweeps._running.update(folder=root, callback=callback)
        sweeps.after_abort(code)
        assert (root / "comparison.csv").exists() == compared, code
    assert not sweeps._running and "optimizer=adamw │ 3 finished" in capsys.readouterr().out


def test_the_command_of_a_sweep_folder_is_read_back_from_its_multirun_yaml(tmp_path):
    import yaml

    from runner import sweep

    (tmp_path / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"overrides": {
        "hydra": ["hydra.mode=MULTIRUN", "hydra/launcher=gpus", f"hydra.sweep.dir={tmp_path}"],
        "task": ["optimizer=sgd,adamw", "seed=0,1"]}}}))
    assert sweep.is_sweep_folder(str(tmp_path)) and not sweep.is_sweep_folder(str(tmp_path / "x"))
    assert sweep.command_of(str(tmp_path)) == ["-m", "optimizer=sgd,adamw", "seed=0,1", "hydra/launcher=gpus",
                                               f"hydra.sweep.dir={tmp_path.resolve()}"]


# ---- lr x batch grids (--by trainer.batch_size) -------------------------------------------------------------

def grid_sweep(root):
    """SGD and Adam over an lr grid (factors of 2) at batches 64, 256, 1024, two seeds each. The final training
    loss is |log2(lr / lr*(B))| + 0.1 * seed, with lr* = 0.05 (B / 64) for SGD (k = 1) and 2.5e-4 (B / 64)^(1/2)
    for Adam (k = 1/2, whose lr* at 1024 is its grid's top); the val accuracy falls with the same distance."""
    best = {"sgd": lambda b: 0.05 * b / 64, "adam": lambda b: 2.5e-4 * (b / 64) ** 0.5}
    grids = {"sgd": [0.025 * 2 ** i for i in range(7)], "adam": [1.25e-4 * 2 ** i for i in range(4)]}
    job = 0
    for name, target in (("sgd", "torch.optim.SGD"), ("adam", "torch.optim.Adam")):
        for batch in (64, 256, 1024):
            for lr in grids[name]:
                for seed in (0, 1):
                    distance = abs(math.log2(lr / best[name](batch)))
                    cfg = {"optimizer": {"_target_": target, "lr": lr}, "trainer": {"epochs": 3, "batch_size": batch},
                           "seed": seed}
                    records = [{"step": 10, "epoch": 1.0, "train/loss": distance + 0.1 * seed},
                               {"step": 10, "epoch": 1, "val/acc1": 0.9 - 0.1 * distance}]
                    write_run_folder(root / f"{job}", cfg, {"status": "finished"}, records,
                                     [f"optimizer={name}", f"optimizer.lr={lr}", f"trainer.batch_size={batch}",
                                      f"seed={seed}"], {"optimizer": name})
                    job += 1
    return root


def test_by_batch_size_tabulates_each_lr_x_batch_grid_and_fits_the_scaling_exponent(tmp_path):
    c = comparison.compare(results.load(grid_sweep(tmp_path)), by=["trainer.batch_size"])
    assert c.grouping.keys == ["optimizer", "optimizer.lr", "trainer.batch_size"]  # nothing pooled over the lr
    assert c.grouping.describe() == "--by trainer.batch_size with optimizer, optimizer.lr (what else differs)"
    sections = {s.title: s for s in c.sections}
    grid = sections["lr x batch: final_train_loss (optimizer=sgd)"].frame.set_index("optimizer.lr")
    assert list(grid.columns) == ["trainer.batch_size=64", "trainer.batch_size=256", "trainer.batch_size=1024"]
    assert len(grid) == 7 and grid.at["0.05", "trainer.batch_size=64"] == "0.0500 ± 0.0707 (2) *"
    assert grid.at["0.2", "trainer.batch_size=256"].endswith(" *") and grid.at["0.8", "trainer.batch_size=1024"].endswith(" *")
    assert grid.at["0.1", "trainer.batch_size=64"] == "1.0500 ± 0.0707 (2)"  # one factor of 2 away: loss 1 + seed's
    accuracy = sections["lr x batch: final_val_acc1 (optimizer=adam)"].frame.set_index("optimizer.lr")
    assert accuracy.at["0.001", "trainer.batch_size=1024"] == "0.9000 ± 0.0000 (2) *"  # selected on the train loss
    fits = sections["lr* ~ B^k"].frame.set_index("optimizer")
    assert fits.at["sgd", "k (fitted)"] == "1.00 ± 0.00" and fits.at["sgd", "k (rule)"] == "1"
    assert fits.at["adam", "k (fitted)"] == "0.50 ± 0.00" and fits.at["adam", "k (rule)"] == "0.5"
    assert fits.at["sgd", "lr* at trainer.batch_size=1024"] == "0.8"
    assert fits.at["adam", "lr* at trainer.batch_size=1024"] == "0.001^"  # the grid's top: a bound
    assert "training objective, never the test split" in sections["lr* ~ B^k"].note


def test_divrun_compare_by_batch_size_prints_and_writes_the_grids(tmp_path, capsys):
    folder = grid_sweep(tmp_path / "sweep")
    cli.main([str(folder), "--by", "trainer.batch_size", "--out", str(tmp_path / "out")])
    printed = capsys.readouterr().out
    assert "lr x batch: final_train_loss (optimizer=sgd)" in printed and "lr* ~ B^k" in printed
    markdown = (tmp_path / "out" / "comparison.md").read_text()
    assert "## lr x batch: final_val_acc1 (optimizer=adam)" in markdown and "| sgd | 1.00 ± 0.00 | 1 |" in markdown
    sections = json.loads((tmp_path / "out" / "comparison.json").read_text())["sections"]
    assert sections[-1]["title"] == "lr* ~ B^k" and sections[-1]["rows"][1]["k (fitted)"] == "0.50 ± 0.00"
