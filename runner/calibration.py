"""Calibration and selective prediction: ECE, AURC, post-hoc temperature scaling, the reliability diagram.

With confidence c_i = max_k p_ik of the model's predictive distribution p (softmax, or StableMax with
`loss.normalizer=stablemax`) and correctness a_i = [argmax_k p_ik = y_i] over n samples:
- ECE (Guo, Pleiss, Sun & Weinberger 2017, "On Calibration of Modern Neural Networks", eq. 3) with M
  equal-width bins B_m = {i : c_i in ((m-1)/M, m/M]}:  ECE = sum_m |B_m| / n * |acc(B_m) - conf(B_m)|
  = sum_m |sum_{i in B_m} (a_i - c_i)| / n. The bins are right-closed, as in Guo et al. and PS-KD's
  utils/metric.py (lgcnsai/PS-KD-Pytorch); PS-KD reports 10 bins x 100, divrun's default is 15.
- AURC (Geifman, Uziel & El-Yaniv 2019, "Bias-Reduced Uncertainty Estimation for Deep Neural Classifiers";
  PS-KD's `calc_aurc`): sort by confidence, most confident first (ties in sample order: a stable sort); the
  selective risk at coverage i/n is r_i = (errors among the first i) / i, and AURC = (1/n) sum_i r_i. E-AURC =
  AURC - AURC*, with AURC* = (1/n) sum_{j=1}^{e} j / (n - e + j) the value of a perfect ranking (e errors).
  PS-KD reports both x1000.
- Temperature scaling (Guo et al. 2017, Section 4.2): one T > 0 for every logit, p = normalizer(z / T), fitted
  on held-out data (never the test split) to minimise the NLL by L-BFGS, as Guo et al.'s code
  (gpleiss/temperature_scaling) does; here over log T (T stays positive) with a strong-Wolfe line search from
  T = 1, then clamped to [0.05, 20] (a split the model gets all right drives T to 0). The NLL is convex in 1/T,
  so its one stationary point is the minimum; the test checks it against scipy's bounded scalar search.
- The correctness-aware loss (Liu, Wang, Zou, Zou & Zheng 2024, "Optimizing Calibration by Gaining Aware of
  Prediction Correctness", arXiv 2404.13016; official code liuyvchi/Correctness-aware-calibration,
  src/cal_metrics/temperature_scaling_CA.py, `loss_CA`): the squared gap between the calibrated confidence
  and the correctness of the prediction, (c_i - a_i)^2, weighted so correct and wrong samples count equally
  (correct ones by 1 - acc, wrong ones by acc), normalised by the weights' sum. `eval.calibrate=temperature_ca`
  fits the one temperature by this loss instead of the NLL. The paper trains a small calibrator network that
  predicts a per-sample temperature from the outputs on transformed copies of each image; that calibrator is
  not implemented here, only its loss on global temperature scaling.
"""
from __future__ import annotations

import math
import textwrap
from pathlib import Path

import torch
import torch.nn.functional as F

TEMPERATURE_BOUNDS = (0.05, 20.0)
CALIBRATION_OBJECTIVES = ("temperature", "temperature_ca")


# ---- metrics ------------------------------------------------------------------------------------------
def bin_index(confidence: torch.Tensor, bins: int) -> torch.Tensor:
    """Bin m (0-based) holds confidences in (m/M, (m+1)/M]; the clamp keeps NaN (a diverged model) in range."""
    return (confidence * bins).ceil().long().sub_(1).clamp_(0, bins - 1)


def binned(confidence: torch.Tensor, correct: torch.Tensor, bins: int) -> torch.Tensor:
    """(3, bins): per bin the count, the sum of confidences and the number correct (sums, so shards add up)."""
    stats = torch.zeros(3, bins, device=confidence.device, dtype=torch.float32)
    index = bin_index(confidence, bins)
    for row, values in enumerate((torch.ones_like(confidence), confidence, correct)):
        stats[row].index_add_(0, index, values.float())
    return stats


def ece_from_bins(stats: torch.Tensor) -> torch.Tensor:
    """sum_m |correct(B_m) - confidence sum(B_m)| / n from `binned`'s sums."""
    return (stats[1] - stats[2]).abs().sum() / stats[0].sum()


def aurc(confidence: torch.Tensor, correct: torch.Tensor) -> tuple[float, float]:
    """(AURC, E-AURC) of the risk-coverage curve, most confident first."""
    order = torch.sort(confidence.double(), descending=True, stable=True).indices
    errors = (~correct.bool()[order]).double()
    n = len(errors)
    coverage_counts = torch.arange(1, n + 1, device=errors.device, dtype=torch.float64)
    value = (errors.cumsum(0) / coverage_counts).mean()
    wrong = int(errors.sum().item())
    j = torch.arange(1, wrong + 1, dtype=torch.float64)
    optimal = (j / (n - wrong + j)).sum().item() / n
    return value.item(), value.item() - optimal


