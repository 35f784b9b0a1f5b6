"""Config validation before any work: every problem of a composed config, one line each naming the key and the
fix, raised together as one ConfigError before a run folder exists (`divrun` checks every job of a command,
sweeps included, before Hydra creates a folder; `run_job` checks again for in-process callers).

Where the checks come from:
1. RULES: the keys of groups without a `_target_` (trainer, logger) and the run-level keys.
2. Every `_target_` in the config: it must import, each key must fit the type annotation of the parameter it
   fills (`optimizer.lr=fast` is caught here, not deep inside torch), and `optimizer.lr` must be positive.
3. Components: a `_target_` object (class or factory function) may define `validate_config(cfg) -> list[str]`
   returning problem lines for the whole composed config; that is where a component's own rules live (a
   dataset root that must exist, a loss that needs smoothed targets, a teacher folder that needs a
   checkpoint). Attach one to a factory function with `@checked_by(check)`. An optimizer that declares
   `second_order = True` (Hessian-vector products) is refused under a reduced precision.
"""
from __future__ import annotations

import inspect
import math
import types
import typing
from typing import Any, Callable, Iterable

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from runner.config import locate
from runner.errors import ConfigError

Rule = tuple[Callable[[Any], bool], str, Any]  # (is the value fine?, what is expected, an example value)


def _int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive_int(value) -> bool:
    return _int(value) and value > 0


def _optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: value is None or check(value)


def _one_of(*choices) -> Rule:
    shown = ", ".join("null" if c is None else str(c).lower() if isinstance(c, bool) else str(c) for c in choices)
    return (lambda value: any(value == c and type(value) is type(c) for c in choices), f"one of {shown}", choices[0])


def _device(value) -> bool:
    if not isinstance(value, str):
        return False
    kind, _, index = value.partition(":")
    return value == "auto" or (kind in ("cpu", "cuda", "mps") and (not index or index.isdigit()))


_BOOL: Rule = (lambda value: isinstance(value, bool), "true or false", False)

RULES: dict[str, Rule] = {
    "seed": (_int, "an integer", 0),
    "trainer.epochs": (_positive_int, "a positive integer", 30),
    "trainer.max_steps": (_optional(_positive_int), "a positive integer or null", 1000),
    "trainer.batch_size": (_positive_int, "a positive integer", 128),
    "trainer.accumulate": (_positive_int, "a positive integer (micro-batches per step)", 4),
    "trainer.ema.decay": (_optional(lambda v: _number(v) and 0 < v < 1), "a number in (0, 1) or null", 0.9999),
    "trainer.ema.warmup": _BOOL,
    "trainer.ema.every": (_positive_int, "a positive integer (steps)", 1),
    "trainer.ema.warmup_gamma": (lambda v: _number(v) and v > 0, "a positive number", 1.0),
    "trainer.ema.warmup_power": (lambda v: _number(v) and v > 0, "a positive number", 0.6667),
    "trainer.eval_batch_size": (_positive_int, "a positive integer", 512),
    "trainer.eval_every": (_positive_int, "a positive integer", 1),
    "trainer.log_every": (_positive_int, "a positive integer", 10),
    "trainer.checkpoint_every": (_optional(_positive_int), "a positive integer (epochs) or null", 1),
    "trainer.checkpoint_every_steps": (_optional(_positive_int), "a positive integer (steps) or null", 500),
    "trainer.keep_checkpoints": (_positive_int, "a positive integer", 2),
    "trainer.device": (_device, "auto, cpu, cuda or cuda:<index>", "auto"),
    "trainer.precision": _one_of("auto", "fp32", "bf16", "fp16"),
    "trainer.channels_last": _one_of("auto", True, False),
    "trainer.compile": _BOOL,
    "trainer.grad_clip": (_optional(lambda v: _number(v) and v > 0), "a positive number or null", 1.0),
    "trainer.grad_norm_l1": _one_of("auto", True, False),
    "trainer.tta": _one_of(0, 1, 2),
    "trainer.devices": (lambda v: v == "auto" or _positive_int(v), "auto or a positive integer", "auto"),
    "trainer.nnodes": (_positive_int, "a positive integer", 1),
    "trainer.sync_bn": _BOOL,
    "trainer.num_workers": (lambda v: v == "auto" or (_int(v) and v >= 0), "auto or an integer >= 0", "auto"),
    "trainer.deterministic": _BOOL,
    "trainer.on_nonfinite": _one_of("stop", "skip"),
    "trainer.resume": _one_of(None, "auto"),
    "logger.progress": _BOOL,
    "logger.wandb.mode": _one_of("auto", "online", "offline", "disabled"),
    "logger.wandb.init_timeout": (lambda v: _number(v) and v > 0, "a positive number of seconds", 30),
}


