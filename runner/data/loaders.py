"""The loaders that feed the train loop, both with `epoch(e, start_batch)` (any epoch from any batch: resumes
replay them) and `sample(count)` (images for a data-dependent init), both yielding this rank's shard.

`TensorLoader` (in-memory splits: digits, synthetic, CIFAR) keeps the whole split on the training device as
uint8 and augments whole batches there: an epoch's order (a `sampler`'s, runner/data/samplers.py, or
`sharding.epoch_order`), crop offsets, flips, policy draws and erasing boxes are drawn at once on the host
(`epoch_plan`), then each batch is one flat gather. The draws belong to the order's slots, not to samples, so a
sample that a sampler draws several times in an epoch gets augmentations of its own each time. No DataLoader,
no per-batch host work. `FolderLoader` (image folders, Hugging Face) is a tuned DataLoader.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from runner.augment import TrainAugment
from runner.data.samplers import Passes
from runner.data.sharding import batch_problems, batches_per_epoch, epoch_generator, epoch_order, shard
from runner.data.splits import Augment, Splits, TensorSplit
from runner.errors import require
from runner.mixing import batch_rng


def batch_slices(length: int, loader, start: int):
    """(position, this rank's slots of the order) of each batch from slot `start` of an epoch's order of `length`.
    Training (drop_last) deals global batches of batch_size x world_size out in rank order (`sharding.shard`'s
    rule, batch by batch, so the batch size may change between epochs' restarts); validation walks this rank's
    contiguous shard."""
    size = loader.batch_size
    step = size * loader.world_size if loader.drop_last else size
    position = start
    while position + (step if loader.drop_last else 1) <= length:
        first = position + (loader.rank * size if loader.drop_last else 0)
        yield position, slice(first, min(first + size, length))
        position += step


def mix(loader, images: torch.Tensor, labels: torch.Tensor, epoch: int, position: int):
    """Mixup/CutMix of a training batch (its draw comes from the batch's position in the epoch), else as is."""
    mixing = loader.extra.mixing
    if mixing is None:
        return images, labels
    draw = mixing.draw(batch_rng(loader.seed, epoch, position), *images.shape[-2:])
    return mixing.apply(images, labels, draw, loader.num_classes)


@dataclass
class EpochPlan:
    """An epoch's draws for every slot of its order (row p: the sample drawn at position p), on the device."""
    order: torch.Tensor
    slots_host: np.ndarray             # 0..len(order)-1: the rows of the host-side policy plan
    slots: torch.Tensor                # the same on the device
    offsets: torch.Tensor | None
    flips: torch.Tensor | None
    policy: object = None              # runner.augment.PolicyPlan
    boxes: torch.Tensor | None = None  # random erasing's


class TensorLoader:
    """Device-resident batches: the whole split lives on `device` as uint8; crop, flip, the augmentation policy,
    normalisation, random erasing and mixing are done per batch with a few tensor ops.
    `epoch(e, start_batch)` (or `start_sample`) replays any epoch from any batch."""

    def __init__(self, split: TensorSplit, batch_size: int, device: torch.device, mean, std,
                 augment: Augment | None = None, shuffle: bool = False, drop_last: bool = False, seed: int = 0,
                 channels_last: bool = False, rank: int = 0, world_size: int = 1,
                 train_augment: TrainAugment | None = None, num_classes: int = 0, sampler=None):
        self.batch_size, self.shuffle, self.drop_last, self.seed = batch_size, shuffle, drop_last, seed
        self.rank, self.world_size, self.sampler = rank, world_size, sampler
        self.augment = augment or Augment()
        self.extra, self.num_classes = train_augment or TrainAugment(), num_classes
        self.device = device
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        pad = self.augment.crop_padding
        images = split.images.to(device)
        mode = "constant" if self.augment.pad_mode == "zeros" else "reflect"
        self.images = torch.nn.functional.pad(images, (pad,) * 4, mode=mode) if pad else images
        self.labels = split.labels.to(device)
        self.num_samples, _, self.height, self.width = split.images.shape
        channels = split.images.shape[1]
        self.mean = torch.tensor(mean, device=device).view(1, channels, 1, 1) * 255
        self.inv_std = 1 / (torch.tensor(std, device=device).view(1, channels, 1, 1) * 255)
        self.row_range = torch.arange(self.height, device=device)[None]
        self.col_range = torch.arange(self.width, device=device)[None]
        padded = self.images.shape
        self.channel_stride = torch.arange(channels, device=device) * padded[2] * padded[3]

    def __len__(self) -> int:
        draws = len(self.sampler) if self.sampler else self.num_samples
        return batches_per_epoch(draws, self.batch_size, self.rank, self.world_size, self.drop_last)

    def epoch(self, epoch: int = 0, start_batch: int = 0,
              start_sample: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        plan = self.epoch_plan(epoch)
        start = start_batch * self.batch_size * self.world_size if start_sample is None else start_sample
        rows = lambda draws: None if draws is None else draws[slots]  # noqa: E731
        for position, slots in batch_slices(len(plan.order), self, start):
            index = plan.order[slots]
            images = self._crop_and_flip(index, rows(plan.offsets), rows(plan.flips))
            if self.extra.policy:
                images = self.extra.policy.apply(images, plan.policy, plan.slots_host[slots], plan.slots[slots])
            images = images.float().sub_(self.mean).mul_(self.inv_std)
            if self.extra.erasing:
                images = self.extra.erasing.apply(images, plan.boxes[slots])
            images, targets = mix(self, images, self.labels[index], epoch, position)
            yield images.contiguous(memory_format=self.memory_format), targets, index

    def __iter__(self):
        return self.epoch(0)

    def epoch_plan(self, epoch: int) -> EpochPlan:
        """Order, crop offsets, flips, policy draws and erasing boxes for every slot of the epoch, drawn at
        once on the host (cheap); a training order stays whole (`batch_slices` deals its global batches)."""
        gen = epoch_generator(self.seed, epoch)
        order = self.sampler.order(epoch, gen) if self.sampler else epoch_order(self.num_samples, self.shuffle, gen)
        if not self.drop_last:
            order = shard(order, self.batch_size, self.rank, self.world_size, False)
        n, pad = len(order), self.augment.crop_padding
        offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=gen) if pad else None
        flips = self.flips(epoch, order, gen)
        move = lambda t: None if t is None else t.to(self.device, non_blocking=True)  # noqa: E731
        plan = EpochPlan(move(order), np.arange(n), torch.arange(n, device=self.device), move(offsets), move(flips))
        if self.extra.policy:  # drawn after the crop and flip draws: runs without a policy replay as before
            plan.policy = self.extra.policy.plan(n, gen, self.height, self.width, self.device)
        if self.extra.erasing:
            plan.boxes = self.extra.erasing.plan(n, gen, self.height, self.width, self.device)
        return plan

    def flips(self, epoch: int, order: torch.Tensor, gen: torch.Generator) -> torch.Tensor | None:
        if self.augment.flip == "random":
            return torch.rand(len(order), generator=gen) < 0.5
        if self.augment.flip == "alternate":  # one fixed random half of the samples per run, inverted on odd epochs
            fixed = torch.rand(self.num_samples, generator=epoch_generator(self.seed, -1)) < 0.5
            return fixed[order] ^ bool(epoch % 2)
        return None

    def sample(self, count: int) -> torch.Tensor:
        """The first `count` training images, normalised, without augmentation (data-dependent init)."""
        pad = self.augment.crop_padding
        images = self.images[:count, :, pad:pad + self.height, pad:pad + self.width]
        return images.float().sub_(self.mean).mul_(self.inv_std)

    def _crop_and_flip(self, index: torch.Tensor, offsets: torch.Tensor | None, flips: torch.Tensor | None):
        """Gather each sample's HxW window (at its row's offset into the padded image, mirrored if its row is
        flipped) with one flat `take`: far cheaper than multi-tensor advanced indexing or a separate flip pass."""
        if offsets is None and flips is None:
            return self.images[index]
        _, channels, padded_h, padded_w = self.images.shape
        rows = self.row_range.expand(len(index), -1)
        cols = self.col_range.expand(len(index), -1)
        if offsets is not None:
            rows = rows + offsets[:, 0:1]
            cols = cols + offsets[:, 1:2]
        if flips is not None:
            mirrored = cols.flip(-1)
            cols = torch.where(flips[:, None], mirrored, cols)
        base = index * (channels * padded_h * padded_w)
        flat = (base[:, None, None, None] + self.channel_stride[None, :, None, None]
                + (rows * padded_w)[:, None, :, None] + cols[:, None, None, :])
        return self.images.view(-1).take(flat)


class IndexedDataset(Dataset):
    """Adds the sample index to each item so every data path yields (image, label, index)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, label = self.dataset[index]
        return image, label, index


class FolderLoader:
    """A tuned DataLoader over a map-style dataset with the same `epoch(e, start_batch)` interface."""

    def __init__(self, dataset: Dataset, batch_size: int, device: torch.device, shuffle: bool = False,
                 drop_last: bool = False, seed: int = 0, num_workers: int = 4, channels_last: bool = False,
                 rank: int = 0, world_size: int = 1, train_augment: TrainAugment | None = None, num_classes: int = 0,
                 sampler=None):
        self.dataset, self.batch_size, self.device = IndexedDataset(dataset), batch_size, device
        self.rank, self.world_size, self.sampler = rank, world_size, sampler
        self.extra, self.num_classes = train_augment or TrainAugment(), num_classes  # policy, erasing: transforms
        self.shuffle, self.drop_last, self.seed, self.num_workers = shuffle, drop_last, seed, num_workers
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __len__(self) -> int:
        draws = len(self.sampler) if self.sampler else len(self.dataset)
        return batches_per_epoch(draws, self.batch_size, self.rank, self.world_size, self.drop_last)

    def epoch(self, epoch: int = 0, start_batch: int = 0, start_sample: int | None = None):
        gen = epoch_generator(self.seed, epoch)
        order = self.sampler.order(epoch, gen) if self.sampler else epoch_order(len(self.dataset), self.shuffle, gen)
        if not self.drop_last:
            order = shard(order, self.batch_size, self.rank, self.world_size, False)
        start = start_batch * self.batch_size * self.world_size if start_sample is None else start_sample
        batches = list(batch_slices(len(order), self, start))
        positions = [position for position, _ in batches]
        order = [int(i) for _, slots in batches for i in order[slots]]
        workers = self.num_workers
        loader = DataLoader(self.dataset, batch_size=self.batch_size, sampler=order, drop_last=self.drop_last,
                            num_workers=workers, pin_memory=self.device.type == "cuda",
                            persistent_workers=False, prefetch_factor=4 if workers else None,
                            generator=gen)
        for position, (images, labels, index) in zip(positions, loader):
            images = images.to(self.device, non_blocking=True)
            images, targets = mix(self, images, labels.to(self.device, non_blocking=True), epoch, position)
            yield (images.contiguous(memory_format=self.memory_format), targets,
                   index.to(self.device, non_blocking=True))

    def sample(self, count: int) -> torch.Tensor:
        """About `count` images of the first epoch, as the model sees them (data-dependent init)."""
        batches = []
        for images, _, _ in self.epoch(0):
            batches.append(images)
            if sum(map(len, batches)) >= count:
                break
        return torch.cat(batches)[:count]

    def __iter__(self):
        return self.epoch(0)


def build_loaders(splits: Splits, batch_size: int, eval_batch_size: int, device: torch.device, seed: int,
                  num_workers: int, channels_last: bool = False, rank: int = 0, world_size: int = 1,
                  sampler=None, candidates: int = 1):
    """Train loader (the `sampler`'s order, or shuffled; augmented, full batches) and the evaluation loaders by
    split name (in order, every sample): "val" (the test split) and "holdout" when the dataset holds one out;
    each yields this rank's shard; `batch_size` is a step's samples per device (trainer.batch_size x
    accumulate). With `candidates` > 1 (hard selection) each training batch holds candidates x batch_size
    samples drawn from as many passes of the order."""
    require(batch_problems(batch_size, world_size, len(splits.train), splits.name))
    if candidates > 1:  # `sampler` set up (runner/build.py's; a uniform one draws what sampler=None draws)
        sampler = Passes(sampler, candidates)
    batch_size, extra = batch_size * candidates, dict(train_augment=splits.train_augment, num_classes=splits.num_classes)
    if splits.in_memory:
        common = dict(device=device, mean=splits.mean, std=splits.std, seed=seed, channels_last=channels_last,
                      rank=rank, world_size=world_size)
        train = TensorLoader(splits.train, batch_size, augment=splits.augment, shuffle=True, drop_last=True,
                             sampler=sampler, **common, **extra)
        loader = TensorLoader
    else:
        common = dict(device=device, seed=seed, num_workers=num_workers, channels_last=channels_last,
                      rank=rank, world_size=world_size)
        train = FolderLoader(splits.train, batch_size, shuffle=True, drop_last=True, sampler=sampler, **common, **extra)
        loader = FolderLoader
    evaluated = {"val": splits.val, "holdout": splits.holdout}
    return train, {name: loader(split, eval_batch_size, **common) for name, split in evaluated.items() if split is not None}


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
