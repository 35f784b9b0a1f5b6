"""One training step, the hot path: forward and the method's loss under autocast, backward, and the one
optimizer driver for the student and every companion module.

Hot-path rules: the step returns device tensors (a `StepRecord` row, kept on the device by `StepStats` until
the logging interval: the loop's only host sync); lr changes are Python floats; norms, clipping and the
non-finite guard are foreach kernels on the device.

`OptimizerDriver` is the one way an optimizer is stepped: the schedule's lr factor, unscaling (fp16),
gradient norms (before clipping), clipping, the step and zero; and, for an optimizer trained at other weights
than it is evaluated at (schedule-free), the switch between the two and the module's state at the evaluated
ones. The student's driver and each companion's
(a method's second network, projector or head: runner/context.py) are driven together; with
`trainer.on_nonfinite=skip` one `SkipNonFinite` guard covers all of them, so a NaN step changes no trained
module and no optimizer state.

Which samples drive the step:
- per-sample weighting: `Step.batch_loss` is the one point where a method's per-sample losses (a vector) become
  a micro-batch's loss: mean_i m_i l_i with each weighting's multipliers (runner/weighting/, and a sampler's
  per-class correction), computed from detached losses; their min, max and sums join the step's record. The
  loss-based weightings normalise over the micro-batch a backward pass is formed from (with
  trainer.accumulate=1: the step's batch), over every rank; class-based multipliers do not depend on the batch.
- data selection: `selection` (runner/selection.py) replaces the drawn batch before the forward pass
  (`selection=hard` scores a larger candidate batch under torch.inference_mode, micro-batch by micro-batch).
  Mixup/CutMix's probability targets come from the loaders; the loss, the weightings' class multipliers and the
  accuracy count take (N, K) targets.

Gradient accumulation (runner/accumulate.py): `forward_backward` runs the batch as the `BatchState`'s
micro-batches (trainer.accumulate, or what batch=adaptive needs), each loss scaled by its share of the samples,
under DDP's no_sync for all but the last; `update` steps once. On an adaptive batch's test step the micro-batch
gradients feed its statistics (runner/batch_size.py) and the step's row carries the proposed batch.
"""
from __future__ import annotations

import contextlib
from typing import Callable, NamedTuple

import torch

from runner import distributed
from runner.accumulate import MicroBatch, no_sync_of, run_micro_batches, split
from runner.batch_size import GroupGradients, squared_norm
from runner.losses.stablemax import softmax_collapsed
from runner.nonfinite import SkipNonFinite, first_nonfinite_index
from runner.optim import Capabilities
from runner.weighting import combined_statistics, weight_statistics


class StepRecord(NamedTuple):
    """One step's statistics, as the step returns them (stacked, on the device) and as `drain` reads them back."""
    loss: float
    correct: float          # correct predictions in this rank's batch
    grad_l2: float          # global L2 norm of the student's gradients, before clipping
    grad_l1: float          # L1 norm (0 unless recorded: trainer.grad_norm_l1)
    nonfinite_param: float  # index of the first student parameter with a non-finite gradient (0 when none)
    collapsed: float        # samples of this rank's batch whose float32 softmax collapsed (runner/losses/stablemax.py)
    batch_proposal: float   # batch=adaptive's test: the global batch it asks for (0: no test this step)
    weight_min: float       # the per-sample loss multipliers m_i of this rank's batch (runner/weighting/): min,
    weight_max: float       # max,
    weight_sum: float       # sum and sum of squares (0 without weighting): the effective sample size
    weight_sq_sum: float    # (sum m)^2 / sum m^2 of the global batch comes from their sums over ranks


