"""SOAP (Vyas et al. 2024, "SOAP: Improving and Stabilizing Shampoo using Adam"; nikhilvyas/SOAP soap.py).

Adam in the eigenbasis of Shampoo's preconditioner. For a gradient G with dims (d_1, ..., d_k), each dim i with
d_i <= max_precond_dim keeps L_i = lerp(L_i, G_(i) G_(i)^T, 1 - shampoo_beta) (G_(i): G contracted over every
other dim) and an orthogonal basis Q_i (eigenvectors of L_i by eigh at the first step, descending; then every
precondition_frequency steps one power iteration m @ Q_i with the columns sorted by the estimated eigenvalues,
followed by QR). With the projection P(X) = X x_1 Q_1 ... x_k Q_k and its inverse P^-1:
    first call: build L_i, Q_i from G, no update;  then at step t (from 1):
    G' = P(G);  m = b1*m + (1-b1)*G';  v = b2*v + (1-b2)*G'^2
    p -= lr*sqrt(bc2)/bc1 * P^-1(m / (sqrt(v) + eps));  p *= 1 - lr*wd     (decoupled, x lr, after the step)
    update L_i with G; at a basis change m is carried to the new basis (m <- P_new(P_old^-1(m))) and v's
    entries follow the column sort.
Dims larger than max_precond_dim, and 1-D tensors unless precondition_1d, keep the identity basis (plain Adam
on them). Official defaults: lr 3e-3, betas (0.95, 0.95), shampoo_beta -1 (= b2), eps 1e-8, weight_decay 0.01,
precondition_frequency 10, max_precond_dim 10000, merge_dims false, precondition_1d false, normalize_grads
false, correct_bias true. The official code runs eigh and QR in float32 for every parameter dtype; here float32
is used for float32 and lower precisions (every training dtype) and float64 for float64 parameters. Not
element-wise (the projections mix entries): one path, per tensor. eigh (first step only) synchronises a CUDA
device with the host once per tensor; the per-step work does not.
"""
from __future__ import annotations

from itertools import chain

import torch

from runner.optim.base import Bucket, Optimizer, zeros_like


def merged_shape(shape: torch.Size, max_dim: int) -> list[int]:
    """The official merge_dims: merge consecutive dims while their product stays <= max_dim."""
    merged, current = [], 1
    for size in shape:
        if current * size > max_dim:
            if current > 1:
                merged.append(current)
                current = size
            else:
                merged.append(size)
                current = 1
        else:
            current *= size
    if current > 1 or not merged:
        merged.append(current)
    return merged


