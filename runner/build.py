"""Building a run's parts from its config: data (with the sampler's epoch order), model, runtime (device,
precision, memory format), loss, optimizer driver, schedule, the methods with their context (distiller,
per-sample weighting, data selection), and the step. Nothing is written here:
the job writes the run folder only once everything is built (and a checkpoint restored), so bad input found
while building leaves nothing behind.
"""
from __future__ import annotations

import contextlib
import itertools
import math
from dataclasses import dataclass
from typing import Callable

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from runner import distributed, env
from runner.batch_size import BatchState, FixedBatch
from runner.calibration import calibrated
from runner.context import DataInfo, MethodContext, Progress
from runner.curvature import CurvatureMonitor, build_curvature
from runner.data.loaders import build_loaders, cpu_count
from runner.data.sharding import batches_per_epoch
from runner.data.splits import split_labels
from runner.ema import WeightEMA
from runner.evaluation import evaluate, evaluation_pass
from runner.losses import build_loss
from runner.models import build_model
from runner.nonfinite import SkipNonFinite
from runner.optim import build_optimizer, capabilities
from runner.schedules import total_steps
from runner.step import OptimizerDriver, Step, autocast_for
from runner.weighting import SamplerCorrection

DATA_INIT_SAMPLES = 5000  # training images handed to a model's init_from_data (airbench's whitening uses 5000)


@dataclass
class Runtime:
    device: torch.device
    autocast_dtype: torch.dtype | None  # None: fp32
    channels_last: bool
    scaler: torch.amp.GradScaler | None


def resolve_runtime(trainer: DictConfig, model: torch.nn.Module) -> Runtime:
    device = env.resolve_device(trainer.device)
    precision = env.resolved_precision(trainer.precision, device)
    dtypes = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    has_conv = any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    channels_last = (device.type == "cuda" and has_conv) if trainer.channels_last == "auto" else bool(trainer.channels_last)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    return Runtime(device, dtypes[precision], channels_last, scaler)


class CompiledOrEager:
    """Calls the torch.compile'd model, falling back to eager (with a warning) if compilation fails."""

    def __init__(self, model: torch.nn.Module, compile_model: bool, print: Callable[[str], None]):
        self.eager, self.print = model, print
        self.forward = torch.compile(model) if compile_model else model

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.forward is self.eager:
            return self.eager(images)
        try:
            return self.forward(images)
        except Exception as error:  # noqa: BLE001 - any compiler failure: keep training eagerly
            self.print(f"[yellow]warning: torch.compile failed ({type(error).__name__}); running eagerly")
            self.forward = self.eager
            return self.eager(images)


class BySamples:
    """The lr factors of a run whose batch grows (batch=adaptive): indexed like a step's list, the factor is the
    schedule's at the samples seen before the step runs (`progress.samples`), so its shape holds in samples."""

    def __init__(self, schedule, progress: Progress, total_samples: int):
        self.schedule, self.progress, self.total_samples = schedule, progress, total_samples

    def __getitem__(self, step: int) -> float:
        return self.schedule(min(self.progress.samples, self.total_samples - 1))

    def points(self, count: int = 1000) -> tuple[list[int], list[float]]:
        """The schedule on a grid of sample positions (lr_schedule.csv and .png)."""
        positions = [round(i * (self.total_samples - 1) / (count - 1)) for i in range(count)]
        return positions, [self.schedule(t) for t in positions]


