"""SGD-SaI (Xu et al. 2024, "No More Adam: Learning Rate Scaling at Initialization is All You Need";
the official `sgd-sai` package, 1.0.3 on PyPI).

At a tensor's first step its gradient signal-to-noise ratio is measured and frozen:
    gsnr = ||g|| / (std(g) + eps)     (unbiased std; a 1-element tensor's NaN std counts as 0)
then every step:  buf = g (first step) or momentum*buf + (1-momentum)*g;  p = p*(1 - lr*wd) - lr*gsnr*buf.
Decay is decoupled and scaled by lr. The repository's later 1.0.4 (not on PyPI) divides every gsnr by the
largest one; this follows the released package.
"""
from __future__ import annotations

import torch

from runner.optim.base import Bucket, Optimizer


class SGDSaI(Optimizer):
    adaptive = False  # one lr scale per tensor, frozen at step 1
    def __init__(self, params, lr: float = 1e-2, momentum: float = 0.9, eps: float = 1e-8, weight_decay: float = 1e-2,
                 foreach: bool | None = None):
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"SGD-SaI: momentum must be in [0, 1) (got {momentum})")
        super().__init__(params, dict(lr=lr, momentum=momentum, eps=eps, weight_decay=weight_decay), foreach)

    def init_state(self, group, param, grad, state):
        noise = grad.std().nan_to_num() if grad.numel() > 1 else grad.new_zeros(())  # 1 element: no std, 0
        state["gsnr"] = grad.norm() / (noise + group["eps"])
        state["momentum_buffer"] = grad.clone(memory_format=torch.preserve_format)

    def update_foreach(self, group: dict, bucket: Bucket) -> None:
        lr, params, bufs = group["lr"], bucket.params, bucket.state_list("momentum_buffer")
        if bucket.step > 1:
            torch._foreach_lerp_(bufs, bucket.grads, 1 - group["momentum"])
        if group["weight_decay"] != 0:
            torch._foreach_mul_(params, 1 - lr * group["weight_decay"])
        torch._foreach_addcmul_(params, bufs, bucket.state_list("gsnr"), value=-lr)

    def update_tensor(self, group, param, grad, state, step):
        lr, buf = group["lr"], state["momentum_buffer"]
        if step > 1:
            buf.lerp_(grad, 1 - group["momentum"])
        if group["weight_decay"] != 0:
            param.mul_(1 - lr * group["weight_decay"])
        param.addcmul_(buf, state["gsnr"], value=-lr)
