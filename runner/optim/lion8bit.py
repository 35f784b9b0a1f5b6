"""Lion with an 8-bit block-wise momentum (bitsandbytes.optim.Lion8bit): the rule of runner.optim.lion
(decay p *= 1 - lr*wd). Tensors with fewer than `min_8bit_size` elements keep a 32-bit state."""
from __future__ import annotations

from runner.optim.bnb import bnb_optimizer
from runner.optim.capabilities import declare


@declare(adaptive=False)
def lion8bit(params, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99), weight_decay: float = 0.0,
             min_8bit_size: int = 4096):
    return bnb_optimizer("Lion8bit", "lion8bit", params, lr=lr, betas=tuple(betas), weight_decay=weight_decay,
                         min_8bit_size=min_8bit_size)
