"""AdamW with 8-bit block-wise states (bitsandbytes.optim.AdamW8bit; blocks of 256 entries since bitsandbytes
0.44). Decay is decoupled and scaled by lr as in torch.optim.AdamW. Tensors with fewer than
`min_8bit_size` elements keep 32-bit states."""
from __future__ import annotations

from runner.optim.bnb import bnb_optimizer
from runner.optim.capabilities import declare


@declare(adaptive=True)
def adamw8bit(params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
              weight_decay: float = 1e-2, min_8bit_size: int = 4096):
    return bnb_optimizer("AdamW8bit", "adamw8bit", params, lr=lr, betas=tuple(betas), eps=eps,
                         weight_decay=weight_decay, min_8bit_size=min_8bit_size)
