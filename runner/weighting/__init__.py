"""Per-sample loss weighting: the `weighting` group, applied at the training step's one weighting point
(runner/step.py `Step.batch_loss`), where a method's per-sample losses l_i become the batch's loss

    L = mean_i m_i l_i,        m_i = N w_i  for weights w_i that sum to 1 over the batch,

so m_i is sample i's multiplier of the plain mean (all 1: `weighting=none`). A weighting is built from
`conf/weighting/<name>.yaml` and called as

    setup(context)                       once, with the run's MethodContext (runner/context.py): class counts,
                                         progress, the run's length
    multipliers(losses, labels) -> (N,)  each sample's m_i from the detached losses (no gradient flows through
                                         a weight) and the labels (class indices, or probability rows)

Options: `loss_rank` (Sow et al., ICLR 2025: weight functions of the rank-normalised loss), `kl_dro` (the
KL-regularised DRO weights of Sow, Lin, Wang & Liang, ICLR 2024, on the clean loss), `class_balanced` (inverse
frequency, effective number (Cui et al., CVPR 2019), or a sampling temperature's class mixture); each module
states its equation. The loss-based ones normalise over the global batch: under DDP the ranks gather their
losses (one all-gather of N floats per step, no host sync), so N processes with batch B weigh exactly as one
process with batch N x B does. Their statistics (min and max of m_i, the effective sample size
(sum m)^2 / sum m^2 of Kish) ride in the step's device record to the logging interval (`train/weight_min`,
`train/weight_max`, `train/weight_ess`).
"""
from __future__ import annotations

import torch
from omegaconf import DictConfig

from runner import distributed
from runner.errors import ConfigError


class Weighting:
    """`weighting=none`: the plain batch mean (the step skips the weighting point)."""
    name, active = "none", False

    @classmethod
    def validate_config(cls, cfg: DictConfig) -> list[str]:
        return (per_sample_problems(cfg, f"weighting={cls.name}", True, "pass weighting=none")
                if cls.active else [])

    def setup(self, context) -> None:
        self.context = context

    def multipliers(self, losses: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(losses)


def per_sample_problems(cfg: DictConfig, what: str, with_distiller: bool, fix: str) -> list[str]:
    """A method that reads one loss per sample refused where the run's loss (or, `with_distiller`, the distill
    method's objective) is one value for the whole batch."""
    from hydra.utils import instantiate

    from runner.config import locate

    distiller = locate(cfg.distill._target_)
    if with_distiller and not getattr(distiller, "per_sample", True):
        return [f"{what} weighs each sample's loss, but distill={distiller.__name__.lower()} trains on one loss for "
                f"the whole batch; {fix}"]
    try:
        loss = instantiate(cfg.loss)
    except Exception:  # noqa: BLE001 - a bad loss option: reported by the loss's own check
        return []
    if not getattr(loss, "per_sample", True):
        return [f"{what} needs one loss per sample, but loss={type(loss).__name__.lower()} with these options is one "
                f"cost between the batch's sets (loss.form=batch); pass loss.form=sample, or {fix}"]
    return []


def check_temperature(temperature: float, key: str) -> None:
    if not temperature > 0:
        raise ConfigError(f"{key}={temperature}: the temperature must be > 0 (small: weight concentrates on few "
                          f"samples, large: close to the plain mean); pass e.g. {key}=1.0")


def global_batch(values: torch.Tensor) -> tuple[torch.Tensor, slice]:
    """Every rank's values of this step in rank order (this rank's alone on one process) and this rank's slice."""
    if distributed.world_size() == 1:
        return values, slice(None)
    start = distributed.rank() * len(values)
    return distributed.all_gather_equal(values), slice(start, start + len(values))


def softmax_multipliers(scores: torch.Tensor, temperature: float, mine: slice) -> torch.Tensor:
    """m = N softmax(scores / temperature) over the global batch's scores, this rank's part."""
    return (len(scores) * torch.softmax(scores.float() / temperature, dim=0))[mine]


def per_class(table: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """A class's multiplier for each sample: table[y], or the expectation q @ table for probability targets."""
    return table[labels] if labels.ndim == 1 else labels.float() @ table


class SamplerCorrection(Weighting):
    """The per-class multipliers a sampler asks for in each epoch (sampler=cooldown's upweighting): a table of
    epochs x classes on the device, read at the current epoch."""
    active = True

    def __init__(self, sampler, epochs: int, device: torch.device):
        self.table = torch.stack([sampler.class_multipliers(epoch) for epoch in range(epochs)]).to(device)

    def multipliers(self, losses, labels):
        return per_class(self.table[self.context.progress.epoch], labels)


def weight_statistics(multipliers: torch.Tensor) -> torch.Tensor:
    """(min, max, sum, sum of squares) of a batch's multipliers: reduced over ranks at the logging interval."""
    m = multipliers.detach().float()
    return torch.stack([m.min(), m.max(), m.sum(), m.square().sum()])


def combined_statistics(parts: list[torch.Tensor]) -> torch.Tensor:
    """The statistics of a step's micro-batches as one batch's: min of the minima, max of the maxima, sums added."""
    if len(parts) == 1:
        return parts[0]
    rows = torch.stack(parts)
    return torch.stack([rows[:, 0].min(), rows[:, 1].max(), rows[:, 2].sum(), rows[:, 3].sum()])
