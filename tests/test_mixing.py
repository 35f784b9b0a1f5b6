"""Mixup / CutMix: targets sum to 1 and carry the mixing coefficients; CutMix's lambda is the area each image keeps."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from runner.data import epoch_generator
from runner.errors import ConfigError
from runner.mixing import Mixing, cutmix_box

K = 10


def batch(n: int = 32, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 16, 16, generator=gen), torch.randint(0, K, (n,), generator=gen)


def test_mixup_images_and_targets_are_the_convex_combination_with_the_reversed_batch():
    images, labels = batch()
    mixing = Mixing(mixup=0.8)
    plan = mixing.plan(50, epoch_generator(0, 3), 16, 16)
    assert not plan.cutmix.any() and (plan.lam < 1).all()
    for b in range(3):
        lam = plan.lam[b]
        mixed, targets = mixing.apply(images, labels, plan, b, K)
        torch.testing.assert_close(mixed, lam * images + (1 - lam) * images.flip(0))
        want = lam * torch.eye(K)[labels] + (1 - lam) * torch.eye(K)[labels.flip(0)]
        torch.testing.assert_close(targets, want)
        torch.testing.assert_close(targets.sum(1), torch.ones(len(labels)))


def test_cutmix_lambda_is_the_fraction_of_pixels_each_image_keeps():
    images, labels = batch()
    mixing = Mixing(cutmix=1.0)
    plan = mixing.plan(200, epoch_generator(1, 0), 16, 16)
    assert plan.cutmix.all()
    for b in range(200):
        mixed, targets = mixing.apply(images, labels, plan, b, K)
        from_partner = (mixed != images).all(1)  # continuous images: a pasted pixel differs in every channel
        assert torch.equal(mixed[:, :, from_partner[0]], images.flip(0)[:, :, from_partner[0]])
        kept = 1.0 - from_partner[0].float().mean().item()
        assert plan.lam[b] == pytest.approx(kept, abs=1e-12), f"batch {b}: lam {plan.lam[b]}, pixels kept {kept}"
        own = targets[torch.arange(len(labels)), labels]
        same_label = labels == labels.flip(0)
        torch.testing.assert_close(own[~same_label], torch.full_like(own[~same_label], plan.lam[b]))
        torch.testing.assert_close(targets.sum(1), torch.ones(len(labels)))


def test_timms_box_clips_to_the_image_and_keeps_its_side_inside():
    rng = np.random.default_rng(0)
    for lam in (0.0, 0.3, 0.9, 0.999):
        for _ in range(50):
            top, bottom, left, right = cutmix_box(lam, 16, 24, rng)
            assert 0 <= top <= bottom <= 16 and 0 <= left <= right <= 24
            assert bottom - top <= int(16 * np.sqrt(1 - lam)) and right - left <= int(24 * np.sqrt(1 - lam))


def test_lambda_is_beta_distributed_and_both_on_switches_half_the_batches():
    alpha, n = 0.8, 20_000
    plan = Mixing(mixup=alpha, cutmix=1.0).plan(n, epoch_generator(2, 0), 32, 32)
    assert abs(plan.cutmix.mean() - 0.5) < 0.02
    lam = plan.lam[~plan.cutmix]
    variance = 1 / (4 * (2 * alpha + 1))  # Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1))
    assert abs(lam.mean() - 0.5) < 0.01 and abs(lam.var() - variance) < 0.01
    unmixed = Mixing(mixup=alpha, prob=0.25).plan(n, epoch_generator(2, 0), 32, 32)
    assert abs((unmixed.lam == 1).mean() - 0.75) < 0.02


def test_the_plan_replays_from_seed_and_epoch():
    one = Mixing(mixup=0.2, cutmix=1.0).plan(100, epoch_generator(5, 7), 32, 32)
    two = Mixing(mixup=0.2, cutmix=1.0).plan(100, epoch_generator(5, 7), 32, 32)
    other = Mixing(mixup=0.2, cutmix=1.0).plan(100, epoch_generator(5, 8), 32, 32)
    assert np.array_equal(one.lam, two.lam) and np.array_equal(one.boxes, two.boxes)
    assert not np.array_equal(one.lam, other.lam)


def test_negative_alphas_are_refused():
    with pytest.raises(ConfigError, match="Beta"):
        Mixing(mixup=-1)
