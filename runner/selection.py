"""Which samples of a batch to train on: the `selection` group, applied first in the training step (runner/step.py),
before the forward pass that carries gradients.

`selection=hard` scores `candidates` x batch samples without gradients and trains on the highest-loss part:

    l_i = loss(model(x_i), y_i)  for the C x B candidates (eval mode, torch.inference_mode, the run's autocast;
                                 y_i a mixup/cutmix mix of labels where the loaders mix),
    S   = the k = round(fraction x C x B) candidates of largest l_i  (fraction default 1 / C: k = B),

then the ordinary step on S. Its idea is that of Sahayam, Zakkam & Jayaraman, "Can we learn better with hard
samples?" (arXiv 2304.03486; the issue cites it as Nair et al. 2025): train on the part of the data with the
highest loss. The paper's official code (imjohnzakkam/DyBAT `run.py`) selects whole mini-batches: one epoch over
every batch records each batch's training loss, then it repeatedly retrains the fraction delta of batches with
the largest recorded (stale) loss, updating their entries, for as many steps as the ordinary schedule has. This
option is the per-sample, fresh-loss form the issue specifies: every candidate's loss is measured at the current
weights right before the step, and the candidate batches come from `candidates` passes of the epoch's order
(runner/data/samplers.py `Passes`), so every sample is scored `candidates` times per epoch (each epoch still has
as many optimizer steps as with `selection=none`). The scoring pass runs the unwrapped model in eval mode
(BatchNorm's running statistics, no dropout, nothing updated), so selecting never changes the model. Cost per
step: one inference forward of C x B on top of the ordinary step (`python -m benchmarks samples`). Under DDP
each rank keeps the hardest k of its own candidates. With trainer.accumulate the candidates are scored in as many
chunks as the step has micro-batches, and the kept batch is split into them. `batch=adaptive` is refused: its
sample budget counts drawn samples, of which selection trains on a part.
"""
from __future__ import annotations

import torch
from omegaconf import DictConfig

from runner.errors import ConfigError
from runner.weighting import per_sample_problems


class Selection:
    """`selection=none`: train on the batch as drawn."""
    candidates, active = 1, False

    def setup(self, context) -> None:
        self.context = context

    def kept(self, drawn: int) -> int:
        """How many of `drawn` samples a step trains on."""
        return drawn

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor, chunks: int = 1):
        return images, labels, indices


class HardSelection(Selection):
    active = True

    @classmethod
    def validate_config(cls, cfg: DictConfig) -> list[str]:
        problems = per_sample_problems(cfg, "selection=hard", False, "pass selection=none")
        if cfg.get("batch") and cfg.batch.get("_target_", "").endswith("AdaptiveBatch"):
            problems.append("selection=hard with batch=adaptive: the adaptive batch's budget counts the samples drawn, "
                            "of which selection trains on a part; pass batch=fixed or selection=none")
        return problems

    def __init__(self, candidates: int = 4, fraction: float | None = None):
        if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 1:
            raise ConfigError(f"selection.candidates={candidates}: the candidate batch is a whole number >= 1 of "
                              f"batches; pass e.g. selection.candidates=4")
        if fraction is not None and not 0 < fraction <= 1:
            raise ConfigError(f"selection.fraction={fraction}: the part of the candidates trained on must lie in "
                              f"(0, 1]; null keeps 1 / candidates (one batch)")
        self.candidates, self.fraction = candidates, fraction

    def kept(self, drawn: int) -> int:
        fraction = 1 / self.candidates if self.fraction is None else self.fraction
        return max(1, round(fraction * drawn))

    def scores(self, images: torch.Tensor, labels: torch.Tensor, chunks: int = 1) -> torch.Tensor:
        """Each candidate's loss at the current weights, without gradients and without touching the model, in
        `chunks` forward passes (the step's micro-batches: accumulation bounds the scoring pass's memory too)."""
        model, criterion = self.context.model, self.context.criterion
        was_training = model.training
        model.eval()
        with torch.inference_mode(), self.context.autocast():
            losses = torch.cat([criterion(model(x), y, from_labels=True, reduction="none")
                                for x, y in zip(images.tensor_split(chunks), labels.tensor_split(chunks))])
        model.train(was_training)
        return losses.clone()  # a normal tensor again: usable outside inference mode

    def __call__(self, images, labels, indices, chunks: int = 1):
        hardest = self.scores(images, labels, chunks).topk(self.kept(len(labels))).indices
        memory_format = torch.channels_last if self.context.channels_last else torch.contiguous_format
        return images[hardest].contiguous(memory_format=memory_format), labels[hardest], indices[hardest]
