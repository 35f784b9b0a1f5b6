"""The CIFAR KD zoo has the reference code base's layer layouts: same parameter counts, same outputs' shapes.

REFERENCE_COUNTS were printed by the reference definitions themselves: HobbitLong/RepDistiller `models/`
(commit b84f547), run in a scratch folder outside this repository as
`sum(p.numel() for p in model_dict[name](num_classes=C).parameters())` for C = 100 and C = 10.
"""
from __future__ import annotations

import pytest
import torch

from conftest import compose
from runner.models import build_model

# divrun model name -> (RepDistiller name, count for 100 classes, count for 10 classes)
REFERENCE_COUNTS = {
    "resnet8x4": ("resnet8x4", 1_233_540, 1_210_410),
    "resnet32x4": ("resnet32x4", 7_433_860, 7_410_730),
    "kd_resnet20": ("resnet20", 278_324, 272_474),
    "kd_resnet32": ("resnet32", 472_756, 466_906),
    "kd_resnet56": ("resnet56", 861_620, 855_770),
    "kd_resnet110": ("resnet110", 1_736_564, 1_730_714),
    "wrn16_2": ("wrn_16_2", 703_284, 691_674),
    "wrn40_1": ("wrn_40_1", 569_780, 563_930),
    "wrn40_2": ("wrn_40_2", 2_255_156, 2_243_546),
    "vgg8": ("vgg8", 3_965_028, 3_918_858),
    "vgg13": ("vgg13", 9_462_180, 9_416_010),
    "mobilenetv2": ("MobileNetV2", 812_836, 697_546),
    "shufflenetv1": ("ShuffleV1", 949_258, 862_768),
    "shufflenetv2": ("ShuffleV2", 1_355_528, 1_263_278),
}


def build(name: str, num_classes: int, in_channels: int = 3, dataset: str = "cifar100"):
    cfg = compose(f"model={name}", f"dataset={dataset}")
    return build_model(cfg.model, in_channels, num_classes)


@pytest.mark.parametrize("name", sorted(REFERENCE_COUNTS))
def test_parameter_count_equals_the_reference_code_base(name):
    _, count_100, count_10 = REFERENCE_COUNTS[name]
    for num_classes, expected in ((100, count_100), (10, count_10)):
        model = build(name, num_classes)
        assert sum(p.numel() for p in model.parameters()) == expected, (name, num_classes)


@pytest.mark.parametrize("name", sorted(REFERENCE_COUNTS))
def test_zoo_models_expose_features_and_head(name):
    model = build(name, 100).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features = model.features(images)
        assert features.shape == (2, model.head.in_features)
        assert torch.equal(model.head(features), model(images))


def test_kd_resnet20_differs_from_he_et_al_resnet20():
    """The option-A ResNet-20 (zero-padded shortcuts) has no shortcut parameters; RepDistiller's has 1x1 convs."""
    he = sum(p.numel() for p in build("resnet20", 100).parameters())
    kd = sum(p.numel() for p in build("kd_resnet20", 100).parameters())
    shortcut_params = (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)  # two 1x1 convs and their BatchNorms
    assert kd - he == shortcut_params


@pytest.mark.parametrize("name", ["resnet8x4", "vgg8", "mobilenetv2", "shufflenetv1", "shufflenetv2"])
def test_zoo_models_run_on_small_grayscale_images(name):
    """Adaptive pooling: the digits' 8x8 single-channel images go through every zoo model."""
    model = build(name, 10, in_channels=1, dataset="digits")
    assert model(torch.randn(4, 1, 8, 8)).shape == (4, 10)
