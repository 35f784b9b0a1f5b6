"""The dataset factories: each is the `_target_` of a `conf/dataset/*.yaml` and returns a `Splits`.

Each factory's config rules are one function (`@checked_by`: the pre-flight runs it on the config, the factory
on its arguments), and each has a `describe` (`@described_by`): the `DataShape` its options imply without
loading anything (the pre-flight's run length, batch check and model sizes).

In-memory datasets (digits, synthetic, CIFAR) are uint8 tensors for the device-resident loader; image folders
and Hugging Face datasets are map-style datasets for a DataLoader. Every factory ends in `finish`: the
long-tailed cut (`imbalance`: runner/data/imbalance.py), then the held-out split of that training data
(`holdout`: selection on training data, reporting on the test split), the quick-run subsets, label noise.
"""
from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from runner.augment import train_augment, train_augment_problems
from runner.data.imbalance import imbalance_problems, long_tailed_index, long_tailed_size
from runner.data.label_noise import add_label_noise, label_noise_problems
from runner.data.splits import (Augment, DataShape, Splits, TensorSplit, augment_problems, hold_out, holdout_count,
                                holdout_problems, limit, limit_problems, limited, subset)
from runner.errors import checked_by, require

CIFAR_MEAN = {10: (0.4914, 0.4822, 0.4465), 100: (0.5071, 0.4865, 0.4409)}
CIFAR_STD = {10: (0.2470, 0.2435, 0.2616), 100: (0.2673, 0.2564, 0.2762)}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CIFAR_ARCHIVES = {
    10: ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "cifar-10-batches-py"),
    100: ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "cifar-100-python"),
}
CIFAR_TRAIN_SIZE = 50_000
DIGITS_SAMPLES = 1797


def described_by(describe):
    """Attach `describe(**options) -> DataShape` to a dataset factory (the pre-flight reads it)."""
    def attach(factory):
        factory.describe = describe
        return factory
    return attach


def _common_problems(limit_train, limit_val, label_noise, num_classes, options: dict, imbalance=None,
                     holdout=None, train_size=None) -> list[str]:
    """Every dataset's: limits, label noise, the long-tailed cut, the holdout and the training augmentations
    (runner/augment.py); `train_size`: the training set after the long-tailed cut (None: only the data can tell),
    the set the holdout is drawn from."""
    return (limit_problems(limit_train, limit_val) + label_noise_problems(label_noise, num_classes)
            + imbalance_problems(imbalance) + holdout_problems(holdout, train_size, num_classes)
            + train_augment_problems(**options))


def _training_size(size: int | None, holdout, limit_train) -> int | None:
    """The training samples a run trains on: `size` (after the long-tailed cut) less the holdout, then limited
    (None: unknown, or a bad holdout)."""
    if size is None or holdout_problems(holdout, size):
        return None
    return limited(size - holdout_count(holdout, size), limit_train)


