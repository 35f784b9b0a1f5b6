"""ECE and AURC against hand-computed values and PS-KD's metric code (written plainly here), temperature
scaling on a miscalibrated model, the correctness-aware objective, and the reliability diagram."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import minimize_scalar

from runner.calibration import (aurc, binned, ca_loss_at, ece_from_bins, fit_temperature, nll_at,
                                reliability_diagram)
from runner.losses.stablemax import log_stablemax


def test_ece_equals_the_hand_computed_value_with_right_closed_bins():
    confidence = torch.tensor([0.95, 0.88, 1.0, 0.5, 0.45, 0.25, 0.72, 0.78])
    correct = torch.tensor([1, 0, 1, 1, 0, 0, 1, 1])
    # 4 bins: (0, .25] {0.25: wrong}; (.25, .5] {0.5: right, 0.45: wrong}; (.5, .75] {0.72: right};
    # (.75, 1] {0.95 r, 0.88 w, 1.0 r, 0.78 r}. |sum(correct) - sum(conf)| per bin: .25, |1 - .95| = .05,
    # |1 - .72| = .28, |3 - 3.61| = .61; ECE = (.25 + .05 + .28 + .61) / 8
    stats = binned(confidence, correct, 4)
    assert stats[0].tolist() == [1, 2, 1, 4]
    assert abs(ece_from_bins(stats).item() - (0.25 + 0.05 + 0.28 + 0.61) / 8) < 1e-6
    # 10 bins: 0.5 belongs to (.4, .5] with 0.45, 0.25 to (.2, .3], 1.0 to the last bin with 0.95
    stats10 = binned(confidence, correct, 10)
    assert stats10[0].tolist() == [0, 0, 1, 0, 2, 0, 0, 2, 1, 2]
    expected10 = (0.25 + abs(1 - 0.95) + abs(2 - 1.5) + 0.88 + abs(2 - 1.95)) / 8
    assert abs(ece_from_bins(stats10).item() - expected10) < 1e-6


def pskd_metric(confidences: np.ndarray, truths: np.ndarray, bin_size: float = 0.1):
    """utils/metric.py of PS-KD-Pytorch: ECE x100 with (lower, upper] bins, AURC and E-AURC x1000."""
    predictions, max_confs = confidences.argmax(1), confidences.max(1)
    ece = 0.0
    for upper in np.arange(bin_size, 1 + bin_size, bin_size):
        members = (max_confs > upper - bin_size) & (max_confs <= upper)
        if members.any():
            ece += abs((predictions[members] == truths[members]).mean() - max_confs[members].mean()) * members.sum()
    order = np.argsort(max_confs)[::-1]
    wrong = (truths[order] != predictions[order])
    risk = np.cumsum(wrong) / np.arange(1, len(wrong) + 1)
    n, e = len(wrong), wrong.sum()
    optimal = np.sum(np.arange(1, e + 1) / (n - e + np.arange(1, e + 1))) / n
    return 100 * ece / len(truths), 1000 * risk.mean(), 1000 * (risk.mean() - optimal)


def test_ece_and_aurc_match_pskd_metric_code():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2000, 10, generator=gen, dtype=torch.float64) * torch.rand(2000, 1, generator=gen) * 5
    labels = torch.randint(0, 10, (2000,), generator=gen)
    logits[torch.arange(2000), labels] += 2
    probs = logits.softmax(-1)
    confidence, correct = probs.max(-1).values, probs.argmax(-1) == labels
    ece, aurc_x1000, eaurc_x1000 = pskd_metric(probs.numpy(), labels.numpy())
    assert abs(100 * ece_from_bins(binned(confidence, correct, 10)).item() - ece) < 1e-3
    ours, ours_e = aurc(confidence, correct)
    assert abs(1000 * ours - aurc_x1000) < 1e-6 and abs(1000 * ours_e - eaurc_x1000) < 1e-6


def test_aurc_equals_the_hand_computed_value():
    confidence, correct = torch.tensor([0.6, 0.9, 0.7, 0.8]), torch.tensor([0, 1, 1, 0])
    # most confident first: 0.9 r, 0.8 w, 0.7 r, 0.6 w; risks 0, 1/2, 1/3, 2/4
    value, excess = aurc(confidence, correct)
    assert abs(value - (0 + 1 / 2 + 1 / 3 + 1 / 2) / 4) < 1e-12
    assert abs(excess - (value - (1 / 3 + 2 / 4) / 4)) < 1e-12  # perfect ranking: r, r, w, w
    assert aurc(torch.tensor([0.9, 0.8, 0.2]), torch.tensor([1, 1, 0]))[1] == pytest.approx(0.0)


def miscalibrated(n: int, seed: int, scale: float = 3.0, k: int = 10):
    """Labels drawn from softmax(z) (so z is calibrated) and a model whose logits are scale * z."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, k, generator=gen, dtype=torch.float64) * 1.5
    labels = torch.multinomial(z.softmax(-1), 1, generator=gen).squeeze(1)
    return scale * z, labels


def scipy_minimum(loss_at_temperature) -> float:
    """The temperature in [0.05, 20] minimising a loss, by scipy's bounded scalar search over log T."""
    result = minimize_scalar(lambda log_t: loss_at_temperature(math.exp(log_t)), method="bounded",
                             bounds=(math.log(0.05), math.log(20)), options={"xatol": 1e-9})
    return math.exp(result.x)


