"""SGDP (Heo et al. 2021; clovaai/AdamP adamp/sgdp.py): SGD with momentum and AdamP's radial projection.

    buf = momentum*buf + (1-dampening)*g;  d = g + momentum*buf (nesterov) or buf
    d -= radial part (>= 2-D weights, see runner.optim.adamp);  p *= 1 - lr*wd*ratio/(1-momentum);  p -= lr*d

Without nesterov, d is the buffer itself, so the projection also projects the momentum (as the official
code does). Decay is decoupled, scaled by lr and divided by (1 - momentum).
"""
from __future__ import annotations

import torch

from runner.optim.adamp import projected_step_foreach, projected_step_tensor
from runner.optim.base import Bucket, Optimizer, zeros_like


class SGDP(Optimizer):
    adaptive = False
    def __init__(self, params, lr: float = 0.1, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, eps: float = 1e-8, delta: float = 0.1,
                 wd_ratio: float = 0.1, foreach: bool | None = None):
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"SGDP: momentum must be in [0, 1) (got {momentum}); decay is divided by 1 - momentum")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                      nesterov=nesterov, eps=eps, delta=delta, wd_ratio=wd_ratio), foreach)

    def init_state(self, group, param, grad, state):
        state["momentum_buffer"] = zeros_like(param)

    @staticmethod
    def decay(group: dict) -> float:
        return group["lr"] * group["weight_decay"] / (1 - group["momentum"])

    def update_foreach(self, group: dict, bucket: Bucket) -> None:
        momentum, grads, bufs = group["momentum"], bucket.grads, bucket.state_list("momentum_buffer")
        torch._foreach_mul_(bufs, momentum)
        torch._foreach_add_(bufs, grads, alpha=1 - group["dampening"])
        updates = torch._foreach_add(grads, bufs, alpha=momentum) if group["nesterov"] else bufs
        projected_step_foreach(group, bucket.params, grads, updates, self.decay(group), group["lr"])

    def update_tensor(self, group, param, grad, state, step):
        momentum, buf = group["momentum"], state["momentum_buffer"]
        buf.mul_(momentum).add_(grad, alpha=1 - group["dampening"])
        update = grad.add(buf, alpha=momentum) if group["nesterov"] else buf
        projected_step_tensor(group, param, grad, update, self.decay(group), group["lr"])