class SOAP(Optimizer):
    adaptive = True
    second_order = False
    needs_closure = False

    def __init__(self, params, lr: float = 3e-3, betas: tuple[float, float] = (0.95, 0.95), shampoo_beta: float = -1,
                 eps: float = 1e-8, weight_decay: float = 0.01, precondition_frequency: int = 10,
                 max_precond_dim: int = 10000, merge_dims: bool = False, precondition_1d: bool = False,
                 normalize_grads: bool = False, correct_bias: bool = True):
        if lr <= 0 or precondition_frequency < 1 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"SOAP: need lr > 0, precondition_frequency >= 1 and betas in [0, 1) (got {lr}, "
                             f"{precondition_frequency}, {betas})")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), shampoo_beta=shampoo_beta, eps=eps,
                                      weight_decay=weight_decay, precondition_frequency=precondition_frequency,
                                      max_precond_dim=max_precond_dim, merge_dims=merge_dims,
                                      precondition_1d=precondition_1d, normalize_grads=normalize_grads,
                                      correct_bias=correct_bias))

    # ---- the preconditioner --------------------------------------------------------------------------
    @staticmethod
    def shaped(tensor: torch.Tensor, group: dict) -> torch.Tensor:
        return tensor.reshape(merged_shape(tensor.shape, group["max_precond_dim"])) if group["merge_dims"] else tensor

    @staticmethod
    def project(tensor: torch.Tensor, bases: list, group: dict, back: bool = False) -> torch.Tensor:
        """P (or P^-1 with back=True): contract each dim with its basis (dims without one rotate to the end)."""
        out = SOAP.shaped(tensor, group)
        for basis in bases:
            if basis is None:
                out = out.permute(*range(1, out.ndim), 0)
            else:
                out = torch.tensordot(out, basis, dims=([0], [1 if back else 0]))
        return out.reshape(tensor.shape)

    def init_state(self, group, param, grad, state):
        shaped = self.shaped(grad, group)
        one_d_off = grad.ndim == 1 and not group["precondition_1d"]
        state["GG"] = [None if one_d_off or size > group["max_precond_dim"] else
                       torch.zeros(size, size, device=grad.device, dtype=grad.dtype) for size in shaped.shape]
        state["Q"] = None
        state["exp_avg"], state["exp_avg_sq"] = zeros_like(param), zeros_like(param)
        state["adam_step"] = 0

    def accumulate(self, group: dict, grad: torch.Tensor, state: dict) -> None:
        beta = group["shampoo_beta"] if group["shampoo_beta"] >= 0 else group["betas"][1]
        shaped = self.shaped(grad, group)
        for index, gg in enumerate(state["GG"]):
            if gg is not None:
                others = [*chain(range(index), range(index + 1, shaped.ndim))]
                gg.lerp_(torch.tensordot(shaped, shaped, dims=(others, others)), 1 - beta)

    @staticmethod
    def solver_dtype(gg: torch.Tensor) -> torch.dtype:
        return torch.float64 if gg.dtype == torch.float64 else torch.float32

    def eigenbases(self, state: dict) -> list:
        bases = []
        for gg in state["GG"]:
            if gg is None:
                bases.append(None)
                continue
            matrix = gg.to(self.solver_dtype(gg))
            eye = torch.eye(len(matrix), device=matrix.device, dtype=matrix.dtype)
            bases.append(torch.linalg.eigh(matrix + 1e-30 * eye)[1].flip(1).to(gg.dtype))
        return bases

    def refreshed_bases(self, group: dict, state: dict) -> list:
        """One power iteration and QR per basis; v's entries follow the columns' new order."""
        exp_avg_sq = self.shaped(state["exp_avg_sq"], group)
        bases = []
        for index, (gg, basis) in enumerate(zip(state["GG"], state["Q"])):
            if gg is None:
                bases.append(None)
                continue
            dtype = self.solver_dtype(gg)
            matrix, basis = gg.to(dtype), basis.to(dtype)
            order = torch.argsort(torch.diag(basis.T @ matrix @ basis), descending=True)
            exp_avg_sq = exp_avg_sq.index_select(index, order)
            bases.append(torch.linalg.qr(matrix @ basis[:, order])[0].to(gg.dtype))
        state["exp_avg_sq"] = exp_avg_sq.reshape(state["exp_avg_sq"].shape)
        return bases

    def update_preconditioner(self, group: dict, grad: torch.Tensor, state: dict) -> None:
        if state["Q"] is not None:
            state["exp_avg"] = self.project(state["exp_avg"], state["Q"], group, back=True)
        self.accumulate(group, grad, state)
        step = state["adam_step"]
        if state["Q"] is None:
            state["Q"] = self.eigenbases(state)
        elif step % group["precondition_frequency"] == 0:
            state["Q"] = self.refreshed_bases(group, state)
        if step > 0:
            state["exp_avg"] = self.project(state["exp_avg"], state["Q"], group)

    # ---- the step ------------------------------------------------------------------------------------
    def update_foreach(self, group: dict, bucket: Bucket) -> None:  # one rule on every device: per tensor
        for param, grad, state in zip(bucket.params, bucket.grads, bucket.states):
            self.update_tensor(group, param, grad, state, bucket.step)

    def update_tensor(self, group, param, grad, state, step):
        if state["Q"] is None:  # the first call only builds the preconditioner from this gradient
            self.update_preconditioner(group, grad, state)
            return
        (beta1, beta2), lr = group["betas"], group["lr"]
        state["adam_step"] += 1
        adam_step = state["adam_step"]
        projected = self.project(grad, state["Q"], group)
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.mul_(beta1).add_(projected, alpha=1 - beta1)
        exp_avg_sq.mul_(beta2).add_(projected.square(), alpha=1 - beta2)
        step_size = lr
        if group["correct_bias"]:
            step_size *= (1 - beta2 ** adam_step) ** 0.5 / (1 - beta1 ** adam_step)
        direction = self.project(exp_avg / exp_avg_sq.sqrt().add_(group["eps"]), state["Q"], group, back=True)
        if group["normalize_grads"]:
            direction /= 1e-30 + direction.square().mean().sqrt()
        param.add_(direction, alpha=-step_size)
        if group["weight_decay"] > 0:
            param.add_(param, alpha=-lr * group["weight_decay"])
        self.update_preconditioner(group, grad, state)
