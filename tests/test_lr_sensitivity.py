"""The lr sensitivity of Wortsman et al. 2023 against hand-computed values."""
from __future__ import annotations

import math

import pytest

from runner.lr_sensitivity import lr_sensitivity


def test_sensitivity_is_the_mean_excess_over_the_best_lr_capped_at_the_initial_loss():
    # lr 1e-3: 0.9, 1e-2: 0.5 (best), 1e-1: 2.0 (below l_0 = 2.3: kept), 1: diverged, counts as l_0
    result = lr_sensitivity([1e-3, 1e-2, 1e-1, 1.0], [0.9, 0.5, 2.0, math.nan], [2.3, 2.3, 2.3, 2.3])
    assert result.best_lr == 1e-2 and result.best_loss == 0.5 and result.lrs == 4
    assert result.value == pytest.approx(((0.9 - 0.5) + 0 + (2.0 - 0.5) + (2.3 - 0.5)) / 4)


def test_seeds_are_averaged_per_lr_and_a_loss_above_l0_is_capped():
    result = lr_sensitivity([0.1, 0.1, 0.3, 0.3], [1.0, 0.8, 5.0, None], [2.0, 2.2, 2.0, 2.2])
    # lr 0.1: (1.0 + 0.8) / 2 = 0.9; lr 0.3: (min(5, 2.0) + 2.2) / 2 = 2.1
    assert result.best_loss == pytest.approx(0.9)
    assert result.value == pytest.approx((0 + 2.1 - 0.9) / 2)
    assert result.runs == 4


def test_a_flat_sweep_has_zero_sensitivity():
    assert lr_sensitivity([1e-4, 1e-3, 1e-2], [0.7, 0.7, 0.7], [2.3] * 3).value == 0


def test_no_runs_is_an_error():
    with pytest.raises(ValueError):
        lr_sensitivity([], [], [])
