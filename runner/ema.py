"""An exponential moving average of a model's weights and buffers (timm's ModelEmaV3, Polyak averaging).

After the u-th update (u = 1, 2, ..., one every `every` optimizer steps)
    theta_ema <- d_u theta_ema + (1 - d_u) theta           (floating tensors: parameters, BatchNorm statistics)
    b_ema <- b                                             (integer buffers: BatchNorm's num_batches_tracked)
with d_u = decay, or with `warmup` (timm's `use_warmup`, after @crowsonkb):
    d_u = 0 for u = 1 (the average starts at the weights after the first step), else
    d_u = min(decay, 1 - (1 + (u - 1) / gamma)^-power)     (gamma 1, power 2/3: timm's defaults)
so early averages are not dominated by the initial weights (0.9999 is reached after ~1M updates at power 2/3).
The average is a separate copy in eval mode: `trainer.ema.decay` evaluates it beside the live model
(`ema/val/*`), MESA (`distill=mesa`) uses it as its teacher, and both checkpoint its state.
"""
from __future__ import annotations

import copy

import torch

from runner.errors import require


def decay_problems(decay: float, key: str) -> list[str]:
    return [] if 0 < decay < 1 else [f"{key}={decay}: the decay per update lies in (0, 1), e.g. 0.9999"]


def check(cfg) -> list[str]:
    """distill=mesa evaluates its own EMA teacher as ema/val/*: a second average would write the same records."""
    ema = (cfg.get("trainer") or {}).get("ema") or {}
    distill = cfg.get("distill") or {}
    if ema.get("decay") and str(distill.get("_target_", "")).endswith("MESA"):
        return [f"trainer.ema.decay={ema.decay} with distill=mesa: MESA's teacher is already an EMA of the weights, "
                f"evaluated as ema/val/* (its decay is distill.decay); drop trainer.ema.decay"]
    return []


class WeightEMA:
    def __init__(self, model: torch.nn.Module, decay: float, warmup: bool = False, warmup_gamma: float = 1.0,
                 warmup_power: float = 2 / 3, every: int = 1):
        require(decay_problems(decay, "trainer.ema.decay"))
        self.decay, self.warmup, self.gamma, self.power, self.every = decay, warmup, warmup_gamma, warmup_power, every
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        pairs = list(zip(self.module.state_dict().values(), model.state_dict().values()))
        self.floats = ([e for e, _ in pairs if e.is_floating_point()], [m for e, m in pairs if e.is_floating_point()])
        self.others = [(e, m) for e, m in pairs if not e.is_floating_point()]
        self.updates = 0

    def decay_at(self, update: int) -> float:
        """d_u for the u-th update (1-based)."""
        if not self.warmup:
            return self.decay
        if update <= 1:
            return 0.0
        return min(self.decay, 1.0 - (1.0 + (update - 1) / self.gamma) ** -self.power)

    @torch.no_grad()
    def step(self, optimizer_steps: int) -> None:
        """Called after every optimizer step with the number of steps done; averages every `every` steps."""
        if optimizer_steps % self.every:
            return
        self.updates += 1
        torch._foreach_lerp_(self.floats[0], self.floats[1], 1.0 - self.decay_at(self.updates))
        for ema_value, model_value in self.others:
            ema_value.copy_(model_value)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.module(images)

    def state_dict(self) -> dict:
        return {"model": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["model"])
        self.updates = int(state["updates"])
