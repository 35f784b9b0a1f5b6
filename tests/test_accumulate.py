"""Gradient accumulation: K micro-batches give the large batch's gradient; DDP syncs only on the last."""
from __future__ import annotations

import contextlib

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
