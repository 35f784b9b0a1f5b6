"""LANTON (Hao, Gong, Xu, Wang & Liu 2025, "Noise-Adaptive Layerwise Learning Rates: Accelerating Geometry-Aware
Optimization for Deep Neural Network Training", arXiv:2510.14009): an LMO-based (Scion/Gluon-style) optimizer
whose layers get learning rates from their own gradient-noise estimates, measured in the dual norm of their LMO.

Each layer l belongs to a norm group (the paper's Table 1): hidden weights (>= 2-D, conv kernels flattened to
out x in*kh*kw) take the RMS->RMS operator norm, the output layer and embeddings the l1->l_inf norm (Signum, as
the paper does instead of AdamW), vectors (biases, normalisation weights) the RMS norm. Per step, with G the
gradient and G' the previous one (the paper's practical option; G' = 0 at step 1):
    B = b1*B + (1-b1)*G
    H = b2*H + (1-b2) * ||G - G'||_*^2                     (||.||_* the dual norm of the layer's norm)
    lr_l = lr_group * sqrt((min_{j in group} H_j + eps) / (H_l + eps))
    p *= 1 - lr_l*wd;   p += lr_l * LMO(B)
    hidden:  LMO(B) = -sqrt(d_out/d_in) * NS5(B),  ||D||_* = sqrt(d_out/d_in) * <D, NS5(D)>
    output:  LMO(B) = -sign(B),                    ||D||_* = sum |D|
    vector:  LMO(B) = -sqrt(n) * B / ||B||_2,      ||D||_* = sqrt(n) * ||D||_2
NS5 is Muon's Newton-Schulz iteration (runner.optim.muon.orthogonalize), so <D, NS5(D)> approximates the nuclear
norm within NS5's singular-value band; the bias is common to the layers of a group and cancels in the ratio
that sets lr_l. The least noisy layer of each group steps at its group's lr; noisier layers step less.

Reading, not copying: the paper's abstract, Table 1 and Algorithm 1 as summarised by its reviews and reviewers
(momentum, the LMO per norm group, the practical H option) are followed; no official code was found (searched
GitHub for the paper, its acronym and its authors), and the exact normalisation of the layerwise rate in
Algorithm 1 could not be read: the min-normalised ratio above is this module's reading of "smaller rates for
noisier layers, the group's rate as the upper bound". Hyperparameters are ours (the paper tunes for LLaMA/GPT):
lr 0.02 (hidden, as Muon), lr_output 0.005 (Signum), lr_vector 0.005 (chosen on digits), betas (0.95, 0.95), eps 1e-8, decay
decoupled x lr_l. `adaptive` is False (layerwise, not per-coordinate, normalisation).
"""
from __future__ import annotations

import math

import torch

from runner.optim.base import Bucket, Optimizer, zeros_like
from runner.optim.muon import NSDtype, adamw_fallback, as_matrix, ns_dtype_of, orthogonalize

NORM_GROUPS = ("hidden", "output", "vector")


class LANTON(Optimizer):
    adaptive = False
    second_order = False
    needs_closure = False

    def __init__(self, params, lr: float = 0.02, lr_output: float = 0.005, lr_vector: float = 0.005,
                 betas: tuple[float, float] = (0.95, 0.95), eps: float = 1e-8, weight_decay: float = 0.0,
                 ns_steps: int = 5, ns_dtype: NSDtype | None = "bfloat16", output_params: str | list[str] = "auto",
                 model: torch.nn.Module | None = None):
        if min(lr, lr_output, lr_vector) <= 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"LANTON: need lr, lr_output, lr_vector > 0 and betas in [0, 1) (got {lr}, {lr_output}, "
                             f"{lr_vector}, {betas})")
        self.ns_dtype = ns_dtype_of(ns_dtype)
        output = adamw_fallback(model, output_params if isinstance(output_params, str) else list(output_params))
        groups = list(params)
        groups = [{"params": groups}] if not groups or not isinstance(groups[0], dict) else groups
        rates = {"hidden": lr, "output": lr_output, "vector": lr_vector}
        split = []
        for group in groups:  # each divrun group (decay / no-decay) splits by norm; lr keeps the group's ratio
            scale = group.get("lr", lr) / lr
            kinds = {"hidden": [], "output": [], "vector": []}
            for p in group["params"]:
                kinds["vector" if p.ndim < 2 else "output" if p in output else "hidden"].append(p)
            split += [{**group, "params": members, "norm": kind, "lr": rates[kind] * scale}
                      for kind, members in kinds.items() if members]
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, ns_steps=ns_steps, norm="hidden")
        super().__init__(split or [{"params": []}], defaults)

    def init_state(self, group, param, grad, state):
        state["momentum"], state["previous_grad"] = zeros_like(param), zeros_like(param)
        state["noise"] = torch.zeros((), device=param.device, dtype=torch.promote_types(param.dtype, torch.float32))

    # ---- the norm group's geometry -------------------------------------------------------------------
    def dual_norm(self, group: dict, tensor: torch.Tensor) -> torch.Tensor:
        if group["norm"] == "hidden":
            matrix = as_matrix(tensor)
            rows, cols = matrix.shape
            ortho = orthogonalize(matrix, group["ns_steps"], self.ns_dtype).to(matrix.dtype)
            return math.sqrt(rows / cols) * (matrix * ortho).sum()
        if group["norm"] == "output":
            return tensor.abs().sum()
        return math.sqrt(tensor.numel()) * torch.linalg.vector_norm(tensor)

    def lmo(self, group: dict, momentum: torch.Tensor) -> torch.Tensor:
        if group["norm"] == "hidden":
            matrix = as_matrix(momentum)
            rows, cols = matrix.shape
            ortho = orthogonalize(matrix, group["ns_steps"], self.ns_dtype)
            return ortho.mul_(-math.sqrt(rows / cols)).reshape(momentum.shape)
        if group["norm"] == "output":
            return -momentum.sign()
        return momentum * (-math.sqrt(momentum.numel()) / torch.linalg.vector_norm(momentum).clamp_min(1e-30))

    # ---- the step: every layer of the group is needed for the group's minimum noise -------------------
    def update_foreach(self, group: dict, bucket: Bucket) -> None:
        beta1, beta2 = group["betas"]
        params, grads = bucket.params, bucket.grads
        momenta, previous = bucket.state_list("momentum"), bucket.state_list("previous_grad")
        noise = torch.stack(bucket.state_list("noise"))
        torch._foreach_lerp_(momenta, grads, 1 - beta1)
        differences = torch._foreach_sub(grads, previous)
        norms = torch.stack([self.dual_norm(group, d).to(noise.dtype) for d in differences])
        noise.mul_(beta2).add_(norms.square(), alpha=1 - beta2)
        for state, value in zip(bucket.states, noise):
            state["noise"].copy_(value)
        rates = group["lr"] * ((noise.min() + group["eps"]) / (noise + group["eps"])).sqrt()
        for param, momentum, rate in zip(params, momenta, rates.to(params[0].dtype)):
            param.mul_(1 - rate * group["weight_decay"])
            param.add_(self.lmo(group, momentum) * rate)
        torch._foreach_copy_(previous, grads)

    def update_group(self, group: dict, params: list[torch.Tensor]) -> None:
        """The layer rates need all of the group's noise estimates: one pass over the whole group."""
        buckets = self.buckets(group, params)
        if buckets:
            merged = Bucket([p for b in buckets for p in b.params], [g for b in buckets for g in b.grads],
                            [s for b in buckets for s in b.states], buckets[0].step)
            self.update_foreach(group, merged)
