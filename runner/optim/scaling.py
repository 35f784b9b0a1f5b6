"""Learning-rate scaling with the global batch: `optimizer.lr_scaling` against `optimizer.reference_batch`.

    lr = reference_lr * (B / reference_batch)^k,   B = trainer.batch_size x processes x trainer.accumulate
    k = 0 (none), 1 (linear: Goyal et al. 2017, "Accurate, Large Minibatch SGD"), 1/2 (sqrt: Krizhevsky 2014,
    "One weird trick"; Malladi et al. 2022 for Adam's SDE), or by the optimizer (rmt, below).

`rmt` is the rule of Granziol, Zohren & Roberts (JMLR 2022, "Learning Rates as a Function of Batch Size: A Random
Matrix Theory Approach to Neural Network Training", arXiv 2006.09092): the largest stable lr grows linearly with
the batch for SGD and as its square root for adaptive methods (the batch Hessian's extremal eigenvalues shrink
towards the empirical Hessian's as B grows), so it picks k = 1/2 for per-coordinate adaptive optimizers
(Adam, AdaGrad, RMSprop, ...: the optimizer's declared `adaptive` capability) and k = 1 otherwise. Their derivation holds
for batches small against the data set; past the point where the batch Hessian's outliers meet the empirical
Hessian's, the paper predicts the lr stops growing, which this rule does not model: check with a short sweep.

The run's config.yaml records the lr actually used in `optimizer.lr` (for a wrapper: `optimizer.base_optimizer.lr`)
and the given one in `optimizer.reference_lr`, from which every later resolution (a resume, a changed batch)
scales again, so scaling never compounds.
"""
from __future__ import annotations

from omegaconf import DictConfig, OmegaConf, open_dict

RULES = ("none", "linear", "sqrt", "rmt")


def exponent(rule: str, optimizer: DictConfig) -> float:
    from runner.optim.capabilities import capabilities

    if rule == "rmt":
        return 0.5 if capabilities(optimizer).adaptive else 1.0
    return {"none": 0.0, "linear": 1.0, "sqrt": 0.5}[rule]


def global_batch(cfg: DictConfig) -> int:
    from runner.distributed import requested_world_size

    return int(cfg.trainer.batch_size) * requested_world_size(cfg.trainer) * int(cfg.trainer.get("accumulate", 1))


def lr_node(optimizer: DictConfig) -> DictConfig:
    """The config node whose `lr` the optimizer runs with (a wrapper's base)."""
    return optimizer.base_optimizer if "base_optimizer" in optimizer else optimizer


def apply_lr_scaling(cfg: DictConfig) -> DictConfig:
    """cfg with optimizer.lr (or its base's) scaled to the run's global batch; unchanged without a rule."""
    optimizer = cfg.optimizer
    rule = optimizer.get("lr_scaling", "none")
    if rule in (None, "none"):
        return cfg
    with open_dict(optimizer):
        if "base_optimizer" in optimizer:  # a resolver's value: make it a plain node that can hold the new lr
            optimizer.base_optimizer = OmegaConf.to_container(optimizer.base_optimizer, resolve=True)
        node = lr_node(optimizer)
        reference_lr = optimizer.get("reference_lr") or node.lr
        optimizer.reference_lr = reference_lr
    batch, reference = global_batch(cfg), int(optimizer.reference_batch)
    with open_dict(node):
        node.lr = float(reference_lr * (batch / reference) ** exponent(rule, optimizer))
    return cfg


def check(cfg: DictConfig) -> list[str]:
    """One line per inconsistent scaling setting."""
    optimizer = cfg.get("optimizer")
    if not isinstance(optimizer, DictConfig):
        return []
    rule, reference = optimizer.get("lr_scaling", "none"), optimizer.get("reference_batch")
    if rule in (None, "none"):
        if reference is not None:
            return [f"optimizer.reference_batch={reference} is set but no scaling rule; pass optimizer.lr_scaling="
                    f"linear, sqrt or rmt (or drop optimizer.reference_batch)"]
        return []
    if rule not in RULES:
        return [f"optimizer.lr_scaling={rule}: choose none, linear, sqrt or rmt (linear for SGD, sqrt for Adam)"]
    if not (isinstance(reference, int) and not isinstance(reference, bool) and reference > 0):
        return [f"optimizer.lr_scaling={rule} needs the global batch its lr was tuned at; pass "
                f"optimizer.reference_batch=<batch> (e.g. 256)"]
    batch = OmegaConf.select(cfg, "batch")
    if isinstance(batch, DictConfig) and str(batch.get("_target_", "")).endswith("AdaptiveBatch"):
        return [f"optimizer.lr_scaling={rule} with batch=adaptive: the batch changes during the run, so there is no "
                f"one batch to scale to; pass optimizer.lr_scaling=none"]
    return []
