"""Optimizer step time on ResNet-18's parameters (CIFAR variant, 11.2M parameters in 62 tensors, divrun's
decay / no-decay groups, fixed random gradients), as a ratio to torch.optim.AdamW(foreach=True) timed in
the same rounds (interleaved; the fastest round counts, CPU timed on one thread so that other load on the
machine disturbs it least). `vs_adamw` is the path `foreach=None` picks on the device (runner.optim.base
uses_foreach: per-tensor on a CPU, in cache-sized slices for element-wise rules; foreach on CUDA),
`foreach_vs_adamw` / `per_tensor_vs_adamw` the two paths forced (SOAP, Prodigy and LANTON have one path),
`reference` the official package where one installs (the `ref` extra). SAM and AdaHessian are timed as whole train steps
(forward, backward, step; batch 64 of 32x32; ResNet-20 on the CPU, ResNet-18 on CUDA) as a ratio to their
base (SAM: its base; AdaHessian: AdamW), with images/s."""
from __future__ import annotations

import importlib
import inspect
import time
from functools import partial

import torch
import torch.nn.functional as F

from benchmarks import timed_devices
from runner.models.resnet_cifar import resnet_cifar, resnet_he
from runner.optim import param_groups
from runner.optim.adabelief import AdaBelief
from runner.optim.adahessian import AdaHessian
from runner.optim.adamp import AdamP
from runner.optim.adan import Adan
from runner.optim.adopt import ADOPT
from runner.optim.base import uses_foreach
from runner.optim.diffgrad import DiffGrad
from runner.optim.lanton import LANTON
from runner.optim.lion import Lion
from runner.optim.mars import MARS
from runner.optim.muon import Muon
from runner.optim.prodigy import Prodigy
from runner.optim.sam import SAM
from runner.optim.schedulefree import ScheduleFreeAdamW, ScheduleFreeSGD
from runner.optim.sgd_sai import SGDSaI
from runner.optim.sgdp import SGDP
from runner.optim.soap import SOAP
from runner.optim.spam import SPAM
from runner.optim.stable_spam import StableSPAM

WARMUP_STEPS = 3  # past SGD-SaI's first step and SPAM's clipping delay (grad_accu_steps=2 below)

# name: (divrun's class with its options, the official package's (module, class, extra options) or None)
STEP_CASES = {
    "lion": (partial(Lion, lr=1e-4, weight_decay=0.1), None),
    "adamp": (partial(AdamP, weight_decay=1e-2), ("adamp", "AdamP", {"weight_decay": 1e-2})),
    "sgdp": (partial(SGDP, lr=0.1, momentum=0.9, weight_decay=1e-5),
             ("adamp", "SGDP", {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-5})),
    "adabelief": (partial(AdaBelief, eps=1e-8, weight_decay=5e-4, weight_decouple=False, rectify=False),
                  ("adabelief_pytorch", "AdaBelief", {"eps": 1e-8, "weight_decay": 5e-4, "weight_decouple": False,
                                                      "rectify": False, "print_change_log": False})),
    "diffgrad": (DiffGrad, ("torch_optimizer", "DiffGrad", {})),
    "sgd_sai": (SGDSaI, ("sgd_sai", "SGD_sai", {})),
    "spam": (partial(SPAM, weight_decay=0.1, grad_accu_steps=2), None),
    "stable_spam": (partial(StableSPAM, weight_decay=0.1), None),
    # the 2025-26 baselines. Muon's references (muon-optimizer 0.1.0, torch.optim.Muon) cannot step conv kernels;
    # SOAP, MARS and LANTON have none on PyPI; adan-pytorch is lucidrains' (not sail-sg's) Adan
    "muon": (Muon, None),
    "schedulefree_adamw": (ScheduleFreeAdamW, ("schedulefree", "AdamWScheduleFree", {})),
    "schedulefree_sgd": (partial(ScheduleFreeSGD, lr=0.1), ("schedulefree", "SGDScheduleFree", {"lr": 0.1})),
    "soap": (SOAP, None),
    "adopt": (ADOPT, ("adopt", "ADOPT", {})),
    "prodigy": (Prodigy, ("prodigyopt", "Prodigy", {})),
    "mars": (MARS, None),
    "adan": (partial(Adan, weight_decay=0.02), ("adan_pytorch", "Adan", {"weight_decay": 0.02})),
    "lanton": (LANTON, None),
}


def make_model(device: torch.device, small: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)
    model = resnet_he(3, 10, depth=20) if small else resnet_cifar(in_channels=3, num_classes=10, depth=18)
    return model.to(device)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def official(spec):
    module, name, options = spec
    try:
        return partial(getattr(importlib.import_module(module), name), **options)
    except ImportError:
        return None


class StepTimer:
    """One optimizer over its own copy of the model with fixed gradients; `time(k)` is ms per step."""

    def __init__(self, factory, device: torch.device):
        self.device, self.model = device, make_model(device)
        generator = torch.Generator(device).manual_seed(1)
        for p in self.model.parameters():
            p.grad = torch.randn(p.shape, generator=generator, device=device) * 1e-2
        self.optimizer = factory(param_groups(self.model, decay_bias_and_norm=False))
        if hasattr(self.optimizer, "train"):  # schedule-free (the official ones start in eval mode)
            self.optimizer.train()
        self.run(WARMUP_STEPS)

    def run(self, steps: int) -> None:
        for _ in range(steps):
            self.optimizer.step()

    def time(self, steps: int) -> float:
        synchronize(self.device)
        start = time.perf_counter()
        self.run(steps)
        synchronize(self.device)
        return (time.perf_counter() - start) / steps * 1e3


