"""Forward + backward time of each loss (its conf/loss default) on a 256 x 1000 batch of class-index
targets, as a ratio to torch.nn.functional.cross_entropy timed in the same run (median of repeats).
Sinkhorn runs in form=batch: the per-sample form needs N x K x K memory (256 x 1000 x 1000 here)."""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

N, K = 256, 1000


def timed(fn, logits, target, repeats: int) -> float:
    """Median milliseconds of one forward + backward (synchronising CUDA around each)."""
    sync = torch.cuda.synchronize if logits.is_cuda else (lambda: None)
    for _ in range(3):
        fn(logits, target).backward()
    samples = []
    for _ in range(repeats):
        logits.grad = None
        sync()
        start = time.perf_counter()
        fn(logits, target).backward()
        sync()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def run(quick: bool) -> list[dict]:
    from omegaconf import OmegaConf

    import runner.cli  # noqa: F401 - registers the config resolvers
    from hydra import compose, initialize_config_module
    from runner.losses import build_loss

    device = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(N, K, generator=gen) * 3).to(device).requires_grad_(True)
    labels = torch.randint(0, K, (N,), generator=gen).to(device)
    repeats = 10 if quick else 50
    names = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "conf" / "loss").glob("*.yaml"))
    baseline = timed(F.cross_entropy, logits, labels, repeats)
    rows = [{"loss": "F.cross_entropy", "ms": baseline, "ratio": 1.0}]
    with initialize_config_module("runner.conf", version_base="1.3"):
        for name in names:
            cfg = compose("config", overrides=[f"loss={name}"]).loss
            if name == "sinkhorn":
                cfg = OmegaConf.merge(cfg, {"form": "batch"})
            ms = timed(build_loss(cfg), logits, labels, repeats)
            rows.append({"loss": name + (" (form=batch)" if name == "sinkhorn" else ""), "ms": ms, "ratio": ms / baseline})
    return rows
