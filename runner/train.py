"""The train loop: build everything from the config, train, evaluate, checkpoint, summarise.

Hot-path rules: the step returns device tensors; per-step statistics go into a device buffer that is
read back once per `trainer.log_every` steps (the loop's only host sync); lr changes are Python floats.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig

from runner import distributed, env, run_folder
from runner.accumulate import MicroBatch, no_sync_of, run_micro_batches, split
from runner.batch_size import FixedBatch, GroupGradients, squared_norm
from runner.checkpoint import Checkpointer, set_rng_state
from runner.data import build_loaders, cpu_count
from runner.distill.base import prefixed
from runner.ema import WeightEMA
from runner.errors import ConfigError
from runner.logger import RunLogger
from runner.losses import build_loss
from runner.models import build_model
from runner.nonfinite import Diverged, SkipNonFinite, first_divergence, first_nonfinite_index, is_finite_step
from runner.optim import build_optimizer, capabilities
from runner.preemption import Preempted, PreemptionWatch
from runner.tta import check_level, tta_logits

ECE_BINS = 15
DATA_INIT_SAMPLES = 5000  # training images handed to a model's init_from_data (airbench's whitening uses 5000)


@dataclass
class Runtime:
    device: torch.device
    autocast_dtype: torch.dtype | None  # None: fp32
    channels_last: bool
    scaler: torch.amp.GradScaler | None


def resolve_runtime(trainer: DictConfig, model: torch.nn.Module) -> Runtime:
    device = env.resolve_device(trainer.device)
    precision = trainer.precision if trainer.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    dtypes = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if precision not in dtypes:
        raise ConfigError(f"trainer.precision={precision}: choose auto, fp32, bf16 or fp16")
    has_conv = any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    channels_last = (device.type == "cuda" and has_conv) if trainer.channels_last == "auto" else bool(trainer.channels_last)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    return Runtime(device, dtypes[precision], channels_last, scaler)


class CompiledOrEager:
    """Calls the torch.compile'd model, falling back to eager (with a warning) if compilation fails."""

    def __init__(self, model: torch.nn.Module, compile_model: bool, logger: RunLogger):
        self.eager, self.logger = model, logger
        self.forward = torch.compile(model) if compile_model else model

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.forward is self.eager:
            return self.eager(images)
        try:
            return self.forward(images)
        except Exception as error:  # noqa: BLE001 - any compiler failure: keep training eagerly
            self.logger.print(f"[yellow]warning: torch.compile failed ({type(error).__name__}); running eagerly")
            self.forward = self.eager
            return self.eager(images)


class StepRecord(NamedTuple):
    """One step's statistics, as the step returns them (stacked, on the device) and as `drain` reads them back."""
    loss: float
    correct: float          # correct predictions in this rank's batch
    grad_l2: float          # global L2 norm of the gradients, before clipping
    grad_l1: float          # L1 norm (0 unless recorded: trainer.grad_norm_l1)
    nonfinite_param: float  # index of the first parameter with a non-finite gradient (0 when none)
    batch_proposal: float   # the adaptive batch's test: the global batch it asks for (0: no test this step)


class StepStats:
    """Per-step records kept on the device until the logging interval."""
    FIELDS = StepRecord._fields
    # over ranks: loss and norms averaged, correct counts summed; the non-finite parameter index is per rank
    RANK_MEAN, RANK_SUM = ("loss", "grad_l2", "grad_l1"), ("correct",)

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
        records = [StepRecord(*row) for row in rows.tolist()]  # the one host sync per logging interval
        self.count = 0
        return records

    def pending(self) -> torch.Tensor:
        """The rows not yet drained (a checkpoint carries them so the resumed run writes the same records)."""
        return self.buffer[:self.count]

    def restore(self, rows: torch.Tensor, first_step: int) -> None:
        if len(rows) > len(self.buffer):  # resumed with a smaller log_every: room for the saved rows
            self.buffer = torch.zeros(len(rows), self.buffer.shape[1], device=self.buffer.device)
        self.count, self.first_step = len(rows), first_step
        self.buffer[:self.count] = rows.to(self.buffer.device)


