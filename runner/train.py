"""The train loop: build everything from the config, train, evaluate, checkpoint, summarise.

Hot-path rules: the step returns device tensors; per-step statistics go into a device buffer that is
read back once per `trainer.log_every` steps (the loop's only host sync); lr changes are Python floats.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig

from runner import env
from runner.checkpoint import Checkpointer, set_rng_state
from runner.data import build_loaders, cpu_count
from runner.distill.base import Distiller
from runner.errors import ConfigError
from runner.logger import RunLogger
from runner.models import build_model
from runner.optim import build_optimizer

ECE_BINS = 15


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


class StepStats:
    """Per-step loss, correct count and gradient norms kept on the device until the logging interval."""
    FIELDS = ("loss", "correct", "grad_l2", "grad_l1")

    def __init__(self, capacity: int, device: torch.device):
        self.buffer = torch.zeros(capacity, len(self.FIELDS), device=device)
        self.count, self.first_step = 0, 0

    def add(self, step: int, values: torch.Tensor) -> None:
        if self.count == 0:
            self.first_step = step
        self.buffer[self.count] = values
        self.count += 1

    def drain(self) -> list[list[float]]:
        rows = self.buffer[:self.count].tolist()  # the one host sync per logging interval
        self.count = 0
        return rows


@torch.no_grad()
def grad_norms(params: list[torch.Tensor], with_l1: bool) -> tuple[torch.Tensor, torch.Tensor]:
    grads = [p.grad for p in params if p.grad is not None]
    l2 = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    l1 = torch.stack(torch._foreach_norm(grads, 1)).sum() if with_l1 else torch.zeros_like(l2)
    return l2, l1


class Trainer:
    def __init__(self, cfg: DictConfig, run_dir: Path, logger: RunLogger, checkpointer: Checkpointer):
        self.cfg, self.run_dir, self.logger, self.checkpointer = cfg, Path(run_dir), logger, checkpointer
        trainer = cfg.trainer
        env.seed_everything(cfg.seed, trainer.deterministic)
        self.splits = instantiate(cfg.dataset)
        self.model = build_model(cfg.model, self.splits.in_channels, self.splits.num_classes)
        self.rt = resolve_runtime(trainer, self.model)
        self.model.to(self.rt.device, memory_format=torch.channels_last if self.rt.channels_last else torch.preserve_format)
        workers = min(8, cpu_count()) if trainer.num_workers == "auto" else int(trainer.num_workers)
        self.train_loader, self.val_loader = build_loaders(
            self.splits, trainer.batch_size, trainer.eval_batch_size, self.rt.device, cfg.seed, workers,
            self.rt.channels_last)
        self.optimizer = build_optimizer(cfg.optimizer, self.model)
        self.loss_fn = instantiate(cfg.loss)
        self.forward = CompiledOrEager(self.model, trainer.compile, logger)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.steps_per_epoch = len(self.train_loader)
        self.total_steps = int(trainer.max_steps or trainer.epochs * self.steps_per_epoch)
        self.epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        self.schedule = instantiate(cfg.schedule)(total_steps=self.total_steps, steps_per_epoch=self.steps_per_epoch)
        self.lr_factors = self.schedule.factors()
        self.base_lrs = [group["lr"] for group in self.optimizer.param_groups]
        self.second_order = getattr(self.optimizer, "second_order", False)
        if self.second_order and self.rt.autocast_dtype is not None:
            raise ConfigError(f"optimizer={cfg.optimizer._target_.rsplit('.', 1)[-1]} is second-order and needs "
                              f"fp32 Hessian-vector products; set trainer.precision=fp32")
        self.step, self.epoch, self.best_acc1, self.last_eval = 0, 0, 0.0, {}
        # run folders saved before the `distill` group existed have no distill key
        self.distill = instantiate(cfg.distill) if cfg.get("distill") else Distiller()
        self.distill.setup(self)

    # ---- one optimizer step --------------------------------------------------------------------------
    def autocast(self):
        dtype = self.rt.autocast_dtype
        return torch.autocast(self.rt.device.type, dtype=dtype, enabled=dtype is not None)

    def compute_loss(self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor):
        with self.autocast():
            logits = self.forward(images)
            return self.distill.loss(images, labels, indices, logits), logits

    def train_step(self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        trainer, optimizer, scaler = self.cfg.trainer, self.optimizer, self.rt.scaler
        factor = self.lr_factors[self.step]
        for group, base_lr in zip(optimizer.param_groups, self.base_lrs):
            group["lr"] = base_lr * factor
        loss, logits = self.compute_loss(images, labels, indices)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward(create_graph=self.second_order)
        l2, l1 = grad_norms(self.params, trainer.grad_norm_l1)  # before the optimizer touches the gradients
        if trainer.grad_clip:
            torch.nn.utils.clip_grads_with_norm_(self.params, trainer.grad_clip, l2, foreach=True)
        closure = self.closure(images, labels, indices) if getattr(optimizer, "needs_closure", False) else None
        if scaler is not None:
            scaler.step(optimizer, closure) if closure else scaler.step(optimizer)
        else:
            optimizer.step(closure) if closure else optimizer.step()
        self.distill.after_step(self.step, scaler)  # a second model's optimizer, per-sample memories, EMA
        if scaler is not None:
            scaler.update()
        optimizer.zero_grad(set_to_none=True)
        correct = (logits.detach().argmax(-1) == labels).sum() if labels.ndim == 1 else torch.zeros_like(l2)
        return torch.stack([loss.detach().float(), correct.float(), l2.float(), l1.float()])

    def closure(self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor):
        """Re-evaluates loss and gradients at the optimizer's current weights (SAM's second pass)."""
        def evaluate_again():
            with torch.enable_grad():
                loss, _ = self.compute_loss(images, labels, indices)
                loss.backward()
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
                logits = model(images)
            logits = logits.float()
            loss = self.loss_fn(logits, labels) * len(labels)
            nll = F.cross_entropy(logits, labels, reduction="sum")
            top5 = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
            hits = top5 == labels[:, None]
            sums += torch.stack([loss, nll, hits[:, 0].sum(), hits.any(-1).sum(), torch.tensor(len(labels), device=device)])
            confidence = logits.softmax(-1).max(-1).values
            bin_index = (confidence * ECE_BINS).long().clamp_(max=ECE_BINS - 1)
            for row, values in enumerate((torch.ones_like(confidence), confidence, hits[:, 0].float())):
                bins[row].index_add_(0, bin_index, values)
        model.train(was_training)
        loss, nll, top1, top5, count = sums.tolist()
        ece = ((bins[1] - bins[2]).abs().sum() / count).item()
        return {"val/loss": loss / count, "val/nll": nll / count, "val/acc1": top1 / count,
                "val/acc5": top5 / count, "val/ece": ece}

    # ---- the loop ------------------------------------------------------------------------------------
    def restore(self, payload: dict) -> None:
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        if self.rt.scaler is not None and payload.get("scaler"):
            self.rt.scaler.load_state_dict(payload["scaler"])
        self.step, self.epoch = payload["step"], payload["epoch"]
        self.best_acc1, self.last_eval = payload.get("best_acc1", 0.0), payload.get("last_eval", {})
        self.distill.load_state_dict(payload.get("distill", {}))
        set_rng_state(payload["rng"])

    def checkpoint(self) -> None:
        self.checkpointer.save({
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scaler": self.rt.scaler.state_dict() if self.rt.scaler else {}, "step": self.step,
            "epoch": self.epoch, "best_acc1": self.best_acc1, "last_eval": self.last_eval,
            "total_steps": self.total_steps, "distill": self.distill.state_dict()})

    def fit(self) -> dict:
        trainer, log = self.cfg.trainer, self.logger
        stats = StepStats(trainer.log_every, self.rt.device)
        log.print(f"divrun: {self.splits.name} ({len(self.splits.train)} train / {len(self.splits.val)} val), "
                  f"{sum(p.numel() for p in self.params):,} parameters, {self.total_steps} steps on {self.rt.device}, "
                  f"batch {trainer.batch_size}")
        log.start_progress(self.total_steps, self.epochs, self.steps_per_epoch, self.step, self.epoch)
        train_loss = math.nan
        clock = time.perf_counter()
        self.model.train()
        while self.step < self.total_steps:
            start_batch = self.step - self.epoch * self.steps_per_epoch
            for images, labels, indices in self.train_loader.epoch(self.epoch, start_batch):
                stats.add(self.step, self.train_step(images, labels, indices))
                self.step += 1
                log.advance()
                if stats.count == trainer.log_every or self.step == self.total_steps:
                    train_loss, clock = self.flush(stats, clock)
                if self.step == self.total_steps:
                    break
            self.epoch += 1
            if stats.count:
                train_loss, clock = self.flush(stats, clock)
            self.end_of_epoch(train_loss)
        return {"final_train_loss": train_loss, "best_val_acc1": self.best_acc1,
                "final_val_acc1": self.last_eval.get("val/acc1"), "final_val_loss": self.last_eval.get("val/loss"),
                "final_val_ece": self.last_eval.get("val/ece"), "steps": self.step, "epochs": self.epoch,
                **self.distill.summary()}

    def flush(self, stats: StepStats, clock: float) -> tuple[float, float]:
        """Write one record for the steps since the last flush (one host sync), return mean loss and time."""
        first, rows = stats.first_step, stats.drain()
        now = time.perf_counter()
        n = len(rows)
        loss = sum(r[0] for r in rows) / n
        record = {"step": self.step, "epoch": self.step / self.steps_per_epoch, "train/loss": loss,
                  "train/acc1": sum(r[1] for r in rows) / (n * self.cfg.trainer.batch_size),
                  "train/lr": self.optimizer.param_groups[0]["lr"], "train/grad_norm": sum(r[2] for r in rows) / n,
                  "train/img_per_s": n * self.cfg.trainer.batch_size / max(now - clock, 1e-9)}
        self.logger.log(record)
        self.logger.log_grad_norms(first, [[r[2], r[3]] for r in rows])
        self.logger.advance(0, info=f"loss {loss:.4f}  acc {record['train/acc1']:.3f}  lr {record['train/lr']:.3g}  "
                                    f"{record['train/img_per_s']:.0f} img/s")
        return loss, now

    def end_of_epoch(self, train_loss: float) -> None:
        trainer, done = self.cfg.trainer, self.step >= self.total_steps
        if done or self.epoch % trainer.eval_every == 0:
            self.last_eval = self.evaluate()
            self.best_acc1 = max(self.best_acc1, self.last_eval["val/acc1"])
            self.logger.log({"step": self.step, "epoch": self.epoch, **self.last_eval, **self.distill.evaluate()})
            info = f"train loss {train_loss:.4f}  val acc {self.last_eval['val/acc1']:.4f}"
            self.logger.set_epoch_info(info)
            if not self.logger.progress:
                self.logger.print(f"epoch {self.epoch}/{self.epochs}  step {self.step}  {info}")
        self.logger.advance(0, epoch_done=True)
        if done or self.epoch % trainer.checkpoint_every == 0:
            self.checkpoint()
