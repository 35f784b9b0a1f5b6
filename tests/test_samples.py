"""Which samples drive a step (issue #18): each weighting against its paper's equation on a hand-computed batch,
hard selection, long-tailed splits, class-balanced sampling at its expected rates, per-class accuracy, and a
short run of all of them together."""
from __future__ import annotations

import contextlib
import json
import math
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from sklearn.metrics import balanced_accuracy_score

from conftest import QUICK, REPO, compose, divrun, run_folders, train
from runner.class_accuracy import ClassAccuracy
from runner.context import Progress
from runner.data.imbalance import profile_counts
from runner.data.samplers import ClassBalanced as ClassBalancedSampler
from runner.data.samplers import Cooldown, Passes, Uniform
from runner.accumulate import split
from runner.data.sharding import epoch_generator, epoch_order
from runner.losses.ce import CrossEntropy
from runner.selection import HardSelection
from runner.step import Step
from runner.weighting import SamplerCorrection, weight_statistics
from runner.weighting.class_balanced import ClassBalanced, class_weights
from runner.weighting.kl_dro import KLDRO
from runner.weighting.loss_rank import LossRank

LOSSES = torch.tensor([1.0, 2.0, 4.0, 3.0])  # min 1, max 4: h = 2 l / 3 - 5 / 3 = (-1, -1/3, 1, 1/3) at delta 1


def context(step: int = 0, steps: int = 100, counts=None, epoch: int = 0) -> SimpleNamespace:
    """The part of a MethodContext the weightings read."""
    return SimpleNamespace(progress=Progress(step=step, epoch=epoch), steps=steps, device=torch.device("cpu"),
                           data=SimpleNamespace(class_counts=lambda needed_by: torch.as_tensor(counts)))


def softmax_by_hand(values: list[float], temperature: float) -> list[float]:
    exps = [math.exp(v / temperature) for v in values]
    return [e / sum(exps) for e in exps]


def weighted(weighting, losses=LOSSES, labels=None, **where) -> torch.Tensor:
    weighting.setup(context(**where))
    return weighting.multipliers(losses, labels if labels is not None else torch.zeros(len(losses), dtype=torch.long))


# ---- loss_rank (Sow et al., ICLR 2025) -----------------------------------------------------------------
@pytest.mark.parametrize("fn, shaped", [
    ("linupper", [0.0, 2 / 3, 1.0, 1.0]),        # min(h + 1, 1)
    ("quadratic", [0.0, 8 / 9, 0.0, 8 / 9]),     # 1 - h^2
    ("extremes", [1.0, 1 / 3, 1.0, 1 / 3]),      # |h|
])
@pytest.mark.parametrize("temperature", [1.0, 0.4])
def test_loss_rank_weights_are_the_softmax_of_the_shaped_normalised_losses(fn, shaped, temperature):
    """w_i = exp(f(h_i) / r) / sum_j exp(f(h_j) / r), the multiplier of the plain mean N w_i (sum N)."""
    m = weighted(LossRank(fn=fn, temperature=temperature, warmup=0))
    expected = [4 * w for w in softmax_by_hand(shaped, temperature)]
    torch.testing.assert_close(m, torch.tensor(expected), rtol=1e-6, atol=1e-6)
    assert m.sum().item() == pytest.approx(4.0, rel=1e-6)


def test_loss_rank_is_uniform_during_its_warmup_and_reads_fractions_of_the_run():
    rank = LossRank(fn="linupper", warmup=0.05)  # 5 % of 200 steps: 10 steps uniform
    assert torch.equal(weighted(rank, step=9, steps=200), torch.ones(4))
    assert not torch.equal(weighted(rank, step=10, steps=200), torch.ones(4))
    assert torch.equal(weighted(LossRank(warmup=3), step=2), torch.ones(4))


def test_loss_rank_of_equal_losses_is_the_plain_mean():
    torch.testing.assert_close(weighted(LossRank(warmup=0), torch.full((5,), 2.5)), torch.ones(5))


