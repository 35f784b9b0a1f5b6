"""dataset.label_noise: exact flipped fractions, training split only, its own seed, recorded in summary.json."""
from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset

from runner.data.datasets import digits
from runner.data.label_noise import add_label_noise, corrupt_labels
from runner.data.splits import Splits
from runner.errors import ConfigError

from conftest import read_summary, train


def test_symmetric_noise_flips_exactly_round_rate_n_labels_to_other_classes():
    labels = torch.arange(1000) % 10
    noisy = corrupt_labels(labels, 10, kind="symmetric", rate=0.37, seed=3)
    assert (noisy != labels).sum().item() == 370
    assert noisy.min() >= 0 and noisy.max() < 10
    assert torch.equal(noisy, corrupt_labels(labels, 10, kind="symmetric", rate=0.37, seed=3))
    assert not torch.equal(noisy, corrupt_labels(labels, 10, kind="symmetric", rate=0.37, seed=4))
    # the new class is spread over the other classes, not always the same one
    assert len(torch.unique((noisy - labels)[noisy != labels] % 10)) == 9


def test_asymmetric_noise_flips_each_source_class_to_its_mapped_class():
    labels = torch.arange(997) % 10
    noisy = corrupt_labels(labels, 10, kind="asymmetric", rate=0.4, seed=0)
    for c in range(10):
        members = labels == c
        flipped = members & (noisy != labels)
        assert flipped.sum().item() == round(0.4 * members.sum().item())
        assert (noisy[flipped] == (c + 1) % 10).all()
    cifar_map = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}
    noisy = corrupt_labels(labels, 10, kind="asymmetric", rate=0.5, seed=0, flip_map=cifar_map)
    changed = noisy != labels
    assert set(labels[changed].tolist()) == set(cifar_map)
    for source, target in cifar_map.items():
        assert (noisy[changed & (labels == source)] == target).all()
        assert (changed & (labels == source)).sum().item() == round(0.5 * (labels == source).sum().item())


@pytest.mark.parametrize("settings,key", [({"kind": "pairs", "rate": 0.2}, "kind"), ({"rate": 1.0}, "rate"),
                                          ({"kind": "asymmetric", "rate": 0.2, "flip_map": {1: 1}}, "flip_map")])
def test_bad_noise_settings_name_the_key(settings, key):
    with pytest.raises(ConfigError, match=f"dataset.label_noise.{key}"):
        corrupt_labels(torch.arange(10), 10, **settings)


def test_only_training_labels_change_and_the_fraction_is_recorded():
    clean = digits()
    noisy = digits(label_noise={"kind": "symmetric", "rate": 0.4, "seed": 1, "flip_map": None})
    assert torch.equal(noisy.val.labels, clean.val.labels) and torch.equal(noisy.train.images, clean.train.images)
    n = len(clean.train)
    assert (noisy.train.labels != clean.train.labels).sum().item() == round(0.4 * n)
    assert noisy.label_noise == round(0.4 * n) / n and clean.label_noise == 0.0


class FolderLike(Dataset):
    def __init__(self, n):
        self.targets = [i % 3 for i in range(n)]

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        return torch.full((1,), float(index)), self.targets[index]


def test_map_style_datasets_are_relabeled_through_their_targets():
    splits = Splits("folder", FolderLike(30), FolderLike(9), num_classes=3, in_channels=1, image_size=1)
    add_label_noise(splits, {"kind": "asymmetric", "rate": 0.5, "seed": 0})
    items = [splits.train[i] for i in range(30)]
    assert [image.item() for image, _ in items] == list(range(30))  # images untouched
    assert sum(label != i % 3 for i, (_, label) in enumerate(items)) == 15
    assert [splits.val[i][1] for i in range(9)] == [i % 3 for i in range(9)]


def test_label_noise_lowers_cross_entropy_accuracy_and_is_in_the_summary(tmp_path):
    recipe = ["model=mlp", "trainer.batch_size=64", "trainer.epochs=8", "trainer.eval_every=100",
              "trainer.checkpoint_every=100", "logger.wandb.mode=disabled"]
    clean, _ = train(tmp_path / "clean", *recipe)
    noisy, run_dir = train(tmp_path / "noisy", *recipe, "dataset.label_noise.rate=0.4")
    assert read_summary(run_dir)["train_label_noise"] == pytest.approx(0.4, abs=1e-3)
    assert clean["train_label_noise"] == 0.0
    assert noisy["final_val_acc1"] < clean["final_val_acc1"] - 0.02, (noisy["final_val_acc1"], clean["final_val_acc1"])