def _balanced_counts(size: int, num_classes: int) -> list[int]:
    """Samples per class of a balanced set of `size` (the first size % K classes one more)."""
    return [size // num_classes + (k < size % num_classes) for k in range(num_classes)]


def finish(splits: Splits, imbalance, holdout, split_seed: int, limit_train, limit_val, label_noise,
           held_view: Dataset | None = None) -> Splits:
    """What every factory does to its loaded splits, in this order: cut the training set to the long-tailed
    profile; hold out a stratified part of that long-tailed set (so the holdout follows the distribution the
    model trains on, tail classes as rare as in training, and selection on it ranks what training optimizes;
    a balanced holdout would be a second test split); keep the limited subsets; corrupt training labels (the
    holdout stays clean, as the test split does). `held_view`: the training set with the evaluation
    transforms (datasets that transform per sample), cut alike."""
    kept = long_tailed_index(splits.train, splits.num_classes, imbalance)
    if kept is not None:
        splits.train, splits.imbalance = subset(splits.train, kept), float(imbalance["ratio"])
        held_view = None if held_view is None else subset(held_view, kept)
    splits = limit(hold_out(splits, holdout, split_seed, held_view), limit_train, limit_val)
    return add_label_noise(splits, label_noise)


# ---- digits --------------------------------------------------------------------------------------------
def _digits_split(val_fraction: float, split_seed: int):
    """(bunch, train indices, validation indices): scikit-learn's stratified split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    train_idx, val_idx = train_test_split(np.arange(len(bunch.target)), test_size=val_fraction,
                                          stratify=bunch.target, random_state=split_seed)
    return bunch, train_idx, val_idx


def _digits_train_size(val_fraction: float, split_seed: int, imbalance) -> int:
    """The training split's size after the long-tailed cut."""
    if (imbalance or {}).get("ratio", 1) == 1:
        return DIGITS_SAMPLES - math.ceil(val_fraction * DIGITS_SAMPLES)  # scikit-learn's split sizes
    bunch, train_idx, _ = _digits_split(val_fraction, split_seed)  # the split's class counts (embedded, cheap)
    return long_tailed_size(np.bincount(bunch.target[train_idx], minlength=10).tolist(), imbalance)


def _digits_problems(val_fraction, split_seed, image_size, limit_train, limit_val, label_noise, imbalance, holdout,
                     **options) -> list[str]:
    if not 0 < val_fraction < 1:
        return [f"dataset.val_fraction={val_fraction}: must lie strictly between 0 and 1; pass e.g. 0.2"]
    problems = ["dataset.image_size: digits are 8x8; leave dataset.image_size=8"] if image_size != 8 else []
    return problems + _common_problems(limit_train, limit_val, label_noise, 10, options, imbalance, holdout,
                                       _digits_train_size(val_fraction, split_seed, imbalance))


def _describe_digits(val_fraction, split_seed, limit_train, imbalance, holdout, **_) -> DataShape:
    size = _digits_train_size(val_fraction, split_seed, imbalance)
    return DataShape("digits", _training_size(size, holdout, limit_train), in_channels=1, num_classes=10)


@described_by(_describe_digits)
@checked_by(_digits_problems)
def digits(val_fraction: float = 0.2, split_seed: int = 0, image_size: int = 8,
           limit_train: int | None = None, limit_val: int | None = None, label_noise: dict | None = None,
           imbalance: dict | None = None, holdout: int | float | None = None,
           augment: str = "none", augment_ops: int = 2, augment_magnitude: int = 9,
           random_erasing: float = 0.0, mixup: float = 0.0, cutmix: float = 0.0) -> Splits:
    """scikit-learn's bundled 8x8 digits (1,797 images), split once, stratified, with a fixed seed."""
    bunch, train_idx, val_idx = _digits_split(val_fraction, split_seed)
    images = torch.from_numpy(np.round(bunch.images * (255 / 16)).astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    splits = Splits("digits", TensorSplit(images[train_idx], labels[train_idx]),
                    TensorSplit(images[val_idx], labels[val_idx]), num_classes=10, in_channels=1,
                    image_size=8, mean=(0.5,), std=(0.5,),
                    train_augment=train_augment(augment, augment_ops, augment_magnitude, random_erasing, mixup, cutmix))
    return finish(splits, imbalance, holdout, split_seed, limit_train, limit_val, label_noise)


# ---- synthetic -----------------------------------------------------------------------------------------
def _synthetic_train_size(num_classes, train_size, imbalance) -> int:
    return long_tailed_size(_balanced_counts(train_size, num_classes), imbalance)


def _synthetic_problems(num_classes, train_size, limit_train, limit_val, label_noise, imbalance, holdout,
                        **options) -> list[str]:
    return _common_problems(limit_train, limit_val, label_noise, num_classes, options, imbalance, holdout,
                            _synthetic_train_size(num_classes, train_size, imbalance))


def _describe_synthetic(num_classes, in_channels, train_size, limit_train, imbalance, holdout, **_) -> DataShape:
    size = _synthetic_train_size(num_classes, train_size, imbalance)
    return DataShape("synthetic", _training_size(size, holdout, limit_train), in_channels, num_classes)


@described_by(_describe_synthetic)
@checked_by(_synthetic_problems)
def synthetic(num_classes: int = 10, image_size: int = 32, in_channels: int = 3, train_size: int = 2048,
              val_size: int = 512, noise: float = 0.5, data_seed: int = 0,
              limit_train: int | None = None, limit_val: int | None = None, label_noise: dict | None = None,
              imbalance: dict | None = None, holdout: int | float | None = None,
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
    return finish(splits, imbalance, holdout, data_seed, limit_train, limit_val, label_noise)


# ---- CIFAR ---------------------------------------------------------------------------------------------
def _cifar_train_size(num_classes, imbalance) -> int:
    return long_tailed_size(_balanced_counts(CIFAR_TRAIN_SIZE, num_classes), imbalance)


def _cifar_problems(num_classes, root, download, flip, pad_mode, limit_train, limit_val, label_noise, imbalance,
                    holdout, **options) -> list[str]:
    if num_classes not in CIFAR_ARCHIVES:
        return [f"dataset.num_classes={num_classes}: CIFAR has 10 or 100 classes"]
    folder = CIFAR_ARCHIVES[num_classes][1]
    problems = [] if download or (Path(root).expanduser() / folder).is_dir() else [
        f"dataset.root={Path(root).expanduser().resolve()}: no {folder}/ there; pass "
        f"dataset.root=<folder holding {folder}> or dataset.download=true"]
    return problems + augment_problems(flip, pad_mode) + _common_problems(
        limit_train, limit_val, label_noise, num_classes, options, imbalance, holdout,
        _cifar_train_size(num_classes, imbalance))


def _describe_cifar(num_classes, limit_train, imbalance, holdout, **_) -> DataShape:
    size = _cifar_train_size(num_classes, imbalance)
    return DataShape(f"cifar{num_classes}", _training_size(size, holdout, limit_train), 3, num_classes)


@described_by(_describe_cifar)
@checked_by(_cifar_problems)
def cifar(num_classes: int = 10, root: str = "data", download: bool = False, crop_padding: int = 4,
          flip: bool | str = True, pad_mode: str = "zeros", image_size: int = 32,
          limit_train: int | None = None, limit_val: int | None = None, label_noise: dict | None = None,
          imbalance: dict | None = None, holdout: int | float | None = None, split_seed: int = 0,
          augment: str = "none", augment_ops: int = 2, augment_magnitude: int = 9,
          random_erasing: float = 0.0, mixup: float = 0.0, cutmix: float = 0.0) -> Splits:
    """CIFAR-10/100 read straight from the python pickle batches under `root` (as the fast loaders do).

    With `download: true` torchvision's download code fetches and unpacks the archive first.
    """
    url, folder = CIFAR_ARCHIVES[num_classes]
    base = Path(root).expanduser() / folder
    if not base.is_dir():
        from torchvision.datasets.utils import download_and_extract_archive
        download_and_extract_archive(url, download_root=str(Path(root).expanduser()))
    names = (["data_batch_%d" % i for i in range(1, 6)], ["test_batch"]) if num_classes == 10 else (["train"], ["test"])
    label_key = "labels" if num_classes == 10 else "fine_labels"
    train, val = (_read_cifar_batches(base, files, label_key) for files in names)
    splits = Splits(f"cifar{num_classes}", train, val, num_classes, 3, 32, CIFAR_MEAN[num_classes],
                    CIFAR_STD[num_classes], Augment(crop_padding, flip, pad_mode),
                    train_augment=train_augment(augment, augment_ops, augment_magnitude, random_erasing, mixup, cutmix))
    return finish(splits, imbalance, holdout, split_seed, limit_train, limit_val, label_noise)


def _read_cifar_batches(base: Path, files: list[str], label_key: str) -> TensorSplit:
    images, labels = [], []
    for name in files:
        with open(base / name, "rb") as handle:
            batch = pickle.load(handle, encoding="latin1")
        images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch[label_key], dtype=np.int64))
    return TensorSplit(torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels)))


