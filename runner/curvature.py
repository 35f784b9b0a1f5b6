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

In a run (`trainer.curvature.every=N`): L is the run's loss (`loss` group, on the labels; a distiller's teacher
term is left out) on `samples` training samples drawn once from the run's seed, as an evaluation loader gives
them (no augmentation for in-memory datasets; one fixed draw of the transforms for folder datasets), the model
in eval mode (BatchNorm's running statistics, no dropout) in float32. Under DDP each process holds a contiguous
1/world of those samples and the products are averaged over processes (every process runs the same iteration
with the same probes), so the values equal a one-process run's. The `track` first samples of the same draw
have their per-sample losses written to sample_losses.csv (rank 0).
"""
from __future__ import annotations

import contextlib
import math
import time
from typing import Callable

import torch
import torch.nn.functional as F

from runner import distributed

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


# ---- the measurement a run makes every N steps --------------------------------------------------------
class CurvatureMonitor:
    """The Hessian of the run's loss on fixed training samples (`images`, `labels`: this process's share, the
    same on every measurement), measured in eval mode (no BatchNorm statistics move, no dropout) in float32,
    through torch.autograd.grad (the optimizer's .grad stays untouched). `track` > 0 also returns the
    per-sample losses (cross-entropy of the label under the loss's normaliser) of the first `track` samples.
    Under DDP each process takes its share and the products are averaged over processes, so every process
    runs the same iteration."""

    def __init__(self, model: torch.nn.Module, loss_fn, images: torch.Tensor, labels: torch.Tensor,
                 every: int, top_k: int = 1, iters: int = 20, tol: float = 1e-3, trace_probes: int = 10,
                 samples: int = 256, track: int = 0, seed: int = 0, reduce: Callable[[torch.Tensor], None] | None = None):
        self.model, self.loss_fn, self.reduce = model, loss_fn, reduce
        self.images, self.labels = images, labels
        self.every, self.top_k, self.iters, self.tol = every, top_k, iters, tol
        self.trace_probes, self.samples, self.seed = trace_probes, samples, seed
        # (images, labels, positions in the training split) of the samples whose losses are tracked
        self.tracked = (images[:track], labels[:track], torch.arange(min(track, len(labels)))) if track else None

    def due(self, step: int) -> bool:
        return bool(self.every) and step % self.every == 0

    def measure(self, step: int, lr: float) -> dict:
        """The Hessian's record at `step` (empty when neither eigenvalues nor the trace are asked for)."""
        if not (self.top_k or self.trace_probes):
            return {}
        return self.hessian_record(step, lr)

    def hessian_record(self, step: int, lr: float) -> dict:
        """One record: hessian/lambda_max (and lambda_2 .. lambda_k), hessian/trace with its standard error,
        hessian/two_over_lr (the edge-of-stability threshold of gradient descent at this step's lr), the loss
        on the samples, the Hessian-vector products used and the seconds taken."""
        started = time.perf_counter()
        generator = torch.Generator(self.images.device).manual_seed(self.seed * 1_000_003 + step)
        params = [p for p in self.model.parameters() if p.requires_grad]
        with evaluating(self.model), torch.autocast(self.images.device.type, enabled=False):
            loss = self.loss_fn(self.model(self.images[:self.samples]), self.labels[:self.samples])
            hvp = HessianVectorProduct(loss, params, self.reduce)
            mean_loss = loss.detach().reshape(1).clone()
            if self.reduce is not None:
                self.reduce(mean_loss)
            record = {"hessian/loss": mean_loss.item()}
            if self.top_k:
                values, products = top_eigenvalues(hvp, hvp.dim, self.top_k, self.iters, self.tol, generator,
                                                   self.images.device)
                record["hessian/lambda_max"] = values[0]
                record.update({f"hessian/lambda_{i + 1}": v for i, v in enumerate(values) if i > 0})
                record["hessian/products"] = products
            if self.trace_probes:
                record["hessian/trace"], record["hessian/trace_stderr"] = hutchinson_trace(
                    hvp, hvp.dim, self.trace_probes, generator, self.images.device)
                record["hessian/products"] = record.get("hessian/products", 0) + self.trace_probes
        del hvp  # frees the gradient's graph
        record["hessian/two_over_lr"] = 2 / lr if lr > 0 else math.inf
        record["hessian/seconds"] = time.perf_counter() - started
        return record

    @torch.no_grad()
    def sample_losses(self) -> list[float]:
        """The per-sample losses of the tracked samples (one host read)."""
        images, labels, _ = self.tracked
        with evaluating(self.model), torch.autocast(images.device.type, enabled=False):
            logits = self.model(images).float()
            scores = self.loss_fn.scores(logits) if hasattr(self.loss_fn, "scores") else logits
            return F.cross_entropy(scores, labels, reduction="none").tolist()


@contextlib.contextmanager
def evaluating(model: torch.nn.Module):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def plot_curvature(records: list[dict], path) -> bool:
    """curvature.png: lambda_max (and the other top eigenvalues) against 2/lr over the steps on a log scale, the
    trace with its error band beside; False when there is nothing to plot."""
    rows = [r for r in records if "hessian/two_over_lr" in r]
    if not rows:
        return False
    from matplotlib.figure import Figure  # the Agg canvas without pyplot's global state

    steps = [r["step"] for r in rows]
    has_trace = any("hessian/trace" in r for r in rows)
    fig = Figure(figsize=(11 if has_trace else 6, 4), dpi=110)
    axes = fig.subplots(1, 2 if has_trace else 1, squeeze=False)
    sharp = axes[0, 0]
    eigen_keys = sorted({k for r in rows for k in r if k.startswith("hessian/lambda_")},
                        key=lambda k: 1 if k == "hessian/lambda_max" else int(k.rsplit("_", 1)[1]))
    for key in eigen_keys:
        points = [(r["step"], r[key]) for r in rows if key in r]
        sharp.plot(*zip(*points), marker="o", markersize=3, label=key.removeprefix("hessian/").replace("lambda_max", "λmax"))
    sharp.plot(steps, [r["hessian/two_over_lr"] for r in rows], "k--", label="2 / lr")
    if all(r.get(k, 1) > 0 for r in rows for k in eigen_keys):
        sharp.set_yscale("log")
    sharp.set(xlabel="step", ylabel="eigenvalue", title="top Hessian eigenvalues vs the edge of stability")
    sharp.legend(fontsize=8)
    if has_trace:
        points = [(r["step"], r["hessian/trace"], r.get("hessian/trace_stderr") or 0) for r in rows if "hessian/trace" in r]
        x, y, err = (list(column) for column in zip(*points))
        axes[0, 1].plot(x, y, marker="o", markersize=3)
        axes[0, 1].fill_between(x, [a - 2 * e for a, e in zip(y, err)], [a + 2 * e for a, e in zip(y, err)], alpha=0.25)
        axes[0, 1].set(xlabel="step", ylabel="trace", title="Hessian trace (Hutchinson, ±2 s.e.)")
    fig.tight_layout()
    fig.savefig(path, pil_kwargs={"compress_level": 1})
    return True


def fixed_samples(splits, index: torch.Tensor, device: torch.device, channels_last: bool, workers: int,
                  rank: int = 0, world_size: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training samples `index` as an evaluation loader yields them (this rank's contiguous share): images,
    labels and their positions in the training split."""
    from torch.utils.data import Subset

    from runner.data.loaders import FolderLoader, TensorLoader

    common = dict(channels_last=channels_last, rank=rank, world_size=world_size)
    if splits.in_memory:
        loader = TensorLoader(splits.train.subset(index), 256, device, splits.mean, splits.std, **common)
    else:
        loader = FolderLoader(Subset(splits.train, index.tolist()), 256, device, num_workers=workers, **common)
    images, labels, positions = zip(*loader.epoch(0))
    return torch.cat(images), torch.cat(labels), index.to(device)[torch.cat(positions)]


def build_curvature(settings, splits, model: torch.nn.Module, loss_fn, runtime, seed: int,
                    workers: int) -> CurvatureMonitor | None:
    """The run's monitor for `trainer.curvature` (None when `every` is 0)."""
    if not settings.every:
        return None
    world, rank = distributed.world_size(), distributed.rank()
    draw = torch.randperm(len(splits.train), generator=torch.Generator().manual_seed(seed))
    samples = min(settings.samples, len(draw)) // world * world  # equal shares: the mean of means is the mean
    images, labels, _ = fixed_samples(splits, draw[:samples], runtime.device, runtime.channels_last, workers, rank, world)
    reduce = None
    if world > 1:
        def reduce(vector: torch.Tensor) -> None:
            distributed.all_reduce_sum(vector)
            vector.div_(world)
    monitor = CurvatureMonitor(model, loss_fn, images, labels, settings.every, settings.top_k, settings.iters,
                               settings.tol, settings.trace_probes, len(images), 0, seed, reduce)
    if settings.track and distributed.is_main():
        monitor.tracked = fixed_samples(splits, draw[:settings.track], runtime.device, runtime.channels_last, workers)
    return monitor
