"""What an optimizer tells the train loop and the checks about itself: its capabilities.

Each optimizer class declares these class attributes (a factory function carries them as attributes,
`@declare(...)`; torch's own optimizers are covered by TORCH below):

    adaptive       per-coordinate normalised (the Adam family, AdaBelief, RMSprop, ...): such runs record L1
                   gradient norms (`trainer.grad_norm_l1=auto`) and the refined schedule weights them by
                   G^-1 instead of G^-2. None: a wrapper, which reports its base's.
    second_order   the loop runs backward(create_graph=True) (Hessian-vector products): fp32 only, one process.
    needs_closure  step(closure) re-evaluates loss and gradients (SAM): no second trained module beside it.
    train_eval_mode  trained at other weights than it is evaluated at (schedule-free: y and the average x):
                   the loop calls optimizer.eval()/train() around evaluation, a checkpoint saves the model at
                   `optimizer.averaged()`; no wrapper may drive it (the config check refuses one).

`capabilities(x)` reads them from a built optimizer, its class or factory, a `_target_` string or a
conf/optimizer config (a wrapper's, SAM's or Lookahead's, folded with its base's); everything that needs to
know (the step, the gradient-norm recording, the refined schedule, the config checks, DDP's refusals) asks
it. A class that declares `adaptive` nowhere in its MRO reads as None ("unknown"), which the config check
refuses where it matters rather than guessing from the name.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

FIELDS = ("adaptive", "second_order", "needs_closure", "train_eval_mode")


@dataclass(frozen=True)
class Capabilities:
    adaptive: bool | None
    second_order: bool = False
    needs_closure: bool = False
    train_eval_mode: bool = False


def _torch_table() -> dict[type, Capabilities]:
    adaptive = ("Adam", "AdamW", "NAdam", "RAdam", "Adamax", "SparseAdam", "Adagrad", "Adadelta", "RMSprop",
                "Adafactor")
    # sign-based (Rprop) and orthogonalised (Muon) updates are not per-coordinate second-moment normalised;
    # SGD and ASGD are plain; LBFGS evaluates the loss itself through its closure
    plain = ("SGD", "ASGD", "Rprop", "Muon")
    table = {getattr(torch.optim, name): Capabilities(True) for name in adaptive if hasattr(torch.optim, name)}
    table |= {getattr(torch.optim, name): Capabilities(False) for name in plain if hasattr(torch.optim, name)}
    table[torch.optim.LBFGS] = Capabilities(False, needs_closure=True)
    return table


TORCH = _torch_table()


def declare(adaptive: bool, second_order: bool = False, needs_closure: bool = False, train_eval_mode: bool = False):
    """Give a factory function (one that returns an optimizer of another library) its capabilities."""
    def attach(factory):
        factory.adaptive, factory.second_order, factory.needs_closure = adaptive, second_order, needs_closure
        factory.train_eval_mode = train_eval_mode
        return factory
    return attach


def declared(target) -> Capabilities:
    """The capabilities a class (through its MRO, torch's classes from TORCH) or a factory declares."""
    owners = target.__mro__ if isinstance(target, type) else (target,)
    values = {}
    for name in FIELDS:
        for owner in owners:
            if name in vars(owner):
                values[name] = vars(owner)[name]
                break
            if owner in TORCH:
                values[name] = getattr(TORCH[owner], name)
                break
    return Capabilities(values.get("adaptive"), *(bool(values.get(name, False)) for name in FIELDS[1:]))


def _fold(wrapper: Capabilities, base: Capabilities) -> Capabilities:
    """A wrapper updates with its base's rule (its adaptivity) and adds its own needs to the base's."""
    return Capabilities(base.adaptive, *(getattr(wrapper, name) or getattr(base, name) for name in FIELDS[1:]))


def capabilities(optimizer) -> Capabilities:
    """The capabilities of a built optimizer, an optimizer class or factory, a `_target_` string, or a
    conf/optimizer config (dict or DictConfig; a wrapper's `base_optimizer` is folded in)."""
    from omegaconf import DictConfig

    if isinstance(optimizer, (DictConfig, dict)):
        from runner.config import locate

        own = declared(locate(str(optimizer["_target_"])))
        return _fold(own, capabilities(optimizer["base_optimizer"])) if "base_optimizer" in optimizer else own
    if isinstance(optimizer, str):
        from runner.config import locate

        return declared(locate(optimizer))
    if isinstance(optimizer, type) or inspect.isroutine(optimizer):
        return declared(optimizer)
    own = declared(type(optimizer))
    base = getattr(optimizer, "base", None)  # a wrapper instance holds its built base
    return _fold(own, capabilities(base)) if base is not None else own