class StepStats:
    """Per-step records kept on the device until the logging interval."""
    FIELDS = StepRecord._fields
    # over ranks: loss and norms averaged, counts and sums summed, extremes kept; the non-finite index is per rank
    RANK_MEAN, RANK_SUM = ("loss", "grad_l2", "grad_l1"), ("correct", "collapsed", "weight_sum", "weight_sq_sum")
    RANK_MIN, RANK_MAX = "weight_min", "weight_max"

    def __init__(self, capacity: int, device: torch.device):
        self.buffer = torch.zeros(capacity, len(self.FIELDS), device=device)
        self.count, self.first_step = 0, 0

    def add(self, step: int, values: torch.Tensor) -> None:
        if self.count == 0:
            self.first_step = step
        self.buffer[self.count] = values
        self.count += 1

    def drain(self) -> list[StepRecord]:
        """The records since the last drain, over the global batch."""
        rows = self.buffer[:self.count]
        if distributed.world_size() > 1:
            reduced = [self.FIELDS.index(name) for name in self.RANK_MEAN + self.RANK_SUM]
            summed = rows[:, reduced].contiguous()
            distributed.all_reduce_sum(summed)
            rows[:, reduced] = summed
            rows[:, [self.FIELDS.index(name) for name in self.RANK_MEAN]] /= distributed.world_size()
            low, high = self.FIELDS.index(self.RANK_MIN), self.FIELDS.index(self.RANK_MAX)
            rows[:, low] = -distributed.all_reduce_max(-rows[:, low])
            rows[:, high] = distributed.all_reduce_max(rows[:, high].contiguous())
        records = [StepRecord(*row) for row in rows.tolist()]  # the one host sync per logging interval
        self.count = 0
        return records

    def pending(self) -> list[StepRecord]:
        return [StepRecord(*row) for row in self.pending_rows().tolist()]

    def pending_rows(self) -> torch.Tensor:
        """The rows not yet drained (a checkpoint carries them so the resumed run writes the same records)."""
        return self.buffer[:self.count]

    def restore(self, rows: torch.Tensor, first_step: int) -> None:
        if len(rows) > len(self.buffer):  # resumed with a smaller log_every: room for the saved rows
            self.buffer = torch.zeros(len(rows), self.buffer.shape[1], device=self.buffer.device)
        self.count, self.first_step = len(rows), first_step
        self.buffer[:self.count] = rows.to(self.buffer.device)


