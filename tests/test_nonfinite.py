"""trainer.on_nonfinite: a NaN at step k stops the run as diverged (naming step, lr and tensor, keeping the
last good checkpoint) or, with skip, drops exactly that step."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from conftest import QUICK, compose, read_summary, train
from runner.checkpoint import load
from runner.nonfinite import Diverged, SkipNonFinite
from runner.optim import Capabilities
from runner.step import OptimizerDriver

NAN_MODEL = ["model._target_=faulty.NaNAt", "optimizer=sgd", "schedule=constant", "trainer.batch_size=64",
             "trainer.max_steps=20", "trainer.checkpoint_every_steps=5"]


@pytest.mark.parametrize("log_every", [5, 20], ids=["found-at-a-log-record", "found-before-a-checkpoint"])
def test_a_nan_loss_at_step_k_stops_the_run_as_diverged(tmp_path, log_every):
    with pytest.raises(Diverged, match=r"non-finite loss at step 7 \(lr 0\.1\); checkpoints up to step 5 are kept"):
        train(tmp_path, *NAN_MODEL, "+model.nan_at=7", f"trainer.log_every={log_every}")
    run_dir = tmp_path / "run"
    summary = read_summary(run_dir)
    assert (summary["status"], summary["diverged_at_step"], summary["diverged_tensor"]) == ("diverged", 7, "loss")
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["last.pt", "step_000000005.pt"]
    weights = load(run_dir / "checkpoints" / "last.pt")["model"]
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_a_nan_gradient_names_the_parameter(tmp_path):
    with pytest.raises(Diverged, match=r"non-finite gradient of trap at step 4 \(lr 0\.1\)"):
        train(tmp_path, *NAN_MODEL, "+model.nan_at=4", "+model.grad_only=true", "trainer.log_every=5")
    assert read_summary(tmp_path / "run")["diverged_tensor"] == "gradient of trap"


def test_skip_drops_the_step_counts_it_and_the_run_finishes(tmp_path):
    summary, run_dir = train(tmp_path, *NAN_MODEL, "+model.nan_at=3", "trainer.on_nonfinite=skip",
                             "trainer.max_steps=8", "trainer.log_every=4")
    assert summary["status"] == "finished" and summary["skipped_steps"] == 1
    assert math.isfinite(summary["final_train_loss"]) and math.isfinite(summary["final_val_loss"])
    weights = load(run_dir / "checkpoints" / "last.pt")["model"]
    assert all(torch.isfinite(w).all() for w in weights.values())


def make_model_and_optimizer(kind: str):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    optimizer = {"sgd-foreach": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-2, foreach=True),
                 "sgd-fused": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-2, fused=True),
                 "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1)}[kind](model.parameters())
    return model, optimizer


def run_step(model, optimizer, inputs, guard=None):
    if guard:
        guard.snapshot()
    loss = nn.functional.cross_entropy(model(inputs), torch.arange(len(inputs)) % 3)
    loss.backward()
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    ok = torch.isfinite(loss.detach()) & torch.isfinite(norm)
    guard.step(ok, optimizer.step) if guard else optimizer.step()
    optimizer.zero_grad(set_to_none=True)


@pytest.mark.parametrize("kind", ["sgd-foreach", "sgd-fused", "adamw"])
def test_a_skipped_step_changes_nothing_and_the_others_match_plain_steps(kind):
    """Guarded: [NaN, a, NaN, b]; plain twin: [a, b]. Weights, BatchNorm statistics and optimizer state must
    end bit-identical (the first NaN hits the host-decided first step, the second the device-side select)."""
    model, optimizer = make_model_and_optimizer(kind)
    twin, twin_optimizer = make_model_and_optimizer(kind)
    guard = SkipNonFinite([OptimizerDriver(optimizer, model, [0.1], None, None, Capabilities(False))], scaled=False)
    batch_a, batch_b = torch.randn(6, 4), torch.randn(6, 4)
    poisoned = torch.full((6, 4), float("nan"))
    for inputs in (poisoned, batch_a, poisoned, batch_b):
        run_step(model, optimizer, inputs, guard)
    for inputs in (batch_a, batch_b):
        run_step(twin, twin_optimizer, inputs)
    for (name, got), want in zip(model.state_dict().items(), twin.state_dict().values()):
        assert torch.equal(got, want), name
    for got, want in zip(optimizer.state_dict()["state"].values(), twin_optimizer.state_dict()["state"].values()):
        assert all(torch.equal(got[key], want[key]) for key in want)


def test_without_the_guard_the_same_nan_would_poison_the_model():
    """The guard test above can fail: an unguarded NaN step leaves NaN weights and statistics."""
    model, optimizer = make_model_and_optimizer("sgd-foreach")
    run_step(model, optimizer, torch.full((6, 4), float("nan")))
    assert not all(torch.isfinite(t).all() for t in model.state_dict().values() if t.is_floating_point())


# ---- every trained module: the student and a method's companions -------------------------------------------
def distilled_run(tmp_path, method: str, on_nonfinite: str):
    from runner.build import build_run
    from runner.models.small import SmallCNN
    from runner.validate import validate

    teacher = tmp_path / "teacher.pt"
    torch.save({"model": SmallCNN(1, 10).state_dict()}, teacher)
    offline = [f"distill.teacher={teacher}", "distill.teacher_model=small_cnn"] if method in ("nd", "dhkd") else []
    # a student narrower than the teacher: nd trains its projector
    cfg = compose(*QUICK, f"distill={method}", *offline, "model.width=8", "distill.teacher_model=small_cnn",
                  "trainer.batch_size=64", f"trainer.on_nonfinite={on_nonfinite}", "optimizer.momentum=0.9")
    validate(cfg)
    return build_run(cfg)


def trained_state(run) -> list:
    """Every trained module's parameters and buffers, and every optimizer's state, copied."""
    return [(copy.deepcopy(driver.module.state_dict()), copy.deepcopy(driver.optimizer.state_dict()))
            for driver in run.step.drivers]


def assert_same(before, after) -> None:
    for (module_before, optimizer_before), (module_after, optimizer_after) in zip(before, after):
        for name, tensor in module_before.items():
            assert torch.equal(tensor, module_after[name]), name
        for index, state in optimizer_before["state"].items():
            for key, value in state.items():
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(optimizer_after["state"][index][key])), key


@pytest.mark.parametrize("method", ["dml", "bdkd", "nd", "dhkd"])
def test_a_skipped_nan_step_leaves_every_trained_module_and_optimizer_unchanged(tmp_path, method):
    run = distilled_run(tmp_path, method, "skip")
    assert len(run.step.drivers) == 2  # the student and the method's companion (peer, projector, head)
    batches = list(run.train_loader.epoch(0))[:3]
    for step, (images, labels, indices) in enumerate(batches[:2]):  # past the first, host-decided step
        run.step(images, labels, indices, step)
    before = trained_state(run)
    images, labels, indices = batches[2]
    row = run.step(images * float("nan"), labels, indices, 2)
    assert not torch.isfinite(row[0])  # the step did see a NaN loss
    assert_same(before, trained_state(run))


def test_without_the_guard_a_nan_step_poisons_the_companion(tmp_path):
    """The test above can fail: the same step unguarded changes the DML peer (its weights become NaN)."""
    run = distilled_run(tmp_path, "dml", "stop")
    images, labels, indices = next(iter(run.train_loader.epoch(0)))
    run.step(images * float("nan"), labels, indices, 0)
    peer = run.step.drivers[1].module
    assert not all(torch.isfinite(p).all() for p in peer.parameters())
