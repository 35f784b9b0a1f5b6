"""Optimizer construction: the `conf/optimizer/*.yaml` `_target_` is a partial that receives param groups.

Optimizers of the package live one per module (`runner/optim/lion.py`, ...). Two attributes tell the
train loop how to drive one: `second_order = True` (backward with create_graph=True) and
`needs_closure = True` (step(closure) re-evaluates the loss, e.g. SAM).
"""
from __future__ import annotations

import inspect

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

# keys of conf/optimizer that divrun consumes instead of passing to the optimizer: the no-decay split, and a
# wrapper's (SAM's) base name and overrides, already resolved into its `base_optimizer` node
BUILDER_KEYS = ("decay_bias_and_norm", "base", "base_overrides")


def param_groups(model: torch.nn.Module, decay_bias_and_norm: bool) -> list[dict]:
    """Split parameters into decayed weights (>= 2-D) and biases/normalisation weights (<= 1-D, no decay)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if decay_bias_and_norm:
        return [{"params": params}]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(cfg: DictConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    options = OmegaConf.to_container(cfg, resolve=True)
    decay_bias_and_norm = bool(options.get("decay_bias_and_norm", False))
    options = optimizer_options(options)
    factory = instantiate(options)
    groups = param_groups(model, decay_bias_and_norm)
    return factory(groups, **fast_path_defaults(factory, options, groups))


def optimizer_options(options: dict) -> dict:
    """The options the optimizer's `_target_` receives: the config less BUILDER_KEYS, also in a wrapper's base."""
    kept = {key: value for key, value in options.items() if key not in BUILDER_KEYS}
    if isinstance(kept.get("base_optimizer"), dict):
        kept["base_optimizer"] = optimizer_options(kept["base_optimizer"])
    return kept


def fast_path_defaults(factory, options: dict, groups: list[dict]) -> dict:
    """On CUDA, pick torch's fused kernel where the optimizer has one and the user left `fused` unset."""
    on_cuda = all(p.is_cuda for g in groups for p in g["params"])
    accepts_fused = "fused" in inspect.signature(factory.func).parameters
    if on_cuda and accepts_fused and options.get("fused") is None and not options.get("foreach"):
        return {"fused": True}
    return {}
