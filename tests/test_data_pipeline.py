"""The device-resident loader: augmentation is right, reproducible, and matches the DataLoader path."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from runner.data.loaders import FolderLoader, TensorLoader
from runner.data.splits import Augment, TensorSplit

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def numbered_split(n: int = 64, size: int = 8) -> TensorSplit:
    images = torch.randint(0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    return TensorSplit(images, torch.arange(n) % 10)


def loader(split, augment=Augment(4, True), seed=0, **kwargs):
    return TensorLoader(split, 16, torch.device("cpu"), MEAN, STD, augment=augment, shuffle=True, seed=seed, **kwargs)


def unnormalize(images: torch.Tensor) -> torch.Tensor:
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return (images * std + mean) * 255


def test_each_image_is_its_padded_window_mirrored_when_flipped():
    split = numbered_split()
    data = loader(split)
    plan = data.epoch_plan(3)  # one row per slot of the epoch's order
    order, offsets, flips = plan.order, plan.offsets, plan.flips
    padded = F.pad(split.images, (4, 4, 4, 4))
    slot = 0
    for images, labels, index in data.epoch(3):
        for image, label, i in zip(images, labels, index.tolist()):
            assert i == order[slot]
            dy, dx = offsets[slot].tolist()
            assert 0 <= dy <= 8 and 0 <= dx <= 8
            expected = padded[i, :, dy:dy + 8, dx:dx + 8].float()
            expected = expected.flip(-1) if flips[slot] else expected
            slot += 1
            torch.testing.assert_close(unnormalize(image[None])[0], expected, rtol=0, atol=1e-3)
            assert label == split.labels[i]


def test_flip_rate_and_offsets_are_uniform_enough():
    data = loader(numbered_split(n=4000))
    plan = data.epoch_plan(0)
    offsets, flips = plan.offsets, plan.flips
    assert abs(flips.float().mean().item() - 0.5) < 0.03
    assert offsets.min() == 0 and offsets.max() == 8
    assert abs(offsets.float().mean().item() - 4) < 0.15


def test_same_seed_same_batches_new_epoch_new_order():
    split = numbered_split()
    first = [b[0] for b in loader(split).epoch(0)]
    again = [b[0] for b in loader(split).epoch(0)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    orders = [torch.cat([b[2] for b in loader(split).epoch(e)]) for e in (0, 1)]
    assert not torch.equal(orders[0], orders[1])
    assert sorted(orders[1].tolist()) == list(range(64))
    other_seed = torch.cat([b[2] for b in loader(split, seed=1).epoch(0)])
    assert not torch.equal(orders[0], other_seed)


def test_resume_inside_an_epoch_replays_the_same_batches():
    data = loader(numbered_split())
    batches = list(data.epoch(2))
    for a, b in zip(batches[2:], data.epoch(2, start_batch=2)):
        assert torch.equal(a[0], b[0]) and torch.equal(a[2], b[2])


class NormalizedImages(Dataset):
    """The same split as a map-style dataset, normalised per item like a torchvision transform would."""

    def __init__(self, split: TensorSplit):
        self.split = split

    def __len__(self):
        return len(self.split)

    def __getitem__(self, i):
        image = self.split.images[i].float()
        mean, std = torch.tensor(MEAN).view(3, 1, 1) * 255, torch.tensor(STD).view(3, 1, 1) * 255
        return (image - mean) / std, self.split.labels[i]


def losses_along(data, epochs: int = 2) -> list[float]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    losses = []
    for images, labels, _ in (batch for e in range(epochs) for batch in data.epoch(e)):
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def test_training_curve_matches_the_dataloader_path():
    split = numbered_split()
    resident = loader(split, augment=Augment(0, False), drop_last=True)
    folder = FolderLoader(NormalizedImages(split), 16, torch.device("cpu"), shuffle=True, drop_last=True,
                          seed=0, num_workers=0)
    torch.testing.assert_close(losses_along(resident), losses_along(folder), rtol=1e-5, atol=1e-6)
