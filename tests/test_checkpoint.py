"""Checkpoint files: rotation, atomic replacement, fallback past a damaged newest file, refusal of code."""
from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from conftest import compose, train
from runner.checkpoint import Checkpointer, UnreadableCheckpoint, load, rng_state, set_rng_state
from runner.errors import ConfigError
from runner.job import run_job


def payload(step: int) -> dict:
    return {"step": step, "model": {"w": torch.full((3,), float(step))}}


def test_keeps_the_newest_k_and_last_links_to_the_newest(tmp_path):
    checkpointer = Checkpointer(tmp_path, keep=2)
    for step in (5, 10, 15, 20):
        checkpointer.save(payload(step))
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["last.pt", "step_000000015.pt", "step_000000020.pt"]
    last, newest = tmp_path / "checkpoints" / "last.pt", tmp_path / "checkpoints" / "step_000000020.pt"
    assert os.path.samefile(last, newest)
    assert load(last)["step"] == 20 and checkpointer.load()["step"] == 20


def test_truncated_newest_falls_back_to_the_previous_with_a_warning(tmp_path):
    checkpointer = Checkpointer(tmp_path, keep=3)
    for step in (5, 10):
        checkpointer.save(payload(step))
    newest = tmp_path / "checkpoints" / "step_000000010.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a disk that filled up mid-copy
    with pytest.warns(UserWarning, match=r"step_000000010.pt is unreadable.*previous checkpoint step_000000005.pt"):
        restored = checkpointer.load()
    assert restored["step"] == 5 and torch.equal(restored["model"]["w"], torch.full((3,), 5.0))
    assert (tmp_path / "checkpoints" / "step_000000010.pt.corrupt").exists()
    assert load(tmp_path / "checkpoints" / "last.pt")["step"] == 5  # last.pt now names the good one
    checkpointer.save(payload(7))  # the resumed run saves past the bad file without tripping on it
    assert checkpointer.load()["step"] == 7


def test_all_unreadable_is_an_error_and_nothing_is_set_aside(tmp_path):
    checkpointer = Checkpointer(tmp_path)
    checkpointer.save(payload(5))
    (tmp_path / "checkpoints" / "step_000000005.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="no readable checkpoint"):
        checkpointer.load()
    assert (tmp_path / "checkpoints" / "step_000000005.pt").exists()


class RunsCode:
    """Unpickling this calls os.system: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_checkpoint_that_runs_code_on_load_is_refused(tmp_path):
    marker = tmp_path / "code-ran"
    checkpointer = Checkpointer(tmp_path / "run")
    checkpointer.save(payload(5))
    crafted = tmp_path / "run" / "checkpoints" / "step_000000010.pt"
    torch.save({**payload(10), "rng": {}, "evil": RunsCode(marker)}, crafted)
    with pytest.raises(UnreadableCheckpoint, match="refused: it asks to run code"):
        load(crafted)
    with pytest.warns(UserWarning, match="refused"):
        assert checkpointer.load()["step"] == 5
    assert not marker.exists()


def test_a_crafted_only_checkpoint_stops_the_resume_with_one_line(tmp_path):
    marker = tmp_path / "code-ran"
    crafted = tmp_path / "run" / "checkpoints" / "step_000000010.pt"
    crafted.parent.mkdir(parents=True)
    torch.save({**payload(10), "rng": {}, "evil": RunsCode(marker)}, crafted)
    with pytest.raises(ConfigError, match="refused: it asks to run code"):
        run_job(compose("trainer.device=cpu"), tmp_path / "run", resume=True)
    assert not marker.exists() and not (tmp_path / "run" / "summary.json").exists()


def test_rng_state_round_trips_through_a_weights_only_load(tmp_path):
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    Checkpointer(tmp_path).save(payload(1))
    expected = (random.random(), np.random.rand(), torch.rand(1))
    set_rng_state(load(tmp_path / "checkpoints" / "last.pt")["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected
    assert set(rng_state()) >= {"python", "numpy", "torch"}


def test_a_folder_with_checkpoints_is_not_overwritten_without_resume(tmp_path):
    summary, run_dir = train(tmp_path, "trainer.max_steps=3", "trainer.batch_size=256")
    before = (run_dir / "summary.json").read_text()
    with pytest.raises(ConfigError, match="already holds a run's checkpoints; continue it with trainer.resume=auto"):
        train(tmp_path, "trainer.max_steps=3", "trainer.batch_size=256")
    assert (run_dir / "summary.json").read_text() == before
    resumed, _ = train(tmp_path, "trainer.max_steps=3", "trainer.batch_size=256", "trainer.resume=auto")
    assert resumed["status"] == "finished" and resumed["steps"] == 3