# ---- temperature scaling ------------------------------------------------------------------------------
def log_probs(logits: torch.Tensor, normalize=None) -> torch.Tensor:
    """log p in float32 or wider: log_softmax of the logits, or of `normalize(logits)` (log StableMax: the loss's
    `scores`)."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return F.log_softmax(normalize(logits) if normalize else logits, dim=-1)


def nll_at(logits: torch.Tensor, labels: torch.Tensor, temperature, normalize=None) -> torch.Tensor:
    """The NLL of p = normalizer(logits / temperature), a 0-d float64 tensor (differentiable in a tensor T)."""
    return F.nll_loss(log_probs(logits.double() / temperature, normalize), labels)


def ca_loss_at(logits: torch.Tensor, labels: torch.Tensor, temperature, normalize=None) -> torch.Tensor:
    """The correctness-aware loss of the official code at one temperature (correctness of the uncalibrated
    prediction, which a temperature does not change), a 0-d float64 tensor."""
    confidence = log_probs(logits.double() / temperature, normalize).max(-1).values.exp()
    correct = (logits.argmax(-1) == labels).double()
    accuracy = correct.mean()
    weights = torch.where(correct.bool(), 1 - accuracy, accuracy)
    if weights.sum() == 0:  # all right or all wrong: nothing to balance
        weights = torch.ones_like(weights)
    return (weights * (confidence - correct).square()).sum() / weights.sum()


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, objective: str = "temperature",
                    normalize=None) -> float:
    """The temperature minimising the NLL (`temperature`) or the correctness-aware loss (`temperature_ca`) of
    held-out `logits`, by L-BFGS over log T: only what is passed in is read."""
    loss_at = {"temperature": nll_at, "temperature_ca": ca_loss_at}[objective]
    logits = logits.detach().double()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=100, tolerance_grad=1e-10, tolerance_change=1e-14,
                                  line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = loss_at(logits, labels, log_t.exp(), normalize)
        loss.backward()
        return loss

    optimizer.step(closure)
    low, high = TEMPERATURE_BOUNDS
    return min(max(math.exp(log_t.item()), low), high)


def calibrated(holdout, test, objective: str) -> tuple[dict, torch.Tensor]:
    """Temperature scaling fitted on the holdout pass's logits alone (`SplitEvaluation`s kept with their logits)
    and applied to the test pass's:
    calibrated/temperature, nll, ece, aurc, eaurc, and the test split's calibrated bins."""
    temperature = fit_temperature(holdout.logits, holdout.labels, objective, test.normalize)
    log_p = log_probs(test.logits / temperature, test.normalize)
    confidence = log_p.max(-1).values.exp()
    stats = binned(confidence, test.correct, test.bins)
    value, excess = aurc(confidence, test.correct)
    return {"calibrated/temperature": temperature, "calibrated/nll": F.nll_loss(log_p, test.labels).item(),
            "calibrated/ece": ece_from_bins(stats).item(), "calibrated/aurc": value, "calibrated/eaurc": excess}, stats


# ---- the reliability diagram --------------------------------------------------------------------------
def reliability_diagram(path: Path, panels: dict[str, torch.Tensor], title: str) -> None:
    """One panel per entry (`binned` sums): accuracy per confidence bin against the diagonal, each bin's mean
    confidence and its gap to the accuracy, the share of samples per bin below; the ECE in each panel's title."""
    from matplotlib.figure import Figure  # the Agg canvas without pyplot's global state

    fig = Figure(figsize=(4.2 * len(panels), 5.2), dpi=110)
    axes = fig.subplots(2, len(panels), squeeze=False, gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    for column, (name, stats) in enumerate(panels.items()):
        stats = stats.detach().double().cpu()
        bins = stats.shape[1]
        edges = torch.linspace(0, 1, bins + 1)
        centres, width = (edges[:-1] + edges[1:]) / 2, 1 / bins
        filled = stats[0] > 0
        accuracy = torch.where(filled, stats[2] / stats[0].clamp_min(1), torch.zeros(bins))
        confidence = torch.where(filled, stats[1] / stats[0].clamp_min(1), centres)
        top, bottom = axes[0, column], axes[1, column]
        top.bar(centres, accuracy, width=width, edgecolor="black", color="tab:blue", label="accuracy")
        top.plot(centres[filled], confidence[filled], "o", color="tab:red", markersize=4, label="mean confidence")
        top.vlines(centres[filled], accuracy[filled], confidence[filled], color="tab:red", linewidth=2, alpha=0.6,
                   label="gap")
        top.plot([0, 1], [0, 1], "k--", linewidth=1)
        top.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy")
        top.set_title(f"{name}: ECE {100 * ece_from_bins(stats).item():.2f} ({bins} bins, x100)", fontsize=10)
        top.legend(loc="upper left", fontsize=8)
        bottom.bar(centres, stats[0] / stats[0].sum(), width=width, edgecolor="black", color="tab:gray")
        bottom.set(xlabel="confidence", ylabel="share")
    fig.suptitle(textwrap.fill(title.replace(",", ", "), 50 * len(panels)), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, pil_kwargs={"compress_level": 1})
