"""lr scaling rules: the lr a run uses (and records in config.yaml) is the reference lr times (B / B_ref)^k."""
from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from conftest import compose, train
from runner.run_folder import load_config
from runner.optim.scaling import apply_lr_scaling
from runner.validate import problems_of


def scaled(*overrides: str):
    return apply_lr_scaling(compose("trainer.device=cpu", *overrides))


@pytest.mark.parametrize("overrides, lr", [
    (["optimizer=adamw", "optimizer.lr_scaling=sqrt", "optimizer.reference_batch=256", "trainer.batch_size=1024"],
     1e-3 * 2.0),                                                           # sqrt(1024 / 256) = 2
    (["optimizer=sgd", "optimizer.lr_scaling=linear", "optimizer.reference_batch=256", "trainer.batch_size=64"],
     0.1 / 4),                                                              # 64 / 256
    (["optimizer=sgd", "optimizer.lr_scaling=rmt", "optimizer.reference_batch=32", "trainer.batch_size=128"],
     0.1 * 4),                                                              # RMT: SGD linear
    (["optimizer=adamw", "optimizer.lr_scaling=rmt", "optimizer.reference_batch=32", "trainer.batch_size=128"],
     1e-3 * 2),                                                             # RMT: Adam square root
    (["optimizer=lion", "optimizer.lr_scaling=none"], 1e-4),
])
def test_rules_scale_the_reference_lr_to_the_global_batch(overrides, lr):
    cfg = scaled(*overrides)
    assert cfg.optimizer.lr == pytest.approx(lr, rel=1e-12)


def test_a_wrapper_scales_its_base_optimizers_lr():
    cfg = scaled("optimizer=sam", "optimizer.base=adamw", "optimizer.lr_scaling=sqrt", "optimizer.reference_batch=32",
                 "trainer.batch_size=512")
    assert cfg.optimizer.base_optimizer.lr == pytest.approx(1e-3 * 4)
    assert cfg.optimizer.reference_lr == pytest.approx(1e-3)


def test_the_run_uses_and_records_the_scaled_lr_and_a_resume_never_compounds_it(tmp_path):
    summary, run_dir = train(tmp_path, "optimizer=adamw", "optimizer.lr_scaling=sqrt", "optimizer.reference_batch=256",
                             "trainer.batch_size=1024", "trainer.max_steps=2", "schedule=constant")
    recorded = OmegaConf.load(run_dir / "config.yaml")
    assert recorded.optimizer.lr == pytest.approx(2e-3) and recorded.optimizer.reference_lr == pytest.approx(1e-3)
    used = [float(line.split(",")[2]) for line in (run_dir / "lr_schedule.csv").read_text().splitlines()[1:]]
    assert used == pytest.approx([2e-3, 2e-3])  # the optimizer stepped with the scaled lr
    again = apply_lr_scaling(load_config(run_dir))
    assert again.optimizer.lr == pytest.approx(2e-3)
    smaller = load_config(run_dir)
    smaller.trainer.batch_size = 64
    assert apply_lr_scaling(smaller).optimizer.lr == pytest.approx(1e-3 * 0.5)  # from the reference, not from 2e-3


@pytest.mark.parametrize("overrides, message", [
    (["optimizer.reference_batch=256"], "optimizer.reference_batch=256 is set but no scaling rule; pass "
                                        "optimizer.lr_scaling=linear, sqrt or rmt (or drop optimizer.reference_batch)"),
    (["optimizer.lr_scaling=sqrt"], "optimizer.lr_scaling=sqrt needs the global batch its lr was tuned at; pass "
                                    "optimizer.reference_batch=<batch> (e.g. 256)"),
    (["optimizer.lr_scaling=cubic", "optimizer.reference_batch=256"],
     "optimizer.lr_scaling=cubic: choose none, linear, sqrt or rmt (linear for SGD, sqrt for Adam)"),
])
def test_inconsistent_settings_are_one_line_errors(overrides, message):
    assert list(problems_of(compose("trainer.device=cpu", *overrides))) == [message]
