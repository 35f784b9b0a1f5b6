"""Learning-rate schedules as pure functions of the optimizer step.

A schedule maps step t (0-based, the t-th update) of a T-step run to a multiplier of each param group's
configured lr. Warmup ramps linearly from `warmup_start` (default 0) to 1 over W = `warmup` steps (an int)
or a fraction of T (a float < 1): factor(t) = s + (1 - s) (t + 1) / W;
after it, the decay shape f of the progress u = (t - W) / (T - W) in [0, 1) is floored:
    factor(t) = floor + (1 - floor) * f(u)
so `floor` is the final lr as a fraction of the peak. `conf/schedule/*.yaml` names a subclass with
`_partial_: true`; the trainer supplies `total_steps` and `steps_per_epoch`. Being a function of the step
alone, a schedule resumes exactly from a checkpoint's step and is written out whole into the run folder
(lr_schedule.csv and .png: runner/run_folder.py).
"""
from __future__ import annotations

import bisect
import math
from pathlib import Path

import numpy as np

from runner import run_folder
from runner.errors import ConfigError


class Schedule:
    def __init__(self, total_steps: int, steps_per_epoch: int = 1,
                 warmup: int | float = 0, floor: float = 0.0,
                 warmup_start: float = 0.0, search_space: dict | None = None):  # divrun-tune's ranges: unused here
        if total_steps <= 0:
            raise ConfigError(f"schedule: the run has {total_steps} steps; set trainer.epochs or trainer.max_steps > 0")
        if not 0.0 <= floor <= 1.0:
            raise ConfigError(f"schedule.floor={floor}: the final lr fraction must lie in [0, 1]")
        if not 0.0 <= warmup_start <= 1.0:
            raise ConfigError(f"schedule.warmup_start={warmup_start}: the first warmup lr fraction must lie in [0, 1]")
        self.warmup_start = warmup_start
        self.total_steps, self.steps_per_epoch, self.floor = total_steps, steps_per_epoch, floor
        self.warmup_steps = resolve_steps(warmup, total_steps, "schedule.warmup")
        self.decay_steps = total_steps - self.warmup_steps

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.warmup_start + (1 - self.warmup_start) * (step + 1) / self.warmup_steps
        return self.floor + (1 - self.floor) * self.decay(step - self.warmup_steps)

    def decay(self, steps_after_warmup: int) -> float:
        """The decay shape at a step counted from the end of warmup; most schedules use the progress u."""
        return self.shape(steps_after_warmup / self.decay_steps)

    def shape(self, progress: float) -> float:
        raise NotImplementedError

    def factors(self) -> list[float]:
        return [self(t) for t in range(self.total_steps)]


def total_steps(trainer, steps_per_epoch: int) -> int:
    """The run's length T in optimizer steps: trainer.max_steps, else trainer.epochs epochs."""
    return int(trainer.max_steps or trainer.epochs * steps_per_epoch)


def resolve_steps(value: int | float, total_steps: int, key: str) -> int:
    """A step count (int below total_steps) or a fraction of the run (float in [0, 1))."""
    if isinstance(value, float) and 0 <= value < 1:
        return int(round(value * total_steps))
    if isinstance(value, bool) or value < 0 or value >= total_steps or int(value) != value:
        raise ConfigError(f"{key}={value}: give steps (an int below {total_steps}) "
                          f"or a fraction of the run (a float in [0, 1))")
    return int(value)


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


class Poly(Schedule):
    """f(u) = (1 - u)^power (torch's PolynomialLR; power 1 is linear decay, 0.9 the segmentation classic)."""

    def __init__(self, total_steps: int, steps_per_epoch: int = 1, power: float = 0.9, **common):
        super().__init__(total_steps, steps_per_epoch, **common)
        if power <= 0:
            raise ConfigError(f"schedule.power={power}: the exponent must be > 0")
        self.power = power

    def shape(self, progress: float) -> float:
        return (1.0 - progress) ** self.power


class UBA(Schedule):
    """Unified Budget-Aware schedule (Tang et al., NeurIPS 2025, arXiv 2505.24452):
        f(u) = 2 v / (2 phi + (2 - phi) v),   v = 1 + cos(pi u)
    so eta_t = eta_min + (eta_max - eta_min) f(u). phi = 2 is cosine; phi < 2 holds the lr higher for longer,
    phi > 2 decays sooner. The denominator stays positive for every phi > 0.
    """

    def __init__(self, total_steps: int, steps_per_epoch: int = 1, phi: float = 1.0, **common):
        super().__init__(total_steps, steps_per_epoch, **common)
        if not phi > 0:
            raise ConfigError(f"schedule.phi={phi}: UBA's phi must be > 0 (phi = 2 is cosine)")
        self.phi = phi

    def shape(self, progress: float) -> float:
        v = 1 + math.cos(math.pi * progress)
        return 2 * v / (2 * self.phi + (2 - self.phi) * v)


