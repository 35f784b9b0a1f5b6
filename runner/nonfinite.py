"""What the train loop does with a NaN or Inf loss or gradient: `trainer.on_nonfinite`.

stop: the run ends at the first step whose loss or gradients are not finite, with status "diverged" and a
      message naming the step, its lr and the tensor; the checkpoints written before that step are kept.
skip: such a step is dropped (weights, optimizer state and BatchNorm statistics stay as they were before it)
      and counted; the lr schedule moves on.

Neither adds a host sync to the step (an `.item()` per step makes the CPU wait for the GPU, so it can no longer
queue the next step's kernels while the current ones run):
- stop needs no per-step work at all: the loss and gradient norm of every step already sit in the stats buffer
  that the loop reads back every `log_every` steps; they are checked there, and before every checkpoint so
  that no checkpoint holds a diverged model. The run goes on for up to `log_every` steps past the bad one.
- skip decides on the device, for the student and every companion module alike (one flag: the loss and every
  optimizer's gradient norm are finite). Fused torch optimizers take the flag as `found_inf` (GradScaler's
  mechanism) and skip inside their kernel; for every other optimizer the update is undone by
  torch.where(ok, new, old) against a copy taken before the step (one copy of the weights and optimizer
  state per step). State kept on
  the host (a Python step counter, Adam's CPU `step` tensor when training on CUDA) cannot be selected without
  a sync and still advances on a skipped step. With an fp16 GradScaler the scaler already skips steps with
  non-finite gradients (that is how it finds its scale), so only the loss decides divergence there.
"""
from __future__ import annotations

import math

import torch

from runner.run_folder import Status


class Diverged(RuntimeError):
    """The loss or a gradient became NaN/Inf with trainer.on_nonfinite=stop."""
    status = Status.DIVERGED

    def __init__(self, step: int, lr: float, tensor: str, last_checkpoint_step: int | None):
        kept = (f"checkpoints up to step {last_checkpoint_step} are kept" if last_checkpoint_step is not None
                else "no checkpoint was written before it")
        super().__init__(f"diverged: non-finite {tensor} at step {step} (lr {lr:.4g}); {kept}; lower optimizer.lr, "
                         f"set trainer.grad_clip, or pass trainer.on_nonfinite=skip to drop such steps")
        self.step, self.lr, self.tensor = step, lr, tensor


def is_finite_step(loss: float, grad_norm: float) -> bool:
    return math.isfinite(loss) and math.isfinite(grad_norm)


def first_divergence(rows: list, first_step: int, param_names: list[str], scaled: bool) -> tuple[int, str] | None:
    """(step, tensor) of the first step record (`loss`, `grad_l2`, `nonfinite_param`: the train loop's
    StepRecord) whose loss, or (without a GradScaler) gradient, is not finite."""
    for offset, row in enumerate(rows):
        if not math.isfinite(row.loss):
            return first_step + offset, "loss"
        if not math.isfinite(row.grad_l2) and not scaled:
            return first_step + offset, f"gradient of {param_names[int(row.nonfinite_param)]}"
    return None


@torch.no_grad()
def first_nonfinite_index(norms: torch.Tensor) -> torch.Tensor:
    """Index of the first parameter whose gradient norm is not finite (0 when all are), on the device."""
    return torch.isfinite(norms).to(torch.uint8).argmin()


class SkipNonFinite:
    """on_nonfinite=skip for a step of several optimizer drivers (the student's and its companions', each with
    `module`, `optimizer`, `params` and `fused`: runner/step.py): call `snapshot()` before the forward pass and
    `step(ok, do_step)` in place of the optimizer steps; a step with `ok` False then changes nothing."""

    def __init__(self, drivers: list, scaled: bool):
        self.drivers, self.scaled = drivers, scaled
        self.tensors: list[torch.Tensor] = []
        self.backup: list[torch.Tensor] = []
        self.started = False

    def protected(self) -> list[torch.Tensor]:
        """What a step changes and a skip restores: every trained module's buffers (the forward pass updates
        BatchNorm statistics), and unless its optimizer or the scaler skips by itself, its parameters and
        optimizer state."""
        tensors = []
        for driver in self.drivers:
            tensors += [b for b in driver.module.buffers() if b.is_floating_point() or b.dtype == torch.int64]
            if not (driver.fused or self.scaled):
                device = driver.params[0].device
                state = [v for s in driver.optimizer.state.values() for v in s.values()
                         if isinstance(v, torch.Tensor) and v.device == device]
                tensors += driver.params + state
        return tensors

    @torch.no_grad()
    def snapshot(self) -> None:
        tensors = self.protected()
        if [t.shape for t in tensors] != [b.shape for b in self.backup]:  # first step, or the state was created
            self.backup = [t.clone() for t in tensors]
        elif tensors:
            torch._foreach_copy_(self.backup, tensors)
        self.tensors = tensors

    @torch.no_grad()
    def step(self, ok: torch.Tensor, do_step) -> None:
        if self.scaled:  # GradScaler skips non-finite gradients itself (and must see every step to rescale)
            do_step()
        elif not self.started:
            # The first step creates the optimizer state, which a select against the copy cannot undo: decide
            # this one step on the host (one sync per run).
            if bool(ok):
                do_step()
        else:
            fused = [driver.optimizer for driver in self.drivers if driver.fused]
            for optimizer in fused:
                optimizer.found_inf = (~ok).float()
            try:
                do_step()
            finally:
                for optimizer in fused:
                    del optimizer.found_inf
        self.started = True
        self._restore(ok)

    def _restore(self, ok: torch.Tensor) -> None:
        for tensor, saved in zip(self.tensors, self.backup):
            torch.where(ok, tensor, saved, out=tensor)
