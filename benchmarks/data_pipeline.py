"""Data pipeline: images/s of the device-resident loader (crop with padding 4, flip, normalise, batched)
vs torchvision's DataLoader with the same augmentation (PIL transforms, workers = cores), CIFAR-sized data.
Target: >= 5x on the CPU."""
from __future__ import annotations

import time

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from benchmarks import timed_devices
from runner.data.datasets import CIFAR_MEAN, CIFAR_STD
from runner.data.loaders import TensorLoader, cpu_count
from runner.data.splits import Augment, TensorSplit


class PILImages(Dataset):
    """What torchvision's CIFAR10 dataset does per item: uint8 HWC array -> PIL -> transforms."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def images_per_second(batches, count: int) -> float:
    start = time.perf_counter()
    for images, *_ in batches:
        pass
    if images.is_cuda:
        torch.cuda.synchronize()
    return count / (time.perf_counter() - start)


def run(quick: bool) -> list[dict]:
    from torchvision import transforms as T

    if not timed_devices():
        return []
    n = 10_000 if quick else 50_000
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, n)
    transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize(CIFAR_MEAN[10], CIFAR_STD[10])])
    workers = cpu_count()
    loader = DataLoader(PILImages(images, labels, transform), batch_size=512, shuffle=True, drop_last=True,
                        num_workers=workers, persistent_workers=False)
    baseline = images_per_second(loader, len(loader) * 512)
    rows = [{"loader": f"torchvision DataLoader ({workers} workers)", "device": "cpu", "images/s": baseline, "ratio": 1.0}]
    split = TensorSplit(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels))
    augments = {"": Augment(4, True), " (airbench: reflect pad 2, alternate flip)": Augment(2, "alternate", "reflect")}
    for device in timed_devices():
        for label, augment in augments.items():
            resident = TensorLoader(split, 512, torch.device(device), CIFAR_MEAN[10], CIFAR_STD[10],
                                    augment=augment, shuffle=True, drop_last=True)
            speed = images_per_second(resident.epoch(1), len(resident) * 512)
            rows.append({"loader": "divrun device-resident" + label, "device": device, "images/s": speed,
                         "ratio": speed / baseline})
    return rows