class WSD(Schedule):
    """Warmup-stable-decay (MiniCPM, arXiv 2404.06395): the peak lr until the last `decay` part of the run
    (steps, or a fraction of T), then a cool-down over that part with progress v in [0, 1):
    1-sqrt: 1 - sqrt(v) (Haegele et al. 2024), linear: 1 - v, cosine: (1 + cos(pi v)) / 2."""
    COOLDOWNS = {"1-sqrt": lambda v: 1 - math.sqrt(v), "linear": lambda v: 1 - v,
                 "cosine": lambda v: 0.5 * (1 + math.cos(math.pi * v))}

    def __init__(self, total_steps: int, steps_per_epoch: int = 1,
                 decay: int | float = 0.2, cooldown: str = "1-sqrt", **common):
        super().__init__(total_steps, steps_per_epoch, **common)
        if cooldown not in self.COOLDOWNS:
            raise ConfigError(f"schedule.cooldown={cooldown}: choose one of {', '.join(self.COOLDOWNS)}")
        self.cooldown = self.COOLDOWNS[cooldown]
        self.cooldown_steps = resolve_steps(decay, total_steps, "schedule.decay")
        if self.cooldown_steps > self.decay_steps:
            raise ConfigError(f"schedule.decay={decay} ({self.cooldown_steps} steps) overlaps the warmup "
                              f"({self.warmup_steps} of {total_steps} steps); shorten one of them")

    def decay(self, steps_after_warmup: int) -> float:
        into_cooldown = steps_after_warmup - (self.decay_steps - self.cooldown_steps)
        return 1.0 if into_cooldown < 0 else self.cooldown(into_cooldown / self.cooldown_steps)


class MultiStep(Schedule):
    """f = gamma^k, k = the number of milestones passed (torch's MultiStepLR stepped once per epoch).
    Milestones are epochs (ints) or fractions of the run (floats < 1); He et al.'s CIFAR ResNets use
    x0.1 at 50% and 75% of the run."""

    def __init__(self, total_steps: int, steps_per_epoch: int = 1,
                 milestones: list = (0.5, 0.75), gamma: float = 0.1, **common):
        super().__init__(total_steps, steps_per_epoch, **common)
        if not 0 < gamma <= 1:
            raise ConfigError(f"schedule.gamma={gamma}: the factor per milestone must lie in (0, 1]")
        self.gamma = gamma
        self.milestone_steps = sorted(self.epoch_step(m, "schedule.milestones") for m in milestones)

    def epoch_step(self, epochs: int | float, key: str) -> int:
        """Epochs (an int) or a fraction of the run (a float < 1) as a step count."""
        if isinstance(epochs, float) and 0 < epochs < 1:
            return int(round(epochs * self.total_steps))
        if isinstance(epochs, (bool, float)) or epochs <= 0:
            raise ConfigError(f"{key}: {epochs} is neither epochs (an int > 0) nor a fraction of the run "
                              f"(a float in (0, 1))")
        return epochs * self.steps_per_epoch

    def decay(self, steps_after_warmup: int) -> float:
        step = steps_after_warmup + self.warmup_steps  # milestones count from the start of the run
        return self.gamma ** bisect.bisect_right(self.milestone_steps, step)


class Step(MultiStep):
    """f = gamma^floor(epoch / step_size) (torch's StepLR per epoch): a milestone every `step_size` epochs
    (an int) or every fraction of the run (a float < 1)."""

    def __init__(self, total_steps: int, steps_per_epoch: int = 1,
                 step_size: int | float = 30, gamma: float = 0.1, **common):
        super().__init__(total_steps, steps_per_epoch, milestones=(), gamma=gamma, **common)
        every = max(1, self.epoch_step(step_size, "schedule.step_size"))
        self.milestone_steps = list(range(every, total_steps, every))


