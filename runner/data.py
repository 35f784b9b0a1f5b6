"""Datasets and the loaders that feed the train loop.

Every dataset factory (the `_target_` of a `conf/dataset/*.yaml`) returns a `Splits`. Datasets that fit
in memory (digits, synthetic, CIFAR) are uint8 tensors and go through `TensorLoader`, which keeps them on
the training device and augments whole batches there: no DataLoader, no per-batch host work. Folder and
Hugging Face datasets are `torch.utils.data.Dataset`s and go through a tuned DataLoader. Both loaders
yield `(images, labels, sample_indices)` so per-sample memories (self-distillation) work on every path.
"""
from __future__ import annotations

import math
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from runner.augment import TrainAugment, train_augment
from runner.errors import ConfigError
from runner.mixing import batch_rng
from runner.validate import batch_fits, checked_by

CIFAR_MEAN = {10: (0.4914, 0.4822, 0.4465), 100: (0.5071, 0.4865, 0.4409)}
CIFAR_STD = {10: (0.2470, 0.2435, 0.2616), 100: (0.2673, 0.2564, 0.2762)}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CIFAR_ARCHIVES = {
    10: ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "cifar-10-batches-py"),
    100: ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "cifar-100-python"),
}


FLIP_MODES = {True: "random", False: "none", "random": "random", "none": "none", "alternate": "alternate"}
PAD_MODES = ("zeros", "reflect")


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
        if self.flip not in FLIP_MODES:
            raise ConfigError(f"dataset.flip={self.flip}: choose random (true), none (false) or alternate")
        if self.pad_mode not in PAD_MODES:
            raise ConfigError(f"dataset.pad_mode={self.pad_mode}: choose zeros or reflect")
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
    train_augment: TrainAugment = field(default_factory=TrainAugment)  # policy, erasing, mixing (runner/augment.py)

    @property
    def in_memory(self) -> bool:
        return isinstance(self.train, TensorSplit)


# ----------------------------------------------------------------------------------------------------
# Dataset factories (the `_target_`s of conf/dataset)
# ----------------------------------------------------------------------------------------------------

DIGITS_SAMPLES = 1797
DIGITS_SIZE_ERROR = "dataset.image_size: digits are 8x8; leave dataset.image_size=8"


def _check_digits(cfg) -> list[str]:
    data = cfg.dataset
    if not 0 < data.val_fraction < 1:
        return [f"dataset.val_fraction={data.val_fraction}: must lie strictly between 0 and 1; pass e.g. 0.2"]
    train_size = DIGITS_SAMPLES - math.ceil(data.val_fraction * DIGITS_SAMPLES)  # scikit-learn's split sizes
    problems = [DIGITS_SIZE_ERROR] if data.image_size != 8 else []
    return problems + batch_fits(cfg, min(train_size, data.limit_train or train_size), "digits")


