"""Schedule-free AdamW and SGD (Defazio et al. 2024, "The Road Less Scheduled"; facebookresearch/schedule_free,
the `schedulefree` package 1.4.1: AdamWScheduleFree, SGDScheduleFree).

The parameters hold y (where gradients are taken); z is the base optimizer's iterate and x the weighted average
the model is evaluated at, y = (1 - b1) z + b1 x. At step k (from 1), with lr_k = lr * min(1, k / warmup_steps),
lr_max = max of the lr_k so far, weight w_k = k^r * lr_max^weight_lr_power and c_k = w_k / sum_{i<=k} w_i:
    AdamW: v = b2*v + (1-b2)*g^2;  d = g / (sqrt(v / (1 - b2^k)) + eps) + wd*y
    SGD:   d = g + wd*y                                     (b1 is `momentum`)
    y <- lerp(y, z, c_k) + lr_k * (b1*(1 - c_k) - 1) * d;   z <- z - lr_k * d
which moves x to lerp(x, z, c_k) without storing it. `eval()` sets the parameters to x (p = lerp(y, z, 1 - 1/b1)),
`train()` back to y (p = lerp(x, z, 1 - b1)): the train loop calls them around evaluation, recomputing
BatchNorm statistics at x over `bn_batches` training batches first, as the reference README recommends for
models with BatchNorm (the `train_eval_mode` capability: runner/build.py, Run.evaluation_weights).
Checkpoints hold x as the model (the reference saves in eval mode) and y in the optimizer state, so a resumed
run continues from the very bits it stopped at (a y -> x -> y round trip is exact only up to rounding). Decay
is applied at y and enters z with lr: decoupled, x lr. The reference needs no schedule and allows a decaying
one: the YAMLs pick schedule=constant, and the pre-flight (runner/validate.py) prints a warning for any other.
The reference's defaults: AdamW lr 0.0025, betas (0.9, 0.999), eps 1e-8; SGD lr 1.0, momentum 0.9;
warmup_steps 0, r 0, weight_lr_power 2, weight_decay 0. The reference writes the normalised gradient into
p.grad; this class leaves p.grad alone (the trainer logs gradient norms before the step).

The step count k, lr_max and the sum of weights are Python numbers in each group, as in the reference (they
feed the foreach kernels' scalar arguments): with trainer.on_nonfinite=skip a dropped step restores y, z and
v but still advances them (runner/nonfinite.py: host state cannot be selected without a sync), so the
average x gives the dropped step's weight w_k to the point it stood at, and warmup moves on by one step.
"""
from __future__ import annotations

import torch

from runner.optim.base import Bucket, Optimizer, zeros_like


