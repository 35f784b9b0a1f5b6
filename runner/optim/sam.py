"""SAM (Foret et al. 2021, "Sharpness-Aware Minimization for Efficiently Improving Generalization") and its
adaptive form ASAM (Kwon et al. 2021, SamsungLabs/ASAM), wrapping any base optimizer.

One step: ascend to w + e with e = rho * T^2 g / ||T g|| (T = 1 for SAM; T = |w| + eta for ASAM, applied
to every parameter), re-evaluate the gradient there (the closure), return to w and let the base optimizer
step with that gradient. The norm is global over all parameters; rho, adaptive and eta may differ per
parameter group. SAM wraps a built base optimizer (divrun's builder builds it from `optimizer.base`, as for
Lookahead) and shares its param groups (the lr schedule reaches the base); its state_dict is the base's:
SAM itself keeps nothing between steps.
"""
from __future__ import annotations

import torch

from runner.errors import ConfigError
from runner.optim.capabilities import capabilities

GRAD_NORM_EPS = 1e-12


class SAM(torch.optim.Optimizer):
    # capabilities (runner/optim/capabilities.py): per-coordinate normalisation is the base's (None; not
    # ASAM's `adaptive` option); the trainer passes step() a closure that recomputes loss and gradients
    adaptive, second_order, needs_closure = None, False, True

    def __init__(self, optimizer: torch.optim.Optimizer, rho: float = 0.05, adaptive: bool = False, eta: float = 0.0):
        if rho < 0 or eta < 0:
            raise ValueError(f"SAM: rho and eta must be >= 0 (got {rho}, {eta})")
        name = type(optimizer).__name__
        base = capabilities(optimizer)
        if base.second_order or base.needs_closure:
            raise ConfigError(f"optimizer=sam cannot wrap {name} (second-order or closure-driven); "
                              "pick a first-order base")
        # the base's group dicts themselves, which gain rho, adaptive and eta
        super().__init__(optimizer.param_groups, dict(rho=rho, adaptive=adaptive, eta=eta))
        self.base = optimizer
        self.param_groups = optimizer.param_groups
        self.defaults.update(optimizer.defaults)

    @torch.no_grad()
    def step(self, closure=None):
        if closure is None:
            raise RuntimeError("SAM.step needs a closure that re-evaluates the loss and calls backward()")
        groups = [(group, [p for p in group["params"] if p.grad is not None]) for group in self.param_groups]
        groups = [(group, params) for group, params in groups if params]
        if not groups:
            return None
        params = [p for _, group_params in groups for p in group_params]
        saved = [torch.empty_like(p) for p in params]
        torch._foreach_copy_(saved, params)
        self.perturb(groups)
        torch._foreach_add_(params, [p.grad for p in params])  # the gradients now hold e
        self.zero_grad(set_to_none=True)
        with torch.enable_grad():
            loss = closure()
        torch._foreach_copy_(params, saved)
        self.base.step()
        return loss

    @staticmethod
    def perturb(groups: list[tuple[dict, list[torch.Tensor]]]) -> None:
        """Turn each gradient g into e = rho * T^2 g / ||T g|| in place (no host sync)."""
        scales = []
        for group, params in groups:
            grads = [p.grad for p in params]
            scale = None
            if group["adaptive"]:
                scale = torch._foreach_abs(params)
                torch._foreach_add_(scale, group["eta"])
                torch._foreach_mul_(grads, scale)
            scales.append(scale)
        norms = [n for _, params in groups for n in torch._foreach_norm([p.grad for p in params])]
        inverse_norm = 1.0 / (torch.linalg.vector_norm(torch.stack(norms)) + GRAD_NORM_EPS)
        for (group, params), scale in zip(groups, scales):
            grads = [p.grad for p in params]
            if scale is not None:
                torch._foreach_mul_(grads, scale)
            torch._foreach_mul_(grads, inverse_norm * group["rho"])

    def state_dict(self) -> dict:
        return self.base.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.base.load_state_dict(state_dict)
        self.param_groups = self.base.param_groups
