"""8-bit block-wise optimizer states through bitsandbytes (Dettmers et al. 2022, "8-bit Optimizers via
Block-wise Quantization"): the optional extra `pip install divrun[bnb]`. CUDA tensors, or CPU tensors with
bitsandbytes >= 0.50 (its CPU backend; 0.50.2 tested). Only the options every bitsandbytes >= 0.44 takes are
passed (0.50 dropped `block_wise` and `percentile_clipping`): block-wise states, no percentile clipping."""
from __future__ import annotations

import importlib

import torch

from runner.errors import ConfigError

FIRST_CPU_VERSION = (0, 50)


def bnb_optimizer(class_name: str, option: str, params, **options) -> torch.optim.Optimizer:
    """bitsandbytes.optim.<class_name>(params, **options), or a one-line ConfigError that names the fix."""
    try:
        bitsandbytes = importlib.import_module("bitsandbytes")
    except ImportError as error:
        raise ConfigError(f"optimizer={option} needs bitsandbytes: pip install 'divrun[bnb]' ({error})") from None
    params = list(params)
    tensors = [p for group in params for p in (group["params"] if isinstance(group, dict) else [group])]
    version = tuple(int(part) for part in bitsandbytes.__version__.split(".")[:2])
    if not all(p.is_cuda for p in tensors) and version < FIRST_CPU_VERSION:
        raise ConfigError(f"optimizer={option} on the CPU needs bitsandbytes >= 0.50 (installed "
                          f"{bitsandbytes.__version__}): pip install -U bitsandbytes, or train on a GPU")
    return getattr(bitsandbytes.optim, class_name)(params, **options)