# ---- image folders -------------------------------------------------------------------------------------
def _imagefolder_problems(root, train_dir, val_dir, limit_train, limit_val, label_noise, imbalance, holdout,
                          **options) -> list[str]:
    base = Path(root).expanduser()
    missing = [f"dataset.root={base.resolve()}: {base / sub} is not a folder; point dataset.root at a tree with "
               f"{train_dir}/<class>/*.jpg and {val_dir}/<class>/*.jpg" for sub in (train_dir, val_dir)
               if not (base / sub).is_dir()][:1]
    return missing + _common_problems(limit_train, limit_val, label_noise, None, options, imbalance, holdout)


def _describe_imagefolder(root, train_dir, name, **_) -> DataShape:
    classes = [entry for entry in (Path(root).expanduser() / train_dir).iterdir() if entry.is_dir()]
    return DataShape(name, None, 3, len(classes))


@described_by(_describe_imagefolder)
@checked_by(_imagefolder_problems)
def imagefolder(root: str, train_dir: str = "train", val_dir: str = "val", image_size: int = 224,
                resize_size: int | None = None, name: str = "imagefolder",
                limit_train: int | None = None, limit_val: int | None = None,
                label_noise: dict | None = None, imbalance: dict | None = None, holdout: int | float | None = None,
                split_seed: int = 0, augment: str = "none", augment_ops: int = 2, augment_magnitude: int = 9,
                random_erasing: float = 0.0, mixup: float = 0.0, cutmix: float = 0.0) -> Splits:
    """Any class-per-folder train/val tree with ImageNet-style transforms.

    Images are decoded by torchvision.io straight to uint8 tensors and transformed as tensors (transforms
    v2), which is faster than the PIL round trip."""
    from torchvision import datasets
    from torchvision.transforms import v2

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
    held_view = datasets.ImageFolder(str(base / train_dir), transform=val_tf, loader=decode_rgb) if holdout else None
    return finish(splits, imbalance, holdout, split_seed, limit_train, limit_val, label_noise, held_view)