class ScheduleFree(Optimizer):
    """The shared averaging; subclasses define the direction d (`direction_*`)."""
    elementwise = True  # the per-tensor path may update slices (runner.optim.base)
    train_eval_mode = True  # capabilities: the loop evaluates and saves x (runner/build.py, Run.evaluation_weights)
    second_order = False
    needs_closure = False

    def __init__(self, params, defaults: dict, warmup_steps: int, r: float, weight_lr_power: float,
                 bn_batches: int, foreach: bool | None):
        self.bn_batches = bn_batches
        super().__init__(params, {**defaults, "warmup_steps": warmup_steps, "r": r, "weight_lr_power": weight_lr_power,
                                  "k": 0, "train_mode": True, "weight_sum": 0.0, "lr_max": -1.0, "scheduled_lr": 0.0},
                         foreach)

    @classmethod
    def config_warnings(cls, cfg) -> list[str]:
        """The pre-flight's line for a decaying lr schedule: the reference needs none and allows one."""
        from runner.config import locate
        from runner.schedules import Constant

        schedule = locate(cfg.schedule._target_)
        if issubclass(schedule, Constant):
            return []
        return [f"{cls.__name__} is schedule-free and needs no lr schedule; {schedule.__name__} decays its lr on "
                "top (the reference allows it); pass schedule=constant for the method as published"]

    def group_beta1(self, group: dict) -> float:
        raise NotImplementedError

    @torch.no_grad()
    def eval(self) -> None:
        """Parameters to x, the averaged point that is evaluated and checkpointed."""
        self.switch(to_train=False)

    @torch.no_grad()
    def train(self) -> None:
        """Parameters back to y, where gradients are taken."""
        self.switch(to_train=True)

    def switch(self, to_train: bool) -> None:
        for group in self.param_groups:
            if group["train_mode"] == to_train:
                continue
            beta1 = self.group_beta1(group)
            params = [p for p in group["params"] if "z" in self.state[p]]
            if params:
                torch._foreach_lerp_(params, [self.state[p]["z"] for p in params], 1 - beta1 if to_train else 1 - 1 / beta1)
            group["train_mode"] = to_train

    def averaged(self) -> dict[torch.Tensor, torch.Tensor]:
        """x for every parameter, without moving the parameters (what a checkpoint saves as the model)."""
        points = {}
        for group in self.param_groups:
            beta1 = self.group_beta1(group)
            for p in group["params"]:
                z = self.state[p].get("z")
                points[p] = p.detach().lerp(z, 1 - 1 / beta1) if group["train_mode"] and z is not None else p.detach()
        return points

    def state_dict(self):
        """In train mode the parameters (y) are saved too: x and z give y back only up to rounding, and a
        resumed run must continue from the same bits."""
        saved = super().state_dict()
        for group, saved_group in zip(self.param_groups, saved["param_groups"]):
            if group["train_mode"]:
                for p, index in zip(group["params"], saved_group["params"]):
                    if index in saved["state"]:
                        saved["state"][index] = {**saved["state"][index], "y": p.detach().clone()}
        return saved

    @torch.no_grad()
    def load_state_dict(self, state_dict) -> None:
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            for p in group["params"]:
                y = self.state[p].pop("y", None)
                if y is not None:
                    p.copy_(y)

    def update_group(self, group: dict, params: list[torch.Tensor]) -> None:
        if not group["train_mode"]:
            raise RuntimeError(f"{type(self).__name__}.step() in eval mode: call optimizer.train() first")
        k = group["k"]
        lr = group["lr"] * ((k + 1) / group["warmup_steps"] if k < group["warmup_steps"] else 1.0)
        group["scheduled_lr"] = lr
        group["lr_max"] = max(lr, group["lr_max"])
        weight = (k + 1) ** group["r"] * group["lr_max"] ** group["weight_lr_power"]
        group["weight_sum"] += weight
        self.ckp1 = weight / group["weight_sum"] if group["weight_sum"] else 0.0
        super().update_group(group, params)
        group["k"] = k + 1

    def init_state(self, group, param, grad, state):
        state["z"] = param.detach().clone(memory_format=torch.preserve_format)

    def update_foreach(self, group: dict, bucket: Bucket) -> None:
        y, zs, lr, ckp1 = bucket.params, bucket.state_list("z"), group["scheduled_lr"], self.ckp1
        direction = self.direction_foreach(group, bucket)
        if group["weight_decay"] != 0:
            torch._foreach_add_(direction, y, alpha=group["weight_decay"])
        torch._foreach_lerp_(y, zs, ckp1)
        torch._foreach_add_(y, direction, alpha=lr * (self.group_beta1(group) * (1 - ckp1) - 1))
        torch._foreach_sub_(zs, direction, alpha=lr)

    def update_tensor(self, group, param, grad, state, step):
        z, lr, ckp1 = state["z"], group["scheduled_lr"], self.ckp1
        direction = self.direction_tensor(group, grad, state)
        if group["weight_decay"] != 0:
            direction.add_(param, alpha=group["weight_decay"])
        param.lerp_(z, ckp1)
        param.add_(direction, alpha=lr * (self.group_beta1(group) * (1 - ckp1) - 1))
        z.sub_(direction, alpha=lr)

    def direction_foreach(self, group: dict, bucket: Bucket) -> list[torch.Tensor]:
        raise NotImplementedError

    def direction_tensor(self, group: dict, grad: torch.Tensor, state: dict) -> torch.Tensor:
        raise NotImplementedError


class ScheduleFreeAdamW(ScheduleFree):
    adaptive = True

    def __init__(self, params, lr: float = 0.0025, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, warmup_steps: int = 0, r: float = 0.0, weight_lr_power: float = 2.0,
                 bn_batches: int = 50, foreach: bool | None = None):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay),
                         warmup_steps, r, weight_lr_power, bn_batches, foreach)

    def group_beta1(self, group: dict) -> float:
        return group["betas"][0]

    def init_state(self, group, param, grad, state):
        super().init_state(group, param, grad, state)
        state["exp_avg_sq"] = zeros_like(param)

    def direction_foreach(self, group, bucket):
        beta2, grads = group["betas"][1], bucket.grads
        exp_avg_sqs = bucket.state_list("exp_avg_sq")
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
        denom = torch._foreach_div(exp_avg_sqs, 1 - beta2 ** (group["k"] + 1))
        torch._foreach_sqrt_(denom)
        torch._foreach_add_(denom, group["eps"])
        return torch._foreach_div(grads, denom)

    def direction_tensor(self, group, grad, state):
        beta2, exp_avg_sq = group["betas"][1], state["exp_avg_sq"]
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        return grad / exp_avg_sq.div(1 - beta2 ** (group["k"] + 1)).sqrt_().add_(group["eps"])


class ScheduleFreeSGD(ScheduleFree):
    adaptive = False

    def __init__(self, params, lr: float = 1.0, momentum: float = 0.9, weight_decay: float = 0.0,
                 warmup_steps: int = 0, r: float = 0.0, weight_lr_power: float = 2.0, bn_batches: int = 50,
                 foreach: bool | None = None):
        if not 0 < momentum < 1:
            raise ValueError(f"ScheduleFreeSGD: momentum must be in (0, 1) (got {momentum}): eval() divides by it")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay),
                         warmup_steps, r, weight_lr_power, bn_batches, foreach)

    def group_beta1(self, group: dict) -> float:
        return group["momentum"]

    def direction_foreach(self, group, bucket):  # a copy only where decay will be added to it
        return [grad.clone() for grad in bucket.grads] if group["weight_decay"] else bucket.grads

    def direction_tensor(self, group, grad, state):
        return grad.clone() if group["weight_decay"] else grad
