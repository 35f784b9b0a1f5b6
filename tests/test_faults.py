"""Faults around the training itself: a sweep with failing and diverging jobs goes on and records each one;
an unreachable wandb server costs a warning, not the run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, read_summary, run_folders, train

TINY = ["trainer.max_steps=6", "trainer.log_every=2", "trainer.batch_size=64", "trainer.device=cpu",
        "logger.progress=false", "schedule=constant"]


def test_a_sweep_records_failed_and_diverged_jobs_and_goes_on(tmp_path):
    """Naming the sweeper leaves job expansion to Hydra, so the invalid job (a model that does not import) is
    only found inside the sweep, like with any other sweeper plugin."""
    models = "faulty.Boom,faulty.NaNAt,nowhere.Model,runner.models.small.SmallCNN"
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO / "tests")}
    result = subprocess.run([str(Path(sys.executable).with_name("divrun")), "-m", "hydra/sweeper=basic",
                             f"model._target_={models}", *TINY],
                            cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = {read_summary(d)["name"].split("model._target_=")[1].split(",")[0]: read_summary(d)
                 for d in run_folders(tmp_path)}
    assert {name: s["status"] for name, s in summaries.items()} == {
        "faulty.Boom": "failed", "faulty.NaNAt": "diverged", "nowhere.Model": "failed",
        "runner.models.small.SmallCNN": "finished"}
    assert summaries["nowhere.Model"]["error"].startswith(
        "ConfigError: model._target_=nowhere.Model: cannot be imported (ModuleNotFoundError")
    assert summaries["faulty.Boom"]["error"] == "RuntimeError: this model cannot be built"
    assert "Traceback" in summaries["faulty.Boom"]["traceback"]
    diverged = summaries["faulty.NaNAt"]
    assert diverged["diverged_at_step"] == 3 and diverged["final_train_loss"] is not None
    assert "model._target_=faulty.Boom,schedule=constant,trainer.batch_size=64,trainer.log_every=2,trainer.max_steps=6: " \
           "failed: RuntimeError: this model cannot be built" in result.stderr
    assert "diverged: non-finite loss at step 3" in result.stderr
    json.dumps(list(summaries.values()), allow_nan=False)  # strict JSON, so any table reader can load them


def test_an_unreachable_wandb_server_does_not_stop_training(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    monkeypatch.setenv("WANDB_SILENT", "true")
    with pytest.warns(UserWarning, match="wandb: cannot reach the server or log in .*logging offline instead"):
        summary, run_dir = train(tmp_path, *TINY, "logger.wandb.mode=online", "logger.wandb.init_timeout=2")
    assert summary["status"] == "finished" and summary["steps"] == 6
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 6, 6]  # three train records and the final evaluation
    assert list((run_dir / "wandb").glob("offline-run-*")), "the offline fallback keeps a run to `wandb sync` later"
    assert f"wandb sync {run_dir / 'wandb'}" in capsys.readouterr().err.replace("\n", "")
