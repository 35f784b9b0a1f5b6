"""What a dataset factory returns, and what a dataset's config says about its data before it is loaded.

`Splits` holds the training and validation splits (and, with `dataset.holdout`, a held-out part of the
training data: `hold_out`), either `TensorSplit`s (uint8 images in memory: digits,
synthetic, CIFAR; the device-resident loader augments them per `Augment`) or map-style datasets (image
folders, Hugging Face). `DataShape` is what the pre-flight knows without loading: the training set's size
(for the run length and the batch check), the image channels and the class count (to build the model on the
meta device); None where only the data can tell.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset

from runner.augment import TrainAugment
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
    holdout: TensorSplit | Dataset | None = None  # `dataset.holdout`: training data held out for selection
    train_augment: TrainAugment = field(default_factory=TrainAugment)  # policy, erasing, mixing (runner/augment.py)

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
    train_size: int | None = None  # after dataset.imbalance, dataset.holdout and dataset.limit_train
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
    return subset(split, torch.randperm(len(split), generator=torch.Generator().manual_seed(0))[:count].sort().values)


def subset(split, index) -> TensorSplit | Dataset:
    """The samples `index` of a split, of the split's own kind."""
    index = torch.as_tensor(index)
    if isinstance(split, TensorSplit):
        return split.subset(index)
    return torch.utils.data.Subset(split, index.tolist())


# ---- the holdout: selection on training data, never on the test split ------------------------------------
def holdout_problems(holdout: int | float | None, train_size: int | None,
                     num_classes: int | None = None) -> list[str]:
    """`dataset.holdout` is null, a count below the training set's size, or a fraction in (0, 1), leaving at
    least one sample per class on each side (`train_size` None: not known before loading; the data checks)."""
    fraction = isinstance(holdout, float) and 0 < holdout < 1
    count = isinstance(holdout, int) and not isinstance(holdout, bool) and 0 < holdout < (train_size or holdout + 1)
    if not (not holdout or fraction or count):  # 0 or null: none
        below = f"below the {train_size} training samples (e.g. {max(1, train_size // 10)})" if train_size else \
            "(e.g. 5000)"
        return [f"dataset.holdout={holdout}: pass a count {below} or a fraction in (0, 1) (e.g. 0.1), or null for none"]
    if holdout and train_size and num_classes:
        held = holdout_count(holdout, train_size)
        if min(held, train_size - held) < num_classes:
            return [f"dataset.holdout={holdout}: {held} of {train_size} samples held out; a stratified split of "
                    f"{num_classes} classes needs at least {num_classes} on each side; pass a count in "
                    f"[{num_classes}, {train_size - num_classes}]"]
    return []


def holdout_count(holdout: int | float | None, train_size: int) -> int:
    """`dataset.holdout` as a number of samples (0 for none): a count, or a fraction of the training set."""
    require(holdout_problems(holdout, train_size))
    if not holdout:
        return 0
    return max(1, round(holdout * train_size)) if isinstance(holdout, float) else holdout


def hold_out(splits: Splits, holdout: int | float | None, seed: int, held_view: Dataset | None = None) -> Splits:
    """Move a stratified `holdout` of the training set into `splits.holdout`, drawn with the dataset's split
    seed (the same samples whatever the run's seed). It is disjoint from the training samples and, as part of
    the training set, from the test split; it is evaluated as the test split is (no augmentation; `held_view`
    is the training set with the evaluation transforms, for datasets that transform per sample) and logged
    as holdout/*."""
    if not holdout:
        return splits
    from sklearn.model_selection import train_test_split

    labels = split_labels(splits.train, "dataset.holdout").numpy()
    count = holdout_count(holdout, len(labels))
    try:
        keep, held = train_test_split(np.arange(len(labels)), test_size=count, stratify=labels, random_state=seed)
    except ValueError as error:  # fewer samples than classes on one side
        raise ConfigError(f"dataset.holdout={holdout}: a stratified split of {len(labels)} samples of "
                          f"{len(np.unique(labels))} classes cannot hold {count} out ({error})") from error
    splits.holdout = subset(held_view if held_view is not None else splits.train, np.sort(held))
    splits.train = subset(splits.train, np.sort(keep))
    return splits
