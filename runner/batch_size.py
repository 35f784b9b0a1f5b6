"""The global batch size as a setting of the run: fixed (`batch=fixed`), or grown by AdAdaGrad's tests
(`batch=adaptive`).

AdAdaGrad (Lau, Liu & Kolar 2024, arXiv 2402.11215; official code timlautk/AdAdaGrad `tests.py`) grows the batch
b_k whenever a test says the batch gradient g_B = (1/b) sum_i g_i is too noisy an estimate of the full one:
    norm test (Byrd et al. 2012):            E||g_i - g_B||^2 / b <= eta^2 ||g_B||^2
    inner-product test (Bollapragada et al.): Var_i(<g_i, g_B>) / b <= theta^2 ||g_B||^4
    orthogonality test (its augmentation):   E||g_i - (<g_i, g_B> / ||g_B||^2) g_B||^2 / b <= nu^2 ||g_B||^2
and when one fails, b_{k+1} = max(b_k, ceil(the left side's numerator / the right side without b)), i.e.
    norm: Var / (eta^2 ||g_B||^2),   ip: Var_ip / (theta^2 ||g_B||^4),   orth: Var_orth / (nu^2 ||g_B||^2),
`ip+orth` taking the larger, capped at `max`. Variances are sample variances (correction 1), as the official code.

Estimated from groups, not only single samples: a step's batch of b samples is M micro-batches (groups) j of
m_j samples, with mean gradients g_j; g_B = sum_j m_j g_j / b. Since E||g_j - mu||^2 = Var / m_j,
    Var      ~ (sum_j m_j ||g_j||^2 - b ||g_B||^2) / (M - 1)
    Var_ip   ~ (sum_j m_j <g_j, g_B>^2 - b ||g_B||^4) / (M - 1)
    Var_orth ~ (sum_j m_j ||g_j||^2 - sum_j m_j <g_j, g_B>^2 / ||g_B||^2) / (M - 1)
(m_j = 1 is the official code's per-sample estimate). The groups are the micro-batches of gradient accumulation
on every rank; a test step with fewer than `groups` of them splits its batch further. Differences from the
official code: the inner products are of whole gradients (the paper's definition; the code sums per-tensor
variances, dropping the cross-tensor covariances); group gradients replace torch.func per-sample gradients, which
BatchNorm in training mode does not allow; and the batch grows at the next logging boundary (the test's verdict
stays on the device until then, so a step never waits for the host), not at the next step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from omegaconf import DictConfig

from runner.errors import require

TESTS = ("norm", "ip", "ip+orth")


@dataclass
class BatchState:
    """The batch as the loop runs it: global samples per step, samples per device, micro-batches per device."""
    global_batch: int
    per_device: int
    micro_batches: int

    def state_dict(self) -> dict:
        return dict(vars(self))

    def load_state_dict(self, state: dict) -> None:
        vars(self).update(state)


class FixedBatch:
    """`batch=fixed`: trainer.batch_size x trainer.accumulate samples per device per step, the whole run."""
    adaptive = False

    def start(self, trainer: DictConfig, world_size: int, train_size: int) -> BatchState:
        accumulate = int(trainer.get("accumulate", 1))
        per_device = trainer.batch_size * accumulate
        return BatchState(per_device * world_size, per_device, accumulate)


class AdaptiveBatch:
    """`batch=adaptive`: the global batch starts at trainer.batch_size x devices x accumulate and grows by the test."""
    adaptive = True

    def __init__(self, test: str = "norm", eta: float = 0.1, theta: float = 0.1, nu: float = 0.1,
                 max: int = 4096, micro: int | None = None, groups: int = 8, test_every: int = 1):
        require(self.check_options(test, eta, theta, nu, max, micro, groups, test_every))
        self.test, self.eta, self.theta, self.nu = test, eta, theta, nu
        self.max, self.micro, self.groups, self.test_every = max, micro, groups, test_every
        self.cap, self.micro_cap = max, micro

    @staticmethod
    def check_options(test="norm", eta=0.1, theta=0.1, nu=0.1, max=4096, micro=None, groups=8, test_every=1,
                      **_) -> list[str]:
        problems = [] if test in TESTS else [f"batch.test={test}: choose norm, ip (inner product) or ip+orth (augmented)"]
        if min(eta, theta, nu) <= 0:
            problems.append(f"batch.eta={eta}, batch.theta={theta}, batch.nu={nu}: the tests' tolerances are > 0")
        if groups < 2 or test_every < 1 or max < 1 or (micro is not None and micro < 1):
            problems.append(f"batch.groups={groups} (>= 2: a variance needs two groups), batch.test_every="
                            f"{test_every} (>= 1), batch.max={max}, batch.micro={micro} (>= 1 or null)")
        return problems

    @classmethod
    def validate_config(cls, cfg: DictConfig) -> list[str]:
        """What a run indexed by samples cannot have: a step budget, schedules counted in steps."""
        problems = []
        if cfg.trainer.get("max_steps"):
            problems.append(f"trainer.max_steps={cfg.trainer.max_steps} with batch=adaptive: a growing batch "
                            f"changes the steps a budget takes; set trainer.epochs (the budget in samples)")
        schedule = cfg.get("schedule") or {}
        if str(schedule.get("_target_", "")).endswith("Refined"):
            problems.append("schedule=refined with batch=adaptive: it replays another run's per-step gradient "
                            "norms, which a growing batch cannot follow; pick another schedule")
        for key in ("warmup", "decay", "step_size"):
            value = schedule.get(key)
            steps = isinstance(value, int) and not isinstance(value, bool) and value > 0
            if steps and key != "step_size":  # step_size and milestones count epochs: fine in samples
                problems.append(f"schedule.{key}={value} counts optimizer steps, which a growing batch changes; "
                                f"with batch=adaptive give a fraction of the run (e.g. schedule.{key}=0.05)")
        return problems

    def start(self, trainer: DictConfig, world_size: int, train_size: int) -> BatchState:
        self.micro_cap = self.micro or int(trainer.batch_size)
        self.cap = min(self.max, train_size)  # a step's batch comes from one epoch
        first = trainer.batch_size * world_size * int(trainer.get("accumulate", 1))
        return self.realised(first, world_size)

    def realised(self, global_batch: int, world_size: int) -> BatchState:
        steps, per_device = accumulation_for(global_batch, world_size, self.micro_cap)
        per_device = min(per_device, self.cap // world_size)  # rounding up never takes more than an epoch holds
        return BatchState(per_device * world_size, per_device, steps)

    def grown(self, state: BatchState, proposal: int, world_size: int) -> BatchState:
        """The batch after a test proposed `proposal` (never smaller, at most `max`)."""
        target = min(int(proposal), self.cap)
        return self.realised(target, world_size) if target > state.global_batch else state

    def test_due(self, step: int, state: BatchState) -> bool:
        return step % self.test_every == 0 and state.global_batch < self.cap

    def test_parts(self, state: BatchState, world_size: int) -> int:
        """Micro-batches per device on a test step: the accumulation's, or more to reach `groups` in all."""
        return min(state.per_device, max(state.micro_batches, math.ceil(self.groups / world_size)))

    @property
    def needs_inner_products(self) -> bool:
        return self.test != "norm"

    def proposal(self, totals: torch.Tensor, gbar_sq: torch.Tensor, batch: int) -> torch.Tensor:
        """The test's batch size (a device scalar in [batch, max]) from the group statistics summed over the
        ranks, totals = [M, b, sum_j m_j ||g_j||^2, sum_j m_j <g_j, g_B>^2], and ||g_B||^2."""
        return proposed_batch(self.test, totals, gbar_sq, batch, self.max, eta=self.eta, theta=self.theta, nu=self.nu)


