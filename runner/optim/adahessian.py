"""AdaHessian (Yao et al. 2021, "ADAHESSIAN: An Adaptive Second Order Optimizer for Machine Learning";
amirgholami/adahessian image_classification/optim_adahessian.py).

Adam whose second moment tracks a Hutchinson estimate of the Hessian diagonal, D = |z * Hz| = |Hz| with
Rademacher z (entries -1 or +1 with probability 1/2, one draw per step), averaged over the spatial window
of conv kernels (dims 2.. of tensors with >= 3 dims):
    m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*D^2;  denom = (sqrt(v)/sqrt(bc2))^k + eps
    p -= lr * (m/bc1/denom + wd*p)          (decay decoupled, scaled by lr; k = hessian_power)
Needs the gradients' graph: the trainer runs backward(create_graph=True) because `second_order = True`.
The Rademacher draw uses torch's global generator (a divrun checkpoint restores it): one flat draw over
the parameters with gradients, in parameter order.
"""
from __future__ import annotations

import contextlib

import torch

from runner.optim.base import Bucket, Optimizer, zeros_like


def rademacher_like(params: list[torch.Tensor]) -> list[torch.Tensor]:
    numels = [p.numel() for p in params]
    signs = torch.randint(0, 2, (sum(numels),), device=params[0].device).to(params[0].dtype).mul_(2).sub_(1)
    return [s.view(p.shape).to(p) for s, p in zip(signs.split(numels), params)]


def hessian_diagonal(params: list[torch.Tensor]) -> list[torch.Tensor]:
    """|Hz| per parameter (spatially averaged for conv kernels), from the gradients' graph."""
    grads = [p.grad for p in params]
    if not any(g.requires_grad for g in grads):
        raise RuntimeError("AdaHessian needs the gradients' graph: call loss.backward(create_graph=True)")
    probes = rademacher_like(params)
    linked = [i for i, g in enumerate(grads) if g.requires_grad]
    with torch.enable_grad():
        products = torch.autograd.grad([grads[i] for i in linked], params,
                                       grad_outputs=[probes[i] for i in linked], allow_unused=True)
    diagonal = []
    for p, hz in zip(params, products):
        hz = torch.zeros_like(p) if hz is None else hz.abs()
        diagonal.append(hz.mean(dim=tuple(range(2, hz.ndim)), keepdim=True) if hz.ndim >= 3 else hz)
    return diagonal


class AdaHessian(Optimizer):
    adaptive, second_order = True, True

    def __init__(self, params, lr: float = 0.15, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-4,
                 weight_decay: float = 0.0, hessian_power: float = 1.0, foreach: bool | None = None):
        if not 0.0 <= hessian_power <= 1.0:
            raise ValueError(f"AdaHessian: hessian_power must be in [0, 1] (got {hessian_power})")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      hessian_power=hessian_power), foreach)
        self.diagonal: dict[torch.Tensor, torch.Tensor] = {}  # this step's |Hz|, by parameter

    def init_state(self, group, param, grad, state):
        state["exp_avg"], state["exp_hessian_diag_sq"] = zeros_like(param), zeros_like(param)

    @contextlib.contextmanager
    def prepare(self, params: list[torch.Tensor]):
        """One Hutchinson sample of |Hz| for all parameters, held for this step's updates only."""
        self.diagonal = dict(zip(params, hessian_diagonal(params))) if params else {}
        try:
            yield
        finally:
            self.diagonal = {}

    @staticmethod
    def constants(group: dict, step: int) -> tuple[float, float]:
        """(step size, eps) with the bias corrections folded in (bc2^(k/2) multiplies through)."""
        beta1, beta2 = group["betas"]
        bc2_root = (1 - beta2 ** step) ** (group["hessian_power"] / 2)
        return group["lr"] * bc2_root / (1 - beta1 ** step), group["eps"] * bc2_root

    def update_foreach(self, group: dict, bucket: Bucket) -> None:
        beta1, beta2 = group["betas"]
        lr, wd, power = group["lr"], group["weight_decay"], group["hessian_power"]
        params = bucket.params
        exp_avgs, diag_sqs = bucket.state_list("exp_avg"), bucket.state_list("exp_hessian_diag_sq")
        diagonal = [self.diagonal[p] for p in params]
        step_size, eps = self.constants(group, bucket.step)
        torch._foreach_lerp_(exp_avgs, bucket.grads, 1 - beta1)
        torch._foreach_mul_(diag_sqs, beta2)
        torch._foreach_addcmul_(diag_sqs, diagonal, diagonal, 1 - beta2)
        denom = torch._foreach_sqrt(diag_sqs)
        if power != 1:
            torch._foreach_pow_(denom, power)
        torch._foreach_add_(denom, eps)
        if wd != 0:
            torch._foreach_mul_(params, 1 - lr * wd)
        torch._foreach_addcdiv_(params, exp_avgs, denom, -step_size)

    def update_tensor(self, group, param, grad, state, step):
        beta1, beta2 = group["betas"]
        lr, wd = group["lr"], group["weight_decay"]
        exp_avg, diag_sq, diagonal = state["exp_avg"], state["exp_hessian_diag_sq"], self.diagonal[param]
        step_size, eps = self.constants(group, step)
        exp_avg.lerp_(grad, 1 - beta1)
        diag_sq.mul_(beta2).addcmul_(diagonal, diagonal, value=1 - beta2)
        denom = diag_sq.sqrt().pow_(group["hessian_power"]).add_(eps)
        if wd != 0:
            param.mul_(1 - lr * wd)
        param.addcdiv_(exp_avg, denom, value=-step_size)
