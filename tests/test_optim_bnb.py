"""The 8-bit optimizers (bitsandbytes) on CPU tensors and on CUDA (`cuda`-marked): their states really are 8-bit,
20 steps stay close to the 32-bit rule, and a state_dict saved mid-run continues bit-identically. Skips without
bitsandbytes or where it cannot run on the CPU (bitsandbytes < 0.50)."""
from __future__ import annotations

import io
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from runner.errors import ConfigError
from runner.optim import param_groups
from runner.optim.adamw8bit import adamw8bit
from runner.optim.lion import Lion
from runner.optim.lion8bit import lion8bit

pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed: pip install 'divrun[bnb]'")

STEPS = 20
# name: (the 8-bit optimizer, the 32-bit rule it quantizes, the largest relative difference of the 20-step
# displacement). Block-wise dynamic 8-bit states keep each entry to ~1% of its block's absmax; AdamW's update
# m/sqrt(v) averages that error (measured 2%); Lion's sign(c) flips where c is within the error of 0,
# each flip a 2*lr difference (measured 6%).
CASES = {"adamw8bit": (partial(adamw8bit, lr=1e-3, weight_decay=0.05),
                       partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.05), 0.05),
         "lion8bit": (partial(lion8bit, lr=1e-4, weight_decay=0.5), partial(Lion, lr=1e-4, weight_decay=0.5), 0.12)}


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def make_net(device: str = "cpu") -> torch.nn.Module:
    """A 256x32 weight (8192 entries: 8-bit states) and smaller tensors (under min_8bit_size: 32-bit states)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(32, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
    return net.to(device if torch.cuda.is_available() else "cpu")  # cuda on the CPU: DIVRUN_CUDA_TESTS_ON_CPU


def train(model, optimizer, steps: int, seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    for _ in range(steps):
        images, labels = torch.randn(64, 32, generator=generator), torch.randint(0, 10, (64,), generator=generator)
        F.cross_entropy(model(images.to(device)), labels.to(device)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def build(name: str, model):
    try:
        return CASES[name][0](param_groups(model, False))
    except ConfigError as error:
        pytest.skip(str(error))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", sorted(CASES))
def test_states_are_8bit_and_the_update_follows_the_32bit_rule(name, device):
    model, reference = make_net(device), make_net(device)
    optimizer = build(name, model)
    start = torch.cat([p.detach().flatten() for p in model.parameters()])
    train(model, optimizer, STEPS)
    train(reference, CASES[name][1](param_groups(reference, False)), STEPS)
    big = model[0].weight
    states = {key: value for key, value in optimizer.state[big].items() if torch.is_tensor(value)
              and value.shape == big.shape}
    assert states and all(value.dtype == torch.uint8 for value in states.values()), states
    small = optimizer.state[model[2].bias]  # 10 entries: 32-bit states
    assert all(v.dtype == torch.float32 for k, v in small.items() if torch.is_tensor(v) and v.shape == (10,))
    ours = torch.cat([p.detach().flatten() for p in model.parameters()]) - start
    theirs = torch.cat([p.detach().flatten() for p in reference.parameters()]) - start
    relative = ((ours - theirs).norm() / theirs.norm()).item()
    assert 0 < relative <= CASES[name][2], f"{name}: 20-step displacement differs by {relative:.3f} from 32-bit"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", sorted(CASES))
def test_state_dict_resume_is_bit_identical(name, device):
    model = make_net(device)
    optimizer = build(name, model)
    train(model, optimizer, 8)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    train(model, optimizer, 8, seed=2)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)
    resumed = make_net(device)
    resumed.load_state_dict(saved["model"])
    resumed_optimizer = build(name, resumed)
    resumed_optimizer.load_state_dict(saved["optimizer"])
    train(resumed, resumed_optimizer, 8, seed=2)
    for p, q in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(p, q)
