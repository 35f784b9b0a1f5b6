"""Every sweep ends in a comparison, `divrun-compare` gives the same numbers, and a sweep killed in the middle of
a job finishes, when its command is run again, with the metrics of a sweep that never stopped.

One uninterrupted sweep (digits, tiny model, 3 epochs of 4 steps, CPU, deterministic) serves every test."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from conftest import REPO, read_summary
from runner.comparison import cli
from test_resume import newest_checkpoint_step, records, wait_until

TINY = ["trainer.epochs=3", "model._target_=faulty.Slow", "model.width=4", "dataset.limit_train=256",
        "trainer.batch_size=64", "trainer.log_every=2", "trainer.checkpoint_every_steps=2",
        "trainer.deterministic=true", "trainer.device=cpu", "logger.progress=false"]
TOTAL_STEPS = 3 * 4
ENV = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO / "tests")}


def sweep_command(folder: Path, *values: str) -> list[str]:
    return [str(Path(sys.executable).with_name("divrun")), "-m", *values, *TINY, f"hydra.sweep.dir={folder}"]


def jobs(folder: Path) -> dict[str, Path]:
    """The sweep's job folders by their overrides (the name without the job number)."""
    return {p.name.split("-", 1)[1]: p for p in folder.iterdir() if (p / ".hydra").is_dir()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    folder = tmp_path_factory.mktemp("reference") / "sweep"
    result = subprocess.run(sweep_command(folder, "optimizer=sgd,adamw", "seed=0,1,2"), cwd=folder.parent,
                            capture_output=True, text=True, env=ENV, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return folder, result


def summaries(folder: Path) -> pd.DataFrame:
    return pd.DataFrame([read_summary(p) | {"optimizer": p.name.split("optimizer=")[1].split(",")[0],
                                            "seed": int(p.name.split("seed=")[1].split(",")[0])}
                         for p in jobs(folder).values()])


def test_a_sweep_ends_with_its_comparison(reference):
    folder, result = reference
    for name in ("comparison.md", "comparison.csv", "comparison.json", "comparison.png"):
        assert (folder / name).stat().st_size > 0, name
    table = pd.read_csv(folder / "comparison.csv").set_index("group")
    assert list(table.index) == ["optimizer=sgd", "optimizer=adamw"] and list(table["n"]) == [3, 3]
    values = summaries(folder)
    for optimizer in ("sgd", "adamw"):
        mine = values[values["optimizer"] == optimizer]
        for key in ("final_val_acc1", "best_val_acc1", "final_train_loss", "wall_time_s"):
            assert table.at[f"optimizer={optimizer}", f"{key}.mean"] == pytest.approx(mine[key].mean(), abs=1e-12), key
    assert "optimizer=adamw │ 3 finished" in result.stdout and f"in {folder}" in result.stdout
    assert f"hydra.sweep.dir={folder}" in result.stderr  # how to finish the sweep if it stops


def test_divrun_compare_gives_the_same_numbers_and_scipys_paired_tests(reference, tmp_path, capsys):
    folder, _ = reference
    cli.main([str(folder), "--baseline", "optimizer=sgd", "--metric", "final_val_acc1,final_val_loss",
              "--out", str(tmp_path)])
    again = pd.read_csv(tmp_path / "comparison.csv").set_index("group")
    at_end = pd.read_csv(folder / "comparison.csv").set_index("group")
    columns = [c for c in at_end.columns if c.endswith((".mean", ".std", ".ci_low", ".ci_high"))]
    assert np.allclose(again[columns].to_numpy(float), at_end[columns].to_numpy(float), rtol=0, atol=1e-12,
                       equal_nan=True)
    values = summaries(folder).sort_values("seed")
    for key in ("final_val_acc1", "final_val_loss"):
        sgd, adamw = (values[values["optimizer"] == o][key].to_numpy() for o in ("sgd", "adamw"))
        row = again.loc["optimizer=adamw"]
        test = scipy_stats.ttest_rel(adamw, sgd)
        assert row[f"{key}.diff_kind"] == "paired" and row[f"{key}.diff"] == pytest.approx((adamw - sgd).mean())
        assert row[f"{key}.diff_p_t"] == pytest.approx(test.pvalue, rel=1e-9)
        assert row[f"{key}.diff_ci_low"] == pytest.approx(test.confidence_interval().low, rel=1e-9)
        if not np.all(adamw == sgd):
            assert row[f"{key}.diff_p_wilcoxon"] == pytest.approx(scipy_stats.wilcoxon(adamw, sgd).pvalue, rel=1e-9)


def test_a_sweep_killed_in_job_2_of_4_resumes_to_the_metrics_of_one_that_never_stopped(reference, tmp_path):
    folder = tmp_path / "sweep"
    command = sweep_command(folder, "optimizer=sgd,adamw", "seed=0,1")
    with open(tmp_path / "killed.log", "w") as log:
        process = subprocess.Popen(command, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, env=ENV)
    second = lambda: next((p for p in folder.glob("1-*") if (p / "checkpoints").is_dir()), None)
    wait_until(lambda: second() is not None and newest_checkpoint_step(second()) >= 4, process,
               "a checkpoint of job 2 at step 4")
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    killed = second()
    assert read_summary(killed)["status"] == "running" and newest_checkpoint_step(killed) < TOTAL_STEPS
    assert not list(folder.glob("2-*")) and not list(folder.glob("3-*"))

    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, env=ENV, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("finished before; skipped") == 1
    assert f"divrun: resuming {killed.resolve()} at step" in result.stderr.replace("\n", "")
    resumed, uninterrupted = jobs(folder), jobs(reference[0])
    assert sorted(p.name.split("-")[0] for p in resumed.values()) == ["0", "1", "2", "3"]  # the same numbering
    for name, job in resumed.items():
        assert records(job) == records(uninterrupted[name]), name
        assert (job / "grad_norms.csv").read_text() == (uninterrupted[name] / "grad_norms.csv").read_text(), name
        mine, theirs = read_summary(job), read_summary(uninterrupted[name])
        assert mine["status"] == "finished" and mine["steps"] == TOTAL_STEPS, name
        for key in ("final_val_acc1", "best_val_acc1", "final_train_loss", "final_val_loss"):
            assert mine[key] == theirs[key], (name, key)
    table = pd.read_csv(folder / "comparison.csv")
    assert list(table["n"]) == [2, 2]


def test_resume_of_a_finished_sweep_folder_skips_every_job_and_compares_again(reference):
    folder, _ = reference
    checkpoint = next(iter(jobs(folder).values())) / "checkpoints" / "last.pt"
    stamp, before = checkpoint.stat().st_mtime_ns, (folder / "comparison.json").stat().st_mtime_ns
    result = subprocess.run([str(Path(sys.executable).with_name("divrun")), f"resume={folder}"],
                            cwd=folder.parent, capture_output=True, text=True, env=ENV, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("finished before; skipped") == 6
    assert checkpoint.stat().st_mtime_ns == stamp and (folder / "comparison.json").stat().st_mtime_ns > before
    assert json.loads((folder / "comparison.json").read_text())["groups"][0]["n"] == 3