@pytest.mark.parametrize("scale", [3.0, 0.4])
def test_temperature_scaling_lowers_the_nll_of_an_over_or_underconfident_model(scale):
    holdout_logits, holdout_labels = miscalibrated(4000, 0, scale)
    test_logits, test_labels = miscalibrated(4000, 1, scale)
    temperature = fit_temperature(holdout_logits, holdout_labels)
    assert abs(temperature - scale) < 0.15 * scale  # recovers the miscalibration
    assert nll_at(holdout_logits, holdout_labels, temperature) < nll_at(holdout_logits, holdout_labels, 1.0) - 0.05
    assert nll_at(test_logits, test_labels, temperature) < nll_at(test_logits, test_labels, 1.0) - 0.05
    # scipy minimising the same NLL, written plainly, over log T
    best = scipy_minimum(lambda t: F.cross_entropy(holdout_logits / t, holdout_labels).item())
    assert temperature == pytest.approx(best, rel=1e-4)
    calibrated = F.softmax(test_logits / temperature, -1)
    before = ece_from_bins(binned(test_logits.softmax(-1).max(-1).values, test_logits.argmax(-1) == test_labels, 15))
    after = ece_from_bins(binned(calibrated.max(-1).values, calibrated.argmax(-1) == test_labels, 15))
    assert after < before


def test_correctness_aware_objective_is_the_official_weighted_squared_error():
    logits, labels = miscalibrated(3000, 2, 3.0)
    t = 1.7
    confidence = (logits / t).softmax(-1).max(-1).values
    correct = (logits.argmax(-1) == labels).double()
    acc = correct.mean()
    weights = torch.where(correct.bool(), 1 - acc, acc)
    expected = ((weights * (confidence - correct) ** 2).sum() / weights.sum()).item()
    assert abs(ca_loss_at(logits, labels, t) - expected) < 1e-12
    fitted = fit_temperature(logits, labels, "temperature_ca")
    best = scipy_minimum(lambda t: ((weights * ((logits / t).softmax(-1).max(-1).values - correct) ** 2).sum()
                                    / weights.sum()).item())
    assert fitted == pytest.approx(best, rel=1e-3)
    assert ca_loss_at(logits, labels, fitted) < ca_loss_at(logits, labels, 1.0)


def test_temperature_scaling_uses_the_models_normaliser():
    logits, labels = miscalibrated(2000, 3, 3.0)
    with_stablemax = fit_temperature(logits, labels, normalize=log_stablemax)
    assert nll_at(logits, labels, with_stablemax, log_stablemax) <= nll_at(logits, labels, 1.0, log_stablemax)
    assert abs(with_stablemax - fit_temperature(logits, labels)) > 1e-3  # a different p, a different optimum


def test_reliability_diagram_is_written(tmp_path):
    logits, labels = miscalibrated(500, 4)
    probs = logits.softmax(-1)
    stats = binned(probs.max(-1).values, probs.argmax(-1) == labels, 10)
    reliability_diagram(tmp_path / "reliability.png", {"val": stats, "calibrated": stats}, "a run")
    assert (tmp_path / "reliability.png").stat().st_size > 10_000


def evaluated(logits, labels, bins=10, keep_logits=True, normalize=None, batch=300):
    from runner.evaluation import SplitEvaluation

    evaluation = SplitEvaluation(bins, torch.device("cpu"), normalize, keep_logits)
    for start in range(0, len(labels), batch):
        chunk, y = logits[start:start + batch], labels[start:start + batch]
        evaluation.add(chunk, y, F.cross_entropy(chunk, y, reduction="sum"))
    return evaluation, evaluation.finish()


def test_a_split_evaluation_in_batches_equals_the_metrics_of_the_whole_split():
    logits, labels = miscalibrated(1000, 5)
    logits = logits.float()
    _, metrics = evaluated(logits, labels)
    probs = logits.double().softmax(-1)
    ece, aurc_x1000, eaurc_x1000 = pskd_metric(probs.numpy(), labels.numpy())
    assert abs(100 * metrics["ece"] - ece) < 1e-3
    assert abs(1000 * metrics["aurc"] - aurc_x1000) < 1e-3 and abs(1000 * metrics["eaurc"] - eaurc_x1000) < 1e-3
    assert metrics["nll"] == pytest.approx(F.cross_entropy(logits.double(), labels).item(), rel=1e-6)
    assert metrics["acc1"] == (probs.argmax(-1) == labels).double().mean().item()
    stable, stable_metrics = evaluated(logits, labels, normalize=log_stablemax)  # the model's own p
    expected = -log_stablemax(logits.double()).gather(1, labels[:, None]).mean().item()
    assert stable_metrics["nll"] == pytest.approx(expected, rel=1e-5) and stable_metrics["acc1"] == metrics["acc1"]


def test_calibration_fits_on_the_holdout_only_and_lowers_the_test_nll():
    from runner.calibration import calibrated

    holdout, _ = evaluated(*miscalibrated(3000, 6))
    test, test_metrics = evaluated(*miscalibrated(3000, 7))
    metrics, stats = calibrated(holdout, test, "temperature")
    assert metrics["calibrated/nll"] < test_metrics["nll"] - 0.05 and metrics["calibrated/ece"] < test_metrics["ece"]
    assert stats[0].sum() == 3000
    scrambled_logits, scrambled_labels = miscalibrated(3000, 8, scale=0.2)  # a very different test split
    other, _ = evaluated(scrambled_logits, scrambled_labels)
    assert calibrated(holdout, other, "temperature")[0]["calibrated/temperature"] == metrics["calibrated/temperature"]
    assert calibrated(holdout, test, "temperature_ca")[0]["calibrated/temperature"] != metrics["calibrated/temperature"]
