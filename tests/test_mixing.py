"""Mixup / CutMix: targets sum to 1 and carry the mixing coefficients; CutMix's lambda is the area each image keeps."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from runner.errors import ConfigError
from runner.mixing import MixDraw, Mixing, batch_rng, cutmix_box

K = 10


def batch(n: int = 32, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 16, 16, generator=gen), torch.randint(0, K, (n,), generator=gen)


def draws(mixing: Mixing, count: int, seed: int = 0):
    return [mixing.draw(batch_rng(seed, 0, 64 * b), 16, 16) for b in range(count)]


def test_mixup_images_and_targets_are_the_convex_combination_with_the_reversed_batch():
    images, labels = batch()
    mixing = Mixing(mixup=0.8)
    for draw in draws(mixing, 3):
        assert not draw.cutmix and draw.lam < 1
        mixed, targets = mixing.apply(images, labels, draw, K)
        torch.testing.assert_close(mixed, draw.lam * images + (1 - draw.lam) * images.flip(0))
        want = draw.lam * torch.eye(K)[labels] + (1 - draw.lam) * torch.eye(K)[labels.flip(0)]
        torch.testing.assert_close(targets, want)
        torch.testing.assert_close(targets.sum(1), torch.ones(len(labels)))


def test_cutmix_lambda_is_the_fraction_of_pixels_each_image_keeps():
    images, labels = batch()
    mixing = Mixing(cutmix=1.0)
    for b, draw in enumerate(draws(mixing, 200, seed=1)):
        assert draw.cutmix
        mixed, targets = mixing.apply(images, labels, draw, K)
        from_partner = (mixed != images).all(1)  # continuous images: a pasted pixel differs in every channel
        assert torch.equal(mixed[:, :, from_partner[0]], images.flip(0)[:, :, from_partner[0]])
        kept = 1.0 - from_partner[0].float().mean().item()
        assert draw.lam == pytest.approx(kept, abs=1e-12), f"batch {b}: lam {draw.lam}, pixels kept {kept}"
        own = targets[torch.arange(len(labels)), labels]
        same_label = labels == labels.flip(0)
        torch.testing.assert_close(own[~same_label], torch.full_like(own[~same_label], draw.lam))
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
    drawn = draws(Mixing(mixup=alpha, cutmix=1.0), n, seed=2)
    assert abs(np.mean([d.cutmix for d in drawn]) - 0.5) < 0.02
    lam = np.array([d.lam for d in drawn if not d.cutmix])
    variance = 1 / (4 * (2 * alpha + 1))  # Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1))
    assert abs(lam.mean() - 0.5) < 0.01 and abs(lam.var() - variance) < 0.01
    unmixed = draws(Mixing(mixup=alpha, prob=0.25), n, seed=2)
    assert abs(np.mean([d.lam == 1 for d in unmixed]) - 0.75) < 0.02


def test_a_batchs_draw_replays_from_seed_epoch_and_position():
    mixing = Mixing(mixup=0.2, cutmix=1.0)
    one, two = mixing.draw(batch_rng(5, 7, 128), 32, 32), mixing.draw(batch_rng(5, 7, 128), 32, 32)
    assert one == two
    assert len({mixing.draw(batch_rng(5, 7, p), 32, 32).lam for p in range(0, 1280, 128)}) == 10


def test_negative_alphas_are_refused():
    with pytest.raises(ConfigError, match=r"dataset.mixup=-1: Beta\(a, a\) parameters are >= 0"):
        Mixing(mixup=-1)


def test_distillers_that_need_class_labels_refuse_mixed_targets():
    from conftest import compose
    from runner.distill.nd import ND
    from runner.validate import problems_of

    problems = list(problems_of(compose("trainer.device=cpu", "distill=pskd", "dataset.cutmix=1.0")))
    assert problems == ["dataset.mixup/cutmix with distill=pskd: its targets mix each sample's one-hot label with "
                        "its past prediction, and mixed targets are probabilities; set dataset.mixup=0 dataset.cutmix=0"]
    assert ND.class_labels_reason  # nd (a teacher needed to compose it) by the same rule


# ---- mixed targets in the losses: smoothed as the labels they mix, never a teacher's --------------------------

def method_context(criterion, model=None):
    from types import SimpleNamespace

    return SimpleNamespace(criterion=criterion, model=model or torch.nn.Linear(4, K), device=torch.device("cpu"),
                           progress=SimpleNamespace(epoch=0), data=SimpleNamespace(train_size=64, num_classes=K))


@pytest.mark.parametrize("method", ["none", "mesa", "saf"])
@pytest.mark.parametrize("loss", ["ce", "kl"])
def test_a_mix_of_labels_is_smoothed_as_the_labels_it_mixes(method, loss):
    """The methods that give the loss group's loss the batch's labels: with mixup's targets and loss.smoothing=s
    the loss is D((1 - s) q_mix + s / K, p), which for CE is also the lam-weighted mix of the two labels' smoothed
    losses (smoothing is affine in q)."""
    from runner.distill.base import Distiller
    from runner.distill.mesa import MESA
    from runner.distill.saf import SAF
    from runner.losses.ce import CrossEntropy
    from runner.losses.fdiv import KL

    s, lam = 0.1, 0.7
    criterion = {"ce": CrossEntropy, "kl": KL}[loss](smoothing=s)
    distiller = {"none": Distiller, "mesa": MESA, "saf": SAF}[method]()
    distiller.setup(method_context(criterion))  # epoch 0: before mesa's and saf's own terms start
    images, labels = batch(16)
    logits = torch.randn(16, K, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    _, mixed = Mixing(mixup=0.8).apply(images, labels, MixDraw(lam, False), K)
    got = distiller.loss(images, mixed.double(), torch.arange(16), logits)
    q = (1 - s) * mixed.double() + s / K
    log_p = torch.log_softmax(logits, -1)
    cross_entropy = -(q * log_p).sum(-1)
    want = cross_entropy if loss == "ce" else (q * q.log()).sum(-1) + cross_entropy
    torch.testing.assert_close(got, want)  # per sample: what the step's weighting point weighs
    if loss == "ce":
        own = lambda y: criterion(logits, y, reduction="none")  # noqa: E731 - the smoothed loss on class indices
        torch.testing.assert_close(got, lam * own(labels) + (1 - lam) * own(labels.flip(0)))


def test_kd_with_mixed_targets_keeps_label_smoothing_out_of_the_teachers_term():
    """KD's hard term is plain cross-entropy on the mix; its soft term T^2 KL(p_t || p_s) takes the teacher's
    probabilities as given, whatever loss.smoothing says."""
    from runner.distill.kd import KD
    from runner.losses.fdiv import KL

    kd, T, alpha = KD(alpha=0.9, temperature=4.0), 4.0, 0.9
    kd.criterion, kd.context = KL(smoothing=0.2), method_context(None)  # setup would load a teacher
    images, labels = batch(16)
    gen = torch.Generator().manual_seed(2)
    logits, teacher = torch.randn(16, K, generator=gen, dtype=torch.float64), torch.randn(16, K, generator=gen, dtype=torch.float64)
    _, mixed = Mixing(cutmix=1.0).apply(images, labels, MixDraw(0.6, True, (0, 8, 0, 8)), K)
    got = kd.objective(logits, teacher, mixed.double())
    hard = -(mixed.double() * torch.log_softmax(logits, -1)).sum(-1)  # per sample, as the objective gives them
    p_t, log_p_t, log_p_s = torch.softmax(teacher / T, -1), torch.log_softmax(teacher / T, -1), torch.log_softmax(logits / T, -1)
    soft = T ** 2 * (p_t * (log_p_t - log_p_s)).sum(-1)
    # per sample at float32's precision: the objective computes in float32 whatever the logits' dtype
    torch.testing.assert_close(got, (1 - alpha) * hard + alpha * soft, rtol=1e-5, atol=1e-5, check_dtype=False)
