"""Costs of the stability and curvature features, each as a ratio to a baseline timed in alternation in the same
run (best of repeats). On ResNet-20 (CIFAR shape, batch 128, SGD) a training step (forward, cross-entropy,
backward, step) is the baseline of: the float32 softmax-collapse test of the step's logits (what every step adds
for `train/softmax_collapse`), one ⊥Grad step (`optimizer=perpgrad`: projection + SGD) against the SGD step
alone, one Hessian-vector product on the step's 128 samples, and one curvature measurement (`trainer.curvature`
defaults: top_k 1 with up to 20 power iterations and 10 Hutchinson probes on 256 samples; --quick: 3 and 2 on
128) whose `amortised` column is its cost spread over `every` = 200 steps.
StableMax cross-entropy (`loss.normalizer=stablemax`) is timed forward + backward on 256 x 1000 logits against
F.cross_entropy."""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from runner.curvature import CurvatureMonitor, HessianVectorProduct
from runner.losses.ce import CrossEntropy
from runner.losses.stablemax import softmax_collapsed
from runner.models.resnet_cifar import resnet_he
from runner.optim.perpgrad import PerpGrad

BATCH, CURVATURE_EVERY = 128, 200


def best_of(functions: dict, repeats: int, sync) -> dict:
    """Best-of-repeats milliseconds of each function, called in alternation."""
    times = {name: [] for name in functions}
    for _ in range(repeats + 1):  # the first round warms up
        for name, function in functions.items():
            sync()
            start = time.perf_counter()
            function()
            sync()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: min(values[1:]) for name, values in times.items()}


def run(quick: bool) -> list[dict]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    repeats = 3 if quick else 10
    torch.manual_seed(0)
    model = resnet_he(3, 10, depth=20).to(device)
    images, labels = torch.randn(BATCH, 3, 32, 32, device=device), torch.randint(0, 10, (BATCH,), device=device)
    sgd = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    perp = PerpGrad(torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9))
    logits_holder = {}

    def backward():
        model.zero_grad(set_to_none=True)
        logits = model(images)
        F.cross_entropy(logits, labels).backward()
        logits_holder["logits"] = logits.detach()

    def train_step():
        backward()
        sgd.step()

    backward()
    samples, iters, probes = (BATCH, 3, 2) if quick else (256, 20, 10)
    monitor = CurvatureMonitor(model, CrossEntropy(), torch.randn(samples, 3, 32, 32, device=device),
                               torch.randint(0, 10, (samples,), device=device), every=CURVATURE_EVERY, top_k=1,
                               iters=iters, tol=1e-3, trace_probes=probes, samples=samples)
    measured = {}

    def measure():
        measured.update(monitor.measure(CURVATURE_EVERY, 0.1))

    steps = best_of({"step": train_step, "collapse": lambda: softmax_collapsed(logits_holder["logits"]),
                     "sgd": sgd.step, "perpgrad": perp.step}, repeats, sync)
    hvp = HessianVectorProduct(F.cross_entropy(model(images), labels), list(model.parameters()))
    probe = torch.randn(hvp.dim, device=device)
    products = best_of({"hvp": lambda: hvp(probe)}, repeats, sync)  # alone: a step would change the weights under its graph
    del hvp
    curvature = best_of({"step": train_step, "curvature": measure}, 1, sync)
    rows = [
        {"feature": "Hessian-vector product (128 samples)", "ms": products["hvp"], "baseline": "train step",
         "baseline ms": steps["step"], "ratio": products["hvp"] / steps["step"]},
        {"feature": "softmax-collapse test per step", "ms": steps["collapse"], "baseline": "train step",
         "baseline ms": steps["step"], "ratio": steps["collapse"] / steps["step"]},
        {"feature": "perpgrad(sgd) step", "ms": steps["perpgrad"], "baseline": "sgd step",
         "baseline ms": steps["sgd"], "ratio": steps["perpgrad"] / steps["sgd"]},
        {"feature": f"curvature measurement ({measured.get('hessian/products')} HVPs on {samples} samples)",
         "ms": curvature["curvature"], "baseline": "train step", "baseline ms": curvature["step"],
         "ratio": curvature["curvature"] / curvature["step"],
         "amortised": curvature["curvature"] / (CURVATURE_EVERY * curvature["step"])},
    ]
    logits = (torch.randn(256, 1000, device=device) * 3).requires_grad_(True)
    targets = torch.randint(0, 1000, (256,), device=device)
    stable = CrossEntropy(normalizer="stablemax")
    losses = best_of({"ce": lambda: F.cross_entropy(logits, targets).backward(),
                      "stablemax": lambda: stable(logits, targets).backward()}, repeats * 3, sync)
    rows.append({"feature": "stablemax cross-entropy fwd+bwd (256 x 1000)", "ms": losses["stablemax"],
                 "baseline": "F.cross_entropy", "baseline ms": losses["ce"], "ratio": losses["stablemax"] / losses["ce"]})
    return rows
