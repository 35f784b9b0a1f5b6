"""The train loop and its cadence: step, then on the steps where they fall: log (every `trainer.log_every`
steps: the loop's one host sync), evaluate (every `trainer.eval_every` epochs and at the end), checkpoint
(every `checkpoint_every` epochs / `checkpoint_every_steps` steps and at the end), and stop for a
preemption signal. The parts come built (runner/build.py), the step is runner/step.py, evaluation is
runner/evaluation.py; this module writes records and checkpoints, never the rest of the run folder.

An optimizer trained at other weights than it is evaluated at (schedule-free) is evaluated inside
`Run.evaluation_weights()` and saved through `Run.state_dicts()` (the model at its evaluated weights); a
metric an optimizer reports (Prodigy's d) joins the record built in `flush`. An EMA of the weights
(trainer.ema) is evaluated beside the live model in `end_of_epoch` (`ema/val/*`). Under batch=adaptive the budget
is samples (`progress.samples`): an epoch ends when no full batch is left in it, and the batch grows in `flush`,
from the test verdicts its records carry, after which the loader restarts at the epoch's position with the new
size. The epoch's position counts drawn samples (`Run.drawn_batch`: selection=hard draws its candidates), the
records' batch the trained ones (`Run.trained_batch`).

The curvature (trainer.curvature: runner/curvature.py) is measured before the first step and every N steps
after, before that step's checkpoint. Seams: a measurement every N steps (sharpness) is one more `every` test
in `end_of_step`; another model evaluated beside the live one is one more `evaluate` call merged into the
evaluation record, as the EMA's and a method's are.
"""
from __future__ import annotations

import math
import time

import torch

from runner import distributed, env
from runner.build import Run, build_run
from runner.distill.base import prefixed
from runner.checkpoint import Checkpointer, set_rng_state
from runner.errors import ConfigError
from runner.logger import RunLogger
from runner.nonfinite import Diverged, first_divergence, is_finite_step
from runner.preemption import Preempted, PreemptionWatch
from runner.step import StepRecord, StepStats, optimizer_metrics

CURVATURE_FINALS = ("hessian/lambda", "hessian/trace")  # the curvature's values summary.json keeps


