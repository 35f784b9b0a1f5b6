"""⊥Grad: the projection against the official formula (float64, written plainly here), an SGD update with no
component along the weights, the base's rule applied to the projected gradient, the wrapper mechanism, and
digits end to end."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from runner.optim import build_optimizer, capabilities
from runner.optim.perpgrad import PerpGrad, project_out_weights
from tests.conftest import compose, train


def official_orthograd(w: np.ndarray, g: np.ndarray, rescale: bool = True) -> np.ndarray:
    """orthograd.py: g_orth = g - (w.g) / (w.w + 1e-30) w, then g_orth * ||g|| / (||g_orth|| + 1e-30)."""
    w, g = w.reshape(-1), g.reshape(-1)
    g_orth = g - np.dot(w, g) / (np.dot(w, w) + 1e-30) * w
    return g_orth * np.linalg.norm(g) / (np.linalg.norm(g_orth) + 1e-30) if rescale else g_orth


def model_with_grads(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.Flatten(), torch.nn.Linear(12, 4))
    model[0].to(memory_format=torch.channels_last)  # non-contiguous weights take the other dot product
    with torch.no_grad():
        model[2].bias.zero_()  # a zero tensor: nothing to project out, its gradient passes unchanged
    model(torch.randn(5, 2, 4, 4)).square().sum().backward()
    return model


@pytest.mark.parametrize("rescale", [True, False])
def test_projection_is_the_official_formula(rescale):
    model = model_with_grads()
    params = list(model.parameters())
    expected = [official_orthograd(p.detach().double().numpy(), p.grad.double().numpy(), rescale) for p in params]
    bias_grad = model[2].bias.grad.clone()
    project_out_weights(params, [p.grad for p in params], rescale, 1e-30)
    for p, e in zip(params, expected):
        np.testing.assert_allclose(p.grad.double().numpy().reshape(-1), e, rtol=1e-5, atol=1e-6)
    assert torch.equal(model[2].bias.grad, bias_grad)


@pytest.mark.parametrize("rescale", ["true", "false"])
def test_an_sgd_update_has_no_component_along_the_weights(rescale):
    model = model_with_grads(1)
    cfg = compose("optimizer=perpgrad", f"optimizer.rescale={rescale}", "optimizer.base_overrides={lr:0.5,momentum:0.0,weight_decay:0.0}").optimizer
    optimizer = build_optimizer(cfg, model)
    assert isinstance(optimizer, PerpGrad) and type(optimizer.base) is torch.optim.SGD
    before = [p.detach().clone() for p in model.parameters()]
    grad_norms = [p.grad.norm().item() for p in model.parameters()]
    optimizer.step()
    for w, p, g_norm in zip(before, model.parameters(), grad_norms):
        update = p.detach() - w
        if w.norm() == 0:
            continue
        assert abs(torch.dot(update.reshape(-1), w.reshape(-1))) <= 1e-6 * update.norm() * w.norm()
        if rescale == "true":
            assert abs(update.norm().item() - 0.5 * g_norm) < 1e-5 * g_norm  # the gradient's norm is kept
    assert any((p.detach() - w).norm() > 0 for w, p in zip(before, model.parameters()))


def test_the_base_applies_its_own_rule_to_the_projected_gradient():
    model = model_with_grads(2)
    reference = copy.deepcopy(model)
    for p, r in zip(model.parameters(), reference.parameters()):
        r.grad = p.grad.clone()
    cfg = compose("optimizer=perpgrad", "optimizer.base=adamw", "optimizer.base_overrides={lr:0.01}").optimizer
    optimizer = build_optimizer(cfg, model)
    ref_params = list(reference.parameters())
    ref_optimizer = build_optimizer(cfg.base_optimizer, reference)
    for _ in range(3):  # the same gradient each step, projected against the weights of that step
        optimizer.step()
        project_out_weights(ref_params, [p.grad for p in ref_params], True, 1e-30)
        ref_optimizer.step()
    for p, r in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p, r)


def test_state_dict_round_trips_and_the_family_is_the_bases():
    model = model_with_grads(3)
    cfg = compose("optimizer=perpgrad", "optimizer.base=adamw").optimizer
    optimizer = build_optimizer(cfg, model)
    optimizer.step()
    fresh = build_optimizer(cfg, model)
    fresh.load_state_dict(optimizer.state_dict())
    assert fresh.state_dict()["state"][0]["step"] == 1
    assert capabilities(cfg) == capabilities(optimizer) and capabilities(optimizer).adaptive  # AdamW's update
    assert capabilities(compose("optimizer=perpgrad").optimizer).adaptive is False  # around SGD


@pytest.mark.parametrize("base, message", [("sam", "is itself a wrapper"), ("adahessian", "cannot wrap AdaHessian")])
def test_refuses_bases_that_recompute_their_gradients(tmp_path, base, message):
    with pytest.raises(Exception, match=message):
        train(tmp_path, "optimizer=perpgrad", f"optimizer.base={base}")


def test_trains_digits(tmp_path):
    summary, _ = train(tmp_path, "optimizer=perpgrad", "optimizer.base=adamw", "optimizer.base_overrides={lr:3e-3}",
                       "trainer.batch_size=32", "trainer.epochs=2")
    assert summary["status"] == "finished" and summary["final_val_acc1"] >= 0.9, summary["final_val_acc1"]
