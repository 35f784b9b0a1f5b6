"""The pre-flight: every problem of a composed config, one line each naming the key and the fix, raised
together as one ConfigError before anything is written. `divrun` runs it on every job of a command (each
point of a sweep) before Hydra creates a folder; `run_job` runs it again for in-process callers.

Each rule lives in one place, and this pass runs all of them:
1. RULES below: the keys of groups without a `_target_` (trainer, logger) and the run-level keys.
2. Every `_target_` in the config: it must import, each key must fit the type annotation of the parameter it
   fills (`optimizer.lr=fast` is caught here, not deep inside torch), `optimizer.lr` must be positive, and
   the target's own checks run: a factory decorated `@checked_by(check)` (runner/errors.py) has its options
   checked by `check` (the factory calls the same function on its arguments: datasets), and a class or
   factory may define `validate_config(cfg) -> list[str]` for rules that read the whole config (a
   distiller's teacher, its loss temperature, the optimizer it can share the step with), and
   `config_warnings(cfg) -> list[str]` for what is allowed but worth a line before the run (a schedule-free
   optimizer under a decaying lr schedule): `validate` returns those lines, the run prints them. An
   option's `search_space` (divrun-tune's ranges, runner/search_space.py) is checked here too: its format
   and keys.
3. Every interpolation resolves (a wrapper's base optimizer: runner/config.py).
4. The light components are built once on placeholders, so the checks in their constructors run here: the
   model on the meta device, the loss, the optimizer on one parameter, the schedule for the run's length
   (from the dataset's size: `describe` of runner/data/datasets.py), the distiller's, weighting's, selection's
   and sampler's options.
5. Run-level rules across components: the batch against the training set and the processes, the device,
   the processes' layout, precision and the optimizer's capabilities (runner/optim/capabilities.py), and
   what cannot run on several processes.
Later steps build on the values the earlier ones checked, so they run only when those found nothing.
What only the data itself can tell (a Hugging Face hub dataset's splits, a checkpoint that does not fit the
config on resume) is found when the run is built, which is still before anything is written.
"""
from __future__ import annotations

import inspect
import math
import types
import typing
import warnings
from typing import Any, Callable, Iterable

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

from runner.config import locate
from runner.errors import ConfigError
from runner.tta import LEVELS

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
    "trainer.epochs": (lambda v: _number(v) and v > 0, "a positive number of epochs (9.9 is allowed)", 30),
    "trainer.max_steps": (_optional(_positive_int), "a positive integer or null", 1000),
    "trainer.batch_size": (_positive_int, "a positive integer", 128),
    "trainer.accumulate": (_positive_int, "a positive integer (micro-batches per step)", 4),
    "trainer.ema.decay": (_optional(lambda v: _number(v) and 0 < v < 1), "a number in (0, 1) or null", 0.9999),
    "trainer.ema.warmup": _BOOL,
    "trainer.ema.warmup_gamma": (lambda v: _number(v) and v > 0, "a positive number", 1.0),
    "trainer.ema.warmup_power": (lambda v: _number(v) and v > 0, "a positive number", 0.6667),
    "trainer.ema.every": (_positive_int, "a positive integer (steps)", 1),
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
    "trainer.tta": _one_of(*LEVELS),
    "trainer.devices": (lambda v: v == "auto" or _positive_int(v), "auto or a positive integer", "auto"),
    "trainer.nnodes": (_positive_int, "a positive integer", 1),
    "trainer.sync_bn": _BOOL,
    "trainer.num_workers": (lambda v: v == "auto" or (_int(v) and v >= 0), "auto or an integer >= 0", "auto"),
    "trainer.deterministic": _BOOL,
    "trainer.on_nonfinite": _one_of("stop", "skip"),
    "trainer.resume": _one_of(None, "auto"),
    "trainer.curvature.every": (lambda v: _int(v) and v >= 0, "an integer >= 0 (0: off)", 200),
    "trainer.curvature.top_k": (lambda v: _int(v) and v >= 0, "an integer >= 0", 1),
    "trainer.curvature.iters": (_positive_int, "a positive integer", 20),
    "trainer.curvature.tol": (lambda v: _number(v) and v > 0, "a positive number", 1e-3),
    "trainer.curvature.trace_probes": (lambda v: _int(v) and v >= 0, "an integer >= 0 (0: no trace)", 10),
    "trainer.curvature.samples": (_positive_int, "a positive integer", 256),
    "trainer.curvature.track": (lambda v: _int(v) and v >= 0, "an integer >= 0", 0),
    "eval.ece_bins": (_positive_int, "a positive integer", 15),
    "eval.calibrate": _one_of(None, "temperature", "temperature_ca"),
    "eval.reliability": _BOOL,
    "trainer.sync_debug": _one_of(None, "warn", "error"),
    "logger.progress": _BOOL,
    "logger.wandb.mode": _one_of("auto", "online", "offline", "disabled"),
    "logger.wandb.init_timeout": (lambda v: _number(v) and v > 0, "a positive number of seconds", 30),
}


