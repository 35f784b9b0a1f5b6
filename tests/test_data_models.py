"""Every dataset and every model builds and takes a training step; the real CIFAR path learns."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from conftest import REPO, compose, train
from runner.models import build_model

MODELS = sorted(p.stem for p in (REPO / "conf" / "model").glob("*.yaml"))


def write_fake_cifar(root, num_classes: int, per_file: int = 40):
    """Pickle batches laid out exactly as the CIFAR release (random pixels)."""
    rng = np.random.default_rng(0)
    folder, train_files, test_files, key = (
        ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels")
        if num_classes == 10 else ("cifar-100-python", ["train"], ["test"], "fine_labels"))
    (root / folder).mkdir(parents=True)
    for name in train_files + test_files:
        batch = {"data": rng.integers(0, 256, (per_file, 3072), dtype=np.uint8),
                 key: rng.integers(0, num_classes, per_file).tolist()}
        with open(root / folder / name, "wb") as handle:
            pickle.dump(batch, handle)
    return root


def write_image_tree(root, classes=("cat", "dog", "owl"), per_class: int = 4):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.jpg")
    return root


def write_hf_dataset(root):
    import datasets
    from PIL import Image

    rng = np.random.default_rng(0)

    def split(n):
        images = [Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)) for _ in range(n)]
        features = datasets.Features({"img": datasets.Image(), "fine": datasets.ClassLabel(num_classes=4)})
        return datasets.Dataset.from_dict({"img": images, "fine": [i % 4 for i in range(n)]}, features=features)

    datasets.DatasetDict({"train": split(16), "test": split(8)}).save_to_disk(str(root))
    return root


DATASETS = {
    "digits": lambda tmp: [],
    "synthetic": lambda tmp: ["dataset.train_size=64", "dataset.val_size=16", "dataset.image_size=16"],
    "cifar10": lambda tmp: [f"dataset.root={write_fake_cifar(tmp, 10)}"],
    "cifar100": lambda tmp: [f"dataset.root={write_fake_cifar(tmp, 100)}"],
    "imagefolder": lambda tmp: [f"dataset.root={write_image_tree(tmp)}", "dataset.image_size=32"],
    "imagenet": lambda tmp: [f"dataset.root={write_image_tree(tmp)}", "dataset.image_size=32"],
    "hf": lambda tmp: [f"dataset.path={write_hf_dataset(tmp / 'hf')}", "dataset.image_column=img",
                       "dataset.label_column=fine", "dataset.image_size=12"],
}


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_every_dataset_trains_a_step(tmp_path, name):
    summary, run = train(tmp_path, f"dataset={name}", *DATASETS[name](tmp_path), "trainer.max_steps=2",
                         "trainer.batch_size=8", "trainer.num_workers=0")
    assert summary["status"] == "finished" and summary["steps"] == 2
    assert 0.0 <= summary["final_val_acc1"] <= 1.0


def test_dataset_config_lists_every_yaml():
    assert sorted(DATASETS) == sorted(p.stem for p in (REPO / "conf" / "dataset").glob("*.yaml"))


@pytest.mark.parametrize("name", MODELS)
def test_every_model_builds_and_steps(name):
    size = 224 if name.startswith("tv_vit") else 32
    cfg = compose(f"model={name}", "dataset=synthetic", f"dataset.image_size={size}")
    model = build_model(cfg.model, 3, 7)
    images = torch.randn(2, 3, size, size)
    logits = model(images)
    assert logits.shape == (2, 7)
    logits.logsumexp(-1).sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


# counts printed by the reference code: akamaster/pytorch_resnet_cifar10 (He et al. ResNets), kuangliu/pytorch-cifar
# (ResNet-18), xternalz/WideResNet-pytorch (WRN-28-10), KellerJordan/cifar10-airbench legacy/airbench94.py make_net()
@pytest.mark.parametrize("name,params", [("resnet20", 269_722), ("resnet56", 853_018), ("resnet110", 1_727_962), ("resnet18", 11_173_962),
                                         ("wrn28_10", 36_479_194), ("airbench94", 1_972_792)])
def test_reference_parameter_counts(name, params):
    model = build_model(compose(f"model={name}").model, 3, 10)
    assert sum(p.numel() for p in model.parameters()) == params


def test_real_cifar10_learns(tmp_path, shared_cifar):
    summary, _ = train(tmp_path, "dataset=cifar10", f"dataset.root={shared_cifar}", "model=resnet20",
                       "dataset.limit_train=5000", "dataset.limit_val=1000", "optimizer.lr=0.05",
                       "trainer.batch_size=128")
    assert summary["status"] == "finished"
    assert summary["final_val_acc1"] > 0.25  # chance is 0.10


RECIPE = ["dataset.augment=randaugment", "dataset.random_erasing=0.5", "dataset.mixup=0.8", "dataset.cutmix=1.0"]


@pytest.mark.parametrize("name, policy", [("digits", "randaugment"), ("cifar10", "trivialaugment"),
                                          ("imagefolder", "randaugment"), ("hf", "trivialaugment")])
def test_every_data_path_trains_with_the_policy_erasing_and_mixing(tmp_path, name, policy):
    """In-memory data (digits 1 channel, CIFAR 3) on the device; folder and Hugging Face data with torchvision v2."""
    summary, run = train(tmp_path, f"dataset={name}", *DATASETS[name](tmp_path), *RECIPE, f"dataset.augment={policy}",
                         "trainer.max_steps=2", "trainer.batch_size=8", "trainer.num_workers=0")
    assert summary["status"] == "finished" and summary["steps"] == 2