def decode_rgb(path: str) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_image

    return decode_image(path, mode=ImageReadMode.RGB)


# ---- Hugging Face --------------------------------------------------------------------------------------
def _local_hf(path: str):
    """A `save_to_disk` folder, opened (memory-mapped: cheap); None for a hub name or plain files."""
    local = Path(path).expanduser()
    if local.is_dir() and (local / "dataset_dict.json").exists():
        import datasets as hf_datasets

        return hf_datasets.load_from_disk(str(local))
    return None


def _hf_table_problems(loaded, path, image_column, label_column, train_split, val_split) -> list[str]:
    missing = [split for split in (train_split, val_split) if split not in loaded]
    if missing:
        return [f"dataset.train_split/val_split: {path} has splits {list(loaded)}, not '{missing[0]}'"]
    features = loaded[train_split].features
    if image_column not in features or label_column not in features:
        return [f"dataset.image_column/label_column: {path} has columns {list(features)}"]
    return []


def _hf_problems(path, image_column, label_column, train_split, val_split, limit_train, limit_val,
                 label_noise, imbalance, holdout, **options) -> list[str]:
    """A local dataset's splits and columns are read here; a hub dataset's when the run loads it."""
    loaded = _local_hf(path)
    problems = [] if loaded is None else _hf_table_problems(loaded, path, image_column, label_column, train_split,
                                                             val_split)
    return problems + _common_problems(limit_train, limit_val, label_noise, None, options, imbalance, holdout)


def _describe_hf(path, label_column, train_split, in_channels, name, limit_train, imbalance, holdout,
                 **_) -> DataShape:
    loaded, label = _local_hf(path), Path(path).name if name is None else name
    if loaded is None:
        return DataShape(label, None, in_channels, None)
    train = loaded[train_split]
    size = train.num_rows if (imbalance or {}).get("ratio", 1) == 1 else \
        long_tailed_size(np.bincount(train[label_column]).tolist(), imbalance)  # one column: cheap
    return DataShape(label, _training_size(size, holdout, limit_train), in_channels,
                     getattr(train.features[label_column], "num_classes", None))


@described_by(_describe_hf)
@checked_by(_hf_problems)
def hf(path: str, image_column: str = "image", label_column: str = "label", train_split: str = "train",
       val_split: str = "test", image_size: int = 32, in_channels: int = 3, name: str | None = None,
       limit_train: int | None = None, limit_val: int | None = None,
       label_noise: dict | None = None, imbalance: dict | None = None, holdout: int | float | None = None,
       split_seed: int = 0, augment: str = "none", augment_ops: int = 2, augment_magnitude: int = 9,
       random_erasing: float = 0.0, mixup: float = 0.0, cutmix: float = 0.0) -> Splits:
    """Any Hugging Face `datasets` name (downloaded by `datasets`) or local path (`save_to_disk` or files)."""
    import datasets as hf_datasets
    from torchvision import transforms as T

    loaded = _local_hf(path)
    if loaded is None:
        loaded = hf_datasets.load_dataset(path)
    require(_hf_table_problems(loaded, path, image_column, label_column, train_split, val_split))
    features = loaded[train_split].features
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
    return finish(splits, imbalance, holdout, split_seed, limit_train, limit_val, label_noise)


class HFImages(Dataset):
    def __init__(self, table, image_column: str, label_column: str, mode: str, transform):
        self.table, self.image_column, self.label_column = table, image_column, label_column
        self.mode, self.transform = mode, transform

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int):
        row = self.table[int(index)]
        return self.transform(row[self.image_column].convert(self.mode)), int(row[self.label_column])

    @property
    def targets(self):
        """Every label, read as one column (label noise reads them)."""
        return self.table[self.label_column]