class Trainer:
    def __init__(self, run: Run, checkpointer: Checkpointer, preemption: PreemptionWatch | None = None):
        self.run, self.checkpointer, self.preemption = run, checkpointer, preemption
        self.cfg, self.model, self.progress = run.cfg, run.model, run.progress
        self.param_names = [name for name, p in run.model.named_parameters() if p.requires_grad]
        self.stats = StepStats(self.cfg.trainer.log_every, run.runtime.device)
        self.logger: RunLogger | None = None
        self.sync_check = env.SyncCheck(self.cfg.trainer.sync_debug, run.runtime.device)
        self.best_acc1, self.last_eval, self.train_loss, self.skipped_steps = 0.0, {}, math.nan, 0
        self.initial_loss, self.collapse, self.last_curvature = None, None, {}
        self.reliability: dict = {}  # the last evaluation's confidence bins, by panel (reliability.png)
        self.last_ema_eval: dict = {}
        self.position = 0  # samples (over all ranks) into the current epoch
        self.saved_step, self.wall_time_before, self.started = None, 0.0, time.time()

    @classmethod
    def from_config(cls, cfg, checkpointer: Checkpointer, preemption: PreemptionWatch | None = None,
                    print=lambda message: None) -> "Trainer":
        return cls(build_run(cfg, print), checkpointer, preemption)

    # ---- the loop ------------------------------------------------------------------------------------
    def done(self) -> bool:
        run = self.run
        return self.progress.samples >= run.total_samples if run.batching.adaptive else self.progress.step >= run.total_steps

    def fit(self, logger: RunLogger) -> dict:
        run, progress, trainer, self.logger = self.run, self.progress, self.cfg.trainer, logger
        world, batch = distributed.world_size(), run.batch
        budget = (f"{run.total_samples:,} samples (batch=adaptive)" if run.batching.adaptive
                  else f"{run.total_steps} steps")
        accumulation = f" ({batch.micro_batches} micro-batches)" if batch.micro_batches > 1 else ""
        held = f" / {len(run.splits.holdout)} holdout" if run.holdout else ""
        logger.print(f"divrun: {run.splits.name} ({len(run.splits.train)} train{held} / {len(run.splits.val)} val), "
                     f"{sum(p.numel() for p in run.driver.params):,} parameters, {budget} on "
                     f"{run.runtime.device}, batch {batch.per_device} per device{accumulation} x {world} processes = "
                     f"{batch.global_batch} global")
        logger.start_progress(None if run.batching.adaptive else run.total_steps, run.epochs, run.steps_per_epoch,
                              progress.step, progress.epoch)
        self.clock = time.perf_counter()
        self.model.train()
        if progress.step == 0:
            self.measure_curvature()
        while not self.done():
            epoch, size = progress.epoch, batch.per_device
            if hasattr(self.model, "set_epoch"):  # per-epoch model settings (airbench freezes its whitening bias)
                self.model.set_epoch(progress.epoch)
            stepped = False
            for images, labels, indices in run.train_loader.epoch(progress.epoch, start_sample=self.position):
                stepped = True
                with self.sync_check:  # trainer.sync_debug: the step never waits on the device
                    self.stats.add(progress.step, run.step(images, labels, indices, progress.step))
                progress.step += 1
                progress.samples += run.trained_batch
                self.position += run.drawn_batch
                logger.advance()
                self.end_of_step()
                if self.done() or progress.epoch != epoch or batch.per_device != size:
                    break  # a new epoch, or a grown batch: the loader restarts at self.position
            if not stepped:
                raise RuntimeError(f"epoch {progress.epoch} holds no batch of {batch.global_batch} from sample "
                                   f"{self.position}: the loop would not advance")
        for driver in run.step.drivers:  # the model ends at the weights that were evaluated and saved
            driver.use_evaluation_weights(True)
        return self.results()

    def epoch_done(self) -> bool:
        """No full step's batch is left in this epoch (or the run's budget is spent)."""
        run, progress = self.run, self.progress
        return self.done() or self.position + run.drawn_batch > run.epoch_draws or (
            not run.batching.adaptive and progress.step == (progress.epoch + 1) * run.steps_per_epoch)

    def end_of_step(self) -> None:
        """Records, evaluation and checkpoints that fall on this step; a preemption signal saves and stops here.

        A checkpoint taken here is the state after all of the step's work, so the records up to its step are
        final and a resumed run writes exactly the records that follow."""
        trainer, progress = self.cfg.trainer, self.progress
        epoch_done = self.epoch_done()
        flushed = self.stats.count >= trainer.log_every or (epoch_done and self.stats.count)
        if flushed:
            self.flush()
            epoch_done = epoch_done or self.epoch_done()  # a batch grown here may not fit in the epoch's rest
        if epoch_done:
            progress.epoch, self.position = progress.epoch + 1, 0
            self.end_of_epoch()
        self.measure_curvature()
        every = lambda n, count: bool(n and count % n == 0)  # noqa: E731
        if self.done() or every(trainer.checkpoint_every_steps, progress.step) or (
                epoch_done and every(trainer.checkpoint_every, progress.epoch)):
            self.checkpoint()
        if not self.done() and self.preemption_agreed(flushed):
            if self.saved_step != progress.step:
                self.checkpoint()
            raise Preempted(self.preemption.received or "a preemption signal (on another rank)", progress.step)

    def preemption_agreed(self, flushed: bool) -> bool:
        """Whether to stop here for a preemption signal. One process reads its flag every step (no sync). Under
        DDP all ranks must stop at the same step, and a signal may reach only some: they agree on the flag at
        logging boundaries (the same steps everywhere, synced anyway): within trainer.log_every steps."""
        if self.preemption is None:
            return False
        if distributed.world_size() == 1:
            return self.preemption.requested
        if not flushed:
            return False
        flag = torch.tensor([float(self.preemption.requested)], device=self.stats.buffer.device)
        return distributed.all_reduce_sum(flag).item() > 0

    def measure_curvature(self) -> None:
        """hessian/* (and the tracked samples' losses) when trainer.curvature falls on this step; the threshold
        2/lr is that of the next update's lr."""
        monitor, step = self.run.curvature, self.progress.step
        if monitor is None or not monitor.due(step):
            return
        lr = self.run.driver.base_lrs[0] * self.run.lr_factors[min(step, self.run.total_steps - 1)]
        record = monitor.measure(step, lr)
        if record:
            self.last_curvature = record
            self.logger.log({"step": step, "epoch": step / self.run.steps_per_epoch, **record})
        if monitor.tracked is not None:
            self.logger.log_sample_losses(step, monitor.tracked[2].tolist(), monitor.sample_losses())
        self.clock += record.get("hessian/seconds", 0.0)  # images/s counts training time only

    def flush(self) -> None:
        """Write one record for the steps since the last flush (one host sync) and check them for NaN/Inf."""
        first, rows, progress = self.stats.first_step, self.stats.drain(), self.progress
        now = time.perf_counter()
        finite = [r for r in rows if is_finite_step(r.loss, r.grad_l2)]
        self.skipped_steps += len(rows) - len(finite)
        mean = lambda field: sum(getattr(r, field) for r in finite) / len(finite) if finite else math.nan  # noqa: E731
        run = self.run
        global_batch = run.trained_batch
        epoch = progress.samples / len(run.splits.train) if run.batching.adaptive else progress.step / run.steps_per_epoch
        record = {"step": progress.step, "epoch": epoch, "train/loss": mean("loss"),
                  "train/acc1": sum(r.correct for r in rows) / (len(rows) * global_batch),
                  "train/lr": self.run.optimizer.param_groups[0]["lr"], "train/grad_norm": mean("grad_l2"),
                  "train/img_per_s": len(rows) * global_batch / max(now - self.clock, 1e-9),
                  "train/skipped_steps": self.skipped_steps, "train/batch_size": global_batch,
                  "train/softmax_collapse": sum(r.collapsed for r in rows) / (len(rows) * global_batch),
                  **self.weight_record(finite),
                  **optimizer_metrics(self.run.optimizer)}
        if run.batching.adaptive:
            record["train/samples"] = progress.samples
        if first == 0 and rows:
            self.initial_loss = rows[0].loss  # l_0 of the lr sensitivity: the loss before any update
        self.collapse = record["train/softmax_collapse"]
        self.logger.log(record)
        self.logger.log_grad_norms(first, [(r.grad_l2, r.grad_l1) for r in rows])
        self.logger.advance(0, info=f"loss {record['train/loss']:.4f}  acc {record['train/acc1']:.3f}  "
                                    f"lr {record['train/lr']:.3g}  {record['train/img_per_s']:.0f} img/s")
        self.train_loss, self.clock = record["train/loss"], now
        self.stop_if_diverged(rows, first)
        proposals = [r.batch_proposal for r in rows if r.batch_proposal > 0]
        if proposals:  # the latest test's verdict, read with this interval's records: the batch grows here
            run.batch.load_state_dict(vars(run.batching.grown(run.batch, int(proposals[-1]), distributed.world_size())))
            run.resize_loader()

    def weight_record(self, rows: list[StepRecord]) -> dict:
        """The per-sample weights' extremes over the interval and their mean effective sample size (of the global
        batch: (sum m)^2 / sum m^2), when the step weighs its samples."""
        if not self.run.step.weightings or not rows:
            return {}
        return {"train/weight_min": min(r.weight_min for r in rows), "train/weight_max": max(r.weight_max for r in rows),
                "train/weight_ess": sum(r.weight_sum ** 2 / r.weight_sq_sum for r in rows) / len(rows)}

    def stop_if_diverged(self, rows: list[StepRecord], first_step: int) -> None:
        if self.cfg.trainer.on_nonfinite != "stop":
            return
        found = first_divergence(rows, first_step, self.param_names, scaled=self.run.runtime.scaler is not None)
        if found:
            step, tensor = found
            raise Diverged(step, self.run.driver.base_lrs[0] * self.run.lr_factors[step], tensor, self.saved_step)

    def end_of_epoch(self) -> None:
        epoch, done = self.progress.epoch, self.done()
        if done or epoch % self.cfg.trainer.eval_every == 0:
            with self.run.evaluation_weights():
                (self.last_eval, self.reliability), method_eval = self.run.evaluation(), self.run.method.evaluate()
            self.best_acc1 = max(self.best_acc1, self.last_eval["val/acc1"])
            ema = prefixed(self.run.evaluate(self.run.ema.module), "ema") if self.run.ema is not None else {}
            self.last_ema_eval = ema or self.last_ema_eval
            self.logger.log({"step": self.progress.step, "epoch": epoch, **self.last_eval, **ema, **method_eval})
            info = f"train loss {self.train_loss:.4f}  val acc {self.last_eval['val/acc1']:.4f}" + \
                (f"  holdout acc {self.last_eval['holdout/acc1']:.4f}" if self.run.holdout else "")
            self.logger.set_epoch_info(info)
            if not self.logger.progress:
                self.logger.print(f"epoch {epoch}/{self.run.epochs}  step {self.progress.step}  {info}")
        self.logger.advance(0, epoch_done=True)

    def results(self) -> dict:
        """The summary.json fields of the run so far (also written for a run that stops early)."""
        finite = lambda value: value if value is not None and math.isfinite(value) else None  # noqa: E731
        last = self.last_eval.get
        # every metric of the last evaluation and curvature measurement as final_<split>_<metric> (val/aurc,
        # holdout/acc1, calibrated/ece, hessian/lambda_max, ...)
        measured = self.last_eval | {k: v for k, v in self.last_curvature.items() if k.startswith(CURVATURE_FINALS)}
        finals = {f"final_{key.replace('/', '_')}": finite(value) for key, value in measured.items()}
        return {**finals, "final_train_loss": finite(self.train_loss), "best_val_acc1": self.best_acc1,
                "final_val_acc1": last("val/acc1"), "final_val_loss": finite(last("val/loss")),
                "final_val_ece": finite(last("val/ece")), "final_val_nll": finite(last("val/nll")),
                **{f"final_val_{name}_acc1": last(f"val/{name}_acc1") for name in ("balanced", "many", "medium", "few")
                   if f"val/{name}_acc1" in self.last_eval},
                "initial_train_loss": finite(self.initial_loss), "final_train_softmax_collapse": self.collapse,
                "train_label_noise": self.run.splits.label_noise, "steps": self.progress.step,
                "epochs": self.progress.epoch, "skipped_steps": self.skipped_steps,
                **({"final_ema_val_acc1": self.last_ema_eval.get("ema/val/acc1")} if self.run.ema is not None else {}),
                **({"samples": self.progress.samples, "final_batch_size": self.run.batch.global_batch}
                   if self.run.batching.adaptive else {}),
                **self.run.method.summary()}

    # ---- checkpoints ---------------------------------------------------------------------------------
    def checkpoint(self) -> None:
        if self.cfg.trainer.on_nonfinite == "stop":  # never save a diverged model (one sync, as the save is one)
            self.stop_if_diverged(self.stats.pending(), self.stats.first_step)
        self.checkpointer.save({
            **self.run.state_dicts(),
            "step": self.progress.step, "epoch": self.progress.epoch, "best_acc1": self.best_acc1,
            "samples": self.progress.samples, "position": self.position, "last_ema_eval": self.last_ema_eval,
            "last_eval": self.last_eval, "train_loss": self.train_loss, "skipped_steps": self.skipped_steps,
            "initial_loss": self.initial_loss, "collapse": self.collapse, "last_curvature": self.last_curvature,
            "total_steps": self.run.total_steps, "pending_stats": self.stats.pending_rows().cpu(),
            "pending_first_step": self.stats.first_step,
            "wall_time_s": self.wall_time_before + time.time() - self.started})
        self.saved_step = self.progress.step

    def restore(self, payload: dict) -> None:
        for name, obj in self.run.stateful().items():
            try:
                obj.load_state_dict(payload[name])
            except (RuntimeError, KeyError, ValueError) as error:
                raise ConfigError(f"the checkpoint's {name} state does not fit this config "
                                  f"({str(error).splitlines()[0]}); resume with the run's own config") from error
        self.progress.step, self.progress.epoch = payload["step"], payload["epoch"]
        self.progress.samples, self.position = payload["samples"], payload["position"]
        self.last_ema_eval = payload["last_ema_eval"]
        self.run.resize_loader()
        self.best_acc1, self.last_eval = payload["best_acc1"], payload["last_eval"]
        self.train_loss, self.skipped_steps = payload["train_loss"], payload["skipped_steps"]
        self.initial_loss, self.collapse = payload["initial_loss"], payload["collapse"]
        self.last_curvature = payload["last_curvature"]
        self.wall_time_before, self.saved_step = payload["wall_time_s"], self.progress.step
        self.stats.restore(payload["pending_stats"], payload["pending_first_step"])
        set_rng_state(payload["rng"])
