"""Forward + backward time of each loss (its conf/loss default) on a 256 x 1000 batch of class-index
targets, as a ratio to torch.nn.functional.cross_entropy timed alternately in the same run (best of repeats).
Sinkhorn runs in form=batch: the per-sample form needs N x K x K memory (256 x 1000 x 1000 here)."""
from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F

N, K = 256, 1000


def paired_times(loss_fn, logits, target, repeats: int) -> tuple[float, float]:
    """Best-of-repeats milliseconds (the least disturbed run, as timeit advises) of one forward + backward
    of F.cross_entropy and of `loss_fn`, timed in alternation so that load on a shared machine hits both
    alike (CUDA synchronised around each)."""
    sync = torch.cuda.synchronize if logits.is_cuda else (lambda: None)

    def once(fn) -> float:
        logits.grad = None
        sync()
        start = time.perf_counter()
        fn(logits, target).backward()
        sync()
        return (time.perf_counter() - start) * 1e3

    for _ in range(3):
        once(F.cross_entropy), once(loss_fn)
    pairs = [(once(F.cross_entropy), once(loss_fn)) for _ in range(repeats)]
    return min(p[0] for p in pairs), min(p[1] for p in pairs)


def run(quick: bool) -> list[dict]:
    from omegaconf import OmegaConf

    from runner.config import composer
    from runner.losses import build_loss

    device = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(N, K, generator=gen) * 3).to(device).requires_grad_(True)
    labels = torch.randint(0, K, (N,), generator=gen).to(device)
    repeats = 10 if quick else 50
    names = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "conf" / "loss").glob("*.yaml"))
    rows = []
    with composer() as compose:
        for name in names:
            cfg = compose([f"loss={name}"]).loss
            if name == "sinkhorn":
                cfg = OmegaConf.merge(cfg, {"form": "batch"})
            baseline, ms = paired_times(build_loss(cfg), logits, labels, repeats)
            rows.append({"loss": name + (" (form=batch)" if name == "sinkhorn" else ""), "ms": ms,
                         "F.cross_entropy ms": baseline, "ratio": ms / baseline})
    return rows
