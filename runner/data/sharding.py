"""Which samples each rank of a run sees, and how many batches an epoch has (the same on every rank).

Every epoch's order is one permutation drawn from (seed, epoch) on every rank alike; `shard` cuts this
rank's part out of it, so the ranks' parts never overlap and their union is the one-process epoch.
"""
from __future__ import annotations

import torch


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The data order and augmentation of an epoch depend on (seed, epoch) alone: resumes replay them."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def epoch_order(num_samples: int, shuffle: bool, gen: torch.Generator) -> torch.Tensor:
    """The epoch's sample order before sharding. A sampler (runner/data/samplers.py) replaces this one function:
    it returns indices drawn with `gen` (repeats allowed), and both loaders shard them."""
    return torch.randperm(num_samples, generator=gen) if shuffle else torch.arange(num_samples)


def shard(order: torch.Tensor, batch_size: int, rank: int, world_size: int, drop_last: bool) -> torch.Tensor:
    """This rank's part of an epoch's sample order; the ranks' parts never overlap.

    Training (drop_last): global batch b (batch_size x world_size samples of the one shared order) is dealt
    out in rank order, so the ranks' batches of step b together are exactly batch b of one process with the
    global batch. Validation: each rank takes a contiguous 1/world_size of the samples, so every sample is
    seen exactly once, with no padding even when world_size does not divide the split.
    """
    if world_size == 1:
        return order
    if drop_last:  # rows: an order's samples or the per-slot draws beside it (crop offsets, flips)
        steps, rest = len(order) // (batch_size * world_size), order.shape[1:]
        used = order[:steps * batch_size * world_size].view(steps, world_size, batch_size, *rest)
        return used[:, rank].reshape(-1, *rest)
    return order.tensor_split(world_size)[rank]


def batches_per_epoch(num_samples: int, batch_size: int, rank: int, world_size: int, drop_last: bool) -> int:
    if drop_last:
        return num_samples // (batch_size * world_size)
    return -(-len(shard(torch.arange(num_samples), batch_size, rank, world_size, False)) // batch_size)


def batch_problems(batch_size: int, world_size: int, train_size: int, dataset: str, accumulate: int = 1) -> list[str]:
    """A training epoch needs one full global batch (batch_size per process x accumulate x processes)."""
    if batch_size * accumulate * world_size <= train_size:
        return []
    if accumulate > 1:
        return [f"trainer.batch_size={batch_size} x trainer.accumulate={accumulate} x {world_size} processes exceeds "
                f"the {train_size} training samples of {dataset}; lower trainer.batch_size or trainer.accumulate"]
    if world_size == 1:
        return [f"trainer.batch_size={batch_size} exceeds the {train_size} training samples of {dataset}; "
                f"pass trainer.batch_size={train_size} or less"]
    return [f"trainer.batch_size={batch_size} x {world_size} processes exceeds the {train_size} training samples "
            f"of {dataset}; pass trainer.batch_size={train_size // world_size} or less"]