def validate(cfg: DictConfig) -> list[str]:
    """Raise one ConfigError listing every problem of `cfg` (one line each); else return its warnings."""
    from runner.errors import require

    require(problems_of(cfg))
    return list(dict.fromkeys(warnings_of(cfg)))


def warnings_of(cfg: DictConfig) -> Iterable[str]:
    """The `config_warnings(cfg)` lines of every `_target_` of a config without problems."""
    for _, node in _target_nodes(cfg):
        hook = getattr(locate(node._target_), "config_warnings", None)
        if callable(hook):
            yield from hook(cfg)


def problems_of(cfg: DictConfig) -> Iterable[str]:
    for stage in (_value_problems, _interpolation_problems, component_problems):
        problems = list(stage(cfg))
        yield from problems
        if problems:
            return


def _value_problems(cfg: DictConfig) -> Iterable[str]:
    for key, rule in RULES.items():
        yield from _check_rule(cfg, key, rule)
    for path, node in _target_nodes(cfg):
        yield from _check_target(cfg, path, node)
    from runner.search_space import problems_of as search_space_problems

    yield from search_space_problems(cfg)


def _interpolation_problems(cfg: DictConfig) -> Iterable[str]:
    try:
        OmegaConf.to_container(cfg, resolve=True)
    except InterpolationResolutionError as error:  # a resolver's own ConfigError (the base optimizer) if any
        cause = error
        while cause is not None and not isinstance(cause, ConfigError):
            cause = cause.__cause__ or cause.__context__
        yield (str(cause or error).strip().splitlines() or [type(error).__name__])[0]


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
    yield from _hook_problems(lambda: target.check_options(**bound_options(target, node)),
                              getattr(target, "check_options", None))
    yield from _hook_problems(lambda: target.validate_config(cfg), getattr(target, "validate_config", None))


def _hook_problems(call: Callable[[], Iterable[str] | None], hook) -> Iterable[str]:
    if not callable(hook):
        return
    try:
        yield from call() or []
    except ConfigError as error:
        yield from str(error).splitlines()
    except (MissingMandatoryValue, InterpolationResolutionError):  # reported by the type and resolution checks
        pass


def options(node: DictConfig) -> dict:
    """A `_target_` node's keyword arguments (its keys less Hydra's `_target_`, `_partial_`, ...), resolved."""
    return {key: value for key, value in OmegaConf.to_container(node, resolve=True).items()
            if not str(key).startswith("_")}


def bound_options(function, node: DictConfig) -> dict:
    """The arguments `function` gets from `node`, with its defaults filled in for the keys the node lacks."""
    signature = inspect.signature(function)
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())
    given = {k: v for k, v in options(node).items() if takes_any or k in signature.parameters}
    bound = signature.bind_partial(**given)
    bound.apply_defaults()
    return dict(bound.arguments)


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
    if origin is typing.Literal:
        return "one of " + ", ".join(_show(choice) for choice in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        kinds = [_describe(arg) for arg in typing.get_args(annotation) if arg is not type(None)]
        kinds = [k for k in kinds if k != "a value"] or ["a value"]
        optional = type(None) in typing.get_args(annotation)
        return " or ".join(dict.fromkeys(kinds)) + (" or null" if optional else "")
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list",
             tuple: "a list", dict: "a mapping"}
    return names.get(origin or annotation, "a value")


