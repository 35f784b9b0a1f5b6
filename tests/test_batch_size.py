"""AdAdaGrad's tests: the group estimators equal the official code's per-sample formulas, are unbiased for unequal
groups, and grow the batch of AdaGrad-Norm on a logistic regression exactly where the norm test's condition fails."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from runner.batch_size import AdaptiveBatch, GroupGradients, accumulation_for, split_sizes
from runner.errors import ConfigError
from runner.optim.adagrad_norm import AdaGradNorm


def accumulate(params, per_group_grads: list[list[torch.Tensor]], sizes: list[int], keep: bool) -> GroupGradients:
    """Feed group gradients through p.grad as gradient accumulation does (each scaled by its share)."""
    collector = GroupGradients(params, keep_groups=keep)
    total = sum(sizes)
    for p in params:
        p.grad = None
    for grads, size in zip(per_group_grads, sizes):
        for p, g in zip(params, grads):
            p.grad = g * (size / total) if p.grad is None else p.grad + g * (size / total)
        collector.add(size, total)
    return collector


def official_per_sample(samples: torch.Tensor, eta: float, theta: float, nu: float) -> dict:
    """The official code's formulas (tests.py) on per-sample gradients (b, d), before its max/ceil."""
    gbar = samples.mean(0)
    variance = samples.var(0, correction=1).sum()
    inner = samples @ gbar
    ortho = samples - torch.outer(inner, gbar) / gbar.square().sum()
    return {"norm": variance / (eta ** 2 * gbar.square().sum()),
            "ip": inner.var(correction=1) / (theta ** 2 * gbar.square().sum() ** 2),
            "orth": ortho.var(0, correction=1).sum() / (nu ** 2 * gbar.square().sum())}


@pytest.mark.parametrize("test", ["norm", "ip", "ip+orth"])
def test_single_sample_groups_reproduce_the_official_per_sample_tests(test):
    torch.manual_seed(0)
    b, shapes = 24, [(3, 4), (5,)]
    samples = torch.randn(b, 17, dtype=torch.float64) * 0.3 + 0.2  # per-sample gradients, two tensors flattened
    params = [torch.zeros(s, dtype=torch.float64, requires_grad=True) for s in shapes]
    per_group = [[row[:12].view(3, 4), row[12:]] for row in samples]
    collector = accumulate(params, per_group, [1] * b, keep=test != "norm")
    gbar = [p.grad for p in params]
    torch.testing.assert_close(torch.cat([g.flatten() for g in gbar]), samples.mean(0))
    batch = AdaptiveBatch(test=test, eta=0.1, theta=0.2, nu=0.3, max=10 ** 9)
    got = batch.proposal(collector.totals(gbar), sum(g.square().sum() for g in gbar), batch=1)
    reference = official_per_sample(samples, 0.1, 0.2, 0.3)
    want = {"norm": reference["norm"], "ip": reference["ip"],
            "ip+orth": max(reference["ip"], reference["orth"])}[test]
    assert got.item() == math.ceil(want.item() - 1e-9), (got.item(), want.item())


def test_unequal_groups_estimate_the_per_sample_variance_without_bias():
    """Per-sample gradients ~ N(mu, diag(s^2)): E[estimate of E||g_i - mu||^2] = sum(s^2), groups of 1..7."""
    torch.manual_seed(1)
    d, sizes = 6, [1, 3, 7, 2, 5]
    mu, scale = torch.randn(d, dtype=torch.float64), torch.linspace(0.5, 2.0, d, dtype=torch.float64)
    param = [torch.zeros(d, dtype=torch.float64, requires_grad=True)]
    estimates = []
    for _ in range(3000):
        groups = [mu + scale * torch.randn(m, d, dtype=torch.float64) for m in sizes]
        collector = accumulate(param, [[g.mean(0)] for g in groups], sizes, keep=False)
        groups_n, samples, weighted_sq, _ = collector.totals([param[0].grad]).unbind()
        estimates.append((weighted_sq - samples * param[0].grad.square().sum()) / (groups_n - 1))
    mean, stderr = torch.stack(estimates).mean(), torch.stack(estimates).std() / math.sqrt(len(estimates))
    assert abs(mean - scale.square().sum()) < 4 * stderr, (mean.item(), scale.square().sum().item())


def logistic_problem(n: int = 4000, d: int = 5):
    gen = torch.Generator().manual_seed(2)
    features = torch.randn(n, d, generator=gen, dtype=torch.float64)
    truth = torch.randn(d, generator=gen, dtype=torch.float64)
    labels = (torch.rand(n, generator=gen, dtype=torch.float64) < torch.sigmoid(features @ truth)).double()
    return features, labels  # not separable: the minimiser has zero gradient, the per-sample variance stays > 0


def condition(weights: torch.Tensor, features, labels, eta: float) -> float:
    """The norm test's exact batch size at these weights: E||g_i - grad F||^2 / (eta^2 ||grad F||^2)."""
    per_sample = (torch.sigmoid(features @ weights) - labels)[:, None] * features
    full = per_sample.mean(0)
    return ((per_sample - full).square().sum(1).mean() / (eta ** 2 * full.square().sum())).item()


