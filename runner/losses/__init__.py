"""Losses between the model's distribution p = softmax(logits / T) and a target q.

`base.py` holds what all share (`Loss`: float32 log-probs, smoothing, the z_reg penalty); one module per
family: `ce.py`, `fdiv.py` (+ `generators.py`), `cs.py`, `sinkhorn.py`, `robust.py`. `conf/loss/*.yaml`
names the class in `_target_`.
"""
from runner.losses.base import Loss, target_distribution
from runner.losses.ce import CrossEntropy

__all__ = ["Loss", "CrossEntropy", "build_loss", "target_distribution"]


def build_loss(cfg):
    """The loss of `conf/loss/<name>.yaml`; a ConfigError from its constructor stays the one-line error."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from runner.errors import ConfigError

    try:
        return instantiate(cfg)
    except InstantiationException as error:
        if isinstance(error.__cause__, ConfigError):
            raise error.__cause__ from None
        raise
