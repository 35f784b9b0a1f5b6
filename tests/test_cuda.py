"""What divrun promises on a GPU, through its stable interfaces (the `divrun` command, `run_job`,
`runner.optim.build_optimizer`, the device-resident loader): bf16 autocast and channels-last by default,
`trainer.compile=true` and its fallback, torch's fused kernels, every optimizer's multi-tensor path against its
per-tensor path, a resume that is bit-exact with `trainer.deterministic=true`, `trainer.devices=auto` on one
GPU, and training steps that never make the host wait on the device (`trainer.sync_debug=error`).

Marked `cuda`: skipped without a GPU; `make gpu-check` runs them. `DIVRUN_CUDA_TESTS_ON_CPU=1` runs them on the
CPU to rehearse their logic (where a default differs between devices the test says so)."""
from __future__ import annotations

import inspect
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from omegaconf import OmegaConf
from torch import nn

from conftest import REPO, compose, divrun, read_summary
from runner.checkpoint import load, step_of
from runner.data.datasets import CIFAR_MEAN, CIFAR_STD
from runner.data.loaders import TensorLoader
from runner.data.splits import Augment, TensorSplit
from runner.job import run_job
from runner.models.small import SmallCNN
from runner.config import locate
from runner.optim import build_optimizer, capabilities

pytestmark = pytest.mark.cuda

SYNTHETIC = ["dataset=synthetic", "dataset.image_size=16", "dataset.train_size=512", "dataset.val_size=128",
             "trainer.batch_size=64", "logger.progress=false", "logger.wandb.mode=disabled"]
OPTIMIZERS = sorted(p.stem for p in (REPO / "conf" / "optimizer").glob("*.yaml"))
LOSSES = sorted(p.stem for p in (REPO / "conf" / "loss").glob("*.yaml"))


def train(tmp_path: Path, device: torch.device, *overrides: str, name: str = "run") -> tuple[dict, Path]:
    """One job in-process on `device`; returns (summary, run folder)."""
    cfg = compose(*SYNTHETIC, f"trainer.device={device.type}", *overrides)
    run_dir = tmp_path / name
    return run_job(cfg, run_dir), run_dir


def train_records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if "train/loss" in line]


class Probe(SmallCNN):
    """SmallCNN that records what each training forward pass sees (the test reads `Probe.seen`)."""
    seen: list[dict] = []

    def forward(self, x):
        logits = super().forward(x)
        if self.training:
            conv = self.features[0][0].weight
            Probe.seen.append({"input": x.dtype, "logits": logits.dtype, "device": x.device.type,
                               "input_channels_last": x.is_contiguous(memory_format=torch.channels_last),
                               "weight_channels_last": conv.is_contiguous(memory_format=torch.channels_last),
                               "autocast": torch.is_autocast_enabled(x.device.type)})
        return logits


def test_bf16_autocast_and_channels_last_are_the_defaults_on_cuda(tmp_path, cuda_device):
    on_gpu = cuda_device.type == "cuda"  # on the CPU `auto` means fp32 and contiguous: rehearse with them explicit
    defaults = ["trainer.precision=auto", "trainer.channels_last=auto"] if on_gpu else \
        ["trainer.precision=bf16", "trainer.channels_last=true"]
    Probe.seen = []
    summary, run_dir = train(tmp_path, cuda_device, f"model._target_={__name__}.Probe", "trainer.epochs=2", *defaults)
    assert summary["status"] == "finished" and summary["device"].startswith(cuda_device.type)
    assert len(Probe.seen) == summary["steps"] == 16
    for seen in Probe.seen:
        assert seen == {"input": torch.float32, "logits": torch.bfloat16, "device": cuda_device.type,
                        "input_channels_last": True, "weight_channels_last": True, "autocast": True}
    losses = [record["train/loss"] for record in train_records(run_dir)]
    assert torch.isfinite(torch.tensor(losses)).all() and losses[-1] < losses[0], losses