def run_adaptive(eta: float, steps: int, start_batch: int = 8, groups: int = 8):
    features, labels = logistic_problem()
    weights = torch.zeros(features.shape[1], dtype=torch.float64, requires_grad=True)
    optimizer = AdaGradNorm([weights], lr=0.5)
    adaptive = AdaptiveBatch(test="norm", eta=eta, max=len(labels), groups=groups)
    gen, batch, history = torch.Generator().manual_seed(3), start_batch, []
    for _ in range(steps):
        index = torch.randperm(len(labels), generator=gen)[:batch]
        sizes = split_sizes(batch, max(groups, 1))
        collector = GroupGradients([weights], keep_groups=False)
        for part, size in zip(index.split(sizes), sizes):
            loss = F.binary_cross_entropy_with_logits(features[part] @ weights, labels[part]) * (size / batch)
            loss.backward()
            collector.add(size, batch)
        exact = condition(weights.detach(), features, labels, eta)
        proposal = adaptive.proposal(collector.totals([weights.grad]), weights.grad.square().sum(), batch)
        history.append((batch, exact, proposal.item()))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        batch = int(proposal.item())
    return history


def test_the_norm_test_grows_the_batch_where_its_condition_fails_on_logistic_regression():
    history = run_adaptive(eta=0.5, steps=45)
    batches = [b for b, _, _ in history]
    assert batches == sorted(batches) and batches[-1] == 4000, batches[::5]  # grown from 8 to the whole data set
    # every growth happened where the exact condition said the batch was too small
    for batch, exact, proposal in history:
        if proposal > batch:
            assert exact > batch / 3, (batch, exact, proposal)
    # and where the batch is well below the exact need, the test grows it (over any 5 consecutive steps)
    for i in range(len(history) - 5):
        batch, exact, _ = history[i]
        if exact > 4 * batch and batch < 4000:
            assert history[i + 5][0] > batch, (i, history[i:i + 6])
    # the estimate tracks the exact requirement: median ratio within a factor 2 while the batch grows
    ratios = sorted(p / e for b, e, p in history if p > b and e > b)
    assert 0.5 < ratios[len(ratios) // 2] < 2.0, ratios[len(ratios) // 2]


def test_a_tolerant_test_leaves_the_batch_alone():
    history = run_adaptive(eta=50.0, steps=40)
    assert all(batch == 8 for batch, _, _ in history)
    assert all(exact < 8 for _, exact, _ in history)  # the condition holds throughout, so nothing should grow


def test_accumulation_realises_at_least_the_batch_within_the_micro_batch_limit():
    assert accumulation_for(4096, 1, 128) == (32, 4096)
    assert accumulation_for(1000, 2, 128) == (4, 500)      # 2 ranks x 4 micro-batches of 125
    assert accumulation_for(1001, 2, 128) == (4, 504)      # rounded up to a multiple of the micro-batches
    assert accumulation_for(100, 1, 128) == (1, 100)
    assert split_sizes(10, 4) == [3, 3, 2, 2] and split_sizes(3, 8) == [1, 1, 1]


def test_bad_settings_are_one_line_errors():
    with pytest.raises(ConfigError, match="batch.test=foo"):
        AdaptiveBatch(test="foo")
    with pytest.raises(ConfigError, match="two groups"):
        AdaptiveBatch(groups=1)


# ---- batch=adaptive in a run ---------------------------------------------------------------------------------
def test_an_adaptive_run_grows_its_batch_at_logging_boundaries_and_follows_its_schedule_by_samples(tmp_path):
    import json

    from conftest import train

    summary, run_dir = train(tmp_path, "batch=adaptive", "batch.test=norm", "batch.eta=0.1", "batch.max=4096",
                             "trainer.batch_size=32", "trainer.log_every=2", "trainer.epochs=2")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in records if "train/batch_size" in r]
    batches = [r["train/batch_size"] for r in trained]
    assert batches == sorted(batches) and batches[0] == 32 and batches[-1] > 32, batches
    assert summary["samples"] >= 2 * 1437 and summary["final_batch_size"] == batches[-1] <= 1437
    total = 2 * 1437
    for r in trained:  # the last update's lr: cosine at the samples seen before it, not at its step
        before = r["train/samples"] - r["train/batch_size"]
        assert r["train/lr"] == pytest.approx(0.1 * (1 + math.cos(math.pi * before / total)) / 2, rel=1e-9)
    assert (run_dir / "lr_schedule.csv").read_text().startswith("samples,factor,lr\n0,1,0.1\n")


@pytest.mark.parametrize("overrides, message", [
    (["trainer.max_steps=100"], "trainer.max_steps=100 with batch=adaptive: a growing batch changes the steps a "
                                "budget takes; set trainer.epochs (the budget in samples)"),
    (["schedule.warmup=500"], "schedule.warmup=500 counts optimizer steps, which a growing batch changes; with "
                              "batch=adaptive give a fraction of the run (e.g. schedule.warmup=0.05)"),
    (["schedule=refined", "schedule.source=/nowhere"], "schedule=refined with batch=adaptive: it replays another "
                                                       "run's per-step gradient norms, which a growing batch cannot "
                                                       "follow; pick another schedule"),
])
def test_what_an_adaptive_batch_cannot_follow_is_a_one_line_error(overrides, message):
    from conftest import compose
    from runner.validate import problems_of

    assert message in list(problems_of(compose("trainer.device=cpu", "batch=adaptive", *overrides)))
