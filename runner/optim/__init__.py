"""Optimizer construction: the `conf/optimizer/*.yaml` `_target_` is a partial that receives param groups.

Optimizers of the package live one per module (`runner/optim/lion.py`, ...), each declaring its
capabilities (`adaptive`, `second_order`, `needs_closure`: runner/optim/capabilities.py), which
`capabilities(...)` reads for the train loop and the config checks.

A wrapper optimizer (SAM, Lookahead) names its base optimizer: `base` (a conf/optimizer option) and
`base_overrides` (its keys to change) resolve into the base's full config, `base_optimizer`, through the
`${divrun_optimizer:...}` resolver (runner/config.py), so config.yaml records every value. The builder builds
the base from that config (param groups, decay split and all), then passes the built optimizer to the
wrapper's factory, with `total_steps` and `model` where the factory takes them.
"""
from __future__ import annotations

import inspect

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from runner.optim.capabilities import Capabilities, capabilities

__all__ = ["Capabilities", "build_optimizer", "capabilities", "param_groups"]

# keys of conf/optimizer that divrun consumes instead of passing to the optimizer: the no-decay split, the norm
# layers' lr scale, a wrapper's base (its name, overrides and their resolved config), the lr's scaling with
# the batch (runner/optim/scaling.py, applied when the run's config is saved) and divrun-tune's space
BUILDER_KEYS = ("decay_bias_and_norm", "norm_lr_scale", "base", "base_overrides", "base_optimizer", "lr_scaling",
                "reference_batch", "reference_lr", "search_space")
NORM_LAYERS = (torch.nn.modules.batchnorm._NormBase, torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.RMSNorm)


def param_groups(model: torch.nn.Module, decay_bias_and_norm: bool, norm_lr_scale: float = 1.0,
                 lr: float | None = None, weight_decay: float = 0.0) -> list[dict]:
    """Split parameters into decayed weights (>= 2-D) and biases/normalisation weights (<= 1-D, no decay).

    `norm_lr_scale != 1` puts the parameters of normalisation layers in a group of their own whose lr is
    scaled by it and whose weight_decay is divided by it, so their decay per step (lr x weight_decay)
    stays that of their group (airbench's `bias_scaler`)."""
    params = [p for p in model.parameters() if p.requires_grad]
    scaled = set()
    if norm_lr_scale != 1.0:
        scaled = {p for m in model.modules() if isinstance(m, NORM_LAYERS) for p in m.parameters(recurse=False)
                  if p.requires_grad}
    rest = [p for p in params if p not in scaled]
    groups = [{"params": rest}] if decay_bias_and_norm else [
        {"params": [p for p in rest if p.ndim >= 2]},
        {"params": [p for p in rest if p.ndim < 2], "weight_decay": 0.0}]
    if scaled:
        decay = weight_decay / norm_lr_scale if decay_bias_and_norm else 0.0
        groups.append({"params": [p for p in params if p in scaled], "lr": lr * norm_lr_scale, "weight_decay": decay})
    return [g for i, g in enumerate(groups) if i == 0 or g["params"]]


def build_optimizer(cfg: DictConfig | dict, model: torch.nn.Module, total_steps: int | None = None):
    options = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    factory = instantiate(optimizer_options(options))
    accepted = inspect.signature(factory.func).parameters
    runtime = {key: value for key, value in {"total_steps": total_steps, "model": model}.items() if key in accepted}
    if "base_optimizer" in options:  # a wrapper (SAM, Lookahead): build its base, then wrap it
        return factory(build_optimizer(options["base_optimizer"], model, total_steps), **runtime)
    groups = param_groups(model, bool(options.get("decay_bias_and_norm", False)),
                          float(options.get("norm_lr_scale", 1.0)), options.get("lr"), options.get("weight_decay", 0.0))
    return factory(groups, **fast_path_defaults(factory, options, groups), **runtime)


def optimizer_options(options: dict) -> dict:
    """The options the optimizer's `_target_` receives: the config less BUILDER_KEYS."""
    return {key: value for key, value in options.items() if key not in BUILDER_KEYS}


def fast_path_defaults(factory, options: dict, groups: list[dict]) -> dict:
    """On CUDA, pick torch's fused kernel where the optimizer has one and the user left `fused` unset."""
    on_cuda = all(p.is_cuda for g in groups for p in g["params"])
    accepts_fused = "fused" in inspect.signature(factory.func).parameters
    if on_cuda and accepts_fused and options.get("fused") is None and not options.get("foreach"):
        return {"fused": True}
    return {}
