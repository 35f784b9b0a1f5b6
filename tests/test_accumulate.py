"""Gradient accumulation: K micro-batches give the large batch's gradient; DDP syncs only on the last."""
from __future__ import annotations

import contextlib

import pytest

import torch
import torch.nn.functional as F

from runner.accumulate import run_micro_batches, split


def net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(144, 10))


def test_accumulated_gradient_equals_the_large_batch_gradient_for_unequal_micro_batches():
    gen = torch.Generator().manual_seed(1)
    images, labels = torch.randn(30, 1, 8, 8, generator=gen), torch.randint(0, 10, (30,), generator=gen)
    whole, parts = net(), net()
    F.cross_entropy(whole(images), labels).backward()
    loss_of = lambda micro: (F.cross_entropy(out := parts(micro.images), micro.targets), out)  # noqa: E731
    micro = split(images, labels, torch.arange(30), 4)  # 8, 8, 7, 7 samples
    assert [len(m.indices) for m in micro] == [8, 8, 7, 7]
    loss, logits = run_micro_batches(micro, loss_of, lambda l: l.backward(), contextlib.nullcontext)
    for p, q in zip(whole.parameters(), parts.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(loss, F.cross_entropy(whole(images), labels).detach())
    assert torch.cat(logits).shape == (30, 10)


def test_all_but_the_last_micro_batch_run_without_ddp_sync():
    entered = []

    @contextlib.contextmanager
    def no_sync():
        entered.append(True)
        yield

    seen = []
    loss_of = lambda micro: (micro.images.sum() * 0 + 1.0, micro.images)  # noqa: E731
    micro = split(torch.zeros(12, 1), torch.zeros(12), torch.arange(12), 3)
    run_micro_batches(micro, loss_of, lambda l: seen.append(len(entered)), no_sync)
    assert seen == [1, 2, 2]  # the third backward ran outside no_sync: DDP reduces once, there
    entered.clear()
    run_micro_batches(micro, loss_of, lambda l: None, no_sync, sync="manual")
    assert len(entered) == 3


def test_a_run_accumulating_4_micro_batches_ends_with_the_large_batch_runs_weights(tmp_path):
    """divrun trainer.batch_size=32 trainer.accumulate=4 vs trainer.batch_size=128 (mlp: no BatchNorm, whose
    statistics would come from each micro-batch): the same data order, updates and weights up to float order."""
    from conftest import train

    common = ("model=mlp", "trainer.deterministic=true", "trainer.log_every=5")
    (tmp_path / "large").mkdir(), (tmp_path / "micro").mkdir()
    large, large_dir = train(tmp_path / "large", *common, "trainer.batch_size=128")
    micro, micro_dir = train(tmp_path / "micro", *common, "trainer.batch_size=32", "trainer.accumulate=4")
    assert large["steps"] == micro["steps"] == 2 * (1437 // 128)
    weights = [torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"] for run in (large_dir, micro_dir)]
    for key in weights[0]:
        torch.testing.assert_close(weights[1][key], weights[0][key], rtol=1e-5, atol=1e-6, msg=key)
    assert micro["final_train_loss"] == pytest.approx(large["final_train_loss"], rel=1e-5)
    assert micro["final_val_acc1"] == large["final_val_acc1"]


def test_accumulate_below_one_is_a_one_line_error():
    from conftest import compose
    from runner.validate import problems_of

    assert list(problems_of(compose("trainer.device=cpu", "trainer.accumulate=0"))) == [
        "trainer.accumulate=0: expected a positive integer (micro-batches per step); pass e.g. trainer.accumulate=4"]