@checked_by(_check_digits)
def digits(val_fraction: float = 0.2, split_seed: int = 0, image_size: int = 8,
           limit_train: int | None = None, limit_val: int | None = None,
          label_noise: dict | None = None,
          augment: str = "none", augment_ops: int = 2, augment_magnitude: int = 9,
          random_erasing: float = 0.0, mixup: float = 0.0, cutmix: float = 0.0) -> Splits:
    """scikit-learn's bundled 8x8 digits (1,797 images), split once, stratified, with a fixed seed."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if image_size != 8:
        raise ConfigError(DIGITS_SIZE_ERROR)
    bunch = load_digits()
    images = torch.from_numpy(np.round(bunch.images * (255 / 16)).astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    train_idx, val_idx = train_test_split(np.arange(len(labels)), test_size=val_fraction,
                                          stratify=bunch.target, random_state=split_seed)
    splits = Splits("digits", TensorSplit(images[train_idx], labels[train_idx]),
                    TensorSplit(images[val_idx], labels[val_idx]), num_classes=10, in_channels=1,
                    image_size=8, mean=(0.5,), std=(0.5,), train_augment=train_augment(augment, augment_ops, augment_magnitude, random_erasing, mixup, cutmix))
    return add_label_noise(limit(splits, limit_train, limit_val), label_noise)


def _check_synthetic(cfg) -> list[str]:
    data = cfg.dataset
    return batch_fits(cfg, min(data.train_size, data.limit_train or data.train_size), "synthetic")


@checked_by(_check_synthetic)
def synthetic(num_classes: int = 10, image_size: int = 32, in_channels: int = 3, train_size: int = 2048,
              val_size: int = 512, noise: float = 0.5, data_seed: int = 0,
              limit_train: int | None = None, limit_val: int | None = None,
          label_noise: dict | None = None,
          augment: str = "none", augment_ops: int = 2, augment_magnitude: int = 9,
          random_erasing: float = 0.0, mixup: float = 0.0, cutmix: float = 0.0) -> Splits:
    """Learnable generated images: a smooth random prototype per class plus per-sample noise."""
    gen = torch.Generator().manual_seed(data_seed)
    coarse = torch.rand(num_classes, in_channels, 4, 4, generator=gen)
    prototypes = torch.nn.functional.interpolate(coarse, size=image_size, mode="bilinear", align_corners=False)

    def draw(n: int) -> TensorSplit:
        labels = torch.arange(n) % num_classes
        labels = labels[torch.randperm(n, generator=gen)]
        pixels = prototypes[labels] + noise * torch.randn(n, in_channels, image_size, image_size, generator=gen)
        return TensorSplit((pixels.clamp(0, 1) * 255).round().to(torch.uint8), labels)

    splits = Splits("synthetic", draw(train_size), draw(val_size), num_classes, in_channels, image_size,
                    mean=(0.5,) * in_channels, std=(0.25,) * in_channels, augment=Augment(0, False),
                    train_augment=train_augment(augment, augment_ops, augment_magnitude, random_erasing, mixup, cutmix))
    return add_label_noise(limit(splits, limit_train, limit_val), label_noise)


CIFAR_TRAIN_SIZE = 50_000


def _missing_cifar(root: str, folder: str) -> str:
    return (f"dataset.root={Path(root).expanduser().resolve()}: no {folder}/ there; pass "
            f"dataset.root=<folder holding {folder}> or dataset.download=true")


def _check_cifar(cfg) -> list[str]:
    data = cfg.dataset
    if data.num_classes not in CIFAR_ARCHIVES:
        return [f"dataset.num_classes={data.num_classes}: CIFAR has 10 or 100 classes"]
    folder = CIFAR_ARCHIVES[data.num_classes][1]
    problems = [] if data.download or (Path(data.root).expanduser() / folder).is_dir() else \
        [_missing_cifar(data.root, folder)]
    return problems + batch_fits(cfg, min(CIFAR_TRAIN_SIZE, data.limit_train or CIFAR_TRAIN_SIZE), f"cifar{data.num_classes}")


@checked_by(_check_cifar)
def cifar(num_classes: int = 10, root: str = "data", download: bool = False, crop_padding: int = 4,
          flip: bool | str = True, pad_mode: str = "zeros", image_size: int = 32,
          limit_train: int | None = None, limit_val: int | None = None,
          label_noise: dict | None = None,
          augment: str = "none", augment_ops: int = 2, augment_magnitude: int = 9,
          random_erasing: float = 0.0, mixup: float = 0.0, cutmix: float = 0.0) -> Splits:
    """CIFAR-10/100 read straight from the python pickle batches under `root` (as the fast loaders do).

    With `download: true` torchvision's download code fetches and unpacks the archive first.
    """
    if num_classes not in CIFAR_ARCHIVES:
        raise ConfigError(f"dataset.num_classes={num_classes}: CIFAR has 10 or 100 classes")
    url, folder = CIFAR_ARCHIVES[num_classes]
    base = Path(root).expanduser() / folder
    if not base.is_dir():
        if not download:
            raise ConfigError(_missing_cifar(root, folder))
        from torchvision.datasets.utils import download_and_extract_archive
        download_and_extract_archive(url, download_root=str(Path(root).expanduser()))
    names = (["data_batch_%d" % i for i in range(1, 6)], ["test_batch"]) if num_classes == 10 else (["train"], ["test"])
    label_key = "labels" if num_classes == 10 else "fine_labels"
    train, val = (_read_cifar_batches(base, files, label_key) for files in names)
    splits = Splits(f"cifar{num_classes}", train, val, num_classes, 3, 32, CIFAR_MEAN[num_classes],
                    CIFAR_STD[num_classes], Augment(crop_padding, flip, pad_mode), train_augment=train_augment(augment, augment_ops, augment_magnitude, random_erasing, mixup, cutmix))
    return add_label_noise(limit(splits, limit_train, limit_val), label_noise)


def _read_cifar_batches(base: Path, files: list[str], label_key: str) -> TensorSplit:
    images, labels = [], []
    for name in files:
        with open(base / name, "rb") as handle:
            batch = pickle.load(handle, encoding="latin1")
        images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch[label_key], dtype=np.int64))
    return TensorSplit(torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels)))


def _missing_image_folders(root: str, train_dir: str, val_dir: str) -> list[str]:
    base = Path(root).expanduser()
    return [f"dataset.root={base.resolve()}: {base / sub} is not a folder; point dataset.root at a tree with "
            f"{train_dir}/<class>/*.jpg and {val_dir}/<class>/*.jpg" for sub in (train_dir, val_dir)
            if not (base / sub).is_dir()][:1]


@checked_by(lambda cfg: _missing_image_folders(cfg.dataset.root, cfg.dataset.train_dir, cfg.dataset.val_dir))
def imagefolder(root: str, train_dir: str = "train", val_dir: str = "val", image_size: int = 224,
                resize_size: int | None = None, name: str = "imagefolder",
                limit_train: int | None = None, limit_val: int | None = None,
                label_noise: dict | None = None,
          augment: str = "none", augment_ops: int = 2, augment_magnitude: int = 9,
          random_erasing: float = 0.0, mixup: float = 0.0, cutmix: float = 0.0) -> Splits:
    """Any class-per-folder train/val tree with ImageNet-style transforms.

    Images are decoded by torchvision.io straight to uint8 tensors and transformed as tensors (transforms
    v2), which is faster than the PIL round trip."""
    from torchvision import datasets
    from torchvision.transforms import v2

    problems = _missing_image_folders(root, train_dir, val_dir)
    if problems:
        raise ConfigError(problems[0])
    base = Path(root).expanduser()
    to_float = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    augmentation = train_augment(augment, augment_ops, augment_magnitude, random_erasing, mixup, cutmix)
    policy, erasing = augmentation.torchvision()
    train_tf = v2.Compose([v2.RandomResizedCrop(image_size, antialias=True), v2.RandomHorizontalFlip(), *policy,
                           *to_float, *erasing])
    val_tf = v2.Compose([v2.Resize(resize_size or int(image_size * 256 / 224), antialias=True),
                         v2.CenterCrop(image_size), *to_float])
    train = datasets.ImageFolder(str(base / train_dir), transform=train_tf, loader=decode_rgb)
    val = datasets.ImageFolder(str(base / val_dir), transform=val_tf, loader=decode_rgb)
    splits = Splits(name, train, val, len(train.classes), 3, image_size, train_augment=augmentation)
    return add_label_noise(limit(splits, limit_train, limit_val), label_noise)


def hf(path: str, image_column: str = "image", label_column: str = "label", train_split: str = "train",
       val_split: str = "test", image_size: int = 32, in_channels: int = 3, name: str | None = None,
       limit_train: int | None = None, limit_val: int | None = None,
          label_noise: dict | None = None,
          augment: str = "none", augment_ops: int = 2, augment_magnitude: int = 9,
          random_erasing: float = 0.0, mixup: float = 0.0, cutmix: float = 0.0) -> Splits:
    """Any Hugging Face `datasets` name (downloaded by `datasets`) or local path (`save_to_disk` or files)."""
    import datasets as hf_datasets
    from torchvision import transforms as T

    local = Path(path).expanduser()
    if local.is_dir() and (local / "dataset_dict.json").exists():
        loaded = hf_datasets.load_from_disk(str(local))
    else:
        loaded = hf_datasets.load_dataset(path)
    for split in (train_split, val_split):
        if split not in loaded:
            raise ConfigError(f"dataset.train_split/val_split: {path} has splits {list(loaded)}, not '{split}'")
    features = loaded[train_split].features
    if image_column not in features or label_column not in features:
        raise ConfigError(f"dataset.image_column/label_column: {path} has columns {list(features)}")
    num_classes = getattr(features[label_column], "num_classes", None) or \
        int(max(loaded[train_split][label_column])) + 1
    mode = "L" if in_channels == 1 else "RGB"
    to_float = [T.ToTensor(), T.Normalize((0.5,) * in_channels, (0.5,) * in_channels)]
    to_tensor = T.Compose([T.Resize((image_size, image_size), antialias=True), *to_float])
    augmentation = train_augment(augment, augment_ops, augment_magnitude, random_erasing, mixup, cutmix)
    policy, erasing = augmentation.torchvision()  # v2 transforms take PIL images as v1's do
    train_tf = T.Compose([T.Resize((image_size, image_size), antialias=True), *policy, *to_float, *erasing])
    train = HFImages(loaded[train_split], image_column, label_column, mode, train_tf)
    val = HFImages(loaded[val_split], image_column, label_column, mode, to_tensor)
    splits = Splits(name or Path(path).name, train, val, num_classes, in_channels, image_size,
                    train_augment=augmentation)
    return add_label_noise(limit(splits, limit_train, limit_val), label_noise)


def decode_rgb(path: str) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_image

    return decode_image(path, mode=ImageReadMode.RGB)


class HFImages(Dataset):
    def __init__(self, table, image_column: str, label_column: str, mode: str, transform):
        self.table, self.image_column, self.label_column = table, image_column, label_column
        self.mode, self.transform = mode, transform

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int):
        row = self.table[int(index)]
        return self.transform(row[self.image_column].convert(self.mode)), int(row[self.label_column])


def limit(splits: Splits, limit_train: int | None, limit_val: int | None) -> Splits:
    """Keep a fixed random subset (seed 0) of each split, for quick runs."""
    splits.train = _take(splits.train, limit_train, "limit_train")
    splits.val = _take(splits.val, limit_val, "limit_val")
    return splits


def _take(split, count: int | None, key: str):
    if count is None or count >= len(split):
        return split
    if count <= 0:
        raise ConfigError(f"dataset.{key}={count}: must be a positive number of samples (or null for all)")
    index = torch.randperm(len(split), generator=torch.Generator().manual_seed(0))[:count].sort().values
    if isinstance(split, TensorSplit):
        return split.subset(index)
    return torch.utils.data.Subset(split, index.tolist())


# ----------------------------------------------------------------------------------------------------
# Label noise (training split only)
# ----------------------------------------------------------------------------------------------------

def add_label_noise(splits: Splits, label_noise: dict | None) -> Splits:
    """Corrupt the training labels as `dataset.label_noise` says (kind, rate, seed, flip_map); val stays clean."""
    if not label_noise or not label_noise.get("rate"):
        return splits
    clean = _split_labels(splits.train)
    noisy = corrupt_labels(clean, splits.num_classes, **label_noise)
    splits.train = splits.train.relabel(noisy) if isinstance(splits.train, TensorSplit) else Relabeled(splits.train, noisy)
    splits.label_noise = (noisy != clean).sum().item() / len(clean)
    return splits


def corrupt_labels(labels: torch.Tensor, num_classes: int, kind: str = "symmetric", rate: float = 0.0,
                   seed: int = 0, flip_map: dict | None = None) -> torch.Tensor:
    """Flip exactly round(rate * n) labels, drawn with their own seed.

    symmetric: n is the whole split and each chosen label moves to a different class, uniformly.
    asymmetric (class flip): for each source class in `flip_map` (default k -> k + 1 mod K), n is that
    class's count and its chosen labels move to the mapped class.
    """
    if not 0 <= rate < 1:
        raise ConfigError(f"dataset.label_noise.rate={rate}: must be in [0, 1)")
    gen = torch.Generator().manual_seed(seed)
    noisy = labels.clone()
    if kind == "symmetric":
        chosen = torch.randperm(len(labels), generator=gen)[:round(rate * len(labels))]
        shift = torch.randint(1, num_classes, (len(chosen),), generator=gen)
        noisy[chosen] = (labels[chosen] + shift) % num_classes
        return noisy
    if kind != "asymmetric":
        raise ConfigError(f"dataset.label_noise.kind={kind}: choose symmetric or asymmetric")
    mapping = {int(k): int(v) for k, v in (flip_map or {k: (k + 1) % num_classes for k in range(num_classes)}).items()}
    if any(not (0 <= c < num_classes) for pair in mapping.items() for c in pair) or any(k == v for k, v in mapping.items()):
        raise ConfigError(f"dataset.label_noise.flip_map={mapping}: map classes in [0, {num_classes}) to other classes")
    for source, target in mapping.items():
        members = (labels == source).nonzero().squeeze(1)
        chosen = members[torch.randperm(len(members), generator=gen)[:round(rate * len(members))]]
        noisy[chosen] = target
    return noisy


def _split_labels(split) -> torch.Tensor:
    if isinstance(split, TensorSplit):
        return split.labels
    if isinstance(split, torch.utils.data.Subset):
        return _split_labels(split.dataset)[torch.as_tensor(split.indices)]
    if isinstance(split, HFImages):
        return torch.as_tensor(split.table[split.label_column])
    if hasattr(split, "targets"):
        return torch.as_tensor(split.targets)
    raise ConfigError(f"dataset.label_noise: cannot read the labels of a {type(split).__name__}; set rate=0")


class Relabeled(Dataset):
    """A map-style dataset whose labels are replaced (the images are read as before)."""

    def __init__(self, dataset: Dataset, labels: torch.Tensor):
        self.dataset, self.labels = dataset, labels.tolist()

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return self.dataset[index][0], self.labels[index]


# ----------------------------------------------------------------------------------------------------
# Loaders
# ----------------------------------------------------------------------------------------------------

def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The data order and augmentation of an epoch depend on (seed, epoch) alone: resumes replay them."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def shard(order: torch.Tensor, batch_size: int, rank: int, world_size: int, drop_last: bool) -> torch.Tensor:
    """This rank's part of an epoch's sample order; the ranks' parts never overlap.

    Training (drop_last): global batch b (batch_size x world_size samples of the one shared order) is dealt
    out in rank order, so the ranks' batches of step b together are exactly batch b of one process with the
    global batch. Validation: each rank takes a contiguous 1/world_size of the samples, so every sample is
    seen exactly once, with no padding even when world_size does not divide the split.
    """
    if world_size == 1:
        return order
    if drop_last:
        steps = len(order) // (batch_size * world_size)
        return order[:steps * batch_size * world_size].view(steps, world_size, batch_size)[:, rank].reshape(-1)
    return order.tensor_split(world_size)[rank]


def batches_per_epoch(num_samples: int, batch_size: int, rank: int, world_size: int, drop_last: bool) -> int:
    if drop_last:
        return num_samples // (batch_size * world_size)
    return -(-len(shard(torch.arange(num_samples), batch_size, rank, world_size, False)) // batch_size)


def batch_slices(order: torch.Tensor, order_host: np.ndarray, loader, start: int):
    """(position, this rank's device index, its host sample ids) of each batch from sample `start` of the epoch.
    Training (drop_last) deals global batches of batch_size x world_size out in rank order, so the ranks' batches
    of one step together are one process's global batch; validation walks this rank's contiguous shard."""
    size = loader.batch_size
    step = size * loader.world_size if loader.drop_last else size
    position, end = start, len(order)
    while position + (step if loader.drop_last else 1) <= end:
        first = position + (loader.rank * size if loader.drop_last else 0)
        yield position, order[first:first + size], order_host[first:first + size]
        position += step


def mix(loader, images: torch.Tensor, labels: torch.Tensor, epoch: int, position: int):
    """Mixup/CutMix of a training batch (the batch's draw comes from its position in the epoch), else as is."""
    mixing = loader.extra.mixing
    if mixing is None:
        return images, labels
    draw = mixing.draw(batch_rng(loader.seed, epoch, position), *images.shape[-2:])
    return mixing.apply(images, labels, draw, loader.num_classes)


@dataclass
class EpochPlan:
    """An epoch's draws for every sample (indexed by sample id; `order` by position), on the device."""
    order: torch.Tensor
    order_host: np.ndarray
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
                 train_augment: TrainAugment | None = None, num_classes: int = 0):
        self.batch_size, self.shuffle, self.drop_last, self.seed = batch_size, shuffle, drop_last, seed
        self.rank, self.world_size = rank, world_size
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
        return batches_per_epoch(self.num_samples, self.batch_size, self.rank, self.world_size, self.drop_last)

    def epoch(self, epoch: int = 0, start_batch: int = 0,
              start_sample: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        plan = self.epoch_plan(epoch)
        start = start_batch * self.batch_size * self.world_size if start_sample is None else start_sample
        for position, index, samples in batch_slices(plan.order, plan.order_host, self, start):
            images = self._crop_and_flip(index, plan.offsets, plan.flips)
            if self.extra.policy:
                images = self.extra.policy.apply(images, plan.policy, samples, index)
            images = images.float().sub_(self.mean).mul_(self.inv_std)
            if self.extra.erasing:
                images = self.extra.erasing.apply(images, plan.boxes[index])
            images, targets = mix(self, images, self.labels[index], epoch, position)
            yield images.contiguous(memory_format=self.memory_format), targets, index

    def __iter__(self):
        return self.epoch(0)

    def epoch_plan(self, epoch: int) -> EpochPlan:
        """Order, crop offsets, flips, policy draws and erasing boxes for every sample of the epoch, drawn at
        once on the host (cheap); training orders stay whole (global batches are dealt out per batch)."""
        gen = epoch_generator(self.seed, epoch)
        n = self.num_samples
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        if not self.drop_last:
            order = shard(order, self.batch_size, self.rank, self.world_size, False)
        pad = self.augment.crop_padding
        offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=gen) if pad else None
        flips = self.flips(epoch, gen)
        move = lambda t: None if t is None else t.to(self.device, non_blocking=True)
        plan = EpochPlan(move(order), order.numpy(), move(offsets), move(flips))
        if self.extra.policy:  # drawn after the crop and flip draws: runs without a policy replay as before
            plan.policy = self.extra.policy.plan(n, gen, self.height, self.width, self.device)
        if self.extra.erasing:
            plan.boxes = self.extra.erasing.plan(n, gen, self.height, self.width, self.device)
        return plan

    def flips(self, epoch: int, gen: torch.Generator) -> torch.Tensor | None:
        if self.augment.flip == "random":
            return torch.rand(self.num_samples, generator=gen) < 0.5
        if self.augment.flip == "alternate":  # one fixed random half per run, all inverted on odd epochs
            fixed = torch.rand(self.num_samples, generator=epoch_generator(self.seed, -1)) < 0.5
            return fixed ^ bool(epoch % 2)
        return None

    def sample(self, count: int) -> torch.Tensor:
        """The first `count` training images, normalised, without augmentation (data-dependent init)."""
        pad = self.augment.crop_padding
        images = self.images[:count, :, pad:pad + self.height, pad:pad + self.width]
        return images.float().sub_(self.mean).mul_(self.inv_std)

    def _crop_and_flip(self, index: torch.Tensor, offsets: torch.Tensor | None, flips: torch.Tensor | None):
        """Gather each sample's HxW window (at its offset into the padded image, mirrored if flipped) with
        one flat `take`: far cheaper than multi-tensor advanced indexing or a separate flip pass."""
        if offsets is None and flips is None:
            return self.images[index]
        _, channels, padded_h, padded_w = self.images.shape
        rows = self.row_range.expand(len(index), -1)
        cols = self.col_range.expand(len(index), -1)
        if offsets is not None:
            rows = rows + offsets[index, 0:1]
            cols = cols + offsets[index, 1:2]
        if flips is not None:
            mirrored = cols.flip(-1)
            cols = torch.where(flips[index, None], mirrored, cols)
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
                 rank: int = 0, world_size: int = 1, train_augment: TrainAugment | None = None, num_classes: int = 0):
        self.dataset, self.batch_size, self.device = IndexedDataset(dataset), batch_size, device
        self.rank, self.world_size = rank, world_size
        self.extra, self.num_classes = train_augment or TrainAugment(), num_classes  # policy, erasing: transforms
        self.shuffle, self.drop_last, self.seed, self.num_workers = shuffle, drop_last, seed, num_workers
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __len__(self) -> int:
        return batches_per_epoch(len(self.dataset), self.batch_size, self.rank, self.world_size, self.drop_last)

    def epoch(self, epoch: int = 0, start_batch: int = 0, start_sample: int | None = None):
        gen = epoch_generator(self.seed, epoch)
        n = len(self.dataset)
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        if not self.drop_last:
            order = shard(order, self.batch_size, self.rank, self.world_size, False)
        start = start_batch * self.batch_size * self.world_size if start_sample is None else start_sample
        batches = list(batch_slices(order, order.numpy(), self, start))
        positions = [position for position, _, _ in batches]
        order = [int(i) for _, index, _ in batches for i in index]
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
                  num_workers: int, channels_last: bool = False, rank: int = 0, world_size: int = 1):
    """Train loader (shuffled, augmented, full batches) and validation loader (in order, every sample), each
    yielding this rank's shard; `batch_size` is a step's samples per device (trainer.batch_size x accumulate)."""
    if batch_size * world_size > len(splits.train):
        raise ConfigError(f"a step's batch of {batch_size} per device x {world_size} processes exceeds the "
                          f"{len(splits.train)} training samples; lower trainer.batch_size or trainer.accumulate")
    extra = dict(train_augment=splits.train_augment, num_classes=splits.num_classes)
    if splits.in_memory:
        common = dict(device=device, mean=splits.mean, std=splits.std, seed=seed, channels_last=channels_last,
                      rank=rank, world_size=world_size)
        train = TensorLoader(splits.train, batch_size, augment=splits.augment, shuffle=True, drop_last=True,
                             **common, **extra)
        val = TensorLoader(splits.val, eval_batch_size, **common)
    else:
        common = dict(device=device, seed=seed, num_workers=num_workers, channels_last=channels_last,
                      rank=rank, world_size=world_size)
        train = FolderLoader(splits.train, batch_size, shuffle=True, drop_last=True, **common, **extra)
        val = FolderLoader(splits.val, eval_batch_size, **common)
    return train, val


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
