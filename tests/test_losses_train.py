"""`divrun loss=<name>` trains digits end to end with its defaults: the loss's YAML and divrun's own defaults
(small_cnn, SGD, cosine, 30 epochs). The only overrides change no training step: no progress bar, the CPU,
and a checkpoint only at the end."""
from __future__ import annotations

import json

import pytest

from conftest import compose
from test_losses import LOSS_NAMES

AS_IS = ["logger.progress=false", "trainer.device=cpu", "trainer.checkpoint_every=null"]


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_loss_trains_digits_with_its_defaults(tmp_path, name):
    from runner.job import run_job

    summary = run_job(compose(f"loss={name}", *AS_IS), tmp_path / "run")
    assert summary["status"] == "finished"
    assert summary["final_val_acc1"] >= 0.9, summary["final_val_acc1"]
    records = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    evals = [r for r in map(json.loads, records) if "val/ece" in r]
    assert 0 <= evals[-1]["val/ece"] <= 1 and evals[-1]["val/nll"] > 0


def test_pearson_chi2_needs_clipping_with_the_default_recipe(tmp_path):
    """Why chi2 defaults to Neyman: Pearson on one-hot labels (1/p_y - 1) collapses unclipped (to chance, or
    all the way to NaN gradients: which of the two depends on float summation order), trains clipped."""
    from runner.job import run_job
    from runner.nonfinite import Diverged

    base = ["loss=chi2", "loss.form=pearson", "loss.smoothing=0", *AS_IS]
    try:
        unclipped = run_job(compose(*base), tmp_path / "unclipped")["final_val_acc1"]
    except Diverged:
        unclipped = 0.0  # the collapse reached non-finite gradients
    clipped = run_job(compose(*base, "trainer.grad_clip=2"), tmp_path / "clipped")
    assert unclipped < 0.5 <= 0.9 <= clipped["final_val_acc1"]