def correct_predictions(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Top-1 hits; against a probability target (mixup, cutmix) its largest class, the image's dominant label."""
    labels = targets.argmax(-1) if targets.ndim == 2 else targets
    return (logits.argmax(-1) == labels).sum()


@torch.no_grad()
def grad_norms(params: list[torch.Tensor], with_l1: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """L2 (and L1) norm of all gradients, and the index in `params` of the first non-finite one."""
    grads = [p.grad if p.grad is not None else p.new_empty(0) for p in params]  # empty: norm 0, keeps indices
    norms = torch.stack(torch._foreach_norm(grads))
    l2 = torch.linalg.vector_norm(norms)
    l1 = torch.stack(torch._foreach_norm(grads, 1)).sum() if with_l1 else torch.zeros_like(l2)
    return l2, l1, first_nonfinite_index(norms)


class Trainer:
    def __init__(self, cfg: DictConfig, run_dir: Path, logger: RunLogger, checkpointer: Checkpointer,
                 preemption: PreemptionWatch | None = None):
        self.cfg, self.run_dir, self.logger, self.checkpointer = cfg, Path(run_dir), logger, checkpointer
        self.preemption = preemption
        trainer = cfg.trainer
        env.seed_everything(cfg.seed, trainer.deterministic)
        self.splits = instantiate(cfg.dataset)
        self.model = build_model(cfg.model, self.splits.in_channels, self.splits.num_classes)
        self.rt = resolve_runtime(trainer, self.model)
        self.model.to(self.rt.device, memory_format=torch.channels_last if self.rt.channels_last else torch.preserve_format)
        self.model = distributed.convert_sync_bn(self.model, trainer.sync_bn)
        self.world_size = distributed.world_size()
        workers = min(8, cpu_count()) if trainer.num_workers == "auto" else int(trainer.num_workers)
        self.batching = instantiate(cfg.batch) if cfg.get("batch") else FixedBatch()
        self.batch = self.batching.start(trainer, self.world_size, len(self.splits.train))
        self.train_loader, self.val_loader = build_loaders(
            self.splits, self.batch.per_device, trainer.eval_batch_size, self.rt.device, cfg.seed, workers,
            self.rt.channels_last, distributed.rank(), self.world_size)
        self.steps_per_epoch = len(self.train_loader)  # at the starting batch
        # batch=adaptive counts the run in samples (schedules follow them); its step count is a bound
        self.total_samples = int(trainer.epochs * len(self.splits.train)) if self.batching.adaptive else None
        self.total_steps = int(trainer.max_steps or trainer.epochs * self.steps_per_epoch)
        self.epochs = trainer.epochs if self.batching.adaptive else math.ceil(self.total_steps / self.steps_per_epoch)
        if hasattr(self.model, "init_from_data"):  # data-dependent init (airbench's whitening), before the optimizer
            self.model.init_from_data(self.train_loader.sample(DATA_INIT_SAMPLES))
        self.optimizer = build_optimizer(cfg.optimizer, self.model, self.total_steps)
        self.loss_fn = build_loss(cfg.loss)
        # DDP first, then compile (torch's DDPOptimizer splits the graph at DDP's bucket boundaries)
        self.forward = CompiledOrEager(distributed.wrap(self.model, self.rt.device), trainer.compile, logger)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.param_names = [name for name, p in self.model.named_parameters() if p.requires_grad]
        self.tta = check_level(trainer.tta)
        self.build_schedule(cfg, logger)
        self.capabilities = capabilities(cfg.optimizer)
        auto_l1 = trainer.grad_norm_l1 == "auto"
        self.grad_norm_l1 = bool(self.capabilities.adaptive) if auto_l1 else bool(trainer.grad_norm_l1)
        self.second_order = self.capabilities.second_order  # fp32 only: runner/validate.py
        self.guard = (SkipNonFinite(self.model, self.optimizer, self.params, self.rt.scaler is not None)
                      if trainer.on_nonfinite == "skip" else None)
        self.stats = StepStats(trainer.log_every, self.rt.device)
        ema = trainer.get("ema") or {}
        self.ema = (WeightEMA(self.model, ema.decay, ema.warmup, ema.warmup_gamma, ema.warmup_power, ema.every)
                    if ema.get("decay") else None)
        self.step, self.epoch, self.best_acc1, self.last_eval = 0, 0, 0.0, {}
        self.samples, self.position = 0, 0  # samples trained on, and into the current epoch (global counts)
        self.last_ema_eval: dict = {}
        self.train_loss, self.skipped_steps, self.saved_step = math.nan, 0, None
        self.wall_time_before, self.started, self.clock = 0.0, time.time(), time.perf_counter()
        self.distill = instantiate(cfg.distill)
        distributed.refuse_unsupported(self.optimizer, trainer.sync_bn, self.rt.device, self.distill)
        self.distill.setup(self)

    def build_schedule(self, cfg: DictConfig, logger: RunLogger) -> None:
        """The lr schedule, by optimizer step; under batch=adaptive by samples seen (written on a grid)."""
        self.base_lrs = [group["lr"] for group in self.optimizer.param_groups]
        if self.batching.adaptive:
            per_epoch = len(self.splits.train)
            self.schedule = instantiate(cfg.schedule)(total_steps=self.total_samples, steps_per_epoch=per_epoch)
            grid = [round(i * (self.total_samples - 1) / 999) for i in range(1000)]
            factors, positions, unit = [self.schedule(t) for t in grid], grid, "samples"
        else:
            self.schedule = instantiate(cfg.schedule)(total_steps=self.total_steps, steps_per_epoch=self.steps_per_epoch)
            self.lr_factors = factors = self.schedule.factors()
            per_epoch, positions, unit = self.steps_per_epoch, None, "step"
        if logger.enabled:
            run_folder.write_lr_schedule(self.run_dir, factors, self.base_lrs[0], per_epoch,
                                         type(self.schedule).__name__, positions, unit)

    def lr_factor(self, step: int | None = None) -> float:
        """The schedule at this step (or at the samples seen before it, under batch=adaptive)."""
        if self.batching.adaptive:
            return self.schedule(min(self.samples, self.total_samples - 1))
        return self.lr_factors[self.step if step is None else step]

    def done(self) -> bool:
        return self.samples >= self.total_samples if self.batching.adaptive else self.step >= self.total_steps

    # ---- one optimizer step --------------------------------------------------------------------------
    def autocast(self):
        dtype = self.rt.autocast_dtype  # None (fp32): no context at all, whose enter/exit cost shows on tiny steps
        return torch.autocast(self.rt.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()

    def compute_loss(self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor):
        with self.autocast():
            logits = self.forward(images)
            return self.distill.loss(images, labels, indices, logits), logits

    def train_step(self, images: torch.Tensor, targets: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """One optimizer step on this rank's batch, as `batch.micro_batches` micro-batches (trainer.accumulate,
        or what the adaptive batch needs); its statistics as one device row (StepRecord)."""
        trainer, optimizer, scaler = self.cfg.trainer, self.optimizer, self.rt.scaler
        factor = self.lr_factor()
        for group, base_lr in zip(optimizer.param_groups, self.base_lrs):
            group["lr"] = base_lr * factor
        if self.guard:
            self.guard.snapshot()
        testing = self.batching.adaptive and self.batching.test_due(self.step, self.batch)
        parts = split(images, targets, indices,
                      self.batching.test_parts(self.batch, self.world_size) if testing else self.batch.micro_batches)
        groups = GroupGradients(self.params, self.batching.needs_inner_products) if testing else None
        loss, logits = self.backward(parts, manual_sync=testing and self.world_size > 1,
                                     after_each=groups and (lambda micro: groups.add(len(micro.indices), len(indices))))
        proposal = self.batch_proposal(groups) if testing else torch.zeros((), device=loss.device)
        if scaler is not None:
            scaler.unscale_(optimizer)
        l2, l1, nonfinite = grad_norms(self.params, self.grad_norm_l1)  # before the optimizer touches them
        if trainer.grad_clip:
            torch.nn.utils.clip_grads_with_norm_(self.params, trainer.grad_clip, l2, foreach=True)
        closure = self.closure(parts) if self.capabilities.needs_closure else None
        do_step = lambda: self.optimizer_step(closure)
        self.guard.step(loss, l2, do_step) if self.guard else do_step()
        optimizer.zero_grad(set_to_none=True)
        correct = sum(correct_predictions(out, micro.targets) for out, micro in zip(logits, parts))
        return torch.stack([loss, correct.float(), l2.float(), l1.float(), nonfinite.float(), proposal.float()])

    def backward(self, parts: list[MicroBatch], manual_sync: bool = False, after_each=None, scaled: bool = True):
        """Forward and backward over the micro-batches (DDP syncs on the last one only, or not at all with
        `manual_sync`, which averages the gradients over the ranks itself afterwards)."""
        scaler = self.rt.scaler if scaled else None

        def loss_of(micro: MicroBatch):
            return self.compute_loss(micro.images, micro.targets, micro.indices)

        def backward(loss: torch.Tensor) -> None:
            if scaler is not None:
                scaler.scale(loss).backward()
            else:
                loss.backward(create_graph=self.second_order)

        loss, logits = run_micro_batches(parts, loss_of, backward, no_sync_of(self.forward.eager),
                                         "manual" if manual_sync else "last", after_each)
        if manual_sync:
            distributed.average_gradients(self.params)
        return loss, logits

    def batch_proposal(self, groups: GroupGradients) -> torch.Tensor:
        """The adaptive batch's test on this step's micro-batch gradients (summed over the ranks; no host sync)."""
        grads = groups.grads()
        totals = groups.totals(grads)
        distributed.all_reduce_sum(totals)
        return self.batching.proposal(totals, squared_norm(grads), self.batch.global_batch)

    def optimizer_step(self, closure) -> None:
        optimizer, scaler = self.optimizer, self.rt.scaler
        if scaler is not None:
            scaler.step(optimizer, closure) if closure else scaler.step(optimizer)
        else:
            optimizer.step(closure) if closure else optimizer.step()
        self.distill.after_step(self.step, scaler)  # a second model's optimizer, per-sample memories, EMA
        if scaler is not None:
            scaler.update()  # after every optimizer that stepped with this scale
        if self.ema is not None:
            self.ema.step(self.step + 1)

    def closure(self, parts: list[MicroBatch]):
        """Re-evaluates loss and gradients at the optimizer's current weights (SAM's second pass)."""
        def evaluate_again():
            with torch.enable_grad():
                loss, _ = self.backward(parts, scaled=False)
            return loss
        return evaluate_again

    # ---- evaluation ----------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module | None = None) -> dict:
        model = model or self.model
        was_training = model.training
        model.eval()
        device = self.rt.device
        sums = torch.zeros(5, device=device)  # loss, nll, top1, top5, count
        bins = torch.zeros(3, ECE_BINS, device=device)  # count, confidence, accuracy
        for images, labels, _ in self.val_loader.epoch(0):
            with self.autocast():
                logits = tta_logits(model, images, self.tta)
            loss = self.loss_fn(logits, labels) * len(labels)
            nll = F.cross_entropy(logits, labels, reduction="sum")
            top5 = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
            hits = top5 == labels[:, None]
            sums += torch.stack([loss, nll, hits[:, 0].sum(), hits.any(-1).sum(), torch.tensor(len(labels), device=device)])
            confidence = logits.softmax(-1).max(-1).values
            # bin b holds confidences in [b/15, (b+1)/15); the clamp keeps 1.0 and NaN (a diverged model) in range
            bin_index = (confidence * ECE_BINS).long().clamp_(0, ECE_BINS - 1)
            for row, values in enumerate((torch.ones_like(confidence), confidence, hits[:, 0].float())):
                bins[row].index_add_(0, bin_index, values)
        model.train(was_training)
        distributed.all_reduce_sum(sums)  # every rank evaluated its own shard: sum counts, never average rates
        distributed.all_reduce_sum(bins)
        loss, nll, top1, top5, count = sums.tolist()
        ece = ((bins[1] - bins[2]).abs().sum() / count).item()
        return {"val/loss": loss / count, "val/nll": nll / count, "val/acc1": top1 / count,
                "val/acc5": top5 / count, "val/ece": ece}

    # ---- the loop ------------------------------------------------------------------------------------
    def fit(self) -> dict:
        trainer, log, batch = self.cfg.trainer, self.logger, self.batch
        budget = (f"{self.total_samples:,} samples (batch=adaptive)" if self.batching.adaptive
                  else f"{self.total_steps} steps")
        accumulation = f" ({batch.micro_batches} micro-batches)" if batch.micro_batches > 1 else ""
        log.print(f"divrun: {self.splits.name} ({len(self.splits.train)} train / {len(self.splits.val)} val), "
                  f"{sum(p.numel() for p in self.params):,} parameters, {budget} on {self.rt.device}, "
                  f"batch {batch.per_device} per device{accumulation} x {self.world_size} processes = "
                  f"{batch.global_batch} global")
        log.start_progress(None if self.batching.adaptive else self.total_steps, self.epochs, self.steps_per_epoch,
                           self.step, self.epoch)
        self.clock = time.perf_counter()
        self.model.train()
        while not self.done():
            epoch, size = self.epoch, self.batch.per_device
            if hasattr(self.model, "set_epoch"):  # per-epoch model settings (airbench freezes its whitening bias)
                self.model.set_epoch(self.epoch)
            stepped = False
            for images, targets, indices in self.train_loader.epoch(self.epoch, start_sample=self.position):
                stepped = True
                self.stats.add(self.step, self.train_step(images, targets, indices))
                self.step += 1
                self.samples += self.batch.global_batch
                self.position += self.batch.global_batch
                log.advance()
                self.end_of_step()
                if self.done() or self.epoch != epoch or self.batch.per_device != size:
                    break  # a new epoch, or a grown batch: the loader restarts at self.position
            if not stepped:
                raise RuntimeError(f"epoch {self.epoch} holds no batch of {self.batch.global_batch} from sample "
                                   f"{self.position}: the loop would not advance")
        return self.results()

    def epoch_done(self) -> bool:
        """No full step's batch is left in this epoch (or the run's budget is spent)."""
        return self.done() or self.position + self.batch.global_batch > len(self.splits.train) or (
            not self.batching.adaptive and self.step == (self.epoch + 1) * self.steps_per_epoch)

    def end_of_step(self) -> None:
        """Records, evaluation and checkpoints that fall on this step; a preemption signal saves and stops here.

        A checkpoint taken here is the state after all of the step's work, so the records up to its step are
        final and a resumed run writes exactly the records that follow."""
        trainer = self.cfg.trainer
        epoch_done = self.epoch_done()
        flushed = self.stats.count >= trainer.log_every or (epoch_done and self.stats.count)
        if flushed:
            self.flush()
            epoch_done = epoch_done or self.epoch_done()  # a batch grown here may not fit in the epoch's rest
        if epoch_done:
            self.epoch, self.position = self.epoch + 1, 0
            self.end_of_epoch()
        if self.checkpoint_due(epoch_done):
            self.checkpoint()
        if not self.done() and self.preemption_agreed(flushed):
            if self.saved_step != self.step:
                self.checkpoint()
            raise Preempted(self.preemption.received or "a preemption signal (on another rank)", self.step)

    def preemption_agreed(self, flushed: bool) -> bool:
        """Whether to stop here for a preemption signal. One process reads its flag every step (no sync).
        Under DDP every rank must stop at the same step, or one waits forever in a collective the others
        left, and a signal may reach only some ranks (another node's agent): the ranks agree on the flag at
        logging boundaries, which fall on the same steps everywhere and sync anyway, so a signal is honoured
        within trainer.log_every steps."""
        if self.preemption is None:
            return False
        if self.world_size == 1:
            return self.preemption.requested
        if not flushed:
            return False
        flag = torch.tensor([float(self.preemption.requested)], device=self.stats.buffer.device)
        return distributed.all_reduce_sum(flag).item() > 0

    def checkpoint_due(self, epoch_done: bool) -> bool:
        trainer = self.cfg.trainer
        every_epochs, every_steps = trainer.checkpoint_every, trainer.checkpoint_every_steps
        return (self.done() or bool(every_steps and self.step % every_steps == 0)
                or bool(epoch_done and every_epochs and self.epoch % every_epochs == 0))

    def flush(self) -> None:
        """Write one record for the steps since the last flush (one host sync) and check them for NaN/Inf."""
        first, rows = self.stats.first_step, self.stats.drain()
        now = time.perf_counter()
        finite = [r for r in rows if is_finite_step(r.loss, r.grad_l2)]
        self.skipped_steps += len(rows) - len(finite)
        mean = lambda field: sum(getattr(r, field) for r in finite) / len(finite) if finite else math.nan
        global_batch = self.batch.global_batch
        epoch = self.samples / len(self.splits.train) if self.batching.adaptive else self.step / self.steps_per_epoch
        record = {"step": self.step, "epoch": epoch, "train/loss": mean("loss"),
                  "train/acc1": sum(r.correct for r in rows) / (len(rows) * global_batch),
                  "train/lr": self.optimizer.param_groups[0]["lr"], "train/grad_norm": mean("grad_l2"),
                  "train/img_per_s": len(rows) * global_batch / max(now - self.clock, 1e-9),
                  "train/skipped_steps": self.skipped_steps, "train/batch_size": global_batch}
        if self.batching.adaptive:
            record["train/samples"] = self.samples
        self.logger.log(record)
        self.logger.log_grad_norms(first, [(r.grad_l2, r.grad_l1) for r in rows])
        self.logger.advance(0, info=f"loss {record['train/loss']:.4f}  acc {record['train/acc1']:.3f}  "
                                    f"lr {record['train/lr']:.3g}  {record['train/img_per_s']:.0f} img/s")
        self.train_loss, self.clock = record["train/loss"], now
        self.stop_if_diverged(rows, first)
        proposals = [r.batch_proposal for r in rows if r.batch_proposal > 0]
        if proposals:  # the latest test's verdict, read with this interval's records: the batch grows here
            self.batch = self.batching.grown(self.batch, int(proposals[-1]), self.world_size)
            self.train_loader.batch_size = self.batch.per_device

    def stop_if_diverged(self, rows: list[StepRecord], first_step: int) -> None:
        if self.cfg.trainer.on_nonfinite != "stop":
            return
        found = first_divergence(rows, first_step, self.param_names, scaled=self.rt.scaler is not None)
        if found:
            step, tensor = found
            raise Diverged(step, self.base_lrs[0] * self.lr_factor(step), tensor, self.saved_step)

    def end_of_epoch(self) -> None:
        trainer, done = self.cfg.trainer, self.done()
        if done or self.epoch % trainer.eval_every == 0:
            self.last_eval = self.evaluate()
            self.best_acc1 = max(self.best_acc1, self.last_eval["val/acc1"])
            ema = prefixed(self.evaluate(self.ema.module), "ema") if self.ema is not None else {}
            self.last_ema_eval = ema or self.last_ema_eval
            self.logger.log({"step": self.step, "epoch": self.epoch, **self.last_eval, **ema, **self.distill.evaluate()})
            info = f"train loss {self.train_loss:.4f}  val acc {self.last_eval['val/acc1']:.4f}"
            self.logger.set_epoch_info(info)
            if not self.logger.progress:
                self.logger.print(f"epoch {self.epoch}/{self.epochs}  step {self.step}  {info}")
        self.logger.advance(0, epoch_done=True)

    def results(self) -> dict:
        """The summary.json fields of the run so far (also written for a run that stops early)."""
        finite = lambda value: value if value is not None and math.isfinite(value) else None
        return {"final_train_loss": finite(self.train_loss), "best_val_acc1": self.best_acc1,
                "final_val_acc1": self.last_eval.get("val/acc1"), "final_val_loss": finite(self.last_eval.get("val/loss")),
                "final_val_ece": finite(self.last_eval.get("val/ece")),
                "final_val_nll": finite(self.last_eval.get("val/nll")), "train_label_noise": self.splits.label_noise,
                "steps": self.step, "epochs": self.epoch, "skipped_steps": self.skipped_steps,
                **({"final_ema_val_acc1": self.last_ema_eval.get("ema/val/acc1")} if self.ema is not None else {}),
                **({"samples": self.samples, "final_batch_size": self.batch.global_batch}
                   if self.batching.adaptive else {}),
                **self.distill.summary()}

    # ---- checkpoints ---------------------------------------------------------------------------------
    def stateful(self) -> dict:
        """Everything whose state_dict a checkpoint carries (model, optimizer, loss, scaler, and a schedule or
        any other component that has state): a new stateful component is one more entry here."""
        objects = {"model": self.model, "optimizer": self.optimizer, "loss": self.loss_fn, "scaler": self.rt.scaler,
                   "schedule": self.schedule, "distill": self.distill, "ema": self.ema, "batch": self.batch}
        return {name: obj for name, obj in objects.items() if hasattr(obj, "state_dict")}

    def checkpoint(self) -> None:
        if self.cfg.trainer.on_nonfinite == "stop":  # never save a diverged model (one sync, as the save is one)
            self.stop_if_diverged([StepRecord(*row) for row in self.stats.pending().tolist()], self.stats.first_step)
        self.checkpointer.save({
            **{name: obj.state_dict() for name, obj in self.stateful().items()},
            "step": self.step, "epoch": self.epoch, "best_acc1": self.best_acc1, "last_eval": self.last_eval,
            "samples": self.samples, "position": self.position, "last_ema_eval": self.last_ema_eval,
            "train_loss": self.train_loss, "skipped_steps": self.skipped_steps, "total_steps": self.total_steps,
            "pending_stats": self.stats.pending().cpu(), "pending_first_step": self.stats.first_step,
            "wall_time_s": self.wall_time_before + time.time() - self.started})
        self.saved_step = self.step

    def restore(self, payload: dict) -> None:
        for name, obj in self.stateful().items():
            try:
                obj.load_state_dict(payload[name])
            except (RuntimeError, KeyError, ValueError) as error:
                raise ConfigError(f"the checkpoint's {name} state does not fit this config "
                                  f"({str(error).splitlines()[0]}); resume with the run's own config") from error
        self.step, self.epoch = payload["step"], payload["epoch"]
        self.samples, self.position = payload["samples"], payload["position"]
        self.last_ema_eval = payload["last_ema_eval"]
        self.train_loader.batch_size = self.batch.per_device
        self.best_acc1, self.last_eval = payload["best_acc1"], payload["last_eval"]
        self.train_loss, self.skipped_steps = payload["train_loss"], payload["skipped_steps"]
        self.wall_time_before, self.saved_step = payload["wall_time_s"], self.step
        self.stats.restore(payload["pending_stats"], payload["pending_first_step"])
        set_rng_state(payload["rng"])
