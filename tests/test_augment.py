"""Device-batched RandAugment / TrivialAugment / random erasing against torchvision v2, op by op and end to end."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from runner.augment import GEOMETRIC, OPS, SIGNED, Erasing, Policy, magnitude_table
from runner.data.sharding import epoch_generator
from runner.errors import ConfigError

SHAPES = [(3, 32, 32), (1, 28, 28), (3, 24, 32)]  # RGB, grey, non-square


def torchvision_op(image: torch.Tensor, op: str, magnitude: float) -> torch.Tensor:
    """torchvision's own op dispatch (the code its RandAugment and TrivialAugmentWide run)."""
    reference = v2.RandAugment()
    return reference._apply_image_or_video_transform(image, op, magnitude, interpolation=InterpolationMode.NEAREST,
                                                     fill=reference._fill)


def single_op_plan(policy: Policy, op: int, magnitude_bin: int, negative: bool, n: int, height: int, width: int):
    """A plan in which every image applies `op` at one bin: built through Policy.plan's own arithmetic."""
    gen = torch.Generator().manual_seed(0)
    plan = policy.plan(n, gen, height, width, torch.device("cpu"))
    table = magnitude_table(policy.name, policy.bins, height, width)
    magnitude = table[op, magnitude_bin] * (-1.0 if negative and OPS[op] in SIGNED else 1.0)
    plan.ops[:] = op
    plan.magnitudes[:] = magnitude
    from runner.augment import inverse_affine
    thetas = inverse_affine(plan.ops.astype(np.int64), plan.magnitudes.numpy(), height, width)
    plan.thetas[:] = torch.from_numpy(thetas).float()
    return plan, magnitude


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", ["randaugment", "trivialaugment"])
def test_every_op_at_every_tested_magnitude_equals_torchvision_bit_for_bit(shape, name):
    images = torch.randint(0, 256, (12, *shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    policy = Policy(name, num_ops=1)
    samples = np.arange(len(images))
    for op in range(1, len(OPS)):
        for magnitude_bin in (0, 9, 20, 30):
            for negative in (False, True) if OPS[op] in SIGNED else (False,):
                plan, magnitude = single_op_plan(policy, op, magnitude_bin, negative, len(images), *shape[1:])
                got = policy.apply(images, plan, samples, torch.from_numpy(samples))
                want = torch.stack([torchvision_op(image, OPS[op], float(magnitude)) for image in images])
                assert torch.equal(got, want), f"{name} {OPS[op]} bin {magnitude_bin} (m = {magnitude}) {shape}"


def test_float_images_follow_torchvisions_float_rules():
    images = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    policy = Policy("randaugment", num_ops=1)
    samples = np.arange(len(images))
    for op in range(1, len(OPS)):
        plan, magnitude = single_op_plan(policy, op, 20, True, len(images), 32, 32)
        got = policy.apply(images, plan, samples, torch.from_numpy(samples))
        want = torch.stack([torchvision_op(image, OPS[op], float(magnitude)) for image in images])
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0, msg=f"float {OPS[op]}")


def test_a_batch_applies_each_images_own_ops_in_order_like_torchvision_image_by_image():
    """Two ops per image, drawn per image: the batch result equals torchvision run on each image with its draws."""
    height = width = 32
    images = torch.randint(0, 256, (32, 3, height, width), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    policy = Policy("randaugment", num_ops=2, magnitude=15)
    plan = policy.plan(200, epoch_generator(0, 4), height, width, torch.device("cpu"))
    samples = np.random.default_rng(0).choice(200, size=len(images), replace=False)  # this batch's sample ids
    got = policy.apply(images, plan, samples, torch.from_numpy(samples))
    for image, sample, out in zip(images, samples, got):
        want = image
        for slot in range(2):
            want = torchvision_op(want, OPS[plan.ops[sample, slot]], float(plan.magnitudes[sample, slot]))
        assert torch.equal(out, want), f"sample {sample}: ops {[OPS[o] for o in plan.ops[sample]]}"


def test_the_plan_draws_ops_uniformly_signs_fairly_and_trivialaugment_bins_uniformly():
    n = 42_000
    plan = Policy("trivialaugment").plan(n, epoch_generator(0, 0), 32, 32, torch.device("cpu"))
    counts = np.bincount(plan.ops[:, 0], minlength=len(OPS))
    expected = n / len(OPS)
    assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected)), counts  # 5 sigma of a binomial
    rotations = plan.magnitudes[torch.from_numpy(plan.ops[:, 0] == OPS.index("Rotate")), 0]
    assert abs((rotations < 0).float().mean().item() - 0.5) < 0.05
    bins = torch.round(rotations.abs() / 4.5)  # TrivialAugment's rotation bins: 0, 4.5, ..., 135 degrees
    assert len(bins.unique()) == 31 and bins.max() == 30
    again = Policy("trivialaugment").plan(n, epoch_generator(0, 0), 32, 32, torch.device("cpu"))
    assert np.array_equal(plan.ops, again.ops) and torch.equal(plan.magnitudes, again.magnitudes), "(seed, epoch) replays"


