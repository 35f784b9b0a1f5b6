"""The `divrun` command end to end, in subprocesses, as a user types it."""
from __future__ import annotations

import json

from conftest import divrun, read_summary, run_folders

METRIC_KEYS = {"step", "epoch", "train/loss", "train/acc1", "train/lr", "train/grad_norm", "train/img_per_s"}
EVAL_KEYS = {"step", "epoch", "val/loss", "val/nll", "val/acc1", "val/acc5", "val/ece"}
SUMMARY_KEYS = {"status", "final_val_acc1", "best_val_acc1", "final_train_loss", "steps", "wall_time_s",
                "git_commit", "torch_version", "divrun_version", "device", "world_size"}


def test_default_run_learns_digits_and_writes_its_folder(tmp_path):
    divrun(cwd=tmp_path)  # no arguments: digits, small CNN, SGD, CE, cosine
    [run] = run_folders(tmp_path)
    summary = read_summary(run)
    assert summary["status"] == "finished"
    assert summary["final_val_acc1"] >= 0.95
    assert SUMMARY_KEYS <= summary.keys()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if "train/loss" in r]
    eval_records = [r for r in records if "val/acc1" in r]
    assert train_records and METRIC_KEYS <= train_records[0].keys()
    assert len(eval_records) == 30 and EVAL_KEYS <= eval_records[-1].keys()
    assert (run / "config.yaml").exists() and (run / ".hydra" / "overrides.yaml").exists()
    assert (run / "checkpoints" / "last.pt").exists()
    norms = (run / "grad_norms.csv").read_text().splitlines()
    assert norms[0] == "step,l2,l1" and len(norms) == 1 + summary["steps"]


def test_multirun_gives_one_folder_per_job(tmp_path):
    result = divrun("-m", "optimizer=sgd,adamw", "seed=0,1", "trainer.epochs=1", "logger.progress=false",
                    cwd=tmp_path)
    runs = run_folders(tmp_path)
    assert len(runs) == 4, result.stderr
    summaries = [read_summary(run) for run in runs]
    assert all(s["status"] == "finished" for s in summaries)
    assert len({s["group"] for s in summaries}) == 1
    assert {s["name"] for s in summaries} == {f"optimizer={o},seed={s},trainer.epochs=1" for o in ("sgd", "adamw") for s in (0, 1)}


def test_help_lists_groups_and_options(tmp_path):
    text = divrun("--help", cwd=tmp_path).stdout
    for line in ("dataset: cifar10, cifar100, digits", "optimizer:", "loss:", "schedule:", "model:", "trainer:"):
        assert line in text
    assert not (tmp_path / "outputs").exists()


def test_unknown_option_names_the_valid_ones(tmp_path):
    result = divrun("optimizer=nope", cwd=tmp_path, check=False)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert "optimizer=nope" in line and "sgd" in line and "adamw" in line


def test_resume_of_a_folder_without_config_is_one_clear_line(tmp_path):
    result = divrun(f"resume={tmp_path}", cwd=tmp_path, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("divrun: error:") and "not a divrun run folder" in result.stderr
