"""The lr sensitivity of Wortsman et al. 2023 through the comparison, against hand-computed values on
hand-written run folders (no training)."""
from __future__ import annotations

import json

import pytest

from conftest import write_run_folder
from runner import comparison
from runner.comparison import cli
from runner.errors import ConfigError

L0 = 2.3  # every run's initial_train_loss


def lr_run(root, optimizer: str, lr: float, seed: int, val_loss: float, status: str = "finished"):
    config = {"optimizer": {"_target_": f"torch.optim.{optimizer}", "lr": lr}, "seed": seed,
              "trainer": {"epochs": 1, "batch_size": 32}}
    records = [{"step": 10, "epoch": 1.0, "train/loss": 1.0, "train/img_per_s": 100.0},
               {"step": 10, "epoch": 1, "val/acc1": 0.5, "val/loss": val_loss}]
    write_run_folder(root / f"{optimizer}-{lr}-{seed}", config, {"status": status, "initial_train_loss": L0},
                     records, [f"optimizer={optimizer}", f"optimizer.lr={lr}", f"seed={seed}"],
                     {"optimizer": optimizer})


@pytest.fixture
def sweeps(tmp_path):
    """sgd over four lrs (two seeds each but the last), adamw flat over two lrs."""
    for seed, losses in enumerate([(0.9, 0.5, 3.0), (1.1, 0.7, 2.0)]):
        for lr, loss in zip((1e-3, 1e-2, 1e-1), losses):
            lr_run(tmp_path, "sgd", lr, seed, loss)
    lr_run(tmp_path, "sgd", 1.0, 0, 0.8, status="diverged")  # its last evaluation before the NaN is no final loss
    lr_run(tmp_path, "sgd", 1.0, 1, 0.1, status="failed")    # a crash counts for nothing
    lr_run(tmp_path, "adamw", 1e-3, 0, 0.4)
    lr_run(tmp_path, "adamw", 1e-2, 0, 0.4)
    return tmp_path


def test_sensitivity_per_sweep_equals_the_hand_computed_value(sweeps):
    c = comparison.compare(str(sweeps), by=["optimizer", "optimizer.lr"], sensitivity=True)
    [section] = c.sections
    rows = {row["sweep"]: row for row in section.frame.to_dict("records")}
    # sgd, per lr: 1e-3: (0.9 + 1.1) / 2 = 1.0; 1e-2: (0.5 + 0.7) / 2 = 0.6 (best);
    # 1e-1: (min(3.0, 2.3) + 2.0) / 2 = 2.15; 1: diverged, l_0 = 2.3
    sgd = rows["optimizer=sgd"]
    assert sgd["lr sensitivity"] == pytest.approx(((1.0 - 0.6) + 0 + (2.15 - 0.6) + (2.3 - 0.6)) / 4)
    assert (sgd["lrs"], sgd["runs"], sgd["best optimizer.lr"]) == (4, 7, "0.01")
    assert sgd["l* (final_val_loss)"] == pytest.approx(0.6)
    assert rows["optimizer=adamw"]["lr sensitivity"] == 0 and rows["optimizer=adamw"]["lrs"] == 2


def test_divrun_compare_sensitivity_prints_and_writes_the_section(sweeps, capsys):
    out = sweeps / "report"
    cli.main([str(sweeps / "adamw-*"), "--by", "optimizer.lr", "--sensitivity", "--out", str(out)])
    assert "lr sensitivity over optimizer.lr" in capsys.readouterr().out
    [section] = json.loads((out / "comparison.json").read_text())["sections"]
    assert section["rows"] == [{"sweep": "all runs", "lrs": 2, "runs": 2, "best optimizer.lr": "0.001",
                                "l* (final_val_loss)": 0.4, "lr sensitivity": 0.0}]
    assert "## lr sensitivity over optimizer.lr" in (out / "comparison.md").read_text()


def test_sensitivity_without_an_lr_grouping_is_one_line_naming_the_fix(sweeps):
    with pytest.raises(ConfigError, match=r"group by it: --by optimizer,optimizer.lr$"):
        comparison.compare(str(sweeps / "*-0.01-*"), by=["optimizer"], sensitivity=True)