@torch.no_grad()
def grad_norms(params: list[torch.Tensor], with_l1: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """L2 (and L1) norm of all gradients, and the index in `params` of the first non-finite one."""
    grads = [p.grad if p.grad is not None else p.new_empty(0) for p in params]  # empty: norm 0, keeps indices
    norms = torch.stack(torch._foreach_norm(grads))
    l2 = torch.linalg.vector_norm(norms)
    l1 = torch.stack(torch._foreach_norm(grads, 1)).sum() if with_l1 else torch.zeros_like(l2)
    return l2, l1, first_nonfinite_index(norms)


class OptimizerDriver:
    """Drives one optimizer through the steps of a run: lr = base lr x the schedule's factor of the step, unscale
    (fp16), gradient norms and clipping, the step (the guard may skip it), zero. `module` is what it trains
    (its buffers and parameters are what a skipped step restores)."""

    def __init__(self, optimizer, module: torch.nn.Module, lr_factors: list[float], grad_clip: float | None,
                 scaler: torch.amp.GradScaler | None, capabilities: Capabilities, with_l1: bool = False):
        self.optimizer, self.module, self.lr_factors, self.grad_clip = optimizer, module, lr_factors, grad_clip
        self.scaler, self.capabilities, self.with_l1 = scaler, capabilities, with_l1
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        # fused torch optimizers skip on a found_inf flag inside their kernel (GradScaler passes it the same way)
        self.fused = getattr(optimizer, "_step_supports_amp_scaling", False)

    def set_lr(self, step: int) -> None:
        factor = self.lr_factors[step]
        for group, base_lr in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base_lr * factor

    def unscale_and_clip(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(L2, L1, first non-finite index) of the gradients before clipping, then clip them."""
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        l2, l1, nonfinite = grad_norms(self.params, self.with_l1)  # before the optimizer touches them
        if self.grad_clip:
            torch.nn.utils.clip_grads_with_norm_(self.params, self.grad_clip, l2, foreach=True)
        return l2, l1, nonfinite

    def step(self, closure: Callable | None = None) -> None:
        optimizer, scaler = self.optimizer, self.scaler
        if scaler is not None:
            scaler.step(optimizer, closure) if closure else scaler.step(optimizer)
        else:
            optimizer.step(closure) if closure else optimizer.step()

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def use_evaluation_weights(self, evaluating: bool) -> None:
        """The module to the weights it is evaluated at (True) or trained at (False): an optimizer with a
        train/eval mode (capabilities) moves them, any other has one set of weights."""
        if self.capabilities.train_eval_mode:
            self.optimizer.eval() if evaluating else self.optimizer.train()

    def evaluated_state(self) -> dict:
        """The module's state_dict at the weights it is evaluated at, the live weights left as they are (a
        train/eval optimizer's `averaged()`: schedule-free's x; its own state carries the training point)."""
        state = self.module.state_dict()
        if self.capabilities.train_eval_mode:
            averaged = self.optimizer.averaged()
            state |= {name: averaged[p] for name, p in self.module.named_parameters() if p in averaged}
        return state


def optimizer_metrics(optimizer) -> dict[str, float]:
    """What an optimizer reports about itself as device scalars (a `metrics()` method: Prodigy's d), read back
    at the logging interval (one host sync)."""
    metrics = optimizer.metrics() if hasattr(optimizer, "metrics") else {}
    values = torch.stack([value.double() for value in metrics.values()]).tolist() if metrics else []
    return dict(zip(metrics, values))


class Step:
    """forward_backward + update: one optimizer step of the student (drivers[0]) and its companions, on the
    batch `selection` keeps, with the loss `weightings` weigh."""

    def __init__(self, forward, method, drivers: list[OptimizerDriver], autocast, guard: SkipNonFinite | None,
                 batching=None, batch=None, ema=None, weightings: tuple = (), selection=None):
        self.forward, self.method, self.drivers, self.autocast, self.guard = forward, method, drivers, autocast, guard
        self.batching, self.batch, self.ema = batching, batch, ema
        self.weightings, self.selection = tuple(weightings), selection
        student = drivers[0]
        self.scaler, self.second_order = student.scaler, student.capabilities.second_order
        self.needs_closure = student.capabilities.needs_closure
        self.unweighted = torch.zeros(4, device=student.params[0].device)  # weight statistics without weighting

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor, step: int) -> torch.Tensor:
        micro_batches = self.batch.micro_batches if self.batch else 1
        if self.selection is not None:
            images, labels, indices = self.selection(images, labels, indices, micro_batches)
        for driver in self.drivers:
            driver.set_lr(step)
        if self.guard:
            self.guard.snapshot()
        testing = bool(self.batching and self.batching.adaptive and self.batching.test_due(step, self.batch))
        world = distributed.world_size()
        count = self.batching.test_parts(self.batch, world) if testing else micro_batches
        parts = split(images, labels, indices, count)
        groups = GroupGradients(self.drivers[0].params, self.batching.needs_inner_products) if testing else None
        loss, logits, weights = self.forward_backward(
            parts, manual_sync=testing and world > 1,
            after_each=groups and (lambda m: groups.add(len(m.indices), len(indices))))
        proposal = self.proposal(groups) if testing else torch.zeros((), device=loss.device)
        (l2, l1, nonfinite), kept = self.update(loss, parts)
        self.method.after_step(step, kept)  # per-sample memories, EMA: `kept` False where the guard skipped
        if self.ema is not None:
            self.ema.step(step + 1)
        correct = sum(self.correct(out, micro.targets) for out, micro in zip(logits, parts))
        collapsed = sum(softmax_collapsed(out).sum() for out in logits)
        return torch.cat([torch.stack([loss, correct.float(), l2.float(), l1.float(), nonfinite.float(),
                                       collapsed.float(), proposal.float()]), weights])

    def loss(self, images, labels, indices) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(the micro-batch's loss, the logits, the statistics of its weights)."""
        with self.autocast():
            logits = self.forward(images)
            loss, weights = self.batch_loss(self.method.loss(images, labels, indices, logits), labels)
            return loss, logits, weights

    def batch_loss(self, losses: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The weighting point: a method's scalar as it is; per-sample losses l_i as mean_i m_i l_i, m_i the
        product of the weightings' multipliers (1 without any), computed without gradient."""
        if losses.ndim == 0 or not self.weightings:
            return (losses if losses.ndim == 0 else losses.mean()), self.unweighted
        with torch.no_grad():
            detached = losses.detach().float()
            multipliers = self.weightings[0].multipliers(detached, labels)
            for weighting in self.weightings[1:]:
                multipliers = multipliers * weighting.multipliers(detached, labels)
        return (multipliers * losses).mean(), weight_statistics(multipliers)

    def forward_backward(self, parts: list[MicroBatch], manual_sync: bool = False, after_each=None,
                         scaled: bool = True) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """Forward and backward over the micro-batches (DDP syncs on the last one only, or not at all with
        `manual_sync`, which averages the gradients over the ranks itself afterwards): the step's mean loss
        (detached), each micro-batch's logits and the statistics of all their weights."""
        scaler = self.scaler if scaled else None
        weights = []

        def loss_of(micro: MicroBatch) -> tuple[torch.Tensor, torch.Tensor]:
            loss, logits, statistics = self.loss(micro.images, micro.targets, micro.indices)
            weights.append(statistics)
            return loss, logits

        def backward(loss: torch.Tensor) -> None:
            if scaler is not None:
                scaler.scale(loss).backward()
            else:
                loss.backward(create_graph=self.second_order)

        no_sync = no_sync_of(getattr(self.forward, "eager", self.forward))
        loss, logits = run_micro_batches(parts, loss_of, backward, no_sync, "manual" if manual_sync else "last",
                                         after_each)
        if manual_sync:
            distributed.average_gradients(self.drivers[0].params)
        return loss, logits, combined_statistics(weights)

    def proposal(self, groups: GroupGradients) -> torch.Tensor:
        """batch=adaptive's test on this step's micro-batch gradients, summed over the ranks (no host sync)."""
        grads = groups.grads()
        totals = groups.totals(grads)
        distributed.all_reduce_sum(totals)
        return self.batching.proposal(totals, squared_norm(grads), self.batch.global_batch)

    def update(self, loss: torch.Tensor, parts: list[MicroBatch]):
        """Unscale, clip and step every driver, the guard skipping them together: (the student's gradient norms,
        the device flag `kept`, None without a guard)."""
        norms = [driver.unscale_and_clip() for driver in self.drivers]
        closure = self.closure(parts) if self.needs_closure else None
        do_step = lambda: [driver.step(closure) for driver in self.drivers]  # noqa: E731
        kept = None
        if self.guard:
            kept = torch.isfinite(loss)
            for l2, _, _ in norms:
                kept &= torch.isfinite(l2)
            self.guard.step(kept, do_step)
        else:
            do_step()
        if self.scaler is not None:
            self.scaler.update()  # after every optimizer that stepped with this scale
        for driver in self.drivers:
            driver.zero_grad()
        return norms[0], kept

    def closure(self, parts: list[MicroBatch]):
        """Re-evaluates loss and gradients at the optimizer's current weights (SAM's second pass)."""
        def evaluate_again():
            with torch.enable_grad():
                loss, _, _ = self.forward_backward(parts, scaled=False)
            return loss
        return evaluate_again

    @staticmethod
    def correct(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Top-1 hits; against a probability target (mixup, cutmix) its largest class, the dominant label."""
        labels = targets.argmax(-1) if targets.ndim == 2 else targets
        return (logits.argmax(-1) == labels).sum()


def autocast_for(device: torch.device, dtype: torch.dtype | None):
    """The step's autocast context: none at all for fp32, whose enter/exit cost shows on tiny steps."""
    if dtype is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=dtype)
