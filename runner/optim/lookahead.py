"""Lookahead (Zhang, Lucas, Hinton & Ba 2019, "Lookahead Optimizer: k steps forward, 1 step back").

Wraps any optimizer (the fast weights theta). Every k steps the slow weights phi move towards theta and
theta restarts from phi:
    phi <- phi + alpha_t (theta - phi),    theta <- phi
The paper keeps alpha constant (0.5, k = 5). airbench94 uses the same update as an EMA whose decay
0.95^5 (t/T)^3 grows over the run, i.e. alpha_t = 1 - (1 - alpha) (t/T)^power with alpha = 1 - 0.95^5 and
power = 3: theta is copied unchanged early on, averaged more and more strongly towards the end. With
power = 0 alpha_t = alpha (the paper). At the run's last step theta is set to phi, so the trained model
is the slow weights. `average_buffers: true` treats the model's floating-point buffers (BatchNorm's running
statistics) the same way, as airbench's EMA of the whole state dict does.
"""
from __future__ import annotations

import torch

from runner.errors import ConfigError
from runner.optim.base import Wrapper


class Lookahead(Wrapper):
    """Lookahead around `optimizer` (a Wrapper: the base's param groups and state), with its slow weights."""

    def __init__(self, optimizer: torch.optim.Optimizer, k: int = 5, alpha: float = 0.5, power: float = 0.0,
                 average_buffers: bool = False, total_steps: int | None = None, model: torch.nn.Module | None = None):
        if k < 1:
            raise ConfigError(f"optimizer.k={k}: the slow weights sync every k >= 1 steps")
        if not 0.0 < alpha <= 1.0:
            raise ConfigError(f"optimizer.alpha={alpha}: the slow-weight step must lie in (0, 1]")
        if power < 0:
            raise ConfigError(f"optimizer.power={power}: use power >= 0 (0: constant alpha)")
        if power > 0 and not total_steps:
            raise ConfigError("optimizer.power > 0 needs the run length (total_steps); divrun's trainer passes it")
        super().__init__(optimizer)
        self.k, self.alpha, self.power, self.total_steps = k, alpha, power, total_steps
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        if average_buffers:
            if model is None:
                raise ConfigError("optimizer.average_buffers=true needs the model; divrun's trainer passes it")
            self.params += [b for b in model.buffers() if b.is_floating_point()]
        self.slow = [p.detach().clone() for p in self.params]
        self.steps = 0

    def alpha_at(self, step: int) -> float:
        if self.power == 0:
            return self.alpha
        return 1.0 - (1.0 - self.alpha) * (step / self.total_steps) ** self.power

    def step(self, closure=None):
        loss = self.base.step(closure) if closure is not None else self.base.step()
        self.steps += 1
        with torch.no_grad():
            if self.steps % self.k == 0:
                torch._foreach_lerp_(self.slow, self.params, self.alpha_at(self.steps))
                torch._foreach_copy_(self.params, self.slow)
            if self.steps == self.total_steps:
                torch._foreach_copy_(self.params, self.slow)
        return loss

    def state_dict(self) -> dict:
        return {"optimizer": self.base.state_dict(), "slow": [s.clone() for s in self.slow], "steps": self.steps}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        self.base.load_state_dict(state["optimizer"])
        torch._foreach_copy_(self.slow, [s.to(p.device) for s, p in zip(state["slow"], self.slow)])
        self.steps = state["steps"]

