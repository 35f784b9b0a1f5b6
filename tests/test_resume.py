"""`divrun resume=<run folder>` continues a stopped run and ends where an uninterrupted run ends."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import divrun, read_summary, train
from runner.train import Trainer

OVERRIDES = ("trainer.epochs=3", "trainer.deterministic=true", "dataset.limit_train=512")


def metric_records(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "train/img_per_s"} for r in records]


def test_resume_after_a_stop_matches_the_uninterrupted_run(tmp_path, monkeypatch):
    _, straight = train(tmp_path / "straight", *OVERRIDES)

    finish_epoch = Trainer.end_of_epoch

    def stop_after_first_epoch(self, train_loss):
        finish_epoch(self, train_loss)
        if self.epoch == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "end_of_epoch", stop_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "stopped", *OVERRIDES)
    monkeypatch.undo()
    stopped = tmp_path / "stopped" / "run"
    assert read_summary(stopped)["status"] == "failed"

    divrun(f"resume={stopped}", "logger.progress=false", cwd=tmp_path)
    assert read_summary(stopped)["status"] == "finished"
    assert metric_records(stopped) == metric_records(straight)
    weights = [torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"] for run in (straight, stopped)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