def test_erasing_boxes_follow_torchvisions_rule_and_erase_to_the_value():
    height, width, n = 32, 32, 20_000
    erasing = Erasing(p=0.5)
    boxes = erasing.plan(n, epoch_generator(1, 2), height, width, torch.device("cpu"))
    top, left, bottom, right = boxes.unbind(1)
    erased = bottom > top
    assert abs(erased.float().mean().item() - 0.5) < 0.02
    h, w = (bottom - top)[erased], (right - left)[erased]
    assert (h < height).all() and (w < width).all() and (bottom <= height).all() and (right <= width).all()
    ours = (h * w).double().mean().item() / (height * width)
    reference = v2.RandomErasing(p=1.0)
    torch.manual_seed(0)
    areas = []
    for _ in range(4000):
        params = reference.make_params([torch.zeros(3, height, width)])
        if params["v"] is not None:
            areas.append(params["h"] * params["w"] / (height * width))
    assert abs(ours - np.mean(areas)) < 0.01, (ours, np.mean(areas))  # same distribution of box areas
    images = torch.randn(8, 3, height, width)
    out = erasing.apply(images.clone(), boxes[:8])
    for image, box, result in zip(images, boxes[:8].tolist(), out):
        i, j, bottom_i, right_j = box
        want = TF.erase(image, i, j, bottom_i - i, right_j - j, torch.tensor(0.0)) if bottom_i > i else image
        assert torch.equal(result, want)


def test_bad_policy_settings_are_one_line_errors():
    with pytest.raises(ConfigError, match="randaugment or trivialaugment"):
        Policy("autoaugment")
    with pytest.raises(ConfigError, match="a bin in"):
        Policy("randaugment", magnitude=31)
    from runner.augment import train_augment_problems
    assert train_augment_problems(random_erasing=1.5) == [
        "dataset.random_erasing=1.5: the probability of erasing an image, in [0, 1]"]


def test_geometric_ops_are_one_contiguous_block_of_ids():
    assert [OPS[i] for i in GEOMETRIC] == ["ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"]


def test_the_device_loader_augments_normalises_erases_and_mixes_and_replays_any_batch():
    from runner.augment import train_augment
    from runner.data.loaders import TensorLoader
    from runner.data.splits import Augment, TensorSplit

    gen = torch.Generator().manual_seed(4)
    split = TensorSplit(torch.randint(0, 256, (96, 3, 16, 16), dtype=torch.uint8, generator=gen), torch.arange(96) % 10)
    extra = train_augment("randaugment", 2, 9, random_erasing=0.5, mixup=0.8, cutmix=1.0)
    make = lambda extra: TensorLoader(split, 16, torch.device("cpu"), (0.5,) * 3, (0.25,) * 3,  # noqa: E731
                                      augment=Augment(2, True), shuffle=True, drop_last=True, seed=1,
                                      train_augment=extra, num_classes=10)
    loader, plain = make(extra), make(None)
    full = list(loader.epoch(3))
    assert len(full) == 6 and all(t.shape == (16, 10) for _, t, _ in full)
    for (images, targets, index), (base, labels, same) in zip(full, plain.epoch(3)):
        assert torch.equal(index, same) and not torch.equal(images, base)  # same order and crops, more augmentation
        torch.testing.assert_close(targets.sum(1), torch.ones(16))
        assert ((targets.argmax(1) == labels) | (targets.argmax(1) == labels.flip(0))).all()
    for start in (0, 2, 5):  # a resumed epoch's batches are the uninterrupted epoch's
        for (a, ta, ia), (b, tb, ib) in zip(full[start:], loader.epoch(3, start_batch=start)):
            assert torch.equal(a, b) and torch.equal(ta, tb) and torch.equal(ia, ib)
    plan = loader.epoch_plan(3)  # the first batch: the order's slots 0..15
    crops = loader._crop_and_flip(plan.order[:16], plan.offsets[:16], plan.flips[:16])
    policy = loader.extra.policy.apply(crops, plan.policy, plan.slots_host[:16], plan.slots[:16])
    normalised = (policy.float() - 0.5 * 255) / (0.25 * 255)
    erased = loader.extra.erasing.apply(normalised, plan.boxes[:16])
    from runner.mixing import batch_rng
    draw = loader.extra.mixing.draw(batch_rng(1, 3, 0), 16, 16)
    mixed, _ = loader.extra.mixing.apply(erased, split.labels[plan.order[:16]], draw, 10)
    torch.testing.assert_close(full[0][0], mixed)  # crop/flip, policy, normalise, erase, mix: in that order