# ---- 4 and 5: the run's parts built on placeholders, and the rules across them ---------------------------
def component_problems(cfg: DictConfig) -> Iterable[str]:
    """Steps 4 and 5 for a config whose values and interpolations are fine."""
    from runner import distributed, env

    trainer = cfg.trainer
    device = yield from _caught(lambda: env.resolve_device(trainer.device))
    world_size = yield from _caught(lambda: distributed.requested_world_size(trainer))
    if world_size is not None and int(trainer.nnodes) > 1:
        yield from _caught(lambda: distributed.torchrun_args(trainer, "."))  # this node's rank and node 0's address
    shape = yield from _caught(lambda: data_shape(cfg))
    if shape is None or world_size is None:
        return
    yield from _batch_problems(cfg, shape, world_size)
    yield from _built_problems(cfg, shape, world_size, device)
    yield from _capability_problems(cfg, device, world_size)
    yield from _process_problems(cfg, device, world_size)
    yield from _calibration_problems(cfg)
    yield from _recipe_problems(cfg)


def _recipe_problems(cfg: DictConfig) -> Iterable[str]:
    """The batch-size and training-recipe rules across groups: lr scaling, mixed targets, a second EMA."""
    from runner import ema, mixing
    from runner.optim import scaling

    yield from scaling.check(cfg)
    yield from mixing.check(cfg)
    yield from ema.check(cfg)


def _caught(work: Callable[[], Any]):
    """Run `work`; its ConfigError becomes problem lines (yielded) and the value None (returned)."""
    try:
        return work()
    except ConfigError as error:
        yield from str(error).splitlines()
    return None


def data_shape(cfg: DictConfig):
    """What the dataset's config says about its data without loading it (a `DataShape`)."""
    from runner.data.splits import DataShape

    factory = locate(cfg.dataset._target_)
    describe = getattr(factory, "describe", None)
    return describe(**bound_options(factory, cfg.dataset)) if describe else DataShape()


def _batch_problems(cfg: DictConfig, shape, world_size: int) -> Iterable[str]:
    from runner.data.sharding import batch_problems

    if shape.train_size is not None:
        yield from batch_problems(cfg.trainer.batch_size, world_size, shape.train_size, shape.name,
                                  cfg.trainer.get("accumulate", 1))


def run_length(cfg: DictConfig, shape, world_size: int) -> tuple[int, int] | None:
    """(total steps, steps per epoch) of the run, when the dataset's size is known without loading it."""
    from runner.data.sharding import batches_per_epoch
    from runner.schedules import total_steps

    if shape.train_size is None:
        return None
    per_device = cfg.trainer.batch_size * cfg.trainer.get("accumulate", 1)
    steps_per_epoch = batches_per_epoch(shape.train_size, per_device, 0, world_size, drop_last=True)
    return (total_steps(cfg.trainer, steps_per_epoch), steps_per_epoch) if steps_per_epoch else None