def validate(cfg: DictConfig) -> None:
    """Raise one ConfigError listing every problem of `cfg` (one line each), or return quietly."""
    problems = list(dict.fromkeys(problems_of(cfg)))  # in order, each once
    if problems:
        raise ConfigError("\n".join(problems))


def problems_of(cfg: DictConfig) -> Iterable[str]:
    for key, rule in RULES.items():
        yield from _check_rule(cfg, key, rule)
    for path, node in _target_nodes(cfg):
        yield from _check_target(cfg, path, node)
    yield from _check_second_order(cfg)
    from runner import ema, mixing
    from runner.optim import scaling

    yield from scaling.check(cfg)
    yield from mixing.check(cfg)
    yield from ema.check(cfg)


def _show(value) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def _check_rule(cfg: DictConfig, key: str, rule: Rule) -> Iterable[str]:
    node = OmegaConf.select(cfg, key.rpartition(".")[0]) if "." in key else cfg
    name = key.rpartition(".")[2]
    if not isinstance(node, DictConfig) or name not in node:
        return  # a key this config does not have is not this check's business
    if OmegaConf.is_missing(node, name):
        yield f"{key} is required; pass {key}=<value>"
        return
    fits, expected, example = rule
    value = node[name]
    if not fits(value):
        yield f"{key}={_show(value)}: expected {expected}; pass e.g. {key}={_show(example)}"


def _target_nodes(node, path: str = "") -> Iterable[tuple[str, DictConfig]]:
    """Every config node with a `_target_`, with its dotted path (Hydra's own settings excluded)."""
    if isinstance(node, DictConfig):
        if "_target_" in node:
            yield path, node
        for key in node:
            if not (path == "" and key == "hydra"):
                yield from _target_nodes(node._get_node(key), f"{path}.{key}" if path else str(key))
    elif isinstance(node, ListConfig):
        for index, item in enumerate(node):
            yield from _target_nodes(item, f"{path}[{index}]")


def _check_target(cfg: DictConfig, path: str, node: DictConfig) -> Iterable[str]:
    try:
        target = locate(node._target_)
    except Exception as error:  # noqa: BLE001 - any import failure: the same fix
        cause = error.__cause__ or error
        yield (f"{path}._target_={node._target_}: cannot be imported ({type(cause).__name__}: "
               f"{(str(cause).strip().splitlines() or [''])[0]}); check the name")
        return
    wrong_arguments = list(_check_arguments(path, node, target))
    if wrong_arguments:  # the checks below read these values: report the types first
        yield from wrong_arguments
        return
    if path == "optimizer" and "lr" in node and _number(node.lr) and node.lr <= 0:
        yield f"optimizer.lr={_show(node.lr)}: the learning rate must be > 0; pass e.g. optimizer.lr=0.1"
    hook = getattr(target, "validate_config", None)
    if callable(hook):
        try:
            yield from hook(cfg) or []
        except ConfigError as error:
            yield from str(error).splitlines()
        except MissingMandatoryValue:  # a required key left at ???: reported above
            pass


