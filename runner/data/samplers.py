"""Which samples an epoch draws: the `sampler` group. A sampler replaces `sharding.epoch_order` in both loaders'
epoch plans: its order is drawn from the epoch's generator (seed, epoch) alone, the same on every rank before
sharding, so any epoch replays from any batch (resumes, DDP) and a sampler has no state to checkpoint.

uniform         a fresh permutation of the training set each epoch, every sample once: the order divrun always
                drew (`epoch_order`, bit for bit).
class_balanced  Temperature Sampling, the "upsample" side of Li, Xu, Tan, Murray & Khashabi, "Upsample or
                Upweight? Balanced Training on Heavily Imbalanced Datasets" (NAACL 2025, arXiv 2410.04579; the
                issue cites it as Lyu et al.). Class k of n_k training samples is drawn with probability

                    q_k(tau) = n_k^(1/tau) / sum_j n_j^(1/tau),

                each of its samples alike (sample i with pi_i = q_{y_i} / n_{y_i}), N draws with replacement per
                epoch (N the training set's size: an epoch stays N samples long). tau = 1 gives the natural class
                rates, tau -> inf (`temperature: null`, the default) class-balanced sampling (q_k = 1/K), and tau < 1
                sharpens the imbalance (0.5: q_k proportional to n_k^2). This is the convention of the multilingual
                work the paper builds on (Arivazhagan et al. 2019; fairseq's `(size / total) ** (1 / temp)`); from
                this environment only the paper's abstract could be read, which names the method Temperature
                Sampling and says a higher temperature upsamples the low-resource side more.
cooldown        Cooldown (the same paper): "starts by heavily upsampling low-resource languages to accelerate
                convergence and gradually reduces the upsampling to prevent overfitting". The exponent 1/tau
                moves linearly over the run's epochs from 1/`start` (inf, null: class-balanced) to 1/`end`
                (1: natural rates) between the fractions `begin` and `finish` of the run (epoch e at
                u = e / (epochs - 1)). With `upweight: true` (default) the loss of a sample of class k is
                multiplied by q_k(start) / q_k(tau_e) at the step's weighting point (runner/step.py), so every epoch's
                expected loss stays sum_k q_k(start) L_k: the run moves from upsampling to upweighting (at tau_e = 1
                the weights are the paper's Scalarization of the start mixture), which is how the issue states the
                schedule. The paper's own shape of the decrease and its defaults are not confirmed here (see above):
                begin 0.5, finish 1.0 are divrun's; `upweight: false` is the bare temperature decrease.
"""
from __future__ import annotations

import math

import torch
from omegaconf import DictConfig

from runner.data.sharding import epoch_order
from runner.errors import ConfigError
from runner.weighting import per_sample_problems


def check_sampling_temperature(temperature: float | None, key: str) -> None:
    if temperature is not None and not temperature > 0:
        raise ConfigError(f"{key}={temperature}: the sampling temperature must be > 0 (1: natural class rates, "
                          f"larger: more upsampling of rare classes, null: class-balanced)")


def exponent(temperature: float | None) -> float:
    """1 / tau, with tau = None (infinite) giving 0: every class alike."""
    return 0.0 if temperature is None or math.isinf(temperature) else 1.0 / temperature


def class_rates(counts: torch.Tensor, power: float) -> torch.Tensor:
    """q_k proportional to n_k^power over the classes present (an empty class is never drawn)."""
    present = counts > 0
    weights = torch.where(present, counts.double().clamp_min(1) ** power, torch.zeros((), dtype=torch.float64))
    return weights / weights.sum()


class Uniform:
    """`sampler=uniform`: every sample once per epoch, in a fresh random order."""
    name, needs_labels = "uniform", False

    def setup(self, size: int, labels: torch.Tensor | None, num_classes: int, epochs: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def order(self, epoch: int, gen: torch.Generator) -> torch.Tensor:
        return epoch_order(self.size, True, gen)

    def class_multipliers(self, epoch: int) -> torch.Tensor | None:
        """Per-class loss multipliers the step applies in this epoch (None: none)."""
        return None


class ClassBalanced(Uniform):
    """`sampler=class_balanced`: Temperature Sampling (see the module's docstring)."""
    name, needs_labels = "class_balanced", True

    def __init__(self, temperature: float | None = None):
        check_sampling_temperature(temperature, "sampler.temperature")
        self.temperature = temperature

    def setup(self, size, labels, num_classes, epochs) -> None:
        super().setup(size, labels, num_classes, epochs)
        self.labels, self.epochs = labels, epochs
        self.counts = torch.bincount(labels, minlength=num_classes)

    def power(self, epoch: int) -> float:
        return exponent(self.temperature)

    def sample_probabilities(self, epoch: int) -> torch.Tensor:
        """pi_i = q_{y_i} / n_{y_i}: the chance that one draw is sample i."""
        return (class_rates(self.counts, self.power(epoch)) / self.counts.clamp_min(1))[self.labels]

    def order(self, epoch, gen) -> torch.Tensor:
        return torch.multinomial(self.sample_probabilities(epoch), self.size, replacement=True, generator=gen)


class Cooldown(ClassBalanced):
    """`sampler=cooldown`: the temperature falls from `start` to `end` over [begin, finish] of the run."""
    name = "cooldown"

    def __init__(self, start: float | None = None, end: float | None = 1.0, begin: float = 0.5, finish: float = 1.0,
                 upweight: bool = True):
        check_sampling_temperature(start, "sampler.start")
        check_sampling_temperature(end, "sampler.end")
        if not 0 <= begin < finish <= 1:
            raise ConfigError(f"sampler.begin={begin}, sampler.finish={finish}: the cooldown runs between two "
                              f"fractions of the run, 0 <= begin < finish <= 1")
        self.start, self.end, self.begin, self.finish, self.upweight = start, end, begin, finish, upweight

    @classmethod
    def validate_config(cls, cfg: DictConfig) -> list[str]:
        upweights = cfg.sampler.get("upweight", True)
        return per_sample_problems(cfg, "sampler=cooldown", True, "pass sampler.upweight=false") if upweights else []

    def power(self, epoch: int) -> float:
        progress = epoch / max(self.epochs - 1, 1)
        blend = min(max((progress - self.begin) / (self.finish - self.begin), 0.0), 1.0)
        return exponent(self.start) + (exponent(self.end) - exponent(self.start)) * blend

    def class_multipliers(self, epoch):
        if not self.upweight:
            return None
        target, drawn = class_rates(self.counts, exponent(self.start)), class_rates(self.counts, self.power(epoch))
        return torch.where(drawn > 0, target / drawn.clamp_min(1e-300), torch.zeros((), dtype=torch.float64)).float()


class Passes:
    """`count` draws of a sampler's epoch, one after another: hard selection's candidates, so each epoch scores
    every sample `count` times (runner/selection.py) while training on as many samples as one pass."""

    def __init__(self, sampler, count: int):
        self.sampler, self.count = sampler, count

    def __len__(self) -> int:
        return self.count * len(self.sampler)

    def order(self, epoch: int, gen: torch.Generator) -> torch.Tensor:
        return torch.cat([self.sampler.order(epoch, gen) for _ in range(self.count)])
