"""dataset.holdout: a stratified part of the training set, fixed by the dataset's split seed, disjoint from the
training samples and from the test split, evaluated and logged as holdout/* beside val/*."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from conftest import compose, train
from runner.data.datasets import digits, synthetic
from runner.validate import problems_of


def rows(split) -> Counter:
    """Each sample (image bytes and label) with its multiplicity."""
    return Counter((bytes(img.numpy().tobytes()), int(label)) for img, label in zip(split.images, split.labels))


def test_the_holdout_partitions_the_training_set_stratified_and_leaves_the_test_split_alone():
    full, held = digits(), digits(holdout=0.1)
    assert len(held.holdout) == round(0.1 * len(full.train)) and len(held.train) + len(held.holdout) == len(full.train)
    assert rows(held.train) + rows(held.holdout) == rows(full.train)  # a partition of the training samples
    assert rows(held.val) == rows(full.val)                            # the test split is untouched
    # so every holdout sample is a training sample of the run without holdout (never a test one), and a
    # sample occurs in the training set and the holdout together as often as in the full training set
    assert not rows(held.holdout) - rows(full.train)
    classes = np.bincount(full.train.labels.numpy()) * 0.1
    assert np.abs(np.bincount(held.holdout.labels.numpy(), minlength=10) - classes).max() <= 1  # stratified


def test_the_holdout_is_fixed_by_the_split_seed_and_a_count_works_too():
    assert rows(digits(holdout=100).holdout) == rows(digits(holdout=100).holdout)
    assert rows(digits(holdout=100).holdout) != rows(digits(holdout=100, split_seed=1).holdout)
    assert len(digits(holdout=100).holdout) == 100
    generated = synthetic(train_size=200, val_size=50, holdout=0.25)
    assert len(generated.holdout) == 50 and len(generated.train) == 150


@pytest.mark.parametrize("value", [0, 1.5, 1437, -3])
def test_a_bad_holdout_is_one_line_naming_the_fix(value):
    problems = list(problems_of(compose(f"dataset.holdout={str(value).lower()}")))
    if value == 0:
        assert problems == []  # 0 is none
        return
    assert problems and problems[0].startswith(f"dataset.holdout={value}: pass a count below the 1437 training samples")


def test_a_run_evaluates_and_logs_the_holdout_beside_val(tmp_path):
    summary, run_dir = train(tmp_path, "dataset.holdout=0.1", "trainer.epochs=2")
    from runner.run_folder import read_metrics

    evals = [r for r in read_metrics(run_dir) if "val/acc1" in r]
    assert len(evals) == 2 and all({"holdout/acc1", "holdout/loss", "holdout/nll", "holdout/ece", "holdout/acc5"} <= set(r)
                                   for r in evals)
    assert summary["final_holdout_acc1"] == evals[-1]["holdout/acc1"] and summary["final_val_acc1"] == evals[-1]["val/acc1"]
    assert evals[-1]["holdout/acc1"] != evals[-1]["val/acc1"]  # different samples (144 vs 360)
