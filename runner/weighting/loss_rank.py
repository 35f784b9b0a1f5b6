"""Dynamic loss-based sample reweighting (Sow, Woisetschlaeger, Bulusu, Wang, Jacobsen & Liang, "Dynamic
Loss-Based Sample Reweighting for Improved Large Language Model Pretraining", ICLR 2025, arXiv 2502.06733;
official code sowmaster/Sample-Level-Loss-Reweighting-ICLR-2025, `src/trainer.py` and its README).

Each step, the batch's losses are mapped to [-delta, delta] by the batch's own extremes,

    h_i = 2 delta l_i / (l_max - l_min) - delta (l_max + l_min) / (l_max - l_min)   (range clamped at 1e-6),

a weight function f shapes them,

    linupper   f(h) = min(h + delta, delta)    the paper's LinUpper: low losses down-weighted, the upper half equal
    quadratic  f(h) = 1 - h^2 / delta^2        the official code's "mid": both extremes down-weighted
    extremes   f(h) = |h|                      both extremes up-weighted

and the weights are the KL-regularised closed form over the batch,

    w_i = exp((f_i - max_j f_j) / r) / sum_j exp((f_j - max_k f_k) / r),   sum_i w_i = 1,

with r = `temperature` (the official `kl_reg`; 1.0 in its base config, 0.4 in its larger ones). The loss is
sum_i w_i l_i, i.e. mean_i m_i l_i with m_i = N w_i. For the first `warmup` steps (an int, or a fraction of
the run; the official `burnout_steps` 1000 of 20,000, i.e. 0.05) the weights are uniform. As in the official
code the batch is the global one: under DDP the losses are gathered from every rank (its all_gather) before
h, and each rank keeps its slice of N_global w (the code's `device_weights * world_size * len`). delta = 1 as
in every official config. Here l_i is the method's per-sample objective (the official code: the per-sequence
mean token loss).
"""
from __future__ import annotations

import torch

from runner.errors import ConfigError
from runner.weighting import Weighting, check_temperature, global_batch, softmax_multipliers

WEIGHT_FUNCTIONS = {
    "linupper": lambda h, delta: torch.minimum(h + delta, torch.full_like(h, delta)),
    "quadratic": lambda h, delta: 1 - h.square() / delta ** 2,
    "extremes": lambda h, delta: h.abs(),
}


def normalized_losses(losses: torch.Tensor, delta: float) -> torch.Tensor:
    """h: the batch's losses mapped linearly onto [-delta, delta] by their minimum and maximum."""
    low, high = losses.min(), losses.max()
    spread = (high - low).clamp_min(1e-6)
    return 2 * delta * losses / spread - delta * (high + low) / spread


class LossRank(Weighting):
    name, active = "loss_rank", True

    def __init__(self, fn: str = "linupper", temperature: float = 1.0, delta: float = 1.0,
                 warmup: int | float = 0.05):
        if fn not in WEIGHT_FUNCTIONS:
            raise ConfigError(f"weighting.fn={fn}: no such weight function; choose one of {', '.join(WEIGHT_FUNCTIONS)}")
        check_temperature(temperature, "weighting.temperature")
        if not delta > 0:
            raise ConfigError(f"weighting.delta={delta}: the normalised losses' half-range must be > 0; pass 1.0")
        if isinstance(warmup, bool) or not (warmup >= 0 and (isinstance(warmup, int) or warmup < 1)):
            raise ConfigError(f"weighting.warmup={warmup}: a step count (int >= 0) or a fraction of the run in [0, 1)")
        self.fn, self.temperature, self.delta, self.warmup = fn, temperature, delta, warmup

    def setup(self, context) -> None:
        super().setup(context)
        self.warmup_steps = self.warmup if isinstance(self.warmup, int) else round(self.warmup * context.steps)

    def multipliers(self, losses, labels):
        if self.context.progress.step < self.warmup_steps:
            return torch.ones_like(losses)
        everything, mine = global_batch(losses.float())
        shaped = WEIGHT_FUNCTIONS[self.fn](normalized_losses(everything, self.delta), self.delta)
        return softmax_multipliers(shaped, self.temperature, mine)