@dataclass
class Run:
    """Everything a run trains with, built; the loop (runner/train.py) drives it."""
    cfg: DictConfig
    splits: object
    model: torch.nn.Module
    runtime: Runtime
    train_loader: object
    eval_loaders: dict       # by split name: "val" (the test split), "holdout" with dataset.holdout
    loss_fn: torch.nn.Module
    schedule: object
    lr_factors: list[float]
    driver: OptimizerDriver  # the student's
    method: object           # the distiller (distill=none: the loss on the labels)
    weighting: object        # runner/weighting/ (weighting=none: the plain mean)
    selection: object        # runner/selection.py (selection=none: the batch as drawn)
    sampler: object          # runner/data/samplers.py (sampler=uniform: a permutation per epoch)
    step: Step
    progress: Progress
    steps_per_epoch: int
    total_steps: int             # under batch=adaptive, a bound: the budget is total_samples
    epochs: int
    class_counts: torch.Tensor | None  # training samples per class of a long-tailed run (the shot accuracies)
    batching: object             # conf/batch: FixedBatch or AdaptiveBatch
    batch: BatchState            # the batch the step runs now
    total_samples: int | None    # batch=adaptive: trainer.epochs x the training set
    ema: WeightEMA | None        # trainer.ema
    curvature: CurvatureMonitor | None = None  # trainer.curvature.every > 0

    @property
    def trained_batch(self) -> int:
        """Samples a step trains on over all processes: the batch's, or what selection keeps of its candidates."""
        return self.selection.kept(self.batch.per_device * self.selection.candidates) * distributed.world_size()

    @property
    def drawn_batch(self) -> int:
        """Samples a step draws from the epoch's order over all processes (selection=hard: its candidates)."""
        return self.batch.global_batch * self.selection.candidates

    @property
    def epoch_draws(self) -> int:
        """Samples an epoch's order holds: the training set's, once per pass of selection's candidates."""
        return len(self.splits.train) * self.selection.candidates

    def resize_loader(self) -> None:
        """The training loader to the batch the step runs now (batch=adaptive grows it; a resume restores it)."""
        self.train_loader.batch_size = self.batch.per_device * self.selection.candidates

    @property
    def optimizer(self):
        return self.driver.optimizer

    def autocast(self):
        return autocast_for(self.runtime.device, self.runtime.autocast_dtype)()

    @property
    def holdout(self) -> bool:
        return "holdout" in self.eval_loaders

    def evaluate(self, model: torch.nn.Module | None = None, split: str = "val") -> dict:
        loss_fn, autocast, device, tta, bins, counts = self.evaluation_settings()
        return evaluate(model or self.model, self.eval_loaders[split], loss_fn, autocast, device, tta, split, bins,
                        counts)

    def evaluation(self) -> tuple[dict, dict]:
        """The loop's evaluation: every evaluated split (val/*: the test split; holdout/* with dataset.holdout);
        with eval.calibrate, the temperature fitted on the holdout pass alone and the test split under it
        (calibrated/*). Also the confidence bins by panel, for reliability.png."""
        calibrate, common = self.cfg.eval.calibrate, self.evaluation_settings()
        passes, results = {}, {}
        for split, loader in self.eval_loaders.items():
            passes[split], metrics = evaluation_pass(self.model, loader, *common, keep_logits=bool(calibrate))
            results |= {f"{split}/{k}": v for k, v in metrics.items()}
        panels = {"test split": passes["val"].stats}
        if calibrate:  # the pre-flight makes sure there is a holdout split
            scaled, stats = calibrated(passes["holdout"], passes["val"], calibrate)
            results |= scaled
            panels[f"calibrated (T = {scaled['calibrated/temperature']:.3g})"] = stats
        return results, panels

    def evaluation_settings(self) -> tuple:
        return (self.loss_fn, self.autocast, self.runtime.device, self.cfg.trainer.tta, self.cfg.eval.ece_bins,
                self.class_counts)

    @contextlib.contextmanager
    def evaluation_weights(self):
        """Every driver's module at the weights it is evaluated at inside the block, the training weights after
        (an optimizer with a train/eval mode, schedule-free: x and y; any other: no change). The student's
        BatchNorm statistics are recomputed at x first over the optimizer's `bn_batches` training batches, as
        the schedule-free reference advises (torch.optim.swa_utils.update_bn: reset, then a cumulative average);
        they stay for training, which updates them on from there."""
        drivers = self.step.drivers
        for driver in drivers:
            driver.use_evaluation_weights(True)
        try:
            if self.driver.capabilities.train_eval_mode:
                batches = itertools.islice(self.train_loader.epoch(self.progress.epoch), self.optimizer.bn_batches)
                torch.optim.swa_utils.update_bn(batches, self.model)
            yield
        finally:
            for driver in drivers:
                driver.use_evaluation_weights(False)

    def state_dicts(self) -> dict:
        """What a checkpoint saves of each stateful component: its state_dict, the model's at the weights it is
        evaluated at (OptimizerDriver.evaluated_state: what later commands load is what was evaluated)."""
        return {name: self.driver.evaluated_state() if name == "model" else obj.state_dict()
                for name, obj in self.stateful().items()}

    def stateful(self) -> dict:
        """Everything whose state_dict a checkpoint carries (model, optimizer, loss, scaler, and a schedule or
        any other component that has state): a new stateful component is one more entry here."""
        objects = {"model": self.model, "optimizer": self.optimizer, "loss": self.loss_fn,
                   "scaler": self.runtime.scaler, "schedule": self.schedule, "distill": self.method,
                   "weighting": self.weighting, "selection": self.selection, "sampler": self.sampler,
                   "ema": self.ema, "batch": self.batch}
        return {name: obj for name, obj in objects.items() if hasattr(obj, "state_dict")}

    def schedule_points(self) -> tuple[list[float], list[int] | None, str, int]:
        """(factors, positions, unit, positions per epoch) for lr_schedule.csv and .png."""
        if isinstance(self.lr_factors, BySamples):
            positions, factors = self.lr_factors.points()
            return factors, positions, "samples", len(self.splits.train)
        return self.lr_factors, None, "step", self.steps_per_epoch


