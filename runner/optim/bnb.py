"""8-bit block-wise optimizer states through bitsandbytes (Dettmers et al. 2022, "8-bit Optimizers via
Block-wise Quantization"): the optional extra `pip install divrun[bnb]`, CUDA only."""
from __future__ import annotations

import importlib

import torch

from runner.errors import ConfigError


def bnb_optimizer(class_name: str, option: str, params, **options) -> torch.optim.Optimizer:
    """bitsandbytes.optim.<class_name>(params, **options), or a one-line ConfigError that names the fix."""
    try:
        optim = importlib.import_module("bitsandbytes.optim")
    except ImportError as error:
        raise ConfigError(f"optimizer={option} needs bitsandbytes: pip install 'divrun[bnb]' ({error})") from None
    params = list(params)
    tensors = [p for group in params for p in (group["params"] if isinstance(group, dict) else [group])]
    if not all(p.is_cuda for p in tensors):
        raise ConfigError(f"optimizer={option} keeps 8-bit states with CUDA kernels: train on a GPU "
                          f"(trainer.device=cuda) or pick the 32-bit optimizer={option.removesuffix('8bit')}")
    return getattr(optim, class_name)(params, **options)