def test_compile_trains_like_eager(tmp_path, cuda_device, capfd):
    import torch._dynamo

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    common = ["trainer.epochs=2", "trainer.precision=fp32", "schedule=constant", "optimizer.lr=0.05"]
    compiled, compiled_dir = train(tmp_path, cuda_device, "trainer.compile=true", *common, name="compiled")
    assert "torch.compile failed" not in capfd.readouterr().err
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1, "nothing was compiled"
    eager, eager_dir = train(tmp_path, cuda_device, "trainer.compile=false", *common, name="eager")
    assert compiled["status"] == eager["status"] == "finished"
    # the same updates up to float rounding (the compiled kernels fuse and reorder sums): the losses stay close
    for got, want in zip(train_records(compiled_dir), train_records(eager_dir)):
        assert got["train/loss"] == pytest.approx(want["train/loss"], rel=2e-2), (got, want)


def test_compile_failure_falls_back_to_eager(tmp_path, cuda_device, monkeypatch, capfd):
    def failing_compile(model, *args, **kwargs):
        def compiled(*inputs):
            raise RuntimeError("the compiler is not available")
        return compiled

    monkeypatch.setattr(torch, "compile", failing_compile)
    summary, _ = train(tmp_path, cuda_device, "trainer.compile=true", "trainer.max_steps=4")
    assert summary["status"] == "finished" and summary["steps"] == 4
    assert "torch.compile failed (RuntimeError); running eagerly" in capfd.readouterr().err


def small_net(device: torch.device, dtype=torch.float32) -> nn.Module:
    """conv - BN - ReLU - conv - BN - ReLU - pool - linear: >= 2-D weights, biases and norm weights."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, 10))
    return net.to(device, dtype)


def optimizer_options(name: str, **changes) -> dict:
    options = OmegaConf.to_container(compose(f"optimizer={name}").optimizer, resolve=True)
    return {**options, **changes}


def accepts(options: dict, parameter: str) -> bool:
    return parameter in inspect.signature(locate(options["_target_"])).parameters


def run_steps(model: nn.Module, optimizer, steps: int, seed: int = 1) -> None:
    """`steps` updates on fixed random batches; every RNG the update may draw from is reset per step, so two
    optimizers that draw the same numbers (AdaHessian's probes) see the same ones."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    generator = torch.Generator(device).manual_seed(seed)
    second_order = capabilities(optimizer).second_order
    for step in range(steps):
        images = torch.randn(16, 3, 8, 8, generator=generator, device=device, dtype=dtype)
        labels = torch.randint(0, 10, (16,), generator=generator, device=device)
        F.cross_entropy(model(images), labels).backward(create_graph=second_order)
        torch.manual_seed(100 + step)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def test_fused_kernels_on_cuda(cuda_device):
    """AdamW, Adam and SGD get torch's fused kernel on CUDA when `fused` is left unset, and it updates like the
    multi-tensor path (float32: fused kernels round differently, so close, not equal)."""
    for name in ("adamw", "adam", "sgd"):
        model, reference = small_net(cuda_device), small_net(cuda_device)
        optimizer = build_optimizer(optimizer_options(name, lr=1e-2), model)
        assert bool(optimizer.defaults.get("fused")) == (cuda_device.type == "cuda"), name
        multi_tensor = build_optimizer(optimizer_options(name, lr=1e-2, foreach=True), reference)
        assert not multi_tensor.defaults.get("fused")
        run_steps(model, optimizer, 10)
        run_steps(reference, multi_tensor, 10)
        for p, q in zip(model.parameters(), reference.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=name)


FOREACH_OPTIMIZERS = [name for name in OPTIMIZERS if accepts(optimizer_options(name), "foreach")]


@pytest.mark.parametrize("name", FOREACH_OPTIMIZERS)
def test_foreach_path_matches_the_per_tensor_path_on_cuda(name, cuda_device):
    """Every optimizer option with a `foreach` switch: its multi-tensor path on the GPU against its per-tensor
    path on the GPU, 12 steps in float64 (so summation order cannot hide a wrong update)."""
    paths = {}
    for foreach in (True, False):
        options = optimizer_options(name, foreach=foreach)
        if accepts(options, "fused"):
            options["fused"] = False  # else build_optimizer picks the fused kernel for the per-tensor side
        model = small_net(cuda_device, torch.float64)
        run_steps(model, build_optimizer(options, model, total_steps=12), 12)
        paths[foreach] = model
    start = small_net(cuda_device, torch.float64)
    moved = max((p - q).abs().max().item() for p, q in zip(paths[True].parameters(), start.parameters()))
    assert moved > 1e-6, f"{name}: the parameters did not move"
    for (label, p), q in zip(paths[True].named_parameters(), paths[False].parameters()):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12, msg=f"{name}: {label}")