def fastest_times(timers: dict[str, StepTimer], rounds: int, steps: int) -> dict[str, float]:
    samples = {name: [] for name in timers}
    for _ in range(rounds):
        for name, timer in timers.items():
            samples[name].append(timer.time(steps))
    return {name: min(values) for name, values in samples.items()}


def step_rows(device: torch.device, quick: bool) -> list[dict]:
    factories = {"adamw": partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.05, foreach=True)}
    for name, (ours, reference) in STEP_CASES.items():
        if has_paths(ours):
            factories[f"{name}/foreach"] = partial(ours, foreach=True)
            factories[f"{name}/per_tensor"] = partial(ours, foreach=False)
        else:
            factories[f"{name}/single"] = ours
        if reference and official(reference):
            factories[f"{name}/reference"] = official(reference)
    timers = {name: StepTimer(factory, device) for name, factory in factories.items()}
    times = fastest_times(timers, rounds=4 if quick else 10, steps=2 if quick else 4)
    baseline = times["adamw"]
    default = "foreach" if uses_foreach(None, device) else "per_tensor"  # the path foreach=None picks here
    rows = [{"device": device.type, "optimizer": "adamw (torch, foreach)", "step_ms": baseline, "vs_adamw": 1.0}]
    for name in STEP_CASES:
        path = default if f"{name}/{default}" in times else "single"
        row = {"device": device.type, "optimizer": name, "step_ms": times[f"{name}/{path}"],
               "vs_adamw": times[f"{name}/{path}"] / baseline}
        if path != "single":
            row.update(foreach_vs_adamw=times[f"{name}/foreach"] / baseline,
                       per_tensor_vs_adamw=times[f"{name}/per_tensor"] / baseline)
        if f"{name}/reference" in times:
            row["reference_vs_adamw"] = times[f"{name}/reference"] / baseline
            row["reference"] = STEP_CASES[name][1][0]
        rows.append(row)
    return rows


def has_paths(factory) -> bool:
    """Whether an optimizer has both paths (a `foreach` argument); SOAP, Prodigy and LANTON have one."""
    func = factory.func if isinstance(factory, partial) else factory
    return "foreach" in inspect.signature(func).parameters


def train_step(model, optimizer, images, labels) -> None:
    """As runner.train does it: backward (with the graph for second-order optimizers), step (with a closure
    that recomputes the gradients for closure-driven ones)."""
    F.cross_entropy(model(images), labels).backward(create_graph=getattr(optimizer, "second_order", False))
    if getattr(optimizer, "needs_closure", False):
        optimizer.step(lambda: F.cross_entropy(model(images), labels).backward())
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def train_step_rows(device: torch.device, quick: bool) -> list[dict]:
    """Whole train steps, as the trainer runs them: SAM against its base, AdaHessian against AdamW."""
    batch = 64
    generator = torch.Generator(device).manual_seed(2)
    images = torch.randn(batch, 3, 32, 32, generator=generator, device=device)
    labels = torch.randint(0, 10, (batch,), generator=generator, device=device)
    cases = {"sgd": partial(torch.optim.SGD, lr=0.1, momentum=0.9),
             "sam(sgd)": lambda groups: SAM(torch.optim.SGD(groups, lr=0.1, momentum=0.9)),
             "adamw": partial(torch.optim.AdamW, lr=1e-3),
             "sam(adamw)": lambda groups: SAM(torch.optim.AdamW(groups, lr=1e-3)),
             "adahessian": AdaHessian}
    steps = {}
    for name, factory in cases.items():
        model = make_model(device, small=device.type == "cpu")
        steps[name] = partial(train_step, model, factory(param_groups(model, False)), images, labels)
        steps[name]()
    samples = {name: [] for name in steps}
    for _ in range(3 if quick else 8):
        for name, one_step in steps.items():
            synchronize(device)
            start = time.perf_counter()
            one_step()
            synchronize(device)
            samples[name].append(time.perf_counter() - start)
    seconds = {name: min(values) for name, values in samples.items()}
    bases = {"sam(sgd)": "sgd", "sam(adamw)": "adamw", "adahessian": "adamw"}
    return [{"device": device.type, "optimizer": f"train step: {name}", "step_ms": seconds[name] * 1e3,
             "img_per_s": batch / seconds[name],
             **({f"vs_{bases[name]}": seconds[name] / seconds[bases[name]]} if name in bases else {})}
            for name in steps]


def run(quick: bool) -> list[dict]:
    rows = []
    if "cpu" in timed_devices():
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            rows += step_rows(torch.device("cpu"), quick) + train_step_rows(torch.device("cpu"), quick)
        finally:
            torch.set_num_threads(threads)
    if "cuda" in timed_devices():
        rows += step_rows(torch.device("cuda"), quick) + train_step_rows(torch.device("cuda"), quick)
    return rows
