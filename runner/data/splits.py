"""What a dataset factory returns, and what a dataset's config says about its data before it is loaded.

`Splits` holds the training and validation splits, either `TensorSplit`s (uint8 images in memory: digits,
synthetic, CIFAR; the device-resident loader augments them per `Augment`) or map-style datasets (image
folders, Hugging Face). `DataShape` is what the pre-flight knows without loading: the training set's size
(for the run length and the batch check), the image channels and the class count (to build the model on the
meta device); None where only the data can tell.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.utils.data import Dataset

from runner.errors import ConfigError, require

FLIP_MODES = {True: "random", False: "none", "random": "random", "none": "none", "alternate": "alternate"}
PAD_MODES = ("zeros", "reflect")


def augment_problems(flip, pad_mode: str) -> list[str]:
    problems = [] if flip in FLIP_MODES else [f"dataset.flip={flip}: choose random (true), none (false) or alternate"]
    return problems + ([] if pad_mode in PAD_MODES else [f"dataset.pad_mode={pad_mode}: choose zeros or reflect"])


@dataclass
class Augment:
    """Batched augmentation for in-memory images: a random crop after padding by `crop_padding` pixels
    (`pad_mode` zeros or reflect) and a horizontal flip. `flip`: random (true: each image with p = 1/2 each
    epoch), none (false), or alternate (airbench: a random half flipped once, then every odd epoch flips
    every image relative to the even epochs, so each image is seen both ways in every pair of epochs)."""
    crop_padding: int = 0
    flip: bool | str = False
    pad_mode: str = "zeros"

    def __post_init__(self):
        require(augment_problems(self.flip, self.pad_mode))
        self.flip = FLIP_MODES[self.flip]


@dataclass
class TensorSplit:
    images: torch.Tensor  # uint8, (N, C, H, W)
    labels: torch.Tensor  # int64, (N,)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> "TensorSplit":
        return TensorSplit(self.images[index], self.labels[index])

    def relabel(self, labels: torch.Tensor) -> "TensorSplit":
        return TensorSplit(self.images, labels)


@dataclass
class Splits:
    """What a dataset factory returns: the two splits and what models and loaders need to know."""
    name: str
    train: TensorSplit | Dataset
    val: TensorSplit | Dataset
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    augment: Augment = field(default_factory=Augment)
    label_noise: float = 0.0  # fraction of training labels corrupted by `dataset.label_noise`
    imbalance: float = 1.0    # `dataset.imbalance.ratio` the training split was cut to (1: as loaded)

    @property
    def in_memory(self) -> bool:
        return isinstance(self.train, TensorSplit)

    def class_counts(self, needed_by: str) -> torch.Tensor:
        """Training samples per class (a ConfigError naming `needed_by` when the labels cannot be read cheaply)."""
        return torch.bincount(split_labels(self.train, needed_by), minlength=self.num_classes)


def split_labels(split, needed_by: str) -> torch.Tensor:
    """Every label of a split without reading its images: in memory, or a dataset's `targets` (image folders,
    Hugging Face columns), through Subset and relabelled wrappers (`labels`)."""
    if isinstance(split, TensorSplit):
        return split.labels
    if isinstance(split, torch.utils.data.Subset):
        return split_labels(split.dataset, needed_by)[torch.as_tensor(split.indices)]
    for name in ("labels", "targets"):
        if hasattr(split, name):
            return torch.as_tensor(getattr(split, name))
    raise ConfigError(f"{needed_by} needs the training labels, which a {type(split).__name__} gives only by reading "
                      f"every image; use a dataset with a `targets` attribute, or drop {needed_by.split('=')[0]}")


@dataclass(frozen=True)
class DataShape:
    """A dataset config's data as far as it is known without loading it (None: only the data can tell)."""
    name: str = "the dataset"
    train_size: int | None = None  # after dataset.limit_train
    in_channels: int = 3
    num_classes: int | None = None


def limit_problems(limit_train: int | None, limit_val: int | None) -> list[str]:
    return [f"dataset.{key}={count}: must be a positive number of samples (or null for all)"
            for key, count in (("limit_train", limit_train), ("limit_val", limit_val)) if count is not None and count <= 0]


def limited(size: int, count: int | None) -> int:
    """The size of a split of `size` samples after `limit`."""
    return size if count is None else min(size, count)


def limit(splits: Splits, limit_train: int | None, limit_val: int | None) -> Splits:
    """Keep a fixed random subset (seed 0) of each split, for quick runs."""
    require(limit_problems(limit_train, limit_val))
    splits.train = _take(splits.train, limit_train)
    splits.val = _take(splits.val, limit_val)
    return splits


def _take(split, count: int | None):
    if count is None or count >= len(split):
        return split
    index = torch.randperm(len(split), generator=torch.Generator().manual_seed(0))[:count].sort().values
    if isinstance(split, TensorSplit):
        return split.subset(index)
    return torch.utils.data.Subset(split, index.tolist())