# ---- kl_dro (Sow, Lin, Wang & Liang, ICLR 2024) ----------------------------------------------------------
@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0])
def test_kl_dro_weights_are_the_softmax_of_the_losses(temperature):
    m = weighted(KLDRO(temperature))
    torch.testing.assert_close(m, torch.tensor([4 * w for w in softmax_by_hand(LOSSES.tolist(), temperature)]))


def test_kl_dro_weights_maximise_the_kl_regularised_objective():
    """max_w sum_i w_i l_i - r KL(w || uniform) over the simplex: no point of the simplex does better."""
    r, losses = 0.7, LOSSES.double()
    objective = lambda w: float((w * losses).sum() - r * (w * (w * len(w)).log()).sum())  # noqa: E731
    best = objective(weighted(KLDRO(r)).double() / 4)
    others = torch.distributions.Dirichlet(torch.ones(4, dtype=torch.float64)).sample((2000,))
    assert best >= max(objective(w) for w in others)
    assert best > objective(torch.full((4,), 0.25, dtype=torch.float64))


# ---- class_balanced (Cui et al., CVPR 2019; Li et al., NAACL 2025) ---------------------------------------
COUNTS = torch.tensor([100, 10, 1])


def test_inverse_frequency_weights_sum_to_the_number_of_classes():
    w = class_weights(COUNTS, "inverse_frequency")
    by_hand = [3 * x / 1.11 for x in (0.01, 0.1, 1.0)]  # 1/n_k = 0.01, 0.1, 1, scaled to sum K = 3
    torch.testing.assert_close(w, torch.tensor(by_hand, dtype=torch.float64))


