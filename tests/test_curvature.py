"""Curvature estimators against the explicit Hessian of a small model (torch.func.hessian, eigvalsh): the power
iteration's eigenvalues, Hutchinson's trace within its own error, and the HVP itself."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from runner.curvature import HessianVectorProduct, hutchinson_trace, top_eigenvalues


def small_problem(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3)).double()
    x, y = torch.randn(32, 3, dtype=torch.float64), torch.randint(0, 3, (32,))
    return model, x, y


def explicit_hessian(model, x, y) -> torch.Tensor:
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss_of(theta):
        pieces = dict(zip(names, (t.view(s) for t, s in zip(theta.split([math.prod(s) for s in shapes]), shapes))))
        return F.cross_entropy(functional_call(model, pieces, (x,)), y)

    return torch.func.hessian(loss_of)(flat)


def operator(model, x, y) -> HessianVectorProduct:
    return HessianVectorProduct(F.cross_entropy(model(x), y), list(model.parameters()))


def test_hvp_is_the_explicit_hessian_times_v():
    model, x, y = small_problem()
    hessian = explicit_hessian(model, x, y)
    hvp = operator(model, x, y)
    v = torch.randn(hvp.dim, dtype=torch.float64)
    torch.testing.assert_close(hvp(v), hessian @ v)
    assert torch.allclose(hessian, hessian.T, atol=1e-10)  # a Hessian (and the reference) is symmetric


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_power_iteration_finds_the_top_eigenvalues_by_magnitude(seed):
    model, x, y = small_problem(seed)
    eigenvalues = torch.linalg.eigvalsh(explicit_hessian(model, x, y))
    by_magnitude = eigenvalues[eigenvalues.abs().argsort(descending=True)]
    hvp = operator(model, x, y)
    gen = torch.Generator().manual_seed(seed)
    values, products = top_eigenvalues(hvp, hvp.dim, 2, iters=500, tol=1e-9, generator=gen,
                                       device=torch.device("cpu"), dtype=torch.float64)
    assert by_magnitude[0] > 0  # the sharpness: the top eigenvalue is also the largest in magnitude here
    assert abs(values[0] - by_magnitude[0].item()) < 1e-4 * abs(by_magnitude[0].item())
    assert abs(values[1] - by_magnitude[1].item()) < 1e-3 * abs(by_magnitude[0].item())
    assert products <= 1000


def test_power_iteration_stops_at_the_tolerance():
    model, x, y = small_problem()
    hvp = operator(model, x, y)
    loose, loose_products = top_eigenvalues(hvp, hvp.dim, 1, 500, 1e-2, torch.Generator().manual_seed(0),
                                            torch.device("cpu"), torch.float64)
    _, tight_products = top_eigenvalues(hvp, hvp.dim, 1, 500, 1e-10, torch.Generator().manual_seed(0),
                                        torch.device("cpu"), torch.float64)
    top = torch.linalg.eigvalsh(explicit_hessian(model, x, y)).max().item()
    assert loose_products < tight_products and abs(loose[0] - top) < 0.05 * top


def test_hutchinson_trace_is_within_its_estimators_error():
    model, x, y = small_problem(3)
    hessian = explicit_hessian(model, x, y)
    exact = torch.trace(hessian).item()
    # Rademacher probes: Var(z.Hz) = 2 (||H||_F^2 - sum_i H_ii^2)
    sd_per_probe = math.sqrt(2 * (hessian.square().sum() - hessian.diagonal().square().sum()).item())
    hvp = operator(model, x, y)
    probes = 200
    estimate, stderr = hutchinson_trace(hvp, hvp.dim, probes, torch.Generator().manual_seed(0),
                                        torch.device("cpu"), torch.float64)
    assert abs(estimate - exact) < 4 * sd_per_probe / math.sqrt(probes)
    assert 0.7 < stderr / (sd_per_probe / math.sqrt(probes)) < 1.3  # the reported error is the estimator's


def test_the_probes_never_touch_the_global_rng():
    model, x, y = small_problem()
    hvp = operator(model, x, y)
    state = torch.get_rng_state()
    top_eigenvalues(hvp, hvp.dim, 1, 5, 1e-3, torch.Generator().manual_seed(1), torch.device("cpu"), torch.float64)
    hutchinson_trace(hvp, hvp.dim, 3, torch.Generator().manual_seed(1), torch.device("cpu"), torch.float64)
    assert torch.equal(state, torch.get_rng_state())
    assert all(p.grad is None for p in model.parameters())  # nor the gradients the optimizer steps with


def test_the_monitor_measures_the_eval_mode_hessian_and_changes_nothing():
    from runner.curvature import CurvatureMonitor
    from runner.losses.ce import CrossEntropy

    torch.manual_seed(4)
    model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.BatchNorm1d(5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    model(torch.randn(64, 3))  # some running statistics
    x, y = torch.randn(40, 3), torch.randint(0, 3, (40,))
    monitor = CurvatureMonitor(model, CrossEntropy(), x, y, every=10, top_k=2, iters=200, tol=1e-6,
                               trace_probes=150, samples=32, track=5, seed=0)
    buffers = [b.clone() for b in model.buffers()]
    rng = torch.get_rng_state()
    record = monitor.measure(step=10, lr=0.1)
    assert model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers())) and torch.equal(rng, torch.get_rng_state())
    reference = copy.deepcopy(model).double().eval()
    hessian = explicit_hessian(reference, x[:32].double(), y[:32])
    eigenvalues = torch.linalg.eigvalsh(hessian)
    top = eigenvalues[eigenvalues.abs().argmax()].item()
    assert abs(record["hessian/lambda_max"] - top) < 1e-3 * abs(top)
    sd = math.sqrt(2 * (hessian.square().sum() - hessian.diagonal().square().sum()).item() / 150)
    assert abs(record["hessian/trace"] - torch.trace(hessian).item()) < 4 * sd
    assert record["hessian/two_over_lr"] == 20 and "hessian/lambda_2" in record
    quick = CurvatureMonitor(model, CrossEntropy(), x, y, every=10, iters=3, trace_probes=2, samples=32)
    first, again = quick.measure(step=10, lr=0.1), quick.measure(step=10, lr=0.1)
    assert {**first, "hessian/seconds": 0} == {**again, "hessian/seconds": 0}  # the same probes at the same step
    assert monitor.due(20) and not monitor.due(25)
    losses = monitor.sample_losses()
    expected = F.cross_entropy(reference(x[:5].double()), y[:5], reduction="none")
    assert torch.allclose(torch.tensor(losses, dtype=torch.float64), expected, atol=1e-5)


def test_curvature_plot(tmp_path):
    from runner.curvature import plot_curvature

    records = [{"step": s, "hessian/lambda_max": 5 + s / 10, "hessian/lambda_2": 2.0, "hessian/trace": 40.0 + s,
                "hessian/trace_stderr": 3.0, "hessian/two_over_lr": 20.0} for s in range(0, 200, 20)]
    assert plot_curvature(records + [{"step": 5, "train/loss": 1.0}], tmp_path / "curvature.png")
    assert (tmp_path / "curvature.png").stat().st_size > 10_000
    assert not plot_curvature([{"step": 1, "train/loss": 1.0}], tmp_path / "none.png")