class Refined(Schedule):
    """Refined schedule (Defazio, Cutkosky, Mehta, Mishchenko 2023, "When, Why and How Much?", arXiv 2310.07831)
    from the per-step gradient norms G_t an earlier run recorded in `<source>/grad_norms.csv`:
        w_t = G_t^-2 (SGD-like, L2 norms) or G_t^-1 (Adam-family, L1 norms),  eta_t ~ w_t * sum_{s>t} w_s,
    so the last step is 0, resampled linearly to this run's T - W steps and scaled to peak 1.

    `smoothing` > 0 is the reference pipeline's sigma2 (facebookresearch/adaptive_scheduling, visual.py and its
    README; where they differ from the paper's text, the code wins): the norms are median-filtered with a window
    of 2 * (int(smoothing * 10,000) // 2) + 1 points (1,001 at 0.1) at a resolution of max(n, 10,000) points
    (a shorter run is first interpolated up to 10,000 points; a longer one is filtered step by step, so the
    window is 1,001 steps however long the run), then interpolated to 10,000 points, where the closed form is
    evaluated (`smoothed_norms`). `smoothing: 0` applies the closed form to the recorded norms themselves.
    The reference's other step, dropping the first and last two values of its wandb exports, is data cleaning
    that divrun's own grad_norms.csv does not need."""

    def __init__(self, total_steps: int, steps_per_epoch: int = 1,
                 source: str | None = None, smoothing: float = 0.1, norm: str = "auto",
                 run_optimizer: str | None = None, **common):
        super().__init__(total_steps, steps_per_epoch, **common)
        from runner.config import update_rule
        from runner.optim import capabilities

        run_dir = require_source(source)
        source_config = run_folder.load_config(run_dir).optimizer
        source_optimizer, source_adaptive = update_rule(source_config), capabilities(source_config).adaptive
        if norm == "auto":
            run_adaptive = capabilities(run_optimizer).adaptive if run_optimizer else source_adaptive
            if source_adaptive is None or run_adaptive is None:
                unknown = source_optimizer if source_adaptive is None else run_optimizer
                raise ConfigError(f"schedule.norm=auto: {unknown} does not declare whether it is adaptive (an "
                                  f"`adaptive` class attribute); set schedule.norm=l1 (Adam-family) or l2 (SGD-like)")
            if run_adaptive != source_adaptive:
                raise ConfigError(f"schedule.source={source} trained with {source_optimizer}, this run with "
                                  f"{run_optimizer}: refine from a run of the same optimizer family, or set "
                                  f"schedule.norm=l1 (Adam-family) or l2 (SGD-like) to choose the weights yourself")
            norm = "l1" if source_adaptive else "l2"
        if norm not in ("l1", "l2"):
            raise ConfigError(f"schedule.norm={norm}: choose auto, l1 (Adam-family) or l2 (SGD-like)")
        if not 0 <= (smoothing or 0) < 1:
            raise ConfigError(f"schedule.smoothing={smoothing}: the median window as a fraction of "
                              f"{RESOLUTION:,} points (the reference's sigma2) must lie in [0, 1)")
        norms = read_grad_norms(run_dir, norm, source)
        curve = refined_curve(smoothed_norms(norms, smoothing) if smoothing else norms, power=2 if norm == "l2" else 1)
        resampled = np.interp(np.linspace(0, 1, self.decay_steps), np.linspace(0, 1, len(curve)), curve)
        self.curve = resampled / resampled.max()

    def decay(self, steps_after_warmup: int) -> float:
        return float(self.curve[steps_after_warmup])


RESOLUTION = 10_000  # the reference pipeline's nvals: the least resolution it filters at, and its curve's length


def refined_curve(norms: np.ndarray, power: int) -> np.ndarray:
    """eta_t = w_t * sum_{s>t} w_s with w = G^-power (the refinement paper's closed form), peak-normalised."""
    weights = norms.astype(np.float64) ** -power
    later = np.cumsum(weights[::-1])[::-1] - weights  # sum over s > t
    curve = weights * later
    return curve / curve.max()


def smoothed_norms(norms: np.ndarray, smoothing: float) -> np.ndarray:
    """The reference pipeline's median filter, as RESOLUTION points: a sequence shorter than RESOLUTION is
    interpolated up to it, the median window is 2 * (int(smoothing * RESOLUTION) // 2) + 1 points whatever the
    length, the left edge repeats the first value (mode 'nearest'), the right edge mirrors the tail without
    repeating the last value (np.pad 'reflect' by two windows), and the result is interpolated to RESOLUTION
    points. scipy's running median keeps a million-step run at ~70 ms and O(n) memory (~32 MB)."""
    from scipy.ndimage import median_filter

    points = max(len(norms), RESOLUTION)
    dense = np.interp(np.linspace(0, 1, points), np.linspace(0, 1, len(norms)), norms)
    width = 2 * (int(smoothing * RESOLUTION) // 2) + 1
    pad = 2 * width
    filtered = median_filter(np.pad(dense, (0, pad), mode="reflect"), size=width, mode="nearest")[:-pad]
    return np.interp(np.linspace(0, 1, RESOLUTION), np.linspace(0, 1, points), filtered)


def require_source(source: str | None) -> Path:
    if not source:
        raise ConfigError("schedule=refined needs the folder of an earlier run: schedule.source=<run folder>")
    run_dir = Path(source)
    for name in (run_folder.CONFIG, run_folder.GRAD_NORMS):
        if not (run_dir / name).is_file():
            raise ConfigError(f"schedule.source={source} is not a divrun run folder with recorded gradient norms "
                              f"(no {name}); pass the folder an earlier `divrun` printed")
    return run_dir


def read_grad_norms(run_dir: Path, norm: str, source: str) -> np.ndarray:
    table = run_folder.read_grad_norms(run_dir)
    if table.shape[0] < 2:
        raise ConfigError(f"schedule.source={source} recorded {table.shape[0]} step(s); the refined schedule "
                          f"needs the gradient norms of a run of at least 2 steps")
    norms = table[np.argsort(table[:, 0], kind="stable"), 1 if norm == "l2" else 2]
    if norm == "l1" and not norms.any():
        raise ConfigError(f"schedule.source={source} recorded no L1 gradient norms (trainer.grad_norm_l1 was off); "
                          f"rerun it with trainer.grad_norm_l1=true, or set schedule.norm=l2")
    norms = norms[np.isfinite(norms) & (norms > 0)]  # steps skipped by the fp16 scaler record inf
    if len(norms) < 2:
        raise ConfigError(f"schedule.source={source} has fewer than 2 finite, positive {norm} gradient norms")
    return norms
