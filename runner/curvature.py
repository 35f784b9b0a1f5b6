"""Curvature of the training loss every N steps: the top Hessian eigenvalues by power iteration on
Hessian-vector products and the Hessian trace by Hutchinson's estimator, against the edge-of-stability
threshold 2/lr (Cohen et al. 2021, "Gradient Descent on Neural Networks Typically Occurs at the Edge of
Stability"; the measurements of Wu & Su 2023, "The Implicit Regularization of Dynamical Stability in SGD", and
Rosenfeld & Risteski 2023, "Outliers with Opposing Signals Have an Outsized Effect on Neural Network
Optimization", who also follow per-sample losses of fixed training points).

With L(w) the run's loss averaged over a fixed set of training samples and H = d^2 L / dw^2 over every
trained parameter (flattened into one vector of dimension d):
- Hv = d/dw <dL/dw, v> (Pearlmutter's trick, double backward through the kept graph of the gradient);
- power iteration (PyHessian's `eigenvalues`, amirgholami/PyHessian): v <- Hv / ||Hv||, orthogonalised
  against the eigenvectors already found (deflation), until the Rayleigh quotient lambda = v.Hv changes by
  less than `tol` relative (|lambda' - lambda| / (|lambda| + 1e-6) < tol) or after `iters` products; it finds
  the eigenvalues of largest magnitude (for a trained network the top one is positive: the sharpness);
- Hutchinson (1990): tr(H) = E[z.Hz] for Rademacher z; the mean over m probes, with its standard error
  s / sqrt(m) (s the sample std of the z.Hz); PyHessian's running-mean stopping rule is replaced by a fixed m
  and a reported error. The estimator's variance per probe is 2 (||H||_F^2 - sum_i H_ii^2).

The probes come from a private generator seeded by (seed, step): measuring never moves the training RNG, so a
run with curvature logging trains exactly as one without, and a resumed run measures the same values.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

HVP = Callable[[torch.Tensor], torch.Tensor]


class HessianVectorProduct:
    """v -> Hv for a scalar loss of `params`, on flat vectors; the gradient's graph is kept between products.
    `reduce` (a sum over processes, then divided by their number) makes H the Hessian of the mean over every
    process's samples."""

    def __init__(self, loss: torch.Tensor, params: list[torch.Tensor], reduce: Callable[[torch.Tensor], None] | None = None):
        self.params, self.reduce = params, reduce
        self.shapes = [p.shape for p in params]
        self.numels = [p.numel() for p in params]
        self.grads = torch.autograd.grad(loss, params, create_graph=True)
        self.dim = sum(self.numels)

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        pieces = [piece.view(shape) for piece, shape in zip(v.split(self.numels), self.shapes)]
        products = torch.autograd.grad(self.grads, self.params, grad_outputs=pieces, retain_graph=True,
                                       allow_unused=True)
        flat = torch.cat([torch.zeros(n, device=v.device, dtype=v.dtype) if hv is None else hv.reshape(-1)
                          for hv, n in zip(products, self.numels)])
        if self.reduce is not None:
            self.reduce(flat)
        return flat.detach()


def orthogonalize(v: torch.Tensor, basis: list[torch.Tensor]) -> torch.Tensor:
    """v minus its projection on the orthonormal vectors of `basis`, normalised."""
    for u in basis:
        v = v - torch.dot(u, v) * u
    return v / v.norm().clamp_min(1e-30)


def top_eigenvalues(hvp: HVP, dim: int, top_k: int, iters: int, tol: float, generator: torch.Generator,
                    device: torch.device, dtype: torch.dtype = torch.float32) -> tuple[list[float], int]:
    """The `top_k` eigenvalues of largest magnitude (deflated power iteration) and the products it took."""
    values: list[float] = []
    vectors: list[torch.Tensor] = []
    products = 0
    for _ in range(top_k):
        v = orthogonalize(torch.randn(dim, generator=generator, device=device, dtype=dtype), vectors)
        value = None
        for _ in range(iters):
            hv = hvp(v)
            products += 1
            new_value = torch.dot(hv, v).item()
            v = orthogonalize(hv, vectors)
            converged = value is not None and abs(new_value - value) / (abs(value) + 1e-6) < tol
            value = new_value
            if converged:
                break
        values.append(value)
        vectors.append(v)
    return values, products


def hutchinson_trace(hvp: HVP, dim: int, probes: int, generator: torch.Generator, device: torch.device,
                     dtype: torch.dtype = torch.float32) -> tuple[float, float]:
    """(estimate of tr H, its standard error) from `probes` Rademacher probes (standard error nan for one)."""
    samples = []
    for _ in range(probes):
        z = torch.randint(0, 2, (dim,), generator=generator, device=device).to(dtype).mul_(2).sub_(1)
        samples.append(torch.dot(z, hvp(z)))
    values = torch.stack(samples).double()
    stderr = values.std().item() / math.sqrt(probes) if probes > 1 else math.nan
    return values.mean().item(), stderr
