"""What the run does for the optimizers that need it: schedule-free's train/eval switch with BatchNorm
statistics recomputed at the evaluated weights (runner/build.py), its warning under a decaying schedule (the
pre-flight), and an optimizer's own metrics (Prodigy's d) in the records. (Resume exactness for both:
tests/test_resume.py.)"""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from runner.build import Run
from runner.context import Progress
from runner.optim import capabilities
from runner.optim.schedulefree import ScheduleFreeAdamW
from runner.step import OptimizerDriver, optimizer_metrics
from runner.validate import problems_of, validate
from tests.conftest import compose, train


def test_schedulefree_selects_a_constant_schedule_and_warns_under_a_decaying_one(tmp_path, capsys):
    assert compose("optimizer=schedulefree_adamw").schedule._target_ == "runner.schedules.Constant"
    assert compose("optimizer=schedulefree_sgd", "schedule=cosine").schedule._target_ == "runner.schedules.Cosine"
    summary, _ = train(tmp_path, "optimizer=schedulefree_sgd", "schedule=cosine", "trainer.epochs=1")
    assert summary["status"] == "finished"
    captured = capsys.readouterr()
    printed = " ".join((captured.out + captured.err).split())  # the console wraps long lines
    assert printed.count("is schedule-free") == 1 and "pass schedule=constant" in printed


def test_the_preflight_warns_once_for_a_decaying_schedule_and_never_for_a_constant_one():
    assert validate(compose("optimizer=schedulefree_adamw")) == []
    assert validate(compose("optimizer=adamw", "schedule=cosine")) == []
    assert validate(compose("optimizer=schedulefree_adamw", "schedule=cosine")) == [
        "ScheduleFreeAdamW is schedule-free and needs no lr schedule; Cosine decays its lr on top (the reference "
        "allows it); pass schedule=constant for the method as published"]


@pytest.mark.parametrize("overrides, expected", [
    (("optimizer=muon", "optimizer.ns_dtype=fp8"),
     "optimizer.ns_dtype=fp8: expected one of bfloat16, float32, float64 or null (Muon's ns_dtype); "
     "pass e.g. optimizer.ns_dtype=bfloat16"),
    (("optimizer=lanton", "optimizer.ns_dtype=half"),
     "optimizer.ns_dtype=half: expected one of bfloat16, float32, float64 or null (LANTON's ns_dtype); "
     "pass e.g. optimizer.ns_dtype=bfloat16"),
    (("optimizer=mars", "optimizer.mars_type=mars-sgd"),
     "optimizer.mars_type=mars-sgd: expected one of mars-adamw, mars-lion (MARS's mars_type); "
     "pass e.g. optimizer.mars_type=mars-adamw"),
    (("optimizer=lookahead", "optimizer.base=schedulefree_sgd"),
     "optimizer=Lookahead cannot wrap schedulefree_sgd: it trains at other weights than it is evaluated at "
     "(schedule-free's y and x), which Lookahead would mix; run optimizer=schedulefree_sgd on its own"),
])
def test_bad_values_of_the_new_optimizers_are_one_line_each_before_anything_runs(overrides, expected):
    assert list(problems_of(compose("trainer.device=cpu", *overrides))) == [expected]


def test_evaluated_weights_switch_to_x_and_recompute_batchnorm_there():
    """Inside the block the parameters are x and BatchNorm's running statistics are the average over the
    optimizer's bn_batches training batches at x; after it, y is back and the statistics stay."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    optimizer = ScheduleFreeAdamW(model.parameters(), lr=0.1, bn_batches=3)
    batches = [(torch.randn(8, 3), None, None) for _ in range(5)]
    for images, _, _ in batches:
        model(images).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    y = [p.detach().clone() for p in model.parameters()]
    loader = SimpleNamespace(epoch=lambda epoch: iter(batches))
    driver = OptimizerDriver(optimizer, model, [1.0], None, None, capabilities(optimizer))
    stub = SimpleNamespace(optimizer=optimizer, train_loader=loader, progress=Progress(epoch=1), model=model,
                           driver=driver, step=SimpleNamespace(drivers=[driver]))
    with Run.evaluation_weights(stub):
        x = [p.detach().clone() for p in model.parameters()]
        features = torch.cat([model[0](images) for images, _, _ in batches[:3]]).detach()
        assert torch.allclose(model[1].running_mean, features.mean(0), atol=1e-6)
        per_batch_var = torch.stack([model[0](b).detach().var(0) for b, _, _ in batches[:3]]).mean(0)
        assert torch.allclose(model[1].running_var, per_batch_var, atol=1e-6)  # cumulative average of batch stats
    assert all(not torch.allclose(a, b) for a, b in zip(x, y))
    assert all(torch.allclose(p, b, atol=1e-6) for p, b in zip(model.parameters(), y))


def test_prodigy_records_its_estimate(tmp_path):
    summary, run_dir = train(tmp_path, "optimizer=prodigy", "trainer.epochs=1", "trainer.batch_size=32",
                             "trainer.log_every=10")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    estimates = [r["optimizer/d"] for r in records if "train/loss" in r]
    assert len(estimates) == len([r for r in records if "train/loss" in r]) >= 3
    assert estimates == sorted(estimates) and estimates[-1] > 1e-6  # d only grows (growth_rate inf)


def test_optimizers_without_metrics_record_none():
    assert optimizer_metrics(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)) == {}
