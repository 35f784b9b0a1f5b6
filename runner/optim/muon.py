"""Muon (Jordan et al. 2024, "Muon: An optimizer for hidden layers in neural networks"; KellerJordan/Muon
muon.py, SingleDeviceMuonWithAuxAdam, the `muon-optimizer` package), with its auxiliary AdamW.

Hidden weights (>= 2-D; conv kernels viewed as out x (in*kh*kw)):
    m = b*m + (1-b)*g;  u = (1-b)*g + b*m (nesterov) or m;  O = NS5(u) * sqrt(max(1, rows/cols))
    p *= 1 - lr*wd;  p -= lr * O
NS5 is the quintic Newton-Schulz iteration (a, b, c) = (3.4445, -4.7750, 2.0315), 5 steps, on u / (||u||_F + 1e-7),
in bfloat16 as the reference runs it (`ns_dtype`; float32/float64 for exactness). rows/cols are the last two
dimensions of the gradient itself, as the official code computes them: for a 4-D kernel that is kh/kw (1 for a
square kernel), not the flattened matrix's ratio. Everything else (embeddings, the output layer, biases and
normalisation weights) takes the reference's AdamW:
    m = lerp(m, g, 1-b1);  v = lerp(v, g^2, 1-b2);  p *= 1 - lr*wd;  p -= lr * (m/bc1) / (sqrt(v/bc2) + eps)
Which parameters fall back (`adamw_params`): `auto` is the reference's advice, nn.Embedding weights and the
output layer (the model's last nn.Linear); a list of fnmatch patterns over parameter names sends the matching
>= 2-D parameters to AdamW instead; parameters with fewer than 2 dims always go to AdamW.

Defaults are the reference's: lr 0.02, momentum 0.95, nesterov, weight_decay 0; AdamW lr 3e-4, betas
(0.9, 0.95), eps 1e-10, weight_decay 0. Decay is decoupled and scaled by lr for both parts. AdamW's lr follows
the schedule with Muon's (a fixed ratio adamw_lr / lr), and divrun's no-decay group keeps its decay at 0.

torch.optim.Muon (torch 2.14) is the same rule for 2-D weights, but it refuses conv kernels (every weight of a
CNN), normalises by max(||u||, eps) instead of ||u|| + eps and fuses the iteration into addmm (other bf16
rounding), so this class implements the reference; tests compare it with both (the package on 2-D weights).

`adaptive` is False: Muon normalises each matrix's singular values, not its coordinates, so the trainer records
L2 gradient norms and the refined schedule weights by them (the AdamW part holds only the few vector and
output-layer parameters).
"""
from __future__ import annotations

import fnmatch
from typing import Literal

import torch

from runner.optim.base import Bucket, Optimizer, zeros_like

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NSDtype = Literal["bfloat16", "float32", "float64"]


def orthogonalize(matrix: torch.Tensor, steps: int, dtype: torch.dtype | None) -> torch.Tensor:
    """KellerJordan/Muon's zeropower_via_newtonschulz5 (same operations in the same order), in `dtype`."""
    a, b, c = NS_COEFFICIENTS
    x = matrix.to(dtype) if dtype is not None else matrix
    transposed = x.size(-2) > x.size(-1)
    if transposed:
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        gram = x @ x.mT
        poly = b * gram + c * gram @ gram
        x = a * x + poly @ x
    return x.mT if transposed else x


def as_matrix(tensor: torch.Tensor) -> torch.Tensor:
    """A weight as the matrix Muon orthogonalises: conv kernels flattened to out x (in*kh*kw)."""
    return tensor.view(len(tensor), -1) if tensor.ndim > 2 else tensor


def ns_dtype_of(name: str | None) -> torch.dtype | None:
    if name is None:
        return None
    dtypes = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64}
    if name not in dtypes:
        raise ValueError(f"ns_dtype={name}: choose bfloat16, float32, float64 or null (the parameter's dtype)")
    return dtypes[name]