def test_effective_number_weights_are_the_inverse_effective_numbers():
    """E_n = (1 - beta^n) / (1 - beta): at beta = 0.9, E_1 = 1, E_10 = 6.5132, E_100 = 9.99973."""
    w = class_weights(COUNTS, "effective_number", beta=0.9)
    inverse = [1 / 9.999734, 1 / 6.513216, 1 / 1.0]
    torch.testing.assert_close(w, torch.tensor([3 * x / sum(inverse) for x in inverse], dtype=torch.float64),
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(class_weights(COUNTS, "effective_number", beta=0.0), torch.ones(3, dtype=torch.float64))


def test_temperature_weights_mirror_the_sampler_and_samples_normalisation_has_mean_one():
    # tau = 1: the natural rates, nothing to correct; tau infinite: inverse frequency
    torch.testing.assert_close(class_weights(COUNTS, "temperature", temperature=1.0), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(class_weights(COUNTS, "temperature"), class_weights(COUNTS, "inverse_frequency"))
    w = class_weights(COUNTS, "inverse_frequency", normalize="samples")
    assert float((w * COUNTS / 111).sum()) == pytest.approx(1.0)
    assert float(w[2] / w[0]) == pytest.approx(100.0)


def test_class_balanced_multiplies_each_sample_by_its_class_weight():
    weighting = ClassBalanced()
    m = weighted(weighting, torch.ones(3), torch.tensor([2, 0, 2]), counts=COUNTS)
    table = [3 * x / 1.11 for x in (0.01, 0.1, 1.0)]
    torch.testing.assert_close(m, torch.tensor([table[2], table[0], table[2]]))
    mixed = weighting.multipliers(torch.ones(1), torch.tensor([[0.5, 0.5, 0.0]]))  # a soft target: its expectation
    torch.testing.assert_close(mixed, torch.tensor([(table[0] + table[1]) / 2]))


# ---- the step's weighting point ----------------------------------------------------------------------------
def test_weighting_point_is_the_weighted_mean_and_no_gradient_flows_through_a_weight():
    losses = LOSSES.clone().requires_grad_()
    step = SimpleNamespace(weightings=(KLDRO(1.0),), unweighted=torch.zeros(4))
    step.weightings[0].setup(context())
    loss, statistics = Step.batch_loss(step, losses, torch.zeros(4, dtype=torch.long))
    m = torch.tensor([4 * w for w in softmax_by_hand(LOSSES.tolist(), 1.0)])
    assert loss.item() == pytest.approx(float((m * LOSSES).mean()), rel=1e-6)
    loss.backward()
    torch.testing.assert_close(losses.grad, m / 4)  # d/dl_i of mean_j m_j l_j with m held fixed
    torch.testing.assert_close(statistics, torch.tensor([m.min(), m.max(), m.sum(), m.square().sum()]))
    ess = statistics[2] ** 2 / statistics[3]
    assert 1 <= ess.item() < 4  # Kish's effective sample size: below N for unequal weights


def test_weight_statistics_of_the_plain_mean_give_the_full_sample_size():
    s = weight_statistics(torch.ones(8))
    assert s.tolist() == [1.0, 1.0, 8.0, 8.0] and (s[2] ** 2 / s[3]).item() == 8.0


# ---- hard selection --------------------------------------------------------------------------------------
class Scorer(torch.nn.Module):
    """A linear model with dropout and BatchNorm: the scoring pass must use eval mode and leave them as they were."""

    def __init__(self):
        super().__init__()
        self.norm, self.linear, self.drop = torch.nn.BatchNorm1d(5), torch.nn.Linear(5, 3), torch.nn.Dropout(0.5)

    def forward(self, x):
        return self.drop(self.linear(self.norm(x)))


def selection_context(model) -> SimpleNamespace:
    return SimpleNamespace(model=model, criterion=CrossEntropy(), autocast=contextlib.nullcontext, channels_last=False)


@pytest.mark.parametrize("candidates, fraction, kept", [(4, None, 4), (4, 0.5, 8), (2, 1.0, 16)])
def test_hard_selection_keeps_exactly_the_highest_loss_candidates(candidates, fraction, kept):
    torch.manual_seed(3)
    model = Scorer().train()
    images, labels, indices = torch.randn(16, 5), torch.randint(0, 3, (16,)), torch.arange(100, 116)
    selection = HardSelection(candidates, fraction)
    selection.setup(selection_context(model))
    running = model.norm.running_mean.clone()
    chosen_images, chosen_labels, chosen_indices = selection(images, labels, indices)
    model.eval()
    with torch.no_grad():
        losses = F.cross_entropy(model(images), labels, reduction="none").tolist()
    by_hand = sorted(range(16), key=lambda i: -losses[i])[:kept]
    assert sorted(chosen_indices.tolist()) == sorted(100 + i for i in by_hand)
    assert torch.equal(chosen_labels, labels[chosen_indices - 100])
    assert torch.equal(chosen_images, images[chosen_indices - 100])
    assert model.norm.running_mean.equal(running)  # scoring updated nothing


def test_hard_selections_candidates_score_every_sample_candidates_times_an_epoch():
    uniform = Uniform()
    uniform.setup(50, None, 3, 1)
    order = Passes(uniform, 4).order(0, epoch_generator(0, 0))
    assert len(order) == 200 and torch.bincount(order, minlength=50).tolist() == [4] * 50


def test_uniform_sampler_draws_the_order_divrun_always_drew():
    uniform = Uniform()
    uniform.setup(37, None, 3, 1)
    assert torch.equal(uniform.order(2, epoch_generator(5, 2)), epoch_order(37, True, epoch_generator(5, 2)))


# ---- long-tailed splits ----------------------------------------------------------------------------------
def test_long_tailed_profiles_are_cao_et_als_counts():
    assert profile_counts(5000, 10, 100) == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]  # CIFAR-10-LT
    assert profile_counts(500, 100, 100)[::33] == [500, 107, 23, 5]  # CIFAR-100-LT: floor(500 * 100^(-k/99))
    assert sum(profile_counts(500, 100, 100)) == 10847 and sum(profile_counts(5000, 10, 100)) == 12406  # the papers' sizes
    assert profile_counts(5000, 10, 10, "step") == [5000] * 5 + [500] * 5


def test_imbalanced_digits_keep_the_profile_and_an_untouched_test_split():
    from runner.data.datasets import digits

    balanced, cut = digits(), digits(imbalance={"ratio": 10, "seed": 1})
    counts = torch.bincount(cut.train.labels, minlength=10).tolist()
    n_max = int(torch.bincount(balanced.train.labels).min())
    assert counts == profile_counts(n_max, 10, 10) and counts[0] == n_max and counts[-1] == n_max // 10
    assert torch.equal(cut.val.labels, balanced.val.labels) and torch.equal(cut.val.images, balanced.val.images)
    assert cut.imbalance == 10.0
    again = digits(imbalance={"ratio": 10, "seed": 1})
    assert torch.equal(again.train.images, cut.train.images)  # the same images for the same seed
    assert not torch.equal(digits(imbalance={"ratio": 10, "seed": 2}).train.images, cut.train.images)


def test_the_holdout_is_drawn_stratified_from_the_long_tailed_training_set():
    from conftest import compose
    from runner.data.datasets import digits
    from runner.validate import problems_of

    samples = lambda split: Counter((img.numpy().tobytes(), int(y)) for img, y in zip(split.images, split.labels))  # noqa: E731
    cut, both = digits(imbalance={"ratio": 10}), digits(imbalance={"ratio": 10}, holdout=0.2)
    assert samples(both.train) + samples(both.holdout) == samples(cut.train)  # a partition of the long-tailed set
    tail = torch.bincount(cut.train.labels, minlength=10).double()
    held = torch.bincount(both.holdout.labels, minlength=10)
    assert (held - 0.2 * tail).abs().max() <= 1 and held[0] > 5 * held[-1]  # as long-tailed as training
    assert torch.equal(both.class_counts("test"), torch.bincount(both.train.labels, minlength=10))
    options = dict(val_fraction=0.2, split_seed=0, limit_train=None, imbalance={"ratio": 10}, holdout=0.2)
    assert digits.describe(**options).train_size == len(both.train)  # the pre-flight's size: cut, then held out
    size = sum(profile_counts(139, 10, 10))
    problems = list(problems_of(compose("dataset.imbalance.ratio=10", f"dataset.holdout={size}")))
    assert problems and problems[0].startswith(f"dataset.holdout={size}: pass a count below the {size} training")


def test_an_image_folder_is_cut_then_held_out_with_the_holdout_read_at_evaluation_transforms(tmp_path):
    from test_data_models import write_image_tree

    from runner.data.datasets import imagefolder

    def files(split):  # the image files of a (nested) Subset, and the dataset they are read through
        index, base = list(range(len(split))), split
        while isinstance(base, torch.utils.data.Subset):
            index, base = [base.indices[i] for i in index], base.dataset
        return [base.samples[i][0] for i in index], base

    root = write_image_tree(tmp_path, per_class=8)
    splits = imagefolder(str(root), image_size=16, imbalance={"ratio": 2}, holdout=6)
    (trained, train_view), (held, held_view) = files(splits.train), files(splits.holdout)
    assert splits.imbalance == 2.0 and len(trained) + len(held) == sum(profile_counts(8, 3, 2)) == 17
    assert not set(trained) & set(held)
    per_class = Counter(path.split("/")[-2] for path in trained + held)
    assert sorted(per_class.values(), reverse=True) == profile_counts(8, 3, 2)  # the cut, shared by both
    assert held_view is not train_view and "RandomResizedCrop" not in repr(held_view.transform)


def test_long_tailed_cifar10_at_ratio_100_has_the_exact_counts(shared_cifar):
    from runner.data.datasets import cifar

    splits = cifar(root=str(shared_cifar), imbalance={"ratio": 100})
    assert torch.bincount(splits.train.labels).tolist() == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert len(splits.val) == 10000


# ---- class-balanced sampling -----------------------------------------------------------------------------
LABELS = torch.tensor([0] * 900 + [1] * 90 + [2] * 10)


def drawn_classes(sampler, epochs: int = 4) -> torch.Tensor:
    sampler.setup(len(LABELS), LABELS, 3, epochs)
    return torch.cat([LABELS[sampler.order(e, epoch_generator(0, e))] for e in range(epochs)])


@pytest.mark.parametrize("temperature, rates", [
    (None, [1 / 3, 1 / 3, 1 / 3]),                                    # class-balanced
    (1.0, [0.9, 0.09, 0.01]),                                         # the natural rates
    (2.0, list(np.sqrt([900, 90, 10]) / np.sqrt([900, 90, 10]).sum())),  # q_k = sqrt(n_k) / sum_j sqrt(n_j)
])
def test_class_balanced_sampler_draws_classes_at_the_temperatures_rates(temperature, rates):
    classes = drawn_classes(ClassBalancedSampler(temperature))
    observed = torch.bincount(classes, minlength=3).numpy()
    assert observed.sum() == 4000  # an epoch stays as long as the training set
    assert stats.chisquare(observed, np.array(rates) * 4000).pvalue > 1e-3
    if temperature is None:  # and a wrong rate is told apart
        assert stats.chisquare(observed, np.array([0.9, 0.09, 0.01]) * 4000).pvalue < 1e-6


def test_class_balanced_sampler_draws_a_class_samples_alike_and_replays_its_epochs():
    sampler = ClassBalancedSampler(None)
    sampler.setup(len(LABELS), LABELS, 3, 1)
    orders = torch.cat([sampler.order(e, epoch_generator(0, e)) for e in range(30)])
    rare = torch.bincount(orders[orders >= 990] - 990, minlength=10).numpy()
    assert stats.chisquare(rare).pvalue > 1e-3
    assert torch.equal(sampler.order(7, epoch_generator(0, 7)), sampler.order(7, epoch_generator(0, 7)))


def test_cooldown_moves_the_exponent_linearly_and_upweights_back_to_the_start_mixture():
    cooldown = Cooldown(start=None, end=1.0, begin=0.5, finish=1.0)
    cooldown.setup(len(LABELS), LABELS, 3, 5)  # epochs at u = 0, .25, .5, .75, 1
    assert [cooldown.power(e) for e in range(5)] == [0.0, 0.0, 0.0, 0.5, 1.0]
    torch.testing.assert_close(cooldown.class_multipliers(0), torch.ones(3))
    # last epoch: drawn at the natural rates (.9, .09, .01), weighted to the class-balanced 1/3 each
    torch.testing.assert_close(cooldown.class_multipliers(4), torch.tensor([1 / 2.7, 1 / 0.27, 1 / 0.03]))
    correction = SamplerCorrection(cooldown, 5, torch.device("cpu"))
    correction.setup(context(epoch=4))
    torch.testing.assert_close(correction.multipliers(torch.ones(2), torch.tensor([2, 0])),
                               torch.tensor([1 / 0.03, 1 / 2.7]))
    assert Cooldown(upweight=False).class_multipliers(3) is None


# ---- per-class accuracy ----------------------------------------------------------------------------------
def test_balanced_and_shot_accuracies_match_scikit_learn_and_the_hand_count():
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2, 2, 2])
    predicted = torch.tensor([0, 0, 1, 0, 1, 0, 2, 2, 0, 0])
    accuracy = ClassAccuracy(3, torch.device("cpu"))
    accuracy.add(labels[:5], (predicted == labels)[:5])
    accuracy.add(labels[5:], (predicted == labels)[5:])
    metrics = accuracy.metrics(torch.tensor([500, 50, 5]))  # many, medium, few
    assert metrics["balanced_acc1"] == pytest.approx(balanced_accuracy_score(labels, predicted))
    assert [metrics[f"class_acc1/{k}"] for k in range(3)] == [0.75, 0.5, 0.5]
    assert (metrics["many_acc1"], metrics["medium_acc1"], metrics["few_acc1"]) == (0.75, 0.5, 0.5)
    assert set(accuracy.metrics()) == {"balanced_acc1"}  # balanced runs: the balanced accuracy only