def test_foreach_optimizers_cover_divrun_and_torch():
    assert {"lion", "adamp", "sgdp", "adabelief", "diffgrad", "adahessian", "sgd_sai", "spam", "stable_spam",
            "adamw", "sgd"} <= set(FOREACH_OPTIMIZERS), FOREACH_OPTIMIZERS


def test_resume_is_bit_exact_with_deterministic(tmp_path, cuda_device):
    """A run with checkpoints every 5 steps; a copy of its folder cut back to step 10 (mid-epoch) and resumed
    with `divrun resume=` ends with the same weights, optimizer state, training records and gradient norms."""
    run = [f"hydra.run.dir={tmp_path / 'whole'}", *SYNTHETIC, "trainer.epochs=3",
           "trainer.log_every=4", "trainer.checkpoint_every_steps=5", "trainer.keep_checkpoints=20",
           "trainer.deterministic=true", f"trainer.device={cuda_device.type}"]
    divrun(*run, cwd=tmp_path)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    shutil.copytree(whole, cut)
    steps = {step_of(path): path for path in (cut / "checkpoints").glob("step_*.pt")}
    assert {5, 10, 15} <= set(steps), steps
    for step, path in steps.items():
        if step > 10:
            path.unlink()
    (cut / "checkpoints" / "last.pt").unlink()
    os.link(steps[10], cut / "checkpoints" / "last.pt")
    result = divrun(f"resume={cut}", cwd=tmp_path)
    assert "at step 10" in result.stdout + result.stderr
    got, want = load(cut / "checkpoints" / "last.pt"), load(whole / "checkpoints" / "last.pt")
    assert got["step"] == want["step"] == 24
    for key, tensor in want["model"].items():
        assert torch.equal(got["model"][key], tensor), f"weights differ in {key}"
    for index, state in want["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(torch.as_tensor(got["optimizer"]["state"][index][key]), torch.as_tensor(value)), key
    strip = lambda records: [{k: v for k, v in r.items() if k != "train/img_per_s"} for r in records]
    assert strip(train_records(cut)) == strip(train_records(whole))
    assert (cut / "grad_norms.csv").read_text() == (whole / "grad_norms.csv").read_text()
    assert read_summary(cut)["final_val_acc1"] == pytest.approx(read_summary(whole)["final_val_acc1"], abs=1e-9)


def test_devices_auto_trains_on_every_visible_gpu(tmp_path, cuda_device):
    divrun(f"hydra.run.dir={tmp_path / 'run'}", *SYNTHETIC, "trainer.devices=auto", "trainer.device=auto",
           "trainer.max_steps=6", cwd=tmp_path)
    summary = read_summary(tmp_path / "run")
    gpus = torch.cuda.device_count() if cuda_device.type == "cuda" else 1
    assert summary["status"] == "finished" and summary["world_size"] == gpus
    assert summary["device"].startswith(cuda_device.type)


# ---- no host syncs inside a training step ----------------------------------------------------------------
# Each case trains 8 steps with trainer.sync_debug=error: any operation inside a step that makes the host wait
# on the GPU (.item(), .tolist(), a blocking copy, a data-dependent shape) raises where it happens. The logging
# read-back (every log_every=4 steps), evaluation and checkpoints are outside the steps, by design.
AIRBENCH = [o for o in yaml.safe_load((REPO / "recipes" / "airbench.yaml").read_text())["protocol"]
            if not o.startswith(("dataset", "trainer.batch_size", "trainer.eval_batch_size", "trainer.epochs"))]
SYNC_CASES = {
    **{f"optimizer={name}": [f"optimizer={name}"] + (["trainer.precision=fp32"] if name == "adahessian" else [])
       for name in OPTIMIZERS},
    **{f"loss={name}": [f"loss={name}"] for name in LOSSES},
    **{f"distill={name}": [f"distill={name}"] for name in ("pskd", "saf", "mesa")},
    "on_nonfinite=skip": ["trainer.on_nonfinite=skip"],
    "grad_clip": ["trainer.grad_clip=1.0", "optimizer=adamw"],
    "fp16 (fused adamw)": ["trainer.precision=fp16", "optimizer=adamw"],
    "fp16 (fused sgd)": ["trainer.precision=fp16"],
    "airbench recipe": ["dataset.image_size=32", *AIRBENCH],
    "accumulate, ema, mixing, policy": ["trainer.accumulate=2", "trainer.ema.decay=0.99", "dataset.mixup=0.8",
                                        "dataset.cutmix=1.0", "dataset.augment=randaugment", "dataset.random_erasing=0.25"],
    "batch=adaptive": ["batch=adaptive", "batch.eta=0.5", "trainer.batch_size=32",
                       "optimizer=adagrad_norm"],
}


@pytest.mark.parametrize("case", sorted(SYNC_CASES))
def test_no_host_sync_in_a_training_step(case, tmp_path, cuda_device):
    adaptive = case == "batch=adaptive"  # its budget is samples (a step budget is refused): one epoch
    budget = "trainer.epochs=1" if adaptive else "trainer.max_steps=8"
    overrides = [budget, "trainer.log_every=4", *SYNC_CASES[case], "trainer.sync_debug=error"]
    if case.startswith("optimizer=") and "8bit" in case:
        pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed: pip install 'divrun[bnb]'")
    summary, _ = train(tmp_path, cuda_device, *overrides)
    assert summary["status"] == "finished" and (summary["steps"] > 0 if adaptive else summary["steps"] == 8)


class SyncingLoss(nn.Module):
    """Cross-entropy that reads a value back to the host every call: the kind of line the check exists for."""

    def __init__(self, **_):
        super().__init__()

    def forward(self, logits, target):
        loss = F.cross_entropy(logits.float(), target)
        if loss.item() < 0:  # a host sync
            raise AssertionError
        return loss


def test_host_sync_check_catches_a_step_that_waits(tmp_path, cuda_device):
    if cuda_device.type != "cuda":
        pytest.skip("torch.cuda.set_sync_debug_mode has nothing to catch on the CPU")
    with pytest.raises(RuntimeError, match="synchroniz"):
        train(tmp_path, cuda_device, "trainer.max_steps=4", f"loss._target_={__name__}.SyncingLoss",
              "trainer.sync_debug=error")


def test_loader_batches_never_wait_on_the_device(cuda_device):
    """The device-resident loader's epoch (crop, flip, normalise, channels-last) under sync debug mode error."""
    images = torch.randint(0, 256, (1000, 3, 32, 32), dtype=torch.uint8)
    split = TensorSplit(images, torch.randint(0, 10, (1000,)))
    for augment in (Augment(4, True), Augment(2, "alternate", "reflect")):
        loader = TensorLoader(split, 128, cuda_device, CIFAR_MEAN[10], CIFAR_STD[10], augment=augment, shuffle=True,
                              drop_last=True, channels_last=True)
        if cuda_device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
        try:
            batches = list(loader.epoch(1))
        finally:
            if cuda_device.type == "cuda":
                torch.cuda.set_sync_debug_mode(0)
        assert len(batches) == 7 and batches[0][0].is_contiguous(memory_format=torch.channels_last)