def _built_problems(cfg: DictConfig, shape, world_size: int, device) -> Iterable[str]:
    """Build the model (meta device), loss, optimizer (one placeholder parameter), schedule and distiller once,
    so the checks in their constructors run before anything is written."""
    import torch
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from runner.models import build_model
    from runner.optim import build_optimizer

    length = run_length(cfg, shape, world_size)
    # without the dataset's size, a run of max_steps (or of many steps) checks what does not depend on it
    total, steps_per_epoch = length or (int(cfg.trainer.max_steps or 10**6), 1)
    placeholder = torch.nn.Linear(1, 1, device=device if device is not None and device.type == "cuda" else "cpu")
    builds = {
        "model": lambda: build_model(cfg.model, shape.in_channels, shape.num_classes or 2, device="meta"),
        "loss": lambda: instantiate(cfg.loss),
        "optimizer": lambda: build_optimizer(cfg.optimizer, placeholder, total),
        "schedule": lambda: instantiate(cfg.schedule)(total_steps=total, steps_per_epoch=steps_per_epoch),
        "distill": lambda: instantiate(cfg.distill),
        **{group: (lambda group=group: instantiate(cfg[group])) for group in ("weighting", "selection", "sampler")},
        "batch": lambda: instantiate(cfg.batch) if cfg.get("batch") else None,
    }
    for group, build in builds.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                build()
        except Exception as error:  # noqa: BLE001 - anything but bad input is the run's to report (a traceback)
            while isinstance(error, InstantiationException) and error.__cause__ is not None:
                error = error.__cause__  # instantiate wraps what the constructor raised
            if isinstance(error, ConfigError):
                yield from str(error).splitlines()
            elif isinstance(error, ValueError) and group == "optimizer":  # torch's convention for bad settings
                name = cfg.optimizer._target_.rsplit(".", 1)[-1]
                yield f"optimizer={name}: {str(error).splitlines()[0].removeprefix(f'{name}: ')}"


def _capability_problems(cfg: DictConfig, device, world_size: int) -> Iterable[str]:
    from runner import env
    from runner.optim import capabilities

    declared = capabilities(cfg.optimizer)
    name = cfg.optimizer._target_.rsplit(".", 1)[-1]
    trainer = cfg.trainer
    if declared.adaptive is None and trainer.grad_norm_l1 == "auto":
        yield (f"trainer.grad_norm_l1=auto: optimizer={name} does not declare whether it is adaptive (an `adaptive` "
               f"class attribute: runner/optim/capabilities.py); add it, or pass trainer.grad_norm_l1=true/false")
    precision = env.resolved_precision(trainer.precision, device) if device is not None else None
    if declared.second_order and precision not in (None, "fp32"):
        # Hessian-vector products backpropagate through the gradient, which reduced precision makes too noisy
        yield (f"optimizer={name} is second-order (Hessian-vector products) and needs fp32, but "
               f"trainer.precision={trainer.precision} means {precision} here; pass trainer.precision=fp32")
    base = cfg.optimizer.get("base_optimizer")
    if base is not None and capabilities(base).train_eval_mode:
        option = cfg.optimizer.get("base", base._target_.rsplit(".", 1)[-1])
        yield (f"optimizer={name} cannot wrap {option}: it trains at other weights than it is evaluated at "
               f"(schedule-free's y and x), which {name} would mix; run optimizer={option} on its own")
    if declared.second_order and world_size > 1:
        yield (f"optimizer={name} needs Hessian-vector products through backward(create_graph=True), which "
               f"DDP's gradient all-reduce cuts; run it with trainer.devices=1 trainer.nnodes=1")


def _calibration_problems(cfg: DictConfig) -> Iterable[str]:
    """Post-hoc calibration is fitted on held-out training data, never on the test split."""
    if cfg.eval.calibrate and not cfg.dataset.get("holdout"):
        yield (f"eval.calibrate={cfg.eval.calibrate} fits the temperature on the holdout split, never the test "
               f"split; pass dataset.holdout=<count or fraction> (e.g. dataset.holdout=0.1)")


def _process_problems(cfg: DictConfig, device, world_size: int) -> Iterable[str]:
    """What cannot run on several processes says so (the workers never start)."""
    if world_size == 1:
        return
    distiller = locate(cfg.distill._target_)
    reason = getattr(distiller, "single_process_reason", None)
    if reason:
        yield (f"distill={distiller.__name__.lower()} runs on one process only: {reason}; set trainer.devices=1 "
               f"trainer.nnodes=1")
    if cfg.trainer.sync_bn and device is not None and device.type != "cuda":
        yield ("trainer.sync_bn=true needs CUDA (torch's SyncBatchNorm has no CPU kernel); set trainer.sync_bn=false "
               "on the CPU")
