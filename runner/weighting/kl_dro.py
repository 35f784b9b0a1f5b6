"""KL-regularised distributionally robust weights (Sow, Lin, Wang & Liang, "Doubly Robust Instance-Reweighted
Adversarial Training", ICLR 2024, arXiv 2308.00311; the issue cites it as Xu et al.), here on the clean loss.

The instance weights solve the KL-regularised inner maximisation over the simplex,

    max_{w in simplex} sum_i w_i l_i - r KL(w || uniform)   =>   w_i = exp(l_i / r) / sum_j exp(l_j / r),

a softmax of the per-sample losses with temperature r = `temperature`: r -> inf is the plain mean, r -> 0 the
worst sample alone. The loss is sum_i w_i l_i = mean_i m_i l_i, m_i = N w_i. The paper applies it to the
adversarial losses of its DONE framework (and solves a bilevel problem around it); adversarial training is out
of scope here, and the closed form is the one the paper's KL-regularised objective gives (tested against a
numerical maximisation). No official code was public when this was written (the paper: "codes will be
available soon"). Over the global batch under DDP, as runner/weighting/loss_rank.py.
"""
from __future__ import annotations

from runner.weighting import Weighting, check_temperature, global_batch, softmax_multipliers


class KLDRO(Weighting):
    name, active = "kl_dro", True

    def __init__(self, temperature: float = 1.0):
        check_temperature(temperature, "weighting.temperature")
        self.temperature = temperature

    def multipliers(self, losses, labels):
        everything, mine = global_batch(losses)
        return softmax_multipliers(everything, self.temperature, mine)