def output_layer_params(model: torch.nn.Module) -> set[torch.Tensor]:
    """The reference's non-hidden parameters: embedding weights and the output layer (the last nn.Linear)."""
    chosen = {m.weight for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    if linears:
        chosen |= set(linears[-1].parameters())
    return chosen


def adamw_fallback(model: torch.nn.Module | None, adamw_params: str | list[str]) -> set[torch.Tensor]:
    """The >= 2-D parameters that go to AdamW instead of Muon."""
    if model is None:
        return set()
    if adamw_params == "auto":
        return output_layer_params(model)
    if isinstance(adamw_params, str):
        raise ValueError(f"adamw_params={adamw_params}: pass auto or a list of parameter-name patterns")
    return {p for name, p in model.named_parameters() if any(fnmatch.fnmatch(name, pat) for pat in adamw_params)}


class Muon(Optimizer):
    adaptive = False  # spectrally, not per-coordinate normalised (see the module docstring)
    second_order = False
    needs_closure = False

    def __init__(self, params, lr: float = 0.02, momentum: float = 0.95, nesterov: bool = True, ns_steps: int = 5,
                 weight_decay: float = 0.0, ns_dtype: NSDtype | None = "bfloat16", adamw_lr: float = 3e-4,
                 adamw_betas: tuple[float, float] = (0.9, 0.95), adamw_eps: float = 1e-10,
                 adamw_weight_decay: float = 0.0, adamw_params: str | list[str] = "auto",
                 model: torch.nn.Module | None = None, foreach: bool | None = None):
        if lr <= 0 or adamw_lr <= 0 or not 0 <= momentum < 1:
            raise ValueError(f"Muon: need lr > 0, adamw_lr > 0 and momentum in [0, 1) (got {lr}, {adamw_lr}, {momentum})")
        self.ns_dtype = ns_dtype_of(ns_dtype)
        fallback = adamw_fallback(model, list(adamw_params) if not isinstance(adamw_params, str) else adamw_params)
        groups = list(params)
        groups = [{"params": groups}] if not groups or not isinstance(groups[0], dict) else groups
        split = []
        for group in groups:
            members = list(group["params"])
            group_lr = group.get("lr", lr)
            decayed = "weight_decay" not in group or group["weight_decay"] != 0  # divrun marks no-decay groups by 0
            hidden = [p for p in members if p.ndim >= 2 and p not in fallback]
            rest = [p for p in members if p.ndim < 2 or p in fallback]
            split.append({**group, "params": hidden, "use_muon": True})
            split.append({"params": rest, "use_muon": False, "lr": adamw_lr * group_lr / lr,
                          "weight_decay": adamw_weight_decay if decayed else 0.0})
        split = [g for g in split if g["params"]] or split[:1]
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps, weight_decay=weight_decay,
                        betas=tuple(adamw_betas), eps=adamw_eps)
        super().__init__(split, defaults, foreach)

    def is_elementwise(self, group: dict) -> bool:
        return not group["use_muon"]

    def init_state(self, group, param, grad, state):
        if group["use_muon"]:
            state["momentum_buffer"] = zeros_like(param)
        else:
            state["exp_avg"], state["exp_avg_sq"] = zeros_like(param), zeros_like(param)

    # ---- Muon ----------------------------------------------------------------------------------------
    def orthogonal_step(self, group: dict, param: torch.Tensor, grad: torch.Tensor, update: torch.Tensor) -> None:
        ortho = orthogonalize(as_matrix(update), group["ns_steps"], self.ns_dtype)
        ortho *= max(1, grad.size(-2) / grad.size(-1)) ** 0.5
        lr = group["lr"]
        param.mul_(1 - lr * group["weight_decay"])
        param.add_(ortho.reshape(param.shape), alpha=-lr)

    # ---- AdamW ---------------------------------------------------------------------------------------
    @staticmethod
    def adam_scalars(group: dict, step: int) -> tuple[float, float, float, float]:
        beta1, beta2 = group["betas"]
        return beta1, beta2, 1 - beta1 ** step, 1 - beta2 ** step

    def update_foreach(self, group: dict, bucket: Bucket) -> None:
        params, grads = bucket.params, bucket.grads
        if group["use_muon"]:
            buffers, beta = bucket.state_list("momentum_buffer"), group["momentum"]
            torch._foreach_lerp_(buffers, grads, 1 - beta)
            updates = torch._foreach_lerp(grads, buffers, beta) if group["nesterov"] else buffers
            for param, grad, update in zip(params, grads, updates):
                self.orthogonal_step(group, param, grad, update)
            return
        beta1, beta2, bc1, bc2 = self.adam_scalars(group, bucket.step)
        exp_avgs, exp_avg_sqs = bucket.state_list("exp_avg"), bucket.state_list("exp_avg_sq")
        torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
        torch._foreach_lerp_(exp_avg_sqs, torch._foreach_mul(grads, grads), 1 - beta2)
        denom = torch._foreach_div(exp_avg_sqs, bc2)
        torch._foreach_sqrt_(denom)
        torch._foreach_add_(denom, group["eps"])
        update = torch._foreach_div(exp_avgs, bc1)
        torch._foreach_div_(update, denom)
        torch._foreach_mul_(params, 1 - group["lr"] * group["weight_decay"])
        torch._foreach_add_(params, update, alpha=-group["lr"])

    def update_tensor(self, group, param, grad, state, step):
        if group["use_muon"]:
            buffer, beta = state["momentum_buffer"], group["momentum"]
            buffer.lerp_(grad, 1 - beta)
            self.orthogonal_step(group, param, grad, grad.lerp(buffer, beta) if group["nesterov"] else buffer)
            return
        beta1, beta2, bc1, bc2 = self.adam_scalars(group, step)
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.lerp_(grad.square(), 1 - beta2)
        update = (exp_avg / bc1).div_((exp_avg_sq / bc2).sqrt_().add_(group["eps"]))
        param.mul_(1 - group["lr"] * group["weight_decay"])
        param.add_(update, alpha=-group["lr"])
