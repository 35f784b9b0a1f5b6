"""Label noise on the training split (`dataset.label_noise`: kind, rate, seed, flip_map); validation stays clean.

symmetric: exactly round(rate * n) labels of the split, each moved to a different class, uniformly.
asymmetric (class flip): for each source class in `flip_map` (default k -> k + 1 mod K), round(rate * n_k)
of its labels move to the mapped class. The draw has its own seed, so a run's seed never changes the labels.
"""
from __future__ import annotations

import torch
from torch.utils.data import Dataset

from runner.data.splits import Splits, TensorSplit, split_labels
from runner.errors import require

KINDS = ("symmetric", "asymmetric")


def label_noise_problems(label_noise: dict | None, num_classes: int | None) -> list[str]:
    """The settings' problems (the flip map's classes only when the class count is known)."""
    settings = label_noise or {}
    rate, kind, flip_map = settings.get("rate", 0.0), settings.get("kind", "symmetric"), settings.get("flip_map")
    if not 0 <= rate < 1:
        return [f"dataset.label_noise.rate={rate}: must be in [0, 1)"]
    if kind not in KINDS:
        return [f"dataset.label_noise.kind={kind}: choose symmetric or asymmetric"]
    if kind == "asymmetric" and flip_map and num_classes is not None:
        mapping = {int(k): int(v) for k, v in flip_map.items()}
        if any(not 0 <= c < num_classes for pair in mapping.items() for c in pair) or any(k == v for k, v in mapping.items()):
            return [f"dataset.label_noise.flip_map={mapping}: map classes in [0, {num_classes}) to other classes"]
    return []


def add_label_noise(splits: Splits, label_noise: dict | None) -> Splits:
    """Corrupt the training labels as `dataset.label_noise` says; record the flipped fraction."""
    if not label_noise or not label_noise.get("rate"):
        return splits
    clean = split_labels(splits.train, "dataset.label_noise")
    noisy = corrupt_labels(clean, splits.num_classes, **label_noise)
    splits.train = splits.train.relabel(noisy) if isinstance(splits.train, TensorSplit) else Relabeled(splits.train, noisy)
    splits.label_noise = (noisy != clean).sum().item() / len(clean)
    return splits


def corrupt_labels(labels: torch.Tensor, num_classes: int, kind: str = "symmetric", rate: float = 0.0,
                   seed: int = 0, flip_map: dict | None = None) -> torch.Tensor:
    """Flip exactly round(rate * n) labels, drawn with their own seed (see the module's docstring)."""
    require(label_noise_problems({"kind": kind, "rate": rate, "flip_map": flip_map}, num_classes))
    gen = torch.Generator().manual_seed(seed)
    noisy = labels.clone()
    if kind == "symmetric":
        chosen = torch.randperm(len(labels), generator=gen)[:round(rate * len(labels))]
        shift = torch.randint(1, num_classes, (len(chosen),), generator=gen)
        noisy[chosen] = (labels[chosen] + shift) % num_classes
        return noisy
    mapping = {int(k): int(v) for k, v in (flip_map or {k: (k + 1) % num_classes for k in range(num_classes)}).items()}
    for source, target in mapping.items():
        members = (labels == source).nonzero().squeeze(1)
        chosen = members[torch.randperm(len(members), generator=gen)[:round(rate * len(members))]]
        noisy[chosen] = target
    return noisy


class Relabeled(Dataset):
    """A map-style dataset whose labels are replaced (the images are read as before)."""

    def __init__(self, dataset: Dataset, labels: torch.Tensor):
        self.dataset, self.labels = dataset, labels.tolist()  # `labels`: what samplers and class weights read

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return self.dataset[index][0], self.labels[index]
