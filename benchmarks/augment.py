"""Augmentation policies: images/s of divrun's batched RandAugment (2 ops, bin 9), TrivialAugment Wide and random
erasing (p 0.25) on a device batch vs torchvision v2's same transforms image by image in a DataLoader (uint8
tensors, workers = cores), CIFAR-sized images, batch 512; divrun's time includes drawing the epoch's plan. On the
CPU divrun runs on one thread (the workers have a core each): on a loaded machine OpenMP's barriers across busy
cores cost more than the ops themselves."""
from __future__ import annotations

import time

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from runner.augment import Erasing, Policy
from runner.data.loaders import cpu_count
from runner.data.sharding import epoch_generator

BATCH = 512


class Transformed(Dataset):
    def __init__(self, images: torch.Tensor, transform):
        self.images, self.transform = images, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(self.images[i])


def torchvision_speed(images: torch.Tensor, transform) -> float:
    loader = DataLoader(Transformed(images, transform), batch_size=BATCH, num_workers=cpu_count(), drop_last=True)
    start = time.perf_counter()
    count = sum(len(batch) for batch in loader)
    return count / (time.perf_counter() - start)


def divrun_speed(images: torch.Tensor, device: torch.device, policy: Policy | None, erasing: Erasing | None) -> float:
    images = images.to(device)
    n, _, height, width = images.shape
    start = time.perf_counter()
    gen = epoch_generator(0, 1)
    plan = policy.plan(n, gen, height, width, device) if policy else None
    boxes = erasing.plan(n, gen, height, width, device) if erasing else None
    order = np.arange(n)
    for first in range(0, n - BATCH + 1, BATCH):
        samples = order[first:first + BATCH]
        index = torch.from_numpy(samples).to(device)
        batch = images[index]
        if policy:
            batch = policy.apply(batch, plan, samples, index)
        if erasing:
            batch = erasing.apply(batch.float(), boxes[index])
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (n // BATCH) * BATCH / (time.perf_counter() - start)


def run(quick: bool) -> list[dict]:
    from torchvision.transforms import v2

    n = 4096 if quick else 20_480
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    cases = {
        "randaugment": (v2.RandAugment(), Policy("randaugment"), None),
        "trivialaugment": (v2.TrivialAugmentWide(), Policy("trivialaugment"), None),
        "random erasing": (v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.RandomErasing(p=0.25)]), None,
                           Erasing(0.25)),
    }
    rows = []
    for name, (reference, policy, erasing) in cases.items():
        baseline = torchvision_speed(images, reference)
        rows.append({"augmentation": name, "pipeline": f"torchvision v2 per image ({cpu_count()} workers)",
                     "device": "cpu", "images/s": baseline, "ratio": 1.0})
        for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
            threads = torch.get_num_threads()
            torch.set_num_threads(1 if device == "cpu" else threads)
            try:
                speed = divrun_speed(images, torch.device(device), policy, erasing)
            finally:
                torch.set_num_threads(threads)
            rows.append({"augmentation": name, "pipeline": "divrun batched" + (" (1 thread)" if device == "cpu" else ""),
                         "device": device, "images/s": speed,
                         "ratio": speed / baseline})
    return rows