def proposed_batch(test: str, totals: torch.Tensor, gbar_sq: torch.Tensor, batch: int, cap: int,
                   eta: float = 0.1, theta: float = 0.1, nu: float = 0.1) -> torch.Tensor:
    groups, samples, weighted_sq, weighted_ip_sq = totals.double().unbind()
    gbar_sq = gbar_sq.double()
    wanted = []
    if test == "norm":
        variance = (weighted_sq - samples * gbar_sq) / (groups - 1)
        wanted.append(variance / (eta ** 2 * gbar_sq))
    if test in ("ip", "ip+orth"):
        variance = (weighted_ip_sq - samples * gbar_sq ** 2) / (groups - 1)
        wanted.append(variance / (theta ** 2 * gbar_sq ** 2))
    if test == "ip+orth":
        variance = (weighted_sq - weighted_ip_sq / gbar_sq) / (groups - 1)
        wanted.append(variance / (nu ** 2 * gbar_sq))
    wanted = torch.stack(wanted).max().nan_to_num(nan=float(cap), posinf=float(cap))
    return wanted.ceil().clamp(min=batch, max=cap)


class GroupGradients:
    """The statistics of a step's group gradients, streamed as its micro-batches accumulate into p.grad.

    Micro-batch j's mean loss is scaled by its share w_j = m_j / b_local of the rank's batch, so after its
    backward p.grad holds S_j = sum_{i <= j} w_i g_i and the group's gradient is g_j = (S_j - S_{j-1}) / w_j.
    `add(m_j, b_local)` keeps sum_j m_j ||g_j||^2 on the device (and the g_j when the inner-product test needs
    them); `totals(g_B)` returns this rank's [M, b, sum_j m_j ||g_j||^2, sum_j m_j <g_j, g_B>^2]."""

    def __init__(self, params: list[torch.Tensor], keep_groups: bool):
        self.params, self.keep_groups = params, keep_groups
        self.previous: list[torch.Tensor] | None = None
        self.kept: list[tuple[int, float, list[torch.Tensor]]] = []
        self.groups, self.samples = 0, 0
        self.weighted_sq = torch.zeros((), dtype=torch.float64, device=params[0].device)

    def grads(self) -> list[torch.Tensor]:
        return [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]

    @torch.no_grad()
    def add(self, group_size: int, local_batch: int) -> None:
        share = group_size / local_batch
        grads = self.grads()
        deltas = grads if self.previous is None else torch._foreach_sub(grads, self.previous)
        self.weighted_sq += squared_norm(deltas) * (group_size / share ** 2)
        if self.keep_groups:
            self.kept.append((group_size, share, [d.clone() for d in deltas] if self.previous is None else deltas))
        if self.previous is None:
            self.previous = [g.clone() for g in grads]
        else:
            torch._foreach_copy_(self.previous, grads)
        self.groups, self.samples = self.groups + 1, self.samples + group_size

    @torch.no_grad()
    def totals(self, gbar: list[torch.Tensor]) -> torch.Tensor:
        """This rank's sums, with g_B the step's (global) batch gradient."""
        weighted_ip_sq = torch.zeros_like(self.weighted_sq)
        for group_size, share, deltas in self.kept:
            inner = torch.stack([(d.double() * g.double()).sum() for d, g in zip(deltas, gbar)]).sum() / share
            weighted_ip_sq += group_size * inner ** 2
        counts = torch.tensor([float(self.groups), float(self.samples)], dtype=torch.float64,
                              device=self.weighted_sq.device)
        return torch.cat([counts, self.weighted_sq.view(1), weighted_ip_sq.view(1)])


def squared_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(torch._foreach_norm(tensors)).double().square().sum()


def split_sizes(batch: int, parts: int) -> list[int]:
    """`batch` samples in `parts` micro-batches as equal as possible (the first ones one larger)."""
    base, extra = divmod(batch, parts)
    return [base + 1] * extra + [base] * (parts - extra) if base else [1] * batch


def accumulation_for(global_batch: int, world_size: int, micro: int) -> tuple[int, int]:
    """(micro-batches per step, samples per device) that realise at least `global_batch` with micro-batches of at
    most `micro` samples per device (the official code's rounding: up, to a multiple of the micro-batches)."""
    steps = max(1, math.ceil(global_batch / (world_size * micro)))
    per_device = math.ceil(global_batch / (world_size * steps)) * steps
    return steps, per_device