# ---- a run ---------------------------------------------------------------------------------------------
def test_a_long_tailed_run_weighs_selects_and_reports_per_class(tmp_path):
    """digits at ratio 10 with cooldown sampling, KL-DRO weights and hard selection: weight statistics at the
    logging interval, per-class and shot accuracies in each evaluation and the summary."""
    summary, run = train(tmp_path, "dataset.imbalance.ratio=10", "sampler=cooldown", "weighting=kl_dro",
                         "selection=hard", "selection.candidates=2", "trainer.batch_size=32", "trainer.log_every=5")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in records if "train/weight_ess" in r]
    assert train_rows and all(0 < r["train/weight_min"] <= r["train/weight_max"] for r in train_rows)
    assert all(1 <= r["train/weight_ess"] <= 32 for r in train_rows)
    evaluation = [r for r in records if "val/balanced_acc1" in r][-1]
    assert {"val/class_acc1/0", "val/many_acc1"} <= set(evaluation)
    assert summary["final_val_balanced_acc1"] == pytest.approx(evaluation["val/balanced_acc1"])



def test_two_gloo_processes_weigh_like_one_process_with_the_global_batch(tmp_path):
    """kl_dro's softmax runs over the all-gathered losses: 2 ranks of 32 train as one process of 64."""
    common = (*QUICK, "model=mlp", "weighting=kl_dro", "weighting.temperature=0.5", "trainer.max_steps=12",
              "trainer.log_every=4", "seed=3")
    (tmp_path / "one").mkdir(), (tmp_path / "two").mkdir()
    divrun(*common, "trainer.devices=1", "trainer.batch_size=64", cwd=tmp_path / "one")
    divrun(*common, "trainer.devices=2", "trainer.batch_size=32", cwd=tmp_path / "two")
    [one], [two] = run_folders(tmp_path / "one"), run_folders(tmp_path / "two")
    weights = [torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"] for run in (one, two)]
    for key in weights[0]:
        torch.testing.assert_close(weights[1][key], weights[0][key], rtol=1e-5, atol=1e-6)
    logged = [[json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] for run in (one, two)]
    ess = [[r["train/weight_ess"] for r in rows if "train/weight_ess" in r] for rows in logged]
    assert ess[0] and ess[1] == pytest.approx(ess[0], rel=1e-4)


# ---- beside accumulation, mixup/cutmix and the adaptive batch ----------------------------------------------
def test_loss_based_weights_normalise_over_each_micro_batch():
    """With 3 micro-batches the step's gradient is sum_j share_j * mean_i m_ij l_ij, each micro-batch's m from
    its own losses (the losses of later micro-batches do not exist when its backward runs)."""
    torch.manual_seed(0)
    model, by_hand = torch.nn.Linear(5, 3), torch.nn.Linear(5, 3)
    by_hand.load_state_dict(model.state_dict())
    images, labels = torch.randn(12, 5), torch.randint(0, 3, (12,))
    capabilities = SimpleNamespace(second_order=False, needs_closure=False)
    driver = SimpleNamespace(scaler=None, capabilities=capabilities, params=list(model.parameters()))
    method = SimpleNamespace(loss=lambda x, y, i, logits: F.cross_entropy(logits, y, reduction="none"))
    weighting = KLDRO(0.5)
    weighting.setup(context())
    step = Step(model, method, [driver], contextlib.nullcontext, None, weightings=[weighting])
    _, _, statistics = step.forward_backward(split(images, labels, torch.arange(12), 3))
    total, multipliers = 0.0, []
    for x, y in zip(images.split(4), labels.split(4)):
        losses = F.cross_entropy(by_hand(x), y, reduction="none")
        m = torch.tensor([4 * w for w in softmax_by_hand((losses.detach() / 0.5).tolist(), 1.0)])
        total, multipliers = total + (m * losses).mean() * 4 / 12, multipliers + m.tolist()
    total.backward()
    for p, q in zip(model.parameters(), by_hand.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7)
    m = torch.tensor(multipliers)
    torch.testing.assert_close(statistics, torch.stack([m.min(), m.max(), m.sum(), m.square().sum()]))


def test_class_weights_and_sampling_under_accumulation_end_at_the_large_batch_runs_weights(tmp_path):
    """Class multipliers do not depend on the batch: weighting=class_balanced with sampler=class_balanced at
    trainer.batch_size=32 x trainer.accumulate=4 trains as batch 128 (mlp: no BatchNorm)."""
    common = ("model=mlp", "dataset.imbalance.ratio=5", "weighting=class_balanced", "sampler=class_balanced",
              "sampler.temperature=2", "trainer.deterministic=true", "trainer.log_every=5")
    (tmp_path / "large").mkdir(), (tmp_path / "micro").mkdir()
    large, large_dir = train(tmp_path / "large", *common, "trainer.batch_size=128")
    micro, micro_dir = train(tmp_path / "micro", *common, "trainer.batch_size=32", "trainer.accumulate=4")
    assert large["steps"] == micro["steps"] > 0
    weights = [torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"] for run in (large_dir, micro_dir)]
    for key in weights[0]:
        torch.testing.assert_close(weights[1][key], weights[0][key], rtol=1e-5, atol=1e-6, msg=key)
    ess = [[r["train/weight_ess"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if "train/weight_ess" in r] for run in (large_dir, micro_dir)]
    assert ess[0] and ess[1] == pytest.approx(ess[0], rel=1e-5)  # the step's statistics, not a micro-batch's


def test_hard_selection_scores_in_chunks_alike_and_trains_accumulated_mixed_batches(tmp_path):
    """Scoring in the step's micro-batches picks what one pass picks (eval mode); a run selecting from
    mixup/cutmix batches with accumulation and class weights trains on batch x accumulate samples per step."""
    torch.manual_seed(3)
    selection = HardSelection(4)
    selection.setup(selection_context(Scorer().train()))
    images, labels, indices = torch.randn(32, 5), torch.randint(0, 3, (32,)), torch.arange(32)
    assert torch.equal(selection(images, labels, indices, 3)[2], selection(images, labels, indices)[2])
    summary, run = train(tmp_path, "selection=hard", "selection.candidates=2", "weighting=class_balanced",
                         "dataset.mixup=0.8", "dataset.cutmix=1.0", "trainer.batch_size=16", "trainer.accumulate=2",
                         "trainer.log_every=5")
    assert summary["status"] == "finished" and summary["steps"] == 2 * (1437 // 32)
    rows = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "train/batch_size" in r]
    assert rows and all(r["train/batch_size"] == 32 and r["train/weight_max"] > 0 for r in rows)


def test_a_sampler_under_the_adaptive_batch_spends_the_sample_budget(tmp_path):
    summary, run = train(tmp_path, "batch=adaptive", "batch.eta=0.1", "batch.max=512", "sampler=class_balanced",
                         "dataset.imbalance.ratio=10", "trainer.batch_size=16", "trainer.log_every=5")
    from hydra.utils import instantiate

    long_tailed = len(instantiate(compose(*QUICK, "dataset.imbalance.ratio=10").dataset).train)
    assert summary["status"] == "finished" and summary["samples"] >= 2 * long_tailed  # trainer.epochs=2


def test_hard_selection_with_the_adaptive_batch_is_a_one_line_error():
    from runner.validate import problems_of

    assert "selection=hard with batch=adaptive" in " ".join(problems_of(compose(
        "trainer.device=cpu", "selection=hard", "batch=adaptive")))


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "conf" / "loss").glob("*.yaml")))
def test_every_loss_gives_per_sample_values_whose_mean_is_its_batch_loss(name):
    """The weighting point reads loss(logits, y, reduction="none"): one value per sample, averaging to the loss."""
    from hydra.utils import instantiate

    loss = instantiate(compose(f"loss={name}", "loss.smoothing=0.1").loss)
    torch.manual_seed(4)
    logits, labels = torch.randn(6, 5) * 3, torch.tensor([0, 4, 1, 1, 3, 2])
    for target in (labels, F.softmax(torch.randn(6, 5), -1)):
        per_sample = loss(logits, target, reduction="none")
        assert per_sample.shape == (6,)
        torch.testing.assert_close(per_sample.mean(), loss(logits, target), rtol=1e-5, atol=1e-6)