def build_run(cfg: DictConfig, print: Callable[[str], None] = lambda message: None) -> Run:
    """The run of `cfg` (a config the pre-flight, runner/validate.py, found nothing wrong with)."""
    trainer = cfg.trainer
    env.seed_everything(cfg.seed, trainer.deterministic)
    splits = instantiate(cfg.dataset)
    model = build_model(cfg.model, splits.in_channels, splits.num_classes)
    runtime = resolve_runtime(trainer, model)
    model.to(runtime.device, memory_format=torch.channels_last if runtime.channels_last else torch.preserve_format)
    model = distributed.convert_sync_bn(model, trainer.sync_bn)
    workers = min(8, cpu_count()) if trainer.num_workers == "auto" else int(trainer.num_workers)
    batching = instantiate(cfg.batch) if cfg.get("batch") else FixedBatch()
    batch = batching.start(trainer, distributed.world_size(), len(splits.train))
    # every sampler draws as many samples per epoch as the training set holds: the run's length is known first
    steps_per_epoch = batches_per_epoch(len(splits.train), batch.per_device, 0, distributed.world_size(), True)
    steps = total_steps(trainer, steps_per_epoch)  # at the starting batch
    epochs = trainer.epochs if batching.adaptive else math.ceil(steps / max(steps_per_epoch, 1))
    total_samples = int(trainer.epochs * len(splits.train)) if batching.adaptive else None
    sampler, selection, weighting = instantiate(cfg.sampler), instantiate(cfg.selection), instantiate(cfg.weighting)
    labels = split_labels(splits.train, f"sampler={sampler.name}") if sampler.needs_labels else None
    sampler.setup(len(splits.train), labels, splits.num_classes, epochs)
    train_loader, eval_loaders = build_loaders(splits, batch.per_device, trainer.eval_batch_size, runtime.device,
                                               cfg.seed, workers, runtime.channels_last, distributed.rank(),
                                               distributed.world_size(), sampler, selection.candidates)
    if hasattr(model, "init_from_data"):  # data-dependent init (airbench's whitening), before the optimizer
        model.init_from_data(train_loader.sample(DATA_INIT_SAMPLES))
    optimizer = build_optimizer(cfg.optimizer, model, steps)
    loss_fn = build_loss(cfg.loss)
    # DDP first, then compile (torch's DDPOptimizer splits the graph at DDP's bucket boundaries)
    forward = CompiledOrEager(distributed.wrap(model, runtime.device), trainer.compile, print)
    progress = Progress()
    if batching.adaptive:  # schedules follow the samples seen: a growing batch keeps their shape
        schedule = instantiate(cfg.schedule)(total_steps=total_samples, steps_per_epoch=len(splits.train))
        lr_factors = BySamples(schedule, progress, total_samples)
    else:
        schedule = instantiate(cfg.schedule)(total_steps=steps, steps_per_epoch=steps_per_epoch)
        lr_factors = schedule.factors()
    declared = capabilities(cfg.optimizer)
    with_l1 = bool(declared.adaptive) if trainer.grad_norm_l1 == "auto" else bool(trainer.grad_norm_l1)
    driver = OptimizerDriver(optimizer, model, lr_factors, trainer.grad_clip, runtime.scaler, declared, with_l1)
    method = instantiate(cfg.distill)
    autocast = autocast_for(runtime.device, runtime.autocast_dtype)
    counts = splits.class_counts("the shot accuracies") if splits.imbalance > 1 else None
    context = MethodContext(
        model=model, device=runtime.device, channels_last=runtime.channels_last, autocast=autocast,
        data=DataInfo(splits.name, splits.num_classes, splits.in_channels, len(splits.train), train_loader,
                      splits.class_counts),
        dataset=cfg.dataset, criterion=loss_fn, progress=progress, epochs=epochs, steps=steps,
        evaluate=lambda other: evaluate(other, eval_loaders["val"], loss_fn, autocast, runtime.device, trainer.tta,
                                        bins=cfg.eval.ece_bins, class_counts=counts),
        print=print, optimizer_config=cfg.optimizer, capabilities=declared, lr_factors=lr_factors,
        grad_clip=trainer.grad_clip, scaler=runtime.scaler, model_config=cfg.model, drivers=[driver])
    method.setup(context)  # may add companions' drivers to context.drivers
    weightings = [weighting] if weighting.active else []
    if sampler.class_multipliers(0) is not None:  # a sampler that upweights too (cooldown)
        weightings.append(SamplerCorrection(sampler, epochs, runtime.device))
    for part in (*weightings, selection):
        part.setup(context)
    guard = SkipNonFinite(context.drivers, runtime.scaler is not None) if trainer.on_nonfinite == "skip" else None
    ema = trainer.get("ema") or {}
    ema = WeightEMA(model, ema.decay, ema.warmup, ema.warmup_gamma, ema.warmup_power, ema.every) \
        if ema.get("decay") else None
    step = Step(forward, method, context.drivers, autocast, guard, batching, batch, ema, weightings,
                selection if selection.active else None)
    curvature = build_curvature(trainer.curvature, splits, model, loss_fn, runtime, cfg.seed, workers)
    return Run(cfg, splits, model, runtime, train_loader, eval_loaders, loss_fn, schedule, lr_factors, driver, method,
               weighting, selection, sampler, step, progress, steps_per_epoch, steps, epochs, counts, batching, batch,
               total_samples, ema, curvature)
