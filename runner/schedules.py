"""Learning-rate schedules as pure functions of the optimizer step.

A schedule maps step t (0-based, the t-th update) of a T-step run to a multiplier of each param group's
configured lr. Warmup ramps linearly from `warmup_start` (default 0) to 1 over `warmup` steps (an int) or a
fraction of T (a float < 1): factor(t) = s + (1 - s) (t + 1) / W;
after it, the decay shape f(u) of the progress u = (t - W) / (T - W) in [0, 1) is floored:
    factor(t) = floor + (1 - floor) * f(u)
so `floor` is the final lr as a fraction of the peak. `conf/schedule/*.yaml` names a subclass with
`_partial_: true`; the trainer supplies `total_steps` and `steps_per_epoch`.
"""
from __future__ import annotations

import math

from runner.errors import ConfigError


class Schedule:
    def __init__(self, total_steps: int, steps_per_epoch: int = 1, warmup: int | float = 0, floor: float = 0.0,
                 warmup_start: float = 0.0):
        if total_steps <= 0:
            raise ConfigError(f"schedule: the run has {total_steps} steps; set trainer.epochs or trainer.max_steps > 0")
        if not 0.0 <= floor <= 1.0:
            raise ConfigError(f"schedule.floor={floor}: the final lr fraction must lie in [0, 1]")
        if not 0.0 <= warmup_start <= 1.0:
            raise ConfigError(f"schedule.warmup_start={warmup_start}: the first warmup lr fraction must lie in [0, 1]")
        self.warmup_start = warmup_start
        self.total_steps, self.steps_per_epoch, self.floor = total_steps, steps_per_epoch, floor
        self.warmup_steps = resolve_warmup(warmup, total_steps)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.warmup_start + (1 - self.warmup_start) * (step + 1) / self.warmup_steps
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return self.floor + (1 - self.floor) * self.shape(progress)

    def shape(self, progress: float) -> float:
        raise NotImplementedError

    def factors(self) -> list[float]:
        return [self(t) for t in range(self.total_steps)]


def resolve_warmup(warmup: int | float, total_steps: int) -> int:
    if isinstance(warmup, float) and 0 <= warmup < 1:
        return int(round(warmup * total_steps))
    if warmup < 0 or warmup >= total_steps or int(warmup) != warmup:
        raise ConfigError(f"schedule.warmup={warmup}: give steps (an int below {total_steps}) "
                          f"or a fraction of the run (a float in [0, 1))")
    return int(warmup)


class Constant(Schedule):
    """f(u) = 1."""

    def shape(self, progress: float) -> float:
        return 1.0


class Cosine(Schedule):
    """f(u) = (1 + cos(pi u)) / 2 (Loshchilov & Hutter 2017, without restarts)."""

    def shape(self, progress: float) -> float:
        return 0.5 * (1 + math.cos(math.pi * progress))


class Linear(Schedule):
    """f(u) = 1 - u: lr_t = lr * (T - t) / (T - W) after warmup (the refinement paper's default)."""

    def shape(self, progress: float) -> float:
        return 1.0 - progress
