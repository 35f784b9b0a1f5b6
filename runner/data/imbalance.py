"""Long-tailed training sets (`dataset.imbalance`: ratio, profile, seed) for every dataset (cut first, before
`dataset.holdout`, runner/data/datasets.py's `finish`); the validation (test) split is never touched.

The profile is Cao et al.'s long-tailed CIFAR (NeurIPS 2019, "Learning Imbalanced Datasets with
Label-Distribution-Aware Margin Loss"; official code kaidic/LDAM-DRW `imbalance_cifar.py`): with n_max the
per-class count of the balanced set and rho = `ratio`, class k of K keeps

    exponential:  n_k = floor(n_max * rho^(-k / (K - 1)))
    step:         n_k = n_max for the first floor(K / 2) classes, floor(n_max / rho) for the others

samples, drawn per class (in class order) by numpy's legacy RandomState(`seed`) shuffling that class's
indices, as the official code does after `np.random.seed(rand_number)`: CIFAR-10 at ratio 100 keeps
5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50 images (12,406), the same images as LDAM-DRW's at seed 0.
n_max is the smallest class count of the set (CIFAR's 5000 or 500; 139 for digits' training split), so every
class can give its n_k. The official step profile writes K // 2 tail classes, one short for an odd K; here
the remaining K - K // 2 classes are the tail.
"""
from __future__ import annotations

import numpy as np
from runner.data.splits import split_labels
from runner.errors import require

PROFILES = ("exponential", "step")


def imbalance_problems(imbalance: dict | None) -> list[str]:
    settings = imbalance or {}
    ratio, profile = settings.get("ratio", 1.0), settings.get("profile", "exponential")
    if not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or not ratio >= 1:
        return [f"dataset.imbalance.ratio={ratio}: must be >= 1 (1 keeps the classes balanced; 100 is the "
                f"long-tailed CIFAR benchmark)"]
    if profile not in PROFILES:
        return [f"dataset.imbalance.profile={profile}: choose exponential or step"]
    return []


def profile_counts(n_max: int, num_classes: int, ratio: float, profile: str = "exponential") -> list[int]:
    """Samples kept per class (class 0 the most), Cao et al.'s formula."""
    if profile == "step":
        head = num_classes // 2
        return [int(n_max)] * head + [int(n_max / ratio)] * (num_classes - head)
    return [int(n_max * (1 / ratio) ** (k / (num_classes - 1))) for k in range(num_classes)]


def long_tailed_size(class_counts: list[int], imbalance: dict | None) -> int:
    """The training set's size after `imbalance` (what the pre-flight needs without loading the images; a bad
    `imbalance`, which imbalance_problems reports, leaves the size as loaded)."""
    settings = imbalance or {}
    ratio = settings.get("ratio", 1.0)
    if imbalance_problems(imbalance) or ratio == 1:
        return sum(class_counts)
    return sum(profile_counts(min(class_counts), len(class_counts), ratio, settings.get("profile", "exponential")))


def long_tailed_index(train, num_classes: int, imbalance: dict | None) -> np.ndarray | None:
    """The sorted indices of the training split `train` that the long-tailed cut keeps; None at ratio 1 (all)."""
    require(imbalance_problems(imbalance))
    settings = imbalance or {}
    ratio = settings.get("ratio", 1.0)
    if ratio == 1:
        return None
    labels = split_labels(train, "dataset.imbalance").numpy()
    present = np.bincount(labels, minlength=num_classes)
    counts = profile_counts(int(present.min()), num_classes, ratio, settings.get("profile", "exponential"))
    state = np.random.RandomState(settings.get("seed", 0))
    kept = []
    for cls, count in enumerate(counts):
        members = np.where(labels == cls)[0]
        state.shuffle(members)
        kept.append(members[:count])
    return np.sort(np.concatenate(kept))