def _check_arguments(path: str, node: DictConfig, target) -> Iterable[str]:
    """Each key against the annotation of the parameter it fills (keys without one are left alone)."""
    function = target.__init__ if inspect.isclass(target) else target
    try:
        hints = typing.get_type_hints(function)
        defaults = {name: p.default for name, p in inspect.signature(function).parameters.items()}
    except Exception:  # noqa: BLE001 - unresolvable annotations or no signature: nothing to check against
        return
    name = getattr(target, "__name__", str(target))
    for key in node:
        if not isinstance(key, str) or key.startswith("_") or key not in hints:
            continue
        if OmegaConf.is_missing(node, key):
            yield f"{path}.{key} is required ({name} has no default); pass {path}.{key}=<value>"
            continue
        try:
            value = node[key]
        except Exception:  # noqa: BLE001 - an interpolation that resolves only at run time
            continue
        if _fits(value, hints[key]) is False:
            default = defaults.get(key, inspect.Parameter.empty)
            example = f"; pass e.g. {path}.{key}={_show(default)}" if default is not inspect.Parameter.empty else ""
            yield f"{path}.{key}={_show(value)}: expected {_describe(hints[key])} ({name}'s {key}){example}"


def _fits(value, annotation) -> bool | None:
    """Whether a config value fits an annotation; None where the annotation is nothing a config value can be
    (a tensor, a module, a callable), so there is nothing to judge."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        verdicts = [_fits(value, arg) for arg in typing.get_args(annotation)]
        return True if True in verdicts else None if all(v is None for v in verdicts) else False
    if origin is typing.Literal:
        return value in typing.get_args(annotation)
    if annotation is type(None) or annotation is None:
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return _int(value)
    if annotation is float:
        return _number(value)
    if annotation is str:
        return isinstance(value, str)
    if annotation in (list, tuple) or origin in (list, tuple):
        return isinstance(value, (ListConfig, list, tuple))
    if annotation is dict or origin is dict:
        return isinstance(value, (DictConfig, dict))
    return None


def _describe(annotation) -> str:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        kinds = [_describe(arg) for arg in typing.get_args(annotation) if arg is not type(None)]
        kinds = [k for k in kinds if k != "a value"] or ["a value"]
        optional = type(None) in typing.get_args(annotation)
        return " or ".join(dict.fromkeys(kinds)) + (" or null" if optional else "")
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list",
             tuple: "a list", dict: "a mapping"}
    return names.get(origin or annotation, "a value")


def _check_second_order(cfg: DictConfig) -> Iterable[str]:
    """Second-order optimizers backpropagate through the gradient (Hessian-vector products), which reduced
    precision makes too noisy to use; they need trainer.precision=fp32."""
    optimizer, trainer = cfg.get("optimizer"), cfg.get("trainer")
    if not (isinstance(optimizer, DictConfig) and "_target_" in optimizer and isinstance(trainer, DictConfig)):
        return
    from runner.optim import capabilities

    try:
        second_order = capabilities(optimizer).second_order
    except Exception:  # noqa: BLE001 - reported by the import check
        return
    precision = resolved_precision(trainer)
    if second_order is True and precision != "fp32":
        name = optimizer._target_.rsplit(".", 1)[-1]
        yield (f"optimizer={name} is second-order (Hessian-vector products) and needs fp32, but "
               f"trainer.precision={trainer.precision} means {precision} here; pass trainer.precision=fp32")


def resolved_precision(trainer: DictConfig) -> str:
    """trainer.precision with `auto` resolved as the train loop does: bf16 on CUDA, fp32 elsewhere."""
    if trainer.get("precision") != "auto":
        return str(trainer.get("precision"))
    device = str(trainer.get("device", "auto"))
    if device == "auto":
        import torch

        return "bf16" if torch.cuda.is_available() else "fp32"
    return "bf16" if device.startswith("cuda") else "fp32"


def checked_by(check: Callable[[DictConfig], Iterable[str]]):
    """Attach `check` as the `validate_config` hook of a factory function (classes define the method)."""
    def attach(factory):
        factory.validate_config = check
        return factory
    return attach


def batch_fits(cfg: DictConfig, train_size: int, dataset: str) -> list[str]:
    """trainer.batch_size against the training set size (a dataset hook knows the size without loading)."""
    batch_size = OmegaConf.select(cfg, "trainer.batch_size")
    if _positive_int(batch_size) and batch_size > train_size:
        return [f"trainer.batch_size={batch_size} exceeds the {train_size} training samples of {dataset}; "
                f"pass trainer.batch_size={train_size} or less"]
    return []
