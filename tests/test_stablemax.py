"""StableMax against the paper's definition (float64, written plainly here), finiteness where float32 softmax
collapses, the collapse test itself, and `loss.normalizer=stablemax` in every loss."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

from runner.errors import ConfigError
from runner.losses.ce import CrossEntropy
from runner.losses.fdiv import KL
from runner.losses.stablemax import log_stablemax, softmax_collapsed

LOSS_DIR = Path(__file__).resolve().parents[1] / "conf" / "loss"


def stablemax_reference(x: np.ndarray) -> np.ndarray:
    """Prieto et al. 2025, eq. for StableMax: s(x) = x + 1 (x >= 0), 1 / (1 - x) (x < 0); s_i / sum_j s_j."""
    s = np.where(x >= 0, x + 1, 1 / (1 - np.minimum(x, 0)))
    return s / s.sum(-1, keepdims=True)


def test_stablemax_equals_its_definition():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 10, generator=gen, dtype=torch.float64) * 5
    logits[0] = torch.tensor([0.0, -1, 1, 1e3, -1e3, 0.5, -0.5, 2, -2, 0])  # both branches and the kink at 0
    ours = log_stablemax(logits).exp().numpy()
    np.testing.assert_allclose(ours, stablemax_reference(logits.numpy()), rtol=1e-12)
    float32 = log_stablemax(logits.float()).exp().double().numpy()
    np.testing.assert_allclose(float32, stablemax_reference(logits.numpy()), rtol=1e-5)


def test_stablemax_is_not_shift_invariant_but_softmax_is():
    x = torch.tensor([[0.0, 1.0, 2.0]], dtype=torch.float64)
    assert not torch.allclose(log_stablemax(x), log_stablemax(x + 3))
    assert torch.allclose(F.log_softmax(x, -1), F.log_softmax(x + 3, -1))


def test_gradient_is_continuous_at_zero_logits():
    """s is C^1 at 0 (slope 1 from both sides): a zero-initialised head still gets a gradient."""
    x = torch.zeros(1, 4, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda z: log_stablemax(z)[:, 0], (x,))
    log_stablemax(x)[0, 0].backward()
    assert x.grad[0, 0] > 0


def test_finite_and_learning_where_float32_softmax_collapses():
    logits = torch.tensor([[1e4, 0.0, -5.0, 3.0], [2e4, 1e4, 0.0, -1e4]], dtype=torch.float32, requires_grad=True)
    labels = torch.tensor([0, 0])
    assert softmax_collapsed(logits).all()
    softmax_loss = F.cross_entropy(logits, labels)
    (softmax_grad,) = torch.autograd.grad(softmax_loss, logits)
    assert softmax_loss.item() == 0 and (softmax_grad == 0).all()  # collapse: no loss, no gradient
    probs = log_stablemax(logits).exp()
    assert torch.isfinite(probs).all() and (probs > 0).all()
    stable_loss = CrossEntropy(normalizer="stablemax")(logits, labels)
    (stable_grad,) = torch.autograd.grad(stable_loss, logits)
    assert torch.isfinite(stable_loss) and stable_loss > 0
    assert torch.isfinite(stable_grad).all() and stable_grad.abs().sum() > 0
    expected = -np.log(stablemax_reference(logits.detach().double().numpy())[[0, 1], [0, 0]]).mean()
    assert abs(stable_loss.item() - expected) < 1e-6


def test_collapse_is_the_float32_absorption_test_of_the_official_logger():
    logits = torch.tensor([[200.0, 0.0, 0.0], [10.0, 0.0, 0.0], [88.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    # exp(-200) and exp(-87) underflow or vanish next to 1 in float32; exp(-10) = 4.5e-5 does not
    expected = [(torch.exp(z - z.max()).sum() == 1).item() for z in logits]
    assert softmax_collapsed(logits).tolist() == expected == [True, False, True, False]
    assert softmax_collapsed(logits.double()).tolist() == expected  # always judged in float32
    assert softmax_collapsed(logits.bfloat16()).tolist() == expected


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_with_stablemax_is_the_official_stablemax_cross_entropy(smoothing):
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(32, 7, generator=gen) * 4
    labels = torch.randint(0, 7, (32,), generator=gen)
    p = stablemax_reference(logits.double().numpy())
    q = np.eye(7)[labels.numpy()] * (1 - smoothing) + smoothing / 7
    expected = -(q * np.log(p)).sum(-1).mean()
    assert abs(CrossEntropy(normalizer="stablemax", smoothing=smoothing)(logits, labels).item() - expected) < 1e-5
    # the divergence path (every other loss) uses the same p: KL(q || p) = CE - H(q)
    kl = KL(normalizer="stablemax", smoothing=smoothing)(logits, labels).item()
    entropy = -(q * np.log(np.where(q > 0, q, 1))).sum(-1).mean()
    assert abs(kl - (expected - entropy)) < 1e-5


@pytest.mark.parametrize("name", sorted(p.stem for p in LOSS_DIR.glob("*.yaml")))
def test_every_loss_takes_the_stablemax_normalizer(name):
    cfg = OmegaConf.load(LOSS_DIR / f"{name}.yaml")
    if "defaults" in cfg:  # gce, mae: presets of compsum
        cfg = OmegaConf.merge(OmegaConf.load(LOSS_DIR / f"{cfg.defaults[0]}.yaml"), {k: v for k, v in cfg.items() if k != "defaults"})
    assert cfg.normalizer == "softmax"
    cfg.normalizer = "stablemax"
    if name == "rkl" or name.startswith("chi2"):
        cfg.smoothing = max(cfg.smoothing, 0.1)
    loss = instantiate(cfg)
    logits = torch.tensor([[1e4, 0.0, -3.0, 2.0], [0.5, -0.5, 0.0, 1.0]], requires_grad=True)
    value = loss(logits, torch.tensor([0, 3]))
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(logits.grad).all()
    softmax_value = instantiate(OmegaConf.merge(cfg, {"normalizer": "softmax"}))(logits, torch.tensor([0, 3]))
    assert value.item() != softmax_value.item()  # the option changed p


def test_unknown_normalizer_is_a_one_line_error():
    with pytest.raises(ConfigError, match="loss.normalizer=sparsemax: choose softmax or stablemax"):
        CrossEntropy(normalizer="sparsemax")
